//! A scanout a vhost-user-gpu back end shows as a DMABUF (`DMABUF_SCANOUT`): QEMU's
//! `vhost-user-gpu` does so even in 2D whenever it can open a render node or `/dev/udmabuf`,
//! with a linear buffer. petrel maps the buffer read-only and copies what each
//! `DMABUF_UPDATE` names into its picture.
//!
//! The descriptor comes from another process, so it is checked before it is mapped: a
//! buffer the sender could shrink under the mapping would make petrel's next read of it
//! raise SIGBUS. A DMABUF cannot change size; a memfd (shmem) is taken only when sealed
//! against shrinking; anything else (a file on disk, a pipe) is refused.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::virtio::gpu::protocol::{Layout, Rect};

/// `DMA_BUF_MAGIC`: the file system of DMABUF descriptors.
const DMA_BUF_MAGIC: libc::c_long = 0x444d_4142;
/// `DMA_BUF_IOCTL_SYNC` (`_IOW('b', 0, struct dma_buf_sync)`) and its flags.
const DMA_BUF_IOCTL_SYNC: libc::c_ulong = 0x4008_6200;
const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 4;
/// `DRM_FORMAT_MOD_LINEAR`, the only layout petrel can read.
pub const MOD_LINEAR: u64 = 0;
/// The most petrel maps of one buffer.
const MAX_LEN: usize = 256 << 20;

/// Why a DMABUF scanout was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DmabufError {
    #[error("DMABUF_SCANOUT without a descriptor")]
    NoFd,
    #[error("DRM format {0:#x} is not one petrel reads (XR24, AR24, XB24, AB24)")]
    Format(u32),
    #[error("format modifier {0:#x} is not linear")]
    Modifier(u64),
    #[error("the {width}x{height} scanout at ({x}, {y}) or the stride {stride} does not fit the {fd_width}x{fd_height} buffer")]
    Geometry {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        stride: u32,
        fd_width: u32,
        fd_height: u32,
    },
    #[error("the buffer is {0} bytes, smaller than its geometry or larger than petrel maps")]
    Size(u64),
    #[error("the descriptor is neither a DMABUF nor a memfd sealed against shrinking")]
    NotSealed,
    #[error("mapping the buffer: {0}")]
    Map(std::io::Error),
}

/// `VhostUserGpuDMABUFScanout` (and `…2`'s modifier), as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanoutInfo {
    /// The scanout's rectangle within the buffer.
    pub rect: Rect,
    pub fd_width: u32,
    pub fd_height: u32,
    pub fd_stride: u32,
    pub fourcc: u32,
    /// None for `DMABUF_SCANOUT`, which has no modifier field.
    pub modifier: Option<u64>,
}

impl ScanoutInfo {
    /// From the payload's words: scanout id (already checked), x, y, width, height,
    /// fd_width, fd_height, fd_stride, fd_flags, fourcc, then the modifier (u64) if
    /// `with_modifier`. None if the payload is too short.
    pub fn parse(payload: &[u8], with_modifier: bool) -> Option<ScanoutInfo> {
        let word = |i: usize| {
            payload
                .get(i * 4..i * 4 + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let modifier = if with_modifier {
            let b = payload.get(40..48)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        } else {
            None
        };
        Some(ScanoutInfo {
            rect: Rect {
                x: word(1)?,
                y: word(2)?,
                width: word(3)?,
                height: word(4)?,
            },
            fd_width: word(5)?,
            fd_height: word(6)?,
            fd_stride: word(7)?,
            fourcc: word(9)?,
            modifier,
        })
    }
}

/// The byte order of a DRM fourcc petrel reads.
fn fourcc_layout(fourcc: u32) -> Option<Layout> {
    let l = |r, g, b| Some(Layout { r, g, b, a: None });
    match &fourcc.to_le_bytes() {
        b"XR24" | b"AR24" => l(2, 1, 0),
        b"XB24" | b"AB24" => l(0, 1, 2),
        _ => None,
    }
}

/// A mapped DMABUF scanout.
pub struct DmabufScanout {
    file: File,
    base: *const u8,
    len: usize,
    info: ScanoutInfo,
    layout: Layout,
}

// SAFETY: the mapping is read-only, owned by this value alone, and unmapped on drop; moving
// it to another thread moves that ownership with it.
unsafe impl Send for DmabufScanout {}

impl DmabufScanout {
    /// Checks and maps `file` for `info`.
    pub fn map(file: File, info: ScanoutInfo) -> Result<DmabufScanout, DmabufError> {
        let layout = fourcc_layout(info.fourcc).ok_or(DmabufError::Format(info.fourcc))?;
        if let Some(m) = info.modifier.filter(|m| *m != MOD_LINEAR) {
            return Err(DmabufError::Modifier(m));
        }
        let r = info.rect;
        let fits = r.fits_in(info.fd_width, info.fd_height)
            && u64::from(info.fd_stride) >= u64::from(info.fd_width) * 4;
        if !fits {
            return Err(DmabufError::Geometry {
                x: r.x,
                y: r.y,
                width: r.width,
                height: r.height,
                stride: info.fd_stride,
                fd_width: info.fd_width,
                fd_height: info.fd_height,
            });
        }
        check_unshrinkable(&file)?;
        let needed = u64::from(info.fd_stride) * u64::from(info.fd_height);
        let size = file_size(&file)?;
        if size < needed || needed > MAX_LEN as u64 {
            return Err(DmabufError::Size(size));
        }
        let len = needed as usize;
        // SAFETY: a new read-only shared mapping of `len` bytes of `file`, which is at least
        // that long and cannot shrink (checked above), at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(DmabufError::Map(std::io::Error::last_os_error()));
        }
        Ok(DmabufScanout {
            file,
            base: base as *const u8,
            len,
            info,
            layout,
        })
    }

    /// The scanout's size, which is the screen's.
    pub fn size(&self) -> (u32, u32) {
        (self.info.rect.width, self.info.rect.height)
    }

    /// The part of `update` (in the buffer's coordinates, as the back end sends it) inside
    /// the scanout, as (rectangle on the screen, the buffer's bytes from its first pixel,
    /// the buffer's stride, the byte order). `f` reads them between the DMABUF's sync
    /// calls.
    pub fn read<T>(
        &self,
        update: &Rect,
        f: impl FnOnce(Rect, &[u8], usize, Layout) -> T,
    ) -> Option<T> {
        let s = self.info.rect;
        let right = (u64::from(update.x) + u64::from(update.width)).min(u64::from(s.x + s.width));
        let bottom =
            (u64::from(update.y) + u64::from(update.height)).min(u64::from(s.y + s.height));
        let (x, y) = (update.x.max(s.x), update.y.max(s.y));
        if right <= u64::from(x) || bottom <= u64::from(y) {
            return None;
        }
        let on_screen = Rect {
            x: x - s.x,
            y: y - s.y,
            width: right as u32 - x,
            height: bottom as u32 - y,
        };
        let stride = self.info.fd_stride as usize;
        let start = y as usize * stride + x as usize * 4;
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as `self`; the
        // rectangle is inside the scanout, which is inside the buffer (checked in `map`),
        // so every byte read through the slice lies within it.
        let bytes = unsafe { std::slice::from_raw_parts(self.base, self.len) };
        self.sync(DMA_BUF_SYNC_START);
        let out = f(on_screen, &bytes[start..], stride, self.layout);
        self.sync(DMA_BUF_SYNC_END);
        Some(out)
    }

    /// `DMA_BUF_IOCTL_SYNC` for reading (a memfd has no such call: it needs none).
    fn sync(&self, when: u64) {
        let flags: u64 = when | DMA_BUF_SYNC_READ;
        // SAFETY: the ioctl reads one u64 of flags from the pointer, which is valid for
        // the call; on a descriptor that is not a DMABUF it fails and changes nothing.
        unsafe {
            libc::ioctl(self.file.as_raw_fd(), DMA_BUF_IOCTL_SYNC, &flags);
        }
    }
}

impl Drop for DmabufScanout {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` is the mapping made in `map`, unmapped once, here; no slice
        // of it outlives `read`.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// A DMABUF, or a memfd sealed against shrinking; anything else can be truncated under a
/// mapping.
fn check_unshrinkable(file: &File) -> Result<(), DmabufError> {
    // SAFETY: fstatfs writes one `statfs` into the zeroed value, which outlives the call.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the descriptor is `file`'s.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0
        && fs.f_type as libc::c_long == DMA_BUF_MAGIC
    {
        return Ok(());
    }
    // SAFETY: F_GET_SEALS takes no argument and only reads the file's seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 && seals & libc::F_SEAL_SHRINK != 0 {
        return Ok(());
    }
    Err(DmabufError::NotSealed)
}

/// The buffer's size (a DMABUF answers `lseek(SEEK_END)`, a memfd its length).
fn file_size(file: &File) -> Result<u64, DmabufError> {
    // SAFETY: lseek on `file`'s descriptor moves only its offset, which petrel does not use.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(DmabufError::Map(std::io::Error::last_os_error()));
    }
    Ok(end as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd of `len` bytes, sealed against shrinking if `sealed`.
    pub fn memfd(len: u64, sealed: bool) -> File {
        if sealed {
            return memory::sealed_memfd(c"petrel-test-dmabuf", len).unwrap();
        }
        // SAFETY: a NUL-terminated name; memfd_create only reads it.
        let fd = unsafe { libc::memfd_create(c"petrel-test-dmabuf".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }

    fn info(rect: [u32; 4], fd: [u32; 3], fourcc: &[u8; 4], modifier: Option<u64>) -> ScanoutInfo {
        ScanoutInfo {
            rect: Rect {
                x: rect[0],
                y: rect[1],
                width: rect[2],
                height: rect[3],
            },
            fd_width: fd[0],
            fd_height: fd[1],
            fd_stride: fd[2],
            fourcc: u32::from_le_bytes(*fourcc),
            modifier,
        }
    }

    #[test]
    fn bad_buffers_are_refused_before_they_are_mapped() {
        let ok = info([0, 0, 4, 4], [4, 4, 16], b"XR24", None);
        let cases = [
            (
                memfd(64, true),
                info([0, 0, 4, 4], [4, 4, 16], b"NV12", None),
                "format",
            ),
            (
                memfd(64, true),
                info([0, 0, 4, 4], [4, 4, 16], b"XR24", Some(7)),
                "modifier",
            ),
            (
                memfd(64, true),
                info([1, 0, 4, 4], [4, 4, 16], b"XR24", None),
                "outside",
            ),
            (
                memfd(64, true),
                info([0, 0, 4, 4], [4, 4, 8], b"XR24", None),
                "stride",
            ),
            (memfd(32, true), ok, "short"),
            (memfd(64, false), ok, "unsealed"),
            (tempfile::tempfile().unwrap(), ok, "a file"),
        ];
        for (file, info, what) in cases {
            assert!(DmabufScanout::map(file, info).is_err(), "{what}");
        }
        assert!(DmabufScanout::map(memfd(64, true), ok).is_ok());
        assert!(DmabufScanout::map(
            memfd(64, true),
            info([0, 0, 4, 4], [4, 4, 16], b"AB24", Some(0))
        )
        .is_ok());
    }

    #[test]
    fn an_update_is_read_from_the_scanout_in_the_buffer() {
        use std::os::unix::fs::FileExt;
        // An 8x4 buffer (stride 40), the scanout its 4x2 at (2, 1).
        let file = memfd(160, true);
        let pixels: Vec<u8> = (0..160u32).map(|i| i as u8).collect();
        file.write_all_at(&pixels, 0).unwrap();
        let d = DmabufScanout::map(file, info([2, 1, 4, 2], [8, 4, 40], b"XR24", None)).unwrap();
        assert_eq!(d.size(), (4, 2));
        let update = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 2,
        };
        let (rect, first, stride) = d.read(&update, |r, b, s, _| (r, b[0], s)).unwrap();
        // Clipped to the scanout: (2, 1)..(4, 2) of the buffer is (0, 0)..(2, 1) of the screen.
        assert_eq!(
            rect,
            Rect {
                x: 0,
                y: 0,
                width: 2,
                height: 1
            }
        );
        assert_eq!((first, stride), (40 + 8, 40));
        let outside = Rect {
            x: 6,
            y: 0,
            width: 2,
            height: 4,
        };
        assert!(d.read(&outside, |_, _, _, _| ()).is_none());
    }
}
