//! The SRAT (ACPI 6.5, 5.2.16: which proximity domain each processor and memory range is in)
//! and the SLIT (5.2.17: the relative distance between domains).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{u32_at, u64_at, Table};

/// Where the SRAT's structures start: the header, 4 reserved bytes (1 for compatibility)
/// and 8 more reserved bytes.
const SRAT_ENTRIES: usize = 48;
const LOCAL_APIC_AFFINITY: u8 = 0;
const MEMORY_AFFINITY: u8 = 1;
const X2APIC_AFFINITY: u8 = 2;
const ENABLED: u32 = 1;

/// A processor's proximity domain.
#[derive(Clone, Copy)]
pub struct CpuAffinity {
    pub apic_id: u32,
    pub domain: u32,
    pub enabled: bool,
    pub x2apic: bool,
}

/// A memory range's proximity domain.
#[derive(Clone, Copy)]
pub struct MemAffinity {
    pub domain: u32,
    pub base: u64,
    pub len: u64,
    /// Bit 0 enabled, bit 1 hot-pluggable, bit 2 non-volatile.
    pub flags: u32,
}

pub struct Srat {
    pub cpus: Vec<CpuAffinity>,
    pub memory: Vec<MemAffinity>,
}

fn field<T>(found: Option<T>, what: &str) -> Result<T, String> {
    found.ok_or_else(|| format!("SRAT: a {what} structure is too short"))
}

/// Decodes the SRAT's processor and memory affinity structures; other types are skipped, a
/// structure that overruns the table (or has a length under 2) is an error.
pub fn parse_srat(table: Table) -> Result<Srat, String> {
    let t = table.bytes;
    let mut srat = Srat {
        cpus: Vec::new(),
        memory: Vec::new(),
    };
    let mut at = SRAT_ENTRIES;
    while at < t.len() {
        let len = *t.get(at + 1).ok_or("SRAT: a structure header is cut off")? as usize;
        let s = t
            .get(at..at + len)
            .filter(|_| len >= 2)
            .ok_or_else(|| format!("SRAT: the structure at offset {at} overruns the table"))?;
        match s[0] {
            LOCAL_APIC_AFFINITY => {
                let high = field(s.get(9..12), "local APIC affinity")?;
                let domain =
                    u32::from(s[2]) | u32::from_le_bytes([0, high[0], high[1], high[2]]);
                srat.cpus.push(CpuAffinity {
                    apic_id: u32::from(*field(s.get(3), "local APIC affinity")?),
                    domain,
                    enabled: field(u32_at(s, 4), "local APIC affinity")? & ENABLED != 0,
                    x2apic: false,
                });
            }
            MEMORY_AFFINITY => srat.memory.push(MemAffinity {
                domain: field(u32_at(s, 2), "memory affinity")?,
                base: field(u64_at(s, 8), "memory affinity")?,
                len: field(u64_at(s, 16), "memory affinity")?,
                flags: field(u32_at(s, 28), "memory affinity")?,
            }),
            X2APIC_AFFINITY => srat.cpus.push(CpuAffinity {
                domain: field(u32_at(s, 4), "x2APIC affinity")?,
                apic_id: field(u32_at(s, 8), "x2APIC affinity")?,
                enabled: field(u32_at(s, 12), "x2APIC affinity")? & ENABLED != 0,
                x2apic: true,
            }),
            _ => {}
        }
        at += len;
    }
    Ok(srat)
}

/// The SLIT's matrix: `distances[i * localities + j]` from domain `i` to domain `j`.
pub struct Slit {
    pub localities: usize,
    pub distances: Vec<u8>,
}

/// Decodes the SLIT; a matrix that does not fit the table is an error.
pub fn parse_slit(table: Table) -> Result<Slit, String> {
    let t = table.bytes;
    let n = u64_at(t, 36).ok_or("SLIT too short")?;
    let cells = n
        .checked_mul(n)
        .filter(|&c| c <= (t.len() as u64).saturating_sub(44))
        .ok_or_else(|| format!("SLIT: {n} localities do not fit its {} bytes", t.len()))?;
    Ok(Slit {
        localities: n as usize,
        distances: t[44..44 + cells as usize].to_vec(),
    })
}
