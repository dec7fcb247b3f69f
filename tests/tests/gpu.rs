//! virtio-gpu end to end: the test guest draws a known pattern, the host's screenshot
//! (`GET /display/screenshot`, decoded PNG) has exactly those pixels; a flush of a
//! sub-rectangle changes only that part. Plus the API's errors around screenshots.

use std::time::Duration;

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::display;
use tests::display::gpu_pattern::{frame1, frame2};
use tests::{kvm_available, petrel, test_guest};

const W: u32 = 64;
const H: u32 = 48;
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /display/screenshot`: the decoded picture and its generation.
fn screenshot(vm: &ApiVm) -> (Vec<u8>, u64) {
    let shot = display::screenshot(vm);
    assert_eq!((shot.width, shot.height), (W, H));
    (shot.rgba, shot.generation)
}

/// Every pixel equals `want(x, y)`.
fn assert_picture(rgba: &[u8], want: impl Fn(u32, u32) -> [u8; 4], what: &str) {
    for y in 0..H {
        for x in 0..W {
            let at = ((y * W + x) * 4) as usize;
            assert_eq!(rgba[at..at + 4], want(x, y), "{what}: pixel ({x},{y})");
        }
    }
}

fn gpu_vm(cmdline: &str) -> ApiVm {
    ApiVm::spawn(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--gpu",
        &format!("width={W},height={H}"),
    ])
}

#[test]
fn screenshot_shows_the_guest_pixels_and_only_the_flushed_rectangle_changes() {
    if !kvm_available() {
        return;
    }
    let vm = gpu_vm("petrel.test=gpu gpu.wait_ms=8000 gpu.hold=1");
    let display = vm.wait_serial(GUEST_TIMEOUT, |l| {
        l.strip_prefix("GPU display=").map(str::to_string)
    });
    assert_eq!(display, format!("{W}x{H} scanouts=1 edid={W}x{H}"));

    // Malformed commands from the guest's driver get the spec's errors and change nothing:
    // an id in use, scanout 5, past the memory cap, a rectangle outside, an unknown command.
    let errors = vm.wait_serial(GUEST_TIMEOUT, |l| {
        l.strip_prefix("GPU errors=").map(str::to_string)
    });
    assert_eq!(errors, "0x1203,0x1202,0x1201,0x1205,0x1200");

    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "GPU frame1").then_some(()));
    let (first, g1) = screenshot(&vm);
    assert!(
        !vm.serial().contains("GPU frame2"),
        "the guest moved on before the host looked; raise gpu.wait_ms"
    );
    assert_picture(&first, frame1, "frame 1");
    // SET_SCANOUT and the whole-frame flush each changed the picture.
    assert_eq!(g1, 2);

    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "GPU hold").then_some(()));
    let (second, g2) = screenshot(&vm);
    assert_eq!(g2, g1 + 1, "one flush changed the picture");
    assert_picture(&second, frame2(W, H), "frame 2");

    // A paused VM's screen can be looked at too; it is the same picture.
    vm.set_state("Paused");
    assert_eq!(screenshot(&vm), (second.clone(), g2));
    vm.set_state("Resumed");

    // `petrel ctl screenshot FILE` writes the same picture.
    let (w, h, rgba) = display::ctl_screenshot(&vm);
    assert_eq!((w, h), (W, H));
    assert_eq!(rgba, second);

    // The device's counters: two flushes, the five errors above, one 64x48 resource.
    let metrics = vm.request("GET", "/metrics", None).1;
    let labels = "{device=\"gpu0\",type=\"gpu\"}";
    for (name, value) in [("flushes", 2), ("errors", 5), ("resources", 1)] {
        let line = format!("petrel_virtio_{name}{labels} {value}\n");
        assert!(metrics.contains(&line), "{line:?} in\n{metrics}");
    }
}

#[test]
fn screenshot_errors_name_the_reason() {
    if !kvm_available() {
        return;
    }
    // A GPU the guest never drives: no scanout yet.
    let vm = gpu_vm("petrel.test=idle");
    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "IDLE").then_some(()));
    let msg = vm.fails("GET", "/display/screenshot", None, 400);
    assert!(msg.contains("scanout"), "{msg}");
    assert!(vm
        .fails("PUT", "/display/screenshot", Some(json!({})), 405)
        .contains("GET"));
    drop(vm);

    // No GPU at all.
    let vm = ApiVm::spawn(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        "petrel.test=idle",
    ]);
    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "IDLE").then_some(()));
    let msg = vm.fails("GET", "/display/screenshot", None, 400);
    assert!(msg.contains("no GPU"), "{msg}");
    drop(vm);

    // Not started: the state is at fault.
    let vm = ApiVm::spawn(&[]);
    let msg = vm.fails("GET", "/display/screenshot", None, 400);
    assert!(msg.contains("Not started"), "{msg}");
    // `petrel ctl screenshot` reports the error and writes nothing.
    let file = vm.path("none.png");
    let out = std::process::Command::new(petrel())
        .args(["ctl", "--api-sock"])
        .arg(vm.socket())
        .arg("screenshot")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not started"));
    assert!(!file.exists());
}

#[test]
fn bad_gpu_flags_are_refused_before_anything_starts() {
    for bad in [
        "width=8",
        "height=5000",
        "max_memory=1K",
        "depth=24",
        "width=x",
    ] {
        let out = std::process::Command::new(petrel())
            .args(["run", "--kernel"])
            .arg(test_guest())
            .args(["--gpu", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--gpu {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--gpu"), "--gpu {bad}: {err}");
    }
}
