//! Guest RAM as the sending side reads it: while the guest runs.
//!
//! During pre-copy the vCPUs (through KVM) and device threads (through vm-memory's volatile
//! accessors) write guest memory while it is being sent. A `&[u8]` over that memory would
//! promise Rust that nobody writes it, so [`RamView`] holds raw region pointers instead and
//! reads guest bytes only with volatile reads, the way vm-memory itself accesses guest memory.
//! Whatever a read returns is only copied or tested for zero, never trusted.

use std::marker::PhantomData;

use crate::message::PAGE_SIZE;

/// Read-only view of guest RAM regions (in RAM order: region `i` of the view is region `i`
/// of the page index space) that may be written by other threads while it is read. Every
/// read of guest bytes through it is volatile.
pub struct RamView<'a> {
    regions: Vec<(*const u8, usize)>,
    _ram: PhantomData<&'a [u8]>,
}

// SAFETY: a RamView only reads through its pointers, with volatile reads, which the contract
// of `from_raw` allows from any thread while others write; the memory stays mapped for 'a
// whichever thread reads it. A view from `from_slices` borrows `&'a [u8]`, which is Send and
// Sync itself.
unsafe impl Send for RamView<'_> {}
// SAFETY: as for Send: `&RamView` gives only volatile reads of memory valid for 'a.
unsafe impl Sync for RamView<'_> {}

impl<'a> RamView<'a> {
    /// A view of memory nobody writes meanwhile (tests, or paused guest memory already held
    /// as slices): the borrow guarantees it stays valid for `'a`.
    pub fn from_slices(regions: &[&'a [u8]]) -> RamView<'a> {
        RamView {
            regions: regions.iter().map(|r| (r.as_ptr(), r.len())).collect(),
            _ram: PhantomData,
        }
    }

    /// A view of `regions` (host address, length), typically `memory::ram_regions(&mem)`.
    ///
    /// # Safety
    /// For all of `'a`, each region is mapped and readable for its whole length (for guest
    /// memory: the `GuestMemoryMmap` the pointers came from outlives `'a`). Other threads, or
    /// the guest through KVM, may write the regions concurrently; the view only ever reads
    /// them, and only with volatile reads. Nothing may unmap or shrink them meanwhile.
    pub unsafe fn from_raw(regions: &[(*const u8, usize)]) -> RamView<'a> {
        RamView {
            regions: regions.to_vec(),
            _ram: PhantomData,
        }
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    /// Length in bytes of each region, in order.
    pub fn region_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.regions.iter().map(|&(_, len)| len)
    }

    /// Start of `len` bytes at `off` in `region`; panics when they are not all inside it.
    fn span(&self, region: usize, off: usize, len: usize) -> *const u8 {
        let (start, size) = self.regions[region];
        assert!(
            off.checked_add(len).is_some_and(|end| end <= size),
            "{len} bytes at {off:#x} past region {region} of {size:#x} bytes"
        );
        // SAFETY: `off + len <= size`, so the result stays inside (or one past) the region.
        unsafe { start.add(off) }
    }

    /// Whether the page at byte `off` of `region` is all zeros, read with volatile reads: a
    /// 512-byte block of u64 words is OR-ed at a time, leaving at the first block with a
    /// set bit. The answer may be stale at once if the guest writes the page; a page it
    /// writes is in the next round's dirty set and sent again.
    pub(crate) fn is_zero_page(&self, region: usize, off: usize) -> bool {
        let page = self.span(region, off, PAGE_SIZE);
        if !page.cast::<u64>().is_aligned() {
            // Only slices from `from_slices` can be misaligned; guest RAM is page-aligned.
            return (0..PAGE_SIZE).all(|i| {
                // SAFETY: `i < PAGE_SIZE` and the page is inside the region (`span`), which
                // is readable for 'a.
                unsafe { page.add(i).read_volatile() == 0 }
            });
        }
        let words = page.cast::<u64>();
        (0..PAGE_SIZE / 512).all(|block| {
            let mut acc = 0u64;
            for w in block * 64..(block + 1) * 64 {
                // SAFETY: `w < PAGE_SIZE / 8`: the word is inside the page, which `span`
                // checked is inside the readable region; `words` is 8-byte aligned (checked
                // above) and so is every word after it.
                acc |= unsafe { words.add(w).read_volatile() };
            }
            acc == 0
        })
    }

    /// Copies `dst.len()` bytes from byte `off` of `region` into `dst` with volatile reads
    /// (aligned u64 words, single bytes at an unaligned head or tail).
    pub(crate) fn read_into(&self, region: usize, off: usize, dst: &mut [u8]) {
        let len = dst.len();
        let src = self.span(region, off, len);
        let head = src.align_offset(8).min(len);
        let (head_dst, rest) = dst.split_at_mut(head);
        for (i, b) in head_dst.iter_mut().enumerate() {
            // SAFETY: `i < dst.len()`, inside the span `span` checked is readable.
            *b = unsafe { src.add(i).read_volatile() };
        }
        // SAFETY: `head <= dst.len()`, so still inside the span (or at its end).
        let words = unsafe { src.add(head) }.cast::<u64>();
        let mut chunks = rest.chunks_exact_mut(8);
        for (w, chunk) in (&mut chunks).enumerate() {
            // SAFETY: word `w` lies at `head + 8w .. head + 8w + 8 <= dst.len()`, inside the
            // checked span; `src + head` is 8-byte aligned (`align_offset`), so is each word.
            let word = unsafe { words.add(w).read_volatile() };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let tail = chunks.into_remainder();
        let tail_at = len - tail.len();
        for (i, b) in (tail_at..len).zip(tail) {
            // SAFETY: `i < len`, inside the checked span.
            *b = unsafe { src.add(i).read_volatile() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_match_the_bytes_at_every_alignment() {
        let bytes: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        let view = RamView::from_slices(&[&bytes[..]]);
        for off in [0, 1, 7, 8, 4093] {
            for len in [0, 1, 9, 4096, 5000] {
                let mut dst = vec![0xEEu8; len];
                view.read_into(0, off, &mut dst);
                assert_eq!(dst, bytes[off..off + len], "off {off} len {len}");
            }
        }
    }

    #[test]
    fn zero_pages_are_found_wherever_the_set_byte_is() {
        let mut bytes = vec![0u8; 2 * PAGE_SIZE + 1];
        let view = RamView::from_slices(&[&bytes[..]]);
        assert!(view.is_zero_page(0, 0) && view.is_zero_page(0, 1));
        bytes[PAGE_SIZE - 1] = 1;
        let view = RamView::from_slices(&[&bytes[..]]);
        assert!(!view.is_zero_page(0, 0));
        assert!(!view.is_zero_page(0, 1), "unaligned page sees it too");
        assert!(view.is_zero_page(0, PAGE_SIZE));
    }

    #[test]
    #[should_panic(expected = "past region")]
    fn a_read_past_its_region_panics() {
        let bytes = vec![0u8; PAGE_SIZE];
        RamView::from_slices(&[&bytes[..]]).read_into(0, 8, &mut [0u8; PAGE_SIZE]);
    }

    /// Figures, not assertions: `cargo test -p migration --release -- --ignored --nocapture
    /// volatile_copy`. The volatile copy against a plain `copy_from_slice` of the same bytes.
    #[test]
    #[ignore]
    fn volatile_copy_throughput_against_memcpy() {
        const SIZE: usize = 256 << 20;
        let src: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 | 1).collect();
        let view = RamView::from_slices(&[&src[..]]);
        let mut dst = vec![0u8; 1 << 20];
        let mb_s = |f: &mut dyn FnMut()| {
            let start = std::time::Instant::now();
            f();
            SIZE as f64 / start.elapsed().as_secs_f64() / 1e6
        };
        for _ in 0..3 {
            let volatile = mb_s(&mut || {
                for off in (0..SIZE).step_by(dst.len()) {
                    view.read_into(0, off, &mut dst);
                }
            });
            let plain = mb_s(&mut || {
                for chunk in src.chunks_exact(dst.len()) {
                    dst.copy_from_slice(std::hint::black_box(chunk));
                }
            });
            let scan = mb_s(&mut || {
                let zero = (0..SIZE)
                    .step_by(PAGE_SIZE)
                    .filter(|&off| view.is_zero_page(0, off))
                    .count();
                assert_eq!(zero, 0);
            });
            println!(
                "1 MiB copies of 256 MiB: volatile {volatile:.0} MB/s, memcpy {plain:.0} MB/s; \
                 zero scan of non-zero pages {scan:.0} MB/s"
            );
        }
    }
}
