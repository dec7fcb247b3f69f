//! Re-reading a memory file's data and checking it against its content hash.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{is_zero, ContentHasher, MemFile, MemFileKind, PAGE_SIZE};
use crate::extents::data_page_runs;
use crate::SnapshotError;

const CHUNK_PAGES: u64 = 256;

/// Reads all the data of the memory file at `path` and checks it hashes to the content hash
/// its header records (and, for a full file, holds as many non-zero pages as it says).
pub fn verify(path: &Path) -> Result<(), SnapshotError> {
    let mem = MemFile::open(path)?;
    let h = &mem.header;
    let mut hasher = ContentHasher::new(
        h.kind,
        h.guest_size,
        h.parent.as_ref().map(|p| p.content_hash),
    );
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    let page = PAGE_SIZE as usize;
    let read = |buf: &mut [u8], at: u64| {
        mem.file
            .read_exact_at(buf, at)
            .map_err(|e| SnapshotError::io("read", path, e))
    };
    let mut nonzero = 0;
    match h.kind {
        MemFileKind::Full => {
            let guest_pages = h.guest_size / PAGE_SIZE;
            for (run_first, run_count) in
                data_page_runs(&mem.file, path, h.data_offset, guest_pages)?
            {
                let end = (run_first + run_count).min(guest_pages);
                let mut first = run_first;
                while first < end {
                    let n = (end - first).min(CHUNK_PAGES);
                    let bytes = &mut buf[..n as usize * page];
                    read(bytes, h.data_offset + first * PAGE_SIZE)?;
                    for (i, p) in bytes.chunks_exact(page).enumerate() {
                        if !is_zero(p) {
                            hasher.page(first + i as u64, p);
                            nonzero += 1;
                        }
                    }
                    first += n;
                }
            }
            if nonzero != h.pages {
                return Err(SnapshotError::PageCountMismatch {
                    path: path.to_path_buf(),
                    actual: nonzero,
                    expected: h.pages,
                });
            }
        }
        MemFileKind::Diff => {
            let pages: Vec<u64> = h.page_map.iter().flat_map(|m| m.iter()).collect();
            for (chunk_no, chunk) in pages.chunks(CHUNK_PAGES as usize).enumerate() {
                let bytes = &mut buf[..chunk.len() * page];
                let slot = chunk_no as u64 * CHUNK_PAGES;
                read(bytes, h.data_offset + slot * PAGE_SIZE)?;
                for (&index, p) in chunk.iter().zip(bytes.chunks_exact(page)) {
                    hasher.page(index, p);
                }
            }
        }
    }
    let computed = hasher.finish();
    if computed != h.content_hash {
        return Err(SnapshotError::ContentHashMismatch {
            path: path.to_path_buf(),
            expected: h.content_hash,
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, flip, set_of, write_at, PAGE};
    use crate::{write_diff, write_full, PageSet};

    fn files() -> (tempfile::TempDir, crate::MemFileInfo, crate::MemFileInfo) {
        let dir = tempfile::tempdir().unwrap();
        let mut ram = vec![0u8; 16 * PAGE];
        fill(&mut ram, 2, 1);
        let full = write_full(&dir.path().join("f"), &[&ram], &PageSet::full(16)).unwrap();
        fill(&mut ram, 9, 2);
        let diff = write_diff(
            &dir.path().join("d"),
            &[&ram],
            &set_of(16, &[2, 9]),
            &dir.path().join("f"),
        )
        .unwrap();
        (dir, full, diff)
    }

    #[test]
    fn flipped_data_byte_in_a_layer_is_a_content_hash_mismatch() {
        let (_d, _, diff) = files();
        verify(&diff.path).unwrap();
        flip(&diff.path, diff.data_offset + PAGE as u64 + 17);
        let e = verify(&diff.path).unwrap_err();
        assert!(
            matches!(e, SnapshotError::ContentHashMismatch { .. }),
            "{e}"
        );
    }

    #[test]
    fn flipped_data_byte_in_a_full_file_is_a_content_hash_mismatch() {
        let (_d, full, _) = files();
        flip(&full.path, full.data_offset + 2 * PAGE as u64);
        let e = verify(&full.path).unwrap_err();
        assert!(
            matches!(e, SnapshotError::ContentHashMismatch { .. }),
            "{e}"
        );
    }

    #[test]
    fn data_written_into_a_hole_is_an_extra_page() {
        let (_d, full, _) = files();
        write_at(&full.path, full.data_offset + 5 * PAGE as u64, &[1]);
        let e = verify(&full.path).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::PageCountMismatch {
                    actual: 2,
                    expected: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
}
