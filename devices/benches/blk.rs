//! virtio-blk device model in-process, no guest: 4 KiB random reads and writes at queue
//! depth 1 and 32 against a file, side by side with a plain `pread`/`pwrite` loop on the
//! same file in the same run.
//!
//! The bench plays the guest driver: it lays out a split virtqueue in guest memory, posts
//! `depth` requests (header, 4 KiB data buffer, status byte), notifies the device, and as
//! requests complete (completion eventfd, `process_completions`, used ring) checks each
//! status and posts the slot again at a new random 4 KiB-aligned offset.
//!
//! `cargo bench -p devices --bench blk`. Environment:
//! - `PETREL_BENCH_SECS` (3): measured seconds per case; `PETREL_BENCH_WARMUP_SECS` (0.5).
//! - `PETREL_BENCH_FILE_MIB` (1024): size of the test file.
//! - `PETREL_BENCH_DIR` (the system temp dir): where the file is created (and removed).
//! - `PETREL_BENCH_JSON`: append the JSON lines to this file instead of stdout.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does a short smoke run.

#[allow(dead_code)]
mod util;

mod blk_driver;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_driver::{Driver, Op, BLOCK};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};
use memory::GuestMemoryMmap;
use serde_json::json;
use util::{process_cpu, thousands, thread_cpu, thread_split, wait_readable, Settings, XorShift};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 64 << 20;
/// Plain-loop operations between clock readings.
const PLAIN_BATCH: u64 = 8;
const DEPTHS: [usize; 2] = [1, 32];

/// One case's figures over its measured part.
struct Measured {
    ops: u64,
    elapsed: Duration,
    /// Whole process (getrusage).
    cpu: Duration,
    /// The main (VMM) thread, and the device's I/O thread.
    main_cpu: Duration,
    io_cpu: Duration,
    /// The part of the main thread's time spent playing the guest driver (reading the used
    /// ring, checking and posting requests): a guest's vCPU would do that in a real VM.
    driver_cpu: Duration,
}

impl Measured {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn per_req_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The I/O thread's busy time as a share of the wall time.
    fn io_busy(&self) -> f64 {
        100.0 * self.io_cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }
}

/// Calls `step` (which returns the requests it completed and the CPU time it spent as the
/// guest driver) for the warm-up, then measures requests, wall time and CPU time for
/// `settings.secs`.
fn measure(settings: &Settings, mut step: impl FnMut() -> (u64, Duration)) -> Measured {
    let warm_end = Instant::now() + settings.warmup;
    let end = warm_end + settings.secs;
    let mut ops = 0u64;
    let mut driver = Duration::ZERO;
    let mut base = None;
    loop {
        let now = Instant::now();
        if base.is_none() && now >= warm_end {
            base = Some((now, process_cpu(), thread_split(), ops, driver));
        }
        if now >= end {
            let (t0, cpu0, (main0, io0), ops0, driver0) =
                base.expect("set once the warm-up is over");
            let (main1, io1) = thread_split();
            return Measured {
                ops: ops - ops0,
                elapsed: now - t0,
                cpu: process_cpu() - cpu0,
                main_cpu: main1.saturating_sub(main0),
                io_cpu: io1.saturating_sub(io0),
                driver_cpu: driver - driver0,
            };
        }
        let (n, d) = step();
        ops += n;
        driver += d;
    }
}

/// Creates the test file: every 4 KiB block starts with its index (so reads can be
/// checked) and is otherwise filled; written out and synced so that every page exists and
/// is clean in the page cache.
fn create_file(path: &Path, blocks: u64) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    let chunk_blocks = 256u64;
    let mut chunk = vec![0x5au8; (chunk_blocks * BLOCK) as usize];
    let mut blk = 0;
    while blk < blocks {
        let n = chunk_blocks.min(blocks - blk);
        for i in 0..n {
            let at = (i * BLOCK) as usize;
            chunk[at..at + 8].copy_from_slice(&(blk + i).to_le_bytes());
        }
        file.write_all(&chunk[..(n * BLOCK) as usize])?;
        blk += n;
    }
    file.sync_all()
}

/// Writes back what the previous case dirtied, so that every case starts from the same
/// page-cache state: the whole file cached and clean.
fn sync(path: &Path) {
    File::open(path)
        .and_then(|f| f.sync_all())
        .expect("sync the test file");
}

/// The plain loop: one thread, `pread`/`pwrite` of 4 KiB at random block offsets.
fn plain_case(path: &Path, blocks: u64, op: Op, settings: &Settings) -> Measured {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the test file");
    let mut buf = vec![0x5au8; BLOCK as usize];
    let mut rng = XorShift::new();
    measure(settings, || {
        for _ in 0..PLAIN_BATCH {
            let blk = rng.below(blocks);
            let offset = blk * BLOCK;
            match op {
                Op::Read => {
                    let n = file.read_at(&mut buf, offset).expect("pread");
                    assert_eq!(n, buf.len(), "short pread");
                    let got = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    assert_eq!(got, blk, "pread returned the wrong block");
                }
                Op::Write => {
                    buf[..8].copy_from_slice(&blk.to_le_bytes());
                    let n = file.write_at(&buf, offset).expect("pwrite");
                    assert_eq!(n, buf.len(), "short pwrite");
                }
            }
        }
        (PLAIN_BATCH, Duration::ZERO)
    })
}

/// The device cases: `depth` requests kept in flight through a `Block` on the same file.
fn device_case(path: &Path, blocks: u64, op: Op, depth: usize, settings: &Settings) -> Measured {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let mut drv = Driver::new(&mem, blocks, op, depth);
    let mut dev = Block::new(BlockConfig {
        path: path.to_owned(),
        id: "bench0".into(),
        readonly: false,
        serial: None,
        rate_limiter: None,
    })
    .expect("open the test file as a disk");
    let env = DeviceEnv {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("irqfd"))),
        acked_features: features::VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH),
        kicks: Default::default(),
    };
    dev.activate(vec![drv.ring.queue()], env).expect("activate");
    for slot in 0..depth {
        drv.post(slot);
    }
    drv.ring.publish();
    dev.queue_notify(0);
    let evt = dev.completion_evt().as_raw_fd();
    let measured = measure(settings, || {
        assert!(
            wait_readable(evt, Duration::from_secs(5)),
            "the device completed nothing for 5 s"
        );
        dev.process_completions();
        let t = thread_cpu();
        let mut done = 0;
        while let Some((head, len)) = drv.ring.pop_used() {
            let slot = drv.complete(head, len);
            drv.post(slot);
            done += 1;
        }
        if done > 0 {
            drv.ring.publish();
        }
        let driver = thread_cpu() - t;
        if done > 0 {
            dev.queue_notify(0);
        }
        (done, driver)
    });
    let m = dev.metrics();
    assert_eq!(
        (m.errors, m.io_errors, m.unsupported_ops),
        (0, 0, 0),
        "the device reported errors: {m:?}"
    );
    // Dropping the device waits for the requests still in flight.
    measured
}

fn main() {
    let settings = Settings::from_env();
    let mib = util::env_f64("PETREL_BENCH_FILE_MIB").unwrap_or(if settings.smoke {
        16.0
    } else {
        1024.0
    }) as u64;
    let blocks = (mib << 20) / BLOCK;
    assert!(blocks > 0, "PETREL_BENCH_FILE_MIB must be at least 1");
    let parent = std::env::var_os("PETREL_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("petrel-blk-bench")
        .tempdir_in(&parent)
        .expect("temporary directory");
    let path = dir.path().join("disk.img");
    let started = Instant::now();
    create_file(&path, blocks).expect("create the test file");
    println!(
        "virtio-blk in-process benchmark{}: 4 KiB random I/O on a {mib} MiB file at {}",
        if settings.smoke { " (smoke run)" } else { "" },
        path.display()
    );
    println!(
        "  file written and synced in {:.1} s; every page is in the page cache for both the \
         device and the plain loop (no O_DIRECT: the device does not use it);\n  the file is \
         synced before each case, so each starts with every page clean",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:.1} s per case after {:.1} s warm-up; CPU/req = process user+sys time (getrusage) \
         / requests, which for the device includes the VMM thread and the disk's I/O thread",
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "  main/io: CPU us/req split by thread: main = the VMM thread, of which drv is the \
         bench playing the guest driver\n  (a guest vCPU's work in a real VM); io = the disk's \
         I/O thread; io busy = the I/O thread's CPU time / wall time"
    );
    println!(
        "\n{:<10} {:<10} {:>5} {:>11} {:>10} {:>6} {:>6} {:>6} {:>7} {:>8}",
        "case", "engine", "depth", "IOPS", "CPU us/req", "main", "drv", "io", "io busy", "vs plain"
    );
    let mut json = Vec::new();
    let mut targets = Vec::new();
    for op in [Op::Read, Op::Write] {
        sync(&path);
        let plain = plain_case(&path, blocks, op, &settings);
        let mut rows = vec![("plain", 1, plain)];
        for depth in DEPTHS {
            sync(&path);
            rows.push((
                "virtio-blk",
                depth,
                device_case(&path, blocks, op, depth, &settings),
            ));
        }
        let plain_iops = rows[0].2.iops();
        for (engine, depth, m) in &rows {
            let ratio = m.iops() / plain_iops;
            let device = *engine != "plain";
            let io = |v: f64, unit: &str| {
                if device {
                    format!("{v:.2}{unit}")
                } else {
                    "-".into()
                }
            };
            println!(
                "{:<10} {:<10} {:>5} {:>11} {:>10.2} {:>6.2} {:>6} {:>6} {:>7} {:>8.2}",
                op.name(),
                engine,
                depth,
                thousands(m.iops()),
                m.per_req_us(m.cpu),
                m.per_req_us(m.main_cpu),
                io(m.per_req_us(m.driver_cpu), ""),
                io(m.per_req_us(m.io_cpu), ""),
                io(m.io_busy(), "%"),
                ratio
            );
            if device && *depth == 32 {
                targets.push((op.name(), ratio));
            }
            json.push(json!({
                "bench": "blk", "case": op.name(), "engine": engine, "depth": depth,
                "block_size": BLOCK, "file_mib": mib, "ops": m.ops,
                "secs": m.elapsed.as_secs_f64(), "iops": m.iops(),
                "cpu_us_per_req": m.per_req_us(m.cpu),
                "main_thread_cpu_us_per_req": m.per_req_us(m.main_cpu),
                "driver_cpu_us_per_req": device.then(|| m.per_req_us(m.driver_cpu)),
                "io_thread_cpu_us_per_req": device.then(|| m.per_req_us(m.io_cpu)),
                "iops_vs_plain": ratio,
            }));
        }
    }
    println!();
    for (case, ratio) in targets {
        let verdict = if ratio >= 0.9 { "met" } else { "NOT met" };
        println!("target (depth 32 >= 0.9 x plain IOPS), {case}: {ratio:.2} -> {verdict}");
    }
    util::emit_json(&json);
}
