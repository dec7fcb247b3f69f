//! Data extents of a sparse file (`SEEK_DATA` / `SEEK_HOLE`), as page ranges.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::memfile::PAGE_SIZE;
use crate::SnapshotError;

fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `file` is an open file descriptor owned by the caller for the whole call; lseek
    // only moves that descriptor's offset, and every read in this crate uses pread, which
    // ignores the offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The pages of a full image at `data_offset` in `file` (of `pages` pages) that may hold data,
/// as ascending `(first page, count)` runs. A file system without `SEEK_DATA` gets one run
/// over everything.
pub(crate) fn data_page_runs(
    file: &File,
    path: &Path,
    data_offset: u64,
    pages: u64,
) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let end = data_offset + pages * PAGE_SIZE;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = data_offset;
    while pos < end {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && runs.is_empty() => {
                return Ok(vec![(0, pages)]);
            }
            Err(e) => return Err(SnapshotError::io("find data in", path, e)),
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)
            .map_err(|e| SnapshotError::io("find holes in", path, e))?
            .unwrap_or(end)
            .clamp(data, end);
        let first = data.saturating_sub(data_offset) / PAGE_SIZE;
        let last = hole.saturating_sub(data_offset).div_ceil(PAGE_SIZE);
        match runs.last_mut() {
            Some((s, n)) if *s + *n >= first => *n = (*n).max(last.saturating_sub(*s)),
            _ if last > first => runs.push((first, last - first)),
            _ => {}
        }
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_written_pages_of_a_sparse_file() {
        let f = tempfile::tempfile().unwrap();
        let data_offset = 4096;
        f.set_len(data_offset + 1024 * 4096).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[1u8; 8192], data_offset + 500 * 4096)
            .unwrap();
        let runs = data_page_runs(&f, Path::new("t"), data_offset, 1024).unwrap();
        // File systems may round extents up; the written pages must be covered.
        assert!(
            runs.iter().any(|&(s, n)| s <= 500 && s + n >= 502),
            "{runs:?}"
        );
        let covered: u64 = runs.iter().map(|r| r.1).sum();
        assert!(covered < 1024, "{runs:?}");
    }
}
