//! virtio-blk driven as a guest driver would: real guest memory, descriptor chains written by
//! `virtio_queue::mock::MockSplitQueue`, a real image file, the real I/O thread.
//!
//! This file holds the test driver; the tests are grouped by what they cover.

mod config;
mod invalid;
mod io;
mod persist;
mod swap;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Block, BlockConfig};
use crate::virtio::{DeviceEnv, Interrupt, VirtioDevice};

/// The test queue's size.
const QSIZE: u16 = 16;
/// Guest memory: two adjacent 1 MiB regions, so buffers can straddle a region boundary.
const REGION: u64 = 1 << 20;
/// Where the test driver puts headers, buffers and status bytes.
const BUFFERS: u64 = 0x2_0000;
/// The available and used rings. `MockSplitQueue` lays its own rings out overlapping
/// (its `SplitQueueRing::end` counts ring entries as bytes), so the driver keeps its
/// descriptor table and puts the rings here.
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Readable, writable.
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// The byte at `offset` of a fresh test image: every sector differs.
fn pattern(offset: usize) -> u8 {
    ((offset / 512) as u8).wrapping_mul(31) ^ (offset % 251) as u8
}

/// A disk image in its own temporary directory.
struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    /// An image of `len` bytes filled with [`pattern`].
    fn new(len: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, (0..len).map(pattern).collect::<Vec<_>>()).unwrap();
        Image { _dir: dir, path }
    }

    /// An image of `len` bytes, every one `byte`.
    fn filled(len: usize, byte: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![byte; len]).unwrap();
        Image { _dir: dir, path }
    }

    fn config(&self, readonly: bool) -> BlockConfig {
        BlockConfig {
            path: self.path.clone(),
            id: "disk0".into(),
            readonly,
            serial: None,
            rate_limiter: None,
        }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

/// What the driver sees of a finished request.
#[derive(Debug)]
struct Outcome {
    status: u8,
    used_len: u32,
    /// The device-writable data buffer, if the request had one.
    data: Vec<u8>,
}

/// A guest driver for one activated disk.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    block: Block,
    interrupt: Arc<Interrupt>,
    next_desc: u16,
    next_addr: u64,
    used_seen: u16,
}

impl<'a> Driver<'a> {
    /// Builds the disk of `config` and activates it with a fresh queue.
    fn new(mem: &'a GuestMemoryMmap, config: BlockConfig) -> Self {
        Self::activate(mem, Block::new(config).unwrap(), |_| {})
    }

    /// Activates `block` with a fresh queue, after `setup` adjusted it.
    fn activate(
        mem: &'a GuestMemoryMmap,
        mut block: Block,
        setup: impl FnOnce(&mut Queue),
    ) -> Self {
        let vq = MockSplitQueue::new(mem, QSIZE);
        let mut queue = fresh_queue(mem, &vq);
        setup(&mut queue);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let env = DeviceEnv {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            acked_features: block.avail_features(),
            kicks: Default::default(),
        };
        block.activate(vec![queue], env).unwrap();
        Driver {
            mem,
            vq,
            block,
            interrupt,
            next_desc: 0,
            next_addr: BUFFERS,
            used_seen: 0,
        }
    }

    /// Gives up the device, keeping the driver's rings and buffers, and continues with the
    /// device `swap` returns with its queue (as a restore or a reactivation would).
    fn swap_device(self, swap: impl FnOnce(Block) -> (Block, Queue)) -> Self {
        let Driver {
            mem,
            vq,
            block,
            next_desc,
            next_addr,
            used_seen,
            ..
        } = self;
        let (mut block, queue) = swap(block);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let env = DeviceEnv {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            acked_features: block.avail_features(),
            kicks: Default::default(),
        };
        block.activate(vec![queue], env).unwrap();
        Driver {
            mem,
            vq,
            block,
            interrupt,
            next_desc,
            next_addr,
            used_seen,
        }
    }

    /// A fresh 16-byte-aligned buffer of `len` bytes filled with `fill`.
    fn alloc(&mut self, len: usize, fill: u8) -> GuestAddress {
        let addr = GuestAddress(self.next_addr);
        self.next_addr = (self.next_addr + len as u64 + 15) & !15;
        self.mem.write_slice(&vec![fill; len], addr).unwrap();
        addr
    }

    /// A request header in guest memory.
    fn header(&mut self, request_type: u32, sector: u64) -> GuestAddress {
        let addr = self.alloc(16, 0);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&bytes, addr).unwrap();
        addr
    }

    /// Writes one descriptor at `index` of the table.
    fn put_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.vq.desc_table().store(index, desc).unwrap();
    }

    /// Puts `head` on the available ring.
    fn make_available(&self, head: u16) {
        let idx = self.avail_idx();
        let slot = GuestAddress(AVAIL + 4 + 2 * u64::from(idx % QSIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }

    fn avail_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(AVAIL + 2)).unwrap()
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
    }

    /// The driver's `used_event` (after the available ring's entries).
    fn used_event_addr(&self) -> GuestAddress {
        GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE))
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Writes `(addr, len, flags)` as one chain in fresh table entries and makes it
    /// available; returns its head.
    fn add_chain(&mut self, descs: &[(GuestAddress, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let more = i + 1 < descs.len();
            let flags = if more {
                flags | VRING_DESC_F_NEXT as u16
            } else {
                flags
            };
            self.put_desc(index, addr.0, len, flags, self.next_desc);
        }
        self.make_available(head);
        head
    }

    /// Notifies the device and waits until `n` more chains are on the used ring.
    fn run(&mut self, n: u16) -> Vec<VirtqUsedElem> {
        self.block.queue_notify(0);
        self.wait_used(n)
    }

    /// Waits (serving completions as the event loop would) for `n` more used chains.
    fn wait_used(&mut self, n: u16) -> Vec<VirtqUsedElem> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx().wrapping_sub(self.used_seen) < n {
            assert!(
                Instant::now() < deadline,
                "the device did not complete {n} requests"
            );
            wait_readable(self.block.completion_evt(), Duration::from_millis(100));
            self.block.process_completions();
        }
        let used = (0..n)
            .map(|i| {
                let slot = u64::from(self.used_seen.wrapping_add(i) % QSIZE);
                self.mem
                    .read_obj(GuestAddress(USED + 4 + 8 * slot))
                    .unwrap()
            })
            .collect();
        self.used_seen = self.used_seen.wrapping_add(n);
        used
    }

    /// Serves whatever the I/O thread finished, without waiting.
    fn drain_completions(&mut self) {
        wait_readable(self.block.completion_evt(), Duration::from_millis(100));
        self.block.process_completions();
    }

    /// Every chain the device has put on the used ring so far, in order.
    fn used_so_far(&self) -> Vec<VirtqUsedElem> {
        (0..self.used_idx())
            .map(|i| {
                let slot = u64::from(i % QSIZE);
                self.mem
                    .read_obj(GuestAddress(USED + 4 + 8 * slot))
                    .unwrap()
            })
            .collect()
    }

    /// Adds a standard request (header, optional device-readable data, optional
    /// device-writable data of `in_len` bytes, status) without notifying; returns the
    /// addresses of the data buffer and status byte.
    fn queue_request(
        &mut self,
        request_type: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> (GuestAddress, GuestAddress) {
        let header = self.header(request_type, sector);
        let mut descs = vec![(header, 16, R)];
        if !out.is_empty() {
            let addr = self.alloc(out.len(), 0);
            self.mem.write_slice(out, addr).unwrap();
            descs.push((addr, out.len() as u32, R));
        }
        let data = self.alloc(in_len as usize, 0xaa);
        if in_len > 0 {
            descs.push((data, in_len, W));
        }
        let status = self.alloc(1, 0xff);
        descs.push((status, 1, W));
        self.add_chain(&descs);
        (data, status)
    }

    /// Runs one standard request.
    fn request(&mut self, request_type: u32, sector: u64, out: &[u8], in_len: u32) -> Outcome {
        let (data, status) = self.queue_request(request_type, sector, out, in_len);
        let used = self.run(1);
        self.outcome(&used[0], data, in_len, status)
    }

    fn outcome(
        &self,
        used: &VirtqUsedElem,
        data: GuestAddress,
        in_len: u32,
        status: GuestAddress,
    ) -> Outcome {
        let mut buf = vec![0u8; in_len as usize];
        self.mem.read_slice(&mut buf, data).unwrap();
        Outcome {
            status: self.mem.read_obj(status).unwrap(),
            used_len: used.len(),
            data: buf,
        }
    }

    fn read(&mut self, sector: u64, len: u32) -> Outcome {
        self.request(VIRTIO_BLK_T_IN, sector, &[], len)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Outcome {
        self.request(VIRTIO_BLK_T_OUT, sector, data, 0)
    }

    /// A discard or write-zeroes of one segment.
    fn dwz(&mut self, request_type: u32, sector: u64, sectors: u32, flags: u32) -> Outcome {
        self.request(request_type, 0, &segment(sector, sectors, flags), 0)
    }
}

/// A queue over `vq`'s descriptor table and empty rings at [`AVAIL`] and [`USED`].
fn fresh_queue(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    mem.write_slice(&[0; 0x100], GuestAddress(AVAIL)).unwrap();
    mem.write_slice(&[0; 0x100], GuestAddress(USED)).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL))
        .unwrap();
    queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    queue
}

/// One `struct virtio_blk_discard_write_zeroes`.
fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut seg = sector.to_le_bytes().to_vec();
    seg.extend_from_slice(&sectors.to_le_bytes());
    seg.extend_from_slice(&flags.to_le_bytes());
    seg
}

fn wait_readable(evt: &impl AsRawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; the eventfd is open.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
