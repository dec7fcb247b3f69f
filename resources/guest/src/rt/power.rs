//! Ending the run: reset (i8042 or ACPI) and ACPI power-off. petrel exits with status 0 for both.

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

/// Resets the machine through the i8042, falling back to the ACPI register.
pub fn reset() -> ! {
    // SAFETY: the i8042 reset command touches no guest memory; it ends the run.
    unsafe { cpu::outb(I8042_COMMAND, I8042_RESET_CPU) };
    cpu::spin(GRACE_SPINS);
    // SAFETY: as above, through petrel's ACPI sleep control register.
    unsafe { cpu::outb(ACPI_SLEEP_CONTROL, ACPI_RESET) };
    cpu::halt_forever()
}

/// Powers the machine off through the ACPI sleep control register (S5).
pub fn power_off() -> ! {
    // SAFETY: entering S5 touches no guest memory; it ends the run.
    unsafe { cpu::outb(ACPI_SLEEP_CONTROL, ACPI_POWER_OFF) };
    cpu::spin(GRACE_SPINS);
    println!("power-off through port {ACPI_SLEEP_CONTROL:#x} did not stop the guest; resetting");
    reset()
}
