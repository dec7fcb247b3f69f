//! The Linux zero page (`struct boot_params`) the VMM hands over in `rsi`.

use core::ops::Range;

use super::cmdline::Cmdline;

const ZERO_PAGE_SIZE: usize = 4096;
// Field offsets. petrel places everything below 4 GiB, so the `ext_*` high halves are unused.
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const CMDLINE_SIZE: usize = 0x238;
const ACPI_RSDP_ADDR: usize = 0x070;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const E820_ENTRY_SIZE: usize = 20;
const E820_MAX_ENTRIES: usize = 128;
/// Scan at most this far for the command line's NUL when `cmdline_size` is not set.
const CMDLINE_MAX: usize = 4096;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One e820 memory-map entry.
#[derive(Clone, Copy, Debug)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr.saturating_add(self.size)
    }
}

/// The initial ramdisk the VMM loaded.
pub struct Initrd {
    pub addr: u64,
    pub data: &'static [u8],
}

/// A view of the zero page.
pub struct BootParams {
    base: *const u8,
}

impl BootParams {
    /// # Safety
    /// `addr` must be the zero page: 4 KiB of identity-mapped memory that nothing writes while
    /// the guest runs, whose command-line pointer (or 0), e820 table and initrd range are
    /// likewise valid identity-mapped memory that nothing writes.
    pub unsafe fn from_addr(addr: u64) -> Self {
        BootParams {
            base: addr as *const u8,
        }
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        assert!(offset + size_of::<T>() <= ZERO_PAGE_SIZE);
        // SAFETY: in bounds of the zero page (asserted), which `from_addr`'s contract makes
        // readable; `read_unaligned` copes with the packed layout.
        unsafe { self.base.add(offset).cast::<T>().read_unaligned() }
    }

    /// The kernel command line (empty when the VMM passed none). Bytes after the first invalid
    /// UTF-8 sequence are dropped.
    pub fn cmdline(&self) -> Cmdline {
        let ptr = self.read::<u32>(CMD_LINE_PTR) as usize as *const u8;
        if ptr.is_null() {
            return Cmdline::new("");
        }
        let max = match self.read::<u32>(CMDLINE_SIZE) as usize {
            0 => CMDLINE_MAX,
            size => size,
        };
        // SAFETY: the VMM's command line is valid, unwritten memory, NUL-terminated within
        // `max` bytes (`from_addr`'s contract); reading stops at the NUL or at `max`.
        let len = (0..max)
            .find(|&i| unsafe { ptr.add(i).read() } == 0)
            .unwrap_or(max);
        // SAFETY: the `len` bytes just scanned are valid and never written (see above).
        let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
        let text = match core::str::from_utf8(bytes) {
            Ok(text) => text,
            // Cannot fail: the prefix up to `valid_up_to` is valid UTF-8.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        Cmdline::new(text)
    }

    /// Where the ACPI RSDP is (boot protocol 2.14's `acpi_rsdp_addr`), if the VMM said.
    pub fn acpi_rsdp_addr(&self) -> Option<u64> {
        Some(self.read::<u64>(ACPI_RSDP_ADDR)).filter(|&addr| addr != 0)
    }

    /// The e820 memory map, in table order.
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let count = usize::from(self.read::<u8>(E820_ENTRIES)).min(E820_MAX_ENTRIES);
        (0..count).map(move |i| {
            let entry = E820_TABLE + i * E820_ENTRY_SIZE;
            E820Entry {
                addr: self.read(entry),
                size: self.read(entry + 8),
                kind: self.read(entry + 16),
            }
        })
    }

    /// The initrd, if the VMM loaded one (`ramdisk_size` != 0).
    pub fn initrd(&self) -> Option<Initrd> {
        let addr = u64::from(self.read::<u32>(RAMDISK_IMAGE));
        let size = self.read::<u32>(RAMDISK_SIZE) as usize;
        if size == 0 {
            return None;
        }
        // SAFETY: the initrd range is valid, identity-mapped memory nothing writes
        // (`from_addr`'s contract; the page allocator keeps clear of it).
        let data = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, size) };
        Some(Initrd { addr, data })
    }

    /// Guest-physical ranges the zero page points at (command line, initrd) that the page
    /// allocator must not hand out.
    pub fn referenced_ranges(&self) -> [Range<u64>; 2] {
        let cmdline = self.cmdline().as_str();
        let cmdline_addr = cmdline.as_ptr() as u64;
        // Include the NUL.
        let cmdline = cmdline_addr..cmdline_addr + cmdline.len() as u64 + 1;
        let initrd = self
            .initrd()
            .map_or(0..0, |i| i.addr..i.addr + i.data.len() as u64);
        [cmdline, initrd]
    }
}
