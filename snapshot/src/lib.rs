//! Snapshots: the state file format (header, version, checksum), memory layer files
//! (full and incremental), chain resolution and merge.
//!
//! - [`write_state`] / [`read_state`]: the state tree as one checksummed file.
//! - [`write_full`] / [`write_diff`]: guest RAM as a sparse full image or a layer of pages.
//! - [`resolve_chain`], [`Chain::apply_layers`], [`merge`], [`verify`]: chains of layers.
//!
//! Pure library code: no KVM. Every write goes to a temporary file in the destination's
//! directory and is renamed over the destination only once it is complete.

mod atomic;
mod error;
mod extents;
mod hex;
mod info;
mod memfile;
mod merge;
mod pageset;
mod ram;
mod state_file;

pub use atomic::sync_to_disk;
pub use error::SnapshotError;
pub use hex::hex;
pub use info::format_chain;
pub use memfile::chain::{resolve_chain, Chain, MAX_CHAIN_LAYERS};
pub use memfile::verify::verify;
pub use memfile::write::{check_destination, write_diff, write_full};
pub use memfile::{
    read_header, MemFileInfo, MemFileKind, ParentRef, HEADER_SIZE, MEM_FORMAT_VERSION, MEM_MAGIC,
    PAGE_SIZE,
};
pub use merge::merge;
pub use pageset::PageSet;
pub use state_file::{read_state, write_state, STATE_FORMAT_VERSION, STATE_MAGIC};

#[cfg(test)]
mod test_util;
