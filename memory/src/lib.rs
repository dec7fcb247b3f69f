//! Guest memory: the layout of RAM around the 32-bit MMIO gap, and its allocation as
//! `GuestMemoryMmap` with a dirty bitmap so that every write the VMM makes is logged.
//!
//! Later issues add file/memfd backing, NUMA zones with host binding, and dirty-page
//! tracking that joins KVM's log with this bitmap.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryRegion};

mod layout;

pub use layout::{MemoryLayout, RamRange};

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
}

/// The host address and length of every region, for registering memory slots with KVM.
pub fn host_regions(mem: &GuestMemoryMmap) -> Vec<(GuestAddress, u64, u64)> {
    use vm_memory::GuestMemoryBackend;
    mem.iter()
        .map(|r| (r.start_addr(), r.len(), r.as_ptr() as u64))
        .collect()
}
