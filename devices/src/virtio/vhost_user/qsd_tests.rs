//! A vhost-user-blk device on a real back end, Debian's `qemu-storage-daemon` (package
//! qemu-utils; CI installs it, elsewhere the tests are skipped): requests made by hand in
//! shared guest memory, the back end's dirty log turned on at run time, and a stop for a save
//! followed by a restart.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memory::{GuestMemoryMmap, MemoryLayout};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VhostUserBlk, VhostUserBlkConfig};
use crate::virtio::{DeviceEnv, Interrupt, QueueKicks, QueueState, VirtioDevice};

const QSD: &str = "/usr/bin/qemu-storage-daemon";
const QSIZE: u16 = 16;
/// The rings and requests, each on a page of its own (page number = address >> 12).
const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x11000;
const USED: u64 = 0x12000;
const HEADER: u64 = 0x20000;
const STATUS: u64 = 0x40000;
/// The data buffer of read `n`: page 0x30 + n.
const DATA: u64 = 0x30000;
const IMAGE: usize = 64 << 10;

fn pattern(i: usize) -> u8 {
    (i / 512) as u8 ^ (i as u8).wrapping_mul(7)
}

/// The daemon, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon in a new directory and a driver of its disk, or `None` without the daemon.
fn started() -> Option<(tempfile::TempDir, Daemon, Driver)> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vu.sock");
    let daemon = daemon(dir.path(), &socket)?;
    let driver = Driver::start(&socket);
    Some((dir, daemon, driver))
}

/// A daemon serving an image of [`pattern`] on `socket`, or `None` without the daemon.
fn daemon(dir: &Path, socket: &Path) -> Option<Daemon> {
    if !Path::new(QSD).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI needs {QSD}");
        return None;
    }
    let image = dir.join("disk.img");
    std::fs::write(&image, (0..IMAGE).map(pattern).collect::<Vec<_>>()).unwrap();
    let child = Command::new(QSD)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket from {QSD}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(daemon)
}

/// 16 MiB of shared guest memory and a device connected to the daemon on `socket`.
fn unstarted(socket: &Path) -> (GuestMemoryMmap, VhostUserBlk) {
    let mem = MemoryLayout::new(16 << 20)
        .unwrap()
        .allocate_shared()
        .unwrap();
    let device = VhostUserBlk::new(VhostUserBlkConfig {
        id: "vu".into(),
        socket: socket.to_path_buf(),
    })
    .unwrap();
    (mem, device)
}

/// The driver's one queue, its used ring at `used`.
fn queue(used: u64) -> Queue {
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue
        .try_set_desc_table_address(GuestAddress(DESC))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL))
        .unwrap();
    queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
    queue.set_ready(true);
    queue
}

fn env(mem: &GuestMemoryMmap, device: &VhostUserBlk) -> DeviceEnv {
    DeviceEnv {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: device.avail_features(),
        kicks: QueueKicks::new(Arc::new(vec![EventFd::new(EFD_NONBLOCK).unwrap()])),
    }
}

/// A driver of one queue in shared guest memory.
struct Driver {
    mem: GuestMemoryMmap,
    device: VhostUserBlk,
    reads: u16,
}

impl Driver {
    fn start(socket: &Path) -> Driver {
        let (mem, mut device) = unstarted(socket);
        device
            .activate(vec![queue(USED)], env(&mem, &device))
            .unwrap();
        Driver {
            mem,
            device,
            reads: 0,
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Reads the image's first 4 KiB into a fresh page and waits for the back end; returns
    /// the page's address.
    fn read(&mut self) -> u64 {
        let n = self.reads;
        let data = DATA + u64::from(n) * 0x1000;
        let mut header = [0u8; 16]; // VIRTIO_BLK_T_IN of sector 0
        header[0..4].copy_from_slice(&0u32.to_le_bytes());
        self.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
        let head = (n * 3) % QSIZE;
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let descs = [
            (HEADER, 16, next),
            (data, 4096, next | write),
            (STATUS, 1, write),
        ];
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let desc = Descriptor::new(addr, len, flags, (index + 1) % QSIZE);
            let at = GuestAddress(DESC + 16 * u64::from(index));
            self.mem.write_obj(RawDescriptor::from(desc), at).unwrap();
        }
        let slot = GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.mem
            .write_obj(n.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
        self.device.queue_notify(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() != n.wrapping_add(1) {
            assert!(Instant::now() < deadline, "read {n} did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reads += 1;
        let mut got = vec![0u8; 4096];
        self.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        assert_eq!(got, (0..4096).map(pattern).collect::<Vec<_>>(), "read {n}");
        data
    }

    /// The RAM pages the device logged since the last call.
    fn logged(&mut self) -> Vec<u64> {
        let mut set = memory::empty_page_set(&self.mem);
        self.device.take_dirty(&mut set);
        memory::pages_in(&set).map(|p| p as u64).collect()
    }
}

#[test]
fn the_daemon_logs_what_it_writes_once_logging_is_turned_on_at_run_time() {
    let Some((_dir, _daemon, mut driver)) = started() else {
        return;
    };
    driver.read();
    assert!(driver.logged().is_empty(), "logged with logging off");

    driver.device.set_dirty_logging(true).unwrap();
    let data = driver.read();
    let logged = driver.logged();
    // The daemon wrote the data page and the status byte's page (and the used ring); the
    // header's page it only read.
    for page in [data >> 12, STATUS >> 12, USED >> 12] {
        assert!(logged.contains(&page), "page {page:#x} not in {logged:x?}");
    }
    assert!(!logged.contains(&(HEADER >> 12)), "{logged:x?}");
    assert!(!logged.contains(&((data >> 12) - 1)), "{logged:x?}");

    driver.device.set_dirty_logging(false).unwrap();
    driver.read();
    assert!(driver.logged().is_empty());
}

#[test]
fn a_stop_for_a_save_records_the_queue_and_the_restart_serves_again() {
    let Some((_dir, _daemon, mut driver)) = started() else {
        return;
    };
    driver.read();
    driver.read();
    driver.device.quiesce();
    let queue = driver.device.queues()[0];
    assert_eq!((queue.next_avail(), queue.next_used()), (2, 2));
    driver.device.resume();
    driver.read();
    assert_eq!(driver.used_idx(), 3);
}

/// The transport checks the driver's ring addresses before activation; the device checks
/// them again when it translates them for the back end, and a bad one is an error the
/// driver sees (the device needs a reset), not a panic, after which a good ring serves.
#[test]
fn a_ring_outside_guest_memory_fails_activation_and_a_good_ring_then_serves() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vu.sock");
    let Some(_daemon) = daemon(dir.path(), &socket) else {
        return;
    };
    let (mem, mut device) = unstarted(&socket);
    let err = device
        .activate(vec![queue(1 << 40)], env(&mem, &device))
        .unwrap_err();
    assert!(err.to_string().contains("outside guest memory"), "{err}");
    device.reset();
    device
        .activate(vec![queue(USED)], env(&mem, &device))
        .unwrap();
    let mut driver = Driver {
        mem,
        device,
        reads: 0,
    };
    driver.read();
    driver.read();
}

/// What a snapshot holds of the device (its state, and the transport's queue) goes through
/// serialization and back; a device restored from it, on the same daemon, goes on from where
/// the saved one stood.
#[test]
fn saved_state_round_trips_and_the_restored_device_goes_on_where_the_saved_one_stood() {
    let Some((_dir, _daemon, mut driver)) = started() else {
        return;
    };
    driver.read();
    driver.read();
    driver.device.quiesce();
    let state = serde_json::to_string(&driver.device.save()).unwrap();
    let queue = serde_json::to_string(&QueueState::of(driver.device.queues()[0])).unwrap();
    let Driver { mem, device, reads } = driver;
    // The daemon serves one front end at a time: the saved one leaves first.
    drop(device);

    let state: super::VhostUserState<VhostUserBlkConfig> = serde_json::from_str(&state).unwrap();
    let mut device = VhostUserBlk::restore(&state).unwrap();
    assert_eq!(device.save(), state);
    let queue: QueueState = serde_json::from_str(&queue).unwrap();
    let queue = queue.to_queue().unwrap();
    assert_eq!((queue.next_avail(), queue.next_used()), (2, 2));
    device.activate(vec![queue], env(&mem, &device)).unwrap();
    let mut driver = Driver { mem, device, reads };
    driver.read();
    assert_eq!(driver.used_idx(), 3);
}
