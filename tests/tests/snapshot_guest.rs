//! The `snapshot` scenario of the test guest, driven through the API the way the snapshot
//! tests drive it (see `tests::snapshot_guest`): commands over `PUT /serial`, answers in the
//! serial log, and a count that goes on across a pause. Snapshots themselves are tested
//! elsewhere; this checks the guest and its host-side driver.

use std::time::{Duration, Instant};

use resources::snapshot_proto::{Command, PAGES_PER_SUBREGION};
use tests::kvm_available;
use tests::snapshot_guest::SnapshotGuest;

#[test]
fn writes_verify_and_the_count_goes_on_across_a_pause() {
    if !kvm_available() {
        return;
    }
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &[]);
    guest.wait_counts(&vm, 3);

    let timed = |what: &str, start: Instant| eprintln!("{what}: {:?}", start.elapsed());
    let start = Instant::now();
    guest.write(&vm, 3);
    timed("3 (1 MiB) round trip", start);
    guest.write(&vm, 3);
    let start = Instant::now();
    guest.write_all(&vm);
    timed("A (16 MiB) round trip", start);
    let start = Instant::now();
    guest.verify(&vm);
    timed("v (16 MiB) round trip", start);
    assert_eq!(
        guest.expected_verify(),
        "VERIFY ok 1,1,1,3,1,1,1,1,1,1,1,1,1,1,1,1"
    );
    assert_eq!(
        guest.send(&vm, Command::Unknown(b'x')).as_deref(),
        Some("UNKNOWN 0x78")
    );

    // A command sent just before a pause is answered after the resume.
    guest.put(&vm, Command::WriteAll);
    vm.set_state("Paused");
    std::thread::sleep(Duration::from_millis(100));
    vm.set_state("Resumed");
    assert_eq!(guest.answer(&vm, "WROTE "), "WROTE all");
    guest.verify(&vm);
    assert_eq!(
        guest.expected_verify(),
        "VERIFY ok 2,2,2,4,2,2,2,2,2,2,2,2,2,2,2,2"
    );

    vm.set_state("Paused");
    let frozen = guest.last_count(&vm);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(guest.last_count(&vm), frozen, "the guest ran while paused");
    vm.set_state("Resumed");
    guest.wait_counts(&vm, 5);
    guest.verify(&vm);
    let last = guest.assert_counts_continue(&vm);
    assert!(last >= frozen.unwrap() + 5);

    guest.quit(&mut vm);
}

#[test]
fn steady_dirtying_rewrites_a_sub_region_at_every_count() {
    if !kvm_available() {
        return;
    }
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &[]);
    guest.write(&vm, 5);
    guest.dirty(&vm, true);
    let first = guest.wait_counts(&vm, 1);
    let start = Instant::now();
    // Commands are answered in between, their WROTE told apart from the guest's own.
    guest.write(&vm, 5);
    guest.verify(&vm);
    let last = guest.wait_counts(&vm, 32);
    let elapsed = start.elapsed();
    guest.dirty(&vm, false);
    let printed = guest.printed_generations(&vm);
    let counts = last - first;
    let pages = counts * PAGES_PER_SUBREGION;
    eprintln!(
        "steady dirtying: {counts} counts in {elapsed:?}: {:.0} pages/s ({:.1} MiB/s)",
        pages as f64 / elapsed.as_secs_f64(),
        (pages * 4096) as f64 / elapsed.as_secs_f64() / f64::from(1 << 20)
    );
    // Every sub-region was rewritten twice at least, by the guest alone.
    assert!(printed.iter().all(|&g| g >= 2), "{printed:?}");
    assert!(printed.iter().zip(guest.generations()).all(|(&p, g)| p > g));
    guest.verify(&vm);
    // Off: the generations stay.
    guest.wait_counts(&vm, 3);
    assert_eq!(guest.printed_generations(&vm), printed);
    guest.assert_counts_continue(&vm);
    guest.quit(&mut vm);
}

#[test]
fn too_little_ram_fails() {
    if !kvm_available() {
        return;
    }
    let out = tests::run_scenario("snapshot", &["--memory", "64M"]);
    let fail = out.lines_with("FAIL snapshot: ");
    assert_eq!(fail.len(), 1, "{out}");
    assert!(fail[0].contains("RAM too small"), "{out}");
}
