//! vhost-user-blk end to end: `qemu-storage-daemon` serves an image over a vhost-user socket,
//! the test guest drives the disk through petrel with the same scenario as the built-in one,
//! and the host checks the image.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::backend_process::{qemu_storage_daemon, BackendProcess, QEMU_STORAGE_DAEMON};
use tests::blk_image::{image, written_pattern, SECTOR};
use tests::{fnv1a64, kvm_available, run_scenario, test_guest, Running};

/// A `qemu-storage-daemon` exporting `image` as vhost-user-blk on `socket`; killed when
/// dropped.
fn start_daemon(image: &Path, socket: &Path) -> BackendProcess {
    qemu_storage_daemon(image, socket, true)
}

fn available() -> bool {
    kvm_available() && Path::new(QEMU_STORAGE_DAEMON).exists()
}

#[test]
fn guest_reads_and_writes_an_image_served_by_qemu_storage_daemon() {
    blk_scenario_through_the_daemon(&[]);
}

/// Two NUMA nodes and RAM above 4 GiB: the memory table has several regions of one memfd.
#[test]
fn the_memory_table_has_every_region_with_numa_and_ram_above_4g() {
    blk_scenario_through_the_daemon(&[
        "--memory",
        "3584M",
        "--vcpus",
        "2",
        "--numa",
        "node=0,cpus=0,memory=3072M",
        "--numa",
        "node=1,cpus=1,memory=512M",
    ]);
}

fn blk_scenario_through_the_daemon(machine: &[&str]) {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 2048, 0);
    let before = std::fs::read(&img).unwrap();
    let socket = dir.path().join("vublk.sock");
    let _daemon = start_daemon(&img, &socket);

    let device = format!("socket={},id=vu0", socket.display());
    let mut args = vec!["--vhost-user-blk", &device];
    args.extend_from_slice(machine);
    let out = run_scenario("blk", &args);
    out.assert_pass("blk");
    // The driver's reset at the end stops the rings cleanly: no lost back end.
    assert!(!out.stderr.contains("back end lost"), "{out}");
    assert_eq!(
        out.lines_with("BLK 0 capacity"),
        vec!["BLK 0 capacity=2048 ro=0"],
        "{out}"
    );
    assert_eq!(
        out.lines_with("BLK 0 read"),
        vec![format!(
            "BLK 0 read fnv={:016x}",
            fnv1a64(&before[..8 * SECTOR])
        )],
        "{out}"
    );
    let after = std::fs::read(&img).unwrap();
    assert_eq!(&after[8 * SECTOR..16 * SECTOR], &written_pattern()[..]);
    assert_eq!(&after[..8 * SECTOR], &before[..8 * SECTOR]);
    assert_eq!(&after[16 * SECTOR..], &before[16 * SECTOR..]);
}

fn start_fails(socket: &Path) -> tests::Output {
    tests::vhost_user_start_fails("--vhost-user-blk", socket)
}

#[test]
fn a_socket_that_does_not_exist_fails_the_start_naming_it() {
    if !available() {
        return;
    }
    tests::assert_missing_vhost_user_socket_fails_start("--vhost-user-blk", "");
}

#[test]
fn a_peer_that_does_not_speak_vhost_user_fails_the_start() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("junk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // One peer answers with junk, the next closes at once.
    let server = std::thread::spawn(move || {
        for junk in [true, false] {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            if junk {
                let mut buf = [0u8; 12];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        }
    });
    for _ in 0..2 {
        let out = start_fails(&socket);
        assert!(out.stderr.contains("is it a vhost-user back end?"), "{out}");
    }
    server.join().unwrap();
}

#[test]
fn io_resumes_when_the_daemon_is_killed_and_started_again() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 64, 0);
    let socket = dir.path().join("vublk.sock");
    let daemon = start_daemon(&img, &socket);
    let mut vm = Running::scenario(
        "blkswap",
        &["--vhost-user-blk", &format!("socket={}", socket.display())],
    );
    let before = vm.wait_line("BLKSWAP before", Duration::from_secs(60));

    // The back end goes away while the guest reads sector 0 in a loop; the image changes
    // meanwhile, and the new daemon serves the new contents to the same driver.
    drop(daemon);
    std::thread::sleep(Duration::from_millis(300));
    let new_sector = vec![0xa5u8; SECTOR];
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[..SECTOR].copy_from_slice(&new_sector);
    std::fs::write(&img, &bytes).unwrap();
    let _daemon = start_daemon(&img, &socket);

    let after = vm.wait_line("BLKSWAP after", Duration::from_secs(60));
    let out = vm.finish(Duration::from_secs(30));
    out.assert_pass("blkswap");
    assert_ne!(before, after);
    assert!(
        after.contains(&format!("fnv={:016x}", fnv1a64(&new_sector))),
        "{after}\n{out}"
    );
    assert!(out.stderr.contains("vhost-user back end lost"), "{out}");
    assert!(
        out.stderr.contains("vhost-user back end reconnected"),
        "{out}"
    );
}

#[test]
fn api_adds_the_device_and_a_vanished_back_end_is_survived() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "disk.img", 64, 0);
    let socket = dir.path().join("vublk.sock");
    let daemon = start_daemon(&img, &socket);
    let vm = ApiVm::spawn(&[]);
    vm.ok(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": test_guest(), "boot_args": "petrel.test=count" }),
    );
    vm.ok(
        "PUT",
        "/vhost-user-blk/vu0",
        json!({ "id": "vu0", "socket": socket }),
    );
    let config = vm.get("/vm/config");
    assert_eq!(config["vhost_user_blks"][0]["id"], "vu0", "{config}");
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    assert_eq!(vm.state(), "Running");
    // The back end disappears for good: petrel and the guest keep running.
    drop(daemon);
    let seen = vm.last_count();
    vm.wait_count_above(seen);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.state(), "Running");
    vm.wait_count_above(vm.last_count());
    let metrics = vm.request("GET", "/metrics", None).1;
    for line in [
        "petrel_virtio_vhost_user_connected{device=\"vu0\",type=\"block\"} 0",
        "petrel_virtio_vhost_user_disconnections{device=\"vu0\",type=\"block\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    vm.kill();
}
