//! Snapshots: the state file format (header, version, checksum), memory layer files
//! (full and incremental), chain resolution and merge.
//!
//! Nothing lives here yet; issue 6 builds it.
