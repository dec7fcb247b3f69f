//! Snapshots: the state file format (header, version, checksum), memory layer files
//! (full and incremental), chain resolution and merge.
//!
//! - [`write_state`] / [`read_state`]: the state tree as one checksummed file.
//!
//! Pure library code: no KVM. Every write goes to a temporary file in the destination's
//! directory and is renamed over the destination only once it is complete.

mod atomic;
mod error;
mod hex;
mod state_file;

pub use error::SnapshotError;
pub use hex::hex;
pub use state_file::{read_state, write_state, STATE_FORMAT_VERSION, STATE_MAGIC};
