//! vhost-user-gpu end to end: QEMU's `vhost-user-gpu` back end (2D: no `--virgl`, no render
//! node here) serves the GPU's queues, the test guest's `gpu` scenario draws its pattern
//! through it, and petrel's screenshot (the API route, `petrel ctl screenshot`) and web
//! console show exactly what the built-in GPU's test expects. Plus the refusals: a socket
//! nobody serves, bad `--gpu` options, snapshots and migration.
//!
//! Run under the KVM lock: `flock /tmp/kvm.lock cargo test -p tests --test vhost_user_gpu`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::backend_process::BackendProcess;
use tests::display::gpu_pattern::{frame1, frame2};
use tests::display::{decode_png, Screenshot};
use tests::{kvm_available, test_guest};

/// Debian's `qemu-system-gui` ships it.
const VHOST_USER_GPU: &str = "/usr/lib/qemu/vhost-user-gpu";
const W: u32 = 64;
const H: u32 = 48;
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a picture the back end sent may take to reach the screen: the back end sends
/// it on the display channel before it completes the flush, and petrel reads it on its
/// event loop, so it is not ordered with what the guest prints.
const PICTURE_TIMEOUT: Duration = Duration::from_secs(10);

fn available() -> bool {
    if !kvm_available() {
        return false;
    }
    let ok = Path::new(VHOST_USER_GPU).exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{VHOST_USER_GPU} is missing (install qemu-system-gui), and CI is set"
        );
        eprintln!("skipped: {VHOST_USER_GPU} is not installed");
    }
    ok
}

/// `vhost-user-gpu` in 2D on a socket in a fresh directory; killed when dropped.
struct Backend {
    process: Option<BackendProcess>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn start(socket: &Path) -> BackendProcess {
        let mut gpu = Command::new(VHOST_USER_GPU);
        // No display server needed: the back end sends its picture to petrel.
        gpu.arg(format!("--socket-path={}", socket.display()))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        BackendProcess::start(gpu, socket)
    }

    /// Kills the back end and starts a new one on the same socket.
    fn restart(&mut self) {
        drop(self.process.take());
        self.process = Some(Backend::start(&self.socket));
    }
}

fn backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vugpu.sock");
    Backend {
        process: Some(Backend::start(&socket)),
        socket,
        _dir: dir,
    }
}

/// The GPU's metric `name` (`GET /metrics`).
fn metric(vm: &ApiVm, name: &str) -> u64 {
    let text = vm.request("GET", "/metrics", None).1;
    let prefix = format!("petrel_virtio_{name}{{device=\"gpu0\",type=\"gpu\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

/// `--gpu` for the back end at `socket`, 64x48.
fn gpu_option(socket: &Path) -> String {
    format!(
        "backend=vhost-user,socket={},width={W},height={H}",
        socket.display()
    )
}

fn gpu_vm(backend: &Backend, cmdline: &str) -> ApiVm {
    ApiVm::spawn(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--gpu",
        &gpu_option(&backend.socket),
    ])
}

/// Waits until the screenshot's generation reaches `generation`, and returns it.
fn wait_picture(vm: &ApiVm, generation: u64) -> Screenshot {
    let client = api::Client::new(vm.socket());
    let deadline = Instant::now() + PICTURE_TIMEOUT;
    loop {
        let r = client.get_bytes("/display/screenshot").expect("screenshot");
        let g: Option<u64> = r.header("x-petrel-generation").and_then(|g| g.parse().ok());
        if let (200, Some(g)) = (r.status, g) {
            if g >= generation {
                let (width, height, rgba) = decode_png(&r.body);
                return Screenshot {
                    width,
                    height,
                    rgba,
                    generation: g,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "no picture of generation {generation}: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_shows(shot: &Screenshot, want: impl Fn(u32, u32) -> [u8; 4], what: &str) {
    assert_eq!((shot.width, shot.height), (W, H), "{what}");
    if let Some((x, y, found, wanted)) = shot.first_difference(want) {
        panic!("{what}: pixel ({x},{y}) is {found:?}, not {wanted:?}");
    }
}

#[test]
fn the_screenshot_shows_what_the_back_end_rendered() {
    if !available() {
        return;
    }
    let backend = backend();
    let vm = gpu_vm(&backend, "petrel.test=gpu gpu.wait_ms=8000 gpu.hold=1");
    let display = vm.wait_serial(GUEST_TIMEOUT, |l| {
        l.strip_prefix("GPU display=").map(str::to_string)
    });
    // The size petrel answered GET_DISPLAY_INFO with; Debian 12's back end offers no EDID.
    assert!(
        display == format!("{W}x{H} scanouts=1 edid=none")
            || display == format!("{W}x{H} scanouts=1 edid={W}x{H}"),
        "{display}"
    );
    // The back end answers malformed commands itself, its own way: it has 16 scanouts
    // (scanout 5 is fine there; petrel shows scanout 0 only) and no memory cap (a
    // 60000x60000 resource is a sparse memfd to it).
    let errors = vm.wait_serial(GUEST_TIMEOUT, |l| {
        l.strip_prefix("GPU errors=").map(str::to_string)
    });
    assert_eq!(errors, "0x1203,0x1100,0x1100,0x1205,0x1200");

    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "GPU frame1").then_some(()));
    // SCANOUT (the mode) and UPDATE (the whole frame) each changed the picture.
    let first = wait_picture(&vm, 2);
    assert!(
        !vm.serial().contains("GPU frame2"),
        "the guest moved on before the host looked; raise gpu.wait_ms"
    );
    assert_shows(&first, frame1, "frame 1");
    assert_eq!(first.generation, 2);

    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "GPU hold").then_some(()));
    let second = wait_picture(&vm, 3);
    assert_eq!(second.generation, 3, "one UPDATE changed the picture");
    assert_shows(&second, frame2(W, H), "frame 2");

    // `petrel ctl screenshot FILE` writes the same picture.
    let (w, h, rgba) = tests::display::ctl_screenshot(&vm);
    assert_eq!((w, h), (W, H));
    assert_eq!(rgba, second.rgba);

    // Snapshots and live migration are refused: the back end holds the resources.
    vm.set_state("Paused");
    let dir = tempfile::tempdir().unwrap();
    let msg = vm.snapshot_refused(dir.path());
    assert!(
        msg.contains("gpu0") && msg.contains("cannot be saved"),
        "{msg}"
    );
    let body = json!({ "url": "unix:/nonexistent" });
    let msg = vm.fails("PUT", "/migration/send", Some(body), 400);
    assert!(
        msg.contains("gpu0") && msg.contains("cannot be saved"),
        "{msg}"
    );
    vm.set_state("Resumed");
    assert_eq!(vm.state(), "Running");
    let config = vm.get("/vm/config");
    assert_eq!(config["gpu"]["backend"], "vhost-user", "{config}");
}

/// A back end that dies is replaced: petrel reconnects, replays the rings and hands the new
/// one a new display channel (it asks for the protocol features on it at once, and petrel
/// answers). The picture stays; the new back end has none of the guest's resources.
#[test]
fn a_restarted_back_end_gets_a_new_display_channel() {
    if !available() {
        return;
    }
    let mut backend = backend();
    let vm = gpu_vm(&backend, "petrel.test=gpu gpu.hold=1");
    vm.wait_serial(GUEST_TIMEOUT, |l| (l == "GPU hold").then_some(()));
    let shot = wait_picture(&vm, 3);
    assert_shows(&shot, frame2(W, H), "frame 2");
    assert_eq!(metric(&vm, "gpu_display_channels"), 1);
    let served = metric(&vm, "gpu_display_messages");

    backend.restart();
    let deadline = Instant::now() + PICTURE_TIMEOUT;
    // GET_PROTOCOL_FEATURES (answered) and SET_PROTOCOL_FEATURES on the new channel.
    while metric(&vm, "vhost_user_reconnections") < 1
        || metric(&vm, "gpu_display_messages") < served + 2
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            vm.request("GET", "/metrics", None).1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&vm, "gpu_display_channels"), 2);
    assert_eq!(metric(&vm, "gpu_display_channel_open"), 1);
    assert_eq!(metric(&vm, "vhost_user_connected"), 1);
    assert_eq!(wait_picture(&vm, 3).rgba, shot.rgba);
}

#[test]
fn the_web_console_shows_what_the_back_end_rendered() {
    if !available() {
        return;
    }
    let Some(browser) = tests::browser::Browser::launch() else {
        return;
    };
    let backend = backend();
    let vm =
        tests::web_vm::WebVm::spawn("gpu gpu.hold=1", &["--gpu", &gpu_option(&backend.socket)]);
    browser.goto(&vm.url);
    let expected: Vec<u64> = (0..H)
        .flat_map(|y| (0..W).map(move |x| (x, y)))
        .flat_map(|(x, y)| frame2(W, H)(x, y))
        .map(u64::from)
        .collect();
    let expected = serde_json::to_value(expected).unwrap();
    let shown = browser.wait_for_canvas(GUEST_TIMEOUT, "the back end's picture", &expected);
    assert_eq!(shown, (json!(W), json!(H)));
}

#[test]
fn a_socket_nobody_serves_fails_the_start_naming_it() {
    if !kvm_available() {
        return;
    }
    tests::assert_missing_vhost_user_socket_fails_start("--gpu", ",backend=vhost-user");
}

#[test]
fn bad_backend_options_are_refused_before_anything_starts() {
    for (gpu, why) in [
        ("backend=vhost-user", "socket"),
        ("socket=/s", "socket"),
        ("backend=virgl,socket=/s", "backend"),
    ] {
        let args = ["--kernel", "/nonexistent", "--gpu", gpu];
        let out = tests::run(&args, Duration::from_secs(30));
        assert_ne!(out.status.code(), Some(0), "{out}");
        assert!(
            out.stderr.contains("--gpu") && out.stderr.contains(why),
            "{gpu}: {out}"
        );
    }
}
