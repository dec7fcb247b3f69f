//! Host placement of each guest NUMA node's memory: `mbind(MPOL_BIND)` to a host node and
//! 2 MiB huge pages (`MAP_HUGETLB`).
//!
//! Binding is applied to each range's mapping right after it is made, before anything
//! touches it, so every page the guest or the VMM faults in later is allocated on the bound
//! node (KVM faults guest memory in through the same mapping and follows its policy). Memory
//! mapped from a file or handed over already holding pages (a snapshot's file, a migration's
//! memfd) is bound with `MPOL_MF_MOVE`: the pages this process alone maps move to the node.

mod cpulist;
mod host;

use std::collections::BTreeMap;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

pub use cpulist::{format_cpu_list, parse_cpu_list, CpuListError};
pub use host::{HostTopology, HUGE_PAGE_SIZE, MAX_HOST_CPUS, MAX_HOST_NODES};

use crate::{GuestMemoryMmap, MemoryError, MemoryLayout, RamRange, PAGE_SIZE};

/// The dirty bitmap's granule: 4 KiB pages, huge-page memory included.
const BITMAP_PAGE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(PAGE_SIZE) {
    Some(n) => n,
    None => panic!("PAGE_SIZE is not zero"),
};

/// `mbind` flag: move the pages already there that only this process maps.
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;

/// Where one guest node's memory lives on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodePlacement {
    /// The host NUMA node its memory is bound to (`MPOL_BIND`); `None` leaves it to the
    /// host's default policy.
    pub host_node: Option<u32>,
    /// Back it with 2 MiB huge pages (`MAP_HUGETLB`), reserved when it is mapped.
    pub hugepages: bool,
}

/// The host placement of every guest node's memory, by guest node; a node past the end has
/// the default placement (no binding, small pages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub nodes: Vec<NodePlacement>,
}

impl Placement {
    /// The placement of guest node `node`.
    pub fn node(&self, node: u32) -> NodePlacement {
        self.nodes.get(node as usize).copied().unwrap_or_default()
    }

    /// Whether some node wants huge pages.
    pub fn uses_huge_pages(&self) -> bool {
        self.nodes.iter().any(|n| n.hugepages)
    }

    /// Checks this placement for `layout` against `host`: every host node exists, every
    /// huge-page node's ranges are 2 MiB-aligned, and the host has the huge pages free.
    pub fn check(&self, layout: &MemoryLayout, host: &HostTopology) -> Result<(), MemoryError> {
        let mut needed: BTreeMap<Option<u32>, u64> = BTreeMap::new();
        for r in &layout.ram {
            let p = self.node(r.node);
            if let Some(h) = p.host_node {
                host.check_node(h)?;
            }
            if p.hugepages {
                if !r.start.is_multiple_of(HUGE_PAGE_SIZE) || !r.len.is_multiple_of(HUGE_PAGE_SIZE)
                {
                    return Err(MemoryError::UnalignedHugeRange {
                        node: r.node,
                        start: r.start,
                        len: r.len,
                    });
                }
                *needed.entry(p.host_node).or_default() += r.len / HUGE_PAGE_SIZE;
                if p.host_node.is_some() {
                    *needed.entry(None).or_default() += r.len / HUGE_PAGE_SIZE;
                }
            }
        }
        // Host nodes first (the more precise message), the whole host last.
        let host_wide = needed.remove(&None).map(|pages| (None, pages));
        for (host_node, pages) in needed.into_iter().chain(host_wide) {
            let free = host.free_huge_pages(host_node)?;
            if free < pages {
                return Err(MemoryError::HugePages {
                    host_node,
                    needed: pages,
                    free,
                });
            }
        }
        Ok(())
    }
}

impl MemoryLayout {
    /// Allocates anonymous, private guest memory for this layout, each node's ranges placed
    /// as `placement` says (checked against this host first). Small-page memory is mapped
    /// `MAP_NORESERVE` and not touched: the host commits only what the guest uses. Huge-page
    /// memory is reserved when mapped, so a host without enough free huge pages fails here
    /// rather than when the guest touches them.
    pub fn allocate_placed(&self, placement: &Placement) -> Result<GuestMemoryMmap, MemoryError> {
        self.allocate_on(placement, &HostTopology::default())
    }

    fn allocate_on(
        &self,
        placement: &Placement,
        host: &HostTopology,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        if placement != &Placement::default() {
            placement.check(self, host)?;
        }
        self.build(|r, _| {
            let p = placement.node(r.node);
            let region = if p.hugepages {
                map_huge(r)?
            } else {
                MmapRegion::new(r.len as usize).map_err(|source| MemoryError::Allocate {
                    size: r.len,
                    source,
                })?
            };
            if let Some(host_node) = p.host_node {
                bind_range(region.as_ptr(), r, host_node, 0)?;
            }
            Ok(region)
        })
    }

    /// [`MemoryLayout::allocate_shared`] with each node's memory bound as `placement` says.
    /// Shared memory is one memfd of small pages: a placement with huge pages is refused.
    pub fn allocate_shared_placed(
        &self,
        placement: &Placement,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        if placement.uses_huge_pages() {
            return Err(MemoryError::SharedHugePages);
        }
        placement.check(self, &HostTopology::default())?;
        let mem = self.allocate_shared()?;
        self.bind(&mem, placement)?;
        Ok(mem)
    }

    /// Binds the regions of `mem` (mapped for this layout elsewhere: from a snapshot's file,
    /// or a memfd handed over) to the host nodes of `placement`, moving the pages already
    /// there that only this process maps. Huge pages cannot be added to memory that is
    /// mapped already; they are ignored here.
    pub fn bind(&self, mem: &GuestMemoryMmap, placement: &Placement) -> Result<(), MemoryError> {
        if mem.num_regions() != self.ram.len() {
            return Err(MemoryError::RegionsDiffer {
                regions: mem.num_regions(),
                ranges: self.ram.len(),
            });
        }
        for (region, r) in mem.iter().zip(&self.ram) {
            if region.start_addr().0 != r.start || region.len() != r.len {
                return Err(MemoryError::Place {
                    start: r.start,
                    len: r.len,
                });
            }
            if let Some(host_node) = placement.node(r.node).host_node {
                HostTopology::default().check_node(host_node)?;
                bind_range(region.as_ptr(), r, host_node, MPOL_MF_MOVE)?;
            }
        }
        Ok(())
    }
}

/// Maps `r.len` bytes of anonymous private 2 MiB huge pages (reserved now: no
/// `MAP_NORESERVE`), with the same dirty bitmap as small-page memory.
fn map_huge(r: &RamRange) -> Result<MmapRegion<AtomicBitmap>, MemoryError> {
    let len = r.len as usize;
    let bitmap = AtomicBitmap::new(len, BITMAP_PAGE);
    MmapRegionBuilder::new_with_bitmap(len, bitmap)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
        )
        .with_hugetlbfs(true)
        .build()
        .map_err(|source| MemoryError::HugePageMap {
            node: r.node,
            size: r.len,
            source,
        })
}

/// `mbind(MPOL_BIND, {host_node})` over the mapping of range `r` at `addr`.
fn bind_range(
    addr: *mut u8,
    r: &RamRange,
    host_node: u32,
    flags: libc::c_uint,
) -> Result<(), MemoryError> {
    let bind_err = |source| MemoryError::Bind {
        node: r.node,
        host_node,
        source,
    };
    if host_node >= MAX_HOST_NODES {
        return Err(bind_err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let bits = libc::c_ulong::BITS as usize;
    let words = host_node as usize / bits + 1;
    let mut mask: Vec<libc::c_ulong> = vec![0; words];
    mask[host_node as usize / bits] = 1 << (host_node as usize % bits);
    // The kernel reads `maxnode - 1` bits of the mask (a long-standing off-by-one that every
    // caller allows for): all of `words`.
    let maxnode = (words * bits + 1) as libc::c_ulong;
    // SAFETY: `addr` is the start of a mapping of `r.len` bytes that this process owns (the
    // region just mapped, or a region of guest memory the caller holds); mbind only changes
    // the memory policy of that range (and with MPOL_MF_MOVE migrates its pages, keeping
    // their contents). `mask` is `words` longs, alive for the call, covering `maxnode - 1`
    // bits.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            r.len as libc::c_ulong,
            libc::MPOL_BIND as libc::c_ulong,
            mask.as_ptr(),
            maxnode,
            flags,
        )
    };
    if ret != 0 {
        return Err(bind_err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
