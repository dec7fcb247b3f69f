//! The MADT ("APIC"): every vCPU's local APIC (x2APIC for ids of 255 and up), the IOAPIC,
//! the ISA interrupt routing and the LINT1 NMI, the same machine the MP table describes.
//!
//! `acpi_tables` gives the table (`Sdt`), the local APIC and the IOAPIC structures; it has no
//! type for the interrupt source override, the NMI or the x2APIC structures, so they are
//! declared here as typed `zerocopy` structs (ACPI 6.5, 5.2.12).

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use zerocopy::byteorder::{LE, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::x86_64::layout::{APIC_ADDR, IOAPIC_ADDR};
use crate::arch::x86_64::mptable;

/// MADT revision of ACPI 6.5.
const MADT_REVISION: u8 = 5;
/// MADT flags: the machine also has dual 8259 PICs (KVM's irqchip has them).
const PCAT_COMPAT: u32 = 1;
/// The largest id a (non-x2) local APIC structure may carry; 255 is the broadcast id.
pub(super) const MAX_XAPIC_ID: u32 = 254;
/// MPS INTI flags: polarity and trigger "conforming to the bus" (ISA: active high, edge),
/// what the MP table's interrupt entries say.
const INTI_CONFORMING: u16 = 0;
/// The local APIC input that takes NMI, as in the MP table.
const NMI_LINT: u8 = 1;
/// "Every processor" in the NMI structures.
const ALL_PROCESSORS_UID: u8 = 0xff;
const ALL_X2_PROCESSORS_UID: u32 = u32::MAX;
const LOCAL_APIC_ENABLED: u32 = 1;

const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;

/// Interrupt Source Override (type 2): ISA `source` is `gsi` on the IOAPIC.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32<LE>,
    flags: U16<LE>,
}

/// Local APIC NMI (type 4).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: U16<LE>,
    lint: u8,
}

/// Processor Local x2APIC (type 9).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct LocalX2Apic {
    r#type: u8,
    length: u8,
    reserved: U16<LE>,
    x2apic_id: U32<LE>,
    flags: U32<LE>,
    processor_uid: U32<LE>,
}

/// Local x2APIC NMI (type 0xA).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable, FromBytes)]
struct LocalX2ApicNmi {
    r#type: u8,
    length: u8,
    flags: U16<LE>,
    processor_uid: U32<LE>,
    lint: u8,
    reserved: [u8; 3],
}

fn len_of<T>() -> u8 {
    // Every structure here is a few bytes long.
    size_of::<T>() as u8
}

/// The MADT of a machine with `vcpus` vCPUs whose APIC ids are 0..vcpus.
pub fn build(vcpus: u32) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, APIC_ADDR as u32);
    madt.write_u32(40, PCAT_COMPAT);
    for id in 0..vcpus {
        match u8::try_from(id) {
            Ok(id8) if id <= MAX_XAPIC_ID => madt
                .append_slice(ProcessorLocalApic::new(id8, id8, EnabledStatus::Enabled).as_bytes()),
            _ => madt.append(LocalX2Apic {
                r#type: TYPE_LOCAL_X2APIC,
                length: len_of::<LocalX2Apic>(),
                reserved: 0.into(),
                x2apic_id: id.into(),
                flags: LOCAL_APIC_ENABLED.into(),
                processor_uid: id.into(),
            }),
        }
    }
    madt.append_slice(IoApic::new(mptable::ioapic_id(vcpus), IOAPIC_ADDR as u32, 0).as_bytes());
    // KVM's default GSI routing sends ISA IRQ n (the PIT's IRQ 0 included) to IOAPIC pin n,
    // which is what the MP table says too. The override states that for IRQ 0 explicitly; an
    // IRQ 0 -> GSI 2 override (QEMU's, which re-routes GSI 0 to pin 2) would be false here.
    madt.append(InterruptSourceOverride {
        r#type: TYPE_INTERRUPT_SOURCE_OVERRIDE,
        length: len_of::<InterruptSourceOverride>(),
        bus: 0,
        source: 0,
        gsi: 0.into(),
        flags: INTI_CONFORMING.into(),
    });
    madt.append(LocalApicNmi {
        r#type: TYPE_LOCAL_APIC_NMI,
        length: len_of::<LocalApicNmi>(),
        processor_uid: ALL_PROCESSORS_UID,
        flags: INTI_CONFORMING.into(),
        lint: NMI_LINT,
    });
    if vcpus > MAX_XAPIC_ID + 1 {
        madt.append(LocalX2ApicNmi {
            r#type: TYPE_LOCAL_X2APIC_NMI,
            length: len_of::<LocalX2ApicNmi>(),
            flags: INTI_CONFORMING.into(),
            processor_uid: ALL_X2_PROCESSORS_UID.into(),
            lint: NMI_LINT,
            reserved: [0; 3],
        });
    }
    madt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::acpi::tests::{checksum_ok, structures};

    #[test]
    fn one_local_apic_per_vcpu_then_the_ioapic_override_and_nmi() {
        let madt = build(4);
        let t = madt.as_slice();
        assert!(checksum_ok(t));
        assert_eq!(&t[..4], b"APIC");
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(u32::from_le_bytes(t[40..44].try_into().unwrap()), 1);
        let s = structures(t);
        assert_eq!(s.len(), 4 + 3);
        for (i, e) in s[..4].iter().enumerate() {
            assert_eq!(e, &[0, 8, i as u8, i as u8, 1, 0, 0, 0]);
        }
        assert_eq!(s[4], [1, 12, 4, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        assert_eq!(s[5], [2, 10, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s[6], [4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn ids_from_255_are_x2apic_entries_with_an_x2apic_nmi() {
        let madt = build(300);
        let t = madt.as_slice();
        assert!(checksum_ok(t));
        let s = structures(t);
        let lapics = s.iter().filter(|e| e[0] == 0).count();
        let x2apics: Vec<u32> = s
            .iter()
            .filter(|e| e[0] == 9)
            .map(|e| u32::from_le_bytes(e[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(lapics, 255);
        assert_eq!(x2apics, (255..300).collect::<Vec<_>>());
        assert!(s.iter().any(|e| e[0] == 0xa && e.len() == 12));
    }

    #[test]
    fn the_ioapic_has_the_mp_tables_id() {
        for vcpus in [1, 2, 254] {
            let madt = build(vcpus);
            let s = structures(madt.as_slice());
            let ioapic = s.iter().find(|e| e[0] == 1).unwrap();
            assert_eq!(ioapic[2], mptable::ioapic_id(vcpus));
        }
    }
}
