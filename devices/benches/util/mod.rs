//! Shared pieces of the device benchmarks: run settings from the environment, a guest-side
//! split virtqueue driver, CPU-time readings, a PRNG and the result output.
//!
//! Each benchmark uses only part of this module, hence `#[allow(dead_code)]` where it is
//! included.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

#[path = "../../../benches/report.rs"]
mod report;
pub use report::emit_json;

/// How long each case runs, from the environment.
pub struct Settings {
    /// Measured time per case.
    pub secs: Duration,
    /// Unmeasured time per case before it.
    pub warmup: Duration,
    /// `cargo test --benches` runs the binary without `--bench`: a quick smoke run then.
    pub smoke: bool,
}

impl Settings {
    pub fn from_env() -> Self {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let secs = env_f64("PETREL_BENCH_SECS").unwrap_or(if smoke { 0.05 } else { 3.0 });
        let warmup = env_f64("PETREL_BENCH_WARMUP_SECS").unwrap_or(if smoke { 0.01 } else { 0.5 });
        Settings {
            secs: Duration::from_secs_f64(secs.max(0.01)),
            warmup: Duration::from_secs_f64(warmup.max(0.0)),
            smoke,
        }
    }
}

/// A numeric environment variable; exits with a message if it is set but not a number.
pub fn env_f64(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
        _ => {
            eprintln!("{name}={value:?} is not a non-negative number");
            std::process::exit(2);
        }
    }
}

/// xorshift64*: a small, fixed-seed PRNG so that every run (and the device and the plain
/// loop) draws the same sequence.
pub struct XorShift(u64);

impl XorShift {
    pub fn new() -> Self {
        XorShift(0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// User plus system CPU time of the whole process (every thread) so far.
pub fn process_cpu() -> Duration {
    // SAFETY: `rusage` is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` through the pointer, which is valid for the call.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(ret, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer, valid for the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(ret, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Run time of the process's main thread and the sum over its other live threads (from
/// `/proc/self/task/*/schedstat`, nanosecond resolution), to split process CPU time
/// between the VMM thread and a device's own threads.
pub fn thread_split() -> (Duration, Duration) {
    let main = std::process::id().to_string();
    let (mut ours, mut others) = (Duration::ZERO, Duration::ZERO);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (ours, others);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if task.file_name().to_str() == Some(main.as_str()) {
            ours += Duration::from_nanos(ns);
        } else {
            others += Duration::from_nanos(ns);
        }
    }
    (ours, others)
}

/// Waits up to `timeout` for `fd` to be readable; whether it is.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one live pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// The driver's side of one split virtqueue in guest memory: the descriptor table at
/// `base`, the available ring right after it, the used ring on the next 4 KiB boundary.
pub struct Ring {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// The available index the driver publishes next.
    avail_idx: u16,
    /// Used entries consumed so far.
    used_seen: u16,
}

impl Ring {
    /// A zeroed ring of `size` entries at `base` (4 KiB aligned).
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4096);
        let end = used + 6 + 8 * n;
        mem.write_slice(&vec![0; (end - base) as usize], GuestAddress(base))
            .expect("ring inside guest memory");
        Ring {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A ready `Queue` over this ring, as the transport would hand it to the device.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        assert!(q.is_valid(&self.mem), "the bench's queue is invalid");
        q
    }

    /// Writes descriptor `index`.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        self.mem.write_slice(&raw, at).expect("descriptor");
    }

    /// Puts the chain starting at `head` on the available ring (seen once published).
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let at = GuestAddress(self.avail + 4 + 2 * slot);
        self.mem.write_obj(head, at).expect("avail slot");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes every pushed chain visible to the device.
    pub fn publish(&self) {
        self.mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .expect("avail idx");
    }

    /// The next used entry (head, length), if the device added one.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .expect("used idx");
        if idx == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }
}

/// `n` with thousands separators, for the tables.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
