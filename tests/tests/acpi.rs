//! ACPI end to end: the test guest finds the RSDP (zero page and scan), verifies every
//! checksum, reads the MADT, FADT and DSDT, and powers off through the FADT's sleep control
//! register with SLP_TYP from `\_S5_`. What it reports is checked against the configuration;
//! with `--acpi off` it finds no RSDP and the devices come from the command line.

use tests::{run_with_env, test_guest, Output};

/// Runs the `acpi` scenario with `vcpus` vCPUs, `disks` disks, one console and one keyboard,
/// plus `extra` flags; petrel logs at info level so that how the VM stopped shows.
fn run_acpi(vcpus: u32, disks: usize, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let vcpus = vcpus.to_string();
    let mut args: Vec<String> = [
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        "petrel.test=acpi",
        "--vcpus",
        &vcpus,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..disks {
        let path = dir.path().join(format!("disk{i}.img"));
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
        args.push("--disk".into());
        args.push(format!("path={}", path.display()));
    }
    args.extend(["--console", "output=none", "--input", "kind=keyboard"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_with_env(&args, &[("PETREL_LOG", "petrel=info")])
}

/// The virtio device ids the guest reads, in order: the disks (2), the console (3), the
/// keyboard (18), as the configuration orders them.
fn device_ids(disks: usize) -> Vec<u32> {
    let mut ids = vec![2; disks];
    ids.extend([3, 18]);
    ids
}

/// `(base, size, irq)` of every `LNRO0005` device of the DSDT.
fn dsdt_windows(out: &Output) -> Vec<(u64, u64, u32)> {
    out.lines_with("DEVICE ")
        .into_iter()
        .filter(|l| l.contains(" hid=LNRO0005 "))
        .map(|l| {
            let field = |key: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .unwrap_or_else(|| panic!("no {key} in {l}"))
                    .to_string()
            };
            let mem = field("mem=");
            let (base, size) = mem.split_once('+').unwrap();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            assert!(
                l.ends_with(" edge high"),
                "virtio interrupts are edges: {l}"
            );
            assert!(l.contains(" cca=1 "), "{l}");
            (hex(base), hex(size), field("irq=").parse().unwrap())
        })
        .collect()
}

fn check_tables(vcpus: u32, disks: usize) -> Output {
    let out = run_acpi(vcpus, disks, &[]);
    out.assert_pass("acpi");
    assert!(out.stderr.contains("guest powered off"), "{out}");

    assert_eq!(
        out.lines_with("RSDP zeropage="),
        ["RSDP zeropage=0xe0000 scan=0xe0000"]
    );
    assert!(out
        .stdout
        .contains("RSDP addr=0xe0000 rev=2 oem=PETREL root=XSDT@"));
    let tables: Vec<&str> = out.lines_with("TABLE ").iter().map(|l| &l[6..10]).collect();
    assert_eq!(tables, ["XSDT", "FACP", "APIC", "DSDT"], "{out}");

    let cpus: Vec<String> = (0..vcpus)
        .map(|i| format!("CPU apic={i} uid={i} enabled=1 x2apic=0"))
        .collect();
    assert_eq!(out.lines_with("CPU "), cpus, "{out}");
    assert_eq!(
        out.lines_with("IOAPIC "),
        [format!("IOAPIC id={vcpus} addr=0xfec00000 gsi_base=0")]
    );
    assert_eq!(
        out.lines_with("OVERRIDE "),
        ["OVERRIDE bus=0 irq=0 gsi=0 flags=0x0"]
    );
    assert_eq!(out.lines_with("NMI "), ["NMI uid=0xff lint=1 flags=0x0"]);

    let fadt = out.lines_with("FADT ");
    assert_eq!(fadt.len(), 1, "{out}");
    for flag in ["hw_reduced=1", "pwr_button=1", "reset_reg_sup=1"] {
        assert!(fadt[0].contains(flag), "{flag}: {out}");
    }
    assert_eq!(
        out.lines_with("FADTREG "),
        ["FADTREG reset=0x600/0x1 sleep_control=0x600 sleep_status=0x600"]
    );

    assert!(out
        .stdout
        .contains("DEVICE \\_SB_.COM1 hid=PNP0501 uid=0 io=0x3f8+8 irq=4 edge high\n"));
    assert!(out
        .stdout
        .contains("DEVICE \\_SB_.PS2K hid=PNP0303 uid=0 io=0x60+1 io=0x64+1 irq=1 edge high\n"));
    assert!(out
        .stdout
        .contains("DEVICE \\_SB_.RTC_ hid=PNP0B00 uid=0 io=0x70+2\n"));
    assert!(out
        .stdout
        .contains("DEVICE \\_SB_.PWRB hid=PNP0C0C uid=0\n"));
    let windows = dsdt_windows(&out);
    assert_eq!(windows.len(), disks + 2, "{out}");
    for (i, &(base, size, irq)) in windows.iter().enumerate() {
        assert_eq!(size, 0x1000);
        assert!(
            base >= 0xc000_0000 && base + size <= 0xfec0_0000,
            "{base:#x}"
        );
        assert!((5..24).contains(&irq) && irq != 8 && irq != 12, "irq {irq}");
        assert!(windows[..i].iter().all(|w| w.0 != base && w.2 != irq));
    }
    // The power button's Generic Event Device: the next window and line after the virtio
    // devices', its interrupt alone in _CRS, its register in an operation region that _EVT
    // reads, and the window claimed by GEDR.
    let (last_base, _, last_irq) = *windows.last().unwrap();
    // GSIs 8 (the RTC) and 12 (the PS/2 mouse) stay free.
    let ged_irq = (last_irq + 1..24).find(|i| ![8, 12].contains(i)).unwrap();
    let ged_base = last_base + 0x1000;
    assert_eq!(
        out.lines_with("DEVICE \\_SB_.GED"),
        [
            format!(
                "DEVICE \\_SB_.GED0 hid=ACPI0013 uid=0 irq={ged_irq} edge high region=0:{ged_base:#x}+4 method=_EVT"
            ),
            format!("DEVICE \\_SB_.GEDR hid=PNP0C02 uid=0 mem={ged_base:#x}+0x1000"),
        ],
        "{out}"
    );
    let ids: Vec<u32> = out
        .lines_with("VIRTIO ")
        .iter()
        .map(|l| l.rsplit("id=").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, device_ids(disks), "{out}");

    assert_eq!(out.lines_with("S5 "), ["S5 slp_typ=5"]);
    assert_eq!(
        out.lines_with("POWEROFF "),
        ["POWEROFF port=0x600 value=0x34"]
    );
    out
}

#[test]
fn acpi_tables_describe_one_vcpu_and_the_devices_and_power_off() {
    if !tests::kvm_available() {
        return;
    }
    check_tables(1, 1);
}

#[test]
fn acpi_tables_describe_four_vcpus_and_five_devices() {
    if !tests::kvm_available() {
        return;
    }
    let out = check_tables(4, 3);
    // The same machine without ACPI puts the same windows on the command line.
    let off = run_acpi(4, 3, &["--acpi", "off"]);
    off.assert_pass("acpi");
    let cmdline: Vec<(u64, u64, u32)> = off
        .lines_with("WINDOW ")
        .iter()
        .map(|l| {
            let (size, rest) = l[7..].split_once('@').unwrap();
            let (addr, irq) = rest.split_once(':').unwrap();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (hex(addr), hex(size), irq.parse().unwrap())
        })
        .collect();
    assert_eq!(dsdt_windows(&out), cmdline, "{out}\n{off}");
}

#[test]
fn without_acpi_there_is_no_rsdp_and_devices_come_from_the_command_line() {
    if !tests::kvm_available() {
        return;
    }
    let out = run_acpi(2, 1, &["--acpi", "off"]);
    out.assert_pass("acpi");
    assert_eq!(out.lines_with("RSDP "), ["RSDP zeropage=none scan=none"]);
    assert_eq!(out.lines_with("NOACPI"), ["NOACPI"]);
    assert!(out.lines_with("TABLE ").is_empty());
    assert_eq!(
        out.lines_with("WINDOW "),
        [
            "WINDOW 0x1000@0xc0000000:5",
            "WINDOW 0x1000@0xc0001000:6",
            "WINDOW 0x1000@0xc0002000:7",
        ],
        "{out}"
    );
    // The scenario powers off through petrel's fixed register when no table names one.
    assert!(out.stderr.contains("guest powered off"), "{out}");
}
