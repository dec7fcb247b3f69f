//! Disk images for the block tests: contents the host can predict, and what the `blk`
//! scenario writes into them.

use std::path::{Path, PathBuf};

/// Bytes per sector.
pub const SECTOR: usize = 512;

/// Writes `dir/name`, an image of `sectors` sectors whose bytes are a known function of their
/// position (and `seed`), and returns its path.
pub fn image(dir: &Path, name: &str, sectors: usize, seed: u8) -> PathBuf {
    let bytes: Vec<u8> = (0..sectors * SECTOR)
        .map(|i| ((i / SECTOR) as u8).wrapping_mul(13) ^ (i as u8).wrapping_mul(7) ^ seed)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The pattern the `blk` scenario writes to sectors 8..16.
pub fn written_pattern() -> Vec<u8> {
    (8..16u64)
        .flat_map(|s| (0..SECTOR).map(move |k| ((s * 7 + k as u64) as u8) ^ 0x5a))
        .collect()
}
