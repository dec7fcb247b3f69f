//! Guest memory backed by a snapshot's memory file, mapped copy-on-write.

use std::fs::File;
use std::os::fd::AsRawFd;
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
        self.map_file_with(file, data_offset, libc::MAP_PRIVATE)
    }

    /// Guest memory in a new memfd, mapped `MAP_SHARED`: another process given the memfd
    /// (live migration on one host, vhost-user back ends) sees the same pages. Pages are
    /// not touched, so the host commits only what the guest uses.
    ///
    /// The memfd is sealed against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`)
    /// once it has the guest's size: no process holding it can truncate it under a mapping,
    /// which would make the next access to a page past the new end raise SIGBUS.
    pub fn allocate_shared(&self) -> Result<GuestMemoryMmap, MemoryError> {
        let file = sealed_memfd(c"petrel-guest-ram", self.size()).map_err(MemoryError::Memfd)?;
        self.map_shared(&file)
    }

    /// Guest memory for this layout in `file` (a memfd from [`MemoryLayout::allocate_shared`]
    /// of another process), mapped `MAP_SHARED` from offset 0.
    ///
    /// The file must be sealed with `F_SEAL_SHRINK` and `F_SEAL_GROW` and be exactly
    /// `size()` bytes long, else `SharedFileRefused`: an unsealed file could be truncated by
    /// the peer that sent it, and the guest or the VMM would then fault (SIGBUS) on its pages.
    pub fn map_shared(&self, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
        let seals = seals_of(file)?;
        let len = file.metadata().map_err(MemoryError::FileMetadata)?.len();
        if seals & REQUIRED_SEALS != REQUIRED_SEALS || len != self.size() {
            return Err(MemoryError::SharedFileRefused {
                seals,
                len,
                size: self.size(),
            });
        }
        self.map_file_with(file, 0, libc::MAP_SHARED)
    }

    fn map_file_with(
        &self,
        file: &File,
        data_offset: u64,
        sharing: i32,
    ) -> Result<GuestMemoryMmap, MemoryError> {
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
                .with_mmap_flags(sharing | libc::MAP_NORESERVE)
                .build()
                .map_err(map_err)
        })
    }
}

/// The seals shared guest memory must have: its size can never change.
const REQUIRED_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// `file`'s seals; 0 for a file that cannot be sealed at all (not a memfd or tmpfs file).
fn seals_of(file: &File) -> Result<i32, MemoryError> {
    // SAFETY: `file` owns its descriptor for this call; F_GET_SEALS only reads the seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 {
        return Ok(seals);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        Ok(0)
    } else {
        Err(MemoryError::FileMetadata(err))
    }
}

/// A new memfd named `name` of `size` bytes, sealed against shrinking and growing
/// (`F_SEAL_SHRINK | F_SEAL_GROW`): a process it is shared with cannot truncate it under a
/// mapping, which would make the next access past the new end raise SIGBUS.
pub fn sealed_memfd(name: &std::ffi::CStr, size: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated string; memfd_create only reads it.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size)?;
    // SAFETY: `file` owns the memfd for this call; F_ADD_SEALS takes an int of seal bits
    // and only changes which operations the file allows from now on.
    let sealed = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if sealed < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The file every region of `mem` is mapped `MAP_SHARED` from (memory from
/// [`MemoryLayout::allocate_shared`] or `map_shared`), or `None` when it is not all one
/// shared file.
pub fn shared_file(mem: &GuestMemoryMmap) -> Option<&File> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut file: Option<&File> = None;
    for region in mem.iter() {
        let offset = region.file_offset()?;
        if region.flags() & libc::MAP_SHARED == 0 {
            return None;
        }
        match file {
            Some(f) if !std::ptr::eq(f, offset.file()) => return None,
            _ => file = Some(offset.file()),
        }
    }
    file
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

    #[test]
    fn shared_memory_is_one_memfd_another_mapping_of_which_sees_the_guests_writes() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let mem = layout.allocate_shared().unwrap();
        mem.write_slice(b"moved", GuestAddress(5 * MIB)).unwrap();
        let file = shared_file(&mem).expect("one shared file");
        assert_eq!(file.metadata().unwrap().len(), 16 * MIB);

        let other = layout.map_shared(file).unwrap();
        let mut buf = [0u8; 5];
        other.read_slice(&mut buf, GuestAddress(5 * MIB)).unwrap();
        assert_eq!(&buf, b"moved");
        other.write_slice(b"back", GuestAddress(MIB)).unwrap();
        let mut buf = [0u8; 4];
        mem.read_slice(&mut buf, GuestAddress(MIB)).unwrap();
        assert_eq!(&buf, b"back");
        // What the guest touched is what a full snapshot or a migration's first round sends.
        let touched = crate::resident_pages(&mem).unwrap();
        assert_eq!(
            crate::pages_in(&touched).collect::<Vec<_>>(),
            vec![256, 1280]
        );

        // Anonymous and private file memory have no shared file.
        assert!(shared_file(&layout.allocate().unwrap()).is_none());
        let f = file_of(16 * MIB, &[]);
        assert!(shared_file(&layout.map_file(&f, 0).unwrap()).is_none());
        // A file too short for the layout is refused.
        let short = file_of(MIB, &[]);
        assert!(layout.map_shared(&short).is_err());
    }

    /// A memfd that allows sealing, `len` bytes long, with `seals` added.
    fn memfd(len: u64, seals: i32) -> File {
        // SAFETY: the name is NUL-terminated; memfd_create only reads it.
        let fd = unsafe {
            libc::memfd_create(
                c"test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        // SAFETY: `file` owns the memfd; F_ADD_SEALS only restricts later operations.
        let added = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        assert_eq!(added, 0);
        file
    }

    #[test]
    fn shared_memory_is_sealed_so_no_holder_can_resize_it() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let mem = layout.allocate_shared().unwrap();
        let file = shared_file(&mem).unwrap();
        assert_eq!(seals_of(file).unwrap() & REQUIRED_SEALS, REQUIRED_SEALS);
        assert!(layout.map_shared(file).is_ok());

        let shrink = file.set_len(MIB).unwrap_err();
        assert_eq!(shrink.raw_os_error(), Some(libc::EPERM));
        let grow = file.set_len(32 * MIB).unwrap_err();
        assert_eq!(grow.raw_os_error(), Some(libc::EPERM));
        assert_eq!(file.metadata().unwrap().len(), 16 * MIB);
    }

    #[test]
    fn map_shared_refuses_unsealed_files_and_wrong_lengths() {
        let layout = MemoryLayout::new(16 * MIB).unwrap();
        let refused = |f: &File| match layout.map_shared(f) {
            Err(MemoryError::SharedFileRefused { seals, len, size }) => (seals, len, size),
            other => panic!("not refused: {:?}", other.map(|_| ())),
        };

        // A memfd of the right size without seals, or with only one of the two.
        assert_eq!(refused(&memfd(16 * MIB, 0)), (0, 16 * MIB, 16 * MIB));
        let (seals, ..) = refused(&memfd(16 * MIB, libc::F_SEAL_SHRINK));
        assert_eq!(seals, libc::F_SEAL_SHRINK);
        // A regular file cannot be sealed at all.
        assert_eq!(refused(&file_of(16 * MIB, &[])), (0, 16 * MIB, 16 * MIB));
        // Sealed, but longer or shorter than the guest's memory.
        assert_eq!(refused(&memfd(32 * MIB, REQUIRED_SEALS)).1, 32 * MIB);
        assert_eq!(refused(&memfd(MIB, REQUIRED_SEALS)).1, MIB);
        // Sealed and exactly the right size.
        assert!(layout.map_shared(&memfd(16 * MIB, REQUIRED_SEALS)).is_ok());

        let msg = layout
            .map_shared(&memfd(16 * MIB, 0))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("F_SEAL_SHRINK") && msg.contains("SIGBUS"),
            "{msg}"
        );
    }
}
