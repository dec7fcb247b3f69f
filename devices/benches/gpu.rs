//! virtio-gpu device model in-process, no guest: what showing a frame and taking a
//! screenshot cost on the host.
//!
//! - `frame`: TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of a whole 1280x800 B8G8R8A8 frame (two
//!   chains posted together, one queue notification), as a guest driver updating the full
//!   screen does: 4 000 000 bytes copied from guest memory into the resource, then converted
//!   to RGBA into the front buffer.
//! - `copy`: `Gpu::frame()`, the copy of the front buffer the VMM thread makes for a
//!   screenshot.
//! - `png-fast`, `png-default`, `png-best`: encoding that copy as 8-bit RGBA PNG with the
//!   `png` crate at each compression level (the API thread uses `Default`). The picture is the
//!   test pattern (smooth gradients with XOR stripes), which compresses like a desktop,
//!   not like noise.
//!
//! `cargo bench -p devices --bench gpu`. `PETREL_BENCH_SECS` (3) measured seconds per case,
//! `PETREL_BENCH_WARMUP_SECS` (0.5), `PETREL_BENCH_JSON` as the other benches. Without
//! `--bench` (as `cargo test --benches` runs it) it does a short smoke run.

#[allow(dead_code)]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::gpu::{protocol, Gpu, GpuConfig, VIRTIO_GPU_F_EDID};
use devices::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};
use memory::GuestMemoryMmap;
use serde_json::json;
use util::{thread_cpu, Ring, Settings, F_NEXT, F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const W: u32 = 1280;
const H: u32 = 800;
const MEM_SIZE: usize = 64 << 20;
const CONTROL_RING: u64 = 0;
const CURSOR_RING: u64 = 0x1_0000;
const REQ: u64 = 0x2_0000;
const RESP: u64 = 0x3_0000;
const BACKING: u64 = 0x10_0000;
const RESOURCE: u32 = 1;
const B8G8R8A8: u32 = 1;

/// One case's figures.
struct Measured {
    name: &'static str,
    iterations: u64,
    elapsed: Duration,
    cpu: Duration,
    bytes: u64,
}

impl Measured {
    fn per_iter_us(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.iterations.max(1) as f64
    }
}

/// Runs `f` for the warm-up, then for the measured time; `f` returns the bytes it made.
fn measure(settings: &Settings, name: &'static str, mut f: impl FnMut() -> u64) -> Measured {
    let warm = Instant::now();
    while warm.elapsed() < settings.warmup {
        f();
    }
    let (start, cpu0) = (Instant::now(), thread_cpu());
    let (mut iterations, mut bytes) = (0, 0);
    while iterations == 0 || start.elapsed() < settings.secs {
        bytes = f();
        iterations += 1;
    }
    Measured {
        name,
        iterations,
        elapsed: start.elapsed(),
        cpu: thread_cpu() - cpu0,
        bytes,
    }
}

/// The stand-in driver: a control queue whose chains are (request, response) pairs.
struct Driver {
    mem: GuestMemoryMmap,
    ring: Ring,
}

impl Driver {
    fn header(kind: u32) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.resize(protocol::HDR_SIZE, 0);
        v
    }

    fn request(kind: u32, fields: &[u32]) -> Vec<u8> {
        let mut v = Self::header(kind);
        fields
            .iter()
            .for_each(|f| v.extend_from_slice(&f.to_le_bytes()));
        v
    }

    /// Writes request `slot` (descriptors `2 * slot`, `2 * slot + 1`).
    fn prepare(&self, slot: u16, request: &[u8]) {
        let req = REQ + u64::from(slot) * 0x1000;
        let resp = RESP + u64::from(slot) * 0x1000;
        self.mem.write_slice(request, GuestAddress(req)).unwrap();
        let (d, r) = (2 * slot, 2 * slot + 1);
        self.ring.set_desc(d, req, request.len() as u32, F_NEXT, r);
        self.ring.set_desc(r, resp, 2048, F_WRITE, 0);
    }

    /// Posts the prepared `slots`, notifies once, checks each answered OK.
    fn run(&mut self, gpu: &mut Gpu, slots: &[u16], ok: u32) {
        for &s in slots {
            self.ring.push(2 * s);
        }
        self.ring.publish();
        gpu.queue_notify(0);
        for _ in slots {
            let (head, _) = self.ring.pop_used().expect("the device used the chain");
            let at = RESP + u64::from(head / 2) * 0x1000;
            let kind: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(kind, ok, "response to slot {}", head / 2);
        }
    }

    fn command(&mut self, gpu: &mut Gpu, request: &[u8]) {
        self.prepare(0, request);
        self.run(gpu, &[0], protocol::RESP_OK_NODATA);
    }
}

/// The test pattern in B8G8R8A8.
fn pattern() -> Vec<u8> {
    (0..H)
        .flat_map(|y| {
            (0..W).flat_map(move |x| {
                let (r, g, b) = ((x * 3) as u8 ^ (y as u8), (y * 5) as u8, (x + y) as u8);
                [b, g, r, 0xff]
            })
        })
        .collect()
}

/// A GPU showing the pattern, with slots 1 (transfer) and 2 (flush) of the whole frame
/// prepared.
fn setup() -> (Gpu, Driver) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut gpu = Gpu::new(GpuConfig {
        width: W,
        height: H,
        ..GpuConfig::default()
    });
    let ring = Ring::new(&mem, CONTROL_RING, 256);
    let cursor = Ring::new(&mem, CURSOR_RING, 256);
    let env = DeviceEnv {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: features::VERSION_1 | VIRTIO_GPU_F_EDID,
        kicks: Default::default(),
    };
    gpu.activate(vec![ring.queue(), cursor.queue()], env)
        .unwrap();
    let mut d = Driver { mem, ring };
    let len = W * H * 4;
    d.mem
        .write_slice(&pattern(), GuestAddress(BACKING))
        .unwrap();
    let create = Driver::request(
        protocol::CMD_RESOURCE_CREATE_2D,
        &[RESOURCE, B8G8R8A8, W, H],
    );
    d.command(&mut gpu, &create);
    let mut attach = Driver::request(protocol::CMD_RESOURCE_ATTACH_BACKING, &[RESOURCE, 1]);
    attach.extend_from_slice(&BACKING.to_le_bytes());
    attach.extend_from_slice(&len.to_le_bytes());
    attach.extend_from_slice(&0u32.to_le_bytes());
    d.command(&mut gpu, &attach);
    let scanout = Driver::request(protocol::CMD_SET_SCANOUT, &[0, 0, W, H, 0, RESOURCE]);
    d.command(&mut gpu, &scanout);
    let mut transfer = Driver::request(protocol::CMD_TRANSFER_TO_HOST_2D, &[0, 0, W, H]);
    transfer.extend_from_slice(&0u64.to_le_bytes());
    transfer.extend_from_slice(&RESOURCE.to_le_bytes());
    transfer.extend_from_slice(&0u32.to_le_bytes());
    d.prepare(1, &transfer);
    let flush = Driver::request(protocol::CMD_RESOURCE_FLUSH, &[0, 0, W, H, RESOURCE, 0]);
    d.prepare(2, &flush);
    (gpu, d)
}

fn encode(frame: &devices::virtio::gpu::Frame, level: png::Compression) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(level);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&frame.rgba).unwrap();
    writer.finish().unwrap();
    out
}

fn main() {
    let settings = Settings::from_env();
    let (mut gpu, mut driver) = setup();
    let mut rows = Vec::new();
    let frame_bytes = u64::from(W * H * 4);
    rows.push(measure(&settings, "frame", || {
        driver.run(&mut gpu, &[1, 2], protocol::RESP_OK_NODATA);
        frame_bytes
    }));
    let generation = gpu.generation();
    assert!(generation > 2, "flushes changed the picture");
    rows.push(measure(&settings, "copy", || {
        let frame = std::hint::black_box(gpu.frame());
        frame.map_or(0, |f| std::hint::black_box(f.rgba).len() as u64)
    }));
    let frame = gpu.frame().expect("a frame on screen");
    for (name, level) in [
        ("png-fast", png::Compression::Fast),
        ("png-default", png::Compression::Default),
        ("png-best", png::Compression::Best),
    ] {
        rows.push(measure(&settings, name, || {
            std::hint::black_box(encode(std::hint::black_box(&frame), level)).len() as u64
        }));
    }

    println!(
        "virtio-gpu, {W}x{H}, in-process: {:.1} s per case after {:.1} s warm-up, one thread",
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "\n{:<12} {:>9} {:>12} {:>12} {:>9} {:>12}",
        "case", "iters", "ms/iter", "CPU ms/iter", "per s", "bytes out"
    );
    let mut json = Vec::new();
    for r in &rows {
        let per_s = r.iterations as f64 / r.elapsed.as_secs_f64();
        println!(
            "{:<12} {:>9} {:>12.3} {:>12.3} {:>9.1} {:>12}",
            r.name,
            r.iterations,
            r.per_iter_us(r.elapsed) / 1000.0,
            r.per_iter_us(r.cpu) / 1000.0,
            per_s,
            r.bytes
        );
        json.push(json!({
            "bench": "gpu", "case": r.name, "width": W, "height": H,
            "iterations": r.iterations, "secs": r.elapsed.as_secs_f64(),
            "us_per_iter": r.per_iter_us(r.elapsed), "cpu_us_per_iter": r.per_iter_us(r.cpu),
            "per_sec": per_s, "bytes": r.bytes,
        }));
    }
    util::emit_json(&json);
}
