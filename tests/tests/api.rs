//! The REST API against the real binary over a real socket: configure-then-start, a guest
//! booted with --kernel and controlled while it runs, Firecracker's curl session, runtime
//! drive changes, and every error path.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::{fnv1a64, kvm_available, test_guest};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn guest() -> &'static str {
    test_guest().to_str().unwrap()
}

fn boot_source(vm: &ApiVm, scenario: &str) {
    vm.ok(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": guest(), "boot_args": format!("petrel.test={scenario}") }),
    );
}

/// Pauses and checks that the guest makes no progress, then resumes and checks it goes on.
fn pause_really_stops_the_guest(vm: &ApiVm) {
    vm.wait_count_above(None);
    vm.set_state("Paused");
    assert_eq!(vm.state(), "Paused");
    let frozen = vm.last_count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.last_count(), frozen, "the guest ran while paused");
    vm.set_state("Paused");
    vm.set_state("Resumed");
    assert_eq!(vm.state(), "Running");
    vm.wait_count_above(frozen);
}

#[test]
fn configure_through_the_api_then_start_pause_resume_and_kill() {
    let mut vm = ApiVm::spawn(&[]);
    assert_eq!(vm.state(), "Not started");
    let info = vm.get("/");
    assert_eq!(info["app_name"], "petrel");
    assert_eq!(info["id"], "anonymous-instance");
    // Nothing boots until InstanceStart: not even the demo guest.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vm.serial(), "");

    boot_source(&vm, "count");
    vm.ok(
        "PUT",
        "/machine-config",
        json!({ "vcpu_count": 2, "mem_size_mib": 64 }),
    );
    vm.ok("PATCH", "/machine-config", json!({ "vcpu_count": 3 }));
    let mc = vm.get("/machine-config");
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(3), Some(64))
    );
    let config = vm.get("/vm/config");
    assert_eq!(config["machine"]["vcpus"], 3);
    assert_eq!(config["boot"]["cmdline"], "petrel.test=count");
    if !kvm_available() {
        return;
    }
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    assert_eq!(vm.state(), "Running");
    let msg = vm.fails(
        "PUT",
        "/actions",
        Some(json!({ "action_type": "InstanceStart" })),
        400,
    );
    assert!(msg.contains("while the VM is Running"), "{msg}");
    pause_really_stops_the_guest(&vm);

    let metrics = vm.request("GET", "/metrics", None).1;
    assert!(
        metrics.contains("petrel_vm_state{state=\"Running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("petrel_vcpu_exits_total{vcpu=\"2\",reason=\"io_out\"}"));

    vm.ok("PUT", "/actions", json!({ "action_type": "Kill" }));
    let sock = vm.socket().to_owned();
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn a_guest_booted_with_kernel_is_controlled_while_it_runs() {
    if !kvm_available() {
        return;
    }
    let metrics_file_dir = tempfile::tempdir().unwrap();
    let metrics_file = metrics_file_dir.path().join("metrics.json");
    let mut vm = ApiVm::spawn(&[
        "--kernel",
        guest(),
        "--cmdline",
        "petrel.test=count",
        "--id",
        "vm-7",
    ]);
    assert_eq!(vm.get("/")["id"], "vm-7");
    assert_eq!(vm.state(), "Running");
    let msg = vm.fails(
        "PUT",
        "/boot-source",
        Some(json!({ "kernel_image_path": guest() })),
        400,
    );
    assert_eq!(
        msg,
        "PUT /boot-source is not allowed while the VM is Running; it is allowed when the VM is Not started"
    );
    pause_really_stops_the_guest(&vm);

    vm.ok(
        "PUT",
        "/metrics",
        json!({ "metrics_path": metrics_file.to_str().unwrap() }),
    );
    vm.ok("PUT", "/actions", json!({ "action_type": "FlushMetrics" }));
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&metrics_file).unwrap().trim()).unwrap();
    assert_eq!(line["vm"]["state"], "Running");

    // Ctrl+Alt+Del reaches the guest through the i8042; the count scenario then powers off.
    vm.ok(
        "PUT",
        "/actions",
        json!({ "action_type": "SendCtrlAltDel" }),
    );
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
}

#[test]
fn shutdown_asks_the_guest_and_it_powers_off() {
    if !kvm_available() {
        return;
    }
    let mut vm = ApiVm::spawn(&["--kernel", guest(), "--cmdline", "petrel.test=count"]);
    vm.wait_count_above(None);
    vm.set_state("Paused");
    let msg = vm.fails(
        "PUT",
        "/actions",
        Some(json!({ "action_type": "Shutdown" })),
        400,
    );
    assert!(msg.contains("while the VM is Paused"), "{msg}");
    vm.set_state("Resumed");
    vm.ok("PUT", "/actions", json!({ "action_type": "Shutdown" }));
    vm.wait_serial(EXIT_TIMEOUT, |l| (l == "CTRL-ALT-DEL").then_some(()));
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
}

/// A disk image of `sectors` sectors whose bytes follow `seed`.
fn image(vm: &ApiVm, name: &str, sectors: usize, seed: u8) -> (String, Vec<u8>) {
    let data: Vec<u8> = (0..sectors * 512)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let path = vm.path(name);
    std::fs::write(&path, &data).unwrap();
    (path.to_str().unwrap().to_string(), data)
}

#[test]
fn patching_a_drive_swaps_its_backing_file_and_the_guest_reads_the_new_content() {
    if !kvm_available() {
        return;
    }
    let mut vm = ApiVm::spawn(&[]);
    let (old, old_data) = image(&vm, "old.img", 64, 0x11);
    let (new, new_data) = image(&vm, "new.img", 128, 0x22);
    boot_source(&vm, "blkswap");
    vm.ok(
        "PUT",
        "/drives/scratch",
        json!({ "drive_id": "scratch", "path_on_host": old, "is_root_device": false }),
    );
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    let before = vm.wait_serial(EXIT_TIMEOUT, |l| {
        l.strip_prefix("BLKSWAP before fnv=").map(str::to_string)
    });
    assert_eq!(before, format!("{:016x}", fnv1a64(&old_data[..512])));

    // A file that does not exist changes nothing.
    let msg = vm.fails(
        "PATCH",
        "/drives/scratch",
        Some(
            json!({ "drive_id": "scratch", "path_on_host": vm.path("missing").to_str().unwrap() }),
        ),
        400,
    );
    assert!(msg.starts_with("path_on_host:"), "{msg}");
    let msg = vm.fails(
        "PATCH",
        "/drives/nope",
        Some(json!({ "drive_id": "nope", "path_on_host": new })),
        400,
    );
    assert!(msg.contains("\"nope\""), "{msg}");

    // Swapped while paused, so the configuration can be read before the guest, which ends
    // as soon as it sees the new content, stops the VM.
    vm.set_state("Paused");
    vm.ok(
        "PATCH",
        "/drives/scratch",
        json!({ "drive_id": "scratch", "path_on_host": new,
                "rate_limiter": { "ops": { "size": 1000, "refill_time": 1000 } } }),
    );
    let config = vm.get("/vm/config");
    assert_eq!(config["disks"][0]["path"], new.as_str());
    assert_eq!(config["disks"][0]["rate_limiter"]["ops"]["size"], 1000);
    let metrics = vm.request("GET", "/metrics", None).1;
    assert!(
        metrics.contains("petrel_virtio_backing_swaps{device=\"scratch\",type=\"block\"} 1"),
        "{metrics}"
    );
    vm.set_state("Resumed");
    let after = vm.wait_serial(EXIT_TIMEOUT, |l| {
        l.strip_prefix("BLKSWAP after ").map(str::to_string)
    });
    assert_eq!(
        after,
        format!("fnv={:016x} capacity=128", fnv1a64(&new_data[..512]))
    );
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(
        vm.serial().lines().any(|l| l == "PASS blkswap"),
        "{}",
        vm.serial()
    );
}

/// Firecracker's getting-started guide, with `curl`, against petrel: logger, boot source,
/// root drive, machine config, InstanceStart. The test guest runs its block scenario on the
/// root drive.
#[test]
fn firecracker_getting_started_curl_session_boots_the_test_guest() {
    let mut vm = ApiVm::spawn(&[]);
    let (rootfs, _) = image(&vm, "rootfs.ext4", 64, 0x33);
    let log = vm.path("firecracker.log");
    let sock = vm.socket().to_str().unwrap().to_string();
    let curl = |method: &str, path: &str, body: serde_json::Value| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "--unix-socket",
                &sock,
            ])
            .arg(format!("http://localhost{path}"))
            .args([
                "-H",
                "Accept: application/json",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", &body.to_string()])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.ends_with("204"), "{method} {path}: {text}");
    };
    curl(
        "PUT",
        "/logger",
        json!({ "log_path": log, "level": "Debug", "show_level": true, "show_log_origin": true }),
    );
    curl(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": guest(), "boot_args": "console=ttyS0 reboot=k panic=1 petrel.test=blk" }),
    );
    curl(
        "PUT",
        "/drives/rootfs",
        json!({ "drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": false }),
    );
    curl(
        "PUT",
        "/machine-config",
        json!({ "vcpu_count": 2, "mem_size_mib": 128 }),
    );
    if !kvm_available() {
        return;
    }
    curl("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    let serial = vm.serial();
    assert!(serial.lines().any(|l| l == "PASS blk"), "{serial}");
    // The root drive is the guest's first disk, named on the command line as Firecracker
    // names it; the logger writes at Debug level to its file.
    assert!(serial.contains("BLK 0 capacity=64 ro=0"), "{serial}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "{logged}");
    assert!(logged.contains("root=/dev/vda rw"), "{logged}");
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut vm = ApiVm::spawn(&[]);
    let config = vm.get("/vm/config");
    let bad = |method: &str, path: &str, body: &[u8]| {
        let (status, reply) = vm.request_bytes(method, path, body);
        assert_eq!(
            status,
            400,
            "{method} {path} {}: {reply}",
            String::from_utf8_lossy(body)
        );
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        v["fault_message"].as_str().unwrap().to_string()
    };
    let msg = bad("PUT", "/machine-config", b"{\"vcpu_count\": 2,");
    assert!(msg.starts_with("malformed JSON"), "{msg}");
    let msg = bad(
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": "two", "mem_size_mib": 64}"#,
    );
    assert!(msg.contains("vcpu_count"), "{msg}");
    let msg = bad(
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": 1, "mem_size_mib": 64, "gpu": 1}"#,
    );
    assert!(msg.contains("unknown field `gpu`"), "{msg}");
    let msg = bad(
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": 300, "mem_size_mib": 64}"#,
    );
    assert!(
        msg.starts_with("vcpu_count must be between 1 and 254"),
        "{msg}"
    );
    let msg = bad(
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": 1, "mem_size_mib": 1}"#,
    );
    assert!(msg.starts_with("mem_size_mib:"), "{msg}");
    let msg = bad(
        "PUT",
        "/drives/a.b",
        br#"{"drive_id": "a.b", "path_on_host": "/x", "is_root_device": false}"#,
    );
    assert!(msg.starts_with("invalid drive_id"), "{msg}");
    let msg = bad(
        "PUT",
        "/drives/d0",
        br#"{"drive_id": "d0", "path_on_host": "/nonexistent/disk.img", "is_root_device": false}"#,
    );
    assert!(
        msg.starts_with("path_on_host: \"/nonexistent/disk.img\""),
        "{msg}"
    );
    let msg = bad(
        "PUT",
        "/boot-source",
        br#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
    );
    assert!(msg.starts_with("kernel_image_path:"), "{msg}");
    let msg = bad("PUT", "/actions", br#"{"action_type": "Reboot"}"#);
    assert!(msg.contains("action_type"), "{msg}");
    let msg = bad("PATCH", "/vm", br#"{"state": "Paused"}"#);
    assert!(msg.contains("while the VM is Not started"), "{msg}");
    let msg = bad("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#);
    assert!(msg.starts_with("no kernel is configured"), "{msg}");
    let msg = bad("PUT", "/actions", br#"{"action_type": "FlushMetrics"}"#);
    assert!(msg.contains("PUT /metrics first"), "{msg}");
    let msg = bad("PUT", "/logger", br#"{"level": "Loud"}"#);
    assert!(msg.starts_with("level:"), "{msg}");
    let msg = bad(
        "PUT",
        "/metrics",
        br#"{"metrics_path": "/nonexistent/dir/m.json"}"#,
    );
    assert!(msg.starts_with("metrics_path:"), "{msg}");

    // A client that sends half a request and goes away, and one that sends a body larger
    // than the limit, disturb nobody.
    let mut half = UnixStream::connect(vm.socket()).unwrap();
    half.write_all(
        b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"vcpu",
    )
    .unwrap();
    drop(half);
    let (status, _) = vm.request_bytes("PUT", "/boot-source", &vec![b' '; 70 * 1024]);
    assert_eq!(status, 413);
    assert_eq!(vm.get("/vm/config"), config, "nothing changed");
    assert_eq!(vm.state(), "Not started");

    if !kvm_available() {
        return;
    }
    // A configuration that cannot be built is refused at InstanceStart and kept; once
    // fixed, the VM starts.
    let (locked, _) = image(&vm, "locked.img", 8, 0);
    boot_source(&vm, "count");
    vm.ok(
        "PUT",
        "/drives/d0",
        json!({ "drive_id": "d0", "path_on_host": locked, "is_root_device": false }),
    );
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&locked)
        .unwrap();
    lock_file(&holder);
    let msg = vm.fails(
        "PUT",
        "/actions",
        Some(json!({ "action_type": "InstanceStart" })),
        400,
    );
    assert!(msg.contains("locked"), "{msg}");
    assert_eq!(vm.state(), "Not started");
    drop(holder);
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    assert_eq!(vm.state(), "Running");
    vm.ok("PUT", "/actions", json!({ "action_type": "Kill" }));
    let sock = vm.socket().to_owned();
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    // After the VM stopped, the API is gone with it: a client gets a clear error.
    let err = api::Client::new(&sock)
        .request("GET", "/", None)
        .unwrap_err();
    assert!(err.to_string().contains("failed to connect"), "{err}");
}

/// Takes an OFD write lock on `file`, as another VMM holding the image would.
fn lock_file(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: flock is a plain C struct; all-zero is valid before the fields are set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_OFD_SETLK with a valid descriptor and a valid flock pointer.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "lock: {}", std::io::Error::last_os_error());
}

#[test]
fn the_socket_is_private_a_stale_one_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("api.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let vm = ApiVm::spawn(&[]);
    let mode = std::fs::metadata(vm.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Replacing a stale socket: a second petrel on a path nothing listens on starts.
    let mut second = tests::command(&["--api-sock", stale.to_str().unwrap()])
        .spawn()
        .unwrap();
    let client = api::Client::new(&stale);
    let start = std::time::Instant::now();
    while client.request("GET", "/", None).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stale socket was not replaced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = second.kill();
    let _ = second.wait();

    // A live socket is refused, and the running petrel is not disturbed.
    let out = tests::run(
        &["--api-sock", vm.socket().to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("in use by a running process"), "{out}");
    assert_eq!(vm.state(), "Not started");
}

#[test]
fn a_signal_stops_petrel_in_order_before_the_guest_starts() {
    let mut vm = ApiVm::spawn(&[]);
    vm.signal(libc::SIGTERM);
    let out = vm.finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{out}");
    assert!(!vm.socket().exists(), "the socket is removed");
}
