//! A petrel process driven through its API socket, for the API tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::NetNs;
use crate::{petrel, wait, Output};

/// How long a petrel process gets to open its API socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);

/// `petrel run --api-sock DIR/api.sock --serial file:DIR/serial.log ...`, running.
pub struct ApiVm {
    child: Option<Child>,
    /// A private directory for the socket, the serial log and test files.
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub serial: PathBuf,
    client: api::Client,
}

impl ApiVm {
    /// Starts petrel with `extra` arguments and waits until its API answers.
    pub fn spawn(extra: &[&str]) -> ApiVm {
        ApiVm::spawn_in(None, extra)
    }

    /// [`ApiVm::spawn`] with `env` added to petrel's environment (`PETREL_LOG`, ...).
    pub fn spawn_with_env(env: &[(&str, &str)], extra: &[&str]) -> ApiVm {
        ApiVm::start(&[], env, extra)
    }

    /// [`ApiVm::spawn`], inside network namespace `netns` if given (through
    /// `ip netns exec`, which execs petrel: the child is petrel itself). The API socket and
    /// files are paths, reachable from any namespace.
    pub fn spawn_in(netns: Option<&NetNs>, extra: &[&str]) -> ApiVm {
        match netns {
            Some(ns) => ApiVm::start(&["ip", "netns", "exec", ns.name()], &[], extra),
            None => ApiVm::start(&[], &[], extra),
        }
    }

    /// [`ApiVm::spawn`] through `wrapper` (a program and its arguments that execs the
    /// command after them, such as `taskset -c 1`): the child is petrel itself.
    pub fn spawn_wrapped(wrapper: &[&str], extra: &[&str]) -> ApiVm {
        ApiVm::start(wrapper, &[], extra)
    }

    fn start(wrapper: &[&str], env: &[(&str, &str)], extra: &[&str]) -> ApiVm {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("api.sock");
        let serial = dir.path().join("serial.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(args).arg(petrel());
                cmd
            }
            None => std::process::Command::new(petrel()),
        };
        let child = cmd
            .arg("run")
            .arg("--api-sock")
            .arg(&sock)
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn petrel");
        let vm = ApiVm {
            child: Some(child),
            client: api::Client::new(&sock),
            dir,
            sock,
            serial,
        };
        let start = Instant::now();
        while vm.client.request("GET", "/", None).is_err() {
            assert!(
                start.elapsed() < SOCKET_TIMEOUT,
                "petrel's API did not answer within {SOCKET_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vm
    }

    /// A path in the private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends a request; the status and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        self.client
            .request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends raw bytes as the body.
    pub fn request_bytes(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.client
            .request_bytes(method, path, Some(body.to_vec()))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `GET path`, parsed as JSON; panics unless 200.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Sends `method path body` and asserts a 204.
    pub fn ok(&self, method: &str, path: &str, body: Value) {
        let (status, reply) = self.request(method, path, Some(body));
        assert_eq!(status, 204, "{method} {path}: {reply}");
    }

    /// Sends `method path body`, asserts `status`, and returns the fault message.
    pub fn fails(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> String {
        let (got, reply) = self.request(method, path, body);
        assert_eq!(got, status, "{method} {path}: {reply}");
        let v: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        v["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {reply}"))
            .to_string()
    }

    /// The state `GET /` reports.
    pub fn state(&self) -> String {
        self.get("/")["state"]
            .as_str()
            .expect("state is a string")
            .to_string()
    }

    /// `PATCH /vm`.
    pub fn set_state(&self, state: &str) {
        self.ok("PATCH", "/vm", serde_json::json!({ "state": state }));
    }

    /// What the guest printed on the serial port so far.
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The serial output's complete lines (a line being written is left out).
    fn complete_lines(&self) -> Vec<String> {
        let text = self.serial();
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        text[..end].lines().map(str::to_string).collect()
    }

    /// Waits until the serial output has a line for which `find` returns something.
    pub fn wait_serial<T>(&self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(found) = self.complete_lines().iter().rev().find_map(|l| find(l)) {
                return found;
            }
            assert!(
                start.elapsed() < timeout,
                "serial output did not show what the test waits for within {timeout:?}:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `COUNT <n>` of the count scenario.
    pub fn last_count(&self) -> Option<u64> {
        self.complete_lines()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("COUNT ")?.parse().ok())
    }

    /// Waits for a `COUNT` above `floor`.
    pub fn wait_count_above(&self, floor: Option<u64>) -> u64 {
        self.wait_serial(Duration::from_secs(60), |l| {
            l.strip_prefix("COUNT ")?
                .parse()
                .ok()
                .filter(|&n| Some(n) > floor)
        })
    }

    /// Waits for petrel to exit; its files stay until `self` is dropped.
    pub fn finish(&mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("petrel is running");
        wait(child, timeout)
    }

    /// Sends `signal` to petrel.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("petrel is running").id();
        // SAFETY: kill takes no pointers; the pid is our own child, not yet reaped.
        let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// petrel's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("petrel is running").id()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// `PUT /snapshot/create` of `kind` (`Full` or `Diff`) to `state` and `mem`; asserts a
    /// 204 (the VM must be paused).
    pub fn create_snapshot(&self, kind: &str, state: &Path, mem: &Path) {
        self.ok(
            "PUT",
            "/snapshot/create",
            json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem}),
        );
    }

    /// `PUT /snapshot/create` of a full snapshot into `dir`, which must be refused with a
    /// 400; returns the reason.
    pub fn snapshot_refused(&self, dir: &Path) -> String {
        let body = json!({"snapshot_type": "Full", "snapshot_path": dir.join("s"),
                          "mem_file_path": dir.join("m")});
        self.fails("PUT", "/snapshot/create", Some(body), 400)
    }

    /// `PUT /snapshot/load` of `state` with `resume_vm`, its memory from `mem` (or the file
    /// the state names); asserts a 204.
    pub fn load_snapshot(&self, state: &Path, mem: Option<&Path>) {
        self.ok("PUT", "/snapshot/load", load_body(state, mem));
    }

    /// `PUT /migration/receive {"url": url}`: asserts a 204 (petrel listens from then on).
    pub fn migrate_receive(&self, url: &str) {
        self.ok("PUT", "/migration/receive", json!({ "url": url }));
    }

    /// `PUT /migration/send body` (`{"url": ..., "downtime_ms": ..., ...}`): asserts a 204
    /// (the migration has started).
    pub fn migrate_send(&self, body: Value) {
        self.ok("PUT", "/migration/send", body);
    }

    /// `GET /migration`.
    pub fn migration(&self) -> Value {
        self.get("/migration")
    }

    /// Polls `GET /migration` until its state is one of `states`, and returns it; panics after
    /// `timeout` or if petrel stops answering.
    pub fn wait_migration(&self, states: &[&str], timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let info = self
                .client
                .request("GET", "/migration", None)
                .map(|(_, body)| serde_json::from_str::<Value>(&body))
                .unwrap_or_else(|e| panic!("GET /migration while waiting for {states:?}: {e}"))
                .unwrap_or_else(|e| panic!("GET /migration: {e}"));
            if info["state"].as_str().is_some_and(|s| states.contains(&s)) {
                return info;
            }
            assert!(
                start.elapsed() < timeout,
                "the migration was not {states:?} within {timeout:?}: {info}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `GET /migration` every few milliseconds and returns every answer, until `until`
    /// holds for one (included) or petrel no longer answers (a source that completed exits:
    /// its API answers 503 once the VMM thread has ended, then not at all); panics after
    /// `timeout`.
    pub fn watch_migration(&self, timeout: Duration, until: impl Fn(&Value) -> bool) -> Vec<Value> {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let Ok((status, body)) = self.client.request("GET", "/migration", None) else {
                return seen;
            };
            if status == 503 {
                return seen;
            }
            assert_eq!(status, 200, "GET /migration: {body}");
            let info: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let done = until(&info);
            seen.push(info);
            if done {
                return seen;
            }
            assert!(
                start.elapsed() < timeout,
                "the migration did not end within {timeout:?}: {}",
                seen.last().expect("one answer")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills petrel with SIGKILL and waits for it to exit: from then on only a snapshot has
    /// the guest. (`PUT /actions Kill` may end the process before its reply is sent.)
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        self.finish(Duration::from_secs(30));
    }
}

/// The body of a `PUT /snapshot/load` of `state` that runs the VM; its memory from `mem`, or
/// the memory file the state names when `None`.
pub fn load_body(state: &Path, mem: Option<&Path>) -> Value {
    let mut body = json!({"snapshot_path": state, "resume_vm": true});
    if let Some(mem) = mem {
        body["mem_backend"] = json!({"backend_type": "File", "backend_path": mem});
    }
    body
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
