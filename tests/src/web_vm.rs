//! A petrel run with the web console: the test guest on a scenario, `--web-console` on a
//! free loopback port, and the API socket beside it (for what the TCP port does not serve).
//! It reads the tokenized URL petrel prints on stderr and keeps the guest's serial output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::{self, Reply};
use crate::{command, test_guest, wait, Output};

/// What petrel prints before the console's URL.
pub const URL_PREFIX: &str = "petrel: web console at ";

/// A running petrel with its web console.
pub struct WebVm {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT/console?token=HEX`, as printed.
    pub url: String,
    /// The listener's address.
    pub addr: SocketAddr,
    /// The token.
    pub token: String,
    /// The API socket.
    pub api: api::Client,
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr: Receiver<String>,
    _dir: tempfile::TempDir,
}

impl WebVm {
    /// Boots the test guest with `petrel.test=<scenario>` plus `extra` arguments and waits
    /// for the web console's URL.
    pub fn spawn(scenario: &str, extra: &[&str]) -> WebVm {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("api.sock");
        let cmdline = format!("petrel.test={scenario}");
        let mut args = vec![
            "--kernel",
            test_guest().to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--web-console",
            "127.0.0.1:0",
            "--api-sock",
            sock.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = command(&args).spawn().expect("spawn petrel");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => match line.strip_prefix(URL_PREFIX) {
                    Some(url) => break url.to_string(),
                    None => seen.push(line),
                },
                Err(e) => {
                    let _ = child.kill();
                    panic!("no web console URL ({e}); stderr:\n{}", seen.join("\n"));
                }
            }
        };
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("URL {url}"));
        let (authority, query) = rest.split_once("/console?token=").expect("tokenized URL");
        WebVm {
            child: Some(child),
            addr: authority.parse().expect("a socket address in the URL"),
            token: query.to_string(),
            url,
            api: api::Client::new(&sock),
            stdout: lines,
            stdout_reader: Some(stdout_reader),
            stderr: rx,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request on the TCP port with exactly `headers` (plus `Host` if not among them).
    pub fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        http::request(self.addr, method, target, headers, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    /// A request on the TCP port with the bearer token.
    pub fn authed(&self, method: &str, target: &str, body: Option<&str>) -> Reply {
        let bearer = format!("Bearer {}", self.token);
        self.raw(method, target, &[("Authorization", &bearer)], body)
    }

    /// The guest's serial output so far (petrel's stdout).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for petrel to exit (killing it after `timeout`) and returns all it printed.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("finished once");
        let mut out = wait(child, timeout);
        if let Some(r) = self.stdout_reader.take() {
            let _ = r.join();
        }
        out.stdout = self.stdout.lock().unwrap().join("\n");
        out.stderr = self.stderr.try_iter().collect::<Vec<_>>().join("\n");
        out
    }
}

impl Drop for WebVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
