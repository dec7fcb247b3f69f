//! Guest RAM as the VMM hands it over: region slices in layout order, concatenated into one
//! flat "RAM offset space".

use std::path::Path;

use crate::memfile::PAGE_SIZE;
use crate::SnapshotError;

/// Where each region starts in the RAM offset space.
pub(crate) struct RamLayout {
    starts: Vec<u64>,
    lens: Vec<u64>,
    size: u64,
}

impl RamLayout {
    /// `path` is the memory file the RAM is for (for the error message).
    pub(crate) fn new(
        path: &Path,
        lens: impl Iterator<Item = usize>,
    ) -> Result<Self, SnapshotError> {
        let mut starts = Vec::new();
        let mut region_lens = Vec::new();
        let mut size: u64 = 0;
        for (i, len) in lens.enumerate() {
            let len = len as u64;
            if !len.is_multiple_of(PAGE_SIZE) {
                return Err(SnapshotError::RamLayout {
                    path: path.to_path_buf(),
                    reason: format!("region {i} is {len} bytes, not a multiple of {PAGE_SIZE}"),
                });
            }
            starts.push(size);
            region_lens.push(len);
            size = size
                .checked_add(len)
                .ok_or_else(|| SnapshotError::RamLayout {
                    path: path.to_path_buf(),
                    reason: "regions add up past u64".into(),
                })?;
        }
        Ok(RamLayout {
            starts,
            lens: region_lens,
            size,
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Checks the RAM is `guest_size` bytes.
    pub(crate) fn expect_size(&self, path: &Path, guest_size: u64) -> Result<(), SnapshotError> {
        if self.size != guest_size {
            return Err(SnapshotError::RamLayout {
                path: path.to_path_buf(),
                reason: format!(
                    "the RAM is {} bytes, the memory file is for {guest_size}",
                    self.size
                ),
            });
        }
        Ok(())
    }

    /// Splits the RAM byte range `offset..offset + len` (which must lie inside the RAM) into
    /// `(region, offset in region, length, offset in the range)` pieces, one per region crossed.
    pub(crate) fn pieces(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Iterator<Item = (usize, usize, usize, u64)> + '_ {
        let mut pos = offset;
        let end = offset.saturating_add(len).min(self.size);
        let mut region = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        std::iter::from_fn(move || {
            while pos < end {
                let start = *self.starts.get(region)?;
                let rlen = *self.lens.get(region)?;
                let rend = start + rlen;
                if pos >= rend {
                    region += 1;
                    continue;
                }
                let take = (end - pos).min(rend - pos);
                let piece = (region, (pos - start) as usize, take as usize, pos - offset);
                pos += take;
                return Some(piece);
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_region_boundaries_and_skip_empty_regions() {
        let p = Path::new("m");
        let l = RamLayout::new(p, [8192usize, 0, 4096, 8192].into_iter()).unwrap();
        assert_eq!(l.size(), 20480);
        let v: Vec<_> = l.pieces(4096, 12288).collect();
        assert_eq!(
            v,
            vec![(0, 4096, 4096, 0), (2, 0, 4096, 4096), (3, 0, 4096, 8192)]
        );
    }

    #[test]
    fn region_not_a_page_multiple_is_refused() {
        let e = RamLayout::new(Path::new("m"), [4097usize].into_iter())
            .err()
            .unwrap();
        assert!(matches!(e, SnapshotError::RamLayout { .. }), "{e}");
    }
}
