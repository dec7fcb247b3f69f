//! Page-set costs for snapshots, in-process (no KVM): `take_vmm_dirty` (read and clear the
//! VMM's dirty bitmap) and `resident_pages` (the pages a full snapshot must look at), on
//! 256 MiB and 1 GiB guests with 4 MiB touched (1024 pages spread evenly over RAM), plus
//! `resident_pages` on file-backed memory (as after a restore: pagemap and SEEK_DATA instead
//! of mincore) and `take_vmm_dirty` with nothing dirty.
//!
//! Figures are wall time per call: median and 99th percentile over the calls of the run.
//!
//! `cargo bench -p memory --bench dirty`. `PETREL_BENCH_SECS` (1 per case) and
//! `PETREL_BENCH_JSON` as for the other benches. Without `--bench` (as `cargo test
//! --benches` runs it) it does a short smoke run.

#[path = "../../benches/report.rs"]
mod report;

use std::time::{Duration, Instant};

use memory::vm_memory::{Bytes, GuestAddress};
use memory::{GuestMemoryMmap, MemoryLayout};
use serde_json::json;

const MIB: u64 = 1 << 20;
const TOUCHED_PAGES: u64 = 1024; // 4 MiB

fn touch(mem: &GuestMemoryMmap, size: u64) {
    let stride = size / TOUCHED_PAGES;
    for i in 0..TOUCHED_PAGES {
        mem.write_obj(1u8, GuestAddress(i * stride)).unwrap();
    }
}

/// Calls `f` (after an untimed `prepare`) for `secs`; returns the sorted call times.
fn measure(
    secs: Duration,
    mut prepare: impl FnMut(),
    mut f: impl FnMut() -> usize,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < secs || times.len() < 3 {
        prepare();
        let t = Instant::now();
        std::hint::black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    times
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("PETREL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if smoke { 0.02 } else { 1.0 });
    let secs = Duration::from_secs_f64(secs);
    let mut json = Vec::new();
    println!(
        "{:<40} {:>8} {:>12} {:>12} {:>8}",
        "case", "pages", "median µs", "p99 µs", "calls"
    );
    let mut report = |case: String, pages: usize, times: Vec<Duration>| {
        let median = times[times.len() / 2].as_secs_f64() * 1e6;
        let p99 = times[times.len() * 99 / 100].as_secs_f64() * 1e6;
        println!(
            "{case:<40} {pages:>8} {median:>12.1} {p99:>12.1} {:>8}",
            times.len()
        );
        json.push(
            json!({"bench": "memory_dirty", "case": case, "pages": pages,
            "median_us": median, "p99_us": p99, "calls": times.len()}),
        );
    };
    for size in [256 * MIB, 1024 * MIB] {
        let layout = MemoryLayout::new(size).unwrap();
        let mem = layout.allocate().unwrap();
        let name = format!("{}MiB", size / MIB);

        let mut n = 0;
        let times = measure(
            secs,
            || touch(&mem, size),
            || {
                n = memory::count_pages(&memory::take_vmm_dirty(&mem));
                n
            },
        );
        assert_eq!(n, TOUCHED_PAGES as usize);
        report(format!("take_vmm_dirty {name} 4MiB dirty"), n, times);

        let times = measure(
            secs,
            || {},
            || memory::count_pages(&memory::take_vmm_dirty(&mem)),
        );
        report(format!("take_vmm_dirty {name} clean"), 0, times);

        let times = measure(
            secs,
            || {},
            || {
                n = memory::count_pages(&memory::resident_pages(&mem).unwrap());
                n
            },
        );
        report(format!("resident_pages {name} anon 4MiB touched"), n, times);

        let file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        let mem = layout.map_file(&file, 0).unwrap();
        touch(&mem, size);
        let times = measure(
            secs,
            || {},
            || {
                n = memory::count_pages(&memory::resident_pages(&mem).unwrap());
                n
            },
        );
        report(format!("resident_pages {name} file 4MiB written"), n, times);
    }
    report::emit_json(&json);
}
