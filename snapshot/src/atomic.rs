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
