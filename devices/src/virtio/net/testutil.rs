//! Test scaffolding: a private network namespace with a TAP and an `AF_PACKET` socket as
//! the host side, guest memory, and a driver that posts descriptor chains.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use memory::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{ifreq, validate_name};
use super::{Net, NetConfig, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};

/// An ethertype reserved for local experiments (IEEE 802): nothing else on the link uses it.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Where the test driver's queues and buffers live in guest memory.
pub const RX_RING: u64 = 0x1000;
pub const TX_RING: u64 = 0x10000;
pub const BUFFERS: u64 = 0x10_0000;
/// Guest memory: two adjacent 8 MiB regions, so a buffer can straddle a region boundary.
pub const REGION_SIZE: usize = 8 << 20;

/// Whether TAP tests can run. Not root: with `CI` set the test fails, else it says why it
/// does nothing.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid only reads the process credentials.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: TAP tests need root (CAP_NET_ADMIN and /dev/net/tun), and CI is set");
    }
    // Straight to stderr: the test harness hides `eprintln!` output of passing tests.
    let _ = writeln!(
        io::stderr(),
        "{test}: skipped: TAP tests need root (CAP_NET_ADMIN and /dev/net/tun); \
         set CI to make this a failure"
    );
    false
}

/// Runs `body` on a new thread in a new, empty network namespace, so nothing reaches the
/// host's network. The namespace, and every interface in it, goes away with the thread and
/// the descriptors opened in it.
pub fn in_netns<F: FnOnce() + Send + 'static>(body: F) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread to a new
        // network namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// The host end of a TAP in the test's namespace: the interface (persistent, IPv6 off,
/// MTU 9000, up once [`HostSide::up`] is called) and an `AF_PACKET` socket bound to it.
pub struct HostSide {
    pub name: String,
    socket: OwnedFd,
}

impl HostSide {
    /// Creates the TAP `name` (call inside [`in_netns`]).
    pub fn new(name: &str) -> io::Result<Self> {
        validate_name(name).map_err(io::Error::other)?;
        // A persistent TAP, so the device attaches to an existing interface.
        let tun = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = ifreq(
            name,
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _,
        );
        // SAFETY: TUNSETIFF reads and writes one ifreq, `req`, alive for the call.
        let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        check(ret, "TUNSETIFF")?;
        // SAFETY: TUNSETPERSIST takes its argument by value.
        let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
        check(ret, "TUNSETPERSIST")?;
        drop(tun);
        // Router solicitations and the like would land in the guest's buffers.
        let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // SAFETY: socket takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        check(fd, "socket(AF_PACKET)")?;
        // SAFETY: `fd` was just returned by socket and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(name, 0);
        req.ifr_ifru.ifru_mtu = 9000;
        // SAFETY: SIOCSIFMTU reads one ifreq, `req`, alive for the call.
        let ret = unsafe { libc::ioctl(fd, libc::SIOCSIFMTU, &mut req) };
        check(ret, "SIOCSIFMTU")?;
        Ok(HostSide {
            name: name.to_string(),
            socket,
        })
    }

    /// Brings the interface up and binds the socket to it. Call it once the device has the
    /// TAP open: with the carrier already on, the kernel sets up the interface's queueing
    /// discipline right away. The other way round, the carrier comes on while the interface
    /// is up, and the kernel's link watcher sets up the queueing discipline up to a second
    /// later, dropping what is sent meanwhile.
    pub fn up(&self) {
        let mut req = ifreq(&self.name, libc::IFF_UP as _);
        // SAFETY: SIOCSIFFLAGS reads one ifreq, `req`, alive for the call.
        let ret = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) };
        check(ret, "SIOCSIFFLAGS").unwrap();
        // Bound to an interface that is down, the socket would fail its first send with
        // ENETDOWN.
        let cname = CString::new(self.name.as_str()).unwrap();
        // SAFETY: `cname` is a NUL-terminated string alive for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            panic!(
                "if_nametoindex({}): {}",
                self.name,
                io::Error::last_os_error()
            );
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a sockaddr_ll of the length given, alive for the call.
        let ret = unsafe {
            libc::bind(
                self.socket.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        check(ret, "bind(AF_PACKET)").unwrap();
    }

    /// Sends `frame` out of the TAP: the device reads it.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a live slice of `frame.len()` bytes, only read.
        let n = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send on the TAP: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame of [`TEST_ETHERTYPE`] that came in from the TAP (the device wrote it),
    /// or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(self.socket.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are live and writable for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 14 {
                continue;
            }
            let frame = &buf[..n as usize];
            let ours = u16::from_be_bytes([frame[12], frame[13]]) == TEST_ETHERTYPE;
            if ours && from.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(frame.to_vec());
            }
        }
    }
}

/// Waits until `fd` is readable; false on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one live pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0
}

/// A test frame: to `dst`, ethertype [`TEST_ETHERTYPE`], `len` bytes in all with a payload
/// pattern seeded by `seed`.
pub fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xee]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SIZE),
        (GuestAddress(REGION_SIZE as u64), REGION_SIZE),
    ])
    .expect("test guest memory")
}

pub fn config(tap: &str) -> NetConfig {
    NetConfig {
        tap: tap.to_string(),
        id: "net0".to_string(),
        mac: Some("02:00:00:00:00:01".parse().expect("test MAC")),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

/// One descriptor as the test driver posts it: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf(pub u64, pub u32, pub bool);

/// The driver side of one queue.
pub struct DriverQueue<'a> {
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    next_desc: u16,
    seen_used: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, ring: u64) -> Self {
        DriverQueue {
            mock: MockSplitQueue::create(mem, GuestAddress(ring), QUEUE_SIZE),
            mem,
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// Makes a chain of `bufs` available.
    pub fn post(&mut self, bufs: &[Buf]) {
        let head = self.next_desc;
        for (i, &Buf(addr, len, write)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QUEUE_SIZE;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(addr, len, flags, self.next_desc);
            self.mock
                .desc_table()
                .store(index, RawDescriptor::from(desc))
                .expect("store descriptor");
        }
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QUEUE_SIZE))
            .expect("avail slot")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Used elements (head, length) added since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let used = self.mock.used();
        let idx = used.idx().load();
        let mut out = Vec::new();
        while self.seen_used != idx {
            let elem = used
                .ring()
                .ref_at(usize::from(self.seen_used % QUEUE_SIZE))
                .expect("used slot")
                .load();
            out.push((elem.id() as u16, elem.len()));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    /// The device's `avail_event` (with `EVENT_IDX`).
    pub fn avail_event(&self) -> u16 {
        let addr = self.mock.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
        self.mem.read_obj(GuestAddress(addr)).expect("avail_event")
    }
}

/// Activates `net` on both queues with `acked` features (VERSION_1 added).
pub fn activate(
    net: &mut Net,
    mem: &GuestMemoryMmap,
    rx: &DriverQueue,
    tx: &DriverQueue,
    acked: u64,
) -> Arc<Interrupt> {
    let acked = acked | features::VERSION_1;
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("irqfd")));
    let mut queues = Vec::new();
    for q in [rx, tx] {
        let mut queue: Queue = q.mock.create_queue().expect("queue");
        queue.set_event_idx(acked & features::RING_EVENT_IDX != 0);
        queues.push(queue);
    }
    let env = DeviceEnv {
        mem: mem.clone(),
        interrupt: interrupt.clone(),
        acked_features: acked,
        kicks: Default::default(),
    };
    net.activate(queues, env).expect("activate");
    interrupt
}

/// Whether the interrupt fired since the last call.
pub fn interrupted(interrupt: &Interrupt) -> bool {
    interrupt.irqfd().read().is_ok()
}

/// Reads the bytes the device wrote into a receive buffer.
pub fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    mem.read_slice(&mut out, GuestAddress(addr))
        .expect("read guest memory");
    out
}

/// Writes a transmit packet (zeroed virtio-net header, then `frame`) at `addr`.
pub fn write_packet(mem: &GuestMemoryMmap, addr: u64, frame: &[u8]) -> u32 {
    mem.write_slice(&[0; VNET_HDR_LEN], GuestAddress(addr))
        .expect("write header");
    mem.write_slice(frame, GuestAddress(addr + VNET_HDR_LEN as u64))
        .expect("write frame");
    (VNET_HDR_LEN + frame.len()) as u32
}

/// Waits for the TAP to have a frame for the device, then runs the device's TAP handler.
pub fn tap_readable(net: &mut Net) {
    assert!(
        wait_readable(net.tap().as_raw_fd(), Duration::from_secs(2)),
        "no frame reached the TAP"
    );
    net.process_rx();
}

/// A TAP name unique to this test process and `tag`.
pub fn tap_name(tag: &str) -> String {
    format!("pt{}{tag}", std::process::id() % 100_000)
}
