//! virtio-vsock throughput and VMM CPU time per packet, guest to host and host to guest, with
//! 4 KiB and 64 KiB writes.
//!
//! In-process, no KVM: the bench plays the guest driver on the main thread with real guest
//! memory and split rings (`util::Ring`), and a host process's side on a second thread over
//! the device's real Unix sockets.
//! - guest to host: the guest connects to host port 5000 (a listener at `<uds>_5000`), then
//!   sends RW packets of the write size (a header descriptor and a payload descriptor) as far
//!   as its credit allows; a host thread reads the socket as fast as it can. The device's
//!   CREDIT_UPDATEs on rx give the guest more credit.
//! - host to guest: a host thread connects with `CONNECT 1234`, the guest accepts with a
//!   1 MiB receive buffer, and the thread writes the write size at a time; the guest takes
//!   RW packets from 64 KiB rx buffers and sends CREDIT_UPDATE after each half buffer.
//!
//! Bytes/s is payload bytes over wall time. VMM CPU per packet is the main thread's CPU time
//! inside the device's calls (`queue_notify`, `process_host`) over data packets: what the VMM
//! thread would spend; the driver's and the host thread's work are not in it.
//!
//! `cargo bench -p devices --bench vsock`; `PETREL_BENCH_SECS`, `PETREL_BENCH_WARMUP_SECS`
//! and `PETREL_BENCH_JSON` as for the other benches. Without `--bench`, a short smoke run.

#[allow(dead_code)]
mod util;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::vsock::{Header, Vsock, VsockConfig, BUF_ALLOC, HEADER_LEN, HOST_CID};
use devices::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};
use memory::GuestMemoryMmap;
use serde_json::json;
use util::{thousands, thread_cpu, Ring, Settings, F_NEXT, F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 256;
const MEM_SIZE: usize = 64 << 20;
const CID: u64 = 3;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const EVENT_RING: u64 = 0x2_0000;
/// rx buffers: a header and 64 KiB each.
const RX_BUFS: u64 = 0x10_0000;
const RX_LEN: u32 = HEADER_LEN as u32 + (64 << 10);
/// tx: a header slot and a payload slot per descriptor pair.
const TX_HDRS: u64 = 0x200_0000;
const TX_DATA: u64 = 0x210_0000;
const WRITE_SIZES: [usize; 2] = [4 << 10, 64 << 10];
const GUEST_BUF_ALLOC: u32 = 1 << 20;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;

/// The guest driver: the three rings and the CPU time spent inside the device.
struct Guest {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    /// Next free tx descriptor pair (descriptors 2i, 2i+1).
    tx_next: u16,
    tx_free: u16,
    device_cpu: Duration,
}

impl Guest {
    fn new(mem: &GuestMemoryMmap, vsock: &mut Vsock) -> Guest {
        let rx = Ring::new(mem, RX_RING, QSIZE);
        let tx = Ring::new(mem, TX_RING, QSIZE);
        let event = Ring::new(mem, EVENT_RING, QSIZE);
        let env = DeviceEnv {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: features::VERSION_1,
            kicks: Default::default(),
        };
        vsock
            .activate(vec![rx.queue(), tx.queue(), event.queue()], env)
            .expect("activate");
        let mut g = Guest {
            mem: mem.clone(),
            rx,
            tx,
            tx_next: 0,
            tx_free: QSIZE / 2,
            device_cpu: Duration::ZERO,
        };
        for i in 0..QSIZE {
            g.rx.set_desc(
                i,
                RX_BUFS + u64::from(i) * u64::from(RX_LEN),
                RX_LEN,
                F_WRITE,
                0,
            );
            g.rx.push(i);
        }
        g.rx.publish();
        g.device(vsock, |v| v.queue_notify(0));
        g
    }

    /// Runs `f` on the device, counting the thread's CPU time.
    fn device(&mut self, vsock: &mut Vsock, f: impl FnOnce(&mut Vsock)) {
        let before = thread_cpu();
        f(vsock);
        self.device_cpu += thread_cpu() - before;
    }

    fn header(op: u16, src_port: u32, dst_port: u32, len: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: 1,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Queues one tx packet; its payload is `len` bytes of the prefilled data area.
    fn push_tx(&mut self, h: Header) {
        let pair = self.tx_next % (QSIZE / 2);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_free -= 1;
        let (d0, d1) = (pair * 2, pair * 2 + 1);
        let hdr_at = TX_HDRS + u64::from(pair) * 64;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
            .unwrap();
        if h.len == 0 {
            self.tx.set_desc(d0, hdr_at, HEADER_LEN as u32, 0, 0);
        } else {
            self.tx.set_desc(d0, hdr_at, HEADER_LEN as u32, F_NEXT, d1);
            self.tx.set_desc(d1, TX_DATA, h.len, 0, 0);
        }
        self.tx.push(d0);
    }

    fn flush_tx(&mut self, vsock: &mut Vsock) {
        self.tx.publish();
        self.device(vsock, |v| v.queue_notify(1));
        while self.tx.pop_used().is_some() {
            self.tx_free += 1;
        }
    }

    /// Takes the packets the device put on rx, reposting their buffers.
    fn take_rx(&mut self, vsock: &mut Vsock) -> Vec<Header> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.rx.pop_used() {
            if len as usize >= HEADER_LEN {
                let mut raw = [0u8; HEADER_LEN];
                let at = RX_BUFS + u64::from(head) * u64::from(RX_LEN);
                self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
                out.push(Header::parse(&raw).unwrap());
            }
            self.rx.push(head);
        }
        if !out.is_empty() {
            self.rx.publish();
            self.device(vsock, |v| v.queue_notify(0));
        }
        out
    }

    /// Lets the device handle its host side if something is ready within `timeout`.
    fn host(&mut self, vsock: &mut Vsock, timeout: Duration) {
        if util::wait_readable(vsock.epoll_fd(), timeout) {
            self.device(vsock, |v| v.process_host());
        }
    }
}

struct Result_ {
    bytes: u64,
    packets: u64,
    elapsed: Duration,
    device_cpu: Duration,
}

fn guest_to_host(write: usize, run: Duration, dir: &std::path::Path) -> Result_ {
    let uds = unique(dir, "g2h");
    let mut vsock = new_vsock(&uds);
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&vec![0xa5u8; 64 << 10], GuestAddress(TX_DATA))
        .unwrap();
    let mut g = Guest::new(&mem, &mut vsock);
    g.push_tx(Guest::header(OP_REQUEST, 6000, 5000, 0, 0));
    g.flush_tx(&mut vsock);
    let (mut peer, _) = listener.accept().unwrap();
    assert!(g.take_rx(&mut vsock).iter().any(|h| h.op == OP_RESPONSE));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            let mut total = 0u64;
            peer.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match peer.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => {}
                }
            }
            total
        })
    };
    let (mut sent, mut peer_fwd, mut packets) = (0u32, 0u32, 0u64);
    let started = Instant::now();
    while started.elapsed() < run {
        let mut queued = false;
        while g.tx_free > 0 && BUF_ALLOC - sent.wrapping_sub(peer_fwd) >= write as u32 {
            g.push_tx(Guest::header(OP_RW, 6000, 5000, write as u32, 0));
            sent = sent.wrapping_add(write as u32);
            packets += 1;
            queued = true;
        }
        if queued {
            g.flush_tx(&mut vsock);
        }
        g.host(
            &mut vsock,
            Duration::from_millis(if queued { 0 } else { 5 }),
        );
        for h in g.take_rx(&mut vsock) {
            peer_fwd = h.fwd_cnt;
        }
    }
    let elapsed = started.elapsed();
    let bytes = vsock.metrics().tx_bytes;
    stop.store(true, Ordering::Relaxed);
    drop(vsock);
    reader.join().unwrap();
    Result_ {
        bytes,
        packets,
        elapsed,
        device_cpu: g.device_cpu,
    }
}

fn host_to_guest(write: usize, run: Duration, dir: &std::path::Path) -> Result_ {
    let uds = unique(dir, "h2g");
    let mut vsock = new_vsock(&uds);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut g = Guest::new(&mem, &mut vsock);
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    let request = loop {
        g.host(&mut vsock, Duration::from_millis(100));
        if let Some(h) = g
            .take_rx(&mut vsock)
            .into_iter()
            .find(|h| h.op == OP_REQUEST)
        {
            break h;
        }
    };
    let host_port = request.src_port;
    g.push_tx(Guest::header(OP_RESPONSE, 1234, host_port, 0, 0));
    g.flush_tx(&mut vsock);
    g.host(&mut vsock, Duration::ZERO);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let data = vec![0x5au8; write];
            client
                .set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = client.write(&data);
            }
        })
    };
    let (mut fwd, mut told, mut packets, mut bytes) = (0u32, 0u32, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < run {
        let got = g.take_rx(&mut vsock);
        // Wait for the host side only when the device had nothing for the guest (as a guest
        // waits for an interrupt).
        let wait = if got.is_empty() { 5 } else { 0 };
        for h in got {
            if h.op == OP_RW {
                packets += 1;
                bytes += u64::from(h.len);
                fwd = fwd.wrapping_add(h.len);
            }
        }
        if fwd.wrapping_sub(told) >= GUEST_BUF_ALLOC / 2 && g.tx_free > 0 {
            g.push_tx(Guest::header(OP_CREDIT_UPDATE, 1234, host_port, 0, fwd));
            g.flush_tx(&mut vsock);
            told = fwd;
        }
        g.host(&mut vsock, Duration::from_millis(wait));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    drop(vsock);
    writer.join().unwrap();
    Result_ {
        bytes,
        packets,
        elapsed,
        device_cpu: g.device_cpu,
    }
}

/// A fresh socket path in `dir` for each run.
fn unique(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{name}{n}.sock"))
}

fn new_vsock(uds: &std::path::Path) -> Vsock {
    Vsock::new(&VsockConfig {
        id: "vsock0".into(),
        guest_cid: CID,
        uds_path: uds.to_path_buf(),
    })
    .expect("vsock device")
}

fn main() {
    let settings = Settings::from_env();
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "virtio-vsock in-process benchmark{}: {:.1} s per case after {:.1} s warm-up",
        if settings.smoke { " (smoke run)" } else { "" },
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "  VMM CPU/packet = the main thread's CPU time inside the device's calls / data packets"
    );
    println!(
        "\n{:<14} {:>7} {:>12} {:>10} {:>12} {:>16}",
        "direction", "write", "MiB/s", "packets", "avg payload", "VMM CPU us/pkt"
    );
    let mut json = Vec::new();
    for (name, case) in [
        (
            "guest_to_host",
            guest_to_host as fn(usize, Duration, &std::path::Path) -> Result_,
        ),
        ("host_to_guest", host_to_guest),
    ] {
        for write in WRITE_SIZES {
            if !settings.warmup.is_zero() {
                case(write, settings.warmup, dir.path());
            }
            let r = case(write, settings.secs, dir.path());
            let secs = r.elapsed.as_secs_f64();
            let bps = r.bytes as f64 / secs;
            let per_packet = r.device_cpu.as_secs_f64() * 1e6 / r.packets.max(1) as f64;
            println!(
                "{name:<14} {:>6}K {:>12.1} {:>10} {:>12} {:>16.2}",
                write >> 10,
                bps / (1 << 20) as f64,
                thousands(r.packets as f64),
                thousands(r.bytes as f64 / r.packets.max(1) as f64),
                per_packet
            );
            json.push(json!({
                "bench": "vsock", "case": name, "write_size": write,
                "secs": secs, "bytes": r.bytes, "packets": r.packets,
                "bytes_per_sec": bps, "vmm_cpu_us_per_packet": per_packet,
            }));
        }
    }
    util::emit_json(&json);
}
