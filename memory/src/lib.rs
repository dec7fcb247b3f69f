//! Guest memory: the layout of RAM around the 32-bit MMIO gap, and its allocation as
//! `GuestMemoryMmap` with a dirty bitmap so that every write the VMM makes is logged.
//!
//! For snapshots: guest RAM as one flat "RAM offset space" (the regions in order) with page
//! sets over it (`dirty`), the pages ever touched (`resident_pages`), the VMM's own writes
//! (`take_vmm_dirty`; KVM's log of the guest's writes is read in `vmm::vstate::vm`), RAM as
//! byte slices (`ram_slices`) or raw regions (`ram_regions`), and guest memory mapped copy-on-write from a snapshot's memory
//! file (`MemoryLayout::map_file`).
//!
//! Later issues add memfd backing and NUMA zones with host binding.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryRegion};

mod dirty;
mod file;
mod layout;
mod resident;
mod slices;

pub use dirty::{
    count_pages, empty_page_set, or_page_set_at, pages_in, ram_pages, region_pages_in_ram,
    take_vmm_dirty, union_into,
};
pub use file::shared_file;
pub use layout::{MemoryLayout, RamRange};
pub use resident::resident_pages;
pub use slices::{ram_regions, ram_slices, ram_slices_mut};

pub use vm_memory;

/// Guest memory as petrel uses it everywhere: mmap-backed, with a dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// The page size the dirty bitmap tracks.
pub const PAGE_SIZE: usize = 4096;

/// Start of the 32-bit MMIO gap: RAM stops here and resumes at 4 GiB.
pub const MMIO32_START: u64 = 3 << 30;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO32_END: u64 = 1 << 32;
/// Where RAM above the gap begins.
pub const HIGH_RAM_START: u64 = MMIO32_END;
/// The smallest guest petrel builds.
pub const MIN_MEMORY: u64 = 16 << 20;
/// The largest guest petrel builds (1 TiB): well inside 48-bit physical addressing.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Errors from laying out or allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is outside what petrel supports or not page-aligned.
    #[error("memory size {size} bytes is invalid: {reason}")]
    InvalidSize { size: u64, reason: &'static str },
    /// The host could not give us the memory.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory refused the region set.
    #[error("cannot build guest memory: {0}")]
    Build(#[from] vm_memory::GuestRegionCollectionError),
    /// A region could not be placed at its guest address.
    #[error("cannot place a {len:#x}-byte region at guest address {start:#x}")]
    Place { start: u64, len: u64 },
    /// A memory file's data offset is not a multiple of the page size.
    #[error("memory file offset {offset:#x} is not a multiple of 4 KiB")]
    UnalignedFileOffset { offset: u64 },
    /// A memory file ends before the guest's memory does.
    #[error(
        "memory file is {len} bytes, guest memory needs {needed} (offset {offset} + size {size})"
    )]
    FileTooShort {
        len: u64,
        needed: u64,
        offset: u64,
        size: u64,
    },
    /// The memory file's length could not be read.
    #[error("cannot read the memory file's length: {0}")]
    FileMetadata(#[source] std::io::Error),
    /// A memfd for shared guest memory could not be made.
    #[error("cannot create shared guest memory (memfd): {0}")]
    Memfd(#[source] std::io::Error),
    /// A file offered as shared guest memory could be resized under the mapping (it lacks
    /// `F_SEAL_SHRINK` or `F_SEAL_GROW`) or is not exactly the guest's memory size.
    #[error(
        "refusing shared guest memory file: it must be sealed with F_SEAL_SHRINK | F_SEAL_GROW \
         (has seals {seals:#x}) and be exactly {size} bytes (is {len}); a file its sender could \
         truncate would make guest memory accesses fault with SIGBUS"
    )]
    SharedFileRefused { seals: i32, len: u64, size: u64 },
    /// A region of the memory file could not be mapped.
    #[error("cannot map {size} bytes of the memory file at offset {offset}: {source}")]
    MapFile {
        offset: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Finding which pages of guest memory hold data failed.
    #[error("cannot find the touched pages of guest memory ({what}): {source}")]
    Residency {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The host address and length of every region, for registering memory slots with KVM.
pub fn host_regions(mem: &GuestMemoryMmap) -> Vec<(GuestAddress, u64, u64)> {
    use vm_memory::GuestMemoryBackend;
    mem.iter()
        .map(|r| (r.start_addr(), r.len(), r.as_ptr() as u64))
        .collect()
}
