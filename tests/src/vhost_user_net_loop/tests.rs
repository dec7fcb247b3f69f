//! The loop-back back end driven by the `vhost` crate's front end over a memfd-backed
//! guest memory, with split rings written by hand.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::*;

const MEM_SIZE: usize = 1 << 20;
const QSIZE: u16 = 16;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
/// Where the frame and receive buffers go.
const BUFFERS: u64 = 0x40000;
const RX_BUF_LEN: u32 = 2048;

/// Queue `q`'s descriptor table; its available ring is 0x1000 above, its used ring 0x2000.
fn ring(q: u16) -> u64 {
    0x10000 * (u64::from(q) + 1)
}

fn start_server(config: LoopConfig) -> (tempfile::TempDir, PathBuf, Arc<Counters>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.sock");
    let mut server = LoopServer::bind(&path, config).unwrap();
    let counters = server.counters();
    std::thread::spawn(move || server.serve(|_| {}));
    (dir, path, counters)
}

/// A virtio-net driver in miniature: guest memory, two split rings, the front end.
struct Driver {
    frontend: Frontend,
    mem: Mem,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    next_buf: u64,
}

impl Driver {
    fn connect(path: &Path, want_event_idx: bool) -> Driver {
        let mut frontend = Frontend::connect(path, 2).unwrap();
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let needed = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_eq!(offered & needed, needed, "features {offered:#x}");
        let mut features = needed;
        if want_event_idx {
            assert_ne!(offered & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
            features |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        frontend.set_features(features).unwrap();
        let proto = frontend.get_protocol_features().unwrap();
        assert!(proto.contains(VhostUserProtocolFeatures::CONFIG));
        frontend.set_protocol_features(proto).unwrap();
        assert_eq!(frontend.get_queue_num().unwrap(), 2);

        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd
        // or -1, checked below.
        let fd = unsafe { libc::memfd_create(c"petrel-test-mem".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created above and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem = Mem::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        frontend.set_mem_table(&[info]).unwrap();
        let host = info.userspace_addr;

        let kick = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let call = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        for q in [RX_QUEUE, TX_QUEUE] {
            let i = usize::from(q);
            frontend.set_vring_num(i, QSIZE).unwrap();
            let config = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: host + ring(q),
                avail_ring_addr: host + ring(q) + 0x1000,
                used_ring_addr: host + ring(q) + 0x2000,
                log_addr: None,
            };
            frontend.set_vring_addr(i, &config).unwrap();
            frontend.set_vring_base(i, 0).unwrap();
            frontend.set_vring_call(i, &call[i]).unwrap();
            frontend.set_vring_kick(i, &kick[i]).unwrap();
            frontend.set_vring_enable(i, true).unwrap();
        }
        Driver {
            frontend,
            mem,
            kick,
            call,
            next_desc: [0; 2],
            avail_idx: [0; 2],
            next_buf: BUFFERS,
        }
    }

    /// Puts bytes in guest memory, returning their address.
    fn buffer(&mut self, data: &[u8], len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len.max(1)).next_multiple_of(64);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    /// Makes a chain of `(addr, len, device_writable)` available on queue `q`.
    fn add_chain(&mut self, q: u16, descs: &[(u64, u32, bool)]) -> u16 {
        let i = usize::from(q);
        let head = self.next_desc[i];
        for (n, &(addr, len, write)) in descs.iter().enumerate() {
            let index = (head + n as u16) % QSIZE;
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if n + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
                next = (index + 1) % QSIZE;
            }
            let at = GuestAddress(ring(q) + 16 * u64::from(index));
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
        }
        self.next_desc[i] = (head + descs.len() as u16) % QSIZE;
        let avail = ring(q) + 0x1000;
        let slot = avail + 4 + 2 * u64::from(self.avail_idx[i] % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx[i] = self.avail_idx[i].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[i], GuestAddress(avail + 2))
            .unwrap();
        head
    }

    /// Sends a frame on TX behind a header of 0xee bytes (which must not come back).
    fn transmit(&mut self, frame: &[u8]) {
        let hdr = self.buffer(&[0xee; VNET_HDR_LEN], VNET_HDR_LEN as u32);
        let body = self.buffer(frame, frame.len() as u32);
        self.add_chain(
            TX_QUEUE,
            &[
                (hdr, VNET_HDR_LEN as u32, false),
                (body, frame.len() as u32, false),
            ],
        );
    }

    /// Posts an empty receive buffer; returns its address.
    fn post_rx(&mut self) -> u64 {
        let buf = self.buffer(&[0xaa; RX_BUF_LEN as usize], RX_BUF_LEN);
        self.add_chain(RX_QUEUE, &[(buf, RX_BUF_LEN, true)]);
        buf
    }

    /// Asks for an interrupt on every used buffer (`used_event` = the current used index),
    /// then notifies queue `q`.
    fn kick(&self, q: u16) {
        for r in [RX_QUEUE, TX_QUEUE] {
            let used_event = GuestAddress(ring(r) + 0x1000 + 4 + 2 * u64::from(QSIZE));
            self.mem.write_obj(self.used_idx(r), used_event).unwrap();
        }
        fence(Ordering::SeqCst);
        self.kick[usize::from(q)].write(1).unwrap();
    }

    fn used_idx(&self, q: u16) -> u16 {
        self.mem
            .read_obj(GuestAddress(ring(q) + 0x2000 + 2))
            .unwrap()
    }

    /// Used element `n` of queue `q`: (id, len).
    fn used(&self, q: u16, n: u16) -> (u32, u32) {
        let at = GuestAddress(ring(q) + 0x2000 + 4 + 8 * u64::from(n % QSIZE));
        (
            self.mem.read_obj(at).unwrap(),
            self.mem.read_obj(at.unchecked_add(4)).unwrap(),
        )
    }

    /// Waits (5 s at most) for queue `q`'s call eventfd and then for `n` used elements.
    fn wait_used(&self, q: u16, n: u16) {
        let call = &self.call[usize::from(q)];
        let mut pfd = libc::pollfd {
            fd: call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the call's duration.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(ready, 1, "no interrupt on queue {q}");
        call.read().unwrap();
        assert_eq!(self.used_idx(q), n, "used index of queue {q}");
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    /// Checks receive buffer `buf` (used element `n`) holds `frame` behind a fresh header.
    fn assert_received(&self, n: u16, buf: u64, frame: &[u8]) {
        let (_, len) = self.used(RX_QUEUE, n);
        assert_eq!(len as usize, VNET_HDR_LEN + frame.len());
        let got = self.read(buf, len as usize);
        assert_eq!(got[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[VNET_HDR_LEN..], frame);
    }
}

fn frame(tag: u8) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
    ];
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..50).map(|i| tag.wrapping_add(i)));
    f
}

/// One frame out on TX and back on RX, on a fresh connection.
fn loop_one_frame(driver: &mut Driver, tag: u8) {
    let rx0 = driver.used_idx(RX_QUEUE);
    let tx0 = driver.used_idx(TX_QUEUE);
    let buf = driver.post_rx();
    let f = frame(tag);
    driver.transmit(&f);
    driver.kick(TX_QUEUE);
    driver.wait_used(RX_QUEUE, rx0 + 1);
    driver.assert_received(rx0, buf, &f);
    assert_eq!(driver.used_idx(TX_QUEUE), tx0 + 1);
    assert_eq!(driver.used(TX_QUEUE, tx0).1, 0);
}

#[test]
fn a_transmitted_frame_comes_back_on_rx_behind_a_zeroed_header() {
    for event_idx in [true, false] {
        let (_dir, path, counters) = start_server(LoopConfig::default());
        let mut driver = Driver::connect(&path, event_idx);
        loop_one_frame(&mut driver, 1);
        loop_one_frame(&mut driver, 2);
        assert_eq!(counters.looped(), 2);
        assert_eq!(counters.dropped(), 0);
        assert_eq!(counters.malformed(), 0);
    }
}

#[test]
fn the_config_space_holds_the_mac() {
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let (_dir, path, _) = start_server(LoopConfig {
        mac,
        ..LoopConfig::default()
    });
    let mut driver = Driver::connect(&path, true);
    let (_, got) = driver
        .frontend
        .get_config(0, 6, VhostUserConfigFlags::empty(), &[0; 6])
        .unwrap();
    assert_eq!(got, mac);
}

#[test]
fn frames_wait_for_rx_buffers_and_the_oldest_is_dropped_beyond_the_backlog() {
    let (_dir, path, counters) = start_server(LoopConfig {
        backlog: 2,
        ..LoopConfig::default()
    });
    let mut driver = Driver::connect(&path, true);
    for tag in 1..=3 {
        driver.transmit(&frame(tag));
    }
    driver.kick(TX_QUEUE);
    driver.wait_used(TX_QUEUE, 3);
    assert_eq!(counters.dropped(), 1);
    assert_eq!(counters.looped(), 0);

    let bufs = [driver.post_rx(), driver.post_rx()];
    driver.kick(RX_QUEUE);
    driver.wait_used(RX_QUEUE, 2);
    driver.assert_received(0, bufs[0], &frame(2));
    driver.assert_received(1, bufs[1], &frame(3));
    assert_eq!(counters.looped(), 2);
}

#[test]
fn a_chain_without_a_whole_header_is_returned_and_counted() {
    let (_dir, path, counters) = start_server(LoopConfig::default());
    let mut driver = Driver::connect(&path, true);
    let short = driver.buffer(&[0; 4], 4);
    driver.add_chain(TX_QUEUE, &[(short, 4, false)]);
    driver.kick(TX_QUEUE);
    driver.wait_used(TX_QUEUE, 1);
    assert_eq!(counters.malformed(), 1);
    loop_one_frame(&mut driver, 7);
}

#[test]
fn a_front_end_can_connect_again_after_another_disconnects() {
    let (_dir, path, counters) = start_server(LoopConfig::default());
    let mut first = Driver::connect(&path, true);
    loop_one_frame(&mut first, 1);
    drop(first);
    let mut second = Driver::connect(&path, true);
    loop_one_frame(&mut second, 2);
    assert_eq!(counters.looped(), 2);
}

#[test]
fn a_peer_sending_junk_is_disconnected_and_the_server_keeps_serving() {
    let (_dir, path, _) = start_server(LoopConfig::default());
    let mut junk = UnixStream::connect(&path).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    junk.write_all(&[0xff; 64]).unwrap();
    let mut buf = [0u8; 64];
    match junk.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("junk peer still connected: {other:?}"),
    }
    let mut driver = Driver::connect(&path, true);
    loop_one_frame(&mut driver, 3);
}

#[test]
fn macs_parse_as_six_colon_separated_hex_bytes() {
    assert_eq!(
        parse_mac("52:54:00:ab:CD:ef"),
        Some([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])
    );
    assert_eq!(parse_mac("52:54:00:ab:cd"), None);
    assert_eq!(parse_mac("52:54:00:ab:cd:ef:01"), None);
    assert_eq!(parse_mac("52:54:00:ab:cd:e"), None);
}
