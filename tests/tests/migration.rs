//! Live migration end to end: the `snapshot` guest scenario (a 16 MiB region of generations it
//! verifies, a count, and steady dirtying that rewrites a sub-region at every count) moves from
//! a source petrel to a destination petrel started without a kernel, over a Unix socket and
//! over TCP on loopback, with and without devices. After the move the source has exited with
//! status 0, and on the destination the guest verifies its whole region against the
//! generations it printed (in both processes) and its count goes on without a gap or a repeat.
//! When the migration fails (the destination killed, refused at the handshake, a guest that
//! dirties faster than the link without auto-converge) the source reports why and its guest
//! runs on, unharmed.

use std::time::Duration;

use resources::snapshot_proto::{disk_sector, screen_pixel, DISK_WRITE_SECTOR};
use serde_json::{json, Value};
use tests::api_vm::ApiVm;
use tests::display::screenshot;
use tests::every_device::{EveryDevice, HEIGHT, WIDTH};
use tests::kvm_available;
use tests::snapshot_guest::SnapshotGuest;

/// The guest's RAM on both sides.
const MEMORY: &str = "256M";
const MEMORY_PAGES: u64 = (256 << 20) / 4096;
/// How long a migration that should end gets.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a source gets to exit once its migration completed.
const EXIT: Duration = Duration::from_secs(60);

/// The final pause asked for in the migrations that should converge, and the longest one
/// accepted: ten times that (it is an estimate, and this machine is shared).
const DOWNTIME_MS: u64 = 100;
const DOWNTIME_LIMIT_MS: f64 = 10.0 * DOWNTIME_MS as f64;

/// The source's states in the order they may come.
const SEND_STATES: [&str; 4] = ["connecting", "precopy", "stopping", "completed"];

/// A destination for `args` (`--memory` and device flags, no kernel), `Not started`.
fn destination(args: &[&str]) -> ApiVm {
    let dst = ApiVm::spawn(args);
    assert_eq!(dst.state(), "Not started");
    dst
}

/// Has `dst` listen at `url` and returns the URL it reports (the bound port for TCP port 0).
fn listen(dst: &ApiVm, url: &str) -> String {
    dst.migrate_receive(url);
    // A destination keeps listening however long the source takes to come.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let info = dst.migration();
    assert_eq!(info["role"], "receive", "{info}");
    assert_eq!(info["state"], "listening", "{info}");
    info["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url in {info}"))
        .to_string()
}

/// Sends from `src` with `body` and waits until the migration completed: the source's states
/// came in order and it exited with status 0; the destination completed and runs. Returns
/// what the source's `GET /migration` showed and the destination's final one.
fn migrate(src: &mut ApiVm, dst: &ApiVm, body: Value) -> (Vec<Value>, Value) {
    src.migrate_send(body);
    let seen = src.watch_migration(MIGRATION_TIMEOUT, |i| {
        matches!(i["state"].as_str(), Some("completed" | "failed"))
    });
    assert_states_in_order(&seen);
    let out = src.finish(EXIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the source did not exit 0 after the migration: {out}\nlast seen: {:?}",
        seen.last()
    );
    let info = dst.wait_migration(&["completed", "failed"], MIGRATION_TIMEOUT);
    assert_eq!(info["state"], "completed", "{info}");
    assert_eq!(info["role"], "receive", "{info}");
    assert!(
        info["downtime_ms"].as_f64().is_some_and(|d| d > 0.0),
        "no downtime reported: {info}"
    );
    assert_eq!(dst.state(), "Running");
    // A source that hands its memory over may be gone before the first look.
    eprintln!("source, last seen: {:?}\ndestination: {info}", seen.last());
    (seen, info)
}

/// The destination's final `GET /migration` reports a pause within [`DOWNTIME_LIMIT_MS`].
fn assert_downtime(info: &Value) {
    let downtime = info["downtime_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(downtime < DOWNTIME_LIMIT_MS, "paused too long: {info}");
}

/// The source's states seen while polling: known, never going back.
fn assert_states_in_order(seen: &[Value]) {
    let mut at = 0;
    for info in seen {
        assert_eq!(info["role"], "send", "{info}");
        let state = info["state"].as_str().unwrap_or("?");
        assert_ne!(state, "failed", "the migration failed: {}", info["error"]);
        let i = SEND_STATES
            .iter()
            .position(|&s| s == state)
            .unwrap_or_else(|| {
                panic!("unexpected state during a migration that completes: {info}")
            });
        assert!(i >= at, "state {state} after {}: {info}", SEND_STATES[at]);
        at = i;
    }
}

/// Boots the source with `extra` arguments, writes a few sub-regions and turns steady
/// dirtying on.
fn dirtying_source(extra: &[&str]) -> (ApiVm, SnapshotGuest) {
    let (src, mut guest) = SnapshotGuest::boot(MEMORY, extra);
    guest.wait_counts(&src, 2);
    guest.write(&src, 3);
    guest.write(&src, 7);
    guest.write(&src, 7);
    guest.dirty(&src, true);
    guest.wait_counts(&src, 3);
    (src, guest)
}

/// On the destination, after `migrated`: the guest stops dirtying, verifies its whole region,
/// goes on counting from where it was, and powers off when told.
fn goes_on(mut dst: ApiVm, guest: &mut SnapshotGuest) {
    if guest.dirtying() {
        // A few rewrites on this side first.
        guest.wait_counts(&dst, 2);
        guest.dirty(&dst, false);
    }
    guest.verify(&dst);
    guest.write(&dst, 7);
    guest.verify(&dst);
    guest.wait_counts(&dst, 3);
    guest.assert_counts_continue(&dst);
    guest.quit(&mut dst);
}

/// After a failed migration the source runs on: its guest verifies and counts on.
fn source_runs_on(src: &mut ApiVm, guest: &mut SnapshotGuest) {
    assert_eq!(src.state(), "Running");
    let before = guest.last_count(src);
    guest.wait_counts(src, 3);
    assert!(guest.last_count(src) > before);
    if guest.dirtying() {
        guest.dirty(src, false);
    }
    guest.verify(src);
    guest.assert_counts_continue(src);
    guest.quit(src);
}

/// Waits for the source to fail; returns its error.
fn source_fails(src: &ApiVm) -> String {
    let info = src.wait_migration(&["failed", "completed"], MIGRATION_TIMEOUT);
    assert_eq!(info["state"], "failed", "{info}");
    assert_eq!(info["role"], "send", "{info}");
    info["error"]
        .as_str()
        .unwrap_or_else(|| panic!("a failed migration without an error: {info}"))
        .to_string()
}

#[test]
fn a_dirtying_guest_migrates_over_a_unix_socket() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);
    let dst = destination(&["--memory", MEMORY]);
    let url = format!("unix:{}", dst.path("migrate.sock").display());
    assert_eq!(listen(&dst, &url), url);

    // While it receives, the destination takes no configuration, start or snapshot.
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 256}),
        ),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": dst.path("no-state"), "resume_vm": true}),
        ),
    ] {
        let msg = dst.fails(method, path, Some(body), 400);
        eprintln!("{method} {path} while receiving: {msg}");
    }
    assert_eq!(dst.state(), "Not started");
    // A started VM does not receive.
    let other = format!("unix:{}", src.path("other.sock").display());
    src.fails(
        "PUT",
        "/migration/receive",
        Some(json!({ "url": other })),
        400,
    );

    let (seen, info) = migrate(
        &mut src,
        &dst,
        json!({"url": url, "downtime_ms": DOWNTIME_MS}),
    );
    assert_downtime(&info);
    let last = seen.last().expect("seen");
    assert_eq!(last["total_pages"], json!(MEMORY_PAGES), "{last}");
    assert_eq!(info["total_pages"], json!(MEMORY_PAGES), "{info}");
    // Round 0 sends what the guest touched (the region at least), not all its RAM.
    let pages = info["pages"].as_u64().unwrap_or(0);
    assert!(
        (4096..MEMORY_PAGES / 2).contains(&pages),
        "{pages} pages received: {info}"
    );
    let bytes = seen.iter().filter_map(|i| i["bytes"].as_u64()).max();
    assert!(bytes < Some(64 << 20), "{bytes:?} bytes sent: {last}");

    assert_eq!(dst.get("/vm/config")["machine"]["memory"], json!(MEMORY));
    guest.migrated(src.serial());
    goes_on(dst, &mut guest);
}

#[test]
fn a_dirtying_guest_migrates_over_tcp_on_loopback() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);
    let dst = destination(&["--memory", MEMORY]);
    let url = listen(&dst, "tcp:127.0.0.1:0");
    let port: u16 = url
        .strip_prefix("tcp:127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the destination listens at {url}"));
    assert_ne!(port, 0);

    let (seen, info) = migrate(
        &mut src,
        &dst,
        json!({"url": url, "downtime_ms": DOWNTIME_MS, "timeout_s": 100}),
    );
    assert_downtime(&info);
    // The last round was short enough to pause for.
    let stopping = seen.iter().rev().find(|i| i["state"] != "completed");
    eprintln!("last before completing: {stopping:?}");

    guest.migrated(src.serial());
    goes_on(dst, &mut guest);
}

#[test]
fn a_shared_memory_guest_hands_its_memory_over_on_the_same_host() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&["--shared-memory"]);
    let dst = destination(&["--memory", MEMORY]);
    let url = listen(
        &dst,
        &format!("unix:{}", dst.path("migrate.sock").display()),
    );
    // Handing the memory over needs a Unix socket.
    let msg = src.fails(
        "PUT",
        "/migration/send",
        Some(json!({"url": "tcp:127.0.0.1:1", "local": true})),
        400,
    );
    assert!(msg.contains("unix:"), "{msg}");

    let (seen, info) = migrate(&mut src, &dst, json!({"url": url, "local": true}));
    assert_downtime(&info);
    // No page was copied: the destination maps the source's memory.
    for i in &seen {
        assert!(i["bytes"].as_u64() < Some(1 << 20), "{i}");
    }
    assert_eq!(info["bytes"], json!(0), "{info}");
    assert_eq!(info["pages"], json!(MEMORY_PAGES), "{info}");
    assert_eq!(
        dst.get("/vm/config")["machine"]["shared_memory"],
        json!(true)
    );
    guest.migrated(src.serial());
    goes_on(dst, &mut guest);
}

#[test]
fn local_needs_shared_memory() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = SnapshotGuest::boot(MEMORY, &[]);
    let url = format!("unix:{}", src.path("nobody.sock").display());
    let msg = src.fails(
        "PUT",
        "/migration/send",
        Some(json!({"url": url, "local": true})),
        400,
    );
    assert!(msg.contains("--shared-memory"), "{msg}");
    assert_eq!(src.migration()["state"], "idle");
    source_runs_on(&mut src, &mut guest);
}

#[test]
fn every_device_but_net_works_after_a_migration_with_its_own_host_side() {
    if !kvm_available() {
        return;
    }
    let devs = EveryDevice::new(false);
    let dev_args = devs.args();
    let mut args = SnapshotGuest::args(MEMORY);
    args.extend(dev_args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut src = devs.spawn(&args);
    let mut guest = SnapshotGuest::new();
    guest.wait_ready(&src);
    assert!(
        src.serial()
            .lines()
            .any(|l| l == "SNAPSHOT devices=blk,console,vsock,gpu,input"),
        "{}",
        src.serial()
    );

    // Before: the disk, the console and the screen once.
    let n = guest.disk_write(&src);
    assert_eq!(devs.sector(DISK_WRITE_SECTOR), disk_sector(n));
    assert_eq!(guest.console(&src), 1);
    assert_eq!(guest.draw(&src), 1);
    assert_eq!(guest.vsock(&src), 1);
    guest.write(&src, 2);
    // The guest is quiet (no command, no dirtying): the picture to find on the other side.
    let before = screenshot(&src);
    assert_screen(&before, 1);

    // The destination is configured with its own host side: the vsock device listens at
    // another path (the source's is still its own), whose port 5000 leads to the same echo
    // server.
    let uds = devs.path("v2.sock");
    std::os::unix::fs::symlink(
        format!("{}_5000", devs.vsock_uds.display()),
        format!("{}_5000", uds.display()),
    )
    .expect("symlink the echo server");
    let dst_dev_args: Vec<String> = dev_args
        .iter()
        .map(|a| {
            a.replace(
                &devs.vsock_uds.display().to_string(),
                &uds.display().to_string(),
            )
        })
        .collect();
    let mut dst_args = vec!["--memory", MEMORY];
    dst_args.extend(dst_dev_args.iter().map(String::as_str));
    let dst = devs.spawn(&dst_args);
    assert_eq!(dst.state(), "Not started");
    let url = listen(&dst, &format!("unix:{}", devs.path("m.sock").display()));
    migrate(
        &mut src,
        &dst,
        json!({"url": url, "downtime_ms": DOWNTIME_MS}),
    );
    guest.migrated(src.serial());

    let after = screenshot(&dst);
    assert_eq!((after.width, after.height), (before.width, before.height));
    assert!(
        after.rgba == before.rgba,
        "the screen differs from the one before the migration: first difference {:?}",
        after.first_difference(|x, y| before.pixel(x, y))
    );
    let n = guest.disk_write(&dst);
    assert_eq!(n, 2);
    assert_eq!(
        devs.sector(DISK_WRITE_SECTOR),
        disk_sector(n),
        "the disk write after the migration did not land in the image"
    );
    assert_eq!(guest.console(&dst), 2);
    assert_eq!(devs.console_lines(), ["CONSOLE 1", "CONSOLE 2"]);
    assert_eq!(guest.draw(&dst), 2);
    assert_screen(&screenshot(&dst), 2);
    assert_eq!(guest.vsock(&dst), 2);
    goes_on(dst, &mut guest);
}

/// The screen shows the picture with screen counter `n`.
fn assert_screen(shot: &tests::display::Screenshot, n: u64) {
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT));
    assert_eq!(
        shot.first_difference(|x, y| screen_pixel(x, y, n)),
        None,
        "(x, y, found, wanted) for screen counter {n}"
    );
}

#[test]
fn the_destination_killed_mid_migration_leaves_the_source_running() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);
    let dst = destination(&["--memory", MEMORY]);
    let url = listen(&dst, &format!("unix:{}", dst.path("m.sock").display()));
    // 4 MiB/s: round 0 (16 MiB of region and more) takes seconds.
    src.migrate_send(json!({"url": url, "downtime_ms": DOWNTIME_MS, "max_bandwidth": 4 << 20}));
    let info = src.wait_migration(&["precopy", "failed", "completed"], MIGRATION_TIMEOUT);
    assert_eq!(info["state"], "precopy", "{info}");

    // While it sends: no second send, no pause.
    let msg = src.fails("PUT", "/migration/send", Some(json!({ "url": url })), 400);
    eprintln!("a second send: {msg}");
    let msg = src.fails("PATCH", "/vm", Some(json!({"state": "Paused"})), 400);
    eprintln!("PATCH /vm while sending: {msg}");
    let info = src.migration();
    assert_eq!(info["state"], "precopy", "round 0 ended too soon: {info}");

    dst.kill();
    let error = source_fails(&src);
    eprintln!("the source's error: {error}");
    source_runs_on(&mut src, &mut guest);
}

#[test]
fn a_destination_with_other_memory_or_devices_is_refused_at_the_handshake() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);

    // 128 MiB against the source's 256 MiB.
    let dst = destination(&["--memory", "128M"]);
    let url = listen(&dst, &format!("unix:{}", dst.path("m.sock").display()));
    src.migrate_send(json!({"url": url, "downtime_ms": DOWNTIME_MS}));
    let error = source_fails(&src);
    eprintln!("memory size: {error}");
    assert!(
        names_size(&error, 256 << 20) || names_size(&error, 128 << 20),
        "the error does not name the memory size: {error}"
    );
    let info = dst.wait_migration(&["failed", "completed"], MIGRATION_TIMEOUT);
    assert_eq!(info["state"], "failed", "{info}");
    assert!(info["error"].is_string(), "{info}");
    assert_eq!(dst.state(), "Not started");
    // It may receive again.
    let again = format!("unix:{}", dst.path("again.sock").display());
    assert_eq!(listen(&dst, &again), again);
    assert_eq!(src.state(), "Running");
    guest.wait_counts(&src, 2);
    guest.verify(&src);

    // One disk more than the source has.
    let disk = dst.path("extra.img");
    std::fs::write(&disk, vec![0u8; 64 << 10]).unwrap();
    let dst = destination(&[
        "--memory",
        MEMORY,
        "--disk",
        &format!("path={},id=extra", disk.display()),
    ]);
    let url = listen(&dst, &format!("unix:{}", dst.path("m.sock").display()));
    src.migrate_send(json!({"url": url, "downtime_ms": DOWNTIME_MS}));
    let error = source_fails(&src);
    eprintln!("device set: {error}");
    assert!(
        ["device", "disk", "block", "blk"]
            .iter()
            .any(|w| error.to_lowercase().contains(w)),
        "the error does not name the device set: {error}"
    );
    let info = dst.wait_migration(&["failed", "completed"], MIGRATION_TIMEOUT);
    assert_eq!(info["state"], "failed", "{info}");
    assert_eq!(dst.state(), "Not started");

    source_runs_on(&mut src, &mut guest);
}

/// Whether `error` names `bytes` as bytes, MiB or `--memory` syntax.
fn names_size(error: &str, bytes: u64) -> bool {
    let mib = bytes >> 20;
    [
        bytes.to_string(),
        format!("{mib} MiB"),
        format!("{mib}M"),
        format!("{mib}MiB"),
    ]
    .iter()
    .any(|s| error.contains(s.as_str()))
}

#[test]
fn a_guest_dirtying_faster_than_the_link_times_out_without_auto_converge() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);
    let dst = destination(&["--memory", MEMORY]);
    let url = listen(&dst, &format!("unix:{}", dst.path("m.sock").display()));
    src.migrate_send(json!({
        "url": url,
        "downtime_ms": 1,
        "timeout_s": 3,
        "auto_converge": false,
        "max_bandwidth": 8 << 20,
    }));
    let error = source_fails(&src);
    eprintln!("not converging: {error}");
    assert!(
        error.contains("timeout") || error.contains("timed out") || error.contains("3 s"),
        "the error does not name the timeout: {error}"
    );
    let info = src.migration();
    assert_eq!(info["throttle_percent"], 0, "{info}");
    source_runs_on(&mut src, &mut guest);
}

#[test]
fn auto_converge_throttles_a_guest_dirtying_faster_than_the_link_until_it_moves() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = dirtying_source(&[]);
    let dst = destination(&["--memory", MEMORY]);
    let url = listen(&dst, &format!("unix:{}", dst.path("m.sock").display()));
    let (seen, _) = migrate(
        &mut src,
        &dst,
        json!({
            "url": url,
            "downtime_ms": 1,
            "timeout_s": 600,
            "auto_converge": true,
            // Well below the guest's dirty rate even when the host is busy and the guest
            // runs at a quarter of its speed: a round takes 4 s to send the 16 MiB region,
            // long enough for the guest to rewrite all of it, so without a throttle the
            // rounds do not shrink.
            "max_bandwidth": 4 << 20,
            "max_rounds": 6,
        }),
    );
    let throttle = seen
        .iter()
        .filter_map(|i| i["throttle_percent"].as_u64())
        .max();
    let rounds = seen.iter().filter_map(|i| i["round"].as_u64()).max();
    eprintln!("throttle up to {throttle:?} %, {rounds:?} rounds");
    assert!(
        throttle > Some(0),
        "the source never throttled the guest: {:?}",
        seen.last()
    );
    assert!(rounds <= Some(6), "more rounds than max_rounds: {rounds:?}");
    guest.migrated(src.serial());
    goes_on(dst, &mut guest);
}

/// Bad peers: bytes that are not the protocol, a Hello of another protocol version, and a
/// source killed while memory is on its way. Each fails the receive with its reason, and
/// the destination stays Not started and receives the next source.
#[test]
fn a_destination_survives_bad_and_vanishing_sources_and_receives_again() {
    use std::io::Write;
    if !kvm_available() {
        return;
    }
    let dst = destination(&["--memory", MEMORY]);
    let sock = dst.path("migrate.sock");
    let url = format!("unix:{}", sock.display());
    let failed = |what: &str| {
        let info = dst.wait_migration(&["failed", "completed"], MIGRATION_TIMEOUT);
        assert_eq!(info["state"], "failed", "{what}: {info}");
        assert_eq!(dst.state(), "Not started", "{what}");
        info["error"].as_str().unwrap_or_default().to_string()
    };

    listen(&dst, &url);
    let mut junk = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let error = failed("junk");
    assert!(error.contains("magic"), "{error}");

    listen(&dst, &url);
    let peer: migration::MigrationUrl = url.parse().expect("url");
    let mut conn = migration::Connection::connect(&peer, Duration::from_secs(5)).expect("connect");
    conn.set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = migration::Message::Hello {
        version: migration::PROTOCOL_VERSION + 1,
        compat: migration::Compat {
            cpuid_hash: [0; 32],
            memory: vec![(0, 256 << 20)],
            vcpus: 1,
            devices: Vec::new(),
        },
    };
    conn.send(&hello).expect("send Hello");
    match conn.recv() {
        Ok(migration::Message::Refuse { reason }) => {
            assert!(reason.contains("protocol version 2"), "{reason}")
        }
        other => panic!("a Hello of version 2 got {other:?}"),
    }
    let error = failed("version");
    assert!(error.contains("refused the source"), "{error}");

    // A real source, slowed down, killed while its memory is on the way.
    let (mut src, _guest) = dirtying_source(&[]);
    listen(&dst, &url);
    src.migrate_send(json!({"url": url, "max_bandwidth": 4 << 20}));
    dst.wait_migration(&["precopy"], MIGRATION_TIMEOUT);
    src.signal(libc::SIGKILL);
    let error = failed("killed source");
    assert!(error.contains("receiving memory"), "{error}");
    let _ = src.finish(EXIT);

    // And the next source moves in.
    let (mut src, mut guest) = dirtying_source(&[]);
    listen(&dst, &url);
    migrate(&mut src, &dst, json!({"url": url}));
    guest.migrated(src.serial());
    goes_on(dst, &mut guest);
}
