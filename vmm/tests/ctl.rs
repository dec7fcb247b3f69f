//! `petrel ctl` against a real API server whose VMM side is a fake: a thread that records
//! each request and answers it as a running VMM would. What is under test is the client
//! binary: the requests it makes, what it prints, and its exit status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use api::types::{
    ActionType, DrivePatch, MigrationInfo, MigrationReceiveParams, MigrationSendParams,
    NetworkInterfacePatch, RateLimiter, TokenBucket, VmState,
};
use api::{ApiRequest, ApiResponse, ApiServer};
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

const INFO: &str =
    r#"{"id":"test-vm","state":"Running","vmm_version":"0.1.0","app_name":"petrel"}"#;
const KILL_REFUSED: &str = "cannot kill: the VM is not running";
const METRICS: &str = "# TYPE petrel_vcpu_exits_total counter\n\
                       petrel_vcpu_exits_total{vcpu=\"0\"} 7\npetrel_uptime_seconds 2.5\n";

/// How the fake VMM answers.
fn answer(req: &ApiRequest) -> ApiResponse {
    match req {
        ApiRequest::GetInstanceInfo => ApiResponse::Json(serde_json::from_str(INFO).unwrap()),
        ApiRequest::GetVmConfig => ApiResponse::Json(json!({"machine": {"vcpus": 2}})),
        ApiRequest::GetMetrics => ApiResponse::Text(METRICS.into()),
        ApiRequest::Action(ActionType::Kill) => ApiResponse::error(400, KILL_REFUSED),
        ApiRequest::PatchVm(_)
        | ApiRequest::Action(_)
        | ApiRequest::PatchDrive(_)
        | ApiRequest::PatchNetworkInterface(_) => ApiResponse::NoContent,
        other => ApiResponse::error(500, format!("the fake VMM does not handle {other:?}")),
    }
}

/// An API server with the fake VMM behind it.
struct FakeVmm {
    dir: tempfile::TempDir,
    seen: Arc<Mutex<Vec<ApiRequest>>>,
    server: Option<ApiServer>,
    responder: Option<JoinHandle<()>>,
}

impl FakeVmm {
    fn start() -> Self {
        Self::answering(answer)
    }

    /// A fake VMM whose answers come from `answer`, which may keep state.
    fn answering(mut answer: impl FnMut(&ApiRequest) -> ApiResponse + Send + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel::<(ApiRequest, mpsc::Sender<ApiResponse>)>();
        let wake = EventFd::new(0).unwrap();
        let server = ApiServer::start(&dir.path().join("api.sock"), tx, wake).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        // Ends when the server, and with it the sending side, is dropped.
        let responder = std::thread::spawn(move || {
            while let Ok((req, reply)) = rx.recv() {
                let resp = answer(&req);
                log.lock().unwrap().push(req);
                let _ = reply.send(resp);
            }
        });
        FakeVmm {
            dir,
            seen,
            server: Some(server),
            responder: Some(responder),
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// The requests received so far, emptying the record.
    fn take_seen(&self) -> Vec<ApiRequest> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(t) = self.responder.take() {
            let _ = t.join();
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `petrel ctl --api-sock SOCK ARGS...`, run in `cwd`.
fn ctl_in(cwd: &Path, sock: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .current_dir(cwd)
        .arg("ctl")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out
            .status
            .code()
            .expect("petrel ctl was killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ctl(vmm: &FakeVmm, args: &[&str]) -> Run {
    ctl_in(vmm.dir.path(), &vmm.sock(), args)
}

fn bucket(size: u64, one_time_burst: u64, refill_time: u64) -> Option<TokenBucket> {
    Some(TokenBucket {
        size,
        one_time_burst: Some(one_time_burst),
        refill_time,
    })
}

#[test]
fn status_prints_id_state_and_version_or_the_json_body() {
    let vmm = FakeVmm::start();
    let r = ctl(&vmm, &["status"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    assert_eq!(r.stdout, "id: test-vm\nstate: Running\nversion: 0.1.0\n");

    let r = ctl(&vmm, &["--json", "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        serde_json::from_str::<Value>(INFO).unwrap()
    );
    assert_eq!(vmm.take_seen(), vec![ApiRequest::GetInstanceInfo; 2]);
}

#[test]
fn lifecycle_commands_send_their_request_and_confirm() {
    let vmm = FakeVmm::start();
    for (args, printed) in [
        (&["pause"][..], "paused\n"),
        (&["resume"], "resumed\n"),
        (&["start"], "started\n"),
        (&["shutdown"], "shutdown requested\n"),
        (&["ctrl-alt-del"], "Ctrl+Alt+Del sent\n"),
        (&["pause", "--json"], "{}\n"),
    ] {
        let r = ctl(&vmm, args);
        assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{args:?}");
        assert_eq!(r.stdout, printed, "{args:?}");
    }
    assert_eq!(
        vmm.take_seen(),
        [
            ApiRequest::PatchVm(VmState::Paused),
            ApiRequest::PatchVm(VmState::Resumed),
            ApiRequest::Action(ActionType::InstanceStart),
            ApiRequest::Action(ActionType::Shutdown),
            ApiRequest::Action(ActionType::SendCtrlAltDel),
            ApiRequest::PatchVm(VmState::Paused),
        ]
    );
}

#[test]
fn an_error_answer_prints_its_fault_message_and_exits_1() {
    let vmm = FakeVmm::start();
    let r = ctl(&vmm, &["kill"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr, format!("petrel: error: {KILL_REFUSED}\n"));

    let r = ctl(&vmm, &["--json", "kill"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, format!("petrel: error: {KILL_REFUSED}\n"));
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!({ "fault_message": KILL_REFUSED })
    );
    assert_eq!(
        vmm.take_seen(),
        vec![ApiRequest::Action(ActionType::Kill); 2]
    );
}

#[test]
fn config_is_pretty_and_metrics_are_text_or_series_to_values() {
    let vmm = FakeVmm::start();
    let r = ctl(&vmm, &["config"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "{\n  \"machine\": {\n    \"vcpus\": 2\n  }\n}\n");

    let r = ctl(&vmm, &["metrics"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, METRICS);

    let r = ctl(&vmm, &["metrics", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!({"petrel_vcpu_exits_total{vcpu=\"0\"}": 7, "petrel_uptime_seconds": 2.5})
    );
}

#[test]
fn drive_and_net_changes_reach_the_vmm_with_absolute_paths_and_full_limits() {
    let vmm = FakeVmm::start();
    let cwd = vmm.dir.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let set_path = ctl_in(
        &cwd,
        &vmm.sock(),
        &["drive", "set-path", "root", "disk.img"],
    );
    let set_rate = ctl(
        &vmm,
        &["drive", "set-rate", "root", "bw=10M,ops_burst=5,ops=100"],
    );
    let clear = ctl(&vmm, &["drive", "set-rate", "root", "none"]);
    let net = ctl(&vmm, &["net", "set-rate", "eth0", "--tx", "ops=1000"]);
    for (r, printed) in [
        (&set_path, "drive root: backing file replaced\n"),
        (
            &set_rate,
            "drive root: rate limit bw=10M,ops_burst=5,ops=100\n",
        ),
        (&clear, "drive root: rate limit unlimited\n"),
        (&net, "net eth0: rate limit tx ops=1000\n"),
    ] {
        assert_eq!((r.code, r.stderr.as_str()), (0, ""));
        assert_eq!(r.stdout, printed);
    }
    let off = RateLimiter {
        bandwidth: bucket(0, 0, 0),
        ops: bucket(0, 0, 0),
    };
    assert_eq!(
        vmm.take_seen(),
        [
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: Some(cwd.join("disk.img").to_str().unwrap().into()),
                rate_limiter: None,
            }),
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: None,
                rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(10 << 20, 0, 1000),
                    ops: bucket(100, 5, 1000),
                }),
            }),
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: None,
                rate_limiter: Some(off.clone()),
            }),
            ApiRequest::PatchNetworkInterface(NetworkInterfacePatch {
                iface_id: "eth0".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(0, 0, 0),
                    ops: bucket(1000, 0, 1000),
                }),
            }),
        ]
    );
}

#[test]
fn bad_input_exits_2_and_sends_nothing() {
    let vmm = FakeVmm::start();
    let r = ctl(&vmm, &["drive", "set-rate", "a/b", "none"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with("petrel: error: invalid drive id \"a/b\""),
        "{}",
        r.stderr
    );
    let r = ctl(&vmm, &["drive", "set-rate", "root", "bw=0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("bw=0"), "{}", r.stderr);
    let r = ctl(&vmm, &["net", "set-rate", "eth0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "petrel: error: net set-rate eth0: give --rx SPEC, --tx SPEC or both\n"
    );
    // The socket may come after the command; without one, nothing can be sent.
    let sock = vmm.sock();
    let sock = sock.to_str().unwrap();
    assert_eq!(ctl_in(vmm.dir.path(), Path::new(sock), &[]).code, 2);
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["ctl", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --api-sock PATH"));
    let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["ctl", "pause", "--api-sock", sock])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(vmm.take_seen(), [ApiRequest::PatchVm(VmState::Paused)]);
}

#[test]
fn a_missing_socket_is_named_with_a_hint_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let expected = format!(
        "petrel: error: cannot connect to API socket {}: No such file or directory \
         (is petrel running with --api-sock?)\n",
        sock.display()
    );
    let r = ctl_in(dir.path(), &sock, &["status"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr, expected);

    let r = ctl_in(dir.path(), &sock, &["--json", "pause"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr, expected);
    let body: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(body["fault_message"]
        .as_str()
        .unwrap()
        .contains("cannot connect to API socket"));
}

#[test]
fn a_socket_left_by_a_stopped_server_is_refused_not_hung_on() {
    let vmm = FakeVmm::start();
    let sock = vmm.sock();
    // A stale socket file with no listener behind it.
    let stale = vmm.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let r = ctl_in(vmm.dir.path(), &stale, &["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    // The live one still answers.
    assert_eq!(ctl_in(vmm.dir.path(), &sock, &["status"]).code, 0);
}

/// A migration's progress as `GET /migration` reports it.
fn progress(role: &str, state: &str, round: u32) -> MigrationInfo {
    MigrationInfo {
        role: role.into(),
        state: state.into(),
        url: Some("unix:/run/m.sock".into()),
        round,
        total_pages: 32768,
        pages: 8192 * u64::from(round + 1),
        bytes: (32 << 20) * u64::from(round + 1),
        dirty_pages: 100,
        bandwidth: 1 << 30,
        expected_downtime_ms: 0.3,
        downtime_ms: None,
        throttle_percent: 0,
        elapsed_ms: 25.0 * f64::from(round + 1),
        error: None,
    }
}

/// A fake VMM that accepts the migration requests and answers `GET /migration` with `steps`
/// in turn, the last one from then on.
fn migrating(steps: Vec<ApiResponse>) -> FakeVmm {
    let mut next = 0;
    FakeVmm::answering(move |req| match req {
        ApiRequest::MigrationSend(_) | ApiRequest::MigrationReceive(_) => ApiResponse::NoContent,
        ApiRequest::GetMigration => {
            let step = steps[next.min(steps.len() - 1)].clone();
            next += 1;
            step
        }
        other => answer(other),
    })
}

fn json_of(info: MigrationInfo) -> ApiResponse {
    ApiResponse::Json(serde_json::to_value(info).unwrap())
}

#[test]
fn migrate_send_follows_the_rounds_and_succeeds_when_the_source_goes_after_stopping() {
    // The source's VMM thread ends once the destination runs the VM: 503 (or no socket).
    let vmm = migrating(vec![
        json_of(progress("send", "connecting", 0)),
        json_of(progress("send", "precopy", 0)),
        json_of(progress("send", "precopy", 0)),
        json_of(progress("send", "precopy", 1)),
        json_of(progress("send", "stopping", 2)),
        ApiResponse::error(503, "the VMM thread is not running"),
    ]);
    let r = ctl(
        &vmm,
        &[
            "migrate",
            "send",
            "unix:m.sock",
            "--downtime-ms",
            "20",
            "--no-auto-converge",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Not a terminal: one line per state or round.
    assert_eq!(
        r.stderr.lines().collect::<Vec<_>>(),
        [
            "migration: connecting to unix:/run/m.sock",
            "migration: precopy, round 0: 8192/32768 pages, 32.0 MiB sent, 1024.0 MiB/s, \
             100 dirty pages, throttle 0%",
            "migration: precopy, round 1: 16384/32768 pages, 64.0 MiB sent, 1024.0 MiB/s, \
             100 dirty pages, throttle 0%",
            "migration: stopping, round 2: 24576/32768 pages, 96.0 MiB sent, 1024.0 MiB/s, \
             100 dirty pages, throttle 0%",
        ]
    );
    assert!(
        r.stdout.starts_with("migration completed in ")
            && r.stdout
                .ends_with(": downtime not reported, 96.0 MiB sent\n"),
        "{}",
        r.stdout
    );
    let seen = vmm.take_seen();
    let sock = vmm.dir.path().join("m.sock");
    assert_eq!(
        seen[0],
        ApiRequest::MigrationSend(MigrationSendParams {
            url: format!("unix:{}", sock.display()),
            downtime_ms: Some(20),
            auto_converge: Some(false),
            ..Default::default()
        })
    );
    assert_eq!(seen[1..], vec![ApiRequest::GetMigration; 6]);
}

#[test]
fn migrate_send_prints_the_reported_figures_when_it_sees_completed() {
    let mut done = progress("send", "completed", 3);
    done.downtime_ms = Some(1.5);
    done.elapsed_ms = 2500.0;
    let vmm = migrating(vec![
        json_of(progress("send", "precopy", 0)),
        json_of(done.clone()),
    ]);
    let r = ctl(&vmm, &["migrate", "send", "tcp:10.0.0.2:4444"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "migration completed in 2.50 s: downtime 1.5 ms, 128.0 MiB sent\n"
    );
    // --json: the last progress, for scripts.
    let vmm = migrating(vec![json_of(done.clone())]);
    let r = ctl(&vmm, &["--json", "migrate", "send", "tcp:10.0.0.2:4444"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<MigrationInfo>(&r.stdout).unwrap(),
        done
    );
}

#[test]
fn migrate_send_fails_when_the_source_goes_before_its_final_pause() {
    let vmm = migrating(vec![
        json_of(progress("send", "precopy", 0)),
        ApiResponse::error(503, "the VMM thread is not running"),
    ]);
    let r = ctl(&vmm, &["migrate", "send", "tcp:10.0.0.2:4444"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.ends_with(
            "petrel: error: the sending petrel stopped answering while the migration was \
             precopy: the VMM thread is not running\n"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn migrate_receive_reports_the_error_of_a_failed_migration_and_exits_1() {
    let mut failed = progress("receive", "failed", 0);
    failed.error = Some("incompatible source: 2 vCPUs here, 4 there".into());
    let vmm = migrating(vec![
        json_of(progress("receive", "listening", 0)),
        json_of(failed),
    ]);
    let r = ctl(&vmm, &["migrate", "receive", "tcp:0.0.0.0:0"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "migration: listening on unix:/run/m.sock\nmigration: failed\n\
         petrel: error: migration failed: incompatible source: 2 vCPUs here, 4 there\n"
    );
    assert_eq!(
        vmm.take_seen()[0],
        ApiRequest::MigrationReceive(MigrationReceiveParams {
            url: "tcp:0.0.0.0:0".into()
        })
    );
}

#[test]
fn migrate_no_wait_returns_at_once_and_status_prints_the_json() {
    let vmm = migrating(vec![json_of(progress("receive", "listening", 0))]);
    let r = ctl(
        &vmm,
        &["migrate", "receive", "unix:/run/m.sock", "--no-wait"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "listening for a migration on unix:/run/m.sock\n");
    assert_eq!(vmm.take_seen().len(), 1, "no GET /migration");

    let r = ctl(&vmm, &["migrate", "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown: MigrationInfo = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(shown, progress("receive", "listening", 0));
    assert!(
        r.stdout.contains("\n  \"role\": \"receive\""),
        "pretty: {}",
        r.stdout
    );
    assert_eq!(vmm.take_seen(), [ApiRequest::GetMigration]);
}

#[test]
fn a_refused_migration_request_is_not_followed() {
    // The fake VMM of the other tests refuses what it does not know.
    let vmm = FakeVmm::start();
    let r = ctl(&vmm, &["migrate", "send", "unix:/run/m.sock"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("petrel: error: the fake VMM does not handle"),
        "{}",
        r.stderr
    );
    assert_eq!(vmm.take_seen().len(), 1, "no GET /migration");
}
