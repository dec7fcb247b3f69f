//! The disk backend: a raw image file or a host block device, locked against a second
//! writer, read and written at byte offsets directly from and into guest memory.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::{BlockError, SECTOR_SIZE};

/// `BLKDISCARD`, `_IO(0x12, 119)` in `<linux/fs.h>`: discards `[start, start + len)` of a
/// block device, given as two `u64`s.
const BLKDISCARD: libc::c_ulong = 0x1277;

/// Bytes written per step when write-zeroes falls back to plain writes.
const ZERO_CHUNK: usize = 64 << 10;

/// An open, locked disk image.
#[derive(Debug)]
pub(super) struct Disk {
    file: File,
    path: PathBuf,
    /// Size in 512-byte sectors.
    capacity: u64,
    block_device: bool,
}

impl Disk {
    /// Opens `path` read-write (read-only when `readonly`) and takes an OFD lock on it: a
    /// write lock for a read-write disk, a read lock for a read-only one, so that two VMs
    /// never write one image and nobody writes an image a VM reads.
    pub(super) fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        Self::open_replacing(path, readonly, None)
    }

    /// Opens `path` to take the place of `current` (a backing-file swap), without touching
    /// `current`: on any error it keeps serving as before.
    ///
    /// If `path` names the very file `current` has open (same device and inode, through
    /// the same path or another link), a fresh open could not be locked: OFD locks belong
    /// to the open file description, and `current`'s lock conflicts with any other one,
    /// even in this process. Dropping `current`'s lock first would leave a window in which
    /// another process could take the image, and a failure after it would leave the disk
    /// unlocked. So the new disk shares `current`'s open file description instead (a `dup`
    /// of its fd, opened with the same access since `readonly` does not change): the lock
    /// stays held throughout and goes away only when the last of the two is closed. The
    /// size is read anew, so a swap to the same path picks up a resized image.
    pub(super) fn reopen(path: &Path, readonly: bool, current: &Disk) -> Result<Self, BlockError> {
        Self::open_replacing(path, readonly, Some(current))
    }

    fn open_replacing(
        path: &Path,
        readonly: bool,
        current: Option<&Disk>,
    ) -> Result<Self, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(open_error)?;
        let size_error = |source| BlockError::Size {
            path: path.to_owned(),
            source,
        };
        let metadata = file.metadata().map_err(size_error)?;
        let file = match current.filter(|disk| disk.is_same_file(&metadata)) {
            // The new open is closed here; the shared description keeps the lock.
            Some(disk) => disk.file.try_clone().map_err(open_error)?,
            None => {
                lock(&file, readonly).map_err(|source| lock_error(path, source))?;
                file
            }
        };
        let file_type = metadata.file_type();
        let block_device = file_type.is_block_device();
        if !block_device && !file_type.is_file() {
            return Err(BlockError::NotAFileOrBlockDevice {
                path: path.to_owned(),
            });
        }
        // The end of a block device is its size as well. Positional I/O ignores the file
        // offset, so moving it is harmless even on a description shared with `current`.
        let bytes = (&file).seek(SeekFrom::End(0)).map_err(size_error)?;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                path = %path.display(),
                bytes,
                "disk image size is not a multiple of 512 bytes; the last partial sector is not visible to the guest"
            );
        }
        let capacity = bytes / SECTOR_SIZE;
        if capacity == 0 {
            return Err(BlockError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Disk {
            file,
            path: path.to_owned(),
            capacity,
            block_device,
        })
    }

    /// Whether `other` describes the file this disk has open.
    fn is_same_file(&self, other: &Metadata) -> bool {
        match self.file.metadata() {
            Ok(mine) => mine.dev() == other.dev() && mine.ino() == other.ino(),
            Err(e) => {
                // Then the new open is locked as usual, and refused if it is this file.
                tracing::debug!(%e, path = %self.path.display(), "cannot stat the open disk image");
                false
            }
        }
    }

    /// Size in 512-byte sectors.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The image's path, for logs.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` from the image at byte `offset`, marking the guest memory dirty.
    pub(super) fn read_into<B: BitmapSlice>(
        &self,
        offset: u64,
        buf: &VolatileSlice<B>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = file_offset(offset, done)?;
            let guard = buf.ptr_guard_mut();
            // SAFETY: `buf` is a live slice of guest memory (the mapping outlives it), so
            // `guard.as_ptr() + done .. + buf.len()` is valid for writes; `done < buf.len()`.
            // The kernel writes plain bytes there; no Rust reference to that memory exists.
            let n = unsafe {
                libc::pread64(
                    self.file.as_raw_fd(),
                    guard.as_ptr().add(done).cast(),
                    buf.len() - done,
                    pos,
                )
            };
            match n {
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    // Part of the buffer may have been written before the error.
                    buf.bitmap().mark_dirty(done, buf.len() - done);
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    let n = n as usize;
                    buf.bitmap().mark_dirty(done, n);
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` to the image at byte `offset`.
    pub(super) fn write_from<B: BitmapSlice>(
        &self,
        offset: u64,
        buf: &VolatileSlice<B>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = file_offset(offset, done)?;
            let guard = buf.ptr_guard();
            // SAFETY: `buf` is a live slice of guest memory, so `guard.as_ptr() + done ..
            // + buf.len()` is valid for reads; the kernel only reads it.
            let n = unsafe {
                libc::pwrite64(
                    self.file.as_raw_fd(),
                    guard.as_ptr().add(done).cast(),
                    buf.len() - done,
                    pos,
                )
            };
            done += check_progress(n)?;
        }
        Ok(())
    }

    /// Makes every completed write durable (`fdatasync`; on a block device this also
    /// flushes the device's cache).
    pub(super) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Tells the backend `[offset, offset + len)` is unused. A backend that cannot discard
    /// succeeds: discarding is a hint.
    pub(super) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let result = if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKDISCARD reads two u64s from the pointer; `range` is exactly that and
            // lives across the call. The fd is an open block device.
            let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD, range.as_ptr()) };
            if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(path = %self.path.display(), "discard not supported by the backend");
                Ok(())
            }
            other => other,
        }
    }

    /// Makes `[offset, offset + len)` read as zeroes: deallocating it when `unmap` allows,
    /// else `FALLOC_FL_ZERO_RANGE`, else writing zeroes (which stops early, failing, once
    /// `cancel` is set).
    pub(super) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        cancel: &AtomicBool,
    ) -> io::Result<()> {
        if unmap
            && self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .is_ok()
        {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(%e, path = %self.path.display(), "ZERO_RANGE failed, writing zeroes")
            }
        }
        let zeroes = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            if cancel.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "write-zeroes cancelled by a device reset",
                ));
            }
            let step = (len - done).min(ZERO_CHUNK as u64) as usize;
            let pos = file_offset(offset, 0)?
                .checked_add(done as i64)
                .ok_or_else(offset_overflow)?;
            // SAFETY: `zeroes` holds ZERO_CHUNK >= `step` initialised bytes and outlives the
            // call; the kernel only reads them.
            let n =
                unsafe { libc::pwrite64(self.file.as_raw_fd(), zeroes.as_ptr().cast(), step, pos) };
            done += check_progress(n)? as u64;
        }
        Ok(())
    }

    /// Gives up the image's lock, keeping the file open: live migration hands the image to
    /// the destination petrel, which locks it when it builds the machine. The disk must
    /// serve no request until [`Disk::relock`] (the VM is paused).
    pub(super) fn unlock(&self) -> io::Result<()> {
        set_lock(&self.file, libc::F_UNLCK)
    }

    /// Takes the image's lock again after [`Disk::unlock`] (a migration that failed).
    pub(super) fn relock(&self, readonly: bool) -> Result<(), BlockError> {
        lock(&self.file, readonly).map_err(|source| lock_error(&self.path, source))
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let offset = i64::try_from(offset).map_err(|_| offset_overflow())?;
        let len = i64::try_from(len).map_err(|_| offset_overflow())?;
        // SAFETY: fallocate only takes integers; the fd is open for the life of `self`.
        let ret = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, offset, len) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// What a failed `lock` means.
fn lock_error(path: &Path, source: io::Error) -> BlockError {
    match source.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => BlockError::Locked {
            path: path.to_owned(),
        },
        _ => BlockError::Lock {
            path: path.to_owned(),
            source,
        },
    }
}

/// Takes an open-file-description lock over the whole file. OFD locks belong to this open
/// of the file (not to the process), so they conflict with a second open even in the same
/// process, and they go away when the file is closed.
fn lock(file: &File, shared: bool) -> io::Result<()> {
    set_lock(file, if shared { libc::F_RDLCK } else { libc::F_WRLCK })
}

/// Sets the open file description's lock over the whole file to `l_type` (`F_RDLCK`,
/// `F_WRLCK` or `F_UNLCK`).
fn set_lock(file: &File, l_type: i32) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct for which all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0 and l_len = 0: the whole file, however it grows. l_pid must be 0.
    // SAFETY: F_OFD_SETLK reads one `flock` through the pointer, which is valid for the
    // call; the fd is open.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `base + done` as a file offset.
fn file_offset(base: u64, done: usize) -> io::Result<i64> {
    base.checked_add(done as u64)
        .and_then(|pos| i64::try_from(pos).ok())
        .ok_or_else(offset_overflow)
}

fn offset_overflow() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "disk offset overflows")
}

/// The result of one `pwrite`: the bytes written, or the error (EINTR counts as no
/// progress, a zero-byte write as an error so loops end).
fn check_progress(n: isize) -> io::Result<usize> {
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n as usize),
    }
}
