//! The MADT: processors' local APICs and x2APICs, IOAPICs, interrupt source overrides and
//! NMI inputs (ACPI 6.5, 5.2.12).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{u16_at, u32_at, Table};

const ENABLED: u32 = 1;

/// A processor's interrupt controller (a local APIC or x2APIC structure).
#[derive(Clone, Copy)]
pub struct Cpu {
    pub apic_id: u32,
    pub uid: u32,
    pub enabled: bool,
    pub x2apic: bool,
}

#[derive(Clone, Copy)]
pub struct IoApic {
    pub id: u8,
    pub addr: u32,
    pub gsi_base: u32,
}

#[derive(Clone, Copy)]
pub struct Override {
    pub bus: u8,
    pub source: u8,
    pub gsi: u32,
    /// MPS INTI flags: polarity in bits 1:0, trigger mode in bits 3:2 (0 = conforming).
    pub flags: u16,
}

/// A local APIC NMI input (`uid` 0xff, or u32::MAX for x2APICs, means every processor).
#[derive(Clone, Copy)]
pub struct Nmi {
    pub uid: u32,
    pub flags: u16,
    pub lint: u8,
}

pub struct Madt {
    pub local_apic_addr: u32,
    pub flags: u32,
    pub cpus: Vec<Cpu>,
    pub ioapics: Vec<IoApic>,
    pub overrides: Vec<Override>,
    pub nmis: Vec<Nmi>,
}

/// Decodes the MADT's structures; unknown types are skipped, a structure that overruns the
/// table is an error.
pub fn parse(table: Table) -> Result<Madt, String> {
    let t = table.bytes;
    let mut madt = Madt {
        local_apic_addr: u32_at(t, 36).ok_or("MADT too short")?,
        flags: u32_at(t, 40).ok_or("MADT too short")?,
        cpus: Vec::new(),
        ioapics: Vec::new(),
        overrides: Vec::new(),
        nmis: Vec::new(),
    };
    let mut at = 44;
    while at < t.len() {
        let kind = t[at];
        let len = usize::from(
            *t.get(at + 1)
                .ok_or("MADT structure header overruns the table")?,
        );
        let s = t
            .get(at..at + len)
            .filter(|_| len >= 2)
            .ok_or_else(|| format!("MADT structure of type {kind} at offset {at} is malformed"))?;
        let short = || format!("MADT structure of type {kind} is too short ({len} bytes)");
        match kind {
            0 => {
                let flags = u32_at(s, 4).ok_or_else(short)?;
                madt.cpus.push(Cpu {
                    uid: u32::from(s[2]),
                    apic_id: u32::from(s[3]),
                    enabled: flags & ENABLED != 0,
                    x2apic: false,
                });
            }
            1 => madt.ioapics.push(IoApic {
                id: *s.get(2).ok_or_else(short)?,
                addr: u32_at(s, 4).ok_or_else(short)?,
                gsi_base: u32_at(s, 8).ok_or_else(short)?,
            }),
            2 => madt.overrides.push(Override {
                bus: *s.get(2).ok_or_else(short)?,
                source: *s.get(3).ok_or_else(short)?,
                gsi: u32_at(s, 4).ok_or_else(short)?,
                flags: u16_at(s, 8).ok_or_else(short)?,
            }),
            4 => madt.nmis.push(Nmi {
                uid: u32::from(*s.get(2).ok_or_else(short)?),
                flags: u16_at(s, 3).ok_or_else(short)?,
                lint: *s.get(5).ok_or_else(short)?,
            }),
            9 => {
                let flags = u32_at(s, 8).ok_or_else(short)?;
                madt.cpus.push(Cpu {
                    apic_id: u32_at(s, 4).ok_or_else(short)?,
                    uid: u32_at(s, 12).ok_or_else(short)?,
                    enabled: flags & ENABLED != 0,
                    x2apic: true,
                });
            }
            0xa => madt.nmis.push(Nmi {
                flags: u16_at(s, 2).ok_or_else(short)?,
                uid: u32_at(s, 4).ok_or_else(short)?,
                lint: *s.get(8).ok_or_else(short)?,
            }),
            _ => {}
        }
        at += len;
    }
    Ok(madt)
}
