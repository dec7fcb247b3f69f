//! Vsock tests: real guest memory, `MockSplitQueue` as the driver, real Unix sockets on the
//! host side, no KVM. `tests/` holds the malformed-input, flow-control, host-side and
//! save/restore tests; this file the test driver and the basic connections.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, shutdown, TYPE_STREAM};
use super::*;
use crate::virtio::{features, ids, DeviceEnv, Interrupt, VirtioDevice};

mod flow;
mod host;
mod malformed;
mod persist;

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
        let raw = crate::virtio::test_chains::chain(first, descs);
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
fn many_connections_at_once_each_carry_their_own_bytes() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 200);
    let clients: Vec<UnixStream> = (0..64)
        .map(|_| {
            let mut c = UnixStream::connect(&s.uds).unwrap();
            c.write_all(b"CONNECT 80\n").unwrap();
            c
        })
        .collect();
    pump(&mut s.vsock);
    let requests = d.received();
    assert_eq!(requests.len(), 64);
    let mut host_ports: Vec<u32> = requests.iter().map(|(h, _)| h.src_port).collect();
    host_ports.sort_unstable();
    host_ports.dedup();
    assert_eq!(
        host_ports.len(),
        64,
        "every connection has its own host port"
    );
    for (h, _) in &requests {
        d.send(&mut s.vsock, d.header(op::RESPONSE, 80, h.src_port), &[]);
    }
    assert_eq!(s.vsock.connection_count(), 64);
    // Each host client writes its index; each guest reply names the host port it came on.
    for (i, mut c) in clients.iter().enumerate() {
        let mut ok = [0u8; 14];
        c.read_exact(&mut ok).unwrap();
        c.write_all(format!("client {i:02}").as_bytes()).unwrap();
    }
    pump(&mut s.vsock);
    let data = d.received();
    assert_eq!(data.len(), 64);
    for (h, body) in &data {
        d.send(&mut s.vsock, d.header(op::RW, 80, h.src_port), body);
    }
    for (i, mut c) in clients.iter().enumerate() {
        let mut echo = [0u8; 9];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo, format!("client {i:02}").as_bytes());
    }
}
