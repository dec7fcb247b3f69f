//! Chains: a full base and layers on top of it, resolved from the newest layer down.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{MemFile, MemFileInfo, MemFileKind, PAGE_SIZE};
use crate::extents::data_page_runs;
use crate::ram::RamLayout;
use crate::SnapshotError;

/// The most layers a chain may have on top of its base.
pub const MAX_CHAIN_LAYERS: usize = 4096;

pub(crate) struct Layer {
    pub mem: MemFile,
    /// The layer's pages, ascending; page `pages[i]` is at `data_offset + i * 4096`.
    pub pages: Vec<u64>,
}

impl Layer {
    /// Runs of consecutive pages as `(first page, first slot, count)`; a run is contiguous
    /// both in RAM and in the file.
    pub(crate) fn runs_in(&self, from: usize, end_page: u64) -> Vec<(u64, u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for (slot, &page) in self.pages.iter().enumerate().skip(from) {
            if page >= end_page {
                break;
            }
            match runs.last_mut() {
                Some((p, _, n)) if *p + *n == page => *n += 1,
                _ => runs.push((page, slot as u64, 1)),
            }
        }
        runs
    }
}

/// A resolved chain: the full base and its layers, oldest first, all open and checked.
pub struct Chain {
    pub(crate) base: MemFile,
    pub(crate) layers: Vec<Layer>,
}

fn child_dir(child: &Path) -> &Path {
    match child.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Opens the memory file at `top` and follows parent paths (relative ones against the child's
/// directory) down to the full base, checking every parent's content hash and guest size.
pub fn resolve_chain(top: &Path) -> Result<Chain, SnapshotError> {
    resolve_chain_limited(top, MAX_CHAIN_LAYERS)
}

fn resolve_chain_limited(top: &Path, max_layers: usize) -> Result<Chain, SnapshotError> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut cur = MemFile::open(top)?;
    let mut cur_path = top.to_path_buf();
    loop {
        let meta = cur
            .file
            .metadata()
            .map_err(|e| SnapshotError::io("stat", &cur_path, e))?;
        if !seen.insert((meta.dev(), meta.ino())) {
            return Err(SnapshotError::ChainCycle {
                top: top.to_path_buf(),
                repeated: cur_path,
            });
        }
        let parent_ref = match (cur.header.kind, &cur.header.parent) {
            (MemFileKind::Full, _) => break,
            (MemFileKind::Diff, Some(p)) => p.clone(),
            (MemFileKind::Diff, None) => {
                return Err(SnapshotError::MemHeaderInvalid {
                    path: cur_path,
                    reason: "a layer without a parent".into(),
                })
            }
        };
        if layers.len() >= max_layers {
            return Err(SnapshotError::ChainTooLong {
                top: top.to_path_buf(),
                max: max_layers,
            });
        }
        let parent_path: PathBuf = if parent_ref.path.is_absolute() {
            parent_ref.path.clone()
        } else {
            child_dir(&cur_path).join(&parent_ref.path)
        };
        let file = match File::open(&parent_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::MissingParent {
                    path: parent_path,
                    child: cur_path,
                    hash: parent_ref.content_hash,
                })
            }
            Err(e) => return Err(SnapshotError::io("open parent", &parent_path, e)),
        };
        let parent = MemFile::from_file(&parent_path, file)?;
        if parent.header.content_hash != parent_ref.content_hash {
            return Err(SnapshotError::ParentHashMismatch {
                child: cur_path,
                parent: parent_path,
                expected: parent_ref.content_hash,
                found: parent.header.content_hash,
            });
        }
        if parent.header.guest_size != cur.header.guest_size {
            return Err(SnapshotError::GuestSizeMismatch {
                child: cur_path,
                child_size: cur.header.guest_size,
                parent: parent_path,
                parent_size: parent.header.guest_size,
            });
        }
        let pages = cur
            .header
            .page_map
            .as_ref()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        layers.push(Layer { mem: cur, pages });
        cur = parent;
        cur_path = parent_path;
    }
    layers.reverse();
    Ok(Chain { base: cur, layers })
}

impl Chain {
    pub fn guest_size(&self) -> u64 {
        self.base.header.guest_size
    }

    /// The content hash of the newest file (the base's when there are no layers).
    pub fn top_hash(&self) -> [u8; 32] {
        self.layers
            .last()
            .map_or(&self.base, |l| &l.mem)
            .header
            .content_hash
    }

    /// Which guest memory the chain holds: its top file's identity (a state file names
    /// this; see [`MemFileInfo::identity`]).
    pub fn identity(&self) -> [u8; 32] {
        self.layers
            .last()
            .map_or(&self.base, |l| &l.mem)
            .info
            .identity()
    }

    /// The full base and its data offset: RAM offset `o` is at file offset `data_offset + o`.
    pub fn base(&self) -> (&File, u64) {
        (&self.base.file, self.base.header.data_offset)
    }

    /// The number of layers on top of the base.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Every file of the chain, base first.
    pub fn files(&self) -> Vec<MemFileInfo> {
        std::iter::once(&self.base.info)
            .chain(self.layers.iter().map(|l| &l.mem.info))
            .cloned()
            .collect()
    }

    /// Copies the base's pages into `ram` (the guest's regions in layout order), reading only
    /// where the base file has data: the pages of its holes are left untouched, so fresh
    /// memory that was never written stays uncommitted. For memory that cannot map the base
    /// (memory shared with another process); [`Chain::apply_layers`] comes after.
    pub fn copy_base_into(&self, ram: &mut [&mut [u8]]) -> Result<(), SnapshotError> {
        let path = &self.base.info.path;
        let layout = RamLayout::new(path, ram.iter().map(|r| r.len()))?;
        layout.expect_size(path, self.guest_size())?;
        let data_offset = self.base.header.data_offset;
        let pages = self.guest_size().div_ceil(PAGE_SIZE);
        for (first, count) in data_page_runs(&self.base.file, path, data_offset, pages)? {
            let offset = first * PAGE_SIZE;
            let len = (count * PAGE_SIZE).min(self.guest_size() - offset);
            for (region, in_region, len, rel) in layout.pieces(offset, len) {
                let dst = &mut ram[region][in_region..in_region + len];
                self.base
                    .file
                    .read_exact_at(dst, data_offset + offset + rel)
                    .map_err(|e| SnapshotError::io("read", path, e))?;
            }
        }
        Ok(())
    }

    /// Copies every layer's pages over `ram` (the guest's regions in layout order, already
    /// holding the base), oldest layer first. On an error `ram` may hold part of the layers.
    pub fn apply_layers(&self, ram: &mut [&mut [u8]]) -> Result<(), SnapshotError> {
        let top = self
            .layers
            .last()
            .map_or(&self.base.info.path, |l| &l.mem.info.path);
        let layout = RamLayout::new(top, ram.iter().map(|r| r.len()))?;
        layout.expect_size(top, self.guest_size())?;
        for layer in &self.layers {
            let path = &layer.mem.info.path;
            let data_offset = layer.mem.header.data_offset;
            for (page, slot, count) in layer.runs_in(0, u64::MAX) {
                let offset = page * PAGE_SIZE;
                let file_at = data_offset + slot * PAGE_SIZE;
                for (region, in_region, len, rel) in layout.pieces(offset, count * PAGE_SIZE) {
                    let dst = &mut ram[region][in_region..in_region + len];
                    layer
                        .mem
                        .file
                        .read_exact_at(dst, file_at + rel)
                        .map_err(|e| SnapshotError::io("read", path, e))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfile::header::FIXED_LEN;
    use crate::test_util::{craft, fill, flip, set_len, set_of, write_at, zero, PAGE};
    use crate::{write_diff, write_full, PageSet};

    const PAGES: u64 = 256;

    struct Built {
        dir: tempfile::TempDir,
        /// RAM after each file: [base, l1, l2, l3].
        rams: Vec<Vec<u8>>,
    }

    impl Built {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// base, then three layers with different pages (one of them zeroing a page).
    fn chain_of_three() -> Built {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let mut ram = vec![0u8; PAGES as usize * PAGE];
        let mut rams = Vec::new();
        for page in 0..10 {
            fill(&mut ram, page, 1);
        }
        write_full(&p("base"), &[&ram], &PageSet::full(PAGES)).unwrap();
        rams.push(ram.clone());
        for page in [5, 20, 100] {
            fill(&mut ram, page, 2);
        }
        write_diff(&p("l1"), &[&ram], &set_of(PAGES, &[5, 20, 100]), &p("base")).unwrap();
        rams.push(ram.clone());
        zero(&mut ram, 20);
        zero(&mut ram, 3);
        fill(&mut ram, 200, 3);
        write_diff(&p("l2"), &[&ram], &set_of(PAGES, &[3, 20, 200]), &p("l1")).unwrap();
        rams.push(ram.clone());
        fill(&mut ram, 5, 4);
        fill(&mut ram, 255, 4);
        let (low, high) = ram.split_at(100 * PAGE);
        write_diff(
            &p("l3"),
            &[low, high],
            &set_of(PAGES, &[5, 99, 100, 255]),
            &p("l2"),
        )
        .unwrap();
        rams.push(ram.clone());
        Built { dir, rams }
    }

    /// What a VMM restoring `chain` sees: the base image, then the layers applied.
    fn restore(chain: &Chain, split_at_page: usize) -> Vec<u8> {
        let (base, data_offset) = chain.base();
        let mut ram = vec![0u8; chain.guest_size() as usize];
        base.read_exact_at(&mut ram, data_offset).unwrap();
        let (low, high) = ram.split_at_mut(split_at_page * PAGE);
        chain.apply_layers(&mut [low, high]).unwrap();
        ram
    }

    #[test]
    fn chain_of_three_layers_restores_the_final_ram_exactly() {
        let b = chain_of_three();
        let chain = resolve_chain(&b.path("l3")).unwrap();
        assert_eq!(chain.layer_count(), 3);
        assert_eq!(chain.guest_size(), PAGES * PAGE as u64);
        let files = chain.files();
        let names: Vec<_> = files.iter().map(|f| f.path.file_name().unwrap()).collect();
        assert_eq!(names, ["base", "l1", "l2", "l3"]);
        assert_eq!(chain.top_hash(), files[3].content_hash);
        assert_eq!(restore(&chain, 0), b.rams[3]);
        assert_eq!(restore(&chain, 128), b.rams[3]);
        let middle = resolve_chain(&b.path("l2")).unwrap();
        assert_eq!(restore(&middle, 17), b.rams[2]);
    }

    #[test]
    fn the_base_copied_into_fresh_memory_then_the_layers_restore_the_final_ram() {
        let b = chain_of_three();
        let chain = resolve_chain(&b.path("l3")).unwrap();
        for split in [0, 7, 128] {
            let mut ram = vec![0u8; chain.guest_size() as usize];
            let (low, high) = ram.split_at_mut(split * PAGE);
            chain.copy_base_into(&mut [&mut *low, &mut *high]).unwrap();
            chain.apply_layers(&mut [low, high]).unwrap();
            assert_eq!(ram, b.rams[3], "split at page {split}");
        }
        let mut short = vec![0u8; PAGE];
        assert!(chain.copy_base_into(&mut [&mut short]).is_err());
    }

    #[test]
    fn moved_directory_still_resolves_through_relative_parents() {
        let b = chain_of_three();
        let moved = b.dir.path().join("moved");
        std::fs::create_dir(&moved).unwrap();
        for n in ["base", "l1", "l2", "l3"] {
            std::fs::rename(b.path(n), moved.join(n)).unwrap();
        }
        let chain = resolve_chain(&moved.join("l3")).unwrap();
        assert_eq!(restore(&chain, 0), b.rams[3]);
    }

    #[test]
    fn chain_of_fifty_layers_resolves_and_applies() {
        let dir = tempfile::tempdir().unwrap();
        let mut ram = vec![0u8; 64 * PAGE];
        fill(&mut ram, 0, 9);
        let mut parent = dir.path().join("base");
        write_full(&parent, &[&ram], &PageSet::full(64)).unwrap();
        for i in 0..50u64 {
            let pages = [i % 64, (i * 7 + 3) % 64];
            for &p in &pages {
                fill(&mut ram, p, i as u8);
            }
            let layer = dir.path().join(format!("l{i}"));
            write_diff(&layer, &[&ram], &set_of(64, &pages), &parent).unwrap();
            parent = layer;
        }
        let chain = resolve_chain(&parent).unwrap();
        assert_eq!(chain.layer_count(), 50);
        assert_eq!(restore(&chain, 10), ram);
    }

    #[test]
    fn missing_parent_is_refused_naming_it_and_its_hash() {
        let b = chain_of_three();
        let hash = crate::read_header(&b.path("l1")).unwrap().content_hash;
        std::fs::remove_file(b.path("l1")).unwrap();
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MissingParent { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("l1") && msg.contains("l2"), "{msg}");
        assert!(msg.contains(&crate::hex(&hash)), "{msg}");
    }

    #[test]
    fn parent_recreated_with_other_content_is_a_hash_mismatch() {
        let b = chain_of_three();
        let mut ram = b.rams[1].clone();
        fill(&mut ram, 21, 99);
        write_diff(
            &b.path("l1"),
            &[&ram],
            &set_of(PAGES, &[21]),
            &b.path("base"),
        )
        .unwrap();
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::ParentHashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("l1"), "{e}");
    }

    #[test]
    fn parent_of_another_guest_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hash = [7; 32];
        craft(&dir.path().join("base"), MemFileKind::Full, 8, hash, None);
        let parent = Some((PathBuf::from("base"), hash));
        craft(
            &dir.path().join("top"),
            MemFileKind::Diff,
            16,
            [1; 32],
            parent,
        );
        let e = resolve_chain(&dir.path().join("top")).err().unwrap();
        assert!(
            matches!(
                e,
                SnapshotError::GuestSizeMismatch {
                    child_size: 65536,
                    parent_size: 32768,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn chain_longer_than_the_limit_is_refused() {
        let b = chain_of_three();
        assert_eq!(
            resolve_chain_limited(&b.path("l3"), 3)
                .unwrap()
                .layer_count(),
            3
        );
        let e = resolve_chain_limited(&b.path("l3"), 2).err().unwrap();
        assert!(
            matches!(e, SnapshotError::ChainTooLong { max: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("longer than 2 layers"), "{e}");
    }

    #[test]
    fn cycle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ha, hb) = ([0xa; 32], [0xb; 32]);
        craft(
            &dir.path().join("a"),
            MemFileKind::Diff,
            8,
            ha,
            Some(("b".into(), hb)),
        );
        craft(
            &dir.path().join("b"),
            MemFileKind::Diff,
            8,
            hb,
            Some(("a".into(), ha)),
        );
        let e = resolve_chain(&dir.path().join("a")).err().unwrap();
        assert!(matches!(e, SnapshotError::ChainCycle { .. }), "{e}");
    }

    #[test]
    fn truncated_or_extended_files_are_the_wrong_size() {
        let b = chain_of_three();
        let l2 = crate::read_header(&b.path("l2")).unwrap();
        set_len(&b.path("l2"), l2.file_len - 1);
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MemWrongSize { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "is {} bytes, its header says {}",
                l2.file_len - 1,
                l2.file_len
            )),
            "{msg}"
        );
        set_len(&b.path("l2"), l2.file_len);
        resolve_chain(&b.path("l3")).unwrap();
        let base = crate::read_header(&b.path("base")).unwrap();
        set_len(&b.path("base"), base.file_len + 4096);
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MemWrongSize { .. }), "{e}");
        assert!(e.to_string().contains("base"), "{e}");
    }

    #[test]
    fn corrupted_header_or_page_map_is_detected() {
        let b = chain_of_three();
        flip(&b.path("l1"), 40); // present page count
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MemHeaderCorrupted { .. }), "{e}");
        assert!(e.to_string().contains("l1"), "{e}");
        flip(&b.path("l1"), 40);
        let map_at = FIXED_LEN + "base".len() as u64;
        flip(&b.path("l1"), map_at);
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MemHeaderCorrupted { .. }), "{e}");
    }

    #[test]
    fn other_version_and_foreign_files_are_refused() {
        let b = chain_of_three();
        write_at(&b.path("l2"), 8, &7u32.to_le_bytes());
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(
            matches!(
                e,
                SnapshotError::MemVersion {
                    found: 7,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::write(b.path("l2"), b"not a memory file at all").unwrap();
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::NotMemoryFile { .. }), "{e}");
        std::fs::write(b.path("l2"), b"PETRELMF").unwrap();
        let e = resolve_chain(&b.path("l3")).err().unwrap();
        assert!(matches!(e, SnapshotError::MemHeaderInvalid { .. }), "{e}");
    }

    #[test]
    fn apply_refuses_ram_of_another_size() {
        let b = chain_of_three();
        let chain = resolve_chain(&b.path("l3")).unwrap();
        let mut ram = vec![0u8; PAGE];
        let e = chain.apply_layers(&mut [&mut ram]).unwrap_err();
        assert!(matches!(e, SnapshotError::RamLayout { .. }), "{e}");
    }
}
