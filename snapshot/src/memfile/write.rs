//! Writing full and layer memory files from guest RAM.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::header::{Header, MAX_PARENT_PATH};
use super::{is_zero, ContentHasher, MemFile, MemFileInfo, MemFileKind, ParentRef};
use super::{HEADER_SIZE, PAGE_SIZE};
use crate::atomic::AtomicFile;
use crate::ram::RamLayout;
use crate::{PageSet, SnapshotError};

/// Writes the non-zero pages of `bytes` (RAM pages from `first_page` on) into a full image at
/// `data_offset + page * 4096`, one write per run of non-zero pages, and hashes them. Returns
/// how many pages it wrote.
pub(crate) fn write_nonzero(
    file: &File,
    path: &Path,
    data_offset: u64,
    first_page: u64,
    bytes: &[u8],
    hasher: &mut ContentHasher,
) -> Result<u64, SnapshotError> {
    let page = PAGE_SIZE as usize;
    let n = bytes.len() / page;
    let mut written = 0;
    let mut run_start: Option<usize> = None;
    let mut bounce = Vec::new();
    for i in 0..=n {
        let nonzero = i < n && !is_zero(&bytes[i * page..(i + 1) * page]);
        if nonzero {
            written += 1;
            run_start.get_or_insert(i);
        } else if let Some(rs) = run_start.take() {
            let at = data_offset + (first_page + rs as u64) * PAGE_SIZE;
            hasher.pages(first_page + rs as u64, &bytes[rs * page..i * page]);
            write_through_bounce(file, path, &bytes[rs * page..i * page], at, &mut bounce)?;
        }
    }
    Ok(written)
}

/// Refuses to write `dest` when it is a file of the chain under `top` (its parent, or any
/// file further down): renaming the new file over it would break that chain, and the new
/// file's own.
pub fn check_destination(dest: &Path, top: &Path) -> Result<(), SnapshotError> {
    let Ok(d) = std::fs::metadata(dest) else {
        return Ok(());
    };
    for file in super::chain::resolve_chain(top)?.files() {
        let m =
            std::fs::metadata(&file.path).map_err(|e| SnapshotError::io("stat", &file.path, e))?;
        if (d.dev(), d.ino()) == (m.dev(), m.ino()) {
            return Err(SnapshotError::ParentIsDestination {
                path: dest.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Guest pages go to the file through a buffer of this size.
const BOUNCE_LEN: usize = 1 << 20;

/// Writes `bytes` at `at` in `BOUNCE_LEN` pieces copied into `bounce` first. Writing guest
/// memory straight from its mapping made the kernel's copy about ten times slower on the
/// development machine's KVM (16 MiB: 37 ms in `pwrite` against 3.5 ms from an ordinary
/// buffer); with a user-space copy first, a 16 MiB layer takes 15 ms instead of 40.
fn write_through_bounce(
    file: &File,
    path: &Path,
    bytes: &[u8],
    at: u64,
    bounce: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    bounce.resize(BOUNCE_LEN.min(bytes.len()).max(bounce.len()), 0);
    let mut offset = at;
    for chunk in bytes.chunks(BOUNCE_LEN) {
        let copy = &mut bounce[..chunk.len()];
        copy.copy_from_slice(chunk);
        file.write_all_at(copy, offset)
            .map_err(|e| SnapshotError::io("write", path, e))?;
        offset += chunk.len() as u64;
    }
    Ok(())
}

/// A new full memory file at `path` (under a temporary name until it is finished): all
/// holes, as long as its header and `guest_size` bytes of RAM at [`HEADER_SIZE`].
pub(crate) fn create_full(path: &Path, guest_size: u64) -> Result<AtomicFile, SnapshotError> {
    let out = AtomicFile::create(path)?;
    out.file()
        .set_len(HEADER_SIZE + guest_size)
        .map_err(|e| SnapshotError::io("set the length of", path, e))?;
    Ok(out)
}

fn check_set(path: &Path, set: &PageSet, guest_size: u64) -> Result<(), SnapshotError> {
    if set.pages() != guest_size / PAGE_SIZE {
        return Err(SnapshotError::PageSetSize {
            path: path.to_path_buf(),
            set_pages: set.pages(),
            guest_pages: guest_size / PAGE_SIZE,
        });
    }
    Ok(())
}

/// Writes the header, renames the file into place and reads back its info.
pub(crate) fn finish(out: AtomicFile, header: &Header) -> Result<MemFileInfo, SnapshotError> {
    let path = out.dest().to_path_buf();
    out.file()
        .write_all_at(&header.encode(), 0)
        .map_err(|e| SnapshotError::io("write header of", &path, e))?;
    let file = out.commit()?;
    Ok(MemFile::from_file(&path, file)?.info)
}

/// Writes a full memory file: the pages of `candidates` that are not all zero, at their RAM
/// offsets; everything else stays a hole. `ram` is the guest's regions in layout order.
pub fn write_full(
    path: &Path,
    ram: &[&[u8]],
    candidates: &PageSet,
) -> Result<MemFileInfo, SnapshotError> {
    let layout = RamLayout::new(path, ram.iter().map(|r| r.len()))?;
    let guest_size = layout.size();
    check_set(path, candidates, guest_size)?;
    let data_offset = HEADER_SIZE;
    let out = create_full(path, guest_size)?;
    let mut hasher = ContentHasher::new(MemFileKind::Full, guest_size, None);
    let mut pages = 0;
    for (start, count) in candidates.runs() {
        let offset = start * PAGE_SIZE;
        for (region, in_region, len, rel) in layout.pieces(offset, count * PAGE_SIZE) {
            let bytes = &ram[region][in_region..in_region + len];
            let first = (offset + rel) / PAGE_SIZE;
            pages += write_nonzero(out.file(), path, data_offset, first, bytes, &mut hasher)?;
        }
    }
    let header = Header {
        kind: MemFileKind::Full,
        guest_size,
        data_offset,
        pages,
        content_hash: hasher.finish(),
        parent: None,
        flattened_from: None,
        page_map: None,
    };
    finish(out, &header)
}

/// The parent's path as a layer records it: its file name when it sits in the layer's
/// directory, else its absolute path.
fn recorded_parent_path(child: &Path, parent: &Path) -> Result<PathBuf, SnapshotError> {
    let parent_abs = std::fs::canonicalize(parent)
        .map_err(|e| SnapshotError::io("resolve the path of parent", parent, e))?;
    let child_dir = match child.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let child_dir_abs = std::fs::canonicalize(child_dir)
        .map_err(|e| SnapshotError::io("resolve the directory of", child, e))?;
    match (parent_abs.parent(), parent_abs.file_name()) {
        (Some(dir), Some(name)) if dir == child_dir_abs => Ok(PathBuf::from(name)),
        _ => Ok(parent_abs),
    }
}

/// Writes a layer holding the pages of `dirty` (zero or not), on top of the memory file at
/// `parent_path` (a full file or another layer, for the same guest size).
pub fn write_diff(
    path: &Path,
    ram: &[&[u8]],
    dirty: &PageSet,
    parent_path: &Path,
) -> Result<MemFileInfo, SnapshotError> {
    let layout = RamLayout::new(path, ram.iter().map(|r| r.len()))?;
    let guest_size = layout.size();
    check_set(path, dirty, guest_size)?;
    check_destination(path, parent_path)?;
    let parent = MemFile::open(parent_path)?;
    if parent.header.guest_size != guest_size {
        return Err(SnapshotError::GuestSizeMismatch {
            child: path.to_path_buf(),
            child_size: guest_size,
            parent: parent_path.to_path_buf(),
            parent_size: parent.header.guest_size,
        });
    }
    let parent_ref = ParentRef {
        content_hash: parent.header.content_hash,
        path: recorded_parent_path(path, parent_path)?,
    };
    let path_len = parent_ref.path.as_os_str().len() as u64;
    if path_len > MAX_PARENT_PATH {
        return Err(SnapshotError::MemHeaderInvalid {
            path: path.to_path_buf(),
            reason: format!("parent path of {path_len} bytes (at most {MAX_PARENT_PATH})"),
        });
    }
    let data_offset = Header::data_offset_for(Some(&parent_ref), Some(dirty));
    let out = AtomicFile::create(path)?;
    let mut hasher = ContentHasher::new(
        MemFileKind::Diff,
        guest_size,
        Some(parent.header.content_hash),
    );
    let mut slot: u64 = 0;
    let mut bounce = Vec::new();
    for (start, count) in dirty.runs() {
        let offset = start * PAGE_SIZE;
        for (region, in_region, len, rel) in layout.pieces(offset, count * PAGE_SIZE) {
            let bytes = &ram[region][in_region..in_region + len];
            hasher.pages((offset + rel) / PAGE_SIZE, bytes);
            write_through_bounce(
                out.file(),
                path,
                bytes,
                data_offset + slot * PAGE_SIZE,
                &mut bounce,
            )?;
            slot += len as u64 / PAGE_SIZE;
        }
    }
    // A layer with no pages still needs its data offset inside the file.
    out.file()
        .set_len(data_offset + slot * PAGE_SIZE)
        .map_err(|e| SnapshotError::io("set the length of", path, e))?;
    let header = Header {
        kind: MemFileKind::Diff,
        guest_size,
        data_offset,
        pages: slot,
        content_hash: hasher.finish(),
        parent: Some(parent_ref),
        flattened_from: None,
        page_map: Some(dirty.clone()),
    };
    finish(out, &header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, full_image, set_of, PAGE};
    use crate::{read_header, verify};

    #[test]
    fn full_of_a_mostly_zero_64mib_guest_is_sparse_and_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.full");
        let pages = (64 << 20) / PAGE as u64;
        let mut ram = vec![0u8; 64 << 20];
        for p in [0, 1, 2, 9000, pages - 1] {
            fill(&mut ram, p, 7);
        }
        let info = write_full(&path, &[&ram], &PageSet::full(pages)).unwrap();
        assert_eq!(info.kind, MemFileKind::Full);
        assert_eq!(info.pages, 5);
        assert_eq!(info.data_offset, HEADER_SIZE);
        assert_eq!(info.file_len, HEADER_SIZE + (64 << 20));
        assert!(
            info.bytes_on_disk <= 64 * 1024,
            "{} bytes on disk",
            info.bytes_on_disk
        );
        assert_eq!(full_image(&path), ram);
        verify(&path).unwrap();
    }

    #[test]
    fn zero_pages_and_pages_outside_the_candidates_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.full");
        let mut ram = vec![0u8; 64 * PAGE];
        fill(&mut ram, 3, 1);
        fill(&mut ram, 4, 1);
        fill(&mut ram, 40, 1); // not a candidate
        let info = write_full(&path, &[&ram], &set_of(64, &[2, 3, 4, 5])).unwrap();
        assert_eq!(info.pages, 2);
        let image = full_image(&path);
        assert_eq!(image[3 * PAGE..5 * PAGE], ram[3 * PAGE..5 * PAGE]);
        assert!(image[40 * PAGE..41 * PAGE].iter().all(|&b| b == 0));
        verify(&path).unwrap();
    }

    #[test]
    fn full_from_two_regions_equals_the_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.full");
        let mut ram = vec![0u8; 48 * PAGE];
        for p in [0, 15, 16, 17, 47] {
            fill(&mut ram, p, 3);
        }
        let (low, high) = ram.split_at(16 * PAGE);
        let info = write_full(&path, &[low, high], &PageSet::full(48)).unwrap();
        assert_eq!(info.pages, 5);
        assert_eq!(full_image(&path), ram);
    }

    /// Maps `len` bytes of `file` at `offset` MAP_PRIVATE, as the VMM does per region, and
    /// returns a copy of them.
    fn map_private(file: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of an open file, at an offset that is a
        // multiple of the page size; the kernel picks the address, so nothing is replaced.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping above is `len` readable bytes and stays mapped until munmap below.
        let copy = unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec();
        // SAFETY: unmaps exactly the mapping made above; no reference into it is left.
        unsafe { libc::munmap(addr, len) };
        copy
    }

    #[test]
    fn full_file_mapped_per_region_gives_each_region_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.full");
        let mut ram = vec![0u8; 40 * PAGE];
        for p in [0, 9, 10, 39] {
            fill(&mut ram, p, 4);
        }
        let (low, high) = ram.split_at(10 * PAGE);
        let info = write_full(&path, &[low, high], &PageSet::full(40)).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(map_private(&f, info.data_offset, low.len()), low);
        let high_at = info.data_offset + low.len() as u64;
        assert_eq!(map_private(&f, high_at, high.len()), high);
    }

    #[test]
    fn candidate_set_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.full");
        let ram = vec![0u8; 8 * PAGE];
        let e = write_full(&path, &[&ram], &PageSet::full(9)).unwrap_err();
        assert!(matches!(e, SnapshotError::PageSetSize { .. }), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn diff_records_its_pages_and_its_parent_by_name_in_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let layer = dir.path().join("layer1");
        let mut ram = vec![0u8; 300 * PAGE];
        fill(&mut ram, 1, 1);
        let base_info = write_full(&base, &[&ram], &PageSet::full(300)).unwrap();
        fill(&mut ram, 200, 2);
        let info = write_diff(&layer, &[&ram], &set_of(300, &[7, 200]), &base).unwrap();
        assert_eq!(info.kind, MemFileKind::Diff);
        assert_eq!(info.pages, 2);
        assert_eq!(info.file_len, info.data_offset + 2 * PAGE as u64);
        assert_eq!(info.data_offset % PAGE as u64, 0);
        let parent = info.parent.clone().unwrap();
        assert_eq!(parent.path, PathBuf::from("base"));
        assert_eq!(parent.content_hash, base_info.content_hash);
        assert_eq!(read_header(&layer).unwrap(), info);
        verify(&layer).unwrap();
    }

    #[test]
    fn diff_in_another_directory_records_the_parent_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let base = dir.path().join("base");
        let ram = vec![0u8; 4 * PAGE];
        write_full(&base, &[&ram], &PageSet::full(4)).unwrap();
        let info = write_diff(&sub.join("l"), &[&ram], &set_of(4, &[0]), &base).unwrap();
        let recorded = info.parent.unwrap().path;
        assert!(recorded.is_absolute(), "{}", recorded.display());
        assert_eq!(recorded, std::fs::canonicalize(&base).unwrap());
    }

    #[test]
    fn diff_with_a_page_map_larger_than_4k_starts_data_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let pages = 64 * 1024; // 256 MiB guest: an 8 KiB page map
        let ram = vec![0u8; pages as usize * PAGE];
        write_full(&base, &[&ram], &PageSet::new(pages)).unwrap();
        let info = write_diff(
            &dir.path().join("l"),
            &[&ram],
            &set_of(pages, &[pages - 1]),
            &base,
        )
        .unwrap();
        assert_eq!(info.data_offset, 3 * PAGE as u64);
        verify(&dir.path().join("l")).unwrap();
    }

    #[test]
    fn diff_over_a_parent_of_another_guest_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        write_full(&base, &[&vec![0u8; 4 * PAGE]], &PageSet::full(4)).unwrap();
        let ram = vec![0u8; 8 * PAGE];
        let e = write_diff(&dir.path().join("l"), &[&ram], &set_of(8, &[0]), &base).unwrap_err();
        assert!(matches!(e, SnapshotError::GuestSizeMismatch { .. }), "{e}");
    }

    #[test]
    fn a_diff_over_a_file_further_down_its_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let mut ram = vec![0u8; 4 * PAGE];
        write_full(&p("full"), &[&ram], &PageSet::full(4)).unwrap();
        fill(&mut ram, 1, 1);
        write_diff(&p("m0"), &[&ram], &set_of(4, &[1]), &p("full")).unwrap();
        write_diff(&p("m1"), &[&ram], &set_of(4, &[2]), &p("m0")).unwrap();
        // m0 again, over m1: m1's parent would be gone.
        let e = write_diff(&p("m0"), &[&ram], &set_of(4, &[3]), &p("m1")).unwrap_err();
        assert!(
            matches!(e, SnapshotError::ParentIsDestination { .. }),
            "{e}"
        );
        crate::resolve_chain(&p("m1")).unwrap();
        let e = crate::merge(&p("m1"), &p("full")).unwrap_err();
        assert!(
            matches!(e, SnapshotError::ParentIsDestination { .. }),
            "{e}"
        );
    }

    #[test]
    fn layers_with_the_same_pages_over_different_parents_hash_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let mut ram = vec![0u8; 4 * PAGE];
        write_full(&p("a"), &[&ram], &PageSet::full(4)).unwrap();
        fill(&mut ram, 0, 9);
        write_full(&p("b"), &[&ram], &PageSet::full(4)).unwrap();
        let over_a = write_diff(&p("la"), &[&ram], &PageSet::new(4), &p("a")).unwrap();
        let over_b = write_diff(&p("lb"), &[&ram], &PageSet::new(4), &p("b")).unwrap();
        assert_ne!(over_a.content_hash, over_b.content_hash);
        verify(&p("la")).unwrap();
        verify(&p("lb")).unwrap();
    }

    #[test]
    fn diff_over_itself_is_refused_and_the_parent_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let ram = vec![0u8; 4 * PAGE];
        let before = write_full(&path, &[&ram], &PageSet::full(4)).unwrap();
        let e = write_diff(&path, &[&ram], &set_of(4, &[0]), &path).unwrap_err();
        assert!(
            matches!(e, SnapshotError::ParentIsDestination { .. }),
            "{e}"
        );
        assert_eq!(read_header(&path).unwrap(), before);
    }

    #[test]
    fn failed_write_leaves_the_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mut ram = vec![0u8; 4 * PAGE];
        fill(&mut ram, 0, 1);
        let before = write_full(&path, &[&ram], &PageSet::full(4)).unwrap();
        let missing = dir.path().join("nope");
        assert!(write_diff(&path, &[&ram], &set_of(4, &[0]), &missing).is_err());
        assert_eq!(
            read_header(&path).unwrap().content_hash,
            before.content_hash
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
