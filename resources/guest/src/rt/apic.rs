//! The BSP's local APIC, used to send INIT and STARTUP IPIs and to see which interrupts wait
//! for it (its IRR) while interrupts are off.

use super::cpu;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// x2APIC MSRs.
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_ICR: u32 = 0x830;
/// The first of the eight 32-bit IRR registers, as x2APIC MSRs ...
const MSR_X2APIC_IRR: u32 = 0x820;
/// ... and at this offset (then every 0x10 bytes) in the xAPIC page.
const XAPIC_IRR: u64 = 0x200;
/// xAPIC MMIO register offsets.
const XAPIC_SVR: u64 = 0xf0;
const XAPIC_ICR_LOW: u64 = 0x300;
const XAPIC_ICR_HIGH: u64 = 0x310;
/// Spurious-interrupt vector register: APIC software enable, spurious vector 0xff.
const SVR_ENABLE: u32 = 1 << 8 | 0xff;
/// ICR: delivery status (send pending), xAPIC only.
const ICR_PENDING: u32 = 1 << 12;
/// ICR: level assert + INIT / STARTUP delivery modes.
const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
/// CPUID.1:ECX.x2APIC.
const CPUID_X2APIC: u32 = 1 << 21;
const MAX_PENDING_POLLS: u32 = 100_000;

/// The running CPU's local APIC, in x2APIC mode when the CPU offers it.
pub enum LocalApic {
    X2Apic,
    XApic { base: u64 },
}

impl LocalApic {
    /// Enables the local APIC (switching to x2APIC mode if available) and returns it.
    pub fn enable() -> LocalApic {
        // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
        let base = unsafe { cpu::rdmsr(MSR_APIC_BASE) } | APIC_BASE_ENABLE;
        if cpu::cpuid(1).ecx & CPUID_X2APIC != 0 {
            // SAFETY: CPUID reports x2APIC, so xAPIC-enabled -> x2APIC-enabled is a valid
            // transition; the APIC's mode does not affect memory.
            unsafe { cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_X2APIC) };
            // SAFETY: the x2APIC SVR exists now that x2APIC mode is on; interrupts are
            // disabled, so the enabled APIC delivers nothing to this CPU.
            unsafe {
                let svr = cpu::rdmsr(MSR_X2APIC_SVR);
                cpu::wrmsr(MSR_X2APIC_SVR, svr | u64::from(SVR_ENABLE));
            }
            LocalApic::X2Apic
        } else {
            // SAFETY: setting the global enable bit keeps the (default) base address.
            unsafe { cpu::wrmsr(MSR_APIC_BASE, base) };
            let apic = LocalApic::XApic {
                base: base & APIC_BASE_ADDR_MASK,
            };
            apic.xapic_write(XAPIC_SVR, apic.xapic_read(XAPIC_SVR) | SVR_ENABLE);
            apic
        }
    }

    /// Whether the APIC has accepted an interrupt for `vector` that the CPU has not taken
    /// yet (its IRR bit): with interrupts off, a delivered interrupt stays there.
    pub fn pending(&self, vector: u8) -> bool {
        let (index, bit) = (u32::from(vector) / 32, u32::from(vector) % 32);
        let irr = match self {
            // SAFETY: the IRR MSRs exist in x2APIC mode, which `enable` switched on; reading
            // them has no side effects.
            LocalApic::X2Apic => unsafe { cpu::rdmsr(MSR_X2APIC_IRR + index) as u32 },
            LocalApic::XApic { .. } => self.xapic_read(XAPIC_IRR + 0x10 * u64::from(index)),
        };
        irr & (1 << bit) != 0
    }

    /// Whether the APIC is in x2APIC mode.
    pub fn is_x2apic(&self) -> bool {
        matches!(self, LocalApic::X2Apic)
    }

    /// Sends INIT (level assert) to the CPU with APIC id `dest`.
    pub fn send_init(&self, dest: u32) {
        self.send_ipi(dest, ICR_INIT);
    }

    /// Sends STARTUP: `dest` starts in real mode at `vector << 12`.
    pub fn send_startup(&self, dest: u32, vector: u8) {
        self.send_ipi(dest, ICR_STARTUP | u32::from(vector));
    }

    fn send_ipi(&self, dest: u32, icr: u32) {
        match self {
            LocalApic::X2Apic => {
                // SAFETY: in x2APIC mode the ICR is MSR 0x830 (destination in bits 63:32);
                // an INIT/STARTUP IPI affects only the target CPU, not this one's memory.
                unsafe { cpu::wrmsr(MSR_X2APIC_ICR, u64::from(dest) << 32 | u64::from(icr)) };
            }
            LocalApic::XApic { .. } => {
                self.xapic_write(XAPIC_ICR_HIGH, dest << 24);
                self.xapic_write(XAPIC_ICR_LOW, icr);
                for _ in 0..MAX_PENDING_POLLS {
                    if self.xapic_read(XAPIC_ICR_LOW) & ICR_PENDING == 0 {
                        break;
                    }
                }
            }
        }
    }

    fn xapic_register(&self, offset: u64) -> *mut u32 {
        match self {
            LocalApic::XApic { base } => (base + offset) as usize as *mut u32,
            LocalApic::X2Apic => unreachable!("x2APIC registers are MSRs"),
        }
    }

    fn xapic_read(&self, offset: u64) -> u32 {
        // SAFETY: the xAPIC register page (at IA32_APIC_BASE, 0xfee00000 by default) is
        // covered by the VMM's identity map and is MMIO, not memory Rust owns.
        unsafe { self.xapic_register(offset).read_volatile() }
    }

    fn xapic_write(&self, offset: u64, value: u32) {
        // SAFETY: as for `xapic_read`; IPIs sent through the ICR do not touch this CPU's memory.
        unsafe { self.xapic_register(offset).write_volatile(value) }
    }
}
