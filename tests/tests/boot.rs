//! Booting the test guest: command line, e820 map, initrd, SMP, the demo, and how the
//! machine ends (reset, power-off, triple fault, signals).

use std::time::Duration;

use tests::{fnv1a64, kvm_available, run, run_scenario, test_guest};

/// The e820 map petrel must give a guest with `size` bytes of RAM, written out by hand.
fn expected_e820(size: u64) -> Vec<String> {
    let low_end = size.min(3 << 30);
    let mut map = vec![
        "E820 0x0 0x9fc00 1".to_string(),
        "E820 0x9fc00 0x400 2".to_string(),
        "E820 0xe0000 0x20000 2".to_string(),
        format!("E820 0x100000 {:#x} 1", low_end - 0x100000),
    ];
    if size > 3 << 30 {
        map.push(format!("E820 0x100000000 {:#x} 1", size - (3 << 30)));
    }
    map
}

fn boot_reports_cmdline_e820_and_initrd(memory: &str, size: u64) {
    if !kvm_available() {
        return;
    }
    let initrd: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let cmdline = "petrel.test=boot nonce=7f3a \"quoted value\" a.b=c";
    let out = run(
        &[
            "--kernel",
            test_guest().to_str().unwrap(),
            "--memory",
            memory,
            "--cmdline",
            cmdline,
            "--initrd",
            initrd_path.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    out.assert_pass("boot");
    assert_eq!(
        out.lines_with("CMDLINE "),
        vec![format!("CMDLINE {cmdline}")]
    );
    assert_eq!(out.lines_with("E820 "), expected_e820(size), "{out}");
    let initrd_line = out.lines_with("INITRD ");
    assert_eq!(initrd_line.len(), 1, "{out}");
    let fields: Vec<&str> = initrd_line[0].split(' ').collect();
    let addr = u64::from_str_radix(fields[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(fields[2], "0x10000", "initrd size");
    assert_eq!(
        fields[3],
        format!("{:#x}", fnv1a64(&initrd)),
        "initrd checksum"
    );
    assert_eq!(addr % 4096, 0);
    assert!(
        addr + 0x10000 <= size.min(3 << 30),
        "initrd below the MMIO gap"
    );
}

#[test]
fn boot_128m_reports_cmdline_e820_and_initrd() {
    boot_reports_cmdline_e820_and_initrd("128M", 128 << 20);
}

#[test]
fn boot_1g_reports_cmdline_e820_and_initrd() {
    boot_reports_cmdline_e820_and_initrd("1G", 1 << 30);
}

#[test]
fn boot_5g_puts_ram_above_4g() {
    boot_reports_cmdline_e820_and_initrd("5G", 5 << 30);
}

fn smp_starts_every_ap(vcpus: u32) {
    if !kvm_available() {
        return;
    }
    let n = vcpus.to_string();
    let out = run_scenario("smp", &["--vcpus", &n, "--serial", "stdout"]);
    out.assert_pass("smp");
    assert_eq!(out.lines_with("CPUS "), vec![format!("CPUS {vcpus}")]);
    let mp: Vec<String> = (0..vcpus).map(|i| format!("MPCPU {i}")).collect();
    assert_eq!(out.lines_with("MPCPU "), mp);
    let aps: Vec<String> = (1..vcpus).map(|i| format!("AP {i} up")).collect();
    assert_eq!(out.lines_with("AP "), aps);
}

#[test]
fn smp_with_4_vcpus_starts_every_ap_through_init_sipi() {
    smp_starts_every_ap(4);
}

#[test]
fn smp_with_16_vcpus_starts_every_ap_through_init_sipi() {
    smp_starts_every_ap(16);
}

#[test]
fn smp_with_64_vcpus_starts_every_ap_through_init_sipi() {
    smp_starts_every_ap(64);
}

#[test]
fn demo_boots_with_no_arguments_and_exits_0() {
    if !kvm_available() {
        return;
    }
    let out = run(&[], Duration::from_secs(60));
    out.assert_pass("demo");
    assert!(out.stdout.starts_with("petrel demo guest\n"), "{out}");
    assert!(out.stdout.contains("vCPUs: 1\n"), "{out}");
    assert!(out.stdout.contains("memory: 128 MiB\n"), "{out}");
    assert!(
        out.stdout.contains("devices: serial 0x3f8, i8042, rtc\n"),
        "{out}"
    );
    assert!(out.stderr.is_empty(), "{out}");
}

#[test]
fn demo_reports_the_configured_machine() {
    if !kvm_available() {
        return;
    }
    let out = run(
        &["--vcpus", "3", "--memory", "512M"],
        Duration::from_secs(60),
    );
    out.assert_pass("demo");
    assert!(out.stdout.contains("vCPUs: 3\n"), "{out}");
    assert!(out.stdout.contains("memory: 512 MiB\n"), "{out}");
}

#[test]
fn serial_output_goes_to_a_file_or_nowhere() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let arg = format!("file:{}", log.display());
    let out = run(&["--serial", &arg], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("PASS demo"), "{text}");
    let quiet = run(&["--serial", "none"], Duration::from_secs(60));
    assert_eq!(quiet.status.code(), Some(0), "{quiet}");
    assert!(quiet.stdout.is_empty(), "{quiet}");
}

#[test]
fn triple_fault_stops_the_vm_and_exits_non_zero() {
    if !kvm_available() {
        return;
    }
    let out = run_scenario("triplefault", &[]);
    assert!(out.stdout.contains("TRIPLEFAULT now"), "{out}");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("vCPU 0 triple-faulted"), "{out}");
}

#[test]
fn sigterm_stops_a_running_guest_in_order() {
    if !kvm_available() {
        return;
    }
    let cmdline = "petrel.test=idle";
    let mut cmd = tests::command(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--vcpus",
        "2",
    ]);
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    // Wait for the guest to be running before stopping it.
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tests::wait(child, Duration::from_secs(30));
    assert!(out.stdout.contains("IDLE"), "{out}");
    assert_eq!(out.status.code(), Some(128 + 15), "{out}");
}
