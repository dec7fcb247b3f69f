//! Snapshots end to end: the `snapshot` guest scenario writes generations of a pattern over
//! a 16 MiB region and counts; a paused VM is saved, and restored in a new petrel process,
//! where the guest checks its region (against the generations the host commanded) and its
//! count goes on from where it stopped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tests::api_vm::{load_body, ApiVm};
use tests::kvm_available;
use tests::snapshot_guest::{Checkpoint, SnapshotGuest};

const EXIT: Duration = Duration::from_secs(30);

/// A new petrel that loads the snapshot and runs it; the guest goes on from `at`.
fn restore(guest: &mut SnapshotGuest, at: &Checkpoint, state: &Path, mem: Option<&Path>) -> ApiVm {
    let vm = ApiVm::spawn(&[]);
    vm.load_snapshot(state, mem);
    assert_eq!(vm.state(), "Running");
    guest.restored(at);
    vm
}

/// Pauses, writes a snapshot of `kind`, and returns the guest's checkpoint.
fn snapshot(vm: &ApiVm, guest: &SnapshotGuest, kind: &str, state: &Path, mem: &Path) -> Checkpoint {
    vm.set_state("Paused");
    let at = guest.checkpoint(vm);
    vm.create_snapshot(kind, state, mem);
    at
}

/// The restored guest has its memory as the host commanded, counts on from where it was
/// saved, and powers off when told.
fn goes_on(mut vm: ApiVm, guest: &mut SnapshotGuest) {
    guest.verify(&vm);
    guest.wait_counts(&vm, 2);
    guest.assert_counts_continue(&vm);
    guest.quit(&mut vm);
}

/// `petrel snapshot ARGS...`.
fn petrel_snapshot(args: &[&str]) -> tests::Output {
    let child = std::process::Command::new(tests::petrel())
        .arg("snapshot")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn petrel snapshot");
    tests::wait(child, EXIT)
}

fn files(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| dir.join(n)).collect()
}

#[test]
fn a_full_snapshot_goes_on_in_a_new_process() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let [state, mem] = <[PathBuf; 2]>::try_from(files(dir.path(), &["state", "mem"])).unwrap();
    let (vm, mut guest) = SnapshotGuest::boot("256M", &[]);
    guest.wait_counts(&vm, 2);
    guest.write(&vm, 3);
    guest.write(&vm, 7);
    guest.write(&vm, 7);
    let at = snapshot(&vm, &guest, "Full", &state, &mem);
    // The paused VM is unchanged by the snapshot and can go on.
    vm.set_state("Resumed");
    guest.write(&vm, 1);
    vm.kill();

    // Sparse: the guest touched its 16 MiB region and its image, not 256 MiB.
    let meta = std::fs::metadata(&mem).unwrap();
    assert!(meta.len() >= 256 << 20, "{}", meta.len());
    let on_disk = meta.blocks() * 512;
    assert!(on_disk < 40 << 20, "{on_disk} bytes on disk");
    assert!(on_disk >= 16 << 20, "{on_disk} bytes on disk");

    let mut vm = restore(&mut guest, &at, &state, Some(&mem));
    assert_eq!(at.generations()[7], 2);
    guest.verify(&vm);
    let first = guest.wait_counts(&vm, 3);
    guest.assert_counts_continue(&vm);
    assert!(first > 0);
    guest.write(&vm, 1);
    guest.verify(&vm);
    let config = vm.get("/vm/config");
    assert_eq!(config["machine"]["memory"], json!("256M"));
    guest.quit(&mut vm);
}

#[test]
fn a_chain_of_three_diffs_restores_and_merges() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, mut guest) = SnapshotGuest::boot("128M", &["--track-dirty-pages"]);
    guest.wait_counts(&vm, 1);
    snapshot(&vm, &guest, "Full", &d.join("s0"), &d.join("m0"));
    vm.set_state("Resumed");
    guest.write(&vm, 1);
    snapshot(&vm, &guest, "Diff", &d.join("s1"), &d.join("m1"));
    vm.set_state("Resumed");
    guest.write(&vm, 2);
    guest.write(&vm, 2);
    snapshot(&vm, &guest, "Diff", &d.join("s2"), &d.join("m2"));
    vm.set_state("Resumed");
    guest.write(&vm, 15);
    guest.write(&vm, 1);
    let at = snapshot(&vm, &guest, "Diff", &d.join("s3"), &d.join("m3"));
    vm.kill();
    assert_eq!(
        at.generations(),
        [0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    );
    // A layer holds the pages written since its parent: two 1 MiB sub-regions and what the
    // guest's counting touched, far less than the full file.
    let layer = std::fs::metadata(d.join("m3")).unwrap().blocks() * 512;
    let full = std::fs::metadata(d.join("m0")).unwrap().blocks() * 512;
    assert!(
        layer >= 2 << 20 && layer < full / 2,
        "layer {layer}, full {full}"
    );

    let info = petrel_snapshot(&["info", d.join("s3").to_str().unwrap(), "--verify"]);
    assert!(info.status.success(), "{info}");
    assert!(info.stdout.contains("memory chain of 4 file(s)"), "{info}");
    assert!(
        info.stdout.contains("every content hash verified"),
        "{info}"
    );

    // The last layer, its parents found through the headers.
    let vm = restore(&mut guest, &at, &d.join("s3"), None);
    goes_on(vm, &mut guest);

    // The same chain flattened into one full memory file.
    let merged = petrel_snapshot(&[
        "merge",
        d.join("m3").to_str().unwrap(),
        d.join("flat").to_str().unwrap(),
    ]);
    assert!(merged.status.success(), "{merged}");
    let vm = restore(&mut guest, &at, &d.join("s3"), Some(&d.join("flat")));
    goes_on(vm, &mut guest);
}

#[test]
fn bad_snapshots_are_refused_and_nothing_is_loaded() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, mut guest) = SnapshotGuest::boot("128M", &["--track-dirty-pages"]);
    guest.wait_counts(&vm, 1);
    vm.set_state("Paused");
    vm.create_snapshot("Full", &d.join("s0"), &d.join("m0"));
    vm.set_state("Resumed");
    guest.write(&vm, 4);
    let at = snapshot(&vm, &guest, "Diff", &d.join("s1"), &d.join("m1"));
    // Refused while the VM is paused, each with its reason.
    let msg = vm.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_type": "Incremental", "snapshot_path": d.join("x"), "mem_file_path": d.join("y")})),
        400,
    );
    assert!(msg.contains("snapshot_type"), "{msg}");
    let msg = vm.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": d.join("no/such/dir/s"), "mem_file_path": d.join("no/such/dir/m")})),
        400,
    );
    assert!(msg.contains("no/such/dir"), "{msg}");
    // A snapshot whose state file cannot be written leaves the memory file of the same name
    // as it was (s1's chain still needs m0, below), and no staging file behind.
    let msg = vm.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": d.join("no/such/dir/s"), "mem_file_path": d.join("m0")})),
        400,
    );
    assert!(msg.contains("state file"), "{msg}");
    assert!(!d.join(".m0.petrel-new").exists());
    // A Diff may not replace a file of its own chain.
    let msg = vm.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_type": "Diff", "snapshot_path": d.join("x"), "mem_file_path": d.join("m0")})),
        400,
    );
    assert!(msg.contains("would break that chain"), "{msg}");
    vm.set_state("Resumed");
    let msg = vm.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": d.join("x"), "mem_file_path": d.join("y")})),
        400,
    );
    assert!(msg.contains("while the VM is Running"), "{msg}");
    vm.kill();

    let copy = |from: &str, to: &str| std::fs::copy(d.join(from), d.join(to)).unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = std::fs::read(d.join(name)).unwrap();
        f(&mut bytes);
        std::fs::write(d.join(name), bytes).unwrap();
    };
    copy("s1", "corrupt");
    edit("corrupt", &|b| {
        let at = b.len() / 2;
        b[at] ^= 0x20;
    });
    copy("s1", "version");
    edit("version", &|b| b[8] = 99);
    copy("s1", "truncated");
    edit("truncated", &|b| b.truncate(b.len() - 10));
    copy("m0", "short");
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("short"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let vm = ApiVm::spawn(&[]);
    let refused = |state: &str, mem: Option<&str>, expect: &str| {
        let mem = mem.map(|m| d.join(m));
        let msg = vm.fails(
            "PUT",
            "/snapshot/load",
            Some(load_body(&d.join(state), mem.as_deref())),
            400,
        );
        assert!(msg.contains(expect), "{state}: {msg} (expected {expect:?})");
        assert_eq!(vm.state(), "Not started");
        msg
    };
    refused("corrupt", None, "checksum");
    refused("version", None, "version 99");
    refused("truncated", None, "truncated");
    refused("missing", None, "missing");
    refused("s1", Some("short"), "bytes");
    // A memory file of another snapshot.
    refused("s0", Some("m1"), "is not the one");
    // The parent layer gone.
    std::fs::rename(d.join("m0"), d.join("m0.away")).unwrap();
    let msg = refused("s1", None, "m0");
    assert!(msg.contains("parent") || msg.contains("missing"), "{msg}");
    std::fs::rename(d.join("m0.away"), d.join("m0")).unwrap();

    // After all that the same petrel loads the good snapshot.
    vm.load_snapshot(&d.join("s1"), None);
    let mut vm = vm;
    guest.restored(&at);
    guest.verify(&vm);
    guest.quit(&mut vm);
}

#[test]
fn load_without_resume_waits_paused_and_run_restore_runs() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, mut guest) = SnapshotGuest::boot("128M", &[]);
    guest.write(&vm, 9);
    let at = snapshot(&vm, &guest, "Full", &d.join("s"), &d.join("m"));
    vm.kill();

    let mut vm = ApiVm::spawn(&[]);
    let mut body = load_body(&d.join("s"), Some(&d.join("m")));
    body["resume_vm"] = json!(false);
    vm.ok("PUT", "/snapshot/load", body);
    assert_eq!(vm.state(), "Paused");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(vm.serial(), "", "the guest ran while paused");
    vm.set_state("Resumed");
    guest.restored(&at);
    guest.verify(&vm);
    guest.quit(&mut vm);

    // `petrel run --restore STATE` with the memory file the state names.
    let vm = ApiVm::spawn(&["--restore", d.join("s").to_str().unwrap()]);
    assert_eq!(vm.state(), "Running");
    guest.restored(&at);
    goes_on(vm, &mut guest);
}
