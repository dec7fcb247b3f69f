//! Helpers for the unit tests: guest RAM with recognizable pages, files to damage.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::memfile::header::Header;
use crate::memfile::{MemFileKind, ParentRef};
use crate::{read_header, PageSet};

pub(crate) const PAGE: usize = 4096;

/// Fills page `page` of `ram` with a pattern derived from `page` and `seed` (never zero).
pub(crate) fn fill(ram: &mut [u8], page: u64, seed: u8) {
    let page = page as usize;
    for (i, b) in ram[page * PAGE..(page + 1) * PAGE].iter_mut().enumerate() {
        *b = (i as u8)
            .wrapping_mul(31)
            .wrapping_add(seed)
            .wrapping_add(page as u8)
            | 1;
    }
}

pub(crate) fn zero(ram: &mut [u8], page: u64) {
    let page = page as usize;
    ram[page * PAGE..(page + 1) * PAGE].fill(0);
}

pub(crate) fn set_of(pages: u64, members: &[u64]) -> PageSet {
    let mut s = PageSet::new(pages);
    for &p in members {
        assert!(s.insert(p));
    }
    s
}

/// The RAM image a full memory file holds.
pub(crate) fn full_image(path: &Path) -> Vec<u8> {
    let info = read_header(path).unwrap();
    let f = std::fs::File::open(path).unwrap();
    let mut ram = vec![0u8; info.guest_size as usize];
    f.read_exact_at(&mut ram, info.data_offset).unwrap();
    ram
}

/// XORs the byte at `at` with 0x40.
pub(crate) fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

pub(crate) fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

pub(crate) fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Writes a memory file with an arbitrary (well-formed, self-consistent) header and no
/// data pages: for chains no writer would produce.
pub(crate) fn craft(
    path: &Path,
    kind: MemFileKind,
    guest_pages: u64,
    content_hash: [u8; 32],
    parent: Option<(PathBuf, [u8; 32])>,
) {
    let parent = parent.map(|(path, content_hash)| ParentRef { content_hash, path });
    let page_map = (kind == MemFileKind::Diff).then(|| PageSet::new(guest_pages));
    let header = Header {
        kind,
        guest_size: guest_pages * PAGE as u64,
        data_offset: Header::data_offset_for(parent.as_ref(), page_map.as_ref()),
        pages: 0,
        content_hash,
        parent,
        flattened_from: None,
        page_map,
    };
    std::fs::write(path, header.encode()).unwrap();
    set_len(path, header.expected_len().unwrap());
}
