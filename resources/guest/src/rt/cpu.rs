//! Thin wrappers over privileged x86 instructions: port I/O, MSRs, control registers, CPUID.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, CpuidResult};

/// Reads a byte from an I/O port.
///
/// # Safety
/// Reading `port` must not have side effects that break memory safety (a device starting DMA,
/// for instance). Ports without a device read 0xff.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// Writing `value` to `port` must not break memory safety (no device DMA into memory Rust owns).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port and value; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (otherwise `rdmsr` raises #GP, which this guest cannot handle).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; reading it has no side effects on memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// `msr` must exist and accept `value`, and the write must not change how memory is mapped or
/// accessed behind Rust's back. The asm is a compiler memory barrier, so stores issued before
/// the call (e.g. data an IPI's receiver will read) are emitted before the write.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller guarantees the MSR and value are valid and harmless to memory safety.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags))
    };
}

/// IA32_EFER: long mode enable/active, NX enable, SYSCALL enable.
pub const MSR_EFER: u32 = 0xc000_0080;

/// The current page-table root (CR3).
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Executes CPUID for `leaf` (sub-leaf 0).
pub fn cpuid(leaf: u32) -> CpuidResult {
    #[allow(
        unused_unsafe,
        reason = "`__cpuid` is a safe fn in recent Rust, an unsafe one in older releases"
    )]
    // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
    unsafe {
        __cpuid(leaf)
    }
}

/// The local APIC id of the running CPU (CPUID leaf 1, EBX bits 31:24).
pub fn apic_id() -> u32 {
    cpuid(1).ebx >> 24
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC (allowed at CPL 0 whatever CR4.TSD says) only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Busy-waits for `iterations` rounds of `pause`. Under this project's emulated KVM, a few
/// thousand iterations already take milliseconds; on hardware-assisted KVM they are much faster.
pub fn spin(iterations: u32) {
    for _ in 0..iterations {
        core::hint::spin_loop();
    }
}

/// Masks maskable interrupts (RFLAGS.IF = 0): those the local APIC accepts stay pending in its
/// IRR.
pub fn interrupts_off() {
    // SAFETY: clearing IF touches no memory.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Stops this CPU for good: interrupts off, `hlt` forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
