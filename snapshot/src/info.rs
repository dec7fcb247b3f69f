//! Human-readable descriptions of memory files, for `petrel snapshot info`.

use std::fmt::Write;

use crate::hex::hex;
use crate::memfile::MemFileInfo;

/// One block per file of a chain (base first, as [`crate::Chain::files`] returns it):
/// path, kind, sizes and hashes.
pub fn format_chain(files: &[MemFileInfo]) -> String {
    let mut s = String::new();
    for (i, f) in files.iter().enumerate() {
        let kind = f.kind.name();
        let _ = writeln!(s, "[{i}] {} ({kind})", f.path.display());
        let _ = writeln!(s, "    guest size:    {} bytes", f.guest_size);
        let _ = writeln!(s, "    pages:         {}", f.pages);
        let _ = writeln!(s, "    data offset:   {}", f.data_offset);
        let _ = writeln!(s, "    file length:   {} bytes", f.file_len);
        let _ = writeln!(s, "    on disk:       {} bytes", f.bytes_on_disk);
        let _ = writeln!(s, "    content hash:  {}", hex(&f.content_hash));
        if let Some(p) = &f.parent {
            let _ = writeln!(
                s,
                "    parent:        {} ({})",
                p.path.display(),
                hex(&p.content_hash)
            );
        }
        if let Some(h) = &f.flattened_from {
            let _ = writeln!(s, "    merged from:   {}", hex(h));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, set_of, PAGE};
    use crate::{resolve_chain, write_diff, write_full, PageSet};

    #[test]
    fn chain_description_names_every_file_and_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let mut ram = vec![0u8; 8 * PAGE];
        fill(&mut ram, 1, 1);
        let base = write_full(&dir.path().join("base"), &[&ram], &PageSet::full(8)).unwrap();
        write_diff(
            &dir.path().join("top"),
            &[&ram],
            &set_of(8, &[1]),
            &dir.path().join("base"),
        )
        .unwrap();
        let text = format_chain(&resolve_chain(&dir.path().join("top")).unwrap().files());
        assert!(
            text.contains("[0] ") && text.contains("base (full)"),
            "{text}"
        );
        assert!(
            text.contains("[1] ") && text.contains("top (diff)"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "parent:        base ({})",
            hex(&base.content_hash)
        )));
    }

    #[test]
    fn info_serializes_with_hex_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let ram = vec![0u8; 8 * PAGE];
        let base = write_full(&dir.path().join("base"), &[&ram], &PageSet::full(8)).unwrap();
        let top = write_diff(
            &dir.path().join("top"),
            &[&ram],
            &set_of(8, &[1]),
            &base.path,
        )
        .unwrap();
        let v = serde_json::to_value(&top).unwrap();
        assert_eq!(v["kind"], "Diff");
        assert_eq!(v["content_hash"], hex(&top.content_hash));
        assert_eq!(v["parent"]["content_hash"], hex(&base.content_hash));
        assert_eq!(v["parent"]["path"], "base");
    }
}
