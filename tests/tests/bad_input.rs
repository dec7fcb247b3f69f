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
