//! ACPI tables for a hardware-reduced machine, built with rust-vmm's `acpi_tables`: the RSDP,
//! the XSDT, the FADT, the MADT and the DSDT, plus whatever other tables the caller hands
//! over (the SRAT and SLIT of a NUMA machine). See `docs/acpi.md`.
//!
//! They live in `[ACPI_START, ACPI_END)`, which the e820 map reserves: the RSDP at
//! `ACPI_START` (16-byte aligned in the area legacy scans search; the zero page also points at
//! it), then the XSDT and every other table, each 16-byte aligned.

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, ACPI_START};
use crate::device_manager::allocator::DeviceSlot;

pub mod dsdt;
mod fadt;
mod ged;
mod madt;
pub mod numa;

/// The OEM id of every table.
pub const OEM_ID: [u8; 6] = *b"PETREL";
/// The OEM table id of every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"PETRELVM";
/// The OEM revision of every table.
pub const OEM_REVISION: u32 = 1;
const TABLE_ALIGN: u64 = 16;
/// Length of a table header, which the XSDT's entries follow.
const HEADER_LEN: u64 = 36;

/// What the tables describe.
pub struct AcpiInput<'a> {
    /// vCPUs, with APIC ids 0..vcpus.
    pub vcpus: u32,
    /// The virtio-mmio devices, in the order the guest sees them.
    pub virtio: &'a [DeviceSlot],
    /// The Generic Event Device that carries the power button, if the machine has one.
    pub ged: Option<DeviceSlot>,
    /// More tables for the XSDT to list, each complete with its header and checksum: the
    /// SRAT and SLIT of a NUMA machine.
    pub extra: &'a [&'a dyn Aml],
}

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A device window a 32-bit ACPI memory descriptor cannot name.
    #[error(
        "the device window at {base:#x} ({len:#x} bytes) does not fit a 32-bit ACPI descriptor"
    )]
    Window { base: u64, len: u64 },
    /// More devices than the DSDT's names allow.
    #[error("{0} devices are more than the DSDT can name")]
    TooManyDevices(usize),
    /// The tables do not fit their area.
    #[error("the ACPI tables ({size} bytes) do not fit the {room} bytes set aside for them")]
    TooLarge { size: u64, room: u64 },
    /// Writing guest memory failed.
    #[error("cannot write the ACPI tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The tables, laid out: each one's guest address and bytes.
pub struct AcpiTables {
    /// Where the RSDP is.
    pub rsdp: u64,
    /// Every table (the RSDP first) with its address.
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    out
}

/// Builds every table for `input`, placed from `ACPI_START`.
pub fn build(input: &AcpiInput) -> Result<AcpiTables, AcpiError> {
    let align = |addr: u64| addr.next_multiple_of(TABLE_ALIGN);
    let xsdt_addr = align(ACPI_START + Rsdp::len() as u64);
    // The XSDT lists the FADT, the MADT and the extra tables; the FADT points at the DSDT.
    let listed = 2 + input.extra.len() as u64;
    let mut next = align(xsdt_addr + HEADER_LEN + 8 * listed);
    let mut place = |table: Vec<u8>| {
        let addr = next;
        next = align(addr + table.len() as u64);
        (addr, table)
    };
    let dsdt = place(
        dsdt::build(input.virtio, input.ged.as_ref())?
            .as_slice()
            .to_vec(),
    );
    let fadt = place(bytes(&fadt::build(dsdt.0)));
    let madt = place(madt::build(input.vcpus).as_slice().to_vec());
    let extra: Vec<_> = input.extra.iter().map(|t| place(bytes(*t))).collect();
    let end = next;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for (addr, _) in [&fadt, &madt].into_iter().chain(&extra) {
        xsdt.add_entry(*addr);
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    let mut tables = vec![
        (ACPI_START, bytes(&rsdp)),
        (xsdt_addr, bytes(&xsdt)),
        dsdt,
        fadt,
        madt,
    ];
    tables.extend(extra);
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            size: end - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }
    Ok(AcpiTables {
        rsdp: ACPI_START,
        tables,
    })
}

/// Writes the tables for `input` into guest memory; returns the RSDP's address.
pub fn setup(mem: &GuestMemoryMmap, input: &AcpiInput) -> Result<u64, AcpiError> {
    let built = build(input)?;
    for (addr, table) in &built.tables {
        mem.write_slice(table, GuestAddress(*addr))?;
    }
    Ok(built.rsdp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::x86_64::bootparams::{e820_map, E820_RAM};
    use crate::arch::x86_64::layout::*;
    use crate::arch::x86_64::mptable;
    use acpi_tables::sdt::Sdt;
    use memory::MemoryLayout;

    pub fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    pub fn aml(t: &dyn Aml) -> Vec<u8> {
        bytes(t)
    }

    /// The MADT's interrupt controller structures.
    pub fn structures(madt: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = madt[at + 1] as usize;
            out.push(madt[at..at + len].to_vec());
            at += len;
        }
        out
    }

    fn slots(n: u64) -> Vec<DeviceSlot> {
        (0..n)
            .map(|i| DeviceSlot {
                base: 0xc000_0000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i as u32,
            })
            .collect()
    }

    fn ged_slot() -> DeviceSlot {
        DeviceSlot {
            base: 0xc001_0000,
            len: 0x1000,
            irq: 23,
        }
    }

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        &t.tables
            .iter()
            .find(|(a, _)| *a == addr)
            .expect("a table there")
            .1
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn rsdp_points_at_an_xsdt_listing_fadt_and_madt_and_fadt_at_the_dsdt() {
        let t = build(&AcpiInput {
            vcpus: 2,
            virtio: &slots(3),
            ged: Some(ged_slot()),
            extra: &[],
        })
        .unwrap();
        assert_eq!(t.rsdp, 0xe0000);
        let rsdp = table_at(&t, t.rsdp);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let listed: Vec<&[u8]> = xsdt[36..]
            .chunks(8)
            .map(|e| &table_at(&t, u64::from_le_bytes(e.try_into().unwrap()))[..4])
            .collect();
        assert_eq!(listed, [b"FACP", b"APIC"]);
        let fadt = table_at(&t, u64_at(xsdt, 36));
        assert_eq!(&table_at(&t, u64_at(fadt, 140))[..4], b"DSDT");
        let mut placed: Vec<_> = t
            .tables
            .iter()
            .map(|(a, b)| (*a, *a + b.len() as u64))
            .collect();
        placed.sort();
        assert!(
            placed.windows(2).all(|w| w[0].1 <= w[1].0),
            "tables overlap: {placed:x?}"
        );
        for (addr, table) in &t.tables[1..] {
            assert_eq!(addr % 16, 0);
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap());
            assert_eq!(len as usize, table.len());
            assert!(checksum_ok(table), "{:?}", &table[..4]);
        }
    }

    #[test]
    fn extra_tables_are_listed_after_petrels_own() {
        let srat = Sdt::new(*b"SRAT", 48, 3, OEM_ID, OEM_TABLE_ID, 1);
        let slit = Sdt::new(*b"SLIT", 44, 1, OEM_ID, OEM_TABLE_ID, 1);
        let t = build(&AcpiInput {
            vcpus: 1,
            virtio: &[],
            ged: None,
            extra: &[&srat, &slit],
        })
        .unwrap();
        let xsdt = table_at(&t, u64_at(table_at(&t, t.rsdp), 24));
        assert!(checksum_ok(xsdt));
        let listed: Vec<&[u8]> = xsdt[36..]
            .chunks(8)
            .map(|e| &table_at(&t, u64::from_le_bytes(e.try_into().unwrap()))[..4])
            .collect();
        assert_eq!(listed, [b"FACP", b"APIC", b"SRAT", b"SLIT"]);
    }

    #[test]
    fn the_largest_machine_fits_with_room_for_numa_tables() {
        let numa = Sdt::new(*b"SRAT", 16 * 1024, 3, OEM_ID, OEM_TABLE_ID, 1);
        let t = build(&AcpiInput {
            vcpus: crate::config::MAX_VCPUS,
            virtio: &slots(
                crate::device_manager::allocator::ResourceAllocator::max_devices() as u64 - 1,
            ),
            ged: Some(ged_slot()),
            extra: &[&numa],
        })
        .unwrap();
        let (last, bytes) = t.tables.last().unwrap();
        assert!(last + bytes.len() as u64 <= ACPI_END);
        let huge = Sdt::new(*b"SRAT", 64 * 1024, 3, OEM_ID, OEM_TABLE_ID, 1);
        let too_much = build(&AcpiInput {
            vcpus: 1,
            virtio: &[],
            ged: None,
            extra: &[&huge],
        });
        assert!(matches!(too_much, Err(AcpiError::TooLarge { .. })));
    }

    #[test]
    fn the_acpi_area_is_reserved_and_overlaps_no_other_boot_structure() {
        let acpi = ACPI_START..ACPI_END;
        let mp_len = mptable::build(crate::config::MAX_VCPUS, MPTABLE_ADDR)
            .unwrap()
            .len() as u64;
        let others = [
            ("GDT and IDT", GDT_ADDR..IDT_ADDR + 8),
            ("zero page", ZERO_PAGE_ADDR..ZERO_PAGE_ADDR + 0x1000),
            (
                "boot stack",
                BOOT_STACK_POINTER - 0x1000..BOOT_STACK_POINTER,
            ),
            (
                "page tables",
                PML4_ADDR..PD_ADDR + IDENTITY_MAP_GIB * 0x1000,
            ),
            (
                "command line",
                CMDLINE_ADDR..CMDLINE_ADDR + CMDLINE_MAX_SIZE,
            ),
            ("EBDA", EBDA_START..EBDA_END),
            ("MP table", MPTABLE_ADDR..MPTABLE_ADDR + mp_len),
            // The kernel loads at HIMEM_START or above, the initrd above the kernel.
            ("kernel and initrd", HIMEM_START..u64::MAX),
        ];
        for (name, r) in others {
            assert!(
                r.end <= acpi.start || r.start >= acpi.end,
                "{name} overlaps"
            );
        }
        assert_eq!(ACPI_START % 16, 0);
        assert!(
            (0xe0000..0x100000).contains(&ACPI_START),
            "legacy RSDP scan area"
        );
        for size in [128 << 20, 5 << 30] {
            let map = e820_map(&MemoryLayout::new(size).unwrap());
            let reserved = map
                .iter()
                .find(|e| e.addr <= acpi.start && acpi.end <= e.addr + e.size)
                .expect("an e820 entry covers the ACPI area");
            assert_ne!(reserved.kind, E820_RAM);
            assert!(map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .all(|e| e.addr + e.size <= acpi.start || e.addr >= acpi.end));
        }
    }

    #[test]
    fn setup_writes_the_tables_into_guest_memory() {
        let mem = MemoryLayout::new(128 << 20).unwrap().allocate().unwrap();
        let rsdp = setup(
            &mem,
            &AcpiInput {
                vcpus: 1,
                virtio: &slots(1),
                ged: None,
                extra: &[],
            },
        )
        .unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
