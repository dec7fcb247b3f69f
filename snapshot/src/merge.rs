//! Flattening a chain into one sparse full memory file.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::extents::data_page_runs;
use crate::memfile::chain::resolve_chain;
use crate::memfile::header::Header;
use crate::memfile::write::{check_destination, create_full, finish, write_nonzero};
use crate::memfile::{ContentHasher, MemFileInfo, MemFileKind, HEADER_SIZE, PAGE_SIZE};
use crate::{PageSet, SnapshotError};

/// Pages copied per read/write round.
const CHUNK_PAGES: u64 = 256;

/// Resolves the chain ending at `top` and writes it as one full memory file at `out`: only the
/// base's data extents and the layers' pages are read; zero pages stay holes. The content
/// hash is computed for the result.
pub fn merge(top: &Path, out: &Path) -> Result<MemFileInfo, SnapshotError> {
    check_destination(out, top)?;
    let chain = resolve_chain(top)?;
    let guest_size = chain.guest_size();
    let guest_pages = guest_size / PAGE_SIZE;
    let (base, base_offset) = chain.base();
    let base_path = &chain.base.info.path;

    let mut present = PageSet::new(guest_pages);
    for (first, count) in data_page_runs(base, base_path, base_offset, guest_pages)? {
        for p in first..(first + count).min(guest_pages) {
            present.insert(p);
        }
    }
    for layer in &chain.layers {
        if let Some(map) = &layer.mem.header.page_map {
            present.union(map);
        }
    }

    let data_offset = HEADER_SIZE;
    let dest = create_full(out, guest_size)?;
    let mut hasher = ContentHasher::new(MemFileKind::Full, guest_size, None);
    let mut pages = 0;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    for (run_first, run_count) in present.runs() {
        let mut first = run_first;
        let end = run_first + run_count;
        while first < end {
            let n = (end - first).min(CHUNK_PAGES);
            let bytes = &mut buf[..(n * PAGE_SIZE) as usize];
            base.read_exact_at(bytes, base_offset + first * PAGE_SIZE)
                .map_err(|e| SnapshotError::io("read", base_path, e))?;
            for layer in &chain.layers {
                let from = layer.pages.partition_point(|&p| p < first);
                for (page, slot, count) in layer.runs_in(from, first + n) {
                    let at = ((page - first) * PAGE_SIZE) as usize;
                    let len = (count * PAGE_SIZE) as usize;
                    layer
                        .mem
                        .file
                        .read_exact_at(
                            &mut bytes[at..at + len],
                            layer.mem.header.data_offset + slot * PAGE_SIZE,
                        )
                        .map_err(|e| SnapshotError::io("read", &layer.mem.info.path, e))?;
                }
            }
            pages += write_nonzero(dest.file(), out, data_offset, first, bytes, &mut hasher)?;
            first += n;
        }
    }
    let header = Header {
        kind: MemFileKind::Full,
        guest_size,
        data_offset,
        pages,
        content_hash: hasher.finish(),
        parent: None,
        flattened_from: Some(chain.identity()),
        page_map: None,
    };
    finish(dest, &header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, full_image, set_of, zero, PAGE};
    use crate::{read_header, verify, write_diff, write_full};

    #[test]
    fn merged_chain_is_a_valid_sparse_full_of_the_final_ram() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let pages = 4096; // 16 MiB
        let mut ram = vec![0u8; pages as usize * PAGE];
        for page in [0, 1, 2, 1000, 4095] {
            fill(&mut ram, page, 1);
        }
        write_full(&p("base"), &[&ram], &PageSet::full(pages)).unwrap();
        fill(&mut ram, 1, 2);
        fill(&mut ram, 3000, 2);
        write_diff(&p("l1"), &[&ram], &set_of(pages, &[1, 5, 3000]), &p("base")).unwrap();
        zero(&mut ram, 1000);
        fill(&mut ram, 3001, 3);
        write_diff(&p("l2"), &[&ram], &set_of(pages, &[1000, 3001]), &p("l1")).unwrap();

        let info = merge(&p("l2"), &p("merged")).unwrap();
        assert_eq!(info.kind, MemFileKind::Full);
        assert_eq!(info.parent, None);
        assert_eq!(info.pages, 6); // 0, 1, 2, 3000, 3001, 4095
        assert!(info.bytes_on_disk <= 128 * 1024, "{}", info.bytes_on_disk);
        assert_eq!(full_image(&p("merged")), ram);
        verify(&p("merged")).unwrap();

        // The same RAM written directly as a full file has the same content hash.
        write_full(&p("direct"), &[&ram], &PageSet::full(pages)).unwrap();
        assert_eq!(
            read_header(&p("direct")).unwrap().content_hash,
            info.content_hash
        );
        // It stands for the layer it flattened (a state file taken with l2 accepts it);
        // the directly written file stands for itself.
        let l2 = read_header(&p("l2")).unwrap();
        assert_eq!(info.identity(), l2.content_hash);
        assert_eq!(
            read_header(&p("merged")).unwrap().identity(),
            l2.content_hash
        );
        assert_eq!(
            resolve_chain(&p("merged")).unwrap().identity(),
            l2.content_hash
        );
        assert_eq!(
            read_header(&p("direct")).unwrap().identity(),
            info.content_hash
        );
        // Merging the merged file again keeps that identity.
        assert_eq!(
            merge(&p("merged"), &p("again")).unwrap().identity(),
            l2.content_hash
        );
    }

    #[test]
    fn merge_of_a_full_file_is_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut ram = vec![0u8; 32 * PAGE];
        fill(&mut ram, 31, 5);
        let base = write_full(&dir.path().join("b"), &[&ram], &PageSet::full(32)).unwrap();
        let out = merge(&dir.path().join("b"), &dir.path().join("m")).unwrap();
        assert_eq!(out.content_hash, base.content_hash);
        assert_eq!(full_image(&dir.path().join("m")), ram);
    }

    #[test]
    fn merge_of_a_broken_chain_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ram = vec![0u8; 4 * PAGE];
        write_full(&dir.path().join("b"), &[&ram], &PageSet::full(4)).unwrap();
        write_diff(
            &dir.path().join("l"),
            &[&ram],
            &set_of(4, &[1]),
            &dir.path().join("b"),
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("b")).unwrap();
        let e = merge(&dir.path().join("l"), &dir.path().join("m")).unwrap_err();
        assert!(matches!(e, SnapshotError::MissingParent { .. }), "{e}");
        assert!(!dir.path().join("m").exists());
    }
}
