//! An IOAPIC, through its two memory-mapped registers (IOREGSEL at +0, IOWIN at +0x10): enough
//! to count its pins and to route one of them to a vector of a local APIC.

/// The IOAPIC's version register: the highest redirection entry in bits 23:16.
const REG_VERSION: u32 = 0x01;
/// The first redirection table register; pin n has 0x10 + 2n (low) and 0x11 + 2n (high).
const REG_REDIRECTION: u32 = 0x10;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
/// Redirection entry, low half: the line is masked.
const MASKED: u32 = 1 << 16;
/// Redirection entry, low half: level triggered (edge when clear).
const LEVEL: u32 = 1 << 15;
/// Redirection entry, low half: active low (active high when clear).
const ACTIVE_LOW: u32 = 1 << 13;

/// An IOAPIC's register window.
pub struct IoApic {
    base: u64,
}

/// How a line signals.
#[derive(Clone, Copy)]
pub struct Trigger {
    pub edge: bool,
    pub active_low: bool,
}

impl IoApic {
    /// The IOAPIC at `base`.
    ///
    /// # Safety
    /// `base` must be an IOAPIC's register window (as the MADT names it), identity-mapped:
    /// writing its index register and reading or writing its data register must touch no
    /// memory Rust owns.
    pub unsafe fn at(base: u64) -> IoApic {
        IoApic { base }
    }

    fn select(&self, register: u32) {
        // SAFETY: `at`'s contract: IOREGSEL is a device register, not memory.
        unsafe { ((self.base + IOREGSEL) as usize as *mut u32).write_volatile(register) };
    }

    fn read(&self, register: u32) -> u32 {
        self.select(register);
        // SAFETY: as for `select`, IOWIN is a device register.
        unsafe { ((self.base + IOWIN) as usize as *const u32).read_volatile() }
    }

    fn write(&self, register: u32, value: u32) {
        self.select(register);
        // SAFETY: as for `select`; an unmasked entry makes the IOAPIC send interrupts, which
        // change no memory (a vector is only taken with interrupts enabled).
        unsafe { ((self.base + IOWIN) as usize as *mut u32).write_volatile(value) };
    }

    /// How many input pins it has.
    pub fn pins(&self) -> u32 {
        ((self.read(REG_VERSION) >> 16) & 0xff) + 1
    }

    /// Sends `pin` to `vector` of the local APIC with id `apic_id` (fixed delivery, physical
    /// destination), unmasked. Returns the low half of the entry as written.
    pub fn route(&self, pin: u32, vector: u8, apic_id: u8, trigger: Trigger) -> u32 {
        let mut low = u32::from(vector);
        if !trigger.edge {
            low |= LEVEL;
        }
        if trigger.active_low {
            low |= ACTIVE_LOW;
        }
        let register = REG_REDIRECTION + 2 * pin;
        // Masked while the destination changes, then unmasked with the vector.
        self.write(register, MASKED);
        self.write(register + 1, u32::from(apic_id) << 24);
        self.write(register, low);
        self.read(register)
    }
}
