//! A real Linux kernel: Debian's cloud `vmlinux` boots far enough to print its banner, the
//! command line petrel passed, an e820 map equal to the configured one, the ACPI tables it
//! found and the CPUs the MADT gave it (the kernel has no MP-table support). This is the one
//! slow test (seconds to tens of seconds on an emulating KVM). The kernel comes from
//! `resources/linux/fetch-kernel.sh`, which `.ci/run` runs and this test runs when needed.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::{kvm_available, workspace_root};

/// `vmlinux` or `bzImage` from Debian's cloud kernel package, fetched when missing.
/// The tests run on parallel threads: one fetches while the others wait for it.
fn kernel(name: &str) -> std::path::PathBuf {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let out = workspace_root().join("resources/linux/out").join(name);
    if !out.exists() {
        let status = Command::new("bash")
            .arg(workspace_root().join("resources/linux/fetch-kernel.sh"))
            .status()
            .expect("run fetch-kernel.sh");
        assert!(status.success(), "fetching the Debian kernel failed");
    }
    out
}

fn expected_e820(size: u64) -> Vec<String> {
    let line = |start: u64, end: u64, kind: &str| {
        format!("BIOS-e820: [mem {start:#018x}-{:#018x}] {kind}", end - 1)
    };
    let mut map = vec![
        line(0, 0x9fc00, "usable"),
        line(0x9fc00, 0xa0000, "reserved"),
        line(0xe0000, 0x100000, "reserved"),
        line(0x100000, size.min(3 << 30), "usable"),
    ];
    if size > 3 << 30 {
        map.push(line(1 << 32, (1 << 32) + size - (3 << 30), "usable"));
    }
    map
}

/// Boots `image` with `memory` of RAM and 2 vCPUs (plus `extra` flags) and checks what Linux
/// prints up to its CPU count: banner, command line, e820 map, petrel's ACPI tables, the MADT
/// used for SMP, and every line of `expect`.
fn linux_prints_banner_cmdline_and_e820(
    image: &str,
    memory: &str,
    size: u64,
    limit: Duration,
    extra: &[&str],
    expect: &[&str],
) {
    if !kvm_available() {
        return;
    }
    let kernel = kernel(image);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let cmdline = "earlyprintk=serial,ttyS0 console=ttyS0 reboot=k panic=1 petrel.nonce=5eed";
    let serial = format!("file:{}", log.display());
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        memory,
        "--cmdline",
        cmdline,
        "--cpu-template",
        "minimal",
        "--vcpus",
        "2",
        "--serial",
        &serial,
    ];
    args.extend_from_slice(extra);
    let child = tests::command(&args).spawn().unwrap();
    let pid = child.id().to_string();

    let expected = expected_e820(size);
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < limit {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        let e820_done = text
            .lines()
            .any(|l| l.contains(&expected[expected.len() - 1]));
        // The MADT is parsed a few seconds of guest time after the e820 map is printed.
        if text.contains("Command line: ") && e820_done && text.contains("smpboot: Allowing") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let out = tests::wait(child, Duration::from_secs(30));

    assert!(
        text.contains("Linux version 6."),
        "no banner\n{text}\n{out}"
    );
    assert!(
        text.lines()
            .any(|l| l.ends_with(&format!("Command line: {cmdline}"))),
        "command line not echoed\n{text}"
    );
    let e820: Vec<&str> = text
        .lines()
        .filter_map(|l| l.find("BIOS-e820: ").map(|i| &l[i..]))
        .collect();
    assert_eq!(e820, expected, "\n{text}");
    assert!(
        text.contains("ACPI: RSDP 0x00000000000E0000 000024 (v02 PETREL)"),
        "RSDP not found\n{text}"
    );
    for table in ["XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("ACPI: {table} 0x00000000000E"))
                    && l.contains("PETREL")),
            "{table} not listed\n{text}"
        );
    }
    assert!(
        text.contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "{text}"
    );
    assert!(text.contains("smpboot: Allowing 2 CPUs"), "{text}");
    for line in expect {
        assert!(text.contains(line), "no {line:?}\n{text}");
    }
    // The guest was still running when stopped: it exits on the signal, in order.
    assert_eq!(out.status.code(), Some(128 + 15), "{out}");
}

#[test]
fn linux_vmlinux_prints_banner_cmdline_and_e820_512m() {
    linux_prints_banner_cmdline_and_e820(
        "vmlinux",
        "512M",
        512 << 20,
        Duration::from_secs(180),
        &[],
        &[],
    );
}

/// Two NUMA nodes of 2 GiB, the second split by the MMIO gap: Linux reads the SRAT (each
/// node's memory and CPU) before it counts the CPUs.
#[test]
fn linux_vmlinux_sees_ram_above_4g_in_two_numa_nodes() {
    linux_prints_banner_cmdline_and_e820(
        "vmlinux",
        "4G",
        4 << 30,
        Duration::from_secs(180),
        &[
            "--numa",
            "node=0,cpus=0,memory=2G",
            "--numa",
            "node=1,cpus=1,memory=2G,distance=0:21",
        ],
        &[
            "ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x7fffffff]",
            "ACPI: SRAT: Node 1 PXM 1 [mem 0x80000000-0xbfffffff]",
            "ACPI: SRAT: Node 1 PXM 1 [mem 0x100000000-0x13fffffff]",
            "PXM 0 -> APIC 0x00 -> Node 0",
            "PXM 1 -> APIC 0x01 -> Node 1",
        ],
    );
}

/// The bzImage decompresses itself in the guest first: about 3.5 minutes on an emulating
/// KVM, a fraction of a second on a normal one. Run with `cargo test -- --ignored`.
#[test]
#[ignore = "slow here: the guest decompresses a 14 MB LZ4 payload under an emulating KVM"]
fn linux_bzimage_decompresses_and_prints_banner_cmdline_and_e820() {
    linux_prints_banner_cmdline_and_e820(
        "bzImage",
        "512M",
        512 << 20,
        Duration::from_secs(600),
        &[],
        &[],
    );
}
