//! Memory files: guest RAM as a sparse full image (`Full`) or as a layer holding only some
//! pages (`Diff`) on top of a parent.
//!
//! Guest RAM is one flat "RAM offset space" `0..guest_size` (the regions concatenated in
//! layout order), in 4 KiB pages. A file is a header (see [`header`]) and, from `data_offset`
//! (a multiple of 4096), the data:
//! - Full: the RAM image, RAM offset `o` at file offset `data_offset + o`; pages never written
//!   are holes. The file is exactly `data_offset + guest_size` bytes, so the VMM can map it
//!   `MAP_PRIVATE` region by region.
//! - Diff: the pages of the page map (a bitmap, one bit per guest page), packed densely in
//!   ascending order. The file is exactly `data_offset + pages * 4096` bytes.
//!
//! The content hash is blake3 over: kind (u32 LE), guest size (u64 LE), then for every present
//! page in ascending order its index (u64 LE) and its 4096 bytes. For Full, the present pages
//! are the non-zero pages held in the file.

pub(crate) mod chain;
pub(crate) mod header;
pub(crate) mod verify;
pub(crate) mod write;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::SnapshotError;
use header::Header;

pub const MEM_MAGIC: [u8; 8] = *b"PETRELMF";
pub const MEM_FORMAT_VERSION: u32 = 1;
pub const PAGE_SIZE: u64 = 4096;
/// The smallest data offset (a full file's); a layer's is larger when its page map needs it.
pub const HEADER_SIZE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MemFileKind {
    Full,
    Diff,
}

impl MemFileKind {
    /// `full` or `diff`, as state files and `petrel snapshot info` name it.
    pub fn name(self) -> &'static str {
        match self {
            MemFileKind::Full => "full",
            MemFileKind::Diff => "diff",
        }
    }

    fn code(self) -> u32 {
        match self {
            MemFileKind::Full => 1,
            MemFileKind::Diff => 2,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(MemFileKind::Full),
            2 => Some(MemFileKind::Diff),
            _ => None,
        }
    }
}

fn hash_as_hex<S: serde::Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::hex(hash))
}

/// A layer's parent as its header records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParentRef {
    #[serde(serialize_with = "hash_as_hex")]
    pub content_hash: [u8; 32],
    /// As written by the creator: relative to the layer's directory, or absolute.
    pub path: PathBuf,
}

/// What a memory file's header says, plus its sizes on disk. Serializes with hashes as hex
/// (for `petrel snapshot info --json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemFileInfo {
    pub path: PathBuf,
    pub kind: MemFileKind,
    pub guest_size: u64,
    /// Pages present: a layer's pages, or a full file's non-zero pages.
    pub pages: u64,
    #[serde(serialize_with = "hash_as_hex")]
    pub content_hash: [u8; 32],
    pub parent: Option<ParentRef>,
    pub file_len: u64,
    /// Space allocated on disk (`st_blocks * 512`): small for a sparse full file.
    pub bytes_on_disk: u64,
    /// Where the data starts (a multiple of 4096).
    pub data_offset: u64,
    /// For a full file written by `merge`: the identity of the memory it flattened (see
    /// [`MemFileInfo::identity`]).
    #[serde(serialize_with = "opt_hash_as_hex")]
    pub flattened_from: Option<[u8; 32]>,
}

impl MemFileInfo {
    /// Which guest memory this file holds, as a state file names it: its content hash, or
    /// for a merged file the identity of the chain it flattened — so a state file taken
    /// with a chain's top layer also accepts the chain's merged form.
    pub fn identity(&self) -> [u8; 32] {
        self.flattened_from.unwrap_or(self.content_hash)
    }
}

fn opt_hash_as_hex<S: serde::Serializer>(hash: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match hash {
        Some(h) => s.serialize_str(&crate::hex(h)),
        None => s.serialize_none(),
    }
}

/// Adds pages to a content hash, in ascending order.
///
/// The hash is BLAKE3 of (kind u32 ‖ guest size u64 ‖ for a Diff its parent's content hash ‖
/// BLAKE3 of the present pages' bytes, concatenated ‖ BLAKE3 of their indices as u64s), so a
/// layer's hash pins its whole chain. The page bytes go to a hasher of their
/// own, so a run of contiguous pages is hashed in one call with BLAKE3's SIMD parallelism
/// (interleaving each page with its index costs four times as much).
pub(crate) struct ContentHasher {
    kind: MemFileKind,
    guest_size: u64,
    parent: Option<[u8; 32]>,
    data: blake3::Hasher,
    indices: blake3::Hasher,
}

impl ContentHasher {
    pub(crate) fn new(kind: MemFileKind, guest_size: u64, parent: Option<[u8; 32]>) -> Self {
        ContentHasher {
            kind,
            guest_size,
            parent,
            data: blake3::Hasher::new(),
            indices: blake3::Hasher::new(),
        }
    }

    pub(crate) fn page(&mut self, index: u64, data: &[u8]) {
        self.pages(index, data);
    }

    /// Pages `first`, `first + 1`, ... whose bytes are `data` (a multiple of the page size).
    pub(crate) fn pages(&mut self, first: u64, data: &[u8]) {
        self.data.update(data);
        for i in 0..(data.len() as u64 / PAGE_SIZE) {
            self.indices.update(&(first + i).to_le_bytes());
        }
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.kind.code().to_le_bytes());
        h.update(&self.guest_size.to_le_bytes());
        if let Some(parent) = &self.parent {
            h.update(parent);
        }
        h.update(self.data.finalize().as_bytes());
        h.update(self.indices.finalize().as_bytes());
        *h.finalize().as_bytes()
    }
}

pub(crate) fn is_zero(page: &[u8]) -> bool {
    page.chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// An open, checked memory file.
pub(crate) struct MemFile {
    pub file: File,
    pub header: Header,
    pub info: MemFileInfo,
}

impl MemFile {
    pub(crate) fn open(path: &Path) -> Result<Self, SnapshotError> {
        let file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
        Self::from_file(path, file)
    }

    pub(crate) fn from_file(path: &Path, file: File) -> Result<Self, SnapshotError> {
        let meta = file
            .metadata()
            .map_err(|e| SnapshotError::io("stat", path, e))?;
        let header = Header::decode(path, &file, meta.len())?;
        let info = MemFileInfo {
            path: path.to_path_buf(),
            kind: header.kind,
            guest_size: header.guest_size,
            pages: header.pages,
            content_hash: header.content_hash,
            parent: header.parent.clone(),
            file_len: meta.len(),
            bytes_on_disk: meta.blocks().saturating_mul(512),
            data_offset: header.data_offset,
            flattened_from: header.flattened_from,
        };
        Ok(MemFile { file, header, info })
    }
}

/// Reads and checks the header of the memory file at `path` (not its data: see
/// [`crate::verify`]).
pub fn read_header(path: &Path) -> Result<MemFileInfo, SnapshotError> {
    Ok(MemFile::open(path)?.info)
}
