//! Ending the run: reset (i8042 or ACPI) and ACPI power-off. petrel exits with status 0 for both.

use core::sync::atomic::{AtomicU32, Ordering};

use super::cpu;

const I8042_COMMAND: u16 = 0x64;
/// i8042 command: pulse the CPU reset line.
const I8042_RESET_CPU: u8 = 0xfe;
/// petrel's ACPI sleep control register.
const ACPI_SLEEP_CONTROL: u16 = 0x600;
/// SLP_TYP = 5 (S5, soft off) in bits 4:2, SLP_EN (bit 5).
const ACPI_POWER_OFF: u8 = (5 << 2) | (1 << 5);
/// petrel also resets when 0x01 is written to the sleep control register.
const ACPI_RESET: u8 = 0x01;
/// How long to wait for the VMM to act on a request before trying something else.
const GRACE_SPINS: u32 = 100_000;
/// SLP_EN in a hardware-reduced sleep control register (ACPI 6.5, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;

/// The sleep control register and value for S5 that the ACPI tables gave, as
/// `port << 8 | value`; 0 until a scenario read them.
static ACPI_S5: AtomicU32 = AtomicU32::new(0);

/// Powers off through `port` with `slp_typ` from now on (what the FADT and `\_S5_` say),
/// instead of petrel's fixed register; returns the value that will be written.
pub fn use_acpi_s5(port: u16, slp_typ: u8) -> u8 {
    let value = ((slp_typ & 0b111) << SLP_TYP_SHIFT) | SLP_EN;
    ACPI_S5.store(u32::from(port) << 8 | u32::from(value), Ordering::Relaxed);
    value
}

/// Resets the machine through the i8042, falling back to the ACPI register.
pub fn reset() -> ! {
    // SAFETY: the i8042 reset command touches no guest memory; it ends the run.
    unsafe { cpu::outb(I8042_COMMAND, I8042_RESET_CPU) };
    cpu::spin(GRACE_SPINS);
    // SAFETY: as above, through petrel's ACPI sleep control register.
    unsafe { cpu::outb(ACPI_SLEEP_CONTROL, ACPI_RESET) };
    cpu::halt_forever()
}

/// Powers the machine off through the ACPI sleep control register (S5): the one the ACPI
/// tables named (`use_acpi_s5`), else petrel's.
pub fn power_off() -> ! {
    let (port, value) = match ACPI_S5.load(Ordering::Relaxed) {
        0 => (ACPI_SLEEP_CONTROL, ACPI_POWER_OFF),
        s5 => ((s5 >> 8) as u16, s5 as u8),
    };
    // SAFETY: entering S5 touches no guest memory; it ends the run.
    unsafe { cpu::outb(port, value) };
    cpu::spin(GRACE_SPINS);
    println!("power-off through port {port:#x} did not stop the guest; resetting");
    reset()
}
