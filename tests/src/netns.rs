//! A network namespace of the test's own with a TAP inside, and a raw `AF_PACKET` socket on
//! that TAP: the host side of virtio-net tests. Traffic never leaves the namespace.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

/// A named network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(status.success(), "ip {args:?} failed: {status}");
}

impl NetNs {
    /// Creates namespace `name` holding a TAP `tap`, up, with IPv6 off so the only frames
    /// on it are the test's.
    pub fn with_tap(name: &str, tap: &str) -> NetNs {
        // A namespace left over from an earlier, killed run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "delete", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        let ns = NetNs { name: name.into() };
        ip(&["-n", name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&[
            "netns",
            "exec",
            name,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
        ]);
        ip(&["-n", name, "link", "set", tap, "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A raw socket bound to `ifname` inside the namespace. The socket is created on a
    /// thread that joins the namespace, so the test process itself stays where it is.
    pub fn packet_socket(&self, ifname: &str) -> PacketSocket {
        let path = format!("/run/netns/{}", self.name);
        let ifname = ifname.to_string();
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `ns` is an open namespace file; setns changes only this thread, which
            // ends right after creating the socket.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            PacketSocket::bind(&ifname)
        })
        .join()
        .expect("packet socket thread")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// An `AF_PACKET` socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    fn bind(ifname: &str) -> PacketSocket {
        let name = std::ffi::CString::new(ifname).expect("interface name");
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket { fd, ifindex }
    }

    /// Sends one frame out of the interface (into the TAP, so to petrel).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length; the descriptor is open.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame that came in from the interface (sent by petrel) and matches
    /// `want`, waiting up to `timeout`. Frames the socket itself sent are skipped.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: see bind; zeroed sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffer and address are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                continue;
            }
            let frame = &buf[..n as usize];
            let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
            if !outgoing && from.sll_ifindex == self.ifindex && want(frame) {
                return Some(frame.to_vec());
            }
        }
    }
}
