//! Console tests: real guest memory, `MockSplitQueue` as the driver, no KVM. Backend-specific
//! tests are in `tests/socket.rs` and `tests/pty.rs`; `tests/events.rs` puts the console on a
//! real event loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::virtio::{features, ids, DeviceEnv, Interrupt, VirtioDevice};

mod events;
mod pty;
mod socket;

type Mem = memory::GuestMemoryMmap;

const MEM_SIZE: usize = 8 << 20;
/// Where the driver's buffers start; the rings sit below.
const DATA: u64 = 0x10_0000;
/// An address past the end of guest memory.
const OUTSIDE: u64 = 0x1000_0000;
/// A read-only descriptor's flags.
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;

fn memory() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn config(output: ConsoleOutput) -> ConsoleConfig {
    ConsoleConfig {
        id: "con0".into(),
        output,
    }
}

/// Polls `done` until it holds; a test that waits longer than 10 s fails.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The guest driver's side: both queues in guest memory, buffers handed out upwards from
/// [`DATA`].
struct Driver<'a> {
    mem: &'a Mem,
    rx: MockSplitQueue<'a, Mem>,
    tx: MockSplitQueue<'a, Mem>,
    next_desc: [u16; 2],
    next_buf: u64,
    interrupt: Arc<Interrupt>,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a Mem) -> Self {
        Driver {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
            tx: MockSplitQueue::create(mem, GuestAddress(0x8000), QUEUE_SIZE),
            next_desc: [0, 0],
            next_buf: DATA,
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        }
    }

    fn queues(&self, event_idx: bool) -> Vec<Queue> {
        [&self.rx, &self.tx]
            .iter()
            .map(|mock| {
                let mut q: Queue = mock.create_queue().unwrap();
                q.set_event_idx(event_idx);
                q
            })
            .collect()
    }

    fn env(&self) -> DeviceEnv {
        DeviceEnv {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: features::COMMON | VIRTIO_CONSOLE_F_SIZE,
            kicks: Default::default(),
        }
    }

    fn activate(&self, console: &mut Console) {
        console.activate(self.queues(false), self.env()).unwrap();
    }

    fn buffer(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x100);
        assert!(self.next_buf <= MEM_SIZE as u64, "test buffers exhausted");
        addr
    }

    /// Makes one chain of `(addr, len, flags)` available on `queue`.
    fn add_chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        let raw = crate::virtio::test_chains::chain(first, descs);
        self.next_desc[queue] = first + descs.len() as u16;
        let mock = if queue == 0 { &self.rx } else { &self.tx };
        mock.add_desc_chains(&raw, first).unwrap();
    }

    /// Posts one receive buffer of `len` bytes; returns its address.
    fn post_rx(&mut self, len: u32) -> u64 {
        let addr = self.buffer(len);
        self.add_chain(0, &[(addr, len, WO)]);
        addr
    }

    /// Sends `parts` as one transmit chain (one descriptor each) and notifies.
    fn send_parts(&mut self, console: &mut Console, parts: &[&[u8]]) {
        let descs: Vec<(u64, u32, u16)> = parts
            .iter()
            .map(|p| {
                let addr = self.buffer(p.len() as u32);
                self.mem.write_slice(p, GuestAddress(addr)).unwrap();
                (addr, p.len() as u32, RO)
            })
            .collect();
        self.add_chain(1, &descs);
        console.queue_notify(1);
    }

    fn send(&mut self, console: &mut Console, bytes: &[u8]) {
        self.send_parts(console, &[bytes]);
    }

    /// The used ring of `queue`: (descriptor head, length) per entry.
    fn used(&self, queue: usize) -> Vec<(u32, u32)> {
        let mock = if queue == 0 { &self.rx } else { &self.tx };
        let count = mock.used().idx().load();
        (0..count)
            .map(|i| {
                let e = mock.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn read(&self, addr: u64, len: u32) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Whether the interrupt fired since the last call, with the used-ring bit set.
    fn interrupted(&self) -> bool {
        self.interrupt.irqfd().read().is_ok()
            && self.interrupt.status() & VIRTIO_MMIO_INT_VRING != 0
    }
}

#[test]
fn output_strings_parse_and_print_back() {
    let cases = [
        ("stdout", ConsoleOutput::Stdout),
        ("none", ConsoleOutput::None),
        ("pty", ConsoleOutput::Pty),
        (
            "file:/tmp/out.log",
            ConsoleOutput::File("/tmp/out.log".into()),
        ),
        (
            "socket:/run/con.sock",
            ConsoleOutput::Socket("/run/con.sock".into()),
        ),
    ];
    for (text, output) in cases {
        assert_eq!(text.parse::<ConsoleOutput>().unwrap(), output);
        assert_eq!(output.to_string(), text);
        let json = serde_json::to_string(&output).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<ConsoleOutput>(&json).unwrap(),
            output
        );
    }
}

#[test]
fn bad_output_strings_are_refused_naming_the_value() {
    for bad in ["", "tty", "Stdout", "file:", "socket:", "pty:/dev/pts/1"] {
        let err = bad.parse::<ConsoleOutput>().unwrap_err();
        assert_eq!(err, ConsoleOutputError(bad.to_string()));
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = serde_json::from_str::<ConsoleOutput>("\"serial\"").unwrap_err();
    assert!(err.to_string().contains("\"serial\""), "{err}");
}

#[test]
fn config_reads_from_json_and_rejects_unknown_fields() {
    let json = r#"{"id":"con0","output":"socket:/tmp/c.sock"}"#;
    let parsed: ConsoleConfig = serde_json::from_str(json).unwrap();
    assert_eq!(parsed, config(ConsoleOutput::Socket("/tmp/c.sock".into())));
    let extra = r#"{"id":"con0","output":"none","speed":9600}"#;
    assert!(serde_json::from_str::<ConsoleConfig>(extra).is_err());
}

#[test]
fn device_offers_size_and_two_queues_of_256() {
    let console = Console::new(&config(ConsoleOutput::None)).unwrap();
    assert_eq!(console.device_type(), ids::CONSOLE);
    assert_eq!(
        console.avail_features(),
        features::COMMON | VIRTIO_CONSOLE_F_SIZE
    );
    assert_eq!(console.queue_max_sizes(), &[256, 256]);
    assert!(console.queues().is_empty());
}

#[test]
fn config_space_reports_80x25_without_a_terminal() {
    let console = Console::new(&config(ConsoleOutput::None)).unwrap();
    let mut space = [0xffu8; 16];
    console.read_config(0, &mut space);
    assert_eq!(&space[0..2], &80u16.to_le_bytes());
    assert_eq!(&space[2..4], &25u16.to_le_bytes());
    assert_eq!(&space[4..8], &1u32.to_le_bytes(), "max_nr_ports");
    assert_eq!(&space[8..16], &[0; 8], "emerg_wr, then past the end");
    let mut rows = [0u8; 2];
    console.read_config(2, &mut rows);
    assert_eq!(u16::from_le_bytes(rows), 25);
    let mut far = [0xffu8; 4];
    console.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
    assert_eq!(console.config_generation(), 0);
}

#[test]
fn transmitted_bytes_reach_the_file_byte_for_byte() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("out.log");
    std::fs::write(&path, b"kept\n").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::File(path.clone()))).unwrap();
    drv.activate(&mut console);

    let all: Vec<u8> = (0..=255u8).collect();
    drv.send(&mut console, &all);
    drv.send_parts(&mut console, &[b"two ", b"descriptors", b""]);

    let mut expected = b"kept\n".to_vec();
    expected.extend_from_slice(&all);
    expected.extend_from_slice(b"two descriptors");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        expected,
        "appended, not truncated"
    );
    assert_eq!(drv.used(1), vec![(0, 0), (1, 0)]);
    assert!(drv.interrupted());
    let m = console.metrics();
    assert_eq!((m.tx_bytes, m.tx_dropped_bytes, m.malformed), (271, 0, 0));
}

#[test]
fn write_only_or_outside_memory_transmit_chains_are_refused() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("out.log");
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::File(path.clone()))).unwrap();
    drv.activate(&mut console);

    let good = drv.buffer(4);
    mem.write_slice(b"nope", GuestAddress(good)).unwrap();
    drv.add_chain(1, &[(good, 4, RO), (good, 4, WO)]);
    drv.add_chain(1, &[(good, 4, RO), (OUTSIDE, 4, RO)]);
    drv.add_chain(1, &[(MEM_SIZE as u64 - 2, 4, RO)]);
    console.queue_notify(1);

    assert_eq!(drv.used(1), vec![(0, 0), (2, 0), (4, 0)]);
    assert_eq!(console.metrics().malformed, 3);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"",
        "nothing of a refused chain"
    );
    drv.send(&mut console, b"ok");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"ok",
        "the device carries on"
    );
}

#[test]
fn a_transmit_chain_repeating_memory_past_the_limit_is_refused() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("out.log");
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::File(path.clone()))).unwrap();
    drv.activate(&mut console);

    // Eight descriptors over the same 256 KiB: 2 MiB of output from 256 KiB of memory.
    let len = 256 << 10;
    let addr = drv.buffer(16);
    drv.add_chain(1, &[(addr, len, RO); 8]);
    console.queue_notify(1);

    assert_eq!(drv.used(1), vec![(0, 0)]);
    assert_eq!(console.metrics().malformed, 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn event_idx_suppresses_the_interrupt_the_driver_does_not_want() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::None)).unwrap();
    console.activate(drv.queues(true), drv.env()).unwrap();
    // used_event sits after the avail ring's entries.
    let used_event = drv.tx.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
    drv.send(&mut console, b"a");
    assert!(!drv.interrupted(), "used_event 5 not reached");
    mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    drv.send(&mut console, b"b");
    assert!(drv.interrupted(), "used_event 1 reached");
}

#[test]
fn activation_needs_both_queues_and_reset_drops_them() {
    let mem = memory();
    let drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::None)).unwrap();
    let mut one = drv.queues(false);
    one.pop();
    assert!(matches!(
        console.activate(one, drv.env()),
        Err(crate::virtio::ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    drv.activate(&mut console);
    assert_eq!(console.queues().len(), 2);
    console.reset();
    assert!(console.queues().is_empty());
    console.queue_notify(1);
}

#[test]
fn restore_refuses_more_input_than_the_device_keeps() {
    let state = ConsoleState {
        config: config(ConsoleOutput::None),
        pending_input: vec![b'x'; INPUT_BUFFER_SIZE + 1],
    };
    let err = Console::restore(&state).err().unwrap();
    assert!(matches!(err, ConsoleError::InputOverflow { .. }), "{err}");
    assert!(err.to_string().starts_with("console con0: "), "{err}");
}

#[test]
fn open_errors_read_as_one_line() {
    let cfg = config(ConsoleOutput::File("/nonexistent-dir/out.log".into()));
    let err = Console::new(&cfg).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("con0") && text.contains("/nonexistent-dir/out.log"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}
