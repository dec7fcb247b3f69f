//! The MC146818 RTC and its CMOS RAM at ports 0x70 (index) and 0x71 (data).
//!
//! The clock registers read the host clock (UTC) on every access, so the update-in-progress
//! bit is never set and the guest's writes to them are ignored. Status B's data mode (BCD or
//! binary) and hour format (24 or 12 hours) are honoured. No interrupts are raised: periodic,
//! alarm and update interrupts are not emulated, so status C always reads 0. The other CMOS
//! bytes are plain NVRAM, with the memory sizes firmware and guests look for (as QEMU sets
//! them) filled in at construction.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;

/// The index port; the VMM maps the RTC here.
pub const RTC_PORT: u64 = 0x70;
/// Index at offset 0, data at offset 1.
pub const RTC_PORT_LEN: u64 = 2;
/// The RTC's interrupt line (GSI); this model never raises it.
pub const RTC_IRQ: u32 = 8;
/// Bytes of CMOS RAM, clock and status registers included.
pub const CMOS_SIZE: usize = 128;

/// A source of the current time in seconds since the Unix epoch (UTC).
pub type Clock = fn() -> i64;

const INDEX: u64 = 0;
const DATA: u64 = 1;
/// Bit 7 of the index port masks NMIs; it does not select a register.
const INDEX_MASK: u8 = 0x7f;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// 32.768 kHz time base, 1024 Hz periodic rate; bit 7 (update in progress) is read-only.
const STATUS_A_DEFAULT: u8 = 0x26;
const STATUS_A_UIP: u8 = 0x80;
const STATUS_B_24_HOUR: u8 = 1 << 1;
const STATUS_B_BINARY: u8 = 1 << 2;
/// Valid RAM and time.
const STATUS_D_VRT: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

const BASE_MEMORY: usize = 0x15;
const EXTENDED_MEMORY: usize = 0x17;
const EXTENDED_MEMORY_2: usize = 0x30;
const MEMORY_ABOVE_16M: usize = 0x34;
const MEMORY_ABOVE_4G: usize = 0x5b;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Errors from restoring the RTC.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtcError {
    /// The saved CMOS is not [`CMOS_SIZE`] bytes.
    #[error("saved CMOS holds {len} bytes, not {CMOS_SIZE}")]
    CmosSize { len: usize },
}

/// The RTC's registers, as plain data. The time itself is not saved: it is the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The selected register.
    pub index: u8,
    /// All [`CMOS_SIZE`] bytes; the clock registers' bytes are unused.
    pub cmos: Vec<u8>,
}

/// The RTC/CMOS.
#[derive(Debug)]
pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    clock: Clock,
}

/// The host's real-time clock, in seconds since the Unix epoch.
pub fn host_clock() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

impl Rtc {
    /// An RTC on the host clock, its CMOS describing `mem_size` bytes of guest RAM laid out
    /// around the 32-bit MMIO gap.
    pub fn new(mem_size: u64) -> Self {
        Self::with_clock(mem_size, host_clock)
    }

    /// An RTC reading the time from `clock`.
    pub fn with_clock(mem_size: u64, clock: Clock) -> Self {
        let mut cmos = [0; CMOS_SIZE];
        cmos[STATUS_A as usize] = STATUS_A_DEFAULT;
        cmos[STATUS_B as usize] = STATUS_B_24_HOUR;
        cmos[STATUS_D as usize] = STATUS_D_VRT;

        let low = mem_size.min(memory::MMIO32_START);
        let high = mem_size - low;
        let put = |cmos: &mut [u8; CMOS_SIZE], at: usize, bytes: usize, value: u64| {
            let le = value.to_le_bytes();
            cmos[at..at + bytes].copy_from_slice(&le[..bytes]);
        };
        put(&mut cmos, BASE_MEMORY, 2, (low / KIB).min(640));
        let extended = (low.saturating_sub(MIB) / KIB).min(0xffff);
        put(&mut cmos, EXTENDED_MEMORY, 2, extended);
        put(&mut cmos, EXTENDED_MEMORY_2, 2, extended);
        let above_16m = (low.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff);
        put(&mut cmos, MEMORY_ABOVE_16M, 2, above_16m);
        put(
            &mut cmos,
            MEMORY_ABOVE_4G,
            3,
            (high / (64 * KIB)).min(0xff_ffff),
        );

        Self {
            index: 0,
            cmos,
            clock,
        }
    }

    /// An RTC rebuilt from `state`, reading the time from `clock`.
    pub fn restore(state: &RtcState, clock: Clock) -> Result<Self, RtcError> {
        let cmos = state
            .cmos
            .as_slice()
            .try_into()
            .map_err(|_| RtcError::CmosSize {
                len: state.cmos.len(),
            })?;
        Ok(Self {
            index: state.index & INDEX_MASK,
            cmos,
            clock,
        })
    }

    /// The RTC's state.
    pub fn save(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmos: self.cmos.to_vec(),
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        match reg {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.clock_register(reg)
            }
            // Reading status C acknowledges the interrupt flags.
            STATUS_C => std::mem::take(&mut self.cmos[STATUS_C as usize]),
            _ => self.cmos[usize::from(reg & INDEX_MASK)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                tracing::debug!(reg, value, "guest set the RTC; it follows the host clock")
            }
            STATUS_A => self.cmos[STATUS_A as usize] = value & !STATUS_A_UIP,
            STATUS_C | STATUS_D => {}
            _ => self.cmos[usize::from(reg & INDEX_MASK)] = value,
        }
    }

    fn clock_register(&self, reg: u8) -> u8 {
        let t = CivilTime::from_unix((self.clock)());
        let mode = self.cmos[STATUS_B as usize];
        let encode = |v: u8| {
            if mode & STATUS_B_BINARY != 0 {
                v
            } else {
                (v / 10) << 4 | (v % 10)
            }
        };
        match reg {
            SECONDS => encode(t.second),
            MINUTES => encode(t.minute),
            HOURS if mode & STATUS_B_24_HOUR != 0 => encode(t.hour),
            HOURS => {
                let pm = if t.hour >= 12 { HOUR_PM } else { 0 };
                encode(match t.hour % 12 {
                    0 => 12,
                    h => h,
                }) | pm
            }
            DAY_OF_WEEK => encode(t.weekday),
            DAY_OF_MONTH => encode(t.day),
            MONTH => encode(t.month),
            YEAR => encode(t.year.rem_euclid(100) as u8),
            _ => encode(t.year.div_euclid(100).rem_euclid(100) as u8),
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, offset) {
            ([byte], DATA) => *byte = self.read_register(self.index),
            (other, _) => other.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, offset) {
            (&[value], INDEX) => self.index = value & INDEX_MASK,
            (&[value], DATA) => self.write_register(self.index, value),
            _ => {}
        }
    }
}

/// A UTC date and time as the RTC shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    /// 1-12.
    month: u8,
    /// 1-31.
    day: u8,
    /// 1 = Sunday ... 7 = Saturday.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    /// The proleptic Gregorian date of `secs` since the Unix epoch (Howard Hinnant's
    /// `civil_from_days`).
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // 1970-01-01 was a Thursday: weekday 5 when Sunday is 1.
        let weekday = ((days + 4).rem_euclid(7) + 1) as u8;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            weekday,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

#[cfg(test)]
mod tests;
