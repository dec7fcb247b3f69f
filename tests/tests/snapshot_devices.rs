//! Snapshots of a guest with every device attached (block, console, vsock, gpu, keyboard, net):
//! each device works before the snapshot, and after a restore in a new petrel process the
//! disk reads and writes, the console prints (on in the same output file), the screen shows
//! the same picture and redraws, vsock connects again, keys arrive, frames go out, and memory
//! and counts are what they were.

use std::time::{Duration, Instant};

use resources::snapshot_proto::{
    disk_sector, fnv1a64, net_frame, screen_pixel, DISK_READ_SECTORS, DISK_WRITE_SECTOR,
    NET_ETHERTYPE, NET_MAGIC, SECTOR_SIZE,
};
use serde_json::json;
use tests::api_vm::ApiVm;
use tests::display::{screenshot, Screenshot};
use tests::every_device::{EveryDevice, HEIGHT, KEYBOARD, MAC, WIDTH};
use tests::snapshot_guest::{SnapshotGuest, EXIT_TIMEOUT};
use tests::{kvm_available, netns_available};

/// How long the host waits for keys it sent to reach the guest's driver.
const KEYS_TIMEOUT: Duration = Duration::from_secs(30);
/// `KEY_A`, `KEY_B`: what the host types before and after the restore.
const KEY_A: u16 = 30;
const KEY_B: u16 = 48;

#[test]
fn every_device_works_after_a_restore_in_a_new_process() {
    if !kvm_available() {
        return;
    }
    let net = netns_available();
    let devs = EveryDevice::new(net);
    let mut args = SnapshotGuest::args("128M");
    args.extend(devs.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = devs.spawn(&args);
    let mut guest = SnapshotGuest::new();
    guest.wait_ready(&vm);
    let kinds = if net {
        "blk,console,vsock,gpu,input,net"
    } else {
        "blk,console,vsock,gpu,input"
    };
    assert!(
        vm.serial()
            .lines()
            .any(|l| l == format!("SNAPSHOT devices={kinds}")),
        "{}",
        vm.serial()
    );

    // Before: every device, once.
    assert_screen(&screenshot(&vm), 0, "the picture at start");
    exercise(&vm, &mut guest, &devs, KEY_A);
    guest.verify(&vm);

    // Snapshot, kill, restore in a new process.
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    let before = screenshot(&vm);
    let state = devs.path("state");
    let mem = devs.path("mem");
    vm.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    kill(vm);
    let console_before = devs.console_lines();

    let mut vm = devs.spawn(&[]);
    vm.ok(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
        }),
    );
    guest.restored(&at);

    // The same picture, without the guest drawing anything.
    let after = screenshot(&vm);
    assert_eq!(
        (after.width, after.height),
        (before.width, before.height),
        "the screen's size changed across the restore"
    );
    assert!(
        after.rgba == before.rgba,
        "the restored screen differs from the one snapshotted: first difference {:?}",
        after.first_difference(|x, y| before.pixel(x, y))
    );
    eprintln!(
        "screen generation before {} after {}",
        before.generation, after.generation
    );
    // The console file was not truncated by the restored process.
    assert_eq!(devs.console_lines(), console_before);

    // After: every device again, counters going on.
    exercise(&vm, &mut guest, &devs, KEY_B);
    assert_eq!(devs.console_lines(), ["CONSOLE 1", "CONSOLE 2"]);
    assert_eq!(devs.echo.lines(), ["ping 1", "ping 2"]);
    guest.verify(&vm);
    guest.assert_counts_continue(&vm);
    eprintln!("--- guest output ---\n{}", guest.output(&vm));
    guest.quit(&mut vm);
}

/// Each device command once, checked against the host's side of the device: the disk image,
/// the console file, the echo server, the screenshot, the keyboard (typing `key`), the TAP.
fn exercise(vm: &ApiVm, guest: &mut SnapshotGuest, devs: &EveryDevice, key: u16) {
    let disk = devs.disk_bytes();
    let read = DISK_READ_SECTORS.start as usize * SECTOR_SIZE
        ..DISK_READ_SECTORS.end as usize * SECTOR_SIZE;
    assert_eq!(
        guest.disk_read(vm),
        fnv1a64(&disk[read]),
        "the guest read other bytes than the image holds"
    );
    let n = guest.disk_write(vm);
    assert_eq!(
        devs.sector(DISK_WRITE_SECTOR),
        disk_sector(n),
        "sector {DISK_WRITE_SECTOR} after write {n}"
    );

    let n = guest.console(vm);
    assert_eq!(
        devs.console_lines().last().map(String::as_str),
        Some(format!("CONSOLE {n}").as_str())
    );

    let n = guest.vsock(vm);
    assert_eq!(devs.echo.lines().last(), Some(&format!("ping {n}")));

    let n = guest.draw(vm);
    assert_screen(&screenshot(vm), n, "the picture after g");

    vm.ok(
        "PUT",
        &format!("/input/{KEYBOARD}"),
        json!({"events": [{"kind": "key", "code": key, "action": "tap"}]}),
    );
    assert_eq!(
        keys_within(vm, guest, 2),
        [(key, 1), (key, 0)],
        "the keys typed"
    );

    if let Some(packets) = &devs.packets {
        let n = guest.net(vm);
        let frame = packets.recv_matching(Duration::from_secs(30), |f| {
            f.get(12..14) == Some(&NET_ETHERTYPE[..])
                && f.get(14..14 + NET_MAGIC.len()) == Some(&NET_MAGIC[..])
        });
        assert_eq!(frame.as_deref(), Some(&net_frame(MAC, n)[..]), "frame {n}");
    }
}

/// Asks the guest for its pending keys (`i`) until `count` events came, or fails after
/// [`KEYS_TIMEOUT`].
fn keys_within(vm: &ApiVm, guest: &mut SnapshotGuest, count: usize) -> Vec<(u16, u32)> {
    let start = Instant::now();
    let mut keys = Vec::new();
    while keys.len() < count {
        assert!(
            start.elapsed() < KEYS_TIMEOUT,
            "{} of {count} key events within {KEYS_TIMEOUT:?}: {keys:?}",
            keys.len()
        );
        keys.extend(guest.keys(vm));
    }
    keys
}

/// The screenshot shows `screen_pixel(x, y, n)` everywhere.
fn assert_screen(shot: &Screenshot, n: u64, what: &str) {
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT), "{what}");
    assert_eq!(
        shot.first_difference(|x, y| screen_pixel(x, y, n)),
        None,
        "{what}: (x, y, found, wanted) for screen counter {n}"
    );
}

/// Kills petrel with `PUT /actions Kill` and waits for it to exit.
fn kill(mut vm: ApiVm) {
    vm.ok("PUT", "/actions", json!({"action_type": "Kill"}));
    vm.finish(EXIT_TIMEOUT);
}

#[test]
fn device_commands_without_the_devices_answer_nodev() {
    if !kvm_available() {
        return;
    }
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &[]);
    assert!(vm.serial().lines().any(|l| l == "SNAPSHOT devices=none"));
    for byte in *b"rwpsgin" {
        let command = resources::snapshot_proto::Command::parse(byte);
        assert_eq!(
            guest.send(&vm, command),
            Some(format!("NODEV {}", char::from(byte))),
            "{command:?}"
        );
    }
    guest.verify(&vm);
    guest.quit(&mut vm);
}
