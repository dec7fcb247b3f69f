//! A file written under a temporary name in its destination's directory and renamed over the
//! destination once complete: a failed write leaves neither a half file nor a damaged old one.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SnapshotError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> Result<Self, SnapshotError> {
        let name = dest.file_name().ok_or_else(|| {
            SnapshotError::io(
                "create",
                dest,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dest.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| SnapshotError::io("create temporary file", &tmp, e))?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            tmp,
            file,
            committed: false,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The destination path (for error messages).
    pub(crate) fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temporary file over the destination and returns the open file.
    pub(crate) fn commit(mut self) -> Result<File, SnapshotError> {
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| SnapshotError::io("rename temporary file over", &self.dest, e))?;
        self.committed = true;
        let file = self
            .file
            .try_clone()
            .map_err(|e| SnapshotError::io("reopen", &self.dest, e))?;
        Ok(file)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Flushes the file at `path` and its directory entry to disk. The writers of this crate do
/// not `fsync` (it costs about 1 ms per file plus the data's write-back, ~9 ms for 16 MiB here):
/// an error never leaves a half file, but after a host crash soon after a write the rename may
/// have reached the disk before the data. `resolve_chain` checks headers and sizes, only
/// `verify` checks data; a caller that needs a snapshot to survive a host crash calls this on
/// every file it wrote.
pub fn sync_to_disk(path: &Path) -> Result<(), SnapshotError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("sync", path, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dropped_without_commit_leaves_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        {
            let f = AtomicFile::create(&dest).unwrap();
            f.file().write_all(b"new, half").unwrap();
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sync_to_disk_of_a_written_file_succeeds_and_of_a_missing_one_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"x").unwrap();
        sync_to_disk(&dest).unwrap();
        let e = sync_to_disk(&dir.path().join("gone")).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn commit_replaces_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let f = AtomicFile::create(&dest).unwrap();
        f.file().write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
