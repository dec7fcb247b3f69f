//! The one error type of the crate: every refusal has its own variant, and its message names
//! the file and what is wrong with it.

use std::path::PathBuf;

use crate::hex::hex;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- state file ----
    #[error("{} is not a petrel state file (bad magic or shorter than the {header}-byte header)", path.display())]
    NotStateFile { path: PathBuf, header: u64 },
    #[error("state file {} has format version {found}, this petrel reads version {supported}", path.display())]
    StateVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("state file {} has unknown flags {flags:#x}", path.display())]
    StateFlags { path: PathBuf, flags: u32 },
    #[error("state file {} is {len} bytes, more than the {max} a state file may have", path.display())]
    StateTooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("state file {} is truncated: it is {actual} bytes, its header says {expected}", path.display())]
    StateTruncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("state file {} has {extra} trailing bytes after its checksum", path.display())]
    StateTrailingBytes { path: PathBuf, extra: u64 },
    #[error("state file {} is corrupted: checksum mismatch (stored {}, computed {})", path.display(), hex(stored), hex(computed))]
    StateChecksum {
        path: PathBuf,
        stored: [u8; 32],
        computed: [u8; 32],
    },
    #[error("state file {}: the state does not parse at {}: {}", path.display(), source.path(), source.inner())]
    StateParse {
        path: PathBuf,
        #[source]
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    #[error("state file {}: text after the state tree in the payload: {source}", path.display())]
    StatePayloadTrailing {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot serialize the state for {}: {source}", path.display())]
    StateSerialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    // ---- memory files ----
    #[error("{} is not a petrel memory file (bad magic)", path.display())]
    NotMemoryFile { path: PathBuf },
    #[error("memory file {} has format version {found}, this petrel reads version {supported}", path.display())]
    MemVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("memory file {} has a corrupted header (header hash mismatch)", path.display())]
    MemHeaderCorrupted { path: PathBuf },
    #[error("memory file {} has an invalid header: {reason}", path.display())]
    MemHeaderInvalid { path: PathBuf, reason: String },
    #[error("memory file {} is {actual} bytes, its header says {expected}", path.display())]
    MemWrongSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("memory file {} is corrupted: its data hashes to {}, its header says {}", path.display(), hex(computed), hex(expected))]
    ContentHashMismatch {
        path: PathBuf,
        expected: [u8; 32],
        computed: [u8; 32],
    },
    #[error("memory file {} holds {actual} non-zero pages, its header says {expected}", path.display())]
    PageCountMismatch {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },

    // ---- chains ----
    #[error("parent memory file {} of {} is missing (it should have content hash {})", path.display(), child.display(), hex(hash))]
    MissingParent {
        path: PathBuf,
        child: PathBuf,
        hash: [u8; 32],
    },
    #[error("parent memory file {} of {} has content hash {}, the child expects {}", parent.display(), child.display(), hex(found), hex(expected))]
    ParentHashMismatch {
        child: PathBuf,
        parent: PathBuf,
        expected: [u8; 32],
        found: [u8; 32],
    },
    #[error("memory file {} is for a guest of {child_size} bytes, its parent {} for {parent_size} bytes", child.display(), parent.display())]
    GuestSizeMismatch {
        child: PathBuf,
        child_size: u64,
        parent: PathBuf,
        parent_size: u64,
    },
    #[error("{} is a file of the memory chain the new file is made from: writing it would break that chain", path.display())]
    ParentIsDestination { path: PathBuf },
    #[error("memory chain from {} has a cycle: {} comes back", top.display(), repeated.display())]
    ChainCycle { top: PathBuf, repeated: PathBuf },
    #[error("memory chain from {} is longer than {max} layers", top.display())]
    ChainTooLong { top: PathBuf, max: usize },

    // ---- caller's inputs ----
    #[error("guest RAM for {}: {reason}", path.display())]
    RamLayout { path: PathBuf, reason: String },
    #[error("page set for {} covers {set_pages} pages, the guest has {guest_pages}", path.display())]
    PageSetSize {
        path: PathBuf,
        set_pages: u64,
        guest_pages: u64,
    },
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SnapshotError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
