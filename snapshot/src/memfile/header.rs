//! The memory file header: a fixed 160-byte block, then the parent's path (Diff), then the page
//! map (Diff), then zero padding up to `data_offset`, the next multiple of 4096.
//!
//! Fixed block, integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PETRELMF` |
//! | 8 | 4 | format version |
//! | 12 | 4 | kind: 1 Full, 2 Diff |
//! | 16 | 8 | guest size in bytes |
//! | 24 | 4 | page size (4096) |
//! | 28 | 4 | flags (0) |
//! | 32 | 8 | data offset |
//! | 40 | 8 | present pages |
//! | 48 | 32 | content hash |
//! | 80 | 32 | Diff: the parent's content hash; Full: the identity of the memory a merge flattened (zero when not a merge) |
//! | 112 | 8 | page map length in bytes (Diff: one bit per guest page, in u64 LE words) |
//! | 120 | 4 | parent path length in bytes (Diff) |
//! | 124 | 4 | reserved (0) |
//! | 128 | 32 | blake3 of bytes 0..128, the parent path and the page map |

use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{MemFileKind, ParentRef, MEM_FORMAT_VERSION, MEM_MAGIC, PAGE_SIZE};
use crate::{PageSet, SnapshotError};

pub(crate) const FIXED_LEN: u64 = 160;
const HASHED_FIXED: usize = 128;
/// The largest guest a memory file describes (1 TiB, petrel's largest guest).
pub(crate) const MAX_GUEST_SIZE: u64 = 1 << 40;
/// The longest parent path a header may carry.
pub(crate) const MAX_PARENT_PATH: u64 = 4096;

#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub kind: MemFileKind,
    pub guest_size: u64,
    pub data_offset: u64,
    pub pages: u64,
    pub content_hash: [u8; 32],
    pub parent: Option<ParentRef>,
    /// For a Full written by `merge`: the identity of the chain's top it flattened.
    pub flattened_from: Option<[u8; 32]>,
    /// The pages a Diff holds (None for Full).
    pub page_map: Option<PageSet>,
}

fn align_page(n: u64) -> Option<u64> {
    n.checked_add(PAGE_SIZE - 1)
        .map(|v| v / PAGE_SIZE * PAGE_SIZE)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn hash_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

impl Header {
    /// The data offset a header with this parent and page map gets.
    pub(crate) fn data_offset_for(parent: Option<&ParentRef>, page_map: Option<&PageSet>) -> u64 {
        let plen = parent.map_or(0, |p| p.path.as_os_str().len() as u64);
        let mlen = page_map.map_or(0, |m| m.words().len() as u64 * 8);
        align_page(FIXED_LEN + plen + mlen).unwrap_or(u64::MAX)
    }

    /// The file length this header implies.
    pub(crate) fn expected_len(&self) -> Option<u64> {
        match self.kind {
            MemFileKind::Full => self.data_offset.checked_add(self.guest_size),
            MemFileKind::Diff => self
                .pages
                .checked_mul(PAGE_SIZE)
                .and_then(|d| d.checked_add(self.data_offset)),
        }
    }

    /// The header bytes, from offset 0 up to the end of the page map.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let path = self
            .parent
            .as_ref()
            .map_or(&[][..], |p| p.path.as_os_str().as_bytes());
        let map = self.page_map.as_ref().map_or(&[][..], |m| m.words());
        let mut b = Vec::with_capacity(FIXED_LEN as usize + path.len() + map.len() * 8);
        b.extend_from_slice(&MEM_MAGIC);
        b.extend_from_slice(&MEM_FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.kind.code().to_le_bytes());
        b.extend_from_slice(&self.guest_size.to_le_bytes());
        b.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.data_offset.to_le_bytes());
        b.extend_from_slice(&self.pages.to_le_bytes());
        b.extend_from_slice(&self.content_hash);
        let linked = match &self.parent {
            Some(p) => p.content_hash,
            None => self.flattened_from.unwrap_or([0; 32]),
        };
        b.extend_from_slice(&linked);
        b.extend_from_slice(&(map.len() as u64 * 8).to_le_bytes());
        b.extend_from_slice(&(path.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(b.len(), HASHED_FIXED);
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(path);
        for w in map {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let mut h = blake3::Hasher::new();
        h.update(&b[..HASHED_FIXED]);
        h.update(&b[FIXED_LEN as usize..]);
        b[HASHED_FIXED..FIXED_LEN as usize].copy_from_slice(h.finalize().as_bytes());
        b
    }

    /// Reads and checks the header of `file` (`file_len` bytes long), including that the file
    /// has the length the header implies.
    pub(crate) fn decode(path: &Path, file: &File, file_len: u64) -> Result<Header, SnapshotError> {
        let invalid = |reason: String| SnapshotError::MemHeaderInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let read = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, at)
                .map_err(|e| SnapshotError::io("read header of", path, e))
        };
        let mut magic = [0u8; 8];
        if file_len < 8 || {
            read(&mut magic, 0)?;
            magic != MEM_MAGIC
        } {
            return Err(SnapshotError::NotMemoryFile {
                path: path.to_path_buf(),
            });
        }
        if file_len < FIXED_LEN {
            return Err(invalid(format!(
                "the file is {file_len} bytes, shorter than the {FIXED_LEN}-byte header"
            )));
        }
        let mut fixed = [0u8; FIXED_LEN as usize];
        read(&mut fixed, 0)?;
        let version = u32_at(&fixed, 8);
        if version != MEM_FORMAT_VERSION {
            return Err(SnapshotError::MemVersion {
                path: path.to_path_buf(),
                found: version,
                supported: MEM_FORMAT_VERSION,
            });
        }
        let map_len = u64_at(&fixed, 112);
        let path_len = u64::from(u32_at(&fixed, 120));
        if path_len > MAX_PARENT_PATH {
            return Err(invalid(format!(
                "parent path of {path_len} bytes (at most {MAX_PARENT_PATH})"
            )));
        }
        // The page map's length follows from the kind and guest size: checked before it is
        // read, so a forged length never sizes an allocation.
        let want_map = match MemFileKind::from_code(u32_at(&fixed, 12)) {
            Some(MemFileKind::Full) => 0,
            Some(MemFileKind::Diff) => {
                let guest_size = u64_at(&fixed, 16);
                if guest_size > MAX_GUEST_SIZE {
                    return Err(invalid(format!(
                        "guest size {guest_size} is above the {MAX_GUEST_SIZE}-byte maximum"
                    )));
                }
                (guest_size / PAGE_SIZE).div_ceil(64) * 8
            }
            None => return Err(invalid(format!("unknown kind {}", u32_at(&fixed, 12)))),
        };
        if map_len != want_map {
            return Err(invalid(format!(
                "page map of {map_len} bytes, this kind and guest size need {want_map}"
            )));
        }
        let meta_end = FIXED_LEN
            .checked_add(path_len)
            .and_then(|v| v.checked_add(map_len))
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                invalid(format!(
                    "a {path_len}-byte parent path and a {map_len}-byte page map do not fit in the {file_len}-byte file"
                ))
            })?;
        // Bounded by the file's real length just above.
        let mut rest = vec![0u8; (meta_end - FIXED_LEN) as usize];
        read(&mut rest, FIXED_LEN)?;
        let mut h = blake3::Hasher::new();
        h.update(&fixed[..HASHED_FIXED]);
        h.update(&rest);
        if h.finalize().as_bytes()[..] != fixed[HASHED_FIXED..] {
            return Err(SnapshotError::MemHeaderCorrupted {
                path: path.to_path_buf(),
            });
        }

        let kind = MemFileKind::from_code(u32_at(&fixed, 12))
            .ok_or_else(|| invalid(format!("unknown kind {}", u32_at(&fixed, 12))))?;
        let guest_size = u64_at(&fixed, 16);
        let page_size = u32_at(&fixed, 24);
        let flags = u32_at(&fixed, 28);
        let data_offset = u64_at(&fixed, 32);
        let pages = u64_at(&fixed, 40);
        let content_hash = hash_at(&fixed, 48);
        let parent_hash = hash_at(&fixed, 80);
        if u64::from(page_size) != PAGE_SIZE {
            return Err(invalid(format!("page size {page_size}, not {PAGE_SIZE}")));
        }
        if flags != 0 || u32_at(&fixed, 124) != 0 {
            return Err(invalid(format!("unknown flags {flags:#x}")));
        }
        if !guest_size.is_multiple_of(PAGE_SIZE) {
            return Err(invalid(format!(
                "guest size {guest_size} is not a multiple of {PAGE_SIZE}"
            )));
        }
        let guest_pages = guest_size / PAGE_SIZE;
        if Some(data_offset) != align_page(meta_end) {
            return Err(invalid(format!(
                "data offset {data_offset}, the header ends at {meta_end}"
            )));
        }
        if pages > guest_pages {
            return Err(invalid(format!(
                "{pages} pages present in a guest of {guest_pages} pages"
            )));
        }
        let (rest_path, rest_map) = rest.split_at(path_len as usize);
        let mut flattened_from = None;
        let (parent, page_map) = match kind {
            MemFileKind::Full => {
                if path_len != 0 || map_len != 0 {
                    return Err(invalid(
                        "a full memory file with a parent or page map".into(),
                    ));
                }
                flattened_from = (parent_hash != [0; 32]).then_some(parent_hash);
                (None, None)
            }
            MemFileKind::Diff => {
                let want_map = guest_pages.div_ceil(64) * 8;
                if map_len != want_map {
                    return Err(invalid(format!(
                        "page map of {map_len} bytes, a guest of {guest_pages} pages needs {want_map}"
                    )));
                }
                if path_len == 0 {
                    return Err(invalid("a layer without a parent path".into()));
                }
                let words: Vec<u64> = rest_map.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
                let raw_count: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
                let map = PageSet::from_words(words, guest_pages);
                if map.count() != raw_count {
                    return Err(invalid("page map has pages past the guest's end".into()));
                }
                if raw_count != pages {
                    return Err(invalid(format!(
                        "page map holds {raw_count} pages, the header says {pages}"
                    )));
                }
                let parent = ParentRef {
                    content_hash: parent_hash,
                    path: PathBuf::from(std::ffi::OsString::from_vec(rest_path.to_vec())),
                };
                (Some(parent), Some(map))
            }
        };
        let header = Header {
            kind,
            guest_size,
            data_offset,
            pages,
            content_hash,
            parent,
            flattened_from,
            page_map,
        };
        let expected = header
            .expected_len()
            .ok_or_else(|| invalid("its sizes overflow".into()))?;
        if expected != file_len {
            return Err(SnapshotError::MemWrongSize {
                path: path.to_path_buf(),
                actual: file_len,
                expected,
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, set_of, write_at, PAGE};
    use crate::{read_header, resolve_chain, verify, write_diff, write_full};

    /// Recomputes the header hash after a test changed fields, as a forger would.
    fn rehash(path: &Path) {
        let b = std::fs::read(path).unwrap();
        let plen = u64::from(u32_at(&b, 120));
        let mlen = u64_at(&b, 112);
        let end = FIXED_LEN
            .saturating_add(plen)
            .saturating_add(mlen)
            .min(b.len() as u64) as usize;
        let mut h = blake3::Hasher::new();
        h.update(&b[..HASHED_FIXED]);
        h.update(&b[FIXED_LEN as usize..end]);
        write_at(path, HASHED_FIXED as u64, h.finalize().as_bytes());
    }

    fn layer() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut ram = vec![0u8; 130 * PAGE];
        fill(&mut ram, 1, 1);
        write_full(&dir.path().join("base"), &[&ram], &PageSet::full(130)).unwrap();
        let top = dir.path().join("top");
        write_diff(
            &top,
            &[&ram],
            &set_of(130, &[1, 129]),
            &dir.path().join("base"),
        )
        .unwrap();
        (dir, top)
    }

    #[test]
    fn forged_fields_with_a_valid_header_hash_are_refused_without_panics() {
        let cases: Vec<(u64, Vec<u8>)> = vec![
            (12, 9u32.to_le_bytes().to_vec()),              // kind
            (16, (u64::MAX - 4095).to_le_bytes().to_vec()), // guest size
            (16, 4097u64.to_le_bytes().to_vec()),           // guest size
            (16, (1u64 << 40).to_le_bytes().to_vec()),      // guest size
            (24, 8192u32.to_le_bytes().to_vec()),           // page size
            (28, 1u32.to_le_bytes().to_vec()),              // flags
            (32, 0u64.to_le_bytes().to_vec()),              // data offset
            (32, u64::MAX.to_le_bytes().to_vec()),          // data offset
            (40, u64::MAX.to_le_bytes().to_vec()),          // pages
            (40, 3u64.to_le_bytes().to_vec()),              // pages
            (112, u64::MAX.to_le_bytes().to_vec()),         // page map length
            (112, 8u64.to_le_bytes().to_vec()),             // page map length
            (120, u32::MAX.to_le_bytes().to_vec()),         // parent path length
            (120, 0u32.to_le_bytes().to_vec()),             // parent path length
            (FIXED_LEN + 4 + 16, vec![0xff]),               // page map: pages past the end
        ];
        for (at, bytes) in cases {
            let (_d, top) = layer();
            write_at(&top, at, &bytes);
            rehash(&top);
            let e = read_header(&top).expect_err(&format!("field at {at} = {bytes:?}"));
            assert!(
                matches!(
                    e,
                    SnapshotError::MemHeaderInvalid { .. } | SnapshotError::MemWrongSize { .. }
                ),
                "field at {at}: {e}"
            );
            assert!(resolve_chain(&top).is_err());
            assert!(verify(&top).is_err());
        }
    }

    #[test]
    fn every_single_byte_flip_of_the_header_is_refused() {
        let (_d, top) = layer();
        let data_offset = read_header(&top).unwrap().data_offset;
        let original = std::fs::read(&top).unwrap();
        for at in 0..(FIXED_LEN + 4 + 24) {
            let mut b = original.clone();
            b[at as usize] ^= 0x10;
            std::fs::write(&top, &b).unwrap();
            assert!(read_header(&top).is_err(), "flip at {at} accepted");
        }
        std::fs::write(&top, &original).unwrap();
        assert_eq!(read_header(&top).unwrap().data_offset, data_offset);
    }
}
