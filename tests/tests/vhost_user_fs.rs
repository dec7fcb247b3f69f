//! vhost-user-fs end to end: `virtiofsd` shares a directory over a vhost-user socket, the
//! test guest's `fs` scenario reads a file of it with FUSE requests through petrel's
//! virtio-fs device, and the host checks the tag, size and checksum the guest saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::backend_process::BackendProcess;
use tests::{fnv1a64, kvm_available, test_guest, Output};

/// Debian's `qemu-system-common` ships it.
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const FILE: &str = "hello.txt";
/// Not a multiple of the page size: the guest reads a partial last page.
const FILE_LEN: usize = 5000;

fn available() -> bool {
    if !kvm_available() {
        return false;
    }
    let ok = Path::new(VIRTIOFSD).exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{VIRTIOFSD} is missing (install qemu-system-common), and CI is set"
        );
        eprintln!("skipped: {VIRTIOFSD} is not installed");
    }
    ok
}

/// The file's contents: a line-numbered text pattern.
fn contents() -> Vec<u8> {
    let mut text = Vec::new();
    let mut line = 0;
    while text.len() < FILE_LEN {
        text.extend_from_slice(format!("line {line:04} of the shared file\n").as_bytes());
        line += 1;
    }
    text.truncate(FILE_LEN);
    text
}

/// A directory with [`FILE`] in it, shared by `virtiofsd` on a socket; killed when dropped.
struct Share {
    _daemon: BackendProcess,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn share() -> Share {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join(FILE), contents()).unwrap();
    let socket = dir.path().join("vufs.sock");
    let mut virtiofsd = Command::new(VIRTIOFSD);
    virtiofsd
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", shared.display()))
        .args(["-o", "cache=none", "-o", "sandbox=chroot"]);
    Share {
        _daemon: BackendProcess::start(virtiofsd, &socket),
        socket,
        _dir: dir,
    }
}

/// Checks what the `fs` scenario printed against the file.
fn assert_read_the_file(out: &str, tag: &str, hiprio: &str) {
    let data = contents();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("FS ")).collect();
    let want = [
        format!("FS tag={tag} request_queues=1 hiprio={hiprio}"),
        format!(
            "FS read size={FILE_LEN} fnv={:016x} head={}",
            fnv1a64(&data),
            String::from_utf8_lossy(&data[..16]).replace('\n', ".")
        ),
        "FS release=ok".to_string(),
    ];
    for line in &want {
        assert!(lines.contains(&line.as_str()), "no {line:?} in\n{out}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FS init major=7 minor=")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FS lookup") && l.ends_with(&format!("size={FILE_LEN}"))),
        "{out}"
    );
}

/// Runs the `fs` scenario with `params` on the guest's command line, on a fresh share.
fn run_fs(params: &str, tag: &str) -> Output {
    let share = share();
    let device = format!("socket={},tag={tag}", share.socket.display());
    let cmdline = format!("petrel.test=fs {params}");
    let args = [
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        cmdline.trim_end(),
        "--vhost-user-fs",
        &device,
    ];
    tests::run(&args, Duration::from_secs(120))
}

#[test]
fn guest_reads_a_file_shared_by_virtiofsd() {
    if !available() {
        return;
    }
    let out = run_fs("", "myfs");
    out.assert_pass("fs");
    assert!(!out.stderr.contains("back end lost"), "{out}");
    assert_read_the_file(&out.stdout, "myfs", "on");
}

/// The driver may leave the high-priority queue unset: petrel hands virtiofsd only the
/// request queue, which is enough for it.
#[test]
fn the_hiprio_queue_may_stay_unset() {
    if !available() {
        return;
    }
    let tag = "t".repeat(36);
    let out = run_fs("petrel.fs.hiprio=off", &tag);
    out.assert_pass("fs");
    assert_read_the_file(&out.stdout, &tag, "off");
}

#[test]
fn a_missing_file_is_a_fuse_error_the_guest_reports() {
    if !available() {
        return;
    }
    let out = run_fs("petrel.fs.file=absent.txt", "myfs");
    // ENOENT.
    assert_eq!(
        out.lines_with("FS ERROR"),
        vec!["FS ERROR op=LOOKUP error=-2"],
        "{out}"
    );
    assert_eq!(out.lines_with("FAIL fs").len(), 1, "{out}");
}

#[test]
fn api_adds_the_device_and_refuses_bad_tags() {
    if !available() {
        return;
    }
    let share = share();
    let mut vm = ApiVm::spawn(&[]);
    vm.ok(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": test_guest(), "boot_args": "petrel.test=fs" }),
    );
    for tag in [String::new(), "t".repeat(37), "a\0b".into()] {
        let body = json!({ "id": "vf0", "socket": share.socket, "tag": tag });
        let msg = vm.fails("PUT", "/vhost-user-fs/vf0", Some(body), 400);
        assert!(msg.contains("tag"), "{msg}");
    }
    vm.ok(
        "PUT",
        "/vhost-user-fs/vf0",
        json!({ "id": "vf0", "socket": share.socket, "tag": "apifs" }),
    );
    let config = vm.get("/vm/config");
    assert_eq!(config["vhost_user_fs"][0]["tag"], "apifs", "{config}");
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    let out = vm.finish(Duration::from_secs(120));
    assert_read_the_file(&vm.serial(), "apifs", "on");
    assert!(vm.serial().contains("PASS fs"), "{out:?}\n{}", vm.serial());
}

#[test]
fn a_socket_that_does_not_exist_fails_the_start_naming_it() {
    if !available() {
        return;
    }
    tests::assert_missing_vhost_user_socket_fails_start("--vhost-user-fs", ",tag=myfs");
}

#[test]
fn a_bad_tag_is_refused_before_anything_starts() {
    let long = format!("socket=/nonexistent.sock,tag={}", "t".repeat(37));
    for device in ["socket=/nonexistent.sock,tag=", long.as_str(), "socket=/s"] {
        let args = ["--kernel", "/nonexistent", "--vhost-user-fs", device];
        let out = tests::run(&args, Duration::from_secs(30));
        assert_ne!(out.status.code(), Some(0), "{out}");
        assert!(out.stderr.contains("--vhost-user-fs"), "{out}");
    }
}

#[test]
fn snapshots_and_migration_are_refused_while_attached() {
    if !available() {
        return;
    }
    let share = share();
    let dir = tempfile::tempdir().unwrap();
    let vm = ApiVm::spawn(&[]);
    vm.ok(
        "PUT",
        "/boot-source",
        json!({ "kernel_image_path": test_guest(), "boot_args": "petrel.test=count" }),
    );
    vm.ok(
        "PUT",
        "/vhost-user-fs/vf0",
        json!({ "id": "vf0", "socket": share.socket, "tag": "myfs" }),
    );
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    vm.wait_count_above(None);
    vm.set_state("Paused");
    let msg = vm.snapshot_refused(dir.path());
    assert!(
        msg.contains("vf0") && msg.contains("cannot be saved"),
        "{msg}"
    );
    let body = json!({ "url": "unix:/nonexistent" });
    let msg = vm.fails("PUT", "/migration/send", Some(body), 400);
    assert!(
        msg.contains("vf0") && msg.contains("cannot be saved"),
        "{msg}"
    );
    vm.set_state("Resumed");
    assert_eq!(vm.state(), "Running");
    vm.kill();
}
