//! The RTC/CMOS, read and written as a guest and its firmware would.

use super::*;

const GIB: u64 = 1 << 30;

/// 2026-11-22 13:05:09 UTC, a Sunday.
fn sunday_afternoon() -> i64 {
    1_795_352_709
}

/// 2026-11-22 00:30:00 UTC.
fn half_past_midnight() -> i64 {
    1_795_305_600 + 30 * 60
}

/// 2026-11-22 12:00:00 UTC.
fn noon() -> i64 {
    1_795_305_600 + 12 * 3600
}

fn rtc(clock: Clock) -> Rtc {
    Rtc::with_clock(GIB, clock)
}

fn read(rtc: &mut Rtc, reg: u8) -> u8 {
    rtc.write(INDEX, &[reg]);
    let mut b = [0];
    rtc.read(DATA, &mut b);
    b[0]
}

fn write(rtc: &mut Rtc, reg: u8, value: u8) {
    rtc.write(INDEX, &[reg]);
    rtc.write(DATA, &[value]);
}

fn civil(secs: i64) -> (i64, u8, u8, u8, u8, u8, u8) {
    let t = CivilTime::from_unix(secs);
    (
        t.year, t.month, t.day, t.weekday, t.hour, t.minute, t.second,
    )
}

#[test]
fn unix_time_converts_to_gregorian_date_and_weekday() {
    assert_eq!(civil(0), (1970, 1, 1, 5, 0, 0, 0));
    assert_eq!(civil(-1), (1969, 12, 31, 4, 23, 59, 59));
    assert_eq!(civil(951_868_799), (2000, 2, 29, 3, 23, 59, 59));
    assert_eq!(civil(-2_203_891_200), (1900, 3, 1, 5, 0, 0, 0));
    assert_eq!(civil(4_133_894_400), (2100, 12, 31, 6, 0, 0, 0));
    assert_eq!(civil(sunday_afternoon()), (2026, 11, 22, 1, 13, 5, 9));
    // Any host clock converts without panicking.
    CivilTime::from_unix(i64::MIN);
    CivilTime::from_unix(i64::MAX);
}

#[test]
fn clock_reads_in_bcd_24_hour_by_default() {
    let mut rtc = rtc(sunday_afternoon);
    let regs = [
        SECONDS,
        MINUTES,
        HOURS,
        DAY_OF_WEEK,
        DAY_OF_MONTH,
        MONTH,
        YEAR,
        CENTURY,
    ];
    let values = regs.map(|r| read(&mut rtc, r));
    assert_eq!(values, [0x09, 0x05, 0x13, 0x01, 0x22, 0x11, 0x26, 0x20]);
}

#[test]
fn clock_reads_in_binary_when_status_b_asks() {
    let mut rtc = rtc(sunday_afternoon);
    write(&mut rtc, STATUS_B, STATUS_B_24_HOUR | STATUS_B_BINARY);
    let regs = [SECONDS, MINUTES, HOURS, DAY_OF_MONTH, MONTH, YEAR, CENTURY];
    let values = regs.map(|r| read(&mut rtc, r));
    assert_eq!(values, [9, 5, 13, 22, 11, 26, 20]);
}

#[test]
fn twelve_hour_mode_sets_the_pm_bit_and_shows_12_for_the_zero_hour() {
    let mut pm = rtc(sunday_afternoon);
    write(&mut pm, STATUS_B, 0);
    assert_eq!(read(&mut pm, HOURS), 0x81);
    write(&mut pm, STATUS_B, STATUS_B_BINARY);
    assert_eq!(read(&mut pm, HOURS), 0x81);

    let mut midnight = rtc(half_past_midnight);
    write(&mut midnight, STATUS_B, 0);
    assert_eq!(read(&mut midnight, HOURS), 0x12);
    let mut noon = rtc(noon);
    write(&mut noon, STATUS_B, 0);
    assert_eq!(read(&mut noon, HOURS), 0x92);
}

#[test]
fn nmi_mask_bit_of_the_index_is_ignored() {
    let mut rtc = rtc(sunday_afternoon);
    assert_eq!(read(&mut rtc, 0x80 | HOURS), 0x13);
}

#[test]
fn status_registers_report_a_valid_idle_clock() {
    let mut rtc = rtc(sunday_afternoon);
    assert_eq!(read(&mut rtc, STATUS_A), STATUS_A_DEFAULT);
    assert_eq!(read(&mut rtc, STATUS_B), STATUS_B_24_HOUR);
    assert_eq!(read(&mut rtc, STATUS_C), 0);
    assert_eq!(read(&mut rtc, STATUS_D), STATUS_D_VRT);
    write(&mut rtc, STATUS_A, 0xff);
    assert_eq!(
        read(&mut rtc, STATUS_A),
        0x7f,
        "update-in-progress is never set"
    );
    write(&mut rtc, STATUS_D, 0);
    assert_eq!(read(&mut rtc, STATUS_D), STATUS_D_VRT);
}

#[test]
fn alarms_and_nvram_hold_what_was_written_but_the_clock_follows_the_host() {
    let mut rtc = rtc(sunday_afternoon);
    for reg in [0x01, 0x03, 0x05, 0x0e, 0x40, 0x7f] {
        write(&mut rtc, reg, 0xa5);
        assert_eq!(read(&mut rtc, reg), 0xa5, "register {reg:#x}");
    }
    write(&mut rtc, SECONDS, 0x59);
    write(&mut rtc, CENTURY, 0x19);
    assert_eq!(read(&mut rtc, SECONDS), 0x09);
    assert_eq!(read(&mut rtc, CENTURY), 0x20);
}

#[test]
fn cmos_describes_small_guest_memory() {
    let mut rtc = Rtc::with_clock(16 << 20, sunday_afternoon);
    let word = |rtc: &mut Rtc, at: u8| u16::from_le_bytes([read(rtc, at), read(rtc, at + 1)]);
    assert_eq!(word(&mut rtc, 0x15), 640);
    assert_eq!(word(&mut rtc, 0x17), 15 * 1024);
    assert_eq!(word(&mut rtc, 0x30), 15 * 1024);
    assert_eq!(word(&mut rtc, 0x34), 0);
    assert_eq!([0x5b, 0x5c, 0x5d].map(|r| read(&mut rtc, r)), [0, 0, 0]);
}

#[test]
fn cmos_describes_memory_split_around_the_32_bit_gap() {
    let mut rtc = Rtc::with_clock(8 * GIB, sunday_afternoon);
    let word = |rtc: &mut Rtc, at: u8| u16::from_le_bytes([read(rtc, at), read(rtc, at + 1)]);
    assert_eq!(word(&mut rtc, 0x17), 0xffff, "extended memory is capped");
    assert_eq!(word(&mut rtc, 0x30), 0xffff);
    // (3 GiB - 16 MiB) and 5 GiB, in 64 KiB units.
    assert_eq!(word(&mut rtc, 0x34), 0xbf00);
    assert_eq!(
        [0x5b, 0x5c, 0x5d].map(|r| read(&mut rtc, r)),
        [0x00, 0x40, 0x01]
    );

    let mut big = Rtc::with_clock(1 << 40, sunday_afternoon);
    assert_eq!(
        [0x5b, 0x5c, 0x5d].map(|r| read(&mut big, r)),
        [0x00, 0x40, 0xff]
    );
}

#[test]
fn index_port_and_wide_accesses_read_all_ones_and_change_nothing() {
    let mut rtc = rtc(sunday_afternoon);
    write(&mut rtc, 0x40, 0x11);
    let mut b = [0];
    rtc.read(INDEX, &mut b);
    assert_eq!(b, [0xff]);
    let mut wide = [0; 2];
    rtc.read(DATA, &mut wide);
    assert_eq!(wide, [0xff; 2]);
    rtc.write(DATA, &[0x22, 0x22]);
    rtc.write(INDEX, &[0x00, 0x00]);
    rtc.read(DATA, &mut b);
    assert_eq!(b, [0x11]);
}

#[test]
fn restore_keeps_nvram_and_index_and_refuses_a_short_cmos() {
    let mut rtc = rtc(sunday_afternoon);
    write(&mut rtc, 0x40, 0x77);
    let state = rtc.save();
    let mut restored = Rtc::restore(&state, sunday_afternoon).unwrap();
    assert_eq!(restored.save(), state);
    let mut b = [0];
    restored.read(DATA, &mut b);
    assert_eq!(b, [0x77]);

    let short = RtcState {
        index: 0,
        cmos: vec![0; 64],
    };
    assert_eq!(
        Rtc::restore(&short, host_clock).err(),
        Some(RtcError::CmosSize { len: 64 })
    );
}

#[test]
fn host_clock_is_after_2020() {
    assert!(host_clock() > 1_577_836_800);
}

#[test]
fn no_guest_access_panics() {
    let mut rtc = Rtc::new(GIB);
    for offset in [0, 1, 2, u64::MAX] {
        for len in 0..=4 {
            for value in 0..=255u8 {
                rtc.write(offset, &vec![value; len]);
                rtc.read(offset, &mut vec![0; len]);
                rtc.write(DATA, &[value]);
            }
        }
    }
}
