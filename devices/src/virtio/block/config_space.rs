//! The device-specific configuration space, `struct virtio_blk_config` (virtio 1.2, 5.2.4),
//! laid out little-endian up to `write_zeroes_may_unmap`. Secure erase and zoned fields
//! follow in the spec; the device offers neither, so they read as zero like everything past
//! the end.

use super::request::SEG_MAX;
use super::SECTOR_SIZE;

pub(super) const CAPACITY: usize = 0;
pub(super) const SEG_MAX_OFFSET: usize = 12;
pub(super) const BLK_SIZE: usize = 20;
pub(super) const NUM_QUEUES: usize = 34;
pub(super) const MAX_DISCARD_SECTORS: usize = 36;
pub(super) const MAX_DISCARD_SEG: usize = 40;
pub(super) const DISCARD_SECTOR_ALIGNMENT: usize = 44;
pub(super) const MAX_WRITE_ZEROES_SECTORS: usize = 48;
pub(super) const MAX_WRITE_ZEROES_SEG: usize = 52;
pub(super) const WRITE_ZEROES_MAY_UNMAP: usize = 56;
/// Bytes up to and including `write_zeroes_may_unmap` and its padding.
pub(super) const CONFIG_LEN: usize = 60;

/// Discards are aligned to 4 KiB, the granularity at which files can be deallocated.
const DISCARD_ALIGNMENT_SECTORS: u32 = 4096 / SECTOR_SIZE as u32;

/// The config space of a disk of `capacity` sectors.
pub(super) fn build(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut cfg = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        cfg[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(CAPACITY, &capacity.to_le_bytes());
    // size_max (8), geometry (16) and topology (24..32) are not offered: zero.
    put(SEG_MAX_OFFSET, &SEG_MAX.to_le_bytes());
    put(BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
    // writeback (32) = 0: CONFIG_WCE is not offered; FLUSH says writes need a flush to persist.
    put(NUM_QUEUES, &1u16.to_le_bytes());
    put(MAX_DISCARD_SECTORS, &u32::MAX.to_le_bytes());
    put(MAX_DISCARD_SEG, &1u32.to_le_bytes());
    put(
        DISCARD_SECTOR_ALIGNMENT,
        &DISCARD_ALIGNMENT_SECTORS.to_le_bytes(),
    );
    put(MAX_WRITE_ZEROES_SECTORS, &u32::MAX.to_le_bytes());
    put(MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
    put(WRITE_ZEROES_MAY_UNMAP, &[1]);
    cfg
}

/// Copies `data.len()` bytes of `cfg` at `offset` into `data`; bytes past the end read zero.
pub(super) fn read(cfg: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = cfg.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
