//! [`DirtyLog`]: the shared memory in which a vhost-user back end logs the guest pages it
//! writes (the protocol's `LOG_SHMFD` dirty log), and reading it into petrel's page sets.
//!
//! The log is one bit per 4 KiB page of guest-physical address space from address 0: the
//! back end sets bit `page % 8` of byte `page / 8` with an atomic OR. Read as little-endian
//! 64-bit words, bit `i` of word `w` is page `w * 64 + i`, so petrel takes the log a word at
//! a time with an atomic swap: a page the back end marks while petrel reads is reported now
//! or next time, never lost.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use memory::{GuestMemoryMmap, PAGE_SIZE};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::VhostUserError;

/// The log: a memfd mapped shared, handed to the back end with `SET_LOG_BASE`.
pub struct DirtyLog {
    file: File,
    /// The mapping, `words` 64-bit words long.
    base: *mut AtomicU64,
    words: usize,
}

// SAFETY: the mapping is only touched through atomics, and it lives (unmapped in `drop`)
// as long as the `DirtyLog`; moving or sharing the pointer between threads is sound.
unsafe impl Send for DirtyLog {}
// SAFETY: as above: every access is an atomic operation on the shared mapping.
unsafe impl Sync for DirtyLog {}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> VhostUserError {
    move |source| VhostUserError::Os { what, source }
}

impl DirtyLog {
    /// An empty log covering every page of `mem`.
    pub fn new(mem: &GuestMemoryMmap) -> Result<DirtyLog, VhostUserError> {
        let end = mem
            .iter()
            .map(|r| r.start_addr().0 + r.len())
            .max()
            .unwrap_or(0);
        let pages = (end as usize).div_ceil(PAGE_SIZE);
        let words = pages.div_ceil(64).max(1);
        let bytes = (words * 8).next_multiple_of(PAGE_SIZE);
        // A back end that shrank the file would make petrel's next read of the log fault
        // (SIGBUS): the size is sealed, as guest memory's is.
        let file = memory::sealed_memfd(c"petrel-vhost-user-log", bytes as u64)
            .map_err(os("the dirty log's memfd"))?;
        // SAFETY: a new shared mapping of `bytes` bytes of the memfd this function owns, at
        // an address the kernel picks; nothing else in this process refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("the dirty log's mapping")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(DirtyLog {
            file,
            base: base.cast(),
            words: bytes / 8,
        })
    }

    /// The memfd, for `SET_LOG_BASE`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The log's size in bytes, for `SET_LOG_BASE`.
    pub fn size(&self) -> u64 {
        self.words as u64 * 8
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.words);
        // SAFETY: `index` is within the mapping (checked above), which is page-aligned, so
        // the word is aligned; the mapping lives as long as `self`.
        unsafe { &*self.base.add(index) }
    }

    /// Takes the logged pages (clearing them) and adds them to `set`, a RAM-order page set
    /// of `mem` (see the `memory` crate). Pages outside guest RAM are ignored.
    pub fn take_into(&self, mem: &GuestMemoryMmap, set: &mut [u64]) {
        let gpa_pages: Vec<u64> = (0..self.words)
            .map(|i| self.word(i).swap(0, Ordering::AcqRel))
            .collect();
        for (region, (first, pages)) in mem.iter().zip(memory::region_pages_in_ram(mem)) {
            let start = region.start_addr().0 as usize / PAGE_SIZE;
            let bits = bit_range(&gpa_pages, start, pages);
            memory::or_page_set_at(set, first, &bits, pages);
        }
    }

    /// Marks the pages of guest-physical `len` bytes from `gpa` (beyond the log: ignored).
    pub fn mark_range(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa as usize / PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) as usize / PAGE_SIZE;
        for page in first..=last.min(self.words * 64 - 1) {
            self.mark(page);
        }
    }

    /// Marks guest-physical page `page`, as a back end does.
    fn mark(&self, page: usize) {
        self.word(page / 64)
            .fetch_or(1 << (page % 64), Ordering::AcqRel);
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which nothing uses any more.
        unsafe { libc::munmap(self.base.cast(), self.words * 8) };
    }
}

/// Bits `start..start + len` of `bits` as a bitmap of their own (bit 0 = bit `start`);
/// bits past the end of `bits` read as zero.
fn bit_range(bits: &[u64], start: usize, len: usize) -> Vec<u64> {
    let get = |i: usize| bits.get(i).copied().unwrap_or(0);
    let (first, shift) = (start / 64, start % 64);
    (0..len.div_ceil(64))
        .map(|w| match shift {
            0 => get(first + w),
            s => (get(first + w) >> s) | (get(first + w + 1) << (64 - s)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(a, len)| (GuestAddress(a), len))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn bit_ranges_shift_across_words() {
        let bits = [0x8000_0000_0000_0001u64, 0b101];
        assert_eq!(bit_range(&bits, 0, 70), vec![bits[0], 0b101]);
        assert_eq!(bit_range(&bits, 63, 3), vec![0b1011]);
        assert_eq!(bit_range(&bits, 64, 3), vec![0b101]);
        assert_eq!(bit_range(&bits, 200, 10), vec![0]);
    }

    #[test]
    fn logged_pages_land_in_ram_order_and_are_taken_once() {
        // RAM at 0..1 MiB and at 4 MiB + 12 KiB (an unaligned start, as a NUMA node may
        // have): the second region's first page is RAM page 256.
        let m = mem(&[(0, 1 << 20), ((4 << 20) + 0x3000, 1 << 20)]);
        let log = DirtyLog::new(&m).unwrap();
        log.mark(5);
        log.mark(1027); // 4 MiB + 12 KiB: the second region's page 0
        log.mark(1029);
        log.mark(600); // in the hole: not RAM
        let mut set = memory::empty_page_set(&m);
        log.take_into(&m, &mut set);
        assert_eq!(
            memory::pages_in(&set).collect::<Vec<_>>(),
            vec![5, 256, 258]
        );
        // A range over a page boundary marks both pages; one past the log, none.
        log.mark_range(0x2ff0, 0x20);
        log.mark_range(u64::MAX - 8, 8);
        let mut ranged = memory::empty_page_set(&m);
        log.take_into(&m, &mut ranged);
        assert_eq!(memory::pages_in(&ranged).collect::<Vec<_>>(), vec![2, 3]);
        let mut again = memory::empty_page_set(&m);
        log.take_into(&m, &mut again);
        assert_eq!(memory::count_pages(&again), 0);
    }

    #[test]
    fn the_log_cannot_be_shrunk_by_whoever_holds_it() {
        let m = mem(&[(0, 1 << 20)]);
        let log = DirtyLog::new(&m).unwrap();
        assert!(log.file().set_len(0).is_err());
    }

    #[test]
    fn the_log_covers_ram_above_4g_and_another_process_sees_it() {
        let m = mem(&[(0, 1 << 20), (4 << 30, 1 << 20)]);
        let log = DirtyLog::new(&m).unwrap();
        // One bit per page up to 4 GiB + 1 MiB, rounded up to whole pages of log.
        assert_eq!(
            log.size(),
            (((4 << 30) + (1 << 20)) / 4096 / 8u64).next_multiple_of(4096)
        );
        // A write through the file (as the back end's own mapping would) shows in the log.
        use std::os::unix::fs::FileExt;
        let page = (4u64 << 30) / 4096 + 3;
        let byte = [1u8 << (page % 8)];
        log.file().write_at(&byte, page / 8).unwrap();
        let mut set = memory::empty_page_set(&m);
        log.take_into(&m, &mut set);
        assert_eq!(memory::pages_in(&set).collect::<Vec<_>>(), vec![256 + 3]);
    }
}
