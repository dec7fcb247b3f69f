//! Pausing a running machine really stops the guest, and resuming continues it. Needs KVM:
//! skipped without it, except in CI where that fails.

use std::path::Path;
use std::time::{Duration, Instant};

use api::types::VmState;
use api::{ApiRequest, ApiResponse};
use devices::VmExit;
use vmm::config::{SerialOutput, VmConfig};

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(ok || std::env::var_os("CI").is_none(), "CI needs /dev/kvm");
    ok
}

/// The last `COUNT <n>` the guest printed.
fn last_count(serial: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(serial).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("COUNT ")?.parse().ok())
}

fn wait_for_count_above(serial: &Path, floor: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = last_count(serial).filter(|&n| Some(n) > floor) {
            return n;
        }
        assert!(Instant::now() < deadline, "the guest made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pause() -> ApiRequest {
    ApiRequest::PatchVm(VmState::Paused)
}

/// The state `GET /` reports.
fn state(control: &vmm::control::ControlHandle) -> String {
    match control.request(ApiRequest::GetInstanceInfo).unwrap() {
        ApiResponse::Json(v) => v["state"].as_str().unwrap().to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_paused_guest_makes_no_progress_and_continues_after_resume() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest");
    std::fs::write(&kernel, resources::TEST_GUEST).unwrap();
    let serial = dir.path().join("serial.log");
    let mut config = VmConfig::default();
    config.boot.kernel = Some(kernel);
    config.boot.cmdline = Some("petrel.test=count".into());
    config.serial = SerialOutput::File(serial.clone());
    config.machine.vcpus = 2;

    let machine = vmm::build(&config).unwrap();
    let control = machine.control().unwrap();
    let exit = machine.exit_signal();
    let runner = std::thread::spawn(move || machine.run());

    wait_for_count_above(&serial, None);
    assert_eq!(control.request(pause()).unwrap(), ApiResponse::NoContent);
    assert_eq!(state(&control), "Paused");
    let frozen = last_count(&serial);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_count(&serial), frozen, "the guest ran while paused");
    // Pausing twice is harmless.
    assert_eq!(control.request(pause()).unwrap(), ApiResponse::NoContent);

    assert_eq!(
        control
            .request(ApiRequest::PatchVm(VmState::Resumed))
            .unwrap(),
        ApiResponse::NoContent
    );
    assert_eq!(state(&control), "Running");
    let after = wait_for_count_above(&serial, frozen);
    assert!(after > frozen.unwrap_or(0));

    // A paused machine still stops in order when told to.
    assert_eq!(control.request(pause()).unwrap(), ApiResponse::NoContent);
    exit.signal(VmExit::Signal(libc::SIGTERM));
    let reason = runner.join().unwrap().unwrap();
    assert_eq!(reason, VmExit::Signal(libc::SIGTERM));
    assert!(
        control
            .request(ApiRequest::PatchVm(VmState::Resumed))
            .is_err(),
        "the VMM thread is gone"
    );
}
