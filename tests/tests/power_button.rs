//! The ACPI power button end to end: the `powerbutton` guest scenario finds the Generic Event
//! Device in the DSDT, routes its GSI through the IOAPIC with interrupts masked, and waits in
//! the local APIC's IRR for the interrupt; `PUT /actions PowerButton` (or
//! `petrel ctl power-button`) presses the button, the guest reads the event register and
//! powers off through S5, and petrel exits 0. Without ACPI, or before the VM runs, the press
//! is refused; a snapshot taken while the guest waits keeps the device.

use std::time::Duration;

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::{kvm_available, petrel, test_guest};

const TIMEOUT: Duration = Duration::from_secs(60);
/// petrel logs how the VM stopped at info level.
const LOG: [(&str, &str); 1] = [("PETREL_LOG", "petrel=info")];

fn guest() -> &'static str {
    test_guest().to_str().unwrap()
}

/// A petrel running the `powerbutton` scenario with `extra` flags, once the guest waits
/// for the press; returns it and the GSI the guest routed.
fn waiting_guest(extra: &[&str]) -> (ApiVm, u32) {
    let mut args = vec!["--kernel", guest(), "--cmdline", "petrel.test=powerbutton"];
    args.extend_from_slice(extra);
    let vm = ApiVm::spawn_with_env(&LOG, &args);
    vm.wait_serial(TIMEOUT, |l| (l == "READY").then_some(()));
    let serial = vm.serial();
    let field = |line: &str, key: &str| -> String {
        line.split(' ')
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_string()
    };
    let ged = serial
        .lines()
        .find(|l| l.starts_with("GED path="))
        .unwrap_or_else(|| panic!("no GED line:\n{serial}"));
    assert!(ged.starts_with("GED path=\\_SB_.GED0 "), "{ged}");
    assert!(ged.contains(" edge high "), "{ged}");
    assert!(ged.ends_with(" evt=1"), "{ged}");
    let region = field(ged, "region=");
    let (addr, len) = region.split_once('+').unwrap();
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
    assert!((0xc000_0000..0xfec0_0000).contains(&addr), "{ged}");
    assert_eq!(len, "4", "{ged}");
    let gsi: u32 = field(ged, "gsi=").parse().unwrap();
    let route = serial
        .lines()
        .find(|l| l.starts_with("ROUTE "))
        .unwrap_or_else(|| panic!("no ROUTE line:\n{serial}"));
    assert!(
        route.starts_with(&format!("ROUTE gsi={gsi} pin={gsi} vector=0x40 apic=0 ")),
        "{route}"
    );
    // Fixed delivery to vector 0x40, edge, active high, unmasked.
    assert!(route.ends_with(" entry=0x40"), "{route}");
    (vm, gsi)
}

/// The guest took the interrupt, read the power button's bit once (the second read finds
/// it cleared) and powered off; petrel exited 0.
fn powered_off_by_the_button(mut vm: ApiVm) {
    let out = vm.finish(TIMEOUT);
    let serial = vm.serial();
    let lines: Vec<&str> = serial.lines().collect();
    let after_ready = lines
        .iter()
        .position(|l| *l == "READY")
        .map_or(&lines[..], |at| &lines[at + 1..]);
    assert_eq!(
        after_ready,
        [
            "IRQ vector=0x40",
            "GED status=0x1 then=0x0",
            "POWERBUTTON pressed",
            "POWEROFF port=0x600 value=0x34",
            "PASS powerbutton",
        ],
        "{serial}"
    );
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stderr.contains("guest powered off"), "{out}");
}

#[test]
fn the_power_button_interrupts_the_guest_which_reads_the_event_and_powers_off() {
    if !kvm_available() {
        return;
    }
    // One disk, so the GED's window and line come after a virtio device's.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let disk = format!("path={}", disk.display());
    let (vm, gsi) = waiting_guest(&["--disk", &disk]);
    assert_eq!(gsi, 6, "the virtio disk has GSI 5, the GED the next one");
    // Nothing is pending before the press: the guest still waits.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!vm.serial().contains("IRQ "), "{}", vm.serial());
    vm.ok("PUT", "/actions", json!({ "action_type": "PowerButton" }));
    powered_off_by_the_button(vm);
}

#[test]
fn petrel_ctl_power_button_presses_it() {
    if !kvm_available() {
        return;
    }
    let (vm, _) = waiting_guest(&[]);
    let out = std::process::Command::new(petrel())
        .args(["ctl", "--api-sock"])
        .arg(vm.socket())
        .arg("power-button")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "power button pressed\n"
    );
    powered_off_by_the_button(vm);
}

#[test]
fn the_power_button_is_refused_before_start_and_without_acpi() {
    if !kvm_available() {
        return;
    }
    let press = Some(json!({ "action_type": "PowerButton" }));
    let vm = ApiVm::spawn(&[]);
    let msg = vm.fails("PUT", "/actions", press.clone(), 400);
    assert_eq!(
        msg,
        "PUT /actions PowerButton is not allowed while the VM is Not started; it is allowed when the VM is Running"
    );
    drop(vm);

    let vm = ApiVm::spawn(&[
        "--kernel",
        guest(),
        "--cmdline",
        "petrel.test=count",
        "--acpi",
        "off",
    ]);
    vm.wait_count_above(None);
    let msg = vm.fails("PUT", "/actions", press, 400);
    assert!(msg.contains("without ACPI"), "{msg}");
    // The guest was not disturbed.
    let before = vm.last_count();
    vm.wait_count_above(before);
    assert_eq!(vm.state(), "Running");
    vm.kill();
}

#[test]
fn a_restored_guest_waiting_for_the_button_gets_it() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    let (vm, _) = waiting_guest(&[]);
    vm.set_state("Paused");
    vm.create_snapshot("Full", &state, &mem);
    vm.kill();
    // The state file's JSON carries the device, nothing pending.
    let saved = String::from_utf8_lossy(&std::fs::read(&state).unwrap()).into_owned();
    assert!(
        saved.contains(r#""ged":{"base":"#),
        "no GED in the state file"
    );
    assert!(saved.contains(r#""device":{"status":0}"#));

    let restored = ApiVm::spawn_with_env(&LOG, &[]);
    restored.load_snapshot(&state, Some(&mem));
    assert_eq!(restored.state(), "Running");
    restored.ok("PUT", "/actions", json!({ "action_type": "PowerButton" }));
    powered_off_by_the_button(restored);
}
