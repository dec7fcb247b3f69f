//! The pty backend: a real host pty, driven from its slave side as a terminal program would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

use super::*;

fn open_slave(console: &Console) -> File {
    let path = console.pty_path().expect("a pty backend has a path");
    assert!(path.starts_with("/dev/pts"), "{}", path.display());
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

#[test]
fn pty_carries_bytes_both_ways_unchanged() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::Pty)).unwrap();
    drv.activate(&mut console);
    let mut slave = open_slave(&console);

    let buf = drv.post_rx(64);
    slave.write_all(b"ls\r\n\x03").unwrap();
    wait_until("input from the pty", || {
        console.process_input();
        !drv.used(0).is_empty()
    });
    // Raw mode: no echo, no CR/NL translation, ^C is just a byte.
    let (_, len) = drv.used(0)[0];
    let mut got = drv.read(buf, len);
    while got.len() < 5 {
        let more = drv.post_rx(64);
        wait_until("the rest of the input", || {
            console.process_input();
            drv.used(0).len() > 1
        });
        let (_, len) = *drv.used(0).last().unwrap();
        got.extend(drv.read(more, len));
    }
    assert_eq!(got, b"ls\r\n\x03");

    drv.send(&mut console, b"hello\n");
    let mut out = Vec::new();
    wait_until("output on the pty", || {
        let mut b = [0u8; 64];
        if let Ok(n) = slave.read(&mut b) {
            out.extend_from_slice(&b[..n]);
        }
        out.len() >= 6
    });
    assert_eq!(out, b"hello\n");
    assert_eq!(console.metrics().tx_dropped_bytes, 0);
}

#[test]
fn output_with_nobody_on_the_pty_does_not_fail() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::Pty)).unwrap();
    drv.activate(&mut console);
    drv.send(&mut console, b"boot messages\n");
    assert_eq!(drv.used(1), vec![(0, 0)]);
    // Whoever attaches later finds what the pty buffered.
    let mut slave = open_slave(&console);
    let mut out = [0u8; 64];
    let n = slave.read(&mut out).unwrap();
    assert_eq!(&out[..n], b"boot messages\n");
}

#[test]
fn pty_window_size_is_the_console_size() {
    let mem = memory();
    let drv = Driver::new(&mem);
    let mut console = Console::new(&config(ConsoleOutput::Pty)).unwrap();
    drv.activate(&mut console);
    assert_eq!(console.size(), (80, 25), "a new pty starts at 80x25");
    let slave = open_slave(&console);

    let size = libc::winsize {
        ws_row: 40,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from `size` for the duration of the call, and
    // `slave` is an open pty.
    let ret = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(ret, 0);
    console.process_input();

    let mut space = [0u8; 4];
    console.read_config(0, &mut space);
    assert_eq!(space, [132, 0, 40, 0]);
    assert_eq!(console.config_generation(), 1);
    assert_ne!(drv.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
}
