//! The host side of the net bench's TAP: bringing it up, an `AF_PACKET` socket that sends
//! frames out of it (so the device reads them), and its kernel counters.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An ethertype reserved for local experiments (IEEE 802): nothing else uses it.
pub const ETHERTYPE: u16 = 0x88b5;

/// A frame of `len` bytes in all (no FCS): `dst`, `src`, [`ETHERTYPE`], then a pattern.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_mul(7)));
    f
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// An `AF_PACKET` socket bound to the TAP, for sending only (protocol 0: it receives
/// nothing, so the frames the device writes are not copied to it).
pub struct HostSocket {
    socket: OwnedFd,
}

impl HostSocket {
    /// Brings the interface `name` up and binds a socket to it. Call it once the device
    /// holds the TAP: with the carrier already on, the kernel sets the interface's queueing
    /// discipline up at once (the other way round its link watcher does it up to a second
    /// later, dropping what is sent meanwhile).
    pub fn new(name: &str) -> io::Result<Self> {
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(fd, "socket(AF_PACKET)")?;
        // SAFETY: `fd` was just returned by socket and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `ifreq` is a byte array and a union of integers and plain structs; all-zero
        // bytes are a valid value of every field.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let cname = CString::new(name).map_err(io::Error::other)?;
        let bytes = cname.as_bytes();
        if bytes.len() >= req.ifr_name.len() {
            return Err(io::Error::other("interface name too long"));
        }
        for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one ifreq, `req`, alive for the call.
        let ret = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req) };
        check(ret, "SIOCSIFFLAGS")?;
        // SAFETY: `cname` is a NUL-terminated string alive for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a sockaddr_ll of the length given, alive for the call.
        let ret = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        check(ret, "bind(AF_PACKET)")?;
        Ok(HostSocket { socket })
    }

    /// Sends `frame` `count` times with one `sendmmsg`; returns how many went out.
    pub fn send_batch(&self, frame: &[u8], count: usize) -> usize {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        // SAFETY: `mmsghdr` is plain data (integers and pointers); all-zero is valid.
        let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        hdr.msg_hdr.msg_iov = &mut iov;
        hdr.msg_hdr.msg_iovlen = 1;
        let mut msgs = vec![hdr; count];
        let mut sent = 0;
        while sent < count {
            let rest = &mut msgs[sent..];
            // SAFETY: `rest` is a live array of `rest.len()` mmsghdrs, each pointing at `iov`,
            // which points at `frame`: both outlive the call and are only read (the kernel
            // writes just each header's `msg_len`).
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            sent += n as usize;
        }
        sent
    }
}

/// The interface's counters from `/proc/net/dev` (this namespace's view).
#[derive(Clone, Copy, Default)]
pub struct TapCounters {
    /// Frames the device wrote that the kernel took in.
    pub rx_packets: u64,
    /// Frames sent to the TAP that the kernel dropped because its queue to the reader (the
    /// device) was full.
    pub tx_dropped: u64,
}

pub fn tap_counters(name: &str) -> TapCounters {
    let Ok(table) = std::fs::read_to_string("/proc/net/dev") else {
        return TapCounters::default();
    };
    let Some(fields) = table
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(name)?.strip_prefix(':'))
    else {
        return TapCounters::default();
    };
    let fields: Vec<u64> = fields
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    TapCounters {
        rx_packets: field(1),
        tx_dropped: field(11),
    }
}
