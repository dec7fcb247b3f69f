//! Guest memory backed by a snapshot's memory file, mapped copy-on-write.

use std::fs::File;
use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::FileOffset;

use crate::{GuestMemoryMmap, MemoryError, MemoryLayout, PAGE_SIZE};

impl MemoryLayout {
    /// Maps guest memory for this layout from `file`: the RAM offset space `0..size()` is
    /// the file's bytes `data_offset..data_offset + size()`, region by region.
    ///
    /// Each region is mapped `MAP_PRIVATE`: the guest and the VMM read the file's pages as
    /// they are first touched (restore copies nothing) and their writes go to private copies,
    /// never to the file. Holes in a sparse file read as zeros. The memory has the same dirty
    /// bitmap as `allocate`'s.
    ///
    /// The mapping keeps a duplicate of `file`'s descriptor (sharing its file position). The
    /// file must not be truncated while the memory lives: touching a page past its new end
    /// would raise SIGBUS.
    pub fn map_file(&self, file: &File, data_offset: u64) -> Result<GuestMemoryMmap, MemoryError> {
        if !data_offset.is_multiple_of(PAGE_SIZE as u64) {
            return Err(MemoryError::UnalignedFileOffset {
                offset: data_offset,
            });
        }
        let size = self.size();
        let len = file.metadata().map_err(MemoryError::FileMetadata)?.len();
        let needed = data_offset.checked_add(size);
        if needed.is_none_or(|n| len < n) {
            return Err(MemoryError::FileTooShort {
                len,
                needed: needed.unwrap_or(u64::MAX),
                offset: data_offset,
                size,
            });
        }
        let file = Arc::new(file.try_clone().map_err(MemoryError::FileMetadata)?);
        self.build(|r, ram_offset| {
            let offset = data_offset + ram_offset;
            let map_err = |source| MemoryError::MapFile {
                offset,
                size: r.len,
                source,
            };
            let bitmap = AtomicBitmap::new(r.len as usize, PAGE_SIZE.try_into().unwrap());
            MmapRegionBuilder::new_with_bitmap(r.len as usize, bitmap)
                .with_file_offset(FileOffset::from_arc(file.clone(), offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(map_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    fn file_of(len: u64, writes: &[(u64, &[u8])]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        for (at, bytes) in writes {
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(bytes).unwrap();
        }
        f
    }

    #[test]
    fn mapped_memory_reads_the_file_and_guest_writes_do_not_reach_it() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let mut f = file_of(
            8192 + 16 * MIB,
            &[(8192 + 0x5000, b"petrel"), (8192 + 16 * MIB - 1, b"z")],
        );

        let mem = layout.map_file(&f, 8192).unwrap();

        let mut got = [0u8; 6];
        mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(&got, b"petrel");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(16 * MIB - 1)).unwrap(),
            b'z'
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 0);

        mem.write_slice(b"PETREL", GuestAddress(0x5000)).unwrap();
        mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        assert_eq!(&got, b"PETREL");
        let mut on_disk = [0u8; 6];
        f.seek(SeekFrom::Start(8192 + 0x5000)).unwrap();
        f.read_exact(&mut on_disk).unwrap();
        assert_eq!(&on_disk, b"petrel");
        // The same dirty bitmap as allocated memory.
        assert_eq!(
            crate::pages_in(&crate::take_vmm_dirty(&mem)).collect::<Vec<_>>(),
            vec![5]
        );
    }

    #[test]
    fn a_file_shorter_than_offset_plus_size_is_refused() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let f = file_of(16 * MIB, &[]);
        assert!(layout.map_file(&f, 0).is_ok());
        let err = layout.map_file(&f, 4096).unwrap_err();
        assert!(
            matches!(err, MemoryError::FileTooShort { len, needed, .. } if len == 16 * MIB && needed == 16 * MIB + 4096),
            "{err}"
        );
        assert!(matches!(
            layout.map_file(&f, u64::MAX - 4095),
            Err(MemoryError::FileTooShort { .. })
        ));
    }

    #[test]
    fn an_unaligned_offset_is_refused() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let f = file_of(32 * MIB, &[]);
        assert!(matches!(
            layout.map_file(&f, 512),
            Err(MemoryError::UnalignedFileOffset { offset: 512 })
        ));
    }

    #[test]
    fn regions_above_the_gap_map_the_following_file_bytes() {
        let layout = MemoryLayout::new((3 << 30) + 16 * MIB).unwrap();
        let f = file_of(
            4096 + (3 << 30) + 16 * MIB,
            &[(4096 + (3 << 30) + 0x10, b"high")],
        );
        let mem = layout.map_file(&f, 4096).unwrap();
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress((4 << 30) + 0x10))
            .unwrap();
        assert_eq!(&got, b"high");
    }
}
