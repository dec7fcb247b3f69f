//! virtio-net TX and RX packets per second through a TAP, with 64- and 1500-byte frames,
//! and the CPU time per packet.
//!
//! The bench moves into a private network namespace (`unshare(CLONE_NEWNET)`, so it needs
//! root; without it, it says why and exits 0), where `Net::new` creates the TAP `pbench0`.
//! It then plays the guest driver on one thread:
//! - TX: the whole transmit ring (256 one-descriptor chains: zeroed `virtio_net_hdr_v1` plus
//!   the frame) is posted, the queue notified, the used chains reclaimed and posted again.
//!   The device writes each frame to the TAP; the namespace's stack drops it (unknown
//!   ethertype).
//! - RX: 256 receive buffers of 2 KiB are posted. Each round sends a batch of frames out of
//!   the TAP from an `AF_PACKET` socket (`sendmmsg`), runs an `EventManager` holding the
//!   device (TAP registered edge-triggered, as the VMM does) until they are delivered, then
//!   reclaims and reposts the buffers and notifies the receive queue, as a guest would.
//!
//! `cargo bench -p devices --bench net`. `PETREL_BENCH_SECS` (3), `PETREL_BENCH_WARMUP_SECS`
//! (0.5) and `PETREL_BENCH_JSON` (append JSON lines there instead of stdout) as for `blk`.
//! Without `--bench` (as `cargo test --benches` runs it) it does a short smoke run.

#[allow(dead_code)]
mod util;

mod net_host;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::net::{MacAddr, Net, NetConfig, NetMetrics, VNET_HDR_LEN};
use devices::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};
use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use memory::GuestMemoryMmap;
use net_host::{frame, tap_counters, HostSocket, TapCounters};
use serde_json::json;
use util::{process_cpu, thousands, thread_cpu, Ring, Settings, F_WRITE};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const TAP: &str = "pbench0";
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 16 << 20;
/// Guest-memory layout: the two rings, then 2 KiB buffers per descriptor.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const BUF_LEN: u64 = 2048;
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Frames sent to the TAP per RX round (the TAP's own queue holds 500).
const RX_BATCH: usize = 128;
const FRAME_SIZES: [usize; 2] = [64, 1500];

/// The device on the event loop, as the VMM's subscriber would put it there.
struct Dev(Net);

impl MutEventSubscriber for Dev {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.host_event(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.0.init_host_events(ops);
    }
}

struct Bench {
    em: EventManager<Dev>,
    id: SubscriberId,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    host: HostSocket,
}

impl Bench {
    fn net(&mut self) -> &mut Net {
        &mut self.em.subscriber_mut(self.id).expect("the device").0
    }
}

/// What a case accumulates besides the device's counters.
#[derive(Clone, Copy, Default)]
struct Tally {
    /// CPU time of the thread inside the device (queue notifications, the event loop).
    vmm_cpu: Duration,
    /// RX: frames sent that never reached the guest in time.
    lost: u64,
    /// RX: frames the socket could not send.
    unsent: u64,
}

/// The state at the start or end of a measurement.
struct Point {
    at: Instant,
    cpu: Duration,
    tally: Tally,
    metrics: NetMetrics,
    tap: TapCounters,
}

fn point(b: &mut Bench, tally: Tally) -> Point {
    Point {
        at: Instant::now(),
        cpu: process_cpu(),
        tally,
        metrics: b.net().metrics(),
        tap: tap_counters(TAP),
    }
}

/// Runs `step` through the warm-up, then for the measured time; the two ends.
fn timed(
    settings: &Settings,
    b: &mut Bench,
    mut step: impl FnMut(&mut Bench, &mut Tally),
) -> (Point, Point) {
    let mut tally = Tally::default();
    let warm_end = Instant::now() + settings.warmup;
    while Instant::now() < warm_end {
        step(b, &mut tally);
    }
    let start = point(b, tally);
    let end = start.at + settings.secs;
    while Instant::now() < end {
        step(b, &mut tally);
    }
    (start, point(b, tally))
}

/// One row of the table.
struct Row {
    direction: &'static str,
    size: usize,
    frames: u64,
    secs: f64,
    cpu: Duration,
    vmm_cpu: Duration,
    drops: u64,
    drop_detail: String,
}

impl Row {
    fn pps(&self) -> f64 {
        self.frames as f64 / self.secs
    }

    fn per_pkt_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.frames.max(1) as f64
    }
}

fn tx_case(settings: &Settings, b: &mut Bench, size: usize) -> Row {
    let pkt = [
        vec![0u8; VNET_HDR_LEN],
        frame([0x02, 0, 0, 0, 0, 0x02], GUEST_MAC, size),
    ]
    .concat();
    for i in 0..QSIZE {
        let addr = TX_BUFS + BUF_LEN * u64::from(i);
        b.mem.write_slice(&pkt, GuestAddress(addr)).expect("packet");
        b.tx.set_desc(i, addr, pkt.len() as u32, 0, 0);
    }
    let (s, e) = timed(settings, b, |b, tally| {
        for head in 0..QSIZE {
            b.tx.push(head);
        }
        b.tx.publish();
        let t = thread_cpu();
        b.net().queue_notify(1);
        tally.vmm_cpu += thread_cpu() - t;
        let mut used = 0;
        while b.tx.pop_used().is_some() {
            used += 1;
        }
        assert_eq!(used, QSIZE, "the device left transmit chains unused");
    });
    let (m0, m1) = (s.metrics, e.metrics);
    let dropped = m1.tx_dropped - m0.tx_dropped;
    let errors = m1.tap_write_errors - m0.tap_write_errors;
    let malformed = m1.tx_malformed - m0.tx_malformed;
    let frames = m1.tx_frames - m0.tx_frames;
    // Every frame the device wrote should have entered the kernel's stack on the TAP.
    let kernel = e.tap.rx_packets - s.tap.rx_packets;
    Row {
        direction: "TX",
        size,
        frames,
        secs: (e.at - s.at).as_secs_f64(),
        cpu: e.cpu - s.cpu,
        vmm_cpu: e.tally.vmm_cpu - s.tally.vmm_cpu,
        drops: dropped + errors + malformed,
        drop_detail: format!(
            "tx_dropped (EAGAIN) {dropped}, tap_write_errors {errors}, malformed {malformed}; \
             the TAP took in {kernel} of {frames} frames"
        ),
    }
}

fn rx_case(settings: &Settings, b: &mut Bench, size: usize) -> Row {
    let f = frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 0xee], size);
    let want_len = (VNET_HDR_LEN + size) as u32;
    let (s, e) = timed(settings, b, |b, tally| {
        let before = b.net().metrics().rx_frames;
        let sent = b.host.send_batch(&f, RX_BATCH);
        tally.unsent += (RX_BATCH - sent) as u64;
        let target = before + sent as u64;
        let t = thread_cpu();
        while b.net().metrics().rx_frames < target {
            if b.em.run_with_timeout(100).expect("event loop") == 0 {
                tally.lost += target - b.net().metrics().rx_frames;
                break;
            }
        }
        tally.vmm_cpu += thread_cpu() - t;
        let mut reposted = false;
        while let Some((head, len)) = b.rx.pop_used() {
            assert_eq!(len, want_len, "received length");
            b.rx.push(head);
            reposted = true;
        }
        if reposted {
            b.rx.publish();
            let t = thread_cpu();
            b.net().queue_notify(0);
            tally.vmm_cpu += thread_cpu() - t;
        }
    });
    let (m0, m1) = (s.metrics, e.metrics);
    let dropped = m1.rx_dropped - m0.rx_dropped;
    let tap = e.tap.tx_dropped - s.tap.tx_dropped;
    let lost = e.tally.lost - s.tally.lost;
    let unsent = e.tally.unsent - s.tally.unsent;
    Row {
        direction: "RX",
        size,
        frames: m1.rx_frames - m0.rx_frames,
        secs: (e.at - s.at).as_secs_f64(),
        cpu: e.cpu - s.cpu,
        vmm_cpu: e.tally.vmm_cpu - s.tally.vmm_cpu,
        drops: dropped + tap + lost + unsent,
        drop_detail: format!(
            "rx_dropped {dropped}, TAP queue full {tap}, lost {lost}, not sent {unsent}"
        ),
    }
}

/// Creates the device and its TAP in the current namespace and activates it.
fn setup() -> Result<Bench, String> {
    let net = Net::new(NetConfig {
        tap: TAP.into(),
        id: "net0".into(),
        mac: Some(MacAddr::new(GUEST_MAC).map_err(|e| e.to_string())?),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    })
    .map_err(|e| e.to_string())?;
    // Router solicitations and the like would land in the receive buffers.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6"), "1");
    // Up only now that the device holds the TAP (carrier on): see net_host::HostSocket.
    let host = HostSocket::new(TAP).map_err(|e| format!("host side of {TAP}: {e}"))?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(|e| format!("guest memory: {e}"))?;
    let mut rx = Ring::new(&mem, RX_RING, QSIZE);
    let tx = Ring::new(&mem, TX_RING, QSIZE);
    for i in 0..QSIZE {
        rx.set_desc(
            i,
            RX_BUFS + BUF_LEN * u64::from(i),
            BUF_LEN as u32,
            F_WRITE,
            0,
        );
        rx.push(i);
    }
    rx.publish();
    let env = DeviceEnv {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(
            EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?,
        )),
        acked_features: features::VERSION_1 | (1 << VIRTIO_NET_F_MAC),
        kicks: Default::default(),
    };
    let mut dev = Dev(net);
    dev.0
        .activate(vec![rx.queue(), tx.queue()], env)
        .map_err(|e| e.to_string())?;
    let mut em = EventManager::new().map_err(|e| format!("event manager: {e:?}"))?;
    let id = em.add_subscriber(dev);
    Ok(Bench {
        em,
        id,
        mem,
        rx,
        tx,
        host,
    })
}

fn main() {
    let settings = Settings::from_env();
    // SAFETY: geteuid only reads the process credentials.
    if unsafe { libc::geteuid() } != 0 {
        println!("net bench skipped: it needs root (a TAP in a private network namespace)");
        return;
    }
    // Before any other thread exists, so the whole process (and the TAP) is in the new,
    // empty namespace and nothing reaches the host's network.
    // SAFETY: unshare takes no pointers; CLONE_NEWNET only changes this process's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        println!("net bench skipped: unshare(CLONE_NEWNET): {e}");
        return;
    }
    let mut b = match setup() {
        Ok(b) => b,
        Err(e) => {
            println!("net bench skipped: cannot set up the device: {e}");
            return;
        }
    };
    println!(
        "virtio-net TAP benchmark{}: device on TAP {TAP} in a private network namespace, \
         {QSIZE}-entry queues, features VERSION_1 | MAC (no offloads, no MRG_RXBUF)",
        if settings.smoke { " (smoke run)" } else { "" }
    );
    println!(
        "  {:.1} s per case after {:.1} s warm-up; one thread plays the guest driver and runs \
         the device\n  TX: {QSIZE} frames posted per queue notification; frames land in the \
         namespace's stack and are dropped there\n  RX: {RX_BATCH} frames per round sent into \
         the TAP from an AF_PACKET socket in this process, delivered via an EventManager",
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "  CPU us/pkt = process user+sys time (getrusage) / frames: for RX it includes the \
         sender (the AF_PACKET sendmmsg path);\n  VMM us/pkt = thread CPU time inside the \
         device (queue_notify, the event loop and what the kernel does in its syscalls)"
    );
    println!(
        "\n{:<4} {:>6} {:>11} {:>9} {:>11} {:>11} {:>6}",
        "dir", "frame", "pps", "Mbit/s", "CPU us/pkt", "VMM us/pkt", "drops"
    );
    let mut rows = Vec::new();
    for size in FRAME_SIZES {
        rows.push(tx_case(&settings, &mut b, size));
    }
    for size in FRAME_SIZES {
        rows.push(rx_case(&settings, &mut b, size));
    }
    let mut json = Vec::new();
    for r in &rows {
        let mbits = r.pps() * r.size as f64 * 8.0 / 1e6;
        println!(
            "{:<4} {:>6} {:>11} {:>9.0} {:>11.2} {:>11.2} {:>6}",
            r.direction,
            r.size,
            thousands(r.pps()),
            mbits,
            r.per_pkt_us(r.cpu),
            r.per_pkt_us(r.vmm_cpu),
            r.drops
        );
        json.push(json!({
            "bench": "net", "direction": r.direction, "frame_bytes": r.size,
            "frames": r.frames, "secs": r.secs, "pps": r.pps(), "mbit_s": mbits,
            "cpu_us_per_pkt": r.per_pkt_us(r.cpu), "vmm_cpu_us_per_pkt": r.per_pkt_us(r.vmm_cpu),
            "drops": r.drops, "drop_detail": r.drop_detail,
        }));
    }
    println!();
    for r in &rows {
        println!("drops {} {}: {}", r.direction, r.size, r.drop_detail);
    }
    util::emit_json(&json);
}
