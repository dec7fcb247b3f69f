//! vhost-user devices across snapshots and live migration, with `qemu-storage-daemon` serving
//! the disk of the `snapshot` guest scenario (its `r` and `w` commands read sectors 0..8 and
//! write sector 8).
//!
//! The back end writes guest memory where KVM's dirty log cannot see it (the used ring the
//! driver polls, the buffers of reads), so petrel stops it for a save and shares a dirty log
//! with it. The Diff snapshot test fails without that log: after the Full snapshot only the
//! back end writes the used ring of the disk's queue, so a Diff that missed it would restore
//! a used index behind the driver's, and the next request would never complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use resources::snapshot_proto::{disk_sector, fnv1a64, DISK_WRITE_SECTOR, SECTOR_SIZE};
use serde_json::json;
use tests::api_vm::ApiVm;
use tests::backend_process::{qemu_storage_daemon, QEMU_STORAGE_DAEMON};
use tests::every_device::disk_image;
use tests::kvm_available;
use tests::snapshot_guest::SnapshotGuest;

const MEMORY: &str = "256M";

fn available() -> bool {
    kvm_available() && Path::new(QEMU_STORAGE_DAEMON).exists()
}

/// The scenario's disk image in `dir`.
fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, disk_image()).unwrap();
    path
}

/// What `r` reads: sectors 0..8 of the image as written.
fn first_sectors_hash() -> u64 {
    fnv1a64(&disk_image()[..8 * SECTOR_SIZE])
}

/// Sector `DISK_WRITE_SECTOR` of the image now.
fn written_sector(img: &Path) -> Vec<u8> {
    let at = DISK_WRITE_SECTOR as usize * SECTOR_SIZE;
    std::fs::read(img).unwrap()[at..at + SECTOR_SIZE].to_vec()
}

/// `w` through the back end: the guest's write `n` lands in the image.
fn assert_write_lands(vm: &ApiVm, guest: &mut SnapshotGuest, img: &Path, n: u64) {
    assert_eq!(guest.disk_write(vm), n);
    assert_eq!(written_sector(img), disk_sector(n), "write {n}");
}

#[test]
fn a_vhost_user_disk_goes_on_after_full_and_diff_snapshots_restored_in_new_processes() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    let socket = dir.path().join("vu.sock");
    let _daemon = qemu_storage_daemon(&img, &socket, true);
    let device = format!("socket={},id=vu0", socket.display());
    let (vm, mut guest) = SnapshotGuest::boot(
        MEMORY,
        &["--vhost-user-blk", &device, "--track-dirty-pages"],
    );
    assert_eq!(guest.disk_read(&vm), first_sectors_hash());
    assert_write_lands(&vm, &mut guest, &img, 1);
    guest.write(&vm, 3);

    // A Full snapshot of the running disk: its back end stops for it and starts again.
    let path = |name: &str| dir.path().join(name);
    vm.set_state("Paused");
    vm.create_snapshot("Full", &path("s0"), &path("m0"));
    vm.set_state("Resumed");
    assert_eq!(guest.disk_read(&vm), first_sectors_hash());
    assert_write_lands(&vm, &mut guest, &img, 2);
    guest.write(&vm, 5);

    // A Diff over it holds what the back end wrote since (see the module's comment).
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    vm.create_snapshot("Diff", &path("s1"), &path("m1"));
    vm.kill();

    // A new process, the same daemon (it takes the next connection).
    let mut vm = ApiVm::spawn(&[]);
    vm.load_snapshot(&path("s1"), Some(&path("m1")));
    guest.restored(&at);
    assert_eq!(guest.disk_read(&vm), first_sectors_hash());
    assert_write_lands(&vm, &mut guest, &img, 3);
    guest.verify(&vm);
    guest.wait_counts(&vm, 2);
    guest.assert_counts_continue(&vm);
    guest.quit(&mut vm);
}

#[test]
fn a_guest_with_a_vhost_user_disk_migrates_to_a_destination_with_its_own_daemon() {
    migrate_with_a_vhost_user_disk(false);
}

/// On one host the memory itself (the memfd the back ends map) is handed over.
#[test]
fn a_guest_with_a_vhost_user_disk_hands_its_memory_over_on_the_same_host() {
    migrate_with_a_vhost_user_disk(true);
}

fn migrate_with_a_vhost_user_disk(local: bool) {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    // Two daemons serve the same image, as two hosts would share storage: neither locks it.
    let (src_socket, dst_socket) = (dir.path().join("src.sock"), dir.path().join("dst.sock"));
    let _src_daemon = qemu_storage_daemon(&img, &src_socket, false);
    let _dst_daemon = qemu_storage_daemon(&img, &dst_socket, false);
    let device = |socket: &Path| format!("socket={},id=vu0", socket.display());

    let src_device = device(&src_socket);
    let (mut src, mut guest) = SnapshotGuest::boot(MEMORY, &["--vhost-user-blk", &src_device]);
    assert_write_lands(&src, &mut guest, &img, 1);
    guest.write(&src, 3);
    guest.dirty(&src, true);
    guest.wait_counts(&src, 3);

    let dst_device = device(&dst_socket);
    let dst = ApiVm::spawn(&["--memory", MEMORY, "--vhost-user-blk", &dst_device]);
    let url = format!("unix:{}", dir.path().join("m.sock").display());
    dst.migrate_receive(&url);
    src.migrate_send(json!({ "url": url, "downtime_ms": 100, "local": local }));
    let info = dst.wait_migration(&["completed", "failed"], Duration::from_secs(120));
    assert_eq!(info["state"], "completed", "{info}");
    let out = src.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out}");
    guest.migrated(src.serial());

    // The destination's daemon serves the disk now.
    let mut dst = dst;
    guest.wait_counts(&dst, 2);
    guest.dirty(&dst, false);
    assert_eq!(guest.disk_read(&dst), first_sectors_hash());
    assert_write_lands(&dst, &mut guest, &img, 2);
    guest.verify(&dst);
    guest.assert_counts_continue(&dst);
    guest.quit(&mut dst);
}
