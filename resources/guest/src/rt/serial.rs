//! Output on the 16550 UART at I/O port 0x3f8, and the `println!` macro.

use core::fmt::{self, Write};

use super::cpu;

const COM1: u16 = 0x3f8;
/// Transmit holding register (write).
const THR: u16 = COM1;
/// Receive buffer register (read).
const RBR: u16 = COM1;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR: a received byte waits in RBR.
const LSR_DATA_READY: u8 = 1 << 0;
/// LSR: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Give up waiting for THR-empty after this many polls and write anyway: a missing or stuck
/// UART must not hang the guest (an absent port reads 0xff, which has the bit set).
const MAX_POLLS: u32 = 100_000;

/// The serial console. Only one CPU (the BSP) prints, so it needs no lock.
pub struct Serial;

impl Serial {
    pub fn write_byte(byte: u8) {
        for _ in 0..MAX_POLLS {
            // SAFETY: reading the UART's line status register has no side effects on memory.
            if unsafe { cpu::inb(LSR) } & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        // SAFETY: writing a byte to the UART's THR only transmits it.
        unsafe { cpu::outb(THR, byte) };
    }

    /// The next received byte, if one waits: one LSR read (a VM exit), and an RBR read only
    /// when the data-ready bit is set. Interrupts stay off; callers poll. An absent UART reads
    /// 0xff everywhere and yields nothing.
    pub fn try_read_byte() -> Option<u8> {
        // SAFETY: reading the line status register has no side effects on memory.
        let lsr = unsafe { cpu::inb(LSR) };
        if lsr == 0xff || lsr & LSR_DATA_READY == 0 {
            return None;
        }
        // SAFETY: reading RBR takes the byte out of the receive FIFO; it touches no memory.
        Some(unsafe { cpu::inb(RBR) })
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(Self::write_byte);
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments) {
    // `Serial` never fails; an error can only come from a `Display` impl.
    let _ = Serial.write_fmt(args);
}

/// Like `std::println!`, on the serial console. Lines end with a bare `\n`.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::rt::serial::print_args(format_args!("{}\n", format_args!($($arg)*)))
    };
}
