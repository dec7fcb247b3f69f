//! Snapshots of a guest with every device attached (block, console, vsock, gpu, keyboard, net):
//! each device works before the snapshot, and after a restore in a new petrel process the
//! disk reads and writes, the console prints (on in the same output file), the screen shows
//! the same picture and redraws, vsock connects again, keys arrive, frames go out and come in,
//! and memory and counts are what they were; twice in a row. Then snapshots taken in the
//! middle of a command (a disk write, a console line, a frame being drawn, a vsock echo) and
//! with keys typed while paused: the command completes once after the restore (the vsock
//! connection, whose host end does not follow the snapshot, fails and the next one works).
//!
//! The guest side is the `snapshot` scenario's device commands (`snapshot_proto::Command`);
//! the host side of each device is `tests::every_device`. The network device needs root (a
//! TAP in a namespace): without it the first test leaves net out, outside CI.

use std::path::Path;
use std::time::{Duration, Instant};

use resources::snapshot_proto::{
    disk_sector, fnv1a64, net_frame, screen_pixel, Command, DISK_READ_SECTORS, DISK_WRITE_SECTOR,
    NET_ETHERTYPE, NET_MAGIC, SECTOR_SIZE,
};
use serde_json::json;
use tests::api_vm::ApiVm;
use tests::display::{screenshot, Screenshot};
use tests::every_device::{EveryDevice, HEIGHT, KEYBOARD, MAC, WIDTH};
use tests::snapshot_guest::{Checkpoint, SnapshotGuest};
use tests::{kvm_available, netns_available};

/// How long the host waits for keys it sent to reach the guest's driver.
const KEYS_TIMEOUT: Duration = Duration::from_secs(30);
/// `KEY_A`, `KEY_B`, `KEY_C`: what the host types before the first restore and after each.
const KEY_A: u16 = 30;
const KEY_B: u16 = 48;
const KEY_C: u16 = 46;

#[test]
fn every_device_works_after_a_restore_in_a_new_process() {
    if !kvm_available() {
        return;
    }
    let net = netns_available();
    let devs = EveryDevice::new(net);
    let (vm, mut guest) = devs.boot();
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

    // Twice: snapshot, kill, restore in a new process (the second time, the devices saved
    // are restored ones).
    let mut vm = vm;
    for (cycle, key) in [(1, KEY_B), (2, KEY_C)] {
        vm.set_state("Paused");
        let at = guest.checkpoint(&vm);
        let before = screenshot(&vm);
        let (state, mem) = (
            devs.path(&format!("state{cycle}")),
            devs.path(&format!("mem{cycle}")),
        );
        vm.create_snapshot("Full", &state, &mem);
        vm.kill();
        let console_before = devs.console_lines();

        vm = restore(&devs, &mut guest, &at, &state, &mem);

        // The same picture, without the guest drawing anything.
        let after = screenshot(&vm);
        assert_eq!(
            (after.width, after.height),
            (before.width, before.height),
            "restore {cycle}: the screen's size changed"
        );
        assert!(
            after.rgba == before.rgba,
            "restore {cycle}: the screen differs from the one snapshotted: first difference {:?}",
            after.first_difference(|x, y| before.pixel(x, y))
        );
        eprintln!(
            "restore {cycle}: screen generation before {} after {}",
            before.generation, after.generation
        );
        // The restored process appends to the console file: it was not truncated.
        assert_eq!(devs.console_lines(), console_before, "restore {cycle}");

        // Every device again, the counters going on.
        exercise(&vm, &mut guest, &devs, key);
        guest.verify(&vm);
    }
    assert_eq!(
        devs.console_lines(),
        ["CONSOLE 1", "CONSOLE 2", "CONSOLE 3"]
    );
    assert_eq!(devs.echo.lines(), ["ping 1", "ping 2", "ping 3"]);
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

        // A frame from the host lands in a receive buffer the guest posted (before the
        // snapshot, for the first frame after a restore).
        let frame = host_frame(n);
        packets.send(&frame);
        let start = Instant::now();
        let got = loop {
            if let Some(got) = guest.net_recv(vm) {
                break got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the host's frame {n} did not reach the guest"
            );
        };
        assert_eq!(got, (frame.len(), fnv1a64(&frame)), "host frame {n}");
    }
}

/// The frame the host sends the guest: to its MAC, with the test ethertype, numbered `n`.
fn host_frame(n: u64) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&NET_ETHERTYPE);
    f.extend_from_slice(b"petrel-host-frame");
    f.extend_from_slice(&n.to_le_bytes());
    f.extend((0..100u8).map(|i| i.wrapping_mul(7)));
    f
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

/// A new petrel (in the devices' namespace, if any) that loads the snapshot and runs it; the
/// guest goes on from `at`.
fn restore(
    devs: &EveryDevice,
    guest: &mut SnapshotGuest,
    at: &Checkpoint,
    state: &Path,
    mem: &Path,
) -> ApiVm {
    let vm = devs.spawn(&[]);
    vm.load_snapshot(state, Some(mem));
    guest.restored(at);
    vm
}

#[test]
fn device_commands_without_the_devices_answer_nodev() {
    if !kvm_available() {
        return;
    }
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &[]);
    assert!(vm.serial().lines().any(|l| l == "SNAPSHOT devices=none"));
    for byte in *b"rwpsginm" {
        let command = Command::parse(byte);
        assert_eq!(
            guest.send(&vm, command),
            Some(format!("NODEV {}", char::from(byte))),
            "{command:?}"
        );
    }
    guest.verify(&vm);
    guest.quit(&mut vm);
}

#[test]
fn keys_typed_while_paused_and_a_disk_write_in_flight_survive_a_snapshot() {
    if !kvm_available() {
        return;
    }
    let devs = EveryDevice::new(false);
    let (vm, mut guest) = devs.boot();

    // A write sent just before the pause: the guest may have read the byte, submitted the
    // request, or neither; keys typed while paused wait in the device or its queue.
    guest.put(&vm, Command::DiskWrite);
    vm.set_state("Paused");
    vm.ok(
        "PUT",
        &format!("/input/{KEYBOARD}"),
        json!({"events": [{"kind": "key", "code": KEY_A, "action": "tap"}]}),
    );
    let at = guest.checkpoint(&vm);
    let (state, mem) = (devs.path("state"), devs.path("mem"));
    vm.create_snapshot("Full", &state, &mem);
    vm.kill();
    let tail: Vec<&str> = at.output().lines().rev().take(3).collect();
    eprintln!("the guest's last lines before the snapshot: {tail:?}");

    let mut vm = restore(&devs, &mut guest, &at, &state, &mem);
    assert_eq!(guest.answer(&vm, "DISK "), "DISK wrote 1");
    assert_eq!(devs.sector(DISK_WRITE_SECTOR), disk_sector(1));
    assert_eq!(keys_within(&vm, &mut guest, 2), [(KEY_A, 1), (KEY_A, 0)]);
    guest.verify(&vm);
    guest.quit(&mut vm);
}

#[test]
fn disk_writes_caught_at_any_point_by_a_snapshot_complete_after_restore() {
    if !kvm_available() {
        return;
    }
    let devs = EveryDevice::new(false);
    let (mut vm, mut guest) = devs.boot();
    guest.wait_counts(&vm, 1);
    let mut cases = Vec::new();
    for (i, delay_us) in [0u64, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000]
        .into_iter()
        .enumerate()
    {
        // The guest reads the byte at its next poll, right after it prints its next COUNT:
        // pause `delay_us` after that line shows, while the write or flush may be in flight.
        let last = guest.last_count(&vm);
        guest.put(&vm, Command::DiskWrite);
        let start = Instant::now();
        while guest.last_count(&vm) == last {
            assert!(start.elapsed() < Duration::from_secs(30), "no COUNT");
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        vm.set_state("Paused");
        let at = guest.checkpoint(&vm);
        let answered = at.output().contains(&format!("DISK wrote {}\n", i + 1));
        let (state, mem) = (
            devs.path(&format!("state{i}")),
            devs.path(&format!("mem{i}")),
        );
        vm.create_snapshot("Full", &state, &mem);
        // Written but not answered: the request (or its flush) was in the device's hands.
        let written = devs.sector(DISK_WRITE_SECTOR) == disk_sector(i as u64 + 1);
        vm.kill();
        vm = restore(&devs, &mut guest, &at, &state, &mem);
        if !answered {
            assert_eq!(guest.answer(&vm, "DISK "), format!("DISK wrote {}", i + 1));
        }
        cases.push((delay_us, written, answered));
        assert_eq!(
            devs.sector(DISK_WRITE_SECTOR),
            disk_sector(i as u64 + 1),
            "write {} (paused {delay_us} µs after the poll; answered before: {answered})",
            i + 1
        );
    }
    eprintln!("(delay µs, written, answered before the snapshot): {cases:?}");
    guest.verify(&vm);
    guest.quit(&mut vm);
}

#[test]
fn a_vsock_connection_cut_by_a_restore_fails_and_the_next_one_works() {
    if !kvm_available() {
        return;
    }
    let devs = EveryDevice::new(false);
    let (vm, mut guest) = devs.boot();

    // The host holds its echo back: snapshot while the guest waits for it.
    devs.echo.set_delay(Duration::from_secs(60));
    guest.put(&vm, Command::Vsock);
    let start = Instant::now();
    while devs.echo.lines().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no ping");
        std::thread::sleep(Duration::from_millis(2));
    }
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    let (state, mem) = (devs.path("state"), devs.path("mem"));
    vm.create_snapshot("Full", &state, &mem);
    vm.kill();
    devs.echo.set_delay(Duration::ZERO);

    let mut vm = restore(&devs, &mut guest, &at, &state, &mem);
    let restored = Instant::now();
    let cut = guest.answer(&vm, "VSOCK ");
    eprintln!("{cut:?} {:?} after the restore", restored.elapsed());
    assert!(cut.starts_with("VSOCK bad 1 "), "{cut}");
    // The next connection is a new one, to the same host port, and works.
    guest.put(&vm, Command::Vsock);
    assert_eq!(guest.answer(&vm, "VSOCK "), "VSOCK ok 2");
    assert_eq!(devs.echo.lines(), ["ping 1", "ping 2"]);
    guest.verify(&vm);
    guest.quit(&mut vm);
}

/// Sends `command`, waits until the guest has printed its next `COUNT` (it reads the byte at
/// the poll right after), sleeps `delay`, pauses and snapshots (files `<tag>`), kills, and
/// restores: a snapshot taken somewhere in the command's work, whose answer may have come out
/// before the snapshot or come after the restore. Returns the restored VM and what the guest
/// printed between the command and the snapshot.
fn snapshot_during(
    devs: &EveryDevice,
    vm: ApiVm,
    guest: &mut SnapshotGuest,
    command: Command,
    delay: Duration,
    tag: &str,
) -> (ApiVm, String) {
    let last = guest.last_count(&vm);
    let mark = guest.output(&vm).len();
    guest.put(&vm, command);
    let start = Instant::now();
    while guest.last_count(&vm) == last {
        assert!(start.elapsed() < Duration::from_secs(30), "no COUNT");
    }
    std::thread::sleep(delay);
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    let (state, mem) = (
        devs.path(&format!("state-{tag}")),
        devs.path(&format!("mem-{tag}")),
    );
    vm.create_snapshot("Full", &state, &mem);
    vm.kill();
    let printed = at.output()[mark..].to_string();
    (restore(devs, guest, &at, &state, &mem), printed)
}

#[test]
fn console_lines_and_frames_caught_mid_command_by_a_snapshot_come_out_once() {
    if !kvm_available() {
        return;
    }
    let devs = EveryDevice::new(false);
    let (mut vm, mut guest) = devs.boot();
    guest.wait_counts(&vm, 1);

    // (delay µs, answered before the snapshot)
    let mut cases = Vec::new();
    for (i, us) in [0u64, 100, 200, 400, 700, 1000, 1500, 2000, 3000]
        .into_iter()
        .enumerate()
    {
        let printed;
        (vm, printed) = snapshot_during(
            &devs,
            vm,
            &mut guest,
            Command::Console,
            Duration::from_micros(us),
            &format!("p{i}"),
        );
        let n = guest.counters().console_lines;
        cases.push((us, printed.contains("CONSOLE ")));
        assert_eq!(guest.answer(&vm, "CONSOLE "), format!("CONSOLE {n}"));
        let want: Vec<String> = (1..=n).map(|k| format!("CONSOLE {k}")).collect();
        assert_eq!(devs.console_lines(), want, "paused {us} µs after the poll");
    }
    for (i, ms) in [0u64, 10, 20, 40, 60, 80, 100, 150].into_iter().enumerate() {
        let printed;
        (vm, printed) = snapshot_during(
            &devs,
            vm,
            &mut guest,
            Command::Gpu,
            Duration::from_millis(ms),
            &format!("g{i}"),
        );
        let n = guest.counters().frames;
        cases.push((ms * 1000, printed.contains("GPU drew ")));
        assert_eq!(guest.answer(&vm, "GPU drew "), format!("GPU drew {n}"));
        assert_screen(&screenshot(&vm), n, &format!("paused {ms} ms into g"));
    }
    eprintln!("(delay µs, answered before the snapshot): {cases:?}");
    guest.verify(&vm);
    guest.quit(&mut vm);
}
