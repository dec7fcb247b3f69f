//! The FADT: flags, the DSDT's address, and the reset and sleep registers of a
//! hardware-reduced machine (ACPI 6.5, 5.2.9).

use alloc::format;
use alloc::string::String;

use super::{u16_at, u32_at, u64_at, Table};

/// FADT flags this guest reports.
pub const FLAG_PWR_BUTTON: u32 = 1 << 4;
pub const FLAG_SLP_BUTTON: u32 = 1 << 5;
pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;

/// The address space of a generic address: system I/O.
pub const SPACE_SYSTEM_IO: u8 = 1;

/// A Generic Address Structure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub bit_offset: u8,
    pub access_size: u8,
    pub addr: u64,
}

impl Gas {
    fn at(t: &[u8], at: usize) -> Option<Gas> {
        Some(Gas {
            space: *t.get(at)?,
            bit_width: *t.get(at + 1)?,
            bit_offset: *t.get(at + 2)?,
            access_size: *t.get(at + 3)?,
            addr: u64_at(t, at + 4)?,
        })
    }

    /// The byte-wide I/O port this register is, if it is one.
    pub fn io_port(&self) -> Option<u16> {
        let byte_wide = self.bit_width == 8 && self.bit_offset == 0;
        match (self.space, u16::try_from(self.addr)) {
            (SPACE_SYSTEM_IO, Ok(port)) if byte_wide && port != 0 => Some(port),
            _ => None,
        }
    }
}

pub struct Fadt {
    pub revision: u8,
    pub minor_revision: u8,
    pub flags: u32,
    pub iapc_boot_arch: u16,
    /// X_DSDT, else the 32-bit DSDT field.
    pub dsdt: u64,
    pub reset_reg: Gas,
    pub reset_value: u8,
    pub sleep_control: Gas,
    pub sleep_status: Gas,
}

/// Decodes an FADT of ACPI 5.0 or later (276 bytes with the sleep registers).
pub fn parse(table: Table) -> Result<Fadt, String> {
    let t = table.bytes;
    let short = || format!("FADT too short ({} bytes)", t.len());
    let dsdt32 = u64::from(u32_at(t, 40).ok_or_else(short)?);
    let x_dsdt = u64_at(t, 140).ok_or_else(short)?;
    Ok(Fadt {
        revision: table.revision(),
        minor_revision: *t.get(131).ok_or_else(short)?,
        flags: u32_at(t, 112).ok_or_else(short)?,
        iapc_boot_arch: u16_at(t, 109).ok_or_else(short)?,
        dsdt: if x_dsdt != 0 { x_dsdt } else { dsdt32 },
        reset_reg: Gas::at(t, 116).ok_or_else(short)?,
        reset_value: *t.get(128).ok_or_else(short)?,
        sleep_control: Gas::at(t, 244).ok_or_else(short)?,
        sleep_status: Gas::at(t, 256).ok_or_else(short)?,
    })
}
