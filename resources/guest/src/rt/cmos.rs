//! The CMOS real-time clock at I/O ports 0x70 (index) / 0x71 (data).

use super::cpu;

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;
const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
/// Status A: an update is in progress (the time registers may be inconsistent).
const A_UPDATE_IN_PROGRESS: u8 = 1 << 7;
/// Status B: 24-hour mode (else 12-hour, with bit 7 of the hours register meaning PM).
const B_24_HOUR: u8 = 1 << 1;
/// Status B: binary values (else BCD).
const B_BINARY: u8 = 1 << 2;
const MAX_UPDATE_POLLS: u32 = 1000;

fn read(register: u8) -> u8 {
    // SAFETY: selecting and reading a CMOS register touches no guest memory.
    unsafe {
        cpu::outb(INDEX, register);
        cpu::inb(DATA)
    }
}

/// A wall-clock time of day.
pub struct Time {
    pub hours: u8,
    pub minutes: u8,
    pub seconds: u8,
}

/// A calendar date from the RTC.
pub struct Date {
    pub century: u8,
    pub year: u8,
    pub month: u8,
    pub day: u8,
}

const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const CENTURY: u8 = 0x32;

/// Reads the date registers, decoded per status register B.
pub fn read_date() -> Option<Date> {
    let status_b = read(STATUS_B);
    if status_b == 0xff {
        return None;
    }
    let decode = |value: u8| {
        if status_b & B_BINARY != 0 {
            value
        } else {
            (value >> 4) * 10 + (value & 0x0f)
        }
    };
    Some(Date {
        century: decode(read(CENTURY)),
        year: decode(read(YEAR)),
        month: decode(read(MONTH)),
        day: decode(read(DAY_OF_MONTH)),
    })
}

/// Whether an RTC answers (an absent one reads 0xff everywhere).
pub fn present() -> bool {
    read(STATUS_B) != 0xff
}

/// Reads the time of day, converted to binary and 24-hour form; `None` without an RTC.
pub fn read_time() -> Option<Time> {
    let status_b = read(STATUS_B);
    if status_b == 0xff {
        return None;
    }
    for _ in 0..MAX_UPDATE_POLLS {
        if read(STATUS_A) & A_UPDATE_IN_PROGRESS == 0 {
            break;
        }
    }
    let decode = |value: u8| {
        if status_b & B_BINARY != 0 {
            value
        } else {
            (value >> 4) * 10 + (value & 0x0f)
        }
    };
    let raw_hours = read(HOURS);
    let hours = if status_b & B_24_HOUR != 0 {
        decode(raw_hours)
    } else {
        let pm = raw_hours & 0x80 != 0;
        decode(raw_hours & 0x7f) % 12 + if pm { 12 } else { 0 }
    };
    Some(Time {
        hours,
        minutes: decode(read(MINUTES)),
        seconds: decode(read(SECONDS)),
    })
}
