//! The state file: the serialized state tree of a paused VM.
//!
//! Layout (all integers little-endian):
//! `magic "PETRELSS" (8) | format version u32 | flags u32 (0) | payload length u64 |
//! payload (serde_json of the state tree) | blake3 of everything before it (32)`.
//! JSON because the tree holds `#[serde(untagged)]` types, which need a self-describing format.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::SnapshotError;

pub const STATE_MAGIC: [u8; 8] = *b"PETRELSS";
pub const STATE_FORMAT_VERSION: u32 = 1;

const HEADER_LEN: u64 = 24;
const CHECKSUM_LEN: u64 = 32;
/// The largest state file read (a machine's state is kilobytes; a GPU's pixels a few MiB).
pub const MAX_STATE_FILE: u64 = 1 << 30;

/// Serializes `state` and writes it atomically to `path` (temporary file, then rename).
pub fn write_state<T: serde::Serialize>(path: &Path, state: &T) -> Result<(), SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(|source| SnapshotError::StateSerialize {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buf = Vec::with_capacity(payload.len() + (HEADER_LEN + CHECKSUM_LEN) as usize);
    buf.extend_from_slice(&STATE_MAGIC);
    buf.extend_from_slice(&STATE_FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&payload);
    let checksum = blake3::hash(&buf);
    buf.extend_from_slice(checksum.as_bytes());

    let out = AtomicFile::create(path)?;
    out.file()
        .write_all_at(&buf, 0)
        .map_err(|e| SnapshotError::io("write", path, e))?;
    out.commit()?;
    Ok(())
}

/// Reads and checks a state file written by [`write_state`]; nothing is deserialized unless
/// the magic, version, lengths and checksum are right.
pub fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| SnapshotError::io("stat", path, e))?
        .len();
    let not_state = || SnapshotError::NotStateFile {
        path: path.to_path_buf(),
        header: HEADER_LEN,
    };
    if file_len < HEADER_LEN {
        return Err(not_state());
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| SnapshotError::io("read", path, e))?;
    if header[0..8] != STATE_MAGIC {
        return Err(not_state());
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != STATE_FORMAT_VERSION {
        return Err(SnapshotError::StateVersion {
            path: path.to_path_buf(),
            found: version,
            supported: STATE_FORMAT_VERSION,
        });
    }
    let flags = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if flags != 0 {
        return Err(SnapshotError::StateFlags {
            path: path.to_path_buf(),
            flags,
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[16..24]);
    let payload_len = u64::from_le_bytes(len_bytes);
    let expected = payload_len.saturating_add(HEADER_LEN + CHECKSUM_LEN);
    if expected > file_len {
        return Err(SnapshotError::StateTruncated {
            path: path.to_path_buf(),
            actual: file_len,
            expected,
        });
    }
    if expected < file_len {
        return Err(SnapshotError::StateTrailingBytes {
            path: path.to_path_buf(),
            extra: file_len - expected,
        });
    }

    if file_len > MAX_STATE_FILE {
        return Err(SnapshotError::StateTooLarge {
            path: path.to_path_buf(),
            len: file_len,
            max: MAX_STATE_FILE,
        });
    }
    // `expected == file_len`, a size the file really has (and at most MAX_STATE_FILE),
    // bounds the allocation.
    let capacity = usize::try_from(file_len).map_err(|_| not_state())?;
    let mut buf = Vec::with_capacity(capacity);
    (&file)
        .take(file_len)
        .read_to_end(&mut buf)
        .map_err(|e| SnapshotError::io("read", path, e))?;
    if buf.len() as u64 != file_len {
        return Err(SnapshotError::StateTruncated {
            path: path.to_path_buf(),
            actual: buf.len() as u64,
            expected,
        });
    }
    let body_len = buf.len() - CHECKSUM_LEN as usize;
    let (body, stored) = buf.split_at(body_len);
    let computed = blake3::hash(body);
    if computed.as_bytes() != stored {
        let mut stored_arr = [0u8; 32];
        stored_arr.copy_from_slice(stored);
        return Err(SnapshotError::StateChecksum {
            path: path.to_path_buf(),
            stored: stored_arr,
            computed: *computed.as_bytes(),
        });
    }
    let payload = &body[HEADER_LEN as usize..];
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value: T =
        serde_path_to_error::deserialize(&mut de).map_err(|source| SnapshotError::StateParse {
            path: path.to_path_buf(),
            source,
        })?;
    de.end()
        .map_err(|source| SnapshotError::StatePayloadTrailing {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::os::unix::fs::FileExt;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Reg {
        Wide(u64, u64),
        Narrow(u32),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Tree {
        name: String,
        regs: Vec<Reg>,
        nested: Option<Box<Tree>>,
    }

    fn sample() -> Tree {
        Tree {
            name: "vcpu0".into(),
            regs: vec![Reg::Wide(1, u64::MAX), Reg::Narrow(7)],
            nested: Some(Box::new(Tree {
                name: "lapic".into(),
                regs: vec![],
                nested: None,
            })),
        }
    }

    fn written() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.state");
        write_state(&path, &sample()).unwrap();
        (dir, path)
    }

    fn flip(path: &Path, at: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn written_state_reads_back_equal_including_untagged_types() {
        let (_d, path) = written();
        let back: Tree = read_state(&path).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn flipped_payload_byte_is_a_checksum_mismatch() {
        let (_d, path) = written();
        flip(&path, HEADER_LEN + 3);
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateChecksum { .. }), "{e}");
        assert!(e.to_string().contains("vm.state") && e.to_string().contains("corrupted"));
    }

    #[test]
    fn flipped_checksum_byte_is_a_checksum_mismatch() {
        let (_d, path) = written();
        let len = std::fs::metadata(&path).unwrap().len();
        flip(&path, len - 1);
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateChecksum { .. }), "{e}");
    }

    #[test]
    fn other_version_is_refused_naming_both_versions() {
        let (_d, path) = written();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::StateVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("version 2") && e.to_string().contains("version 1"));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let (_d, path) = written();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&1u32.to_le_bytes(), 12).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(
            matches!(e, SnapshotError::StateFlags { flags: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn truncated_file_is_refused_as_truncated() {
        let (_d, path) = written();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateTruncated { .. }), "{e}");
    }

    #[test]
    fn huge_payload_length_is_truncated_not_an_allocation() {
        let (_d, path) = written();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&u64::MAX.to_le_bytes(), 16).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateTruncated { .. }), "{e}");
    }

    #[test]
    fn appended_bytes_are_refused_as_trailing() {
        let (_d, path) = written();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"junk");
        std::fs::write(&path, bytes).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(
            matches!(e, SnapshotError::StateTrailingBytes { extra: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn bad_magic_and_short_files_are_not_state_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"PETREL").unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::NotStateFile { .. }), "{e}");
        std::fs::write(&path, [0u8; 100]).unwrap();
        let e = read_state::<Tree>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::NotStateFile { .. }), "{e}");
    }

    #[test]
    fn payload_of_another_shape_is_a_parse_error_with_its_path() {
        let (_d, path) = written();
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Other {
            name: String,
            regs: Vec<Reg>,
            nested: Option<Box<Other>>,
            extra: u8,
        }
        let e = read_state::<Other>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateParse { .. }), "{e}");
        assert!(e.to_string().contains("nested"), "{e}");
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let (dir, path) = written();
        let e = write_state(&path, &Fails).unwrap_err();
        assert!(matches!(e, SnapshotError::StateSerialize { .. }), "{e}");
        assert_eq!(read_state::<Tree>(&path).unwrap(), sample());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_sparse_giant_state_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("giant");
        let mut header = Vec::new();
        header.extend_from_slice(&STATE_MAGIC);
        header.extend_from_slice(&STATE_FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&MAX_STATE_FILE.to_le_bytes());
        std::fs::write(&path, &header).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(HEADER_LEN + MAX_STATE_FILE + CHECKSUM_LEN)
            .unwrap();
        let e = read_state::<u32>(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::StateTooLarge { .. }), "{e}");
    }
}
