//! Guest memory setup time, as petrel sets memory up at start: mmap of each RAM range (small
//! pages `MAP_NORESERVE`, or 2 MiB huge pages reserved at mmap), `mbind(MPOL_BIND)` to host
//! node 0 when bound, and registration of each range as a KVM memory slot — for 1 GiB and
//! 8 GiB guests. The `+touch` cases then write one byte to every 4 KiB page through the
//! host mapping, as the guest's first use of all its memory would fault it in (the kernel
//! zeroes every page, which dominates). Unmapping and removing the slots are not timed.
//!
//! Huge-page cases need free 2 MiB huge pages: run as root, the bench raises
//! `/proc/sys/vm/nr_hugepages` for each size and sets it back after; a size whose pages the
//! host cannot provide is reported as skipped with the count it got.
//!
//! `cargo bench -p vmm --bench numa_memory`. `PETREL_BENCH_RUNS` overrides the runs per
//! case, `PETREL_BENCH_JSON` as for the other benches. Without `--bench` (as `cargo test
//! --benches` runs it) a smoke run: 1 GiB, small pages, no touching, one run each.

#[path = "../../benches/report.rs"]
mod report;

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use memory::{GuestMemoryMmap, MemoryLayout, NodePlacement, Placement};
use serde_json::json;

const GIB: u64 = 1 << 30;
const HUGE: u64 = 2 << 20;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Registers every region of `mem` as slot `i`, as `vstate::vm::create_vm` does.
fn register(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, (guest, len, host)) in memory::host_regions(mem).into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: guest.0,
            memory_size: len,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: `host` is a mapping of `len` bytes owned by `mem`, which outlives the slot:
        // `unregister` removes it before `mem` is dropped.
        unsafe { vm.set_user_memory_region(region) }.expect("register a memory slot");
    }
}

/// Removes the slots `register` made.
fn unregister(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, (guest, _, host)) in memory::host_regions(mem).into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: guest.0,
            memory_size: 0,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is referenced.
        unsafe { vm.set_user_memory_region(region) }.expect("remove a memory slot");
    }
}

/// Writes one byte to every 4 KiB page of `mem`.
fn touch(mem: &GuestMemoryMmap) {
    // SAFETY: nothing else (no vCPU: the VM has none; no device) reads or writes `mem` while
    // the slices live, and this is the only call making them.
    for slice in unsafe { memory::ram_slices_mut(mem) } {
        for page in slice.chunks_mut(memory::PAGE_SIZE) {
            page[0] = 1;
        }
    }
}

/// `nr_hugepages` raised to give `pages` free huge pages, set back when dropped.
struct HugeReservation {
    before: Option<u64>,
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn free_huge_pages() -> u64 {
    let dir = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    read_u64(&format!("{dir}/free_hugepages"))
        .saturating_sub(read_u64(&format!("{dir}/resv_hugepages")))
}

impl HugeReservation {
    fn reserve(pages: u64) -> (HugeReservation, u64) {
        let free = free_huge_pages();
        if free >= pages {
            return (HugeReservation { before: None }, free);
        }
        let before = read_u64(NR_HUGEPAGES);
        let _ = std::fs::write(NR_HUGEPAGES, (before + pages - free).to_string());
        (
            HugeReservation {
                before: Some(before),
            },
            free_huge_pages(),
        )
    }
}

impl Drop for HugeReservation {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            let _ = std::fs::write(NR_HUGEPAGES, before.to_string());
        }
    }
}

struct Case {
    size: u64,
    huge: bool,
    bound: bool,
    touch: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}GiB {} {}{}",
            self.size / GIB,
            if self.huge { "huge" } else { "small" },
            if self.bound { "bind:0" } else { "unbound" },
            if self.touch { " +touch" } else { "" }
        )
    }

    /// Sets the memory up `runs` times; the sorted times.
    fn run(&self, vm: &VmFd, runs: usize) -> Vec<Duration> {
        let layout = MemoryLayout::new(self.size).unwrap();
        let placement = Placement {
            nodes: vec![NodePlacement {
                host_node: self.bound.then_some(0),
                hugepages: self.huge,
            }],
        };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let mem = layout.allocate_placed(&placement).expect("allocate");
                register(vm, &mem);
                if self.touch {
                    touch(&mem);
                }
                let took = start.elapsed();
                unregister(vm, &mem);
                drop(mem);
                took
            })
            .collect();
        times.sort();
        times
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let runs_override: Option<usize> = std::env::var("PETREL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok());
    let vm = match Kvm::new().and_then(|k| k.create_vm()) {
        Ok(vm) => vm,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "KVM needed in CI: {e}");
            eprintln!("skipped: no KVM ({e})");
            return;
        }
    };
    let node0 = std::path::Path::new("/sys/devices/system/node/node0").exists();
    let sizes: &[u64] = if smoke { &[GIB] } else { &[GIB, 8 * GIB] };
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>5}",
        "case", "min ms", "median ms", "max ms", "runs"
    );
    let mut json = Vec::new();
    for &size in sizes {
        for huge in [false, true] {
            if huge && smoke {
                continue;
            }
            let (_reservation, free) = if huge {
                HugeReservation::reserve(size / HUGE)
            } else {
                (HugeReservation { before: None }, 0)
            };
            if huge && free < size / HUGE {
                println!(
                    "{:<28} skipped: {free} free 2 MiB huge pages, {} needed",
                    format!("{}GiB huge", size / GIB),
                    size / HUGE
                );
                json.push(
                    json!({"bench": "numa_memory", "case": format!("{}GiB huge", size / GIB),
                    "skipped": format!("{free} free huge pages, {} needed", size / HUGE)}),
                );
                continue;
            }
            for bound in [false, true] {
                if bound && !node0 {
                    continue;
                }
                for touch in [false, true] {
                    if touch && smoke {
                        continue;
                    }
                    let case = Case {
                        size,
                        huge,
                        bound,
                        touch,
                    };
                    let runs = runs_override.unwrap_or(match (smoke, touch, size > GIB) {
                        (true, ..) => 1,
                        (false, false, false) => 20,
                        (false, false, true) => 10,
                        (false, true, false) => 5,
                        (false, true, true) => 3,
                    });
                    let times = case.run(&vm, runs);
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    let (min, median, max) = (
                        ms(times[0]),
                        ms(times[times.len() / 2]),
                        ms(times[times.len() - 1]),
                    );
                    println!(
                        "{:<28} {min:>10.3} {median:>10.3} {max:>10.3} {runs:>5}",
                        case.name()
                    );
                    json.push(json!({"bench": "numa_memory", "case": case.name(),
                        "min_ms": min, "median_ms": median, "max_ms": max, "runs": runs}));
                }
            }
        }
    }
    report::emit_json(&json);
}
