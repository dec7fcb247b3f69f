//! The layout of guest RAM around the 32-bit MMIO gap, and its allocation.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::{
    GuestMemoryMmap, MemoryError, HIGH_RAM_START, MAX_MEMORY, MIN_MEMORY, MMIO32_START, PAGE_SIZE,
};

/// A contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RamRange {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
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
    /// RAM ranges in ascending order, at most one below and one above the gap.
    pub ram: Vec<RamRange>,
}

impl MemoryLayout {
    /// The layout of a guest with `size` bytes of RAM.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
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
        let low = size.min(MMIO32_START);
        let mut ram = vec![RamRange { start: 0, len: low }];
        if size > low {
            ram.push(RamRange {
                start: HIGH_RAM_START,
                len: size - low,
            });
        }
        Ok(Self { ram })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.ram.iter().map(|r| r.len).sum()
    }

    /// The end of RAM below the MMIO gap.
    pub fn low_ram_end(&self) -> u64 {
        self.ram[0].end()
    }

    /// Allocates anonymous, private guest memory for this layout. Pages are not touched, so
    /// the host commits only what the guest uses.
    pub fn allocate(&self) -> Result<GuestMemoryMmap, MemoryError> {
        self.build(|r, _| {
            MmapRegion::new(r.len as usize).map_err(|source| MemoryError::Allocate {
                size: r.len,
                source,
            })
        })
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
                len: 128 << 20
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
                    len: 3 << 30
                },
                RamRange {
                    start: 4 << 30,
                    len: 2 << 30
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
}
