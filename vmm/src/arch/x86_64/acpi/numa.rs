//! The SRAT and SLIT of a NUMA machine (ACPI 6.5, 5.2.16 and 5.2.17): which proximity
//! domain (guest node) each vCPU and each RAM range is in, and the distances between them.
//!
//! `acpi_tables` gives the SLIT and the SRAT's memory affinity structure, but its SRAT type
//! has no x86 processor affinity structures, so the SRAT is an `Sdt` with the memory
//! structures from the crate and the processor ones declared here as typed `zerocopy`
//! structs.

use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::srat::MemoryAffinity;
use memory::MemoryLayout;
use zerocopy::byteorder::{LE, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::madt::MAX_XAPIC_ID;
use super::{bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// SRAT revision of ACPI 3.0 and later.
const SRAT_REVISION: u8 = 3;
/// The SRAT's header, then 4 reserved bytes (1, for compatibility) and 8 more reserved.
const SRAT_HEADER_LEN: u32 = 48;
const TYPE_LOCAL_APIC_AFFINITY: u8 = 0;
const TYPE_X2APIC_AFFINITY: u8 = 2;
const AFFINITY_ENABLED: u32 = 1;

/// Processor Local APIC/SAPIC Affinity (type 0, 16 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct LocalApicAffinity {
    r#type: u8,
    length: u8,
    domain_low: u8,
    apic_id: u8,
    flags: U32<LE>,
    sapic_eid: u8,
    domain_high: [u8; 3],
    clock_domain: U32<LE>,
}

/// Processor Local x2APIC Affinity (type 2, 24 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct X2ApicAffinity {
    r#type: u8,
    length: u8,
    reserved: [u8; 2],
    domain: U32<LE>,
    x2apic_id: U32<LE>,
    flags: U32<LE>,
    clock_domain: U32<LE>,
    reserved2: [u8; 4],
}

/// The SRAT: one processor affinity structure per vCPU (APIC id = vCPU index, as in the
/// MADT), in the node `vcpu_node` gives, and one memory affinity structure per RAM range of
/// `layout`, in the range's node.
pub fn srat(layout: &MemoryLayout, vcpus: u32, vcpu_node: impl Fn(u32) -> u32) -> Sdt {
    let mut srat = Sdt::new(
        *b"SRAT",
        SRAT_HEADER_LEN,
        SRAT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // The first reserved field is 1 "for backward compatibility".
    srat.write_u32(36, 1);
    for id in 0..vcpus {
        let domain = vcpu_node(id);
        match u8::try_from(id) {
            Ok(apic_id) if id <= MAX_XAPIC_ID => {
                let [low, high @ ..] = domain.to_le_bytes();
                srat.append(LocalApicAffinity {
                    r#type: TYPE_LOCAL_APIC_AFFINITY,
                    length: 16,
                    domain_low: low,
                    apic_id,
                    flags: AFFINITY_ENABLED.into(),
                    sapic_eid: 0,
                    domain_high: high,
                    clock_domain: 0.into(),
                })
            }
            _ => srat.append(X2ApicAffinity {
                r#type: TYPE_X2APIC_AFFINITY,
                length: 24,
                reserved: [0; 2],
                domain: domain.into(),
                x2apic_id: id.into(),
                flags: AFFINITY_ENABLED.into(),
                clock_domain: 0.into(),
                reserved2: [0; 4],
            }),
        }
    }
    for range in &layout.ram {
        let affinity = MemoryAffinity::new(range.node, range.start, range.len).enabled();
        srat.append_slice(&bytes(&affinity));
    }
    srat
}

/// The SLIT of `matrix` (row `i`, column `j`: the distance from node `i` to node `j`, which
/// the configuration keeps symmetric).
pub fn slit(matrix: &[Vec<u8>]) -> SLIT {
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, matrix.len() as u32);
    for (i, row) in matrix.iter().enumerate() {
        for (j, &distance) in row.iter().enumerate().skip(i) {
            slit.set_distance(i, j, distance);
        }
    }
    slit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::acpi::tests::{aml, checksum_ok};

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn structures(srat: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = SRAT_HEADER_LEN as usize;
        while at < srat.len() {
            let len = srat[at + 1] as usize;
            out.push(&srat[at..at + len]);
            at += len;
        }
        out
    }

    #[test]
    fn srat_lists_every_vcpu_and_ram_range_in_its_node() {
        // Node 0: 2 GiB from 0; node 1 crosses the gap at 3 GiB, so it has two ranges.
        let layout = MemoryLayout::with_nodes(&[2 << 30, 2 << 30]).unwrap();
        let table = srat(&layout, 4, |cpu| cpu / 2);
        let b = table.as_slice();
        assert_eq!(&b[..4], b"SRAT");
        assert!(checksum_ok(b));
        assert_eq!(u32_at(b, 4) as usize, b.len());
        assert_eq!(u32_at(b, 36), 1);
        let s = structures(b);
        let cpus: Vec<(u8, u32)> = s
            .iter()
            .filter(|s| s[0] == 0)
            .map(|s| {
                (
                    s[3],
                    u32::from(s[2]) | u32::from_le_bytes([0, s[9], s[10], s[11]]),
                )
            })
            .collect();
        assert_eq!(cpus, [(0, 0), (1, 0), (2, 1), (3, 1)]);
        let mem: Vec<(u32, u64, u64, u32)> = s
            .iter()
            .filter(|s| s[0] == 1)
            .map(|s| (u32_at(s, 2), u64_at(s, 8), u64_at(s, 16), u32_at(s, 28)))
            .collect();
        assert_eq!(
            mem,
            [
                (0, 0, 2 << 30, 1),
                (1, 2 << 30, 1 << 30, 1),
                (1, 4 << 30, 1 << 30, 1),
            ]
        );
    }

    #[test]
    fn srat_uses_x2apic_affinity_from_apic_id_255() {
        let layout = MemoryLayout::with_nodes(&[64 << 20, 64 << 20]).unwrap();
        let table = srat(&layout, 256, |cpu| cpu % 2);
        let b = table.as_slice();
        assert!(checksum_ok(b));
        let s = structures(b);
        assert_eq!(s.iter().filter(|s| s[0] == 0).count(), 255);
        let x2: Vec<(u32, u32)> = s
            .iter()
            .filter(|s| s[0] == 2)
            .map(|s| (u32_at(s, 8), u32_at(s, 4)))
            .collect();
        assert_eq!(x2, [(255, 1)]);
    }

    #[test]
    fn slit_is_the_matrix() {
        let matrix = vec![vec![10, 20, 30], vec![20, 10, 25], vec![30, 25, 10]];
        let b = aml(&slit(&matrix));
        assert_eq!(&b[..4], b"SLIT");
        assert!(checksum_ok(&b));
        assert_eq!(u64_at(&b, 36), 3);
        assert_eq!(&b[44..], [10, 20, 30, 20, 10, 25, 30, 25, 10]);
    }
}
