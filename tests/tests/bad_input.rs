//! Bad input from the user: each is refused with one line naming the problem on stderr and
//! exit status 2 — never a panic or a backtrace. petrel checks all of it before it opens
//! `/dev/kvm`, so these tests need no KVM.

use std::time::Duration;

use tests::{run, test_guest};

fn refused(args: &[&str], needle: &str) {
    let out = run(args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{args:?}\n{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}\n{out}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    assert!(!out.stderr.contains("panicked"), "{out}");
}

#[test]
fn missing_kernel_is_named() {
    refused(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn missing_initrd_is_named() {
    refused(
        &[
            "--kernel",
            "/nonexistent/k",
            "--initrd",
            "/nonexistent/initrd",
        ],
        "nonexistent",
    );
}

#[test]
fn a_file_that_is_neither_elf_nor_bzimage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    refused(
        &["--kernel", junk.to_str().unwrap()],
        "not an ELF vmlinux or a bzImage",
    );
}

#[test]
fn memory_too_small_for_the_initrd_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0u8; 20 << 20]).unwrap();
    refused(
        &[
            "--kernel",
            test_guest().to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "16M",
        ],
        "does not fit",
    );
}

#[test]
fn vcpu_counts_out_of_range_are_refused() {
    refused(&["--vcpus", "0"], "vcpus must be between 1 and 254");
    refused(&["--vcpus", "255"], "vcpus must be between 1 and 254");
}

#[test]
fn unparseable_sizes_are_refused() {
    refused(&["--memory", "lots"], "invalid size");
    refused(&["--memory", "1X"], "invalid size");
    refused(&["--memory", "1M"], "16 MiB minimum");
}

#[test]
fn a_command_line_longer_than_the_protocol_allows_is_refused() {
    let long = "x".repeat(4096);
    refused(
        &[
            "--kernel",
            test_guest().to_str().unwrap(),
            "--cmdline",
            &long,
        ],
        "this kernel accepts at most 2047",
    );
}

#[test]
fn invalid_config_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.json");
    for (text, needle) in [
        (r#"{"machine":{"cpus":2}}"#, "unknown field `cpus`"),
        (r#"{"machine":{"vcpus":"two"}}"#, "invalid type"),
        ("{", "EOF"),
    ] {
        std::fs::write(&path, text).unwrap();
        refused(&["--config", path.to_str().unwrap()], needle);
    }
}

#[test]
fn unknown_flags_are_refused_with_usage() {
    let out = run(&["--bogus"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--bogus"), "{out}");
}

#[test]
fn missing_disk_image_is_named() {
    refused(
        &["--disk", "path=/nonexistent/disk.img"],
        "/nonexistent/disk.img",
    );
}

#[test]
fn disk_image_locked_by_another_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("locked.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: `holder` is open and `lock` is a valid flock for F_OFD_SETLK.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&holder),
            libc::F_OFD_SETLK,
            &lock,
        )
    };
    assert_eq!(rc, 0);
    refused(
        &["--disk", &format!("path={}", img.display())],
        "locked by another process",
    );
    drop(holder);
}

#[test]
fn malformed_device_options_are_refused() {
    refused(&["--disk", "path=/a,readonly=maybe"], "readonly=maybe");
    refused(&["--disk", "path=/a,cache=none"], "unknown option cache");
    refused(&["--disk", "readonly=on"], "path= is required");
    refused(&["--disk", "path=/a,path=/b"], "path is given twice");
    refused(&["--disk", "path=/a,rate=bw=fast"], "bw=fast");
    refused(
        &["--net", "tap=t0,mac=02:00:00:00:00"],
        "mac=02:00:00:00:00",
    );
    refused(
        &["--net", "tap=t0,mac=01:00:00:00:00:01"],
        "mac=01:00:00:00:00:01",
    );
    refused(&["--console", "output=tty"], "tty");
}

#[test]
fn duplicate_ids_and_shared_backends_are_refused() {
    refused(
        &["--disk", "path=/a,id=x", "--console", "id=x,output=none"],
        "device id \"x\" is used twice",
    );
    refused(
        &["--net", "tap=t0", "--net", "tap=t0"],
        "TAP t0 is used twice",
    );
}

#[test]
fn bad_tap_name_is_refused() {
    refused(&["--net", "tap=name-longer-than-15"], "name-longer-than-15");
    refused(&["--net", "tap=a/b"], "a/b");
}

#[test]
fn console_socket_in_a_missing_directory_is_refused() {
    refused(
        &["--console", "output=socket:/nonexistent/dir/c.sock"],
        "/nonexistent/dir/c.sock",
    );
}
