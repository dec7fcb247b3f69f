//! The serial log (`devices::legacy::SerialLog`): nanoseconds per byte appended, and the
//! time to read the whole 64 KiB ring as `GET /serial` does (copy out, then UTF-8 text).
//!
//! Cases:
//! - `uart_byte`: a guest byte through the COM1 UART's transmit register into a discarding
//!   sink, without and with the log in between (the log's cost per guest byte);
//! - `append_<n>`: `SerialLog::append` of n-byte pieces into a full ring (wrapping);
//! - `read_full`: `read_from(start).into_text()` of a full ring of ASCII text.
//!
//! `cargo bench -p devices --bench serial_log`; `PETREL_BENCH_SECS`,
//! `PETREL_BENCH_WARMUP_SECS` and `PETREL_BENCH_JSON` as for `blk`. Without `--bench` (as
//! `cargo test --benches` runs it) it does a short smoke run.

#[allow(dead_code)]
mod util;

use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use devices::legacy::{LoggedOutput, Serial, SerialLog, SharedSerialLog, SERIAL_LOG_SIZE};
use devices::BusDevice;
use serde_json::json;
use util::Settings;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Runs `step` (which does `units` units of work) for the warm-up, then for the measured
/// time; returns units done and time taken.
fn measure(settings: &Settings, units: u64, mut step: impl FnMut()) -> (u64, Duration) {
    let warm_end = Instant::now() + settings.warmup;
    while Instant::now() < warm_end {
        step();
    }
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < settings.secs {
        for _ in 0..16 {
            step();
        }
        done += 16 * units;
    }
    (done, start.elapsed())
}

fn ns_per(done: u64, took: Duration) -> f64 {
    took.as_nanos() as f64 / done.max(1) as f64
}

fn uart(logged: bool) -> Serial {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let sink: Box<dyn io::Write + Send> = Box::new(io::sink());
    let out: Box<dyn io::Write + Send> = if logged {
        Box::new(LoggedOutput::new(sink, SharedSerialLog::default()))
    } else {
        sink
    };
    Serial::new(irq, out)
}

fn main() {
    let settings = Settings::from_env();
    let mut json = Vec::new();
    println!("{:<16} {:>14} {:>12}", "case", "ns/byte", "MB/s");
    let mut row = |case: &str, ns_byte: f64, extra: serde_json::Value| {
        println!("{case:<16} {ns_byte:>14.2} {:>12.1}", 1e3 / ns_byte);
        let mut line = json!({ "bench": "serial_log", "case": case, "ns_per_byte": ns_byte });
        if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        json.push(line);
    };

    for logged in [false, true] {
        let mut serial = uart(logged);
        let (done, took) = measure(&settings, 64, || {
            for b in 0..64u8 {
                serial.write(0, &[b'a' + b % 26]);
            }
        });
        let case = if logged {
            "uart_byte_logged"
        } else {
            "uart_byte"
        };
        row(case, ns_per(done, took), json!({}));
    }

    for piece in [1usize, 64, 4096] {
        let mut log = SerialLog::new();
        log.append(&vec![b'x'; SERIAL_LOG_SIZE]);
        let data = vec![b'y'; piece];
        let (done, took) = measure(&settings, piece as u64, || {
            black_box(&mut log).append(black_box(&data));
        });
        row(&format!("append_{piece}"), ns_per(done, took), json!({}));
    }

    let mut log = SerialLog::new();
    let line = b"COUNT 123456\n";
    while log.end() < 2 * SERIAL_LOG_SIZE as u64 {
        log.append(line);
    }
    let (done, took) = measure(&settings, SERIAL_LOG_SIZE as u64, || {
        let (from, next, text) = black_box(&log).read_from(0).into_text();
        black_box((from, next, text));
    });
    let ns_byte = ns_per(done, took);
    let us_read = ns_byte * SERIAL_LOG_SIZE as f64 / 1e3;
    row(
        "read_full",
        ns_byte,
        json!({ "us_per_read": us_read, "ring_bytes": SERIAL_LOG_SIZE }),
    );
    println!("\nfull ring read: {us_read:.1} µs per 64 KiB");
    util::emit_json(&json);
}
