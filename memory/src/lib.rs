//! Guest memory: the layout of RAM around the 32-bit MMIO gap, and its allocation as
//! `GuestMemoryMmap` with a dirty bitmap so that every write the VMM makes is logged.
//!
//! For snapshots: guest RAM as one flat "RAM offset space" (the regions in order) with page
//! sets over it (`dirty`), the pages ever touched (`resident_pages`), the VMM's own writes
//! (`take_vmm_dirty`; KVM's log of the guest's writes is read in `vmm::vstate::vm`), RAM as
//! byte slices (`ram_slices`) or raw regions (`ram_regions`), and guest memory mapped copy-on-write from a snapshot's memory
//! file (`MemoryLayout::map_file`).
//!
//! NUMA: the layout splits RAM into guest nodes (`MemoryLayout::with_nodes`, each range
//! tagged with its node), and [`numa`] places each node's memory on the host (`mbind` to a
//! host node, 2 MiB huge pages) and reads the host's nodes from sysfs.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryRegion};

mod dirty;
mod file;
mod layout;
pub mod numa;
mod resident;
mod slices;

pub use dirty::{
    count_pages, empty_page_set, or_page_set_at, pages_in, ram_pages, region_pages_in_ram,
    take_vmm_dirty, union_into,
};
pub use file::{sealed_memfd, shared_file};
pub use layout::{MemoryLayout, RamRange};
pub use numa::{NodePlacement, Placement};
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
    /// A NUMA node has no RAM or RAM that is not whole pages.
    #[error("NUMA node {node}: memory size {size} bytes is invalid: it must be a non-zero multiple of 4 KiB")]
    InvalidNodeSize { node: u32, size: u64 },
    /// More NUMA nodes than a `u32` numbers.
    #[error("too many NUMA nodes")]
    TooManyNodes,
    /// A host NUMA node to bind to does not exist.
    #[error(
        "host NUMA node {node} does not exist (no /sys/devices/system/node/node{node}); \
         this host's nodes: {present:?}"
    )]
    NoHostNode { node: u32, present: Vec<u32> },
    /// The host's NUMA topology could not be read from sysfs.
    #[error("cannot read the host's NUMA topology from {path}: {source}")]
    HostTopology {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `mbind` refused to bind a node's memory.
    #[error(
        "cannot bind the memory of guest node {node} to host node {host_node} (mbind): {source}"
    )]
    Bind {
        node: u32,
        host_node: u32,
        #[source]
        source: std::io::Error,
    },
    /// The host has too few free huge pages for the nodes that want them.
    #[error(
        "{needed} free 2 MiB huge pages needed on {}, {free} free: reserve more \
         (echo N > /proc/sys/vm/nr_hugepages, or per node \
         /sys/devices/system/node/nodeX/hugepages/hugepages-2048kB/nr_hugepages)",
        match host_node { Some(n) => format!("host node {n}"), None => "the host".to_string() }
    )]
    HugePages {
        host_node: Option<u32>,
        needed: u64,
        free: u64,
    },
    /// Huge-page memory could not be mapped (most often: not enough free huge pages).
    #[error(
        "cannot map {size} bytes of 2 MiB huge pages for guest node {node} \
         (are enough reserved in /proc/sys/vm/nr_hugepages?): {source}"
    )]
    HugePageMap {
        node: u32,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A huge-page node's range does not lie on 2 MiB boundaries.
    #[error(
        "guest node {node} uses huge pages, but its range {start:#x}+{len:#x} does not start \
         and end on 2 MiB boundaries"
    )]
    UnalignedHugeRange { node: u32, start: u64, len: u64 },
    /// Shared (memfd) memory with huge pages.
    #[error(
        "shared guest memory (a memfd) cannot use huge pages: turn off shared_memory or \
         hugepages"
    )]
    SharedHugePages,
    /// Guest memory has other regions than the layout has ranges.
    #[error("guest memory has {regions} regions, its layout {ranges} RAM ranges")]
    RegionsDiffer { regions: usize, ranges: usize },
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
