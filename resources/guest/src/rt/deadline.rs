//! Timeouts measured with the time-stamp counter, for polling loops that must end.
//!
//! The TSC rate comes from CPUID when the VMM reports it (leaf 0x15, else 0x16, else the
//! hypervisor timing leaf 0x40000010); otherwise it is taken to be 1 GHz, so that on a faster
//! host a timeout is shorter than asked but still generous. The guest runs with interrupts off:
//! callers poll `expired`.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;

/// Used when CPUID does not tell the TSC rate.
const FALLBACK_TSC_HZ: u64 = 1_000_000_000;
/// Rates outside this range are treated as nonsense from a CPUID template.
const PLAUSIBLE_TSC_HZ: core::ops::RangeInclusive<u64> = 100_000_000..=20_000_000_000;
const HYPERVISOR_BASE: u32 = 0x4000_0000;
const HYPERVISOR_TIMING: u32 = 0x4000_0010;
/// CPUID.1:ECX: running under a hypervisor.
const CPUID_HYPERVISOR: u32 = 1 << 31;

/// The TSC rate in Hz, 0 until first measured.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// A point in time, `after` a duration from when it was made.
#[derive(Clone, Copy)]
pub struct Deadline {
    end: u64,
}

impl Deadline {
    /// The deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Deadline {
        let ticks = tsc_hz().saturating_mul(ms) / 1000;
        Deadline {
            end: cpu::rdtsc().saturating_add(ticks),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        cpu::rdtsc() >= self.end
    }
}

/// The TSC rate in Hz (see the module documentation).
pub fn tsc_hz() -> u64 {
    let cached = TSC_HZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let hz = [from_leaf_15, from_leaf_16, from_hypervisor_leaf]
        .iter()
        .filter_map(|source| source())
        .find(|hz| PLAUSIBLE_TSC_HZ.contains(hz))
        .unwrap_or(FALLBACK_TSC_HZ);
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

fn max_basic_leaf() -> u32 {
    cpu::cpuid(0).eax
}

/// Leaf 0x15: TSC = crystal (ECX Hz) * EBX / EAX.
fn from_leaf_15() -> Option<u64> {
    if max_basic_leaf() < 0x15 {
        return None;
    }
    let leaf = cpu::cpuid(0x15);
    if leaf.eax == 0 || leaf.ebx == 0 || leaf.ecx == 0 {
        return None;
    }
    Some(u64::from(leaf.ecx) * u64::from(leaf.ebx) / u64::from(leaf.eax))
}

/// Leaf 0x16: EAX = processor base frequency in MHz (the TSC's rate on invariant-TSC CPUs).
fn from_leaf_16() -> Option<u64> {
    if max_basic_leaf() < 0x16 {
        return None;
    }
    match cpu::cpuid(0x16).eax & 0xffff {
        0 => None,
        mhz => Some(u64::from(mhz) * 1_000_000),
    }
}

/// Hypervisor leaf 0x40000010: EAX = TSC rate in kHz (when the VMM fills it in).
fn from_hypervisor_leaf() -> Option<u64> {
    if cpu::cpuid(1).ecx & CPUID_HYPERVISOR == 0
        || cpu::cpuid(HYPERVISOR_BASE).eax < HYPERVISOR_TIMING
    {
        return None;
    }
    match cpu::cpuid(HYPERVISOR_TIMING).eax {
        0 => None,
        khz => Some(u64::from(khz) * 1000),
    }
}
