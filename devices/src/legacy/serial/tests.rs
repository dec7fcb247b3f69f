//! The serial port, driven as a guest and a host would.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;

const DATA: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const MCR: u64 = 4;
const LSR: u64 = 5;
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const LSR_DATA_READY: u8 = 0x01;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serial() -> (Serial, Captured) {
    let out = Captured::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    (Serial::new(irq, Box::new(out.clone())), out)
}

fn read(s: &mut Serial, offset: u64) -> u8 {
    let mut b = [0];
    s.read(offset, &mut b);
    b[0]
}

#[test]
fn guest_bytes_reach_the_sink_and_raise_thre_interrupt() {
    let (mut s, out) = serial();
    s.write(IER, &[IER_THRE]);
    for byte in *b"hi" {
        read(&mut s, IIR); // the guest acknowledges the previous interrupt
        s.write(DATA, &[byte]);
    }
    assert_eq!(&*out.0.lock().unwrap(), b"hi");
    // One interrupt for enabling THRE with an empty THR, one per byte.
    assert_eq!(s.interrupt().read().unwrap(), 3);
}

#[test]
fn host_input_fills_the_fifo_and_the_rest_is_left_to_the_caller() {
    let (mut s, _) = serial();
    s.write(IER, &[IER_RDA]);
    let input: Vec<u8> = (0..100).collect();
    assert_eq!(s.enqueue_input(&input), SERIAL_FIFO_SIZE);
    assert_eq!(s.fifo_capacity_left(), 0);
    assert_eq!(s.enqueue_input(&input[64..]), 0);
    assert_eq!(s.interrupt().read().unwrap(), 1);
    for expected in 0..64u8 {
        assert_eq!(read(&mut s, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read(&mut s, DATA), expected);
    }
    assert_eq!(read(&mut s, LSR) & LSR_DATA_READY, 0);
    assert_eq!(s.fifo_capacity_left(), SERIAL_FIFO_SIZE);
}

#[test]
fn loopback_mode_accepts_no_host_input() {
    let (mut s, _) = serial();
    s.write(MCR, &[0x10]);
    assert_eq!(s.enqueue_input(b"abc"), 0);
}

#[test]
fn accesses_wider_than_a_byte_read_all_ones_and_write_nothing() {
    let (mut s, out) = serial();
    let mut wide = [0u8; 2];
    s.read(LSR, &mut wide);
    assert_eq!(wide, [0xff, 0xff]);
    s.write(DATA, b"ab");
    assert!(out.0.lock().unwrap().is_empty());
}

#[test]
fn failing_sink_loses_bytes_but_the_uart_keeps_working() {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut s = Serial::new(irq, Box::new(Broken));
    s.write(DATA, b"x");
    s.write(DATA, b"y");
    assert_eq!(s.output_errors(), 2);
    s.write(7, &[0x5a]);
    assert_eq!(read(&mut s, 7), 0x5a);
}

#[test]
fn file_output_is_created_then_appended_to() {
    let path = std::env::temp_dir().join(format!("petrel-serial-{}", std::process::id()));
    std::fs::write(&path, b"old:").unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut s = Serial::with_output(irq, &SerialOutput::File(path.clone())).unwrap();
    for byte in *b"new" {
        s.write(DATA, &[byte]);
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old:new");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unopenable_output_file_is_an_error_naming_it() {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let path = PathBuf::from("/nonexistent-dir/serial.log");
    let err = Serial::with_output(irq, &SerialOutput::File(path))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent-dir/serial.log"));
}

#[test]
fn restore_rebuilds_registers_and_pending_input() {
    let (mut s, _) = serial();
    s.write(7, &[0x42]);
    s.enqueue_input(b"ab");
    let state = s.save();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut r = Serial::restore(&state, irq, Box::new(io::sink())).unwrap();
    assert_eq!(r.save(), state);
    assert_eq!(read(&mut r, 7), 0x42);
    assert_eq!(read(&mut r, DATA), b'a');
}

#[test]
fn restore_refuses_more_input_than_the_fifo_holds() {
    let (s, _) = serial();
    let mut state = s.save();
    state.in_buffer = vec![0; SERIAL_FIFO_SIZE + 1];
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        Serial::restore(&state, irq, Box::new(io::sink())),
        Err(SerialError::InputOverflow { len: 65 })
    ));
}

#[test]
fn no_guest_access_panics() {
    let (mut s, _) = serial();
    for offset in (0..16).chain([u64::MAX, 0x100]) {
        for len in 0..=8 {
            for value in [0x00, 0x01, 0x10, 0x80, 0xff] {
                s.write(offset, &vec![value; len]);
                s.read(offset, &mut vec![0; len]);
            }
        }
    }
}
