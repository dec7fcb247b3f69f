//! Vsock tests: real guest memory, `MockSplitQueue` as the driver, real Unix sockets on the
//! host side, no KVM.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, shutdown, TYPE_STREAM};
use super::*;
use crate::virtio::{features, ids, DeviceEnv, Interrupt, VirtioDevice};

type Mem = memory::GuestMemoryMmap;

const MEM_SIZE: usize = 16 << 20;
const DATA: u64 = 0x10_0000;
const CID: u64 = 42;
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;
/// The receive buffers the test driver posts: a header and 4 KiB.
const RX_BUF: u32 = HEADER_LEN as u32 + 4096;

fn memory() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

struct Setup {
    _dir: TempDir,
    uds: PathBuf,
    vsock: Vsock,
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let uds = dir.as_path().join("v.sock");
    let vsock = Vsock::new(&VsockConfig {
        id: "vsock0".into(),
        guest_cid: CID,
        uds_path: uds.clone(),
    })
    .unwrap();
    Setup {
        _dir: dir,
        uds,
        vsock,
    }
}

/// The guest driver's side: three queues, buffers handed out upwards from [`DATA`].
struct Driver<'a> {
    mem: &'a Mem,
    queues: [MockSplitQueue<'a, Mem>; 3],
    next_desc: [u16; 3],
    next_buf: u64,
    seen_used: [u16; 3],
    interrupt: Arc<Interrupt>,
    /// The guest's receive buffer per connection, as it tells the device.
    buf_alloc: u32,
    fwd_cnt: u32,
    /// The address of each posted rx buffer, by head index.
    rx_addrs: std::collections::HashMap<u32, u64>,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a Mem) -> Self {
        Driver {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(0x8000), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(0x10000), QUEUE_SIZE),
            ],
            next_desc: [0; 3],
            next_buf: DATA,
            seen_used: [0; 3],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
            rx_addrs: Default::default(),
        }
    }

    fn queues(&self) -> Vec<Queue> {
        self.queues
            .iter()
            .map(|m| m.create_queue().unwrap())
            .collect()
    }

    fn env(&self) -> DeviceEnv {
        DeviceEnv {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: features::COMMON,
            kicks: Default::default(),
        }
    }

    fn activate(&self, vsock: &mut Vsock) {
        vsock.activate(self.queues(), self.env()).unwrap();
    }

    fn buffer(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x100);
        assert!(self.next_buf <= MEM_SIZE as u64, "test buffers exhausted");
        addr
    }

    fn add_chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT as u16
                };
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.next_desc[queue] = first + descs.len() as u16;
        self.queues[queue].add_desc_chains(&raw, first).unwrap();
    }

    fn post_rx(&mut self, vsock: &mut Vsock, count: usize) {
        for _ in 0..count {
            let addr = self.buffer(RX_BUF);
            self.rx_addrs.insert(u32::from(self.next_desc[0]), addr);
            self.add_chain(0, &[(addr, RX_BUF, WO)]);
        }
        vsock.queue_notify(0);
    }

    fn header(&self, op_: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op_,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends raw `parts` as one tx chain (one read-only descriptor each) and notifies.
    fn send_raw(&mut self, vsock: &mut Vsock, parts: &[&[u8]]) {
        let descs: Vec<(u64, u32, u16)> = parts
            .iter()
            .map(|p| {
                let addr = self.buffer(p.len().max(1) as u32);
                self.mem.write_slice(p, GuestAddress(addr)).unwrap();
                (addr, p.len() as u32, RO)
            })
            .collect();
        self.add_chain(1, &descs);
        vsock.queue_notify(1);
    }

    fn send(&mut self, vsock: &mut Vsock, mut h: Header, body: &[u8]) {
        h.len = body.len() as u32;
        let bytes = h.to_bytes();
        if body.is_empty() {
            self.send_raw(vsock, &[&bytes]);
        } else {
            self.send_raw(vsock, &[&bytes, body]);
        }
    }

    /// New used entries of `queue`: (head, len).
    fn new_used(&mut self, queue: usize) -> Vec<(u32, u32)> {
        let used = self.queues[queue].used();
        let count = used.idx().load();
        let out = (self.seen_used[queue]..count)
            .map(|i| {
                let e = used
                    .ring()
                    .ref_at(usize::from(i % QUEUE_SIZE))
                    .unwrap()
                    .load();
                (e.id(), e.len())
            })
            .collect();
        self.seen_used[queue] = count;
        out
    }

    /// Packets the device put on rx since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.new_used(0)
            .into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(head, len)| {
                let addr = self.rx_addrs[&head];
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                let h = Header::parse(&buf).unwrap();
                assert_eq!(h.len as usize, buf.len() - HEADER_LEN);
                (h, buf[HEADER_LEN..].to_vec())
            })
            .collect()
    }
}

/// Lets the device handle what its host side has ready.
fn pump(vsock: &mut Vsock) {
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(5));
        vsock.process_host();
    }
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

/// A host client connected to guest port `port`, after the guest accepted: returns the
/// stream and the device's host port.
fn host_connect(s: &mut Setup, d: &mut Driver, port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    pump(&mut s.vsock);
    let got = d.received();
    assert_eq!(ops(&got), [op::REQUEST]);
    let req = got[0].0;
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, port)
    );
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    d.send(
        &mut s.vsock,
        d.header(op::RESPONSE, port, req.src_port),
        &[],
    );
    let mut ok = [0u8; 14];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, format!("OK {}\n", req.src_port).as_bytes());
    (host, req.src_port)
}

#[test]
fn config_space_holds_the_guest_cid_and_three_queues() {
    let s = setup();
    assert_eq!(s.vsock.device_type(), ids::VSOCK);
    assert_eq!(s.vsock.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    s.vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut past = [0xffu8; 4];
    s.vsock.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn reserved_cids_and_busy_paths_are_refused() {
    let s = setup();
    for cid in [0, 1, 2, 1 << 32] {
        let c = VsockConfig {
            id: "v".into(),
            guest_cid: cid,
            uds_path: "/tmp/x".into(),
        };
        assert!(
            matches!(Vsock::new(&c), Err(VsockError::Cid(_))),
            "cid {cid}"
        );
    }
    let again = VsockConfig {
        id: "v".into(),
        guest_cid: 3,
        uds_path: s.uds.clone(),
    };
    assert!(matches!(
        Vsock::new(&again),
        Err(VsockError::SocketInUse(_))
    ));
    let file = s._dir.as_path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let c = VsockConfig {
        uds_path: file,
        ..again
    };
    assert!(matches!(Vsock::new(&c), Err(VsockError::NotASocket(_))));
}

#[test]
fn host_connection_echoes_both_ways() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, host_port) = host_connect(&mut s, &mut d, 1234);
    assert_eq!(host_port, FIRST_HOST_PORT);

    host.write_all(b"ping from the host").unwrap();
    pump(&mut s.vsock);
    let got = d.received();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"ping from the host");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 1234));

    d.send(
        &mut s.vsock,
        d.header(op::RW, 1234, host_port),
        b"pong from the guest",
    );
    let mut buf = [0u8; 19];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong from the guest");
    assert_eq!(s.vsock.metrics().connections, 1);
}

#[test]
fn guest_connection_reaches_the_port_socket_or_gets_rst() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);

    d.send(&mut s.vsock, d.header(op::REQUEST, 5000, 52), &[]);
    assert_eq!(ops(&d.received()), [op::RST]);
    assert_eq!(s.vsock.metrics().connect_failures, 1);

    let listener = UnixListener::bind(format!("{}_52", s.uds.display())).unwrap();
    d.send(&mut s.vsock, d.header(op::REQUEST, 5001, 52), &[]);
    let got = d.received();
    assert_eq!(ops(&got), [op::RESPONSE]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (52, 5001));
    let (mut peer, _) = listener.accept().unwrap();
    d.send(&mut s.vsock, d.header(op::RW, 5001, 52), b"hello host");
    let mut buf = [0u8; 10];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    // The host closes: the guest hears SHUTDOWN, answers RST, and the connection is gone.
    drop(peer);
    pump(&mut s.vsock);
    let got = d.received();
    assert_eq!(ops(&got), [op::SHUTDOWN]);
    assert_eq!(got[0].0.flags, shutdown::SEND);
    d.send(&mut s.vsock, d.header(op::RST, 5001, 52), &[]);
    assert_eq!(s.vsock.connection_count(), 0);
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_counted() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 16);

    // A header cut short.
    d.send_raw(&mut s.vsock, &[&[0u8; 20]]);
    // len past the buffer.
    let mut h = d.header(op::RW, 1, 2);
    h.len = 100;
    d.send_raw(&mut s.vsock, &[&h.to_bytes(), &[0u8; 10]]);
    // len over the limit.
    h.len = u32::MAX;
    d.send_raw(&mut s.vsock, &[&h.to_bytes()]);
    assert_eq!(s.vsock.metrics().malformed, 3);
    assert!(d.received().is_empty());

    // A write-only descriptor on tx.
    let addr = d.buffer(64);
    d.add_chain(1, &[(addr, 64, WO)]);
    s.vsock.queue_notify(1);
    // A buffer outside guest memory.
    d.add_chain(1, &[(MEM_SIZE as u64, 64, RO)]);
    s.vsock.queue_notify(1);
    assert_eq!(s.vsock.metrics().malformed, 5);
    // Every chain was used.
    assert_eq!(d.new_used(1).len(), 5);

    // Not from this guest: dropped, nobody to answer.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.src_cid = CID + 1;
    d.send(&mut s.vsock, h, &[]);
    assert!(d.received().is_empty());
    // A datagram type: RST.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.type_ = 2;
    d.send(&mut s.vsock, h, &[]);
    // To a CID that is not the host: RST.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.dst_cid = 7;
    d.send(&mut s.vsock, h, &[]);
    // An unknown op, and data on no connection: RST.
    d.send(&mut s.vsock, d.header(99, 1, 2), &[]);
    d.send(&mut s.vsock, d.header(op::RW, 1, 2), b"nobody");
    // RST for an unknown connection is not answered.
    d.send(&mut s.vsock, d.header(op::RST, 1, 2), &[]);
    let got = d.received();
    assert_eq!(ops(&got), [op::RST, op::RST, op::RST, op::RST]);
    assert!(got.iter().all(|(h, _)| h.dst_cid == CID && h.dst_port == 1));
    assert_eq!(s.vsock.metrics().malformed, 9);
}

#[test]
fn short_rx_buffer_is_used_empty_and_the_packet_waits() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.send(&mut s.vsock, d.header(op::REQUEST, 5000, 52), &[]);
    let addr = d.buffer(16);
    d.add_chain(0, &[(addr, 16, WO)]);
    s.vsock.queue_notify(0);
    assert_eq!(d.new_used(0), [(0, 0)]);
    assert_eq!(s.vsock.metrics().malformed, 1);
    d.post_rx(&mut s.vsock, 1);
    assert_eq!(ops(&d.received()), [op::RST]);
}

#[test]
fn host_to_guest_stays_within_the_guest_credit() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.buf_alloc = 1000;
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 7);
    host.write_all(&[7u8; 3000]).unwrap();
    pump(&mut s.vsock);
    let got = d.received();
    let data: usize = got.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(data, 1000);
    assert_eq!(got.last().unwrap().0.op, op::CREDIT_REQUEST);
    // The guest consumed 600 bytes and says so: 600 more arrive.
    d.fwd_cnt = 600;
    d.send(&mut s.vsock, d.header(op::CREDIT_UPDATE, 7, hp), &[]);
    pump(&mut s.vsock);
    let data: usize = d.received().iter().map(|(_, b)| b.len()).sum();
    assert_eq!(data, 600);
}

#[test]
fn guest_past_its_credit_is_reset() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 7);
    // The host does not read: the guest may fill BUF_ALLOC, not a byte more.
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0;
    while sent < BUF_ALLOC as usize {
        d.send(&mut s.vsock, d.header(op::RW, 7, hp), &chunk);
        sent += chunk.len();
    }
    assert_eq!(s.vsock.connection_count(), 1);
    d.send(&mut s.vsock, d.header(op::RW, 7, hp), &[1u8; 1]);
    // Whatever fit in the socket may have gone; the rest is beyond the guest's credit.
    let socket_took = s.vsock.metrics().tx_bytes;
    if socket_took == 0 {
        assert_eq!(s.vsock.metrics().credit_violations, 1);
        assert_eq!(s.vsock.connection_count(), 0);
        assert!(ops(&d.received()).contains(&op::RST));
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = host.read_to_end(&mut rest);
    }
}

#[test]
fn slow_host_reader_loses_nothing_and_stalls_only_its_connection() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 32);
    let (slow, hp1) = host_connect(&mut s, &mut d, 1);
    let (mut fast, hp2) = host_connect(&mut s, &mut d, 2);

    let pattern: Vec<u8> = (0..BUF_ALLOC as usize).map(|i| (i % 251) as u8).collect();
    for chunk in pattern.chunks(32 << 10) {
        d.send(&mut s.vsock, d.header(op::RW, 1, hp1), chunk);
        // The other connection keeps flowing while the slow one's socket is full.
        d.send(&mut s.vsock, d.header(op::RW, 2, hp2), b"x");
        let mut b = [0u8; 1];
        fast.read_exact(&mut b).unwrap();
    }
    assert_eq!(s.vsock.connection_count(), 2);
    let reader = std::thread::spawn(move || {
        let mut slow = slow;
        let mut got = vec![0u8; BUF_ALLOC as usize];
        slow.read_exact(&mut got).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.vsock.metrics().tx_bytes < BUF_ALLOC as u64 + 8 {
        assert!(Instant::now() < deadline, "host never got the bytes");
        pump(&mut s.vsock);
    }
    assert_eq!(reader.join().unwrap(), pattern);
    // The guest was told its credit is back.
    let updates: Vec<_> = d
        .received()
        .into_iter()
        .filter(|(h, _)| h.op == op::CREDIT_UPDATE && h.dst_port == 1)
        .collect();
    // The guest was told of at least half its buffer free again (the threshold for updates).
    assert!(updates.last().unwrap().0.fwd_cnt >= BUF_ALLOC / 2);
}

#[test]
fn guest_shutdown_both_ways_resets_and_closes_the_host_socket() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 9);
    d.send(&mut s.vsock, d.header(op::RW, 9, hp), b"last words");
    let mut h = d.header(op::SHUTDOWN, 9, hp);
    h.flags = shutdown::BOTH;
    d.send(&mut s.vsock, h, &[]);
    assert_eq!(ops(&d.received()), [op::RST]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"last words");
}

#[test]
fn bad_connect_lines_are_refused() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x1\n",
        b"CONNECT 99999999999\n",
        b"connect 5\n",
        b"CONNECT -1\n",
        &[b'A'; 64],
    ] {
        let mut host = UnixStream::connect(&s.uds).unwrap();
        host.write_all(line).unwrap();
        pump(&mut s.vsock);
        let mut reply = Vec::new();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let read = host.read_to_end(&mut reply);
        if line.len() < 32 {
            read.unwrap();
            assert_eq!(reply, b"ERR\n", "line {:?}", String::from_utf8_lossy(line));
        } else {
            // Closed with unread bytes: the client may see a reset instead of the reply.
            assert!(read.is_err() || reply == b"ERR\n");
        }
    }
    // A client that hangs up before its newline.
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    drop(host);
    pump(&mut s.vsock);
    assert!(d.received().is_empty());
    assert_eq!(s.vsock.metrics().host_refused, 7);
    assert_eq!(s.vsock.connection_count(), 0);
}

#[test]
fn unanswered_host_connection_times_out() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.write_all(b"CONNECT 80\n").unwrap();
    pump(&mut s.vsock);
    assert_eq!(ops(&d.received()), [op::REQUEST]);
    let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
    while s.vsock.connection_count() > 0 {
        assert!(Instant::now() < deadline, "the request never timed out");
        pump(&mut s.vsock);
    }
    assert_eq!(ops(&d.received()), [op::RST]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(s.vsock.metrics().connect_timeouts, 1);
}

#[test]
fn reset_closes_every_connection() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, _) = host_connect(&mut s, &mut d, 3);
    s.vsock.reset();
    assert_eq!(s.vsock.connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(s.vsock.queues().is_empty());
}

#[test]
fn state_round_trips_and_restore_announces_a_transport_reset() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, _) = host_connect(&mut s, &mut d, 3);
    let state = s.vsock.save();
    assert_eq!(state.next_host_port, FIRST_HOST_PORT + 1);
    let json = serde_json::to_string(&state).unwrap();
    let back: VsockState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // The snapshot's device replaces this one: its connections go.
    drop(s.vsock);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let mut restored = Vsock::restore(&back).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.connection_count(), 0);
    let mem2 = memory();
    let mut d2 = Driver::new(&mem2);
    d2.activate(&mut restored);
    let addr = d2.buffer(8);
    d2.add_chain(2, &[(addr, 8, WO)]);
    restored.queue_notify(2);
    assert_eq!(d2.new_used(2), [(0, 4)]);
    let mut event = [0u8; 4];
    mem2.read_slice(&mut event, GuestAddress(addr)).unwrap();
    assert_eq!(u32::from_le_bytes(event), EVENT_TRANSPORT_RESET);
    // Once only.
    let addr = d2.buffer(8);
    d2.add_chain(2, &[(addr, 8, WO)]);
    restored.queue_notify(2);
    assert!(d2.new_used(2).is_empty());
    // The restored device listens again.
    UnixStream::connect(&back.config.uds_path).unwrap();
}

#[test]
fn replies_to_a_guest_that_posts_no_rx_buffers_are_bounded() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    // Every RST answer waits for an rx buffer the guest never posts.
    let h = d.header(op::RW, 1, 2).to_bytes();
    let addr = d.buffer(HEADER_LEN as u32);
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
    for _ in 0..(MAX_CONTROL + 100) / usize::from(QUEUE_SIZE) + 1 {
        for _ in 0..QUEUE_SIZE {
            d.add_chain(1, &[(addr, HEADER_LEN as u32, RO)]);
        }
        s.vsock.queue_notify(1);
        d.next_desc[1] = 0;
    }
    assert_eq!(s.vsock.control.len(), MAX_CONTROL);
    assert!(s.vsock.metrics().control_dropped >= 100);
}

#[test]
fn long_or_nul_socket_paths_are_refused() {
    for path in ["a".repeat(MAX_PATH_LEN + 1), "/tmp/a\0b".to_string()] {
        let c = VsockConfig {
            id: "v".into(),
            guest_cid: 3,
            uds_path: path.into(),
        };
        assert!(matches!(c.validate(), Err(VsockError::BadPath(_))));
    }
}

#[test]
fn headers_round_trip() {
    let h = Header {
        src_cid: 1 << 40 | 3,
        dst_cid: 2,
        src_port: 1,
        dst_port: u32::MAX,
        len: 5,
        type_: 1,
        op: 5,
        flags: 3,
        buf_alloc: 77,
        fwd_cnt: 88,
    };
    assert_eq!(Header::parse(&h.to_bytes()), Some(h));
    assert_eq!(Header::parse(&[0u8; HEADER_LEN - 1]), None);
}

#[test]
fn connect_lines_parse() {
    use super::host::parse_connect;
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
    assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    assert_eq!(parse_connect(b"CONNECT +5"), None);
    assert_eq!(parse_connect(b"CONNECT  5"), None);
    assert_eq!(parse_connect(b"\xff"), None);
}

/// Brings the vsock device up through the transport's registers, with the driver's queues.
fn bring_up(t: &mut crate::virtio::mmio::MmioTransport, d: &Driver) {
    use crate::bus::BusDevice;
    use crate::virtio::status;
    use virtio_bindings::virtio_mmio::*;
    let mut w = |offset: u32, value: u32| t.write(u64::from(offset), &value.to_le_bytes());
    w(VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w(
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features::COMMON >> (32 * sel)) as u32,
        );
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(VIRTIO_MMIO_STATUS, ok);
    for (index, q) in d.queues.iter().enumerate() {
        w(VIRTIO_MMIO_QUEUE_SEL, index as u32);
        w(VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr().0),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0),
            (VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr().0),
        ] {
            w(low, addr as u32);
            w(low + 4, (addr >> 32) as u32);
        }
        w(VIRTIO_MMIO_QUEUE_READY, 1);
    }
    w(VIRTIO_MMIO_STATUS, ok | status::DRIVER_OK);
}

#[test]
fn transport_and_device_state_round_trip_through_a_restore() {
    use crate::virtio::mmio::MmioTransport;
    let s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(s.vsock), mem.clone(), irq).unwrap();
    bring_up(&mut t, &d);
    assert!(t.is_active());
    d.post_rx(
        t.device_mut().as_any_mut().downcast_mut::<Vsock>().unwrap(),
        4,
    );

    let transport_state = t.save();
    let vsock_state = t.device().as_any().downcast_ref::<Vsock>().unwrap().save();
    assert_eq!(transport_state.acked_features, features::COMMON);
    assert_eq!(transport_state.queues.len(), 3);
    assert_eq!(transport_state.queues[0].next_avail, 0);
    drop(t);

    // The driver posts an event buffer while the VM is saved.
    let addr = d.buffer(4);
    d.add_chain(2, &[(addr, 4, WO)]);
    let device = Vsock::restore(&vsock_state).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut restored =
        MmioTransport::restore(Box::new(device), mem.clone(), irq, &transport_state).unwrap();
    assert!(restored.is_active());
    assert_eq!(d.new_used(2), [(0, 4)]);
    let mut event = [0xffu8; 4];
    mem.read_slice(&mut event, GuestAddress(addr)).unwrap();
    assert_eq!(u32::from_le_bytes(event), EVENT_TRANSPORT_RESET);
    let again = restored.save();
    assert_eq!(again.queues[0], transport_state.queues[0]);
    assert_eq!(again.queues[1], transport_state.queues[1]);
    assert_eq!(again.queues[2].next_used, 1);
    let dev = restored.device().as_any().downcast_ref::<Vsock>().unwrap();
    assert_eq!(dev.save(), vsock_state);
    // The restored device serves host connections on the same socket.
    UnixStream::connect(&s.uds).unwrap();
}

#[test]
fn random_packets_never_panic_and_the_device_keeps_working() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    let listener = UnixListener::bind(format!("{}_7", s.uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let base = d.next_buf;
    for _ in 0..40 {
        d.next_buf = base;
        d.next_desc[1] = 0;
        for _ in 0..100 {
            let r = next();
            let mut h = d.header((r % 9) as u16, (r >> 8) as u32 % 4, 7);
            if r >> 20 & 7 == 0 {
                h.src_cid = next();
            }
            if r >> 23 & 7 == 0 {
                h.type_ = (next() % 4) as u16;
            }
            h.flags = (next() % 4) as u32;
            h.buf_alloc = next() as u32;
            h.fwd_cnt = next() as u32;
            let body_len = if h.op == op::RW || next() % 16 == 0 {
                (next() % 300) as usize
            } else {
                0
            };
            h.len = match next() % 4 {
                0 => next() as u32,
                _ => body_len as u32,
            };
            let body = vec![0x5a; body_len];
            let raw = h.to_bytes();
            let cut = (next() % (HEADER_LEN as u64 + 1)) as usize;
            match next() % 5 {
                0 => d.send_raw(&mut s.vsock, &[&raw[..cut]]),
                1 => d.send_raw(&mut s.vsock, &[&raw[..cut], &raw[cut..], &body]),
                _ => d.send_raw(&mut s.vsock, &[&raw, &body]),
            }
            while let Ok((peer, _)) = listener.accept() {
                drop(peer);
            }
            if next() % 8 == 0 {
                d.post_rx(&mut s.vsock, 1);
            }
        }
        d.next_desc[0] = 0;
        // The buffers' memory is reused by the next round: only the used ring is checked.
        d.new_used(0);
        s.vsock.process_host();
    }
    let m = s.vsock.metrics();
    assert!(
        m.malformed > 0 && m.connections > 0 && m.resets_sent > 0,
        "{m:?}"
    );
    // The device still serves a clean connection.
    let mut d = Driver::new(&mem);
    s.vsock.reset();
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 99);
    d.send(&mut s.vsock, d.header(op::RW, 99, hp), b"still here");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

/// A listening Unix socket at `path` with a backlog of 0, never accepting.
fn tiny_backlog_listener(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid `sockaddr_un`.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, live `sockaddr_un` of `len` bytes; bind and listen touch only
    // the descriptor.
    unsafe {
        assert_eq!(
            libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
    }
    fd
}

#[test]
fn a_host_listener_with_a_full_backlog_refuses_without_stalling_the_device() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 16);
    let _listener = tiny_backlog_listener(&PathBuf::from(format!("{}_8", s.uds.display())));
    let mut answers = Vec::new();
    for port in 1..=4 {
        d.send(&mut s.vsock, d.header(op::REQUEST, port, 8), &[]);
        answers.extend(ops(&d.received()));
    }
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0], op::RESPONSE);
    assert_eq!(*answers.last().unwrap(), op::RST);
    assert!(s.vsock.metrics().connect_failures > 0);
}
