//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI finds every vCPU,
//! the IOAPIC and the ISA interrupt routing. The floating pointer lies at the start of the
//! BIOS area, where guests scan for it, and the configuration table follows it.

use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, BIOS_START, HIMEM_START, IOAPIC_ADDR, IOAPIC_PINS};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MP_SPEC_REV: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
// Family 6 signature and FPU|APIC feature flags, as firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than 8-bit APIC ids can name (the IOAPIC takes the next id).
    #[error("the MP table can describe at most 254 vCPUs, not {0}")]
    TooManyCpus(u32),
    /// The table does not fit in the BIOS area.
    #[error("the MP table ({0} bytes) does not fit in the BIOS area")]
    TooLarge(usize),
    /// Writing guest memory failed.
    #[error("cannot write the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's id: the one after the last vCPU's APIC id (the MADT uses the same).
pub fn ioapic_id(vcpus: u32) -> u8 {
    u8::try_from(vcpus).unwrap_or(u8::MAX)
}

/// The MP table bytes for `vcpus` vCPUs with APIC ids 0..vcpus, to be placed at `addr`.
pub fn build(vcpus: u32, addr: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let ioapic_id = ioapic_id(vcpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus as u8 {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(*b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        // Type, interrupt type, flags (conforming polarity and trigger), bus, bus IRQ,
        // destination IOAPIC, its pin.
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 of every local APIC takes ExtINT, LINT1 takes NMI.
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        0,
    ]);
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ]);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = addr + FLOATING_LEN as u64;
    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend(*b"PCMP");
    header.extend((table_len as u16).to_le_bytes());
    header.extend([MP_SPEC_REV, 0]); // checksum patched below
    header.extend(*b"PETREL  ");
    header.extend(*b"PETREL VM   ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend((APIC_ADDR as u32).to_le_bytes());
    header.extend(0u16.to_le_bytes()); // extended table length
    header.extend([0u8, 0]); // extended checksum, reserved
    header.extend(&entries);
    header[7] = checksum(&header);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend(*b"_MP_");
    floating.extend((table_addr as u32).to_le_bytes());
    floating.extend([1, MP_SPEC_REV, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, rev, checksum, features
    floating[10] = checksum(&floating);

    floating.extend(header);
    Ok(floating)
}

/// Writes the MP table for `vcpus` vCPUs at the start of the BIOS area.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), MptableError> {
    let bytes = build(vcpus, BIOS_START)?;
    if BIOS_START + bytes.len() as u64 > HIMEM_START {
        return Err(MptableError::TooLarge(bytes.len()));
    }
    mem.write_slice(&bytes, GuestAddress(BIOS_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero_and_pointer_points_at_table() {
        let t = build(4, 0xf0000).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0xf0010);
        let len = u16::from_le_bytes(t[20..22].try_into().unwrap()) as usize;
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(len, t.len() - 16);
        assert_eq!(sum(&t[16..]), 0);
    }

    #[test]
    fn lists_every_cpu_with_one_bsp_then_the_ioapic() {
        let t = build(64, 0xf0000).unwrap();
        let entries = &t[16 + 44..];
        let cpus: Vec<&[u8]> = entries[..64 * 20].chunks(20).collect();
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!((c[0], c[1]), (0, i as u8));
            assert_eq!(c[3] & 1, 1, "enabled");
            assert_eq!(c[3] & 2 != 0, i == 0, "only CPU 0 is the BSP");
        }
        let ioapic = &entries[64 * 20 + 8..64 * 20 + 16];
        assert_eq!((ioapic[0], ioapic[1]), (2, 64));
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
        let count = u16::from_le_bytes(t[16 + 34..16 + 36].try_into().unwrap());
        assert_eq!(count, 64 + 2 + 24 + 2);
    }

    #[test]
    fn the_largest_table_fits_the_bios_area() {
        assert!(build(254, 0xf0000).unwrap().len() < 0x10000);
        assert!(matches!(
            build(255, 0xf0000),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(matches!(
            build(0, 0xf0000),
            Err(MptableError::TooManyCpus(0))
        ));
    }
}
