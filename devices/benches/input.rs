//! virtio-input: events per second and nanoseconds per event from the host's request to the
//! guest's eventq buffer, in-process (no KVM, no guest: one thread plays the driver).
//!
//! - `direct`: the driver keeps the whole eventq (64 buffers of 8 bytes) posted. Each round
//!   injects 16 key taps (64 evdev events, SYN_REPORTs included), which the device writes
//!   straight into the posted buffers; the driver reclaims them, posts them again and
//!   notifies eventq.
//! - `backlog`: 4096 events (1024 taps) are injected while no buffer is posted, so they wait
//!   in the pending queue; the driver then drains them 64 at a time, notifying eventq after
//!   each refill.
//!
//! `ns/event` is the thread's CPU time (device work, the driver's ring handling and the
//! interrupt eventfd writes) per evdev event delivered.
//!
//! `cargo bench -p devices --bench input`. `PETREL_BENCH_SECS` (3), `PETREL_BENCH_WARMUP_SECS`
//! (0.5) and `PETREL_BENCH_JSON` as for the other device benches. Without `--bench` (as
//! `cargo test --benches` runs it) it does a short smoke run.

#[allow(dead_code)]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::input::{HostEvent, Input, InputConfig, InputKind, KeyAction, QUEUE_SIZE};
use devices::virtio::{features, DeviceEnv, Interrupt, VirtioDevice};
use memory::GuestMemoryMmap;
use serde_json::json;
use util::{thousands, thread_cpu, Ring, Settings, F_WRITE};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 1 << 20;
const EVENT_RING: u64 = 0;
const STATUS_RING: u64 = 0x4000;
const BUFS: u64 = 0x8000;
/// Key taps per injection in `direct`: 4 evdev events each, filling the 64-entry ring.
const TAPS: usize = QUEUE_SIZE as usize / 4;

struct Bench {
    input: Input,
    ring: Ring,
    interrupt: Arc<Interrupt>,
}

impl Bench {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let ring = Ring::new(&mem, EVENT_RING, QUEUE_SIZE);
        let status = Ring::new(&mem, STATUS_RING, QUEUE_SIZE);
        for i in 0..QUEUE_SIZE {
            ring.set_desc(i, BUFS + 8 * u64::from(i), 8, F_WRITE, 0);
        }
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
        let mut input = Input::new(&InputConfig {
            id: "kbd".into(),
            kind: InputKind::Keyboard,
        });
        let env = DeviceEnv {
            mem,
            interrupt: interrupt.clone(),
            acked_features: features::COMMON,
            kicks: Default::default(),
        };
        input
            .activate(vec![ring.queue(), status.queue()], env)
            .expect("activate");
        Bench {
            input,
            ring,
            interrupt,
        }
    }

    /// Posts every buffer the device returned (all of them at the start); how many it had
    /// used with a whole event.
    fn repost(&mut self, first: bool) -> u64 {
        let mut delivered = 0;
        if first {
            for i in 0..QUEUE_SIZE {
                self.ring.push(i);
            }
        } else {
            while let Some((head, len)) = self.ring.pop_used() {
                assert_eq!(len, 8, "the bench posts only whole-event buffers");
                delivered += 1;
                self.ring.push(head);
            }
        }
        self.ring.publish();
        let _ = self.interrupt.irqfd().read();
        delivered
    }
}

fn taps(n: usize) -> Vec<HostEvent> {
    (0..n)
        .map(|i| HostEvent::Key {
            code: 1 + (i % 248) as u16,
            action: KeyAction::Tap,
        })
        .collect()
}

struct Row {
    case: &'static str,
    events: u64,
    wall: Duration,
    cpu: Duration,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }
    fn ns_per_event(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.events.max(1) as f64
    }
}

/// Runs `round` (which returns the events it delivered) for the warm-up, then measured.
fn measure(settings: &Settings, case: &'static str, mut round: impl FnMut() -> u64) -> Row {
    let warm = Instant::now();
    while warm.elapsed() < settings.warmup {
        round();
    }
    let (start, cpu) = (Instant::now(), thread_cpu());
    let mut events = 0;
    while start.elapsed() < settings.secs {
        events += round();
    }
    Row {
        case,
        events,
        wall: start.elapsed(),
        cpu: thread_cpu() - cpu,
    }
}

fn direct(settings: &Settings) -> Row {
    let mut b = Bench::new();
    b.repost(true);
    let batch = taps(TAPS);
    measure(settings, "direct", || {
        b.input.inject(&batch).expect("valid events");
        let n = b.repost(false);
        b.input.queue_notify(0);
        n
    })
}

fn backlog(settings: &Settings) -> Row {
    let mut b = Bench::new();
    let batch = taps(1024);
    let mut first = true;
    measure(settings, "backlog", || {
        // The previous round left every buffer used: all 4096 events wait in the queue.
        assert_eq!(
            b.input.inject(&batch).expect("valid events"),
            0,
            "none dropped"
        );
        while b.input.pending() > 0 {
            b.repost(first);
            first = false;
            b.input.queue_notify(0);
        }
        4 * batch.len() as u64
    })
}

fn main() {
    let settings = Settings::from_env();
    println!(
        "virtio-input benchmark{}: keyboard, {QUEUE_SIZE}-entry eventq, 8-byte buffers, \
         {:.1} s per case after {:.1} s warm-up, one thread",
        if settings.smoke { " (smoke run)" } else { "" },
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "\n{:<8} {:>12} {:>14} {:>9}",
        "case", "events", "events/s", "ns/event"
    );
    let rows = [direct(&settings), backlog(&settings)];
    let mut out = Vec::new();
    for r in &rows {
        println!(
            "{:<8} {:>12} {:>14} {:>9.0}",
            r.case,
            thousands(r.events as f64),
            thousands(r.per_sec()),
            r.ns_per_event()
        );
        out.push(json!({
            "bench": "input", "case": r.case, "events": r.events,
            "secs": r.wall.as_secs_f64(), "events_per_sec": r.per_sec(),
            "cpu_ns_per_event": r.ns_per_event(),
        }));
    }
    util::emit_json(&out);
}
