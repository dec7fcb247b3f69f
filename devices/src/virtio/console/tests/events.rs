//! The console on a real event loop: what it watches follows clients coming and going and
//! the pending-input bound, without spinning.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};

use super::*;

/// Stands in for the transport's subscriber: host events go to the device.
struct Subscriber(Console);

impl MutEventSubscriber for Subscriber {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.init_host_events(ops);
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.host_event(events, ops);
    }
}

type Loop = EventManager<Arc<Mutex<Subscriber>>>;

/// Runs the loop until `done` holds for the console.
fn run_until(
    em: &mut Loop,
    sub: &Mutex<Subscriber>,
    what: &str,
    mut done: impl FnMut(&mut Console) -> bool,
) {
    wait_until(what, || {
        em.run_with_timeout(10).unwrap();
        done(&mut sub.lock().unwrap().0)
    });
}

/// Whether the loop has nothing to do: no descriptor it watches is ready.
fn idle(em: &mut Loop) -> bool {
    em.run_with_timeout(20).unwrap() == 0
}

#[test]
fn the_event_loop_serves_one_client_after_another_without_spinning() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("con.sock");
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::Socket(path.clone()))).unwrap();
    drv.activate(&mut console);
    let sub = Arc::new(Mutex::new(Subscriber(console)));
    let mut em = Loop::new().unwrap();
    em.add_subscriber(sub.clone());
    assert!(idle(&mut em), "nothing to watch but the listener");

    // A client attaches and types; the loop accepts it and delivers its input.
    let buf = drv.post_rx(64);
    sub.lock().unwrap().0.queue_notify(0);
    let mut first = UnixStream::connect(&path).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    first.write_all(b"one").unwrap();
    run_until(&mut em, &sub, "the first client's input", |_| {
        !drv.used(0).is_empty()
    });
    assert_eq!(drv.read(buf, 3), b"one");
    drv.send(&mut sub.lock().unwrap().0, b"to one");
    let mut got = [0u8; 6];
    first.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to one");

    // It leaves; the next one (likely on the same descriptor number) takes its place.
    drop(first);
    assert!(!idle(&mut em), "the hang-up is seen");
    assert!(idle(&mut em), "and then nothing spins");
    let mut second = UnixStream::connect(&path).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(!idle(&mut em), "the listener is ready");
    drv.send(&mut sub.lock().unwrap().0, b"!");
    let mut bang = [0u8; 1];
    second.read_exact(&mut bang).unwrap();
    assert_eq!(&bang, b"!");

    // With no receive buffers, reading stops at the bound and the loop goes quiet.
    let flood = vec![b'z'; INPUT_BUFFER_SIZE + 1000];
    second.write_all(&flood).unwrap();
    run_until(&mut em, &sub, "the pending buffer to fill", |c| {
        c.save().pending_input.len() == INPUT_BUFFER_SIZE
    });
    assert!(idle(&mut em), "a full pending buffer stops reading");

    // The driver posts buffers: everything arrives, the last 1000 bytes included.
    let before = drv.used(0).len();
    let mut delivered = 0;
    wait_until("all of the flood", || {
        drv.post_rx(32 << 10);
        sub.lock().unwrap().0.queue_notify(0);
        em.run_with_timeout(10).unwrap();
        delivered = drv.used(0)[before..]
            .iter()
            .map(|&(_, len)| len as usize)
            .sum();
        delivered >= flood.len()
    });
    assert_eq!(delivered, flood.len());
    assert!(idle(&mut em), "nothing left to do");
}

#[test]
fn a_full_pty_is_waited_for_without_spinning() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::Pty)).unwrap();
    drv.activate(&mut console);
    let slave_path = console.pty_path().unwrap().to_path_buf();
    let sub = Arc::new(Mutex::new(Subscriber(console)));
    let mut em = Loop::new().unwrap();
    em.add_subscriber(sub.clone());
    assert!(idle(&mut em), "an unused pty is quiet");

    // More than the pty holds: the rest waits in the output buffer.
    let chunk = vec![b'o'; 16 << 10];
    for _ in 0..4 {
        drv.send(&mut sub.lock().unwrap().0, &chunk);
    }
    assert!(!sub.lock().unwrap().0.output.is_empty(), "the pty is full");
    em.run_with_timeout(10).unwrap();
    assert!(idle(&mut em), "waiting for room does not spin");

    let mut slave = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(slave_path)
        .unwrap();
    let dropped = sub.lock().unwrap().0.metrics().tx_dropped_bytes as usize;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    wait_until("the buffered output on the pty", || {
        while let Ok(n @ 1..) = slave.read(&mut buf) {
            got += n;
        }
        em.run_with_timeout(10).unwrap();
        got + dropped == 4 * chunk.len()
    });
}
