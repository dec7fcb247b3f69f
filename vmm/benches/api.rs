//! The API socket of the real `petrel` binary, timed from a client process:
//!
//! 1. Start-up: from just before `spawn` of `petrel run --api-sock PATH` (no guest) to the
//!    first successful `connect()` on the socket (it is bound and listening), and to the
//!    first `GET /` answered 200 on that connection (the API thread and the VMM thread both
//!    serve). `connect()` is retried every 50 µs (timer slack set to 1 µs). Each petrel is
//!    then stopped with SIGTERM and reaped; the time from the signal until it has exited
//!    (polled every 50 µs) is reported too. For scale, two floors of the same machine are
//!    timed as well: spawning `/bin/true` until it exits, and `petrel --version` likewise
//!    (dynamic loading, Rust runtime start, clap). Firecracker documents 6–60 ms, typically
//!    12 ms, for its API socket to be ready; petrel's target is a median of 5 ms or less.
//! 2. `GET /` round trips on a petrel with the bundled test guest booted and idle
//!    (`petrel.test=idle`, 1 vCPU): on one persistent HTTP/1.1 keep-alive connection (a small
//!    raw client in this file, so the figure is mostly the server's), on a new connection
//!    per request with the same raw client, and with `api::Client` (what `petrel ctl` uses:
//!    a new connection and a new tokio runtime per request).
//! 3. `PATCH /vm` `{"state":"Paused"}` then `{"state":"Resumed"}` on the idle guest with 1
//!    and 2 vCPUs, each timed separately, on a keep-alive connection. Pause answers once
//!    every vCPU is out of `KVM_RUN`; resume answers once they are released (not once they
//!    are back in `KVM_RUN`). The bench waits 1 ms after each resume, unmeasured, so that
//!    every pause finds the vCPUs inside `KVM_RUN`.
//!
//! `cargo bench -p vmm --bench api` (cargo builds the `petrel` binary with the bench
//! profile, i.e. release, and passes its path). Environment:
//! - `PETREL_BENCH_RUNS` (50): start-up runs, after 3 unmeasured ones.
//! - `PETREL_BENCH_REQUESTS` (1000): `GET /` round trips per case, after 50 unmeasured.
//! - `PETREL_BENCH_PAUSES` (200): pause/resume cycles per vCPU count, after 10 unmeasured.
//! - `PETREL_BIN`: time this binary instead of the one cargo built.
//! - `PETREL_BENCH_JSON`: append the JSON lines to this file instead of stdout.
//!
//! The table gives min, median, p90, p99 (only with 100 samples or more) and max per case,
//! the JSON lines the same in µs. The guest cases need `/dev/kvm`; without it they are skipped with a message. Without
//! `--bench` (as `cargo test --benches` runs it) it does a short smoke run. This is a
//! measurement, not a test: it never fails on a figure, only when petrel misbehaves.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "../../benches/report.rs"]
mod report;

/// Pause between two `connect()` attempts while petrel starts.
const POLL: Duration = Duration::from_micros(50);
/// How long a petrel gets to answer on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Start-up target: median time to the first `GET /` answered 200.
const STARTUP_TARGET: Duration = Duration::from_millis(5);

struct Settings {
    runs: usize,
    requests: usize,
    pauses: usize,
    smoke: bool,
}

impl Settings {
    fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let count = |name: &str, full: usize, quick: usize| match std::env::var(name) {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("{name}={v:?} is not a positive integer");
                    std::process::exit(2);
                }
            },
            Err(_) if smoke => quick,
            Err(_) => full,
        };
        Settings {
            runs: count("PETREL_BENCH_RUNS", 50, 3),
            requests: count("PETREL_BENCH_REQUESTS", 1000, 20),
            pauses: count("PETREL_BENCH_PAUSES", 200, 5),
            smoke,
        }
    }
}

/// Samples of one case, sorted.
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut v: Vec<Duration>) -> Self {
        assert!(!v.is_empty(), "no samples");
        v.sort_unstable();
        Samples(v)
    }

    /// Nearest-rank percentile, `p` in 0..=100.
    fn pct(&self, p: f64) -> Duration {
        let n = self.0.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.0[rank.clamp(1, n) - 1]
    }

    fn min(&self) -> Duration {
        self.0[0]
    }

    fn max(&self) -> Duration {
        self.0[self.0.len() - 1]
    }

    /// p99, when there are enough samples for it to differ from the maximum.
    fn p99(&self) -> Option<Duration> {
        (self.0.len() >= 100).then(|| self.pct(99.0))
    }
}

/// A duration for the table: µs below a millisecond, ms above.
fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The table and the JSON lines.
struct Report {
    rows: Vec<(String, Samples)>,
    json: Vec<serde_json::Value>,
}

impl Report {
    fn add(&mut self, group: &str, case: &str, samples: Vec<Duration>) {
        let s = Samples::new(samples);
        self.json.push(json!({
            "bench": "api", "group": group, "case": case, "n": s.0.len(),
            "min_us": us(s.min()), "median_us": us(s.pct(50.0)), "p90_us": us(s.pct(90.0)),
            "p99_us": s.p99().map(us), "max_us": us(s.max()),
        }));
        self.rows.push((format!("{group}: {case}"), s));
    }

    fn find(&self, name: &str) -> Option<&Samples> {
        self.rows.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    fn print(&self) {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        println!(
            "\n{:<width$} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "case", "n", "min", "median", "p90", "p99", "max"
        );
        for (name, s) in &self.rows {
            println!(
                "{:<width$} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                s.0.len(),
                show(s.min()),
                show(s.pct(50.0)),
                show(s.pct(90.0)),
                s.p99().map_or_else(|| "-".to_owned(), show),
                show(s.max())
            );
        }
    }
}

/// A minimal HTTP/1.1 client on one Unix stream, kept alive across requests. It reads
/// responses with a `Content-Length` (or none, for 204), which is all petrel sends.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    fn connect(path: &Path) -> io::Result<Self> {
        UnixStream::connect(path).map(Conn::new)
    }

    /// Sends one request; the status and the body.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<(u16, String)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        self.stream.write_all(req.as_bytes())?;
        self.read_response()
    }

    fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_response(&mut self) -> io::Result<(u16, String)> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.read_more()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut length = None;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked responses are not supported here"));
                }
            }
        }
        let length = match (length, status) {
            (Some(n), _) => n,
            (None, 204 | 304) => 0,
            (None, _) => return Err(bad("response without Content-Length")),
        };
        while self.buf.len() < head_end + length {
            self.read_more()?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        Ok((status, body))
    }
}

/// A running petrel; stopped with SIGTERM (SIGKILL after 5 s) and reaped when dropped.
struct Petrel {
    child: Child,
    sock: PathBuf,
    stderr: PathBuf,
}

impl Petrel {
    /// Starts `petrel run --api-sock SOCK EXTRA...`; also the time just before the spawn.
    fn spawn(bin: &Path, sock: &Path, extra: &[&str]) -> (Self, Instant) {
        let stderr = sock.with_extension("stderr");
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--api-sock")
            .arg(sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create the stderr file"));
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let petrel = Petrel {
            child,
            sock: sock.to_owned(),
            stderr,
        };
        (petrel, t0)
    }

    /// Panics with petrel's stderr if it has exited or `deadline` has passed.
    fn check_alive(&mut self, since: Instant) {
        let exited = self.child.try_wait().expect("try_wait petrel");
        if exited.is_some() || since.elapsed() > READY_TIMEOUT {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            panic!(
                "petrel {} before its API answered\n--- stderr ---\n{log}",
                match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("did not answer within {READY_TIMEOUT:?}"),
                }
            );
        }
    }

    /// Polls the socket from `t0` (just before spawn) until `connect()` succeeds and
    /// `GET /` on that connection is answered 200: the two times, and the connection.
    fn wait_ready(&mut self, t0: Instant) -> (Duration, Duration, Conn) {
        let mut connected = None;
        loop {
            match UnixStream::connect(&self.sock) {
                Ok(stream) => {
                    let at = t0.elapsed();
                    let first = *connected.get_or_insert(at);
                    stream
                        .set_read_timeout(Some(READY_TIMEOUT))
                        .expect("set a read timeout");
                    let mut conn = Conn::new(stream);
                    if let Ok((200, _)) = conn.request("GET", "/", None) {
                        return (first, t0.elapsed(), conn);
                    }
                }
                Err(_) => std::thread::sleep(POLL),
            }
            self.check_alive(t0);
        }
    }

    /// Waits until `GET /` reports the instance state `state`.
    fn wait_state(&mut self, conn: &mut Conn, state: &str) {
        let since = Instant::now();
        loop {
            let (status, body) = conn.request("GET", "/", None).expect("GET /");
            assert_eq!(status, 200, "GET /: {body}");
            let info: serde_json::Value = serde_json::from_str(&body).expect("GET / JSON");
            if info["state"] == state {
                return;
            }
            self.check_alive(since);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends SIGTERM and reaps petrel (SIGKILL after 5 s); the time from the signal until
    /// petrel had exited, and its exit status unless it had to be killed.
    fn stop(&mut self) -> (Duration, Option<ExitStatus>) {
        if let Ok(Some(status)) = self.child.try_wait() {
            return (Duration::ZERO, Some(status));
        }
        let since = Instant::now();
        // SAFETY: kill() takes no pointers; the pid is our child's, not yet reaped, so it
        // cannot name another process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (since.elapsed(), Some(status));
            }
            if since.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (since.elapsed(), None);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Petrel {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Time from just before spawn until `cmd` exits successfully.
fn spawn_to_exit(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let elapsed = t0.elapsed();
    assert!(status.success(), "{cmd:?}: {status}");
    elapsed
}

fn startup(bin: &Path, dir: &Path, settings: &Settings, report: &mut Report) {
    const WARMUP: usize = 3;
    let (mut connect, mut ready, mut stop) = (vec![], vec![], vec![]);
    let (mut floor_true, mut floor_version) = (vec![], vec![]);
    for i in 0..WARMUP + settings.runs {
        let sock = dir.join(format!("start-{i}.sock"));
        let (mut petrel, t0) = Petrel::spawn(bin, &sock, &[]);
        let (c, r, conn) = petrel.wait_ready(t0);
        drop(conn);
        let (s, status) = petrel.stop();
        // 128 + 15: petrel handled the signal and shut down, rather than dying of it.
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(143),
            "petrel did not shut down on SIGTERM: {status:?}"
        );
        let t = spawn_to_exit(&mut Command::new("/bin/true"));
        let v = spawn_to_exit(Command::new(bin).arg("--version"));
        if i >= WARMUP {
            connect.push(c);
            ready.push(r);
            stop.push(s);
            floor_true.push(t);
            floor_version.push(v);
        }
    }
    report.add("start-up, no guest", "connect() succeeds", connect);
    report.add("start-up, no guest", "GET / answered 200", ready);
    report.add("start-up, no guest", "SIGTERM to exited", stop);
    report.add("floor", "/bin/true spawn to exit", floor_true);
    report.add("floor", "petrel --version spawn to exit", floor_version);
}

/// Times `n` calls of `f` after `warmup` unmeasured ones.
fn timed(warmup: usize, n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..warmup {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// Boots the idle test guest with `vcpus` vCPUs; the petrel and a keep-alive connection.
fn idle_guest(bin: &Path, dir: &Path, guest: &Path, vcpus: u32) -> (Petrel, Conn) {
    let sock = dir.join(format!("idle-{vcpus}.sock"));
    let vcpus = vcpus.to_string();
    let args = [
        "--kernel",
        guest.to_str().expect("UTF-8 temp path"),
        "--cmdline",
        "petrel.test=idle",
        "--serial",
        "none",
        "--memory",
        "128M",
        "--vcpus",
        &vcpus,
    ];
    let (mut petrel, t0) = Petrel::spawn(bin, &sock, &args);
    let (_, _, mut conn) = petrel.wait_ready(t0);
    petrel.wait_state(&mut conn, "Running");
    (petrel, conn)
}

fn get_root(bin: &Path, dir: &Path, guest: &Path, settings: &Settings, report: &mut Report) {
    const WARMUP: usize = 50;
    let group = "GET /, idle guest";
    let (petrel, mut conn) = idle_guest(bin, dir, guest, 1);
    let check = |r: io::Result<(u16, String)>| {
        let (status, body) = r.expect("GET /");
        assert_eq!(status, 200, "GET /: {body}");
    };
    let n = settings.requests;
    report.add(
        group,
        "keep-alive connection",
        timed(WARMUP, n, || check(conn.request("GET", "/", None))),
    );
    report.add(
        group,
        "new connection each",
        timed(WARMUP, n, || {
            check(Conn::connect(&petrel.sock).and_then(|mut c| c.request("GET", "/", None)))
        }),
    );
    let client = api::Client::new(&petrel.sock);
    report.add(
        group,
        "api::Client (new conn+runtime)",
        timed(WARMUP, n, || {
            check(
                client
                    .request("GET", "/", None)
                    .map_err(|e| io::Error::other(e.to_string())),
            )
        }),
    );
}

fn pause_resume(bin: &Path, dir: &Path, guest: &Path, settings: &Settings, report: &mut Report) {
    const WARMUP: usize = 10;
    for vcpus in [1, 2] {
        let (mut petrel, mut conn) = idle_guest(bin, dir, guest, vcpus);
        let mut patch = |state: &str| {
            let body = format!(r#"{{"state":"{state}"}}"#);
            let t = Instant::now();
            let (status, text) = conn
                .request("PATCH", "/vm", Some(&body))
                .expect("PATCH /vm");
            let elapsed = t.elapsed();
            assert_eq!(status, 204, "PATCH /vm {state}: {text}");
            elapsed
        };
        let (mut pause, mut resume) = (vec![], vec![]);
        for i in 0..WARMUP + settings.pauses {
            let p = patch("Paused");
            let r = patch("Resumed");
            if i >= WARMUP {
                pause.push(p);
                resume.push(r);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        petrel.wait_state(&mut conn, "Running");
        let group = format!(
            "PATCH /vm, {vcpus} vCPU{}",
            if vcpus > 1 { "s" } else { "" }
        );
        report.add(&group, "Paused", pause);
        report.add(&group, "Resumed", resume);
    }
}

fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn main() {
    let settings = Settings::from_env();
    let bin: PathBuf = std::env::var_os("PETREL_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_petrel").into());
    // Sleeps between connect() attempts last what they ask for, not 50 µs more.
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    let dir = tempfile::Builder::new()
        .prefix("petrel-api-bench")
        .tempdir()
        .expect("temporary directory");
    println!(
        "petrel API benchmark{}: {}",
        if settings.smoke { " (smoke run)" } else { "" },
        bin.display()
    );
    println!(
        "  start-up: {} runs, connect() polled every {} us; GET /: {} requests per case; \
         PATCH /vm: {} pause/resume cycles per vCPU count",
        settings.runs,
        POLL.as_micros(),
        settings.requests,
        settings.pauses
    );
    let mut report = Report {
        rows: vec![],
        json: vec![],
    };
    startup(&bin, dir.path(), &settings, &mut report);
    if kvm_available() {
        let guest = dir.path().join("guest.elf");
        std::fs::write(&guest, resources::TEST_GUEST).expect("write the test guest");
        get_root(&bin, dir.path(), &guest, &settings, &mut report);
        pause_resume(&bin, dir.path(), &guest, &settings, &mut report);
    } else {
        println!("  /dev/kvm is not available: the idle-guest cases are skipped");
    }
    report.print();
    let ready = report.find("start-up, no guest: GET / answered 200");
    if let Some(ready) = ready.filter(|_| !settings.smoke) {
        let median = ready.pct(50.0);
        let verdict = if median <= STARTUP_TARGET {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "\ntarget (start-up to GET / 200, median <= {}): {} -> {verdict} \
             (Firecracker documents 6-60 ms, typically 12 ms)",
            show(STARTUP_TARGET),
            show(median)
        );
    }
    report::emit_json(&report.json);
}
