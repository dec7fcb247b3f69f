//! The pages of guest memory that may hold data, for a full snapshot.
//!
//! What `mincore(2)` reports, checked on this machine's kernel (Linux 6.18) and by the tests
//! below:
//! - anonymous memory: a page is resident once written, and also once only *read* (the read
//!   fault maps the shared zero page, whose PTE is present). Read-only pages are therefore
//!   over-reported, which is harmless: the snapshot writer skips all-zero pages.
//! - a page swapped out is *not* resident (unless still in the swap cache), although it holds
//!   data. `resident_pages` therefore also reads the swap bit of `/proc/self/pagemap` when
//!   the host has swap configured (this machine has none, where the check costs nothing).
//! - a `MAP_PRIVATE` file mapping (memory restored from a snapshot, `MemoryLayout::map_file`):
//!   a page is reported resident when the *file's* page is in the page cache, whether or not
//!   this process touched it. One write fault into such a mapping made mincore report 8 MiB
//!   around it (readahead of the file's holes); and a page evicted from the page cache is not
//!   resident although the guest reads the file's data there. mincore would both over- and
//!   under-report, so file-backed regions do not use it: their set is the file's data extents
//!   (`lseek(SEEK_DATA/SEEK_HOLE)`; a filesystem without hole support reports the whole file
//!   as data) plus the pages that `/proc/self/pagemap` shows as private copies (present and
//!   not a file page) or swapped out — the pages the guest or the VMM wrote.
//! - with transparent huge pages enabled for all memory (`always`; `madvise` here), one
//!   touch makes a whole 2 MiB huge page resident: over-reporting again.
//!
//! Swap is checked once per call, before reading: a swap area switched on meanwhile, and
//! pages of ours swapped out to it within the call, could be missed. Snapshots are taken
//! with the guest paused; an operator adding swap in that window is not worth a pagemap
//! read of all memory on every host without swap.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion};

use crate::PAGE_SIZE;
use crate::{empty_page_set, or_page_set_at, region_pages_in_ram, GuestMemoryMmap, MemoryError};

fn residency(what: &'static str) -> impl FnOnce(io::Error) -> MemoryError {
    move |source| MemoryError::Residency { what, source }
}

/// The RAM pages of `mem` that may hold data — every page the guest or the VMM ever touched
/// — as one RAM-order page set. It may over-report (pages only read, file pages in the page
/// cache), never under-report: a page outside the set reads as zeros.
///
/// Call it with the vCPUs paused, or a page written meanwhile may be missed.
pub fn resident_pages(mem: &GuestMemoryMmap) -> Result<Vec<u64>, MemoryError> {
    let swap = swap_configured()?;
    let mut set = empty_page_set(mem);
    let mut pagemap = None;
    for (region, (first, pages)) in mem.iter().zip(region_pages_in_ram(mem)) {
        let file = region.file_offset();
        let mut bits = if file.is_some() {
            vec![0u64; pages.div_ceil(64)]
        } else {
            mincore_bits(region.as_ptr(), pages)?
        };
        if swap || file.is_some() {
            let pagemap = match &pagemap {
                Some(open) => open,
                None => {
                    pagemap.insert(File::open("/proc/self/pagemap").map_err(residency("pagemap"))?)
                }
            };
            let count = match file {
                Some(_) => Count::PrivateOrSwapped,
                None => Count::Swapped,
            };
            add_from_pagemap(pagemap, region.as_ptr(), pages, count, &mut bits)?;
        }
        if let Some(file) = file {
            add_file_data(file, pages, &mut bits)?;
        }
        or_page_set_at(&mut set, first, &bits, pages);
    }
    Ok(set)
}

/// Whether the host has any swap space; without, no page of ours can be swapped out.
fn swap_configured() -> Result<bool, MemoryError> {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: `sysinfo` fills the struct it is given a valid pointer to and nothing else.
    if unsafe { libc::sysinfo(info.as_mut_ptr()) } != 0 {
        return Err(residency("sysinfo")(io::Error::last_os_error()));
    }
    // SAFETY: sysinfo returned 0, so it initialised the struct (zeroed beforehand anyway).
    Ok(unsafe { info.assume_init() }.totalswap != 0)
}

/// mincore over `pages` pages from `addr`, as a page set (bit = resident).
fn mincore_bits(addr: *mut u8, pages: usize) -> Result<Vec<u64>, MemoryError> {
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` is the page-aligned start of a region mapping of `pages` pages that the
    // caller's borrow of the memory keeps mapped; `vec` has one byte per page, as mincore
    // writes. mincore reads no memory of ours and changes no mapping.
    let ret = unsafe { libc::mincore(addr.cast(), pages * PAGE_SIZE, vec.as_mut_ptr()) };
    if ret != 0 {
        return Err(residency("mincore")(io::Error::last_os_error()));
    }
    vec.resize(pages.div_ceil(64) * 64, 0);
    Ok(vec
        .chunks_exact(64)
        .map(|chunk| {
            chunk
                .chunks_exact(8)
                .enumerate()
                .fold(0u64, |word, (i, bytes)| {
                    word | u64::from(lsb_of_each_byte(bytes.try_into().unwrap())) << (8 * i)
                })
        })
        .collect())
}

/// Bit `k` = the lowest bit of byte `k`. The multiplication moves byte `k`'s bit (bit `8k`)
/// to bit `56 + k`; each product lands on its own bit, so nothing carries.
fn lsb_of_each_byte(bytes: [u8; 8]) -> u8 {
    let x = u64::from_le_bytes(bytes) & 0x0101_0101_0101_0101;
    (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// `/proc/self/pagemap` entry bit: the page is swapped out.
const PM_SWAP: u64 = 1 << 62;
/// `/proc/self/pagemap` entry bit: the page is present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap` entry bit: the present page is a file (page-cache) page.
const PM_FILE: u64 = 1 << 61;
/// Which pagemap entries `add_from_pagemap` counts.
#[derive(Clone, Copy, PartialEq)]
enum Count {
    /// Swapped-out pages (what mincore misses in anonymous memory).
    Swapped,
    /// Swapped-out pages and present private pages, not the page cache's: the pages a
    /// process wrote in a `MAP_PRIVATE` file mapping.
    PrivateOrSwapped,
}

/// Adds the pages among the `pages` of the mapping at `addr` that `/proc/self/pagemap` shows
/// as `count` says.
fn add_from_pagemap(
    pagemap: &File,
    addr: *mut u8,
    pages: usize,
    count: Count,
    bits: &mut [u64],
) -> Result<(), MemoryError> {
    const CHUNK: usize = 8192;
    let first_vpn = addr as u64 / PAGE_SIZE as u64;
    let mut buf = vec![0u8; CHUNK * 8];
    let mut page = 0;
    while page < pages {
        let n = CHUNK.min(pages - page);
        let bytes = &mut buf[..n * 8];
        pagemap
            .read_exact_at(bytes, (first_vpn + page as u64) * 8)
            .map_err(residency("pagemap"))?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let e = u64::from_ne_bytes(entry.try_into().unwrap());
            let hit = e & PM_SWAP != 0
                || (count == Count::PrivateOrSwapped && e & PM_PRESENT != 0 && e & PM_FILE == 0);
            if hit {
                bits[(page + i) / 64] |= 1 << ((page + i) % 64);
            }
        }
        page += n;
    }
    Ok(())
}

/// Adds the pages whose bytes in the backing file are data, not a hole.
///
/// `lseek` moves the position of the file description the region shares with the handle
/// given to `map_file`; it is put back afterwards.
fn add_file_data(file: &FileOffset, pages: usize, bits: &mut [u64]) -> Result<(), MemoryError> {
    let fd = file.file().as_raw_fd();
    let seek = |offset: u64, whence| {
        // SAFETY: lseek on a descriptor the FileOffset owns; it only moves the position.
        let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let saved = seek(0, libc::SEEK_CUR).map_err(residency("lseek"))?;
    let start = file.start();
    let end = start + (pages * PAGE_SIZE) as u64;
    let mut at = start;
    let result = (|| {
        while at < end {
            let data = match seek(at, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                // A filesystem without SEEK_DATA: every page counts as data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && at == start => {
                    bits.iter_mut().for_each(|w| *w = u64::MAX);
                    break;
                }
                Err(e) => return Err(e),
            };
            if data >= end {
                break;
            }
            let hole = seek(data, libc::SEEK_HOLE)?.min(end);
            let first = ((data - start) as usize) / PAGE_SIZE;
            let last = ((hole - start) as usize).div_ceil(PAGE_SIZE);
            for p in first..last {
                bits[p / 64] |= 1 << (p % 64);
            }
            at = hole;
        }
        Ok(())
    })();
    seek(saved, libc::SEEK_SET).map_err(residency("lseek"))?;
    result.map_err(residency("SEEK_DATA"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pages_in, MemoryLayout};
    use std::io::{Seek, SeekFrom, Write};
    use vm_memory::{Bytes, GuestAddress};

    fn resident_list(mem: &GuestMemoryMmap) -> Vec<usize> {
        pages_in(&resident_pages(mem).unwrap()).collect()
    }

    /// `got` holds every page of `want`, and nothing outside the 2 MiB huge pages of `want`'s
    /// pages: where transparent huge pages are enabled for all memory (`always`), one write
    /// (or read: the huge zero page) makes all 512 pages of its huge page resident.
    #[track_caller]
    fn assert_touched(got: &[usize], want: &[usize]) {
        const HUGE: usize = 512;
        for p in want {
            assert!(got.contains(p), "page {p} missing from {got:?}");
        }
        for p in got {
            assert!(
                want.iter().any(|w| w / HUGE == p / HUGE),
                "page {p} reported, not near any of {want:?}"
            );
        }
    }

    #[test]
    fn lsb_of_each_byte_packs_bytes_in_order() {
        assert_eq!(lsb_of_each_byte([1, 0, 0, 0, 0, 0, 0, 0]), 0b1);
        assert_eq!(lsb_of_each_byte([0, 0, 0, 0, 0, 0, 0, 1]), 0b1000_0000);
        assert_eq!(
            lsb_of_each_byte([1, 3, 2, 0, 0xff, 0xfe, 0, 1]),
            0b1001_0011
        );
        assert_eq!(lsb_of_each_byte([1; 8]), 0xff);
    }

    #[test]
    fn fresh_memory_has_no_resident_pages_and_written_ones_are() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        assert!(resident_list(&mem).is_empty());

        mem.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        mem.write_slice(&[7u8; 3 * 4096], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(1u8, GuestAddress((4 << 30) + 0x2000))
            .unwrap();

        let low = (3usize << 30) / PAGE_SIZE;
        assert_touched(&resident_list(&mem), &[5, 0x100, 0x101, 0x102, low + 2]);
    }

    #[test]
    fn pagemap_shows_written_anonymous_pages_as_private_and_none_swapped() {
        let mem = MemoryLayout::new(16 << 20).unwrap().allocate().unwrap();
        mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
        mem.write_obj(1u8, GuestAddress(0xff_f000)).unwrap();
        let region = mem.iter().next().unwrap();
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let pages = 4096;

        let mut private = vec![0u64; 64];
        add_from_pagemap(
            &pagemap,
            region.as_ptr(),
            pages,
            Count::PrivateOrSwapped,
            &mut private,
        )
        .unwrap();
        let mut swapped = vec![0u64; 64];
        add_from_pagemap(
            &pagemap,
            region.as_ptr(),
            pages,
            Count::Swapped,
            &mut swapped,
        )
        .unwrap();

        assert_touched(&pages_in(&private).collect::<Vec<_>>(), &[3, 4095]);
        assert_eq!(
            crate::count_pages(&swapped),
            0,
            "this test's memory cannot be swapped out yet"
        );
    }

    #[test]
    fn anonymous_pages_only_read_are_reported_resident() {
        // Documents the kernel's behaviour (the zero page is mapped on a read fault); it
        // over-reports, which the snapshot writer's zero-page check absorbs.
        let mem = MemoryLayout::new(16 << 20).unwrap().allocate().unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x7000)).unwrap(), 0);
        assert_touched(&resident_list(&mem), &[7]);
    }

    fn evict(file: &File) {
        file.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own; it changes no memory of ours.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }

    fn on_tmpfs(file: &File) -> bool {
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        assert_eq!(
            // SAFETY: fstatfs fills the struct it is given a valid pointer to.
            unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) },
            0
        );
        // SAFETY: fstatfs returned 0, so the struct is initialised.
        unsafe { fs.assume_init() }.f_type == libc::TMPFS_MAGIC
    }

    #[test]
    fn file_backed_memory_reports_the_files_data_even_when_evicted() {
        let layout = MemoryLayout::new(16 << 20).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(4096 + (16 << 20)).unwrap();
        f.seek(SeekFrom::Start(4096 + 3 * 4096)).unwrap();
        f.write_all(&[1u8; 2 * 4096]).unwrap(); // RAM pages 3 and 4
        f.seek(SeekFrom::Start(4096 + 100 * 4096 + 10)).unwrap();
        f.write_all(b"x").unwrap(); // RAM page 100
        evict(&f);
        let position = f.stream_position().unwrap();
        let mem = layout.map_file(&f, 4096).unwrap();

        assert_eq!(resident_list(&mem), vec![3, 4, 100]);
        assert_eq!(f.stream_position().unwrap(), position);

        // A guest write into a hole makes a private page, reported too; the holes that
        // readahead brought into the page cache around it are not (they read as zeros).
        mem.write_obj(1u8, GuestAddress(50 * 4096)).unwrap();
        assert_touched(&resident_list(&mem), &[3, 4, 50, 100]);
        // Reading pages maps the page cache's pages, and no private copies.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * 4096)).unwrap(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(60 * 4096)).unwrap(), 0);
        assert_touched(&resident_list(&mem), &[3, 4, 50, 100]);
    }

    #[test]
    fn mincore_alone_reports_file_pages_by_page_cache_residency() {
        // Why file-backed regions need their data extents: mincore on a MAP_PRIVATE file
        // mapping follows the page cache, not this process's accesses.
        let layout = MemoryLayout::new(16 << 20).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all(&[1u8; 4096]).unwrap(); // RAM page 0, now in the page cache
        let mem = layout.map_file(&f, 0).unwrap();
        let region = mem.iter().next().unwrap();

        let cached = mincore_bits(region.as_ptr(), 4096).unwrap();
        assert_eq!(
            cached[0] & 1,
            1,
            "a cached file page counts although untouched"
        );

        if on_tmpfs(&f) {
            return; // tmpfs pages are the file itself: they cannot be evicted
        }
        evict(&f);
        let evicted = mincore_bits(region.as_ptr(), 4096).unwrap();
        assert_eq!(
            evicted[0] & 1,
            0,
            "an evicted file page does not, though it holds data"
        );
    }
}
