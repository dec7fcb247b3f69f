//! The zero page (`struct boot_params`) of the Linux boot protocol and its e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use memory::MemoryLayout;

use super::layout::{ACPI_START, EBDA_END, EBDA_START, HIMEM_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const NORMAL_VGA: u16 = 0xffff;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a layout: RAM below the EBDA, the EBDA reserved, the ACPI tables and the
/// BIOS area (MP table) reserved, RAM from 1 MiB to the MMIO gap, and RAM above 4 GiB.
pub fn e820_map(layout: &MemoryLayout) -> Vec<E820Entry> {
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let reserved = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RESERVED,
    };
    let mut map = vec![
        ram(0, EBDA_START),
        reserved(EBDA_START, EBDA_END),
        reserved(ACPI_START, HIMEM_START),
    ];
    for r in &layout.ram {
        let start = r.start.max(HIMEM_START);
        if r.end() > start {
            map.push(ram(start, r.end()));
        }
    }
    map
}

/// What the zero page needs to know.
pub struct ZeroPageInput<'a> {
    /// The bzImage's setup header, or None for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// The e820 map.
    pub e820: &'a [E820Entry],
    /// Guest address of the ACPI RSDP, when there are ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Errors building the zero page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    /// The e820 map has more entries than the zero page holds.
    #[error("the e820 map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
}

/// Fills a zero page per Documentation/arch/x86/boot.rst for the 64-bit entry.
pub fn zero_page(input: &ZeroPageInput) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    match input.setup_header {
        // bzImage: the kernel's own setup header, with the loader's fields filled in.
        Some(hdr) => params.hdr = hdr,
        // ELF: a header that says "a boot loader filled this in".
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.vid_mode = NORMAL_VGA;
    // `cmdline_size` is the kernel's to state, not the loader's: it stays as the kernel set it.
    params.hdr.cmd_line_ptr = input.cmdline_addr as u32;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if input.e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(input.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(input.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = input.e820.len() as u8;
    // Boot protocol 2.14: where the RSDP is, so the kernel need not scan for it.
    params.acpi_rsdp_addr = input.acpi_rsdp.unwrap_or(0);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_of_a_small_guest() {
        let map = e820_map(&MemoryLayout::new(128 << 20).unwrap());
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: 1
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x400,
                    kind: 2
                },
                E820Entry {
                    addr: 0xe0000,
                    size: 0x20000,
                    kind: 2
                },
                E820Entry {
                    addr: 0x100000,
                    size: (128 << 20) - 0x100000,
                    kind: 1
                },
            ]
        );
    }

    #[test]
    fn e820_of_a_guest_above_4g_skips_the_mmio_gap() {
        let map = e820_map(&MemoryLayout::new(5 << 30).unwrap());
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 0x100000,
                size: (3 << 30) - 0x100000,
                kind: 1
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 << 30,
                size: 2 << 30,
                kind: 1
            }
        );
    }

    #[test]
    fn zero_page_for_elf_has_a_loader_header_and_the_map() {
        let e820 = e820_map(&MemoryLayout::new(128 << 20).unwrap());
        let p = zero_page(&ZeroPageInput {
            setup_header: None,
            cmdline_addr: 0x20000,
            initrd: Some((0x700_0000, 0x1234)),
            e820: &e820,
            acpi_rsdp: Some(0xe0000),
        })
        .unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.e820_table[3].addr }, 0x100000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
    }

    #[test]
    fn zero_page_keeps_a_bzimage_header() {
        let hdr = setup_header {
            version: 0x20f,
            setup_sects: 27,
            ..Default::default()
        };
        let p = zero_page(&ZeroPageInput {
            setup_header: Some(hdr),
            cmdline_addr: 0x20000,
            initrd: None,
            e820: &[],
            acpi_rsdp: None,
        })
        .unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }
}
