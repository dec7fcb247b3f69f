//! The layout of guest RAM around the 32-bit MMIO gap, split into NUMA nodes, and its
//! allocation.
//!
//! Guest RAM is one flat "RAM offset space" `0..size`. Offsets below the gap start
//! (3 GiB) are the same guest-physical addresses; the rest continues at 4 GiB. A guest's
//! NUMA nodes take consecutive slices of that space, node 0 first, so a node that crosses
//! 3 GiB has two ranges. Every range is its own mapping (and KVM memory slot), so each
//! node's memory can be bound and backed on the host on its own.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::{
    GuestMemoryMmap, MemoryError, Placement, HIGH_RAM_START, MAX_MEMORY, MIN_MEMORY, MMIO32_START,
    PAGE_SIZE,
};

/// A contiguous range of guest RAM, all of one guest NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RamRange {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The guest NUMA node (proximity domain) this range belongs to: 0 for a machine
    /// without NUMA. Left out of the JSON when 0, and read as 0 when absent, so layouts
    /// saved before NUMA existed load unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RamRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Where a guest's RAM lives: below the 32-bit MMIO gap, and above 4 GiB for the rest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryLayout {
    /// RAM ranges in ascending guest-physical order (which is also node order: node 0's
    /// ranges first). Without NUMA: at most one below and one above the gap, both node 0.
    /// With NUMA: each node's RAM is one range, or two when it crosses the gap; ranges of
    /// consecutive nodes may touch.
    pub ram: Vec<RamRange>,
}

/// Guest-physical address of RAM offset `offset`.
fn guest_address(offset: u64) -> u64 {
    if offset < MMIO32_START {
        offset
    } else {
        offset - MMIO32_START + HIGH_RAM_START
    }
}

impl MemoryLayout {
    /// The layout of a guest with `size` bytes of RAM, all node 0.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        Self::with_nodes(&[size])
    }

    /// The layout of a guest whose NUMA node `i` has `node_sizes[i]` bytes of RAM: the nodes
    /// one after the other in guest-physical order, split by the MMIO gap where they cross
    /// it. Every node needs some RAM, in whole 4 KiB pages.
    pub fn with_nodes(node_sizes: &[u64]) -> Result<Self, MemoryError> {
        let nodes = u32::try_from(node_sizes.len()).map_err(|_| MemoryError::TooManyNodes)?;
        if nodes > 1 {
            for (node, &size) in (0..nodes).zip(node_sizes) {
                if size == 0 || !size.is_multiple_of(PAGE_SIZE as u64) {
                    return Err(MemoryError::InvalidNodeSize { node, size });
                }
            }
        }
        let size = node_sizes
            .iter()
            .try_fold(0u64, |sum, &s| sum.checked_add(s))
            .unwrap_or(u64::MAX);
        Self::check_size(size)?;
        let mut ram = Vec::new();
        let mut offset = 0;
        for (node, &len) in (0..nodes).zip(node_sizes) {
            let end = offset + len;
            if offset < MMIO32_START {
                let low_end = end.min(MMIO32_START);
                ram.push(RamRange {
                    start: offset,
                    len: low_end - offset,
                    node,
                });
            }
            if end > MMIO32_START {
                let high = offset.max(MMIO32_START);
                ram.push(RamRange {
                    start: guest_address(high),
                    len: end - high,
                    node,
                });
            }
            offset = end;
        }
        Ok(Self { ram })
    }

    fn check_size(size: u64) -> Result<(), MemoryError> {
        if size < MIN_MEMORY {
            return Err(MemoryError::InvalidSize {
                size,
                reason: "below the 16 MiB minimum",
            });
        }
        if size > MAX_MEMORY {
            return Err(MemoryError::InvalidSize {
                size,
                reason: "above the 1 TiB maximum",
            });
        }
        if !size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(MemoryError::InvalidSize {
                size,
                reason: "not a multiple of 4 KiB",
            });
        }
        Ok(())
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.ram.iter().map(|r| r.len).sum()
    }

    /// The end of RAM below the MMIO gap (RAM below it is contiguous from 0).
    pub fn low_ram_end(&self) -> u64 {
        self.ram
            .iter()
            .filter(|r| r.start < MMIO32_START)
            .map(RamRange::end)
            .max()
            .unwrap_or(0)
    }

    /// The number of guest NUMA nodes (1 without NUMA).
    pub fn nodes(&self) -> u32 {
        self.ram.iter().map(|r| r.node + 1).max().unwrap_or(0)
    }

    /// The RAM ranges of guest node `node`, in guest-physical order: what the ACPI SRAT
    /// lists as that node's memory affinity entries.
    pub fn node_ranges(&self, node: u32) -> impl Iterator<Item = &RamRange> + '_ {
        self.ram.iter().filter(move |r| r.node == node)
    }

    /// The RAM of guest node `node`, in bytes.
    pub fn node_size(&self, node: u32) -> u64 {
        self.node_ranges(node).map(|r| r.len).sum()
    }

    /// Allocates anonymous, private guest memory for this layout, with no host placement.
    /// Pages are not touched, so the host commits only what the guest uses.
    pub fn allocate(&self) -> Result<GuestMemoryMmap, MemoryError> {
        self.allocate_placed(&Placement::default())
    }

    /// Guest memory with one region per RAM range, each mapped by `map` (given the range and
    /// its offset in the flat RAM space).
    pub(crate) fn build(
        &self,
        mut map: impl FnMut(&RamRange, u64) -> Result<MmapRegion<AtomicBitmap>, MemoryError>,
    ) -> Result<GuestMemoryMmap, MemoryError> {
        let mut ram_offset = 0;
        let regions = self
            .ram
            .iter()
            .map(|r| {
                let mmap = map(r, ram_offset)?;
                ram_offset += r.len;
                GuestRegionMmap::new(mmap, GuestAddress(r.start)).ok_or(MemoryError::Place {
                    start: r.start,
                    len: r.len,
                })
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        Ok(GuestMemoryMmap::from_regions(regions)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MMIO32_START;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_guest_is_one_range_from_zero() {
        let l = MemoryLayout::new(128 << 20).unwrap();
        assert_eq!(
            l.ram,
            vec![RamRange {
                start: 0,
                len: 128 << 20,
                node: 0
            }]
        );
        assert_eq!(l.size(), 128 << 20);
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let l = MemoryLayout::new(5 << 30).unwrap();
        assert_eq!(
            l.ram,
            vec![
                RamRange {
                    start: 0,
                    len: 3 << 30,
                    node: 0
                },
                RamRange {
                    start: 4 << 30,
                    len: 2 << 30,
                    node: 0
                }
            ]
        );
        assert_eq!(l.low_ram_end(), MMIO32_START);
    }

    #[test]
    fn exactly_the_gap_start_has_no_high_range() {
        assert_eq!(MemoryLayout::new(3 << 30).unwrap().ram.len(), 1);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(MemoryLayout::new(0).is_err());
        assert!(MemoryLayout::new(1 << 20).is_err());
        assert!(MemoryLayout::new((128 << 20) + 1).is_err());
        assert!(MemoryLayout::new(2 << 40).is_err());
    }

    #[test]
    fn allocated_memory_follows_the_layout_and_logs_vmm_writes() {
        use vm_memory::bitmap::Bitmap;
        let l = MemoryLayout::new(5 << 30).unwrap();
        let mem = l.allocate().unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress((3 << 30) - 1)));
        assert!(!mem.address_in_range(GuestAddress(3 << 30)));
        assert!(mem.address_in_range(GuestAddress((6 << 30) - 1)));
        mem.write_obj(0xabu8, GuestAddress(0x5000)).unwrap();
        let region = mem.find_region(GuestAddress(0x5000)).unwrap();
        assert!(region.bitmap().dirty_at(0x5000));
        assert!(!region.bitmap().dirty_at(0x6000));
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn range(start: u64, len: u64, node: u32) -> RamRange {
        RamRange { start, len, node }
    }

    #[test]
    fn two_nodes_of_different_sizes_follow_each_other() {
        let l = MemoryLayout::with_nodes(&[512 * MIB, 256 * MIB]).unwrap();
        assert_eq!(
            l.ram,
            vec![range(0, 512 * MIB, 0), range(512 * MIB, 256 * MIB, 1)]
        );
        assert_eq!((l.nodes(), l.size()), (2, 768 * MIB));
        assert_eq!((l.node_size(0), l.node_size(1)), (512 * MIB, 256 * MIB));
        assert_eq!(l.low_ram_end(), 768 * MIB);
    }

    #[test]
    fn a_node_that_crosses_the_gap_has_two_ranges() {
        // Node 1 starts at 2 GiB and holds 2 GiB: 1 GiB below the gap, 1 GiB from 4 GiB.
        let l = MemoryLayout::with_nodes(&[2 * GIB, 2 * GIB, GIB]).unwrap();
        assert_eq!(
            l.ram,
            vec![
                range(0, 2 * GIB, 0),
                range(2 * GIB, GIB, 1),
                range(4 * GIB, GIB, 1),
                range(5 * GIB, GIB, 2),
            ]
        );
        let node1: Vec<_> = l.node_ranges(1).copied().collect();
        assert_eq!(node1, vec![range(2 * GIB, GIB, 1), range(4 * GIB, GIB, 1)]);
        assert_eq!(l.node_size(1), 2 * GIB);
        assert_eq!(l.low_ram_end(), MMIO32_START);
        let mem = l.allocate().unwrap();
        assert_eq!(mem.num_regions(), 4);
        assert!(!mem.address_in_range(GuestAddress(3 * GIB)));
        assert!(mem.address_in_range(GuestAddress(6 * GIB - 1)));
    }

    #[test]
    fn four_nodes_and_a_node_that_starts_at_the_gap() {
        let l = MemoryLayout::with_nodes(&[GIB, 2 * GIB, 64 * MIB, 4096]).unwrap();
        assert_eq!(
            l.ram,
            vec![
                range(0, GIB, 0),
                range(GIB, 2 * GIB, 1),
                range(4 * GIB, 64 * MIB, 2),
                range(4 * GIB + 64 * MIB, 4096, 3),
            ]
        );
        assert_eq!(l.nodes(), 4);
        assert_eq!(l.node_size(3), 4096);
    }

    #[test]
    fn one_node_is_the_layout_without_numa() {
        for size in [128 * MIB, 3 * GIB, 5 * GIB] {
            assert_eq!(
                MemoryLayout::with_nodes(&[size]).unwrap(),
                MemoryLayout::new(size).unwrap()
            );
        }
    }

    #[test]
    fn empty_or_unaligned_nodes_are_refused() {
        assert!(matches!(
            MemoryLayout::with_nodes(&[64 * MIB, 0]),
            Err(MemoryError::InvalidNodeSize { node: 1, size: 0 })
        ));
        assert!(matches!(
            MemoryLayout::with_nodes(&[64 * MIB, 4097]),
            Err(MemoryError::InvalidNodeSize { node: 1, .. })
        ));
        assert!(matches!(
            MemoryLayout::with_nodes(&[]),
            Err(MemoryError::InvalidSize { size: 0, .. })
        ));
        assert!(MemoryLayout::with_nodes(&[u64::MAX, 2]).is_err());
    }

    #[test]
    fn layouts_saved_without_nodes_load_as_node_0_and_node_0_is_not_written() {
        let old = r#"{"ram":[{"start":0,"len":134217728}]}"#;
        let l: MemoryLayout = serde_json::from_str(old).unwrap();
        assert_eq!(l, MemoryLayout::new(128 * MIB).unwrap());
        assert_eq!(serde_json::to_string(&l).unwrap(), old);
        let two = MemoryLayout::with_nodes(&[64 * MIB, 64 * MIB]).unwrap();
        let json = serde_json::to_string(&two).unwrap();
        assert!(json.contains(r#""node":1"#), "{json}");
        assert_eq!(serde_json::from_str::<MemoryLayout>(&json).unwrap(), two);
    }
}
