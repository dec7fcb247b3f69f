//! The host side of a network device: a TAP interface opened through `/dev/net/tun`, with
//! virtio-net headers on every frame (`IFF_VNET_HDR`), non-blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_char, c_int, c_short, c_uint};

use super::VNET_HDR_LEN;

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The offloads petrel can hand to a TAP (`TUNSETOFFLOAD`), in the order they are probed.
const PROBED_OFFLOADS: [c_uint; 3] = [libc::TUN_F_TSO4, libc::TUN_F_TSO6, libc::TUN_F_UFO];

/// Why a TAP could not be used. Each message is one line and names the TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name (a user error).
    #[error("TAP name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// `/dev/net/tun` could not be opened (missing `tun` module or device node, or no
    /// permission on it: a user error).
    #[error("TAP {name:?}: cannot open /dev/net/tun: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused to create or attach (a user error: missing capability).
    #[error(
        "TAP {name:?}: permission denied: creating or attaching to a TAP needs CAP_NET_ADMIN \
         (run as root, grant petrel the capability, or create the TAP for this user with \
         `ip tuntap add {name} mode tap user <user>`)"
    )]
    PermissionDenied { name: String },
    /// Another process holds the (single-queue) TAP (a user error).
    #[error("TAP {name:?} is in use by another process")]
    Busy { name: String },
    /// An interface of that name exists and is not a TAP (a user error).
    #[error("TAP {name:?}: an interface of that name exists and is not a single-queue TAP")]
    NotATap { name: String },
    /// Any other failure of a TAP ioctl.
    #[error("TAP {name:?}: {op} failed: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl TapError {
    /// Whether the user can fix this in their configuration or host setup, as opposed to a
    /// failure of the host.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            TapError::InvalidName { .. }
                | TapError::OpenTun { .. }
                | TapError::PermissionDenied { .. }
                | TapError::Busy { .. }
                | TapError::NotATap { .. }
        )
    }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    supported_offloads: c_uint,
}

/// Checks `name` the way petrel needs it: a concrete interface name (no `%d` template).
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let invalid = |reason| TapError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 15 bytes (IFNAMSIZ - 1)"));
    }
    if name == "." || name == ".." {
        return Err(invalid("\".\" and \"..\" are not interface names"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.chars().all(allowed) {
        return Err(invalid(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// An `ifreq` naming `name` (already validated: shorter than `IFNAMSIZ`) with `flags`.
pub(super) fn ifreq(name: &str, flags: c_short) -> libc::ifreq {
    // SAFETY: `ifreq` is a C struct of a byte array and a union of integers and plain
    // structs; all-zero bytes are a valid value of every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    req
}

impl Tap {
    /// Attaches to the TAP `name`, creating it if it does not exist, with 12-byte
    /// `virtio_net_hdr_v1` headers, and finds out which offloads it supports. Offloads stay
    /// off until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short;
        let mut req = ifreq(name, flags);
        // SAFETY: `file` is an open /dev/net/tun descriptor and TUNSETIFF reads and writes one
        // `ifreq`, which `req` is, alive for the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EINVAL) => TapError::NotATap { name },
                _ => TapError::Ioctl {
                    name,
                    op: "TUNSETIFF",
                    source,
                },
            });
        }
        let mut tap = Tap {
            file,
            name: name.to_string(),
            supported_offloads: 0,
        };
        let hdr_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at
        // `hdr_len`, alive for the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        tap.supported_offloads = tap.probe_offloads();
        tap.set_offload(0)
            .map_err(|e| tap.ioctl_error("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// Tries each offload the device model knows; the kernel refuses the ones it does not
    /// support (`TUN_F_UFO` on some kernels) with EINVAL.
    fn probe_offloads(&self) -> c_uint {
        if self.set_offload(libc::TUN_F_CSUM).is_err() {
            return 0;
        }
        let mut supported = libc::TUN_F_CSUM;
        for offload in PROBED_OFFLOADS {
            // Segmentation offloads are only valid together with checksum offload.
            if self.set_offload(libc::TUN_F_CSUM | offload).is_ok() {
                supported |= offload;
            }
        }
        supported
    }

    fn ioctl_error(&self, op: &'static str, source: io::Error) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            op,
            source,
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `TUN_F_*` offloads the TAP accepted when probed.
    pub fn supported_offloads(&self) -> c_uint {
        self.supported_offloads
    }

    /// Tells the kernel which offloads the reader handles (`TUN_F_*`): it may then hand over
    /// frames with partial checksums or of up to 64 KiB for the guest to segment.
    pub fn set_offload(&self, flags: c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (virtio-net header first) into `buf`; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes; read writes at most
        // that many bytes and keeps no reference.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (virtio-net header first) gathered from `iov`.
    ///
    /// # Safety
    ///
    /// Every `iovec` in `iov` must describe memory that is mapped and readable for its whole
    /// length during the call.
    pub unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = c_int::try_from(iov.len()).unwrap_or(c_int::MAX);
        // SAFETY: `iov` is a live array of `count` iovecs, and the caller guarantees each one
        // points at readable memory; writev only reads from them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
