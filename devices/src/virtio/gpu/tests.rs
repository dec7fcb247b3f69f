//! GPU tests: real guest memory, `MockSplitQueue` as the driver, no KVM. Each command goes
//! as one chain (request, then room for the response) and is answered at once.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::protocol::*;
use super::resources::{BACKING_ENTRY_COST, RESOURCE_OVERHEAD};
use super::*;
use crate::virtio::{features, ids, DeviceEnv, Interrupt, VirtioDevice};

type Mem = memory::GuestMemoryMmap;

const MEM_SIZE: usize = 16 << 20;
/// Requests and responses (one command at a time).
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x18_0000;
/// Where the driver keeps resource backing.
const BACKING: u64 = 0x20_0000;
/// Past the end of guest memory.
const OUTSIDE: u64 = 0x1000_0000;
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;

const B8G8R8A8: u32 = 1;
const R8G8B8A8: u32 = 67;
const FORMATS: [u32; 8] = [1, 2, 3, 4, 67, 68, 121, 134];

fn memory() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn config(width: u32, height: u32) -> GpuConfig {
    GpuConfig {
        id: "gpu0".into(),
        width,
        height,
        max_memory: DEFAULT_MAX_MEMORY,
        ..GpuConfig::default()
    }
}

/// The driver's side of both queues.
struct Driver<'a> {
    mem: &'a Mem,
    queues: [MockSplitQueue<'a, Mem>; 2],
    next_desc: [u16; 2],
    interrupt: Arc<Interrupt>,
}

fn hdr(kind: u32) -> Vec<u8> {
    let mut v = kind.to_le_bytes().to_vec();
    v.resize(HDR_SIZE, 0);
    v
}

fn words(kind: u32, fields: &[u32]) -> Vec<u8> {
    let mut v = hdr(kind);
    for f in fields {
        v.extend_from_slice(&f.to_le_bytes());
    }
    v
}

fn kind(resp: &[u8]) -> u32 {
    u32::from_le_bytes(resp[0..4].try_into().unwrap())
}

impl<'a> Driver<'a> {
    fn new(mem: &'a Mem) -> Self {
        Driver {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(0x8000), QUEUE_SIZE),
            ],
            next_desc: [0, 0],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        }
    }

    fn activate(&self, gpu: &mut Gpu) {
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|m| m.create_queue().unwrap())
            .collect();
        let env = DeviceEnv {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: features::COMMON | VIRTIO_GPU_F_EDID,
            kicks: Default::default(),
        };
        gpu.activate(queues, env).unwrap();
    }

    /// Makes one chain of `(addr, len, flags)` available on `queue`.
    fn add_chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        if usize::from(self.next_desc[queue]) + descs.len() > usize::from(QUEUE_SIZE) {
            self.next_desc[queue] = 0;
        }
        let first = self.next_desc[queue];
        let raw = crate::virtio::test_chains::chain(first, descs);
        self.next_desc[queue] = first + descs.len() as u16;
        self.queues[queue].add_desc_chains(&raw, first).unwrap();
    }

    /// The last used entry of `queue`: (head, length).
    fn last_used(&self, queue: usize) -> (u32, u32) {
        let used = self.queues[queue].used();
        let count = used.idx().load();
        let e = used
            .ring()
            .ref_at((usize::from(count) + usize::from(QUEUE_SIZE) - 1) % usize::from(QUEUE_SIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn used_count(&self, queue: usize) -> u16 {
        self.queues[queue].used().idx().load()
    }

    /// Sends `request` on `queue` with `room` bytes for the response; returns what the
    /// device wrote.
    fn send_on(&mut self, gpu: &mut Gpu, queue: usize, request: &[u8], room: u32) -> Vec<u8> {
        self.mem.write_slice(request, GuestAddress(REQ)).unwrap();
        self.mem
            .write_slice(&vec![0xee; room as usize], GuestAddress(RESP))
            .unwrap();
        let mut chain = vec![(REQ, request.len() as u32, RO)];
        if room > 0 {
            chain.push((RESP, room, WO));
        }
        let before = self.used_count(queue);
        self.add_chain(queue, &chain);
        gpu.queue_notify(queue);
        assert_eq!(self.used_count(queue), before.wrapping_add(1), "chain used");
        let (_, len) = self.last_used(queue);
        let mut out = vec![0; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(RESP)).unwrap();
        out
    }

    fn send(&mut self, gpu: &mut Gpu, request: &[u8]) -> Vec<u8> {
        self.send_on(gpu, 0, request, 4096 + 64)
    }

    /// Sends a command and returns its response type.
    fn status(&mut self, gpu: &mut Gpu, request: &[u8]) -> u32 {
        kind(&self.send(gpu, request))
    }

    fn create(&mut self, gpu: &mut Gpu, id: u32, format: u32, w: u32, h: u32) -> u32 {
        self.status(gpu, &words(CMD_RESOURCE_CREATE_2D, &[id, format, w, h]))
    }

    fn attach(&mut self, gpu: &mut Gpu, id: u32, entries: &[(u64, u32)]) -> u32 {
        let mut req = words(CMD_RESOURCE_ATTACH_BACKING, &[id, entries.len() as u32]);
        for &(addr, len) in entries {
            req.extend_from_slice(&addr.to_le_bytes());
            req.extend_from_slice(&len.to_le_bytes());
            req.extend_from_slice(&0u32.to_le_bytes());
        }
        self.status(gpu, &req)
    }

    fn transfer(&mut self, gpu: &mut Gpu, id: u32, r: Rect, offset: u64) -> u32 {
        let mut req = words(CMD_TRANSFER_TO_HOST_2D, &[r.x, r.y, r.width, r.height]);
        req.extend_from_slice(&offset.to_le_bytes());
        req.extend_from_slice(&id.to_le_bytes());
        req.extend_from_slice(&0u32.to_le_bytes());
        self.status(gpu, &req)
    }

    fn set_scanout(&mut self, gpu: &mut Gpu, scanout: u32, id: u32, r: Rect) -> u32 {
        let req = words(CMD_SET_SCANOUT, &[r.x, r.y, r.width, r.height, scanout, id]);
        self.status(gpu, &req)
    }

    fn flush(&mut self, gpu: &mut Gpu, id: u32, r: Rect) -> u32 {
        let req = words(CMD_RESOURCE_FLUSH, &[r.x, r.y, r.width, r.height, id, 0]);
        self.status(gpu, &req)
    }

    /// Writes `pixels` (already in the resource's format) to the backing area.
    fn fill_backing(&self, pixels: &[u8]) {
        self.mem.write_slice(pixels, GuestAddress(BACKING)).unwrap();
    }
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// The test pattern's RGBA at (x, y), with `salt` to tell frames apart.
fn pattern(x: u32, y: u32, salt: u8) -> [u8; 4] {
    [
        (x * 3) as u8 ^ salt,
        (y * 5) as u8,
        (x + y) as u8 ^ salt,
        0xff,
    ]
}

/// `rgba` laid out in `format`'s byte order.
fn encode(format: u32, rgba: [u8; 4]) -> [u8; 4] {
    let l = format_layout(format).unwrap();
    let mut p = [0u8; 4];
    p[l.r] = rgba[0];
    p[l.g] = rgba[1];
    p[l.b] = rgba[2];
    if let Some(a) = l.a {
        p[a] = rgba[3];
    }
    p
}

fn image(format: u32, w: u32, h: u32, salt: u8) -> Vec<u8> {
    (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| encode(format, pattern(x, y, salt))))
        .collect()
}

/// A GPU showing a `w` x `h` resource 1 with the pattern, fully flushed.
fn showing<'a>(mem: &'a Mem, format: u32, w: u32, h: u32) -> (Gpu, Driver<'a>) {
    let mut gpu = Gpu::new(config(w.max(MIN_SIZE), h.max(MIN_SIZE)));
    let mut d = Driver::new(mem);
    d.activate(&mut gpu);
    assert_eq!(d.create(&mut gpu, 1, format, w, h), RESP_OK_NODATA);
    assert_eq!(
        d.attach(&mut gpu, 1, &[(BACKING, w * h * 4)]),
        RESP_OK_NODATA
    );
    d.fill_backing(&image(format, w, h, 0));
    assert_eq!(d.transfer(&mut gpu, 1, rect(0, 0, w, h), 0), RESP_OK_NODATA);
    assert_eq!(
        d.set_scanout(&mut gpu, 0, 1, rect(0, 0, w, h)),
        RESP_OK_NODATA
    );
    assert_eq!(d.flush(&mut gpu, 1, rect(0, 0, w, h)), RESP_OK_NODATA);
    (gpu, d)
}

fn pixel(frame: &Frame, x: u32, y: u32) -> [u8; 4] {
    let at = ((y * frame.width + x) * 4) as usize;
    frame.rgba[at..at + 4].try_into().unwrap()
}

#[test]
fn device_offers_edid_and_one_scanout() {
    let gpu = Gpu::new(config(64, 48));
    assert_eq!(gpu.device_type(), ids::GPU);
    assert_eq!(gpu.device_type(), 16);
    assert_ne!(gpu.avail_features() & VIRTIO_GPU_F_EDID, 0);
    assert_eq!(gpu.queue_max_sizes().len(), 2);
    let mut space = [0u8; 16];
    gpu.read_config(0, &mut space);
    assert_eq!(space[8..12], 1u32.to_le_bytes(), "num_scanouts");
    assert_eq!(space[0..4], [0; 4], "events_read");
    let mut past = [0xffu8; 4];
    gpu.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn events_clear_clears_events_read() {
    let mut gpu = Gpu::new(config(64, 48));
    gpu.signal_display_change();
    let mut ev = [0u8; 4];
    gpu.read_config(0, &mut ev);
    assert_eq!(u32::from_le_bytes(ev), EVENT_DISPLAY);
    gpu.write_config(4, &EVENT_DISPLAY.to_le_bytes());
    gpu.read_config(0, &mut ev);
    assert_eq!(ev, [0; 4]);
}

#[test]
fn display_info_reports_the_configured_size() {
    let mem = memory();
    let mut gpu = Gpu::new(config(640, 480));
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    let resp = d.send(&mut gpu, &hdr(CMD_GET_DISPLAY_INFO));
    assert_eq!(kind(&resp), RESP_OK_DISPLAY_INFO);
    assert_eq!(resp.len(), HDR_SIZE + MAX_SCANOUTS * 24);
    let field = |i: usize| u32::from_le_bytes(resp[HDR_SIZE + i * 4..][..4].try_into().unwrap());
    assert_eq!((field(2), field(3), field(4)), (640, 480, 1));
    assert_eq!(field(6 + 4), 0, "scanout 1 is disabled");
}

#[test]
fn edid_is_valid_and_prefers_the_configured_size() {
    let mem = memory();
    let mut gpu = Gpu::new(config(1280, 800));
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    let resp = d.send(&mut gpu, &words(CMD_GET_EDID, &[0, 0]));
    assert_eq!(kind(&resp), RESP_OK_EDID);
    let size = u32::from_le_bytes(resp[HDR_SIZE..HDR_SIZE + 4].try_into().unwrap());
    assert_eq!(size, 128);
    let e = &resp[HDR_SIZE + 8..HDR_SIZE + 8 + 128];
    assert_eq!(e[..8], [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
    assert_eq!(edid::preferred_mode(e), (1280, 800));
    for (w, h) in [(16, 16), (4095, 4095), (1920, 1080)] {
        let e = edid::build(w, h);
        assert_eq!(edid::preferred_mode(&e), (w, h));
        assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }
    assert_eq!(
        d.status(&mut gpu, &words(CMD_GET_EDID, &[1, 0])),
        RESP_ERR_INVALID_SCANOUT_ID
    );
}

#[test]
fn every_format_shows_the_guest_pixels() {
    let mem = memory();
    for format in FORMATS {
        let (gpu, _d) = showing(&mem, format, 24, 20);
        let frame = gpu.frame().unwrap();
        assert_eq!((frame.width, frame.height), (24, 20));
        for (x, y) in [(0, 0), (23, 19), (5, 7), (17, 3)] {
            let mut want = pattern(x, y, 0);
            if format_layout(format).unwrap().a.is_none() {
                want[3] = 0xff;
            }
            assert_eq!(pixel(&frame, x, y), want, "format {format} at ({x},{y})");
        }
    }
}

#[test]
fn front_buffer_changes_only_on_flush_and_only_the_flushed_rectangle() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 32, 24);
    let first = gpu.frame().unwrap();
    // New pixels in the backing, transferred but not flushed: the screen stays.
    d.fill_backing(&image(B8G8R8A8, 32, 24, 0x5a));
    assert_eq!(
        d.transfer(&mut gpu, 1, rect(0, 0, 32, 24), 0),
        RESP_OK_NODATA
    );
    assert_eq!(gpu.frame().unwrap(), first);
    // Flushing a sub-rectangle changes just that part, with a new generation.
    let sub = rect(8, 4, 10, 6);
    assert_eq!(d.flush(&mut gpu, 1, sub), RESP_OK_NODATA);
    let second = gpu.frame().unwrap();
    assert_eq!(second.generation, first.generation + 1);
    for y in 0..24 {
        for x in 0..32 {
            let inside = (8..18).contains(&x) && (4..10).contains(&y);
            let salt = if inside { 0x5a } else { 0 };
            assert_eq!(pixel(&second, x, y), pattern(x, y, salt), "({x},{y})");
        }
    }
}

#[test]
fn sub_rectangle_transfer_reads_rows_at_the_resource_stride_across_entries() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, R8G8B8A8, 16, 16);
    // The backing, now in three pieces that are not contiguous in guest memory.
    let img = image(R8G8B8A8, 16, 16, 0x33);
    let pieces = [
        (BACKING + 0x10000, 300u32),
        (BACKING + 0x30000, 500),
        (BACKING + 0x50000, 224),
    ];
    let mut at = 0;
    for &(addr, len) in &pieces {
        mem.write_slice(&img[at..at + len as usize], GuestAddress(addr))
            .unwrap();
        at += len as usize;
    }
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_DETACH_BACKING, &[1, 0])),
        RESP_OK_NODATA
    );
    assert_eq!(d.attach(&mut gpu, 1, &pieces), RESP_OK_NODATA);
    let sub = rect(3, 5, 7, 4);
    let offset = 5 * 16 * 4 + 3 * 4;
    assert_eq!(d.transfer(&mut gpu, 1, sub, offset), RESP_OK_NODATA);
    assert_eq!(d.flush(&mut gpu, 1, rect(0, 0, 16, 16)), RESP_OK_NODATA);
    let frame = gpu.frame().unwrap();
    for y in 0..16 {
        for x in 0..16 {
            let inside = (3..10).contains(&x) && (5..9).contains(&y);
            let salt = if inside { 0x33 } else { 0 };
            assert_eq!(pixel(&frame, x, y), pattern(x, y, salt), "({x},{y})");
        }
    }
}

#[test]
fn scanout_of_a_sub_rectangle_and_disabling_it() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 32, 32);
    let g = gpu.generation();
    assert_eq!(
        d.set_scanout(&mut gpu, 0, 1, rect(4, 8, 16, 16)),
        RESP_OK_NODATA
    );
    let frame = gpu.frame().unwrap();
    assert_eq!(
        (frame.width, frame.height, frame.generation),
        (16, 16, g + 1)
    );
    assert_eq!(pixel(&frame, 0, 0), pattern(4, 8, 0));
    assert_eq!(
        d.set_scanout(&mut gpu, 0, 0, rect(0, 0, 0, 0)),
        RESP_OK_NODATA
    );
    assert_eq!(gpu.frame(), None);
    assert_eq!(gpu.generation(), g + 2);
}

#[test]
fn fences_are_echoed() {
    let mem = memory();
    let mut gpu = Gpu::new(config(64, 48));
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    let mut req = words(CMD_RESOURCE_CREATE_2D, &[7, B8G8R8A8, 8, 8]);
    req[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
    req[8..16].copy_from_slice(&0x1234_5678_9abc_u64.to_le_bytes());
    let resp = d.send(&mut gpu, &req);
    assert_eq!(kind(&resp), RESP_OK_NODATA);
    assert_eq!(resp[4..8], FLAG_FENCE.to_le_bytes());
    assert_eq!(resp[8..16], 0x1234_5678_9abc_u64.to_le_bytes());
    // Without the flag, no fence comes back.
    let resp = d.send(&mut gpu, &hdr(CMD_GET_DISPLAY_INFO));
    assert_eq!(resp[4..16], [0; 12]);
}

#[test]
fn creating_past_the_memory_cap_is_out_of_memory_and_the_device_goes_on() {
    let mem = memory();
    let mut gpu = Gpu::new(GpuConfig {
        max_memory: 1 << 20,
        ..config(64, 48)
    });
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    assert_eq!(d.create(&mut gpu, 1, B8G8R8A8, 512, 400), RESP_OK_NODATA);
    assert_eq!(
        d.create(&mut gpu, 2, B8G8R8A8, 512, 400),
        RESP_ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        d.create(&mut gpu, 3, B8G8R8A8, 65535, 65535),
        RESP_ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        gpu.metrics().resource_bytes,
        512 * 400 * 4 + RESOURCE_OVERHEAD
    );
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_UNREF, &[1, 0])),
        RESP_OK_NODATA
    );
    assert_eq!(d.create(&mut gpu, 2, B8G8R8A8, 512, 400), RESP_OK_NODATA);
    assert_eq!(gpu.metrics().resources, 1);
}

#[test]
fn tiny_resources_and_long_backing_lists_count_against_the_cap() {
    let mem = memory();
    let cap = 16 << 10;
    let mut gpu = Gpu::new(GpuConfig {
        max_memory: cap,
        ..config(64, 48)
    });
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    // 1x1 resources cost their overhead, not 4 bytes: the cap stops them.
    let per = 4 + RESOURCE_OVERHEAD;
    let fit = (cap / per) as u32;
    for id in 1..=fit {
        assert_eq!(
            d.create(&mut gpu, id, B8G8R8A8, 1, 1),
            RESP_OK_NODATA,
            "{id}"
        );
    }
    assert_eq!(
        d.create(&mut gpu, fit + 1, B8G8R8A8, 1, 1),
        RESP_ERR_OUT_OF_MEMORY
    );
    // Unref four to make room; then a backing list of many entries (all naming the same
    // page) is charged too, and refunded on detach.
    for id in 2..=5 {
        assert_eq!(
            d.status(&mut gpu, &words(CMD_RESOURCE_UNREF, &[id, 0])),
            RESP_OK_NODATA
        );
    }
    let held = u64::from(fit - 4) * per;
    assert_eq!(gpu.metrics().resource_bytes, held);
    let entries = ((cap - held) / BACKING_ENTRY_COST + 1) as usize;
    let page = (MEM_SIZE - 4096) as u64;
    let list = vec![(page, 4096); entries];
    assert_eq!(d.attach(&mut gpu, 1, &list), RESP_ERR_OUT_OF_MEMORY);
    assert_eq!(d.attach(&mut gpu, 1, &list[1..]), RESP_OK_NODATA);
    assert_eq!(
        gpu.metrics().resource_bytes,
        held + (entries as u64 - 1) * BACKING_ENTRY_COST
    );
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_DETACH_BACKING, &[1, 0])),
        RESP_OK_NODATA
    );
    assert_eq!(gpu.metrics().resource_bytes, held);
}

#[test]
fn unknown_resource_ids_are_refused() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    let bad = RESP_ERR_INVALID_RESOURCE_ID;
    assert_eq!(d.status(&mut gpu, &words(CMD_RESOURCE_UNREF, &[9, 0])), bad);
    assert_eq!(d.flush(&mut gpu, 9, rect(0, 0, 1, 1)), bad);
    assert_eq!(d.transfer(&mut gpu, 9, rect(0, 0, 1, 1), 0), bad);
    assert_eq!(d.attach(&mut gpu, 9, &[(BACKING, 64)]), bad);
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_DETACH_BACKING, &[9, 0])),
        bad
    );
    assert_eq!(d.set_scanout(&mut gpu, 0, 9, rect(0, 0, 1, 1)), bad);
    // Id 0 and an id in use cannot be created.
    assert_eq!(d.create(&mut gpu, 0, B8G8R8A8, 4, 4), bad);
    assert_eq!(d.create(&mut gpu, 1, B8G8R8A8, 4, 4), bad);
}

#[test]
fn scanouts_other_than_0_are_refused() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    let bad = RESP_ERR_INVALID_SCANOUT_ID;
    assert_eq!(d.set_scanout(&mut gpu, 1, 1, rect(0, 0, 16, 16)), bad);
    assert_eq!(
        d.set_scanout(&mut gpu, u32::MAX, 1, rect(0, 0, 16, 16)),
        bad
    );
    let mv = words(CMD_MOVE_CURSOR, &[3, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(kind(&d.send_on(&mut gpu, 1, &mv, 64)), bad);
}

#[test]
fn rectangles_outside_the_resource_and_overflowing_sizes_are_invalid() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    let before = gpu.frame().unwrap();
    let bad = RESP_ERR_INVALID_PARAMETER;
    for r in [
        rect(0, 0, 17, 16),
        rect(15, 0, 2, 1),
        rect(0, 16, 1, 1),
        rect(u32::MAX, 0, 2, 1),
        rect(0, u32::MAX - 1, 1, 4),
        rect(0, 0, 0, 4),
    ] {
        assert_eq!(d.flush(&mut gpu, 1, r), bad, "flush {r:?}");
        assert_eq!(d.transfer(&mut gpu, 1, r, 0), bad, "transfer {r:?}");
        assert_eq!(d.set_scanout(&mut gpu, 0, 1, r), bad, "scanout {r:?}");
    }
    // An offset that reads past the backing, or overflows.
    assert_eq!(d.transfer(&mut gpu, 1, rect(0, 0, 16, 16), 4), bad);
    assert_eq!(d.transfer(&mut gpu, 1, rect(0, 0, 1, 1), u64::MAX - 2), bad);
    // Sizes and formats.
    assert_eq!(d.create(&mut gpu, 5, B8G8R8A8, 0, 10), bad);
    assert_eq!(d.create(&mut gpu, 5, B8G8R8A8, u32::MAX, u32::MAX), bad);
    assert_eq!(d.create(&mut gpu, 5, 999, 4, 4), bad);
    assert_eq!(d.create(&mut gpu, 5, 0, 4, 4), bad);
    assert_eq!(gpu.frame().unwrap(), before, "nothing changed on screen");
}

#[test]
fn backing_outside_guest_memory_is_invalid() {
    let mem = memory();
    let mut gpu = Gpu::new(config(64, 48));
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    assert_eq!(d.create(&mut gpu, 1, B8G8R8A8, 8, 8), RESP_OK_NODATA);
    let bad = RESP_ERR_INVALID_PARAMETER;
    assert_eq!(d.attach(&mut gpu, 1, &[(OUTSIDE, 256)]), bad);
    assert_eq!(d.attach(&mut gpu, 1, &[(MEM_SIZE as u64 - 16, 256)]), bad);
    assert_eq!(d.attach(&mut gpu, 1, &[(u64::MAX - 8, 256)]), bad);
    assert_eq!(d.attach(&mut gpu, 1, &[(BACKING, 0)]), bad);
    assert_eq!(d.attach(&mut gpu, 1, &[]), bad);
    // A count larger than the entries the request carries.
    let req = words(CMD_RESOURCE_ATTACH_BACKING, &[1, 3]);
    assert_eq!(d.status(&mut gpu, &req), bad);
    let req = words(CMD_RESOURCE_ATTACH_BACKING, &[1, u32::MAX]);
    assert_eq!(d.status(&mut gpu, &req), bad);
    // No backing yet: transfer and detach fail; then attaching twice fails.
    assert_eq!(
        d.transfer(&mut gpu, 1, rect(0, 0, 8, 8), 0),
        RESP_ERR_UNSPEC
    );
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_DETACH_BACKING, &[1, 0])),
        RESP_ERR_UNSPEC
    );
    assert_eq!(d.attach(&mut gpu, 1, &[(BACKING, 256)]), RESP_OK_NODATA);
    assert_eq!(d.attach(&mut gpu, 1, &[(BACKING, 256)]), RESP_ERR_UNSPEC);
}

#[test]
fn unknown_commands_and_short_requests_get_errors_not_panics() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    assert_eq!(d.status(&mut gpu, &hdr(0x0999)), RESP_ERR_UNSPEC);
    assert_eq!(
        d.status(&mut gpu, &hdr(0x0108)),
        RESP_ERR_UNSPEC,
        "GET_CAPSET_INFO"
    );
    assert_eq!(
        d.status(&mut gpu, &hdr(CMD_UPDATE_CURSOR)),
        RESP_ERR_UNSPEC,
        "on controlq"
    );
    // Shorter than a header.
    assert_eq!(d.status(&mut gpu, &[1, 2, 3]), RESP_ERR_UNSPEC);
    // A header without the command's fields.
    for cmd in [
        CMD_RESOURCE_CREATE_2D,
        CMD_RESOURCE_UNREF,
        CMD_SET_SCANOUT,
        CMD_RESOURCE_FLUSH,
        CMD_TRANSFER_TO_HOST_2D,
        CMD_RESOURCE_ATTACH_BACKING,
        CMD_RESOURCE_DETACH_BACKING,
        CMD_GET_EDID,
    ] {
        assert_eq!(
            d.status(&mut gpu, &hdr(cmd)),
            RESP_ERR_INVALID_PARAMETER,
            "{cmd:#x}"
        );
        if [
            CMD_RESOURCE_UNREF,
            CMD_RESOURCE_DETACH_BACKING,
            CMD_GET_EDID,
        ]
        .contains(&cmd)
        {
            continue; // one field: a cut past it is a whole request
        }
        let mut cut = words(cmd, &[1, 0, 0]);
        cut.truncate(HDR_SIZE + 6);
        let status = d.status(&mut gpu, &cut);
        assert!(status >= RESP_ERR_UNSPEC, "{cmd:#x}: {status:#x}");
    }
    let short_cursor = d.send_on(&mut gpu, 1, &hdr(CMD_UPDATE_CURSOR), 64);
    assert_eq!(kind(&short_cursor), RESP_ERR_INVALID_PARAMETER);
    assert!(gpu.frame().is_some());
}

#[test]
fn short_or_missing_response_buffers_and_bad_descriptors_never_panic() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    let malformed = gpu.metrics().malformed;
    // Room for 10 bytes of a 408-byte display info: truncated, counted.
    let resp = d.send_on(&mut gpu, 0, &hdr(CMD_GET_DISPLAY_INFO), 10);
    assert_eq!(resp.len(), 10);
    assert_eq!(gpu.metrics().malformed, malformed + 1);
    // No room at all.
    assert!(d
        .send_on(&mut gpu, 0, &hdr(CMD_GET_DISPLAY_INFO), 0)
        .is_empty());
    // A request buffer outside guest memory, and a readable descriptor after a writable one.
    d.add_chain(0, &[(OUTSIDE, 24, RO), (RESP, 64, WO)]);
    gpu.queue_notify(0);
    assert_eq!(d.last_used(0).1, 0);
    d.add_chain(0, &[(RESP, 64, WO), (REQ, 24, RO)]);
    gpu.queue_notify(0);
    assert_eq!(d.last_used(0).1, 0);
    assert_eq!(gpu.metrics().malformed, malformed + 4);
    // A notification of a queue that does not exist.
    gpu.queue_notify(7);
    // The device still works.
    assert_eq!(
        d.status(&mut gpu, &hdr(CMD_GET_DISPLAY_INFO)),
        RESP_OK_DISPLAY_INFO
    );
}

#[test]
fn a_garbage_available_index_ends_the_pass_and_full_rings_are_served() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    // A full ring of display-info requests in one notification.
    let req = hdr(CMD_GET_DISPLAY_INFO);
    mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let before = d.used_count(0);
    d.next_desc[0] = 0;
    for _ in 0..QUEUE_SIZE / 2 {
        d.add_chain(0, &[(REQ, req.len() as u32, RO), (RESP, 512, WO)]);
    }
    gpu.queue_notify(0);
    assert_eq!(d.used_count(0), before.wrapping_add(QUEUE_SIZE / 2));
    // The driver claims 1000 more chains than the ring holds: nothing is served, no hang.
    let avail = d.queues[0].avail();
    avail.idx().store(avail.idx().load().wrapping_add(1000));
    gpu.queue_notify(0);
    assert_eq!(d.used_count(0), before.wrapping_add(QUEUE_SIZE / 2));
}

#[test]
fn cursor_updates_and_moves() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    assert_eq!(d.create(&mut gpu, 2, B8G8R8A8, 64, 64), RESP_OK_NODATA);
    let update = words(CMD_UPDATE_CURSOR, &[0, 10, 20, 0, 2, 3, 4, 0]);
    assert_eq!(kind(&d.send_on(&mut gpu, 1, &update, 64)), RESP_OK_NODATA);
    let mv = words(CMD_MOVE_CURSOR, &[0, 30, 40, 0, 0, 0, 0, 0]);
    // Linux posts no room for cursor responses: that is fine.
    assert!(d.send_on(&mut gpu, 1, &mv, 0).is_empty());
    let c = gpu.cursor();
    assert_eq!(
        (c.resource_id, c.x, c.y, c.hot_x, c.hot_y),
        (2, 30, 40, 3, 4)
    );
    let unknown = words(CMD_UPDATE_CURSOR, &[0, 1, 1, 0, 77, 0, 0, 0]);
    assert_eq!(
        kind(&d.send_on(&mut gpu, 1, &unknown, 64)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    // Unref of the cursor's resource hides it.
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_UNREF, &[2, 0])),
        RESP_OK_NODATA
    );
    assert_eq!(gpu.cursor().resource_id, 0);
    assert_eq!(gpu.metrics().cursor_commands, 3);
}

#[test]
fn unref_of_the_shown_resource_blanks_the_screen_and_reset_drops_everything() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 16, 16);
    assert_eq!(
        d.status(&mut gpu, &words(CMD_RESOURCE_UNREF, &[1, 0])),
        RESP_OK_NODATA
    );
    assert!(gpu.frame().is_none());
    let (mut gpu, _d) = showing(&mem, B8G8R8A8, 16, 16);
    gpu.reset();
    assert!(gpu.frame().is_none());
    assert!(gpu.queues().is_empty());
    assert_eq!(gpu.metrics().resource_bytes, 0);
}

#[test]
fn used_buffers_raise_the_interrupt() {
    let mem = memory();
    let mut gpu = Gpu::new(config(64, 48));
    let mut d = Driver::new(&mem);
    d.activate(&mut gpu);
    let _ = d.interrupt.irqfd().read();
    d.send(&mut gpu, &hdr(CMD_GET_DISPLAY_INFO));
    assert!(d.interrupt.irqfd().read().is_ok());
}

#[test]
fn state_round_trips_with_pixels_backing_scanout_and_front() {
    let mem = memory();
    let (mut gpu, mut d) = showing(&mem, B8G8R8A8, 24, 16);
    assert_eq!(d.create(&mut gpu, 2, R8G8B8A8, 8, 8), RESP_OK_NODATA);
    // Transferred but not flushed: resource pixels differ from the front buffer.
    d.fill_backing(&image(B8G8R8A8, 24, 16, 0x77));
    assert_eq!(
        d.transfer(&mut gpu, 1, rect(0, 0, 24, 16), 0),
        RESP_OK_NODATA
    );
    let update = words(CMD_UPDATE_CURSOR, &[0, 5, 6, 0, 2, 1, 1, 0]);
    d.send_on(&mut gpu, 1, &update, 64);
    gpu.signal_display_change();

    let state = gpu.save();
    let json = serde_json::to_string(&state).unwrap();
    let back: GpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let mut restored = Gpu::restore(&back).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.frame(), gpu.frame());
    assert_eq!(restored.cursor(), gpu.cursor());
    // The restored device carries on: flushing now shows the transferred pixels.
    d.activate(&mut restored);
    assert_eq!(
        d.flush(&mut restored, 1, rect(0, 0, 24, 16)),
        RESP_OK_NODATA
    );
    let frame = restored.frame().unwrap();
    assert_eq!(pixel(&frame, 3, 4), pattern(3, 4, 0x77));
}

#[test]
fn inconsistent_states_are_refused() {
    let mem = memory();
    let (gpu, _d) = showing(&mem, B8G8R8A8, 16, 16);
    let good = gpu.save();
    type Breaker = Box<dyn Fn(&mut GpuState)>;
    let broken: Vec<(&str, Breaker)> = vec![
        (
            "pixels",
            Box::new(|s| s.resources[0].pixels.pop().map(drop).unwrap_or(())),
        ),
        ("format", Box::new(|s| s.resources[0].format = 5)),
        ("id 0", Box::new(|s| s.resources[0].id = 0)),
        (
            "repeat",
            Box::new(|s| s.resources.push(s.resources[0].clone())),
        ),
        (
            "scanout",
            Box::new(|s| s.scanout.as_mut().unwrap().resource_id = 9),
        ),
        (
            "rect",
            Box::new(|s| s.scanout.as_mut().unwrap().rect.width = 17),
        ),
        ("front", Box::new(|s| s.front.truncate(10))),
        ("no scanout", Box::new(|s| s.scanout = None)),
        ("cap", Box::new(|s| s.config.max_memory = MIN_MAX_MEMORY)),
        ("size", Box::new(|s| s.config.width = 0)),
    ];
    for (what, breakit) in broken {
        let mut s = good.clone();
        breakit(&mut s);
        if what == "cap" {
            s.resources[0].width = 1024;
            s.resources[0].height = 1024;
            s.resources[0].pixels = vec![0; 4 << 20];
            s.scanout = None;
            s.front.clear();
        }
        assert!(Gpu::restore(&s).is_err(), "{what}");
    }
}

#[test]
fn config_limits() {
    assert_eq!(GpuConfig::default().validate(), Ok(()));
    assert_eq!(
        (GpuConfig::default().width, GpuConfig::default().height),
        (1280, 800)
    );
    for (w, h) in [(15, 100), (100, 15), (4096, 100), (100, 4096), (0, 0)] {
        assert!(config(w, h).validate().is_err(), "{w}x{h}");
    }
    let small = GpuConfig {
        max_memory: 1000,
        ..config(64, 48)
    };
    assert!(small.validate().is_err());
    let json = r#"{"width": 64, "height": 48, "bogus": 1}"#;
    assert!(serde_json::from_str::<GpuConfig>(json).is_err());
    let parsed: GpuConfig = serde_json::from_str(r#"{"width": 64, "height": 48}"#).unwrap();
    assert_eq!(parsed.max_memory, DEFAULT_MAX_MEMORY);
}
