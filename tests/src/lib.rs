//! End-to-end tests that boot guests under KVM with the real `petrel` binary. The tests
//! live in `tests/tests/`; this library is the harness they share: it finds (and if needed
//! builds) the binary, writes the test guest to a file, runs petrel with a timeout, and
//! checks that KVM is there (in CI, a missing `/dev/kvm` fails the test instead of skipping).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod api_vm;
pub mod backend_process;
pub mod blk_image;
pub mod browser;
pub mod display;
pub mod every_device;
pub mod http;
pub mod netns;
pub mod snapshot_guest;
pub mod vhost_user_net_loop;
pub mod web_vm;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// How one of this crate's benchmarks runs: `None` without KVM (it skips); else whether it
/// is a short smoke run (no `--bench` argument, as `cargo test --benches` runs it) and the
/// runs per case: `PETREL_BENCH_RUNS`, else `full`, or 2 for a smoke run.
pub fn bench_plan(full: usize) -> Option<(bool, usize)> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    if !kvm_available() {
        return None;
    }
    let runs = std::env::var("PETREL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 2 } else { full });
    Some((smoke, runs))
}

/// Whether KVM can be used. Without it, a test returns early outside CI and fails in CI.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/kvm is missing or not accessible, and CI is set: end-to-end tests need KVM"
        );
        eprintln!("skipped: /dev/kvm is not available");
    }
    ok
}

/// Whether this process may create network namespaces and TAPs (root with `/dev/net/tun`).
/// Without it, a test returns early outside CI and fails in CI.
pub fn netns_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/net/tun").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "virtio-net tests need root and /dev/net/tun, and CI is set"
        );
        eprintln!("skipped: needs root and /dev/net/tun");
    }
    ok
}

/// The `petrel` binary, built with the same profile as this test (once per test process).
pub fn petrel() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "vmm", "--bin", "petrel"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for petrel");
        assert!(status.success(), "building petrel failed");
        profile_dir.join("petrel")
    })
}

/// The test guest ELF, written once to a file.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("petrel-test-guest-{}", std::process::id()));
        std::fs::write(&path, resources::TEST_GUEST).expect("write the test guest");
        path
    })
}

/// What a finished petrel run left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout lines that start with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Asserts a clean exit and a `PASS <scenario>` line.
    pub fn assert_pass(&self, scenario: &str) {
        assert!(
            self.stdout.lines().any(|l| l == format!("PASS {scenario}")),
            "no PASS {scenario}\n{self}"
        );
        assert_eq!(self.status.code(), Some(0), "{self}");
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A petrel command line.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(petrel());
    cmd.arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs petrel with `args` until it exits or `timeout` passes (then it is killed and the
/// test fails).
pub fn run(args: &[&str], timeout: Duration) -> Output {
    let child = command(args).spawn().expect("spawn petrel");
    wait(child, timeout)
}

/// Runs petrel with the test guest and a vhost-user device, `flag socket=PATH` (such as
/// `--vhost-user-net`), and asserts that it fails to start; returns what it left.
pub fn vhost_user_start_fails(flag: &str, socket: &Path) -> Output {
    vhost_user_start_fails_with(flag, socket, "")
}

/// [`vhost_user_start_fails`] with more device options, `,key=value...` (such as a
/// vhost-user-fs tag).
pub fn vhost_user_start_fails_with(flag: &str, socket: &Path, more: &str) -> Output {
    let device = format!("socket={}{more}", socket.display());
    let args = ["--kernel", test_guest().to_str().unwrap(), flag, &device];
    let out = run(&args, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0), "{out}");
    out
}

/// Asserts that petrel with a vhost-user device (`flag`, with the options `more` after the
/// socket's, `""` or `,key=value...`) on a socket nobody serves fails to start, naming the
/// socket.
pub fn assert_missing_vhost_user_socket_fails_start(flag: &str, more: &str) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = vhost_user_start_fails_with(flag, &socket, more);
    let stderr = &out.stderr;
    assert!(
        stderr.contains("cannot connect to the vhost-user socket")
            && stderr.contains("nobody.sock"),
        "{out}"
    );
}

/// Runs petrel with `args` and extra environment variables.
pub fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(args);
    cmd.envs(env.iter().copied());
    wait(cmd.spawn().expect("spawn petrel"), Duration::from_secs(120))
}

/// The metrics petrel logged for device `id` when it stopped (with
/// `PETREL_LOG=petrel::metrics=info`), as JSON.
pub fn device_metrics(out: &Output, id: &str) -> serde_json::Value {
    let marker = format!("device={id} ");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("petrel::metrics") && l.contains(&marker))
        .unwrap_or_else(|| panic!("no metrics for {id}\n{out}"));
    let json = &line[line
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {line}"))..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("metrics of {id}: {e}: {json}"))
}

/// Boots the test guest with `petrel.test=<scenario>` plus `extra` arguments.
pub fn run_scenario(scenario: &str, extra: &[&str]) -> Output {
    let cmdline = format!("petrel.test={scenario}");
    let mut args = vec![
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    run(&args, Duration::from_secs(120))
}

/// A petrel run still going, whose stdout lines a test can wait for, to act on the machine at
/// the right moment (change a disk image, talk to the API) before it ends.
pub struct Running {
    child: Option<Child>,
    lines: Receiver<String>,
    /// The stdout lines received so far.
    seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    /// Boots the test guest with `petrel.test=<scenario>` plus `extra` arguments.
    pub fn scenario(scenario: &str, extra: &[&str]) -> Running {
        Running::scenario_with_cmdline(scenario, "", extra)
    }

    fn spawn(args: &[&str]) -> Running {
        let mut child = command(args).spawn().expect("spawn petrel");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            lines,
            seen: Vec::new(),
            reader: Some(reader),
        }
    }

    /// Like [`Running::scenario`], with `params` appended to the guest's command line.
    pub fn scenario_with_cmdline(scenario: &str, params: &str, extra: &[&str]) -> Running {
        let cmdline = format!("petrel.test={scenario} {params}");
        let cmdline = cmdline.trim_end();
        let mut args = vec![
            "--kernel",
            test_guest().to_str().unwrap(),
            "--cmdline",
            cmdline,
        ];
        args.extend_from_slice(extra);
        Running::spawn(&args)
    }

    /// Waits for a stdout line that starts with `prefix` and returns it. Fails the test (and
    /// stops petrel) if none comes within `timeout` or petrel's output ends first.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    self.kill();
                    let why = match e {
                        RecvTimeoutError::Timeout => format!("within {timeout:?}"),
                        RecvTimeoutError::Disconnected => "before petrel's output ended".into(),
                    };
                    panic!(
                        "no line starting with {prefix:?} {why}\n--- stdout so far ---\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for petrel to exit (killing it after `timeout`, which fails the test) and returns
    /// all it printed.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("finished once");
        let mut out = wait(child, timeout);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.seen.extend(self.lines.try_iter());
        out.stdout = self.seen.join("\n");
        out
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `child` to exit, killing it after `timeout`. Output is drained while it runs
/// so a chatty guest never blocks on a full pipe.
pub fn wait(mut child: Child, timeout: Duration) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for petrel") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            timed_out = true;
            break child.wait().expect("reap petrel");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(!timed_out, "petrel did not exit within {timeout:?}\n{out}");
    out
}

/// FNV-1a, 64-bit: the checksum the test guest computes over the initrd.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
