//! Input device tests: real guest memory, `MockSplitQueue` as the driver, no KVM.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::codes::*;
use super::config_space::select;
use super::*;
use crate::virtio::{features, ids, DeviceEnv, Interrupt, VirtioDevice};

type Mem = memory::GuestMemoryMmap;

const MEM_SIZE: usize = 8 << 20;
const DATA: u64 = 0x10_0000;
const OUTSIDE: u64 = 0x1000_0000;
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;

fn memory() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn device(kind: InputKind) -> Input {
    Input::new(&InputConfig {
        id: "in0".into(),
        kind,
    })
}

fn ev(kind: u16, code: u16, value: u32) -> VirtioInputEvent {
    VirtioInputEvent::new(kind, code, value)
}

const SYN: VirtioInputEvent = VirtioInputEvent::SYN;

/// The guest driver's side: both queues in guest memory.
struct Driver<'a> {
    mem: &'a Mem,
    queues: [MockSplitQueue<'a, Mem>; 2],
    next_desc: [u16; 2],
    next_buf: u64,
    interrupt: Arc<Interrupt>,
    /// Posted eventq buffers, in order, with their length.
    posted: Vec<(u64, u32)>,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a Mem) -> Self {
        Driver {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(0x8000), QUEUE_SIZE),
            ],
            next_desc: [0, 0],
            next_buf: DATA,
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            posted: Vec::new(),
        }
    }

    fn activate(&self, input: &mut Input) {
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|m| m.create_queue().unwrap())
            .collect();
        let env = DeviceEnv {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: features::COMMON,
            kicks: Default::default(),
        };
        input.activate(queues, env).unwrap();
    }

    fn buffer(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x10);
        addr
    }

    fn add_chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        let raw = crate::virtio::test_chains::chain(first, descs);
        self.next_desc[queue] = first + descs.len() as u16;
        self.queues[queue].add_desc_chains(&raw, first).unwrap();
    }

    /// Posts `n` 8-byte event buffers.
    fn post(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.buffer(8);
            self.add_chain(0, &[(addr, 8, WO)]);
            self.posted.push((addr, 8));
        }
    }

    /// The used ring of `queue`: (head, len) in order.
    fn used(&self, queue: usize) -> Vec<(u32, u32)> {
        let used = self.queues[queue].used();
        let idx = used.idx().load();
        (0..idx)
            .map(|i| {
                let e = used.ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// The events in the posted eventq buffers that were used with a full event.
    fn events(&self) -> Vec<VirtioInputEvent> {
        self.used(0)
            .into_iter()
            .filter(|&(_, len)| len == 8)
            .map(|(head, _)| {
                let (addr, _) = self.posted[head as usize];
                let mut b = [0u8; 8];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                VirtioInputEvent::from_bytes(b)
            })
            .collect()
    }
}

fn query(input: &mut Input, sel: u8, subsel: u8) -> Vec<u8> {
    input.write_config(0, &[sel]);
    input.write_config(1, &[subsel]);
    let mut size = [0u8];
    input.read_config(2, &mut size);
    let mut data = vec![0u8; usize::from(size[0])];
    input.read_config(8, &mut data);
    data
}

fn bits(map: &[u8]) -> Vec<u16> {
    (0..map.len() * 8)
        .filter(|&b| map[b / 8] & (1 << (b % 8)) != 0)
        .map(|b| b as u16)
        .collect()
}

#[test]
fn keyboard_config_space_answers_like_qemu() {
    let mut kbd = device(InputKind::Keyboard);
    assert_eq!(kbd.device_type(), ids::INPUT);
    assert_eq!(
        query(&mut kbd, select::ID_NAME, 0),
        b"petrel virtio keyboard"
    );
    assert_eq!(query(&mut kbd, select::ID_SERIAL, 0), b"in0");
    assert_eq!(
        query(&mut kbd, select::ID_DEVIDS, 0),
        [6, 0, 0x27, 0x06, 1, 0, 1, 0]
    );
    assert_eq!(query(&mut kbd, select::PROP_BITS, 0), b"");
    let keys = query(&mut kbd, select::EV_BITS, EV_KEY as u8);
    assert_eq!(keys.len(), 32);
    assert_eq!(bits(&keys), (1..=248).collect::<Vec<u16>>());
    assert_eq!(query(&mut kbd, select::EV_BITS, EV_REP as u8), [0]);
    assert_eq!(
        bits(&query(&mut kbd, select::EV_BITS, EV_LED as u8)),
        [0, 1, 2]
    );
    for none in [EV_SYN, EV_REL, EV_ABS, 0x04, 0x05, 0x12, 0xff] {
        assert_eq!(query(&mut kbd, select::EV_BITS, none as u8), b"", "{none}");
    }
    assert_eq!(query(&mut kbd, select::ABS_INFO, 0), b"");
}

#[test]
fn tablet_config_space_answers_like_qemu() {
    let mut tab = device(InputKind::Tablet);
    assert_eq!(query(&mut tab, select::ID_NAME, 0), b"petrel virtio tablet");
    assert_eq!(
        query(&mut tab, select::ID_DEVIDS, 0),
        [6, 0, 0x27, 0x06, 3, 0, 1, 0]
    );
    assert_eq!(
        bits(&query(&mut tab, select::EV_BITS, EV_KEY as u8)),
        [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]
    );
    assert_eq!(
        bits(&query(&mut tab, select::EV_BITS, EV_REL as u8)),
        [REL_WHEEL]
    );
    assert_eq!(
        bits(&query(&mut tab, select::EV_BITS, EV_ABS as u8)),
        [0, 1]
    );
    assert_eq!(query(&mut tab, select::EV_BITS, EV_REP as u8), b"");
    let mut abs = Vec::new();
    for v in [0u32, 32767, 0, 0, 0] {
        abs.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(query(&mut tab, select::ABS_INFO, 0), abs);
    assert_eq!(query(&mut tab, select::ABS_INFO, 1), abs);
    assert_eq!(query(&mut tab, select::ABS_INFO, 2), b"");
}

#[test]
fn unknown_selects_answer_size_zero_and_odd_accesses_are_safe() {
    let mut tab = device(InputKind::Tablet);
    for sel in [0x00, 0x04, 0x0f, 0x13, 0xff] {
        assert_eq!(query(&mut tab, sel, 0), b"", "select {sel:#x}");
    }
    // A nonzero subsel where the spec says zero.
    assert_eq!(query(&mut tab, select::ID_NAME, 1), b"");
    // select and subsel in one two-byte write, read back.
    tab.write_config(0, &[select::ID_SERIAL, 0]);
    let mut head = [0u8; 3];
    tab.read_config(0, &mut head);
    assert_eq!(head, [select::ID_SERIAL, 0, 3]);
    // Writes to read-only bytes, reads past the end or at huge offsets: ignored, zeros.
    tab.write_config(2, &[99, 99]);
    tab.write_config(u64::MAX, &[1, 2]);
    let mut far = [0xaau8; 4];
    tab.read_config(200, &mut far);
    assert_eq!(far, [0; 4]);
    tab.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn key_tap_arrives_as_two_groups_in_posted_buffers() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    d.activate(&mut kbd);
    d.post(8);
    let a = key_code("a").unwrap();
    kbd.inject(&[HostEvent::Key {
        code: a,
        action: KeyAction::Tap,
    }])
    .unwrap();
    assert_eq!(d.events(), [ev(EV_KEY, 30, 1), SYN, ev(EV_KEY, 30, 0), SYN]);
    assert_eq!(d.interrupt.irqfd().read().unwrap(), 1);
    assert_eq!(kbd.metrics().events_delivered, 4);
    assert_eq!(kbd.pending(), 0);
}

#[test]
fn tablet_events_become_abs_key_and_rel_groups() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut tab = device(InputKind::Tablet);
    d.activate(&mut tab);
    d.post(16);
    tab.inject(&[
        HostEvent::Move { x: 100, y: 32767 },
        HostEvent::Button {
            button: Button::Right,
            action: KeyAction::Press,
        },
        HostEvent::Wheel { delta: -2 },
    ])
    .unwrap();
    assert_eq!(
        d.events(),
        [
            ev(EV_ABS, ABS_X, 100),
            ev(EV_ABS, ABS_Y, 32767),
            SYN,
            ev(EV_KEY, BTN_RIGHT, 1),
            SYN,
            ev(EV_REL, REL_WHEEL, (-2i32) as u32),
            SYN,
        ]
    );
}

#[test]
fn events_wait_for_buffers_and_arrive_in_order() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    // Injected before the driver is even ready.
    let keys: Vec<HostEvent> = (1..=5)
        .map(|code| HostEvent::Key {
            code,
            action: KeyAction::Press,
        })
        .collect();
    kbd.inject(&keys).unwrap();
    d.activate(&mut kbd);
    assert_eq!(kbd.pending(), 10);
    d.post(3);
    kbd.queue_notify(0);
    assert_eq!(d.events().len(), 3);
    d.post(7);
    kbd.queue_notify(0);
    let want: Vec<_> = (1..=5).flat_map(|c| [ev(EV_KEY, c, 1), SYN]).collect();
    assert_eq!(d.events(), want);
    assert_eq!(kbd.pending(), 0);
}

#[test]
fn a_full_queue_drops_whole_groups_never_half() {
    let mut tab = device(InputKind::Tablet);
    // Moves are 3-event groups: 4096 = 3 * 1365 + 1, so the last one cannot half fit.
    let moves: Vec<HostEvent> = (0..2000).map(|i| HostEvent::Move { x: i, y: i }).collect();
    let dropped = tab.inject(&moves).unwrap();
    assert_eq!(tab.pending(), 3 * 1365);
    assert_eq!(dropped, 3 * (2000 - 1365));
    assert_eq!(tab.metrics().dropped_events, dropped);
    // One free slot: a 2-event group does not fit either.
    assert_eq!(tab.inject(&[HostEvent::Wheel { delta: 1 }]).unwrap(), 2);
    let saved = tab.save().pending;
    assert!(saved.last().unwrap().is_syn_report());
    assert!(saved.chunks(3).all(|g| g[0].code == ABS_X && g[2] == SYN));
}

#[test]
fn invalid_events_are_refused_and_nothing_is_queued() {
    let mut kbd = device(InputKind::Keyboard);
    let tap = HostEvent::Key {
        code: 30,
        action: KeyAction::Tap,
    };
    let err = kbd
        .inject(&[tap, HostEvent::Move { x: 1, y: 1 }])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a move event is for a tablet; this device is a keyboard"
    );
    for bad in [0, 249, u16::MAX] {
        let e = HostEvent::Key {
            code: bad,
            action: KeyAction::Press,
        };
        assert_eq!(kbd.inject(&[e]), Err(InvalidEvent::KeyCode(bad)));
    }
    assert_eq!(kbd.pending(), 0);
    let mut tab = device(InputKind::Tablet);
    assert!(tab.inject(&[tap]).is_err());
    assert!(tab.inject(&[HostEvent::Move { x: 32768, y: 0 }]).is_err());
    assert!(tab
        .inject(&[HostEvent::Move { x: 0, y: u32::MAX }])
        .is_err());
    assert_eq!(tab.pending(), 0);
}

#[test]
fn malformed_eventq_buffers_are_returned_empty_and_lose_no_event() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    d.activate(&mut kbd);
    let short = d.buffer(8);
    d.add_chain(0, &[(short, 4, WO)]);
    d.posted.push((short, 4));
    let ro = d.buffer(8);
    d.add_chain(0, &[(ro, 8, RO)]);
    d.posted.push((ro, 8));
    d.add_chain(0, &[(OUTSIDE, 8, WO)]);
    d.posted.push((OUTSIDE, 8));
    d.add_chain(0, &[(MEM_SIZE as u64 - 4, 8, WO)]);
    d.posted.push((MEM_SIZE as u64 - 4, 8));
    // An event split over two descriptors is fine.
    let (a, b) = (d.buffer(3), d.buffer(5));
    d.add_chain(0, &[(a, 3, WO), (b, 5, WO)]);
    d.posted.push((0, 0));
    d.posted.push((0, 0));
    d.post(1);
    kbd.inject(&[HostEvent::Key {
        code: 2,
        action: KeyAction::Press,
    }])
    .unwrap();
    let used = d.used(0);
    assert_eq!(&used[..4], &[(0, 0), (1, 0), (2, 0), (3, 0)]);
    assert_eq!(used[4], (4, 8));
    let mut bytes = [0u8; 8];
    mem.read_slice(&mut bytes[..3], GuestAddress(a)).unwrap();
    mem.read_slice(&mut bytes[3..], GuestAddress(b)).unwrap();
    assert_eq!(VirtioInputEvent::from_bytes(bytes), ev(EV_KEY, 2, 1));
    assert_eq!(used[5], (6, 8));
    assert_eq!(d.events().last(), Some(&SYN));
    assert_eq!(kbd.metrics().malformed, 4);
    assert_eq!(kbd.metrics().events_delivered, 2);
}

#[test]
fn statusq_records_leds_and_returns_every_buffer() {
    let mem = memory();
    let mut d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    d.activate(&mut kbd);
    let send = |d: &mut Driver, events: &[VirtioInputEvent]| {
        let bytes: Vec<u8> = events.iter().flat_map(|e| e.to_bytes()).collect();
        let addr = d.buffer(bytes.len() as u32);
        mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        d.add_chain(1, &[(addr, bytes.len() as u32, RO)]);
    };
    send(&mut d, &[ev(EV_LED, LED_CAPSL, 1)]);
    send(
        &mut d,
        &[ev(EV_LED, LED_NUML, 1), ev(EV_LED, LED_SCROLLL, 1), SYN],
    );
    send(&mut d, &[ev(EV_LED, LED_NUML, 0)]);
    // Unknown LEDs and other types are read and ignored.
    send(&mut d, &[ev(EV_LED, 9, 1), ev(EV_KEY, 30, 1)]);
    kbd.queue_notify(1);
    assert_eq!(kbd.leds(), 0b110);
    // Malformed: a write-only buffer, memory outside the guest, an oversized chain.
    let w = d.buffer(8);
    d.add_chain(1, &[(w, 8, WO)]);
    d.add_chain(1, &[(OUTSIDE, 8, RO)]);
    d.add_chain(1, &[(DATA, 1 << 20, RO)]);
    // A trailing partial event is ignored.
    let p = d.buffer(5);
    d.add_chain(1, &[(p, 5, RO)]);
    kbd.queue_notify(1);
    assert_eq!(d.used(1).len(), 8);
    assert!(d.used(1).iter().all(|&(_, len)| len == 0));
    assert_eq!(kbd.metrics().malformed, 3);
    assert_eq!(kbd.metrics().status_events, 7);
    assert_eq!(kbd.leds(), 0b110);
    // Unknown queue index: ignored.
    kbd.queue_notify(7);
}

#[test]
fn reset_drops_stale_events_and_leds() {
    let mut kbd = device(InputKind::Keyboard);
    kbd.inject(&[HostEvent::Key {
        code: 1,
        action: KeyAction::Tap,
    }])
    .unwrap();
    kbd.leds = 1;
    kbd.reset();
    assert_eq!(kbd.pending(), 0);
    assert_eq!(kbd.leds(), 0);
    assert_eq!(kbd.metrics().dropped_events, 4);
}

#[test]
fn state_round_trips_and_bad_states_are_refused() {
    let mut kbd = device(InputKind::Keyboard);
    kbd.write_config(0, &[select::EV_BITS, EV_LED as u8]);
    kbd.leds = 0b101;
    kbd.inject(&[HostEvent::Key {
        code: 44,
        action: KeyAction::Tap,
    }])
    .unwrap();
    let state = kbd.save();
    let json = serde_json::to_string(&state).unwrap();
    let back: InputState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let restored = Input::restore(&back).unwrap();
    assert_eq!(restored.save(), state);
    let mut size = [0u8];
    restored.read_config(2, &mut size);
    assert_eq!(size, [1]);

    let mut half = state.clone();
    half.pending.pop();
    assert!(matches!(
        Input::restore(&half),
        Err(InputError::PartialGroup { .. })
    ));
    let mut big = state.clone();
    big.pending = vec![SYN; MAX_PENDING_EVENTS + 1];
    assert!(matches!(
        Input::restore(&big),
        Err(InputError::PendingOverflow { .. })
    ));
    assert!(serde_json::from_str::<InputState>(r#"{"config":{"id":"a","kind":"mouse"}}"#).is_err());
}

#[test]
fn activation_needs_two_queues() {
    let mem = memory();
    let d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    let env = DeviceEnv {
        mem: mem.clone(),
        interrupt: d.interrupt.clone(),
        acked_features: features::COMMON,
        kicks: Default::default(),
    };
    let one = vec![d.queues[0].create_queue::<Queue>().unwrap()];
    assert!(kbd.activate(one, env).is_err());
    assert!(kbd.queues().is_empty());
}

#[test]
fn kinds_parse_and_serialize_by_name() {
    assert_eq!("keyboard".parse::<InputKind>(), Ok(InputKind::Keyboard));
    assert_eq!("tablet".parse::<InputKind>(), Ok(InputKind::Tablet));
    assert!("mouse".parse::<InputKind>().is_err());
    assert_eq!(
        serde_json::to_string(&InputKind::Tablet).unwrap(),
        "\"tablet\""
    );
    assert!(QueueT::max_size(&Queue::new(QUEUE_SIZE).unwrap()) == QUEUE_SIZE);
}

#[test]
fn a_garbage_available_index_does_not_spin_or_lose_events() {
    let mem = memory();
    let d = Driver::new(&mem);
    let mut kbd = device(InputKind::Keyboard);
    d.activate(&mut kbd);
    // 1000 entries "available" in a 64-entry ring.
    d.queues[0].avail().idx().store(1000);
    kbd.inject(&[HostEvent::Key {
        code: 1,
        action: KeyAction::Press,
    }])
    .unwrap();
    kbd.queue_notify(0);
    assert_eq!(kbd.pending(), 2);
    assert_eq!(kbd.metrics().events_delivered, 0);
}
