//! A guest with every device petrel has: the host side of each (a disk image, the console's
//! output file, a vsock echo server on host port 5000, a keyboard, a 64x48 screen, and a TAP
//! in a network namespace of the test's own with a packet socket on it) and the petrel
//! arguments that attach them. The files outlive the petrel processes, so a guest restored
//! from a snapshot in a new process finds the same disk, console file and sockets.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use resources::snapshot_proto::{SECTOR_SIZE, VSOCK_HOST_PORT};

use crate::api_vm::ApiVm;
use crate::netns::{NetNs, PacketSocket};
use crate::snapshot_guest::SnapshotGuest;

/// The disk's size in sectors.
pub const DISK_SECTORS: usize = 64;
/// The screen.
pub const WIDTH: u32 = 64;
pub const HEIGHT: u32 = 48;
/// The keyboard's id (`PUT /input/kbd`).
pub const KEYBOARD: &str = "kbd";
/// The vsock device's guest CID.
pub const CID: u32 = 3;
/// The network device's MAC and its TAP's name inside the namespace.
pub const MAC: [u8; 6] = [0x02, 0x50, 0x54, 0x52, 0x4c, 0x05];
pub const TAP: &str = "psnap0";

/// The host side of every device, in a private directory.
pub struct EveryDevice {
    dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub console: PathBuf,
    pub vsock_uds: PathBuf,
    /// The namespace petrel runs in when the guest has a network device.
    pub netns: Option<NetNs>,
    /// A raw socket on the TAP: the frames the guest sends.
    pub packets: Option<PacketSocket>,
    pub echo: VsockEcho,
}

impl EveryDevice {
    /// Writes the disk image and starts the vsock echo server; with `net`, also creates the
    /// namespace, its TAP and the packet socket (which needs root: see `netns_available`).
    pub fn new(net: bool) -> EveryDevice {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, disk_image()).expect("write the disk image");
        let vsock_uds = dir.path().join("v.sock");
        let echo = VsockEcho::start(&PathBuf::from(format!(
            "{}_{VSOCK_HOST_PORT}",
            vsock_uds.display()
        )));
        let (netns, packets) = if net {
            let ns = NetNs::with_tap(&format!("petrel-s{}", std::process::id()), TAP);
            let packets = ns.packet_socket(TAP);
            (Some(ns), Some(packets))
        } else {
            (None, None)
        };
        EveryDevice {
            console: dir.path().join("console.out"),
            dir,
            disk,
            vsock_uds,
            netns,
            packets,
            echo,
        }
    }

    /// The petrel arguments that attach every device (the network device only with a
    /// namespace).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--disk".to_string(),
            format!("path={},id=disk0", self.disk.display()),
            "--console".to_string(),
            format!("id=con0,output=file:{}", self.console.display()),
            "--vsock".to_string(),
            format!("cid={CID},uds={}", self.vsock_uds.display()),
            "--input".to_string(),
            format!("kind=keyboard,id={KEYBOARD}"),
            "--gpu".to_string(),
            format!("width={WIDTH},height={HEIGHT}"),
        ];
        if self.netns.is_some() {
            let mac = MAC.map(|b| format!("{b:02x}")).join(":");
            args.push("--net".to_string());
            args.push(format!("tap={TAP},mac={mac}"));
        }
        args
    }

    /// Starts petrel (in the namespace, if there is one) with `args`.
    pub fn spawn(&self, args: &[&str]) -> ApiVm {
        ApiVm::spawn_in(self.netns.as_ref(), args)
    }

    /// Boots the `snapshot` scenario with 128 MiB and every device, and waits until the
    /// guest is ready.
    pub fn boot(&self) -> (ApiVm, SnapshotGuest) {
        let mut args = SnapshotGuest::args("128M");
        args.extend(self.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vm = self.spawn(&args);
        let guest = SnapshotGuest::new();
        guest.wait_ready(&vm);
        (vm, guest)
    }

    /// The disk image's bytes now.
    pub fn disk_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.disk).expect("read the disk image")
    }

    /// Sector `sector` of the disk image now.
    pub fn sector(&self, sector: u64) -> Vec<u8> {
        let at = sector as usize * SECTOR_SIZE;
        self.disk_bytes()[at..at + SECTOR_SIZE].to_vec()
    }

    /// The lines of the console's output file.
    pub fn console_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A path in the private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The disk image: every byte a function of its offset, no sector like another.
pub fn disk_image() -> Vec<u8> {
    (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| ((i / SECTOR_SIZE) as u8).wrapping_mul(29) ^ (i as u8).wrapping_mul(11) ^ 0x3c)
        .collect()
}

/// A host process listening on a vsock host port (a Unix socket at `<uds>_<port>`): on each
/// connection it reads one line, records it, writes it back, and waits for the guest to close.
pub struct VsockEcho {
    lines: Arc<Mutex<Vec<String>>>,
    /// How long the server waits before echoing, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VsockEcho {
    fn start(path: &std::path::Path) -> VsockEcho {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("listen at {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lines, delay_ms, stop) = (lines.clone(), delay_ms.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let lines = lines.clone();
                            let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
                            std::thread::spawn(move || echo_one(stream, &lines, delay));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        VsockEcho {
            lines,
            delay_ms,
            stop,
            thread: Some(thread),
        }
    }

    /// Makes connections accepted from now on wait `delay` between reading the line and
    /// echoing it.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// The lines received so far, one per connection, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("echo lines").clone()
    }
}

fn echo_one(stream: std::os::unix::net::UnixStream, lines: &Mutex<Vec<String>>, delay: Duration) {
    stream.set_nonblocking(false).expect("blocking stream");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.ends_with('\n') {
        return;
    }
    lines
        .lock()
        .expect("echo lines")
        .push(line.trim_end().to_string());
    std::thread::sleep(delay);
    let _ = (&stream).write_all(line.as_bytes());
    // Until the guest closes the connection.
    let _ = reader.read_line(&mut String::new());
}

impl Drop for VsockEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
