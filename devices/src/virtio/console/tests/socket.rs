//! The socket backend: one client at a time, input to the guest, output to the client.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::*;

fn socket_console(dir: &TempDir) -> (Console, PathBuf) {
    let path = dir.as_path().join("con.sock");
    let console = Console::new(&config(ConsoleOutput::Socket(path.clone()))).unwrap();
    (console, path)
}

fn connect(console: &mut Console, path: &Path) -> UnixStream {
    let client = UnixStream::connect(path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    console.accept_client();
    client
}

fn read_exactly(client: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    client.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn client_gets_guest_output_and_its_input_reaches_the_guest() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut client = connect(&mut console, &path);

    drv.send(&mut console, b"login: ");
    assert_eq!(read_exactly(&mut client, 7), b"login: ");

    let buf = drv.post_rx(64);
    console.queue_notify(0);
    client.write_all(b"root\n").unwrap();
    console.process_input();

    assert_eq!(drv.used(0), vec![(0, 5)]);
    assert_eq!(drv.read(buf, 5), b"root\n");
    assert!(drv.interrupted());
    let m = console.metrics();
    assert_eq!((m.tx_bytes, m.rx_bytes, m.tx_dropped_bytes), (7, 5, 0));
}

#[test]
fn input_without_receive_buffers_waits_for_the_driver() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut client = connect(&mut console, &path);

    client.write_all(b"early bytes").unwrap();
    console.process_input();
    assert!(drv.used(0).is_empty());
    assert_eq!(console.save().pending_input, b"early bytes");

    let small = drv.post_rx(5);
    let rest = drv.post_rx(64);
    console.queue_notify(0);
    assert_eq!(drv.used(0), vec![(0, 5), (1, 6)]);
    assert_eq!(drv.read(small, 5), b"early");
    assert_eq!(drv.read(rest, 6), b" bytes");
    assert!(console.save().pending_input.is_empty());
}

#[test]
fn input_past_the_pending_bound_waits_in_the_socket_and_is_not_lost() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let client = connect(&mut console, &path);
    let sent: Vec<u8> = (0..INPUT_BUFFER_SIZE * 2)
        .map(|i| (i % 251) as u8)
        .collect();
    let writer = {
        let (mut client, sent) = (client.try_clone().unwrap(), sent.clone());
        std::thread::spawn(move || client.write_all(&sent).unwrap())
    };

    wait_until("the pending buffer to fill", || {
        console.process_input();
        console.save().pending_input.len() == INPUT_BUFFER_SIZE
    });
    let mut got = Vec::new();
    let mut used = 0;
    while got.len() < sent.len() {
        let addr = drv.post_rx(16 << 10);
        wait_until("input in the posted buffer", || {
            console.queue_notify(0);
            drv.used(0).len() > used
        });
        let (_, len) = drv.used(0)[used];
        used += 1;
        got.extend(drv.read(addr, len));
    }
    writer.join().unwrap();
    assert!(got == sent, "every byte, in order");
    drop(client);
}

#[test]
fn second_client_is_told_busy_and_closed() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut first = connect(&mut console, &path);

    let mut second = connect(&mut console, &path);
    let mut told = String::new();
    second.read_to_string(&mut told).unwrap();
    assert_eq!(told, "petrel: console con0 is busy\n");

    drv.send(&mut console, b"still yours");
    assert_eq!(read_exactly(&mut first, 11), b"still yours");
}

#[test]
fn a_client_leaving_frees_the_console_for_the_next() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let first = connect(&mut console, &path);
    drop(first);
    console.process_input();

    let mut next = connect(&mut console, &path);
    drv.send(&mut console, b"hello again");
    assert_eq!(read_exactly(&mut next, 11), b"hello again");
}

#[test]
fn output_without_a_client_is_kept_for_the_next_one() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);

    drv.send(&mut console, b"said before anyone listened ");
    assert_eq!(drv.used(1), vec![(0, 0)], "the guest is not held up");
    let mut late = connect(&mut console, &path);
    drv.send(&mut console, b"now");
    assert_eq!(
        read_exactly(&mut late, 31),
        b"said before anyone listened now"
    );
    let m = console.metrics();
    assert_eq!((m.tx_bytes, m.tx_dropped_bytes), (31, 0));
}

#[test]
fn a_slow_client_gets_what_fits_and_the_rest_is_dropped() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut client = connect(&mut console, &path);
    client.set_nonblocking(true).unwrap();

    let chunk: Vec<u8> = (0..64 << 10).map(|i| (i % 253) as u8).collect();
    let mut sent = Vec::new();
    for _ in 0..24 {
        drv.send(&mut console, &chunk);
        sent.extend_from_slice(&chunk);
    }
    assert_eq!(drv.used(1).len(), 24, "every chain used at once");
    let dropped = console.metrics().tx_dropped_bytes as usize;
    assert!(dropped > 0, "1.5 MiB does not fit a socket and the buffer");

    let mut got = Vec::new();
    wait_until("the buffered output", || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        console.flush_output();
        got.len() + dropped == sent.len()
    });
    assert!(got[..] == sent[..got.len()], "what arrives is in order");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("con.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a socket file nobody listens on");

    let mut console = Console::new(&config(ConsoleOutput::Socket(path.clone()))).unwrap();
    let _client = connect(&mut console, &path);
}

#[test]
fn a_live_socket_or_a_plain_file_is_refused() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let path = dir.as_path().join("con.sock");
    let _other = UnixListener::bind(&path).unwrap();
    let err = Console::new(&config(ConsoleOutput::Socket(path.clone())))
        .err()
        .unwrap();
    assert!(matches!(err, ConsoleError::SocketInUse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "console con0: socket {} is in use by another process",
            path.display()
        )
    );

    let file = dir.as_path().join("notes.txt");
    std::fs::write(&file, b"precious").unwrap();
    let err = Console::new(&config(ConsoleOutput::Socket(file.clone())))
        .err()
        .unwrap();
    assert!(matches!(err, ConsoleError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let long = dir.as_path().join("x".repeat(120));
    let err = Console::new(&config(ConsoleOutput::Socket(long)))
        .err()
        .unwrap();
    assert!(
        matches!(err, ConsoleError::SocketPathTooLong { .. }),
        "{err}"
    );
}

#[test]
fn the_socket_is_private_and_removed_with_the_console() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let (console, path) = socket_console(&dir);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(console);
    assert!(!path.exists());
}

#[test]
fn save_and_restore_keep_pending_input() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut client = connect(&mut console, &path);
    client.write_all(b"typed before the snapshot").unwrap();
    console.process_input();

    let state = console.save();
    let json = serde_json::to_string(&state).unwrap();
    drop((console, client));
    let state: ConsoleState = serde_json::from_str(&json).unwrap();
    assert_eq!(state.pending_input, b"typed before the snapshot");
    let mut restored = Console::restore(&state).unwrap();
    drv.activate(&mut restored);
    let buf = drv.post_rx(64);
    restored.queue_notify(0);

    assert_eq!(drv.used(0), vec![(0, 25)]);
    assert_eq!(drv.read(buf, 25), b"typed before the snapshot");
    let _again = connect(&mut restored, &path);
}

#[test]
fn a_read_only_receive_buffer_is_refused_and_input_kept() {
    let dir = TempDir::new_with_prefix("/tmp/petrel-console").unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let (mut console, path) = socket_console(&dir);
    drv.activate(&mut console);
    let mut client = connect(&mut console, &path);
    client.write_all(b"keys").unwrap();
    console.process_input();

    let bad = drv.buffer(16);
    drv.add_chain(0, &[(bad, 16, RO)]);
    drv.add_chain(0, &[(OUTSIDE, 16, WO)]);
    let good = drv.post_rx(16);
    console.queue_notify(0);

    assert_eq!(drv.used(0), vec![(0, 0), (1, 0), (2, 4)]);
    assert_eq!(
        drv.read(bad, 4),
        [0; 4],
        "nothing written to a read-only buffer"
    );
    assert_eq!(drv.read(good, 4), b"keys");
    assert_eq!(console.metrics().malformed, 2);
}
