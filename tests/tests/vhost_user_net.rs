//! vhost-user-net end to end: a loop-back back end ([`LoopServer`], on a thread of the test)
//! serves the guest's NIC over a vhost-user socket; a frame the guest sends comes back to it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use resources::snapshot_proto::{fnv1a64, net_frame};
use serde_json::json;
use tests::api_vm::ApiVm;
use tests::backend_process::BackendProcess;
use tests::snapshot_guest::SnapshotGuest;
use tests::vhost_user_net_loop::{LoopConfig, LoopServer};
use tests::{kvm_available, test_guest};

/// The back end's MAC, which the guest sees when petrel is given none.
const BACKEND_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];

/// Serves `socket` with the loop-back back end on a thread, for the rest of the test.
fn loop_server(socket: &Path) -> std::sync::Arc<tests::vhost_user_net_loop::Counters> {
    let config = LoopConfig {
        mac: BACKEND_MAC,
        ..LoopConfig::default()
    };
    let mut server = LoopServer::bind(socket, config).expect("bind the loop-back back end");
    let counters = server.counters();
    std::thread::spawn(move || server.serve(|_| {}));
    counters
}

/// Sends frame `n` with `n`, waits for it with `m`, and returns it as (length, hash).
fn loop_frame(vm: &ApiVm, guest: &mut SnapshotGuest) -> (u64, (usize, u64)) {
    let n = guest.net(vm);
    let start = Instant::now();
    loop {
        if let Some(got) = guest.net_recv(vm) {
            return (n, got);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "frame {n} did not come back"
        );
    }
}

#[test]
fn a_frame_the_guest_sends_comes_back_through_the_loop_back_back_end() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let counters = loop_server(&socket);

    let device = format!("socket={}", socket.display());
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &["--vhost-user-net", &device]);
    let (n, got) = loop_frame(&vm, &mut guest);

    // The guest used the back end's MAC (from its config space) as the source.
    let frame = net_frame(BACKEND_MAC, n);
    assert_eq!(got, (frame.len(), fnv1a64(&frame)), "frame {n}");
    assert!(counters.looped() >= 1);
    guest.quit(&mut vm);
}

/// The `vhost-user-net-loop` binary serving `socket`; killed when dropped.
fn loop_process(socket: &Path) -> BackendProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vhost-user-net-loop"));
    command.arg("--socket").arg(socket).stderr(Stdio::null());
    BackendProcess::start(command, socket)
}

/// Waits until petrel's metrics (`GET /metrics`) have `line`.
fn wait_metric(vm: &ApiVm, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = vm.request("GET", "/metrics", None).1;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "{line}\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn frames_loop_again_after_the_back_end_is_killed_and_started_again() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let backend = loop_process(&socket);
    let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x43];
    let device = format!("socket={},id=vn0,mac=02:00:00:00:00:43", socket.display());
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &["--vhost-user-net", &device]);
    let (n, got) = loop_frame(&vm, &mut guest);
    assert_eq!(got.1, fnv1a64(&net_frame(mac, n)), "frame {n}");

    drop(backend);
    wait_metric(
        &vm,
        "petrel_virtio_vhost_user_connected{device=\"vn0\",type=\"net\"} 0",
    );
    let _backend = loop_process(&socket);
    wait_metric(
        &vm,
        "petrel_virtio_vhost_user_reconnections{device=\"vn0\",type=\"net\"} 1",
    );

    let (n, got) = loop_frame(&vm, &mut guest);
    assert_eq!(
        got.1,
        fnv1a64(&net_frame(mac, n)),
        "frame {n} after the restart"
    );
    guest.quit(&mut vm);
}

#[test]
fn api_adds_the_device_with_a_mac_of_its_own_a_snapshot_pauses_it_and_migration_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    loop_server(&socket);
    let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];

    let vm = ApiVm::spawn(&[]);
    vm.ok(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": test_guest(), "boot_args": "petrel.test=snapshot" }),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
    );
    vm.ok(
        "PUT",
        "/vhost-user-net/vn0",
        json!({ "id": "vn0", "socket": socket, "mac": "02:00:00:00:00:42" }),
    );
    let config = vm.get("/vm/config");
    assert_eq!(config["vhost_user_nets"][0]["mac"], "02:00:00:00:00:42");
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    let mut guest = SnapshotGuest::new();
    guest.wait_ready(&vm);

    // The guest uses the configured MAC, not the back end's.
    let (n, got) = loop_frame(&vm, &mut guest);
    let frame = net_frame(mac, n);
    assert_eq!(got, (frame.len(), fnv1a64(&frame)), "frame {n}");

    // A live migration needs the back end's dirty log, which this one lacks: refused before
    // anything moves, the VM unaffected.
    vm.set_state("Paused");
    let msg = vm.fails(
        "PUT",
        "/migration/send",
        Some(json!({ "url": "unix:/nonexistent" })),
        400,
    );
    assert!(msg.contains("vn0") && msg.contains("LOG_SHMFD"), "{msg}");
    // A Full snapshot needs no log: the back end's rings stop for it and start again when
    // the VM resumes.
    vm.create_snapshot("Full", &dir.path().join("s"), &dir.path().join("m"));
    vm.set_state("Resumed");
    let (n, got) = loop_frame(&vm, &mut guest);
    let frame = net_frame(mac, n);
    assert_eq!(
        got,
        (frame.len(), fnv1a64(&frame)),
        "frame {n} after the snapshot"
    );
    vm.kill();
}

/// Diff snapshots need every page a back end writes: a VM that tracks dirty pages does not
/// start with a back end that cannot log them.
#[test]
fn tracking_dirty_pages_with_a_back_end_that_cannot_log_fails_the_start() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    loop_server(&socket);
    let device = format!("socket={},id=vn0", socket.display());
    let kernel = test_guest();
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--vhost-user-net",
        &device,
        "--track-dirty-pages",
    ];
    let out = tests::run(&args, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("vn0")
            && out.stderr.contains("LOG_SHMFD")
            && out.stderr.contains("track_dirty_pages"),
        "{out}"
    );
}

#[test]
fn a_socket_that_does_not_exist_fails_the_start_naming_it() {
    if !kvm_available() {
        return;
    }
    tests::assert_missing_vhost_user_socket_fails_start("--vhost-user-net", "");
}
