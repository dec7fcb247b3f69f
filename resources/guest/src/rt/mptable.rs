//! The Intel MultiProcessor Specification 1.4 table the VMM writes below 1 MiB.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Where the floating pointer structure is searched for (the BIOS ROM area).
const SEARCH_AREA: core::ops::Range<usize> = 0xf_0000..0x10_0000;
const FLOATING_SIZE: usize = 16;
const CONFIG_HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const OTHER_ENTRY_SIZE: usize = 8;
/// Processor entry flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;

/// A processor entry.
#[derive(Clone, Copy)]
pub struct Processor {
    pub apic_id: u8,
    pub enabled: bool,
    pub bsp: bool,
}

/// The parts of the MP configuration table this guest uses.
pub struct MpTable {
    pub processors: Vec<Processor>,
}

impl MpTable {
    /// The processor entries marked enabled.
    pub fn enabled(&self) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(|p| p.enabled)
    }
}

/// `len` bytes of guest-physical memory at `addr`.
///
/// # Safety
/// The range must be identity-mapped memory that nothing writes while the slice lives.
unsafe fn phys(addr: usize, len: usize) -> &'static [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// Finds and parses the MP table, verifying signatures and checksums.
pub fn find() -> Result<MpTable, String> {
    // SAFETY: 0xf0000..0x100000 is guest RAM holding the VMM's MP table (the VMM contract),
    // identity-mapped and never written by the guest.
    let area = unsafe { phys(SEARCH_AREA.start, SEARCH_AREA.len()) };
    let floating = area
        .chunks_exact(FLOATING_SIZE)
        .find(|c| c.starts_with(b"_MP_") && checksum_ok(c))
        .ok_or("no MP floating pointer structure in 0xf0000..0x100000")?;
    let config_addr = u32_at(floating, 4) as usize;
    if config_addr == 0 {
        return Err("the MP floating pointer has no configuration table".into());
    }

    // SAFETY: the floating pointer (checksum verified) points at the VMM's configuration
    // table, in identity-mapped RAM the guest never writes; the header is read first to learn
    // the table's length.
    let header = unsafe { phys(config_addr, CONFIG_HEADER_SIZE) };
    if !header.starts_with(b"PCMP") {
        return Err(format!("no PCMP signature at {config_addr:#x}"));
    }
    let length = usize::from(u16_at(header, 4));
    if length < CONFIG_HEADER_SIZE {
        return Err(format!("MP configuration table too short: {length} bytes"));
    }
    // SAFETY: as above, now for the whole table the header describes.
    let table = unsafe { phys(config_addr, length) };
    if !checksum_ok(table) {
        return Err("bad MP configuration table checksum".into());
    }

    let entry_count = u16_at(header, 34);
    let mut processors = Vec::new();
    let mut offset = CONFIG_HEADER_SIZE;
    for _ in 0..entry_count {
        let kind = *table
            .get(offset)
            .ok_or("MP table entries overrun the table")?;
        let size = match kind {
            0 => PROCESSOR_ENTRY_SIZE,
            1..=4 => OTHER_ENTRY_SIZE,
            _ => return Err(format!("unknown MP table entry type {kind}")),
        };
        let entry = table
            .get(offset..offset + size)
            .ok_or("MP table entries overrun the table")?;
        if kind == 0 {
            let flags = entry[3];
            processors.push(Processor {
                apic_id: entry[1],
                enabled: flags & CPU_ENABLED != 0,
                bsp: flags & CPU_BSP != 0,
            });
        }
        offset += size;
    }
    Ok(MpTable { processors })
}
