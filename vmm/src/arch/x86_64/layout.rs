//! Where petrel puts boot structures in guest-physical memory (all below 1 MiB, except the
//! kernel, which goes where it asks, and the initrd, at the top of low RAM).
//!
//! Below 1 MiB: GDT and IDT at 0x500, the zero page at 0x7000, the boot stack in the page at
//! 0x8000, the page tables from 0x9000, the command line at 0x20000, the EBDA at 0x9fc00, the
//! ACPI tables from 0xe0000 and the MP table from 0xf0000. `e820_map` reserves 0xe0000 to
//! 1 MiB; `acpi::tests` checks that none of these overlap.

/// The GDT (entries: null, null, `__BOOT_CS` 0x10, `__BOOT_DS` 0x18, TSS 0x20).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT.
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`); `rsi` points here at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The initial stack pointer (the stack grows down into the page at 0x8000).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 of the identity map; the PDPT and page directories follow it.
pub const PML4_ADDR: u64 = 0x9000;
/// The PDPT of the identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of the page directories, one per GiB identity-mapped.
pub const PD_ADDR: u64 = 0xb000;
/// How much the boot page tables identity-map: the first 4 GiB, in 2 MiB pages.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// The space set aside for the command line, NUL included.
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;
/// Start of the extended BIOS data area: usable RAM below it, reserved from here to 640 KiB.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (the VGA hole starts here).
pub const EBDA_END: u64 = 0xa0000;
/// The ACPI tables: the RSDP first, at the start of the area where legacy scans look for it
/// (0xe0000 to 1 MiB, on a 16-byte boundary), then the XSDT and the tables it lists.
pub const ACPI_START: u64 = 0xe0000;
/// The end of the room for ACPI tables (the MP table follows).
pub const ACPI_END: u64 = BIOS_START;
/// The BIOS area the guest scans for the MP floating pointer.
pub const BIOS_START: u64 = 0xf0000;
/// The MP table lives at the start of the BIOS area.
pub const MPTABLE_ADDR: u64 = BIOS_START;
/// The first address above the legacy hole where a kernel may load.
pub const HIMEM_START: u64 = 0x10_0000;
/// The local APIC's MMIO base.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Interrupt lines of the in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
