//! Page sets over the RAM offset space, and the VMM's own writes to guest memory.
//!
//! Guest RAM is one flat "RAM offset space" `0..size`: the regions of a `GuestMemoryMmap`
//! one after the other, in guest-address order (the order of `MemoryLayout::ram` and of
//! `host_regions`, so region `i` is KVM memory slot `i`). A page set is a bitmap over its
//! 4 KiB pages as `Vec<u64>`: bit `i` of word `w` is RAM page `w * 64 + i`, and the vector
//! has `ceil(pages / 64)` words. Bits past the last page are always zero.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

use crate::{GuestMemoryMmap, PAGE_SIZE};

/// The number of RAM pages of `mem`.
pub fn ram_pages(mem: &GuestMemoryMmap) -> usize {
    mem.iter().map(|r| region_pages(r.len())).sum()
}

/// An empty page set sized for `mem`.
pub fn empty_page_set(mem: &GuestMemoryMmap) -> Vec<u64> {
    vec![0; ram_pages(mem).div_ceil(64)]
}

/// The first RAM page and the number of pages of every region, in RAM order.
pub fn region_pages_in_ram(mem: &GuestMemoryMmap) -> Vec<(usize, usize)> {
    let mut next = 0;
    mem.iter()
        .map(|r| {
            let pages = region_pages(r.len());
            let first = next;
            next += pages;
            (first, pages)
        })
        .collect()
}

fn region_pages(len: u64) -> usize {
    (len as usize).div_ceil(PAGE_SIZE)
}

/// ORs the first `pages` bits of `src` (a page set of one region, bit 0 = its first page)
/// into `dst` from RAM page `first_page` on. Bits of `src` past `pages` are ignored.
///
/// # Panics
/// If `src` is shorter than `pages` bits or `dst` cannot hold `first_page + pages` bits.
pub fn or_page_set_at(dst: &mut [u64], first_page: usize, src: &[u64], pages: usize) {
    if pages == 0 {
        return;
    }
    assert!(src.len() * 64 >= pages, "source page set too short");
    assert!(
        dst.len() * 64 >= first_page + pages,
        "destination page set too short"
    );
    let words = pages.div_ceil(64);
    let tail_mask = match pages % 64 {
        0 => u64::MAX,
        n => (1u64 << n) - 1,
    };
    let word_at = |i: usize| {
        if i + 1 == words {
            src[i] & tail_mask
        } else {
            src[i]
        }
    };
    let (base, shift) = (first_page / 64, first_page % 64);
    if shift == 0 {
        // A region that starts on a 256 KiB boundary of the RAM offset space (every one
        // without NUMA: the low range is either all of RAM or exactly 3 GiB): a plain OR.
        // NUMA nodes may start on any page, and take the shifting path below.
        for i in 0..words {
            dst[base + i] |= word_at(i);
        }
    } else {
        for i in 0..words {
            let w = word_at(i);
            dst[base + i] |= w << shift;
            let carry = w >> (64 - shift);
            if carry != 0 {
                dst[base + i + 1] |= carry;
            }
        }
    }
}

/// The RAM pages in a page set, in ascending order.
pub fn pages_in(set: &[u64]) -> impl Iterator<Item = usize> + '_ {
    set.iter().enumerate().flat_map(|(w, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(w * 64 + i)
        })
    })
}

/// Adds the pages of `src` to `dst` (page sets of the same RAM; a shorter one ends early).
pub fn union_into(dst: &mut [u64], src: &[u64]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a |= b);
}

/// The number of pages in a page set.
pub fn count_pages(set: &[u64]) -> usize {
    set.iter().map(|w| w.count_ones() as usize).sum()
}

/// The pages the VMM wrote through vm-memory (device emulation, the loader) since the last
/// call, as one RAM-order page set; clears them.
///
/// Each word of each region's `AtomicBitmap` is read and zeroed in one atomic operation
/// (`AtomicBitmap::get_and_reset`), so a write racing with this call is reported either now
/// or by the next call, never lost. Writes through `ram_slices_mut` or KVM (the guest) are
/// not in this bitmap.
pub fn take_vmm_dirty(mem: &GuestMemoryMmap) -> Vec<u64> {
    let mut set = empty_page_set(mem);
    for (region, (first, pages)) in mem.iter().zip(region_pages_in_ram(mem)) {
        // The region's own bitmap (through `Deref` to its `MmapRegion`), not the trait's
        // `bitmap()` slice view, which has no get-and-reset.
        let mmap: &MmapRegion<AtomicBitmap> = region;
        let bits = mmap.bitmap().get_and_reset();
        or_page_set_at(&mut set, first, &bits, pages);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryLayout;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn aligned_or_copies_words_and_masks_past_the_last_page() {
        let mut dst = vec![0u64; 3];
        or_page_set_at(&mut dst, 64, &[u64::MAX, u64::MAX], 70);
        assert_eq!(dst, vec![0, u64::MAX, 0b11_1111]);
    }

    #[test]
    fn unaligned_or_shifts_bits_across_words() {
        let mut dst = vec![0u64; 3];
        // Pages 0 and 63 of the region land on RAM pages 10 and 73.
        or_page_set_at(&mut dst, 10, &[1 | 1 << 63], 64);
        assert_eq!(pages_in(&dst).collect::<Vec<_>>(), vec![10, 73]);
    }

    #[test]
    fn pages_in_lists_set_bits_in_order() {
        let set = vec![0b1001, 0, 1 << 63];
        assert_eq!(pages_in(&set).collect::<Vec<_>>(), vec![0, 3, 191]);
        assert_eq!(count_pages(&set), 3);
    }

    #[test]
    fn take_vmm_dirty_returns_exactly_the_written_pages_then_nothing() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        let low_pages = (3usize << 30) / PAGE_SIZE;
        mem.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        // Two bytes straddling pages 0x9 and 0xa.
        mem.write_obj(0xffffu16, GuestAddress(0xa000 - 1)).unwrap();
        // RAM above the gap: guest 4 GiB + 8 KiB is RAM page low_pages + 2.
        mem.write_obj(1u8, GuestAddress((4 << 30) + 0x2000))
            .unwrap();

        let dirty = take_vmm_dirty(&mem);

        assert_eq!(dirty.len(), ram_pages(&mem).div_ceil(64));
        assert_eq!(
            pages_in(&dirty).collect::<Vec<_>>(),
            vec![5, 9, 10, low_pages + 2]
        );
        assert_eq!(count_pages(&take_vmm_dirty(&mem)), 0);
    }

    #[test]
    fn region_pages_follow_ram_order_across_the_gap() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        assert_eq!(
            region_pages_in_ram(&mem),
            vec![
                (0, (3 << 30) / PAGE_SIZE),
                ((3 << 30) / PAGE_SIZE, (2 << 30) / PAGE_SIZE)
            ]
        );
    }
}
