//! Live migration costs with the real `petrel` binary under KVM. Each run starts a source
//! (`petrel run --api-sock ... --kernel <test guest> --cmdline petrel.test=... --memory M`)
//! and a destination (`petrel run --api-sock ... --memory M`, no kernel), sends
//! `PUT /migration/receive` to the destination and `PUT /migration/send` to the source, and
//! polls the destination's `GET /migration` every millisecond until `completed`. Cases:
//!
//! - an idle guest (the `idle` scenario: it prints `IDLE` and halts) of 256 MiB and 1 GiB over
//!   a Unix socket, and of 256 MiB over TCP on loopback (`tcp:127.0.0.1:0`, the port the
//!   destination bound read back from its `GET /migration`), and handed over on one host
//!   (`--shared-memory` and `"local": true`) at 256 MiB and 1 GiB;
//! - a guest dirtying memory at a steady rate (the `snapshot` scenario with steady dirtying on)
//!   of 256 MiB, with `downtime_ms` 50, over the unlimited Unix socket and with `max_bandwidth`
//!   64 MiB/s (where it takes several rounds to converge).
//!
//! Per case: median and p90 of the destination's `elapsed_ms` (the whole migration, from the
//! source's `PUT /migration/send` to the VM running on the destination) and `downtime_ms`
//! (the source's final pause until the destination's vCPUs run), the rounds and pages the
//! destination reports, and as a cross-check the client's wall time from just before
//! `PUT /migration/send` to the first `completed` seen on the destination (it includes the
//! polling granularity, 1 ms, and the HTTP round trips).
//!
//! With `PETREL_LOG=vmm=debug` both petrels log the final phase on their stderr, and the
//! bench prints where the downtime went as well: the source's pause, capture of the machine
//! state, last dirty pages, the state's transfer (encoding, disk lock hand-over and the wire,
//! from the two logs' timestamps), the destination's build, and the start of its vCPUs until
//! it answers `Running`.
//!
//! `cargo bench -p tests --bench migration`. `PETREL_BENCH_RUNS` (default 10) runs per case;
//! `PETREL_BENCH_JSON` as for the other benches. Without `--bench` (as `cargo test
//! --benches` runs it) it does a short smoke run (2 runs, 256 MiB over a Unix socket only).
//! Needs KVM.

#[path = "../../benches/report.rs"]
mod report;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tests::api_vm::ApiVm;
use tests::snapshot_guest::SnapshotGuest;

/// How long one migration gets.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the source gets to exit once its migration completed.
const EXIT: Duration = Duration::from_secs(60);
/// The polling interval on the destination's `GET /migration`.
const POLL: Duration = Duration::from_millis(1);
/// The final pause asked for of the dirtying guest.
const DIRTY_DOWNTIME_MS: u64 = 50;

/// The guest a case migrates.
#[derive(Clone, Copy)]
enum Guest {
    /// The `idle` scenario: prints `IDLE` and halts.
    Idle,
    /// The `snapshot` scenario with steady dirtying on.
    Dirtying,
}

/// How the two petrels talk.
#[derive(Clone, Copy)]
enum Transport {
    Unix,
    Tcp,
    /// A Unix socket, the source with `--shared-memory`, and `"local": true`: the memory is
    /// handed over, not copied.
    Local,
}

struct Case {
    name: &'static str,
    guest: Guest,
    memory: &'static str,
    transport: Transport,
    /// `downtime_ms` in `PUT /migration/send`, if given.
    downtime_ms: Option<u64>,
    /// `max_bandwidth` in `PUT /migration/send`, if given.
    max_bandwidth: Option<u64>,
    /// The target, printed beside the figures.
    target: &'static str,
}

/// One migration's figures.
struct Run {
    total_ms: f64,
    downtime_ms: f64,
    client_ms: f64,
    rounds: u64,
    pages: u64,
    phases: Option<Phases>,
}

/// Where the final pause went, in ms, from the two petrels' debug logs.
#[derive(Clone, Copy, Default)]
struct Phases {
    /// Until the source's vCPUs were paused.
    pause: f64,
    /// Capturing the machine's state.
    capture: f64,
    /// Sending the last dirty pages (and encoding the state, handing the disks over).
    last_pages: f64,
    /// From the source's "last pages sent" to the state arriving on the destination.
    transfer: f64,
    /// Building the machine on the destination.
    build: f64,
    /// From the machine built to the destination answering `Running` (vCPUs started).
    start: f64,
    /// The sum: the pause as the two logs' clocks see it.
    whole: f64,
    /// Pages in the last round, and the state's size in bytes.
    last_round_pages: f64,
    state_bytes: f64,
}

impl Phases {
    const NAMES: [&'static str; 9] = [
        "pause",
        "capture",
        "last pages",
        "state transfer",
        "build",
        "vCPUs start",
        "whole (logs)",
        "last round pages",
        "state bytes",
    ];

    fn values(&self) -> [f64; 9] {
        [
            self.pause,
            self.capture,
            self.last_pages,
            self.transfer,
            self.build,
            self.start,
            self.whole,
            self.last_round_pages,
            self.state_bytes,
        ]
    }
}

/// A debug log line's wall-clock time and its `ms=` field, if it holds `message`.
fn log_event(log: &str, message: &str) -> Option<(SystemTime, f64)> {
    let line = log.lines().find(|l| l.contains(message))?;
    let stamp = line.split_whitespace().next()?;
    Some((parse_rfc3339(stamp)?, log_field(line, "ms")?))
}

/// The numeric field `name=` of a log line.
fn log_field(line: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))?
        .parse()
        .ok()
}

/// `2026-12-03T07:34:59.123456Z` as a `SystemTime` (UTC only, as petrel's log writes it).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = (days * 86_400 + h * 3_600 + min * 60) as f64 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// The final phase from the source's and the destination's stderr, when they logged it
/// (`PETREL_LOG=vmm=debug`); `downtime` is the destination's report (the source's pause
/// until the state was sent, plus the destination's time from the state to `Running`).
fn phases(source: &str, destination: &str, downtime: f64) -> Option<Phases> {
    let (paused_at, paused) = log_event(source, "migration: paused")?;
    let (_, captured) = log_event(source, "migration: captured")?;
    let (sent_at, sent) = log_event(source, "migration: last pages sent")?;
    let sent_line = source
        .lines()
        .find(|l| l.contains("migration: last pages sent"))?;
    let (built_at, built) = log_event(destination, "migration: machine built")?;
    let stopped = paused_at - Duration::from_secs_f64(paused / 1e3);
    let arrived = built_at - Duration::from_secs_f64(built / 1e3);
    let transfer = ms_between(sent_at, arrived);
    // The destination counts from the state's arrival; the source's part of the reported
    // downtime ends before the state is encoded, at about `sent`.
    let here = (downtime - sent).max(built);
    Some(Phases {
        pause: paused,
        capture: captured - paused,
        last_pages: sent - captured,
        transfer,
        build: built,
        start: here - built,
        whole: ms_between(stopped, arrived) + here,
        last_round_pages: log_field(sent_line, "pages")?,
        state_bytes: log_field(sent_line, "state_bytes")?,
    })
}

/// Starts the case's source and waits until its guest is where the case measures it.
fn source(case: &Case) -> ApiVm {
    match case.guest {
        Guest::Idle => {
            let mut args = vec![
                "--kernel",
                tests::test_guest().to_str().expect("UTF-8 path"),
                "--cmdline",
                "petrel.test=idle",
                "--memory",
                case.memory,
            ];
            if matches!(case.transport, Transport::Local) {
                args.push("--shared-memory");
            }
            let vm = ApiVm::spawn(&args);
            vm.wait_serial(Duration::from_secs(60), |l| (l == "IDLE").then_some(()));
            vm
        }
        Guest::Dirtying => {
            let (vm, mut guest) = SnapshotGuest::boot(case.memory, &[]);
            guest.dirty(&vm, true);
            guest.wait_counts(&vm, 2);
            vm
        }
    }
}

/// One migration of `case`: fresh source and destination.
fn run(case: &Case) -> Run {
    let mut src = source(case);
    let dst = ApiVm::spawn(&["--memory", case.memory]);
    let url = match case.transport {
        Transport::Unix | Transport::Local => {
            format!("unix:{}", dst.path("migrate.sock").display())
        }
        Transport::Tcp => "tcp:127.0.0.1:0".to_string(),
    };
    dst.migrate_receive(&url);
    let info = dst.migration();
    assert_eq!(info["state"], "listening", "{info}");
    let url = info["url"].as_str().expect("the bound URL").to_string();
    let mut body = json!({ "url": url });
    if let Some(ms) = case.downtime_ms {
        body["downtime_ms"] = json!(ms);
    }
    if let Some(bw) = case.max_bandwidth {
        body["max_bandwidth"] = json!(bw);
    }
    if matches!(case.transport, Transport::Local) {
        body["local"] = json!(true);
    }

    let start = Instant::now();
    src.migrate_send(body);
    let client_ms = loop {
        let info = dst.migration();
        match info["state"].as_str() {
            Some("completed") => {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                if !info["downtime_ms"].is_number() {
                    eprintln!("note: the destination showed completed before its figures: {info}");
                }
                break ms;
            }
            Some("failed") => panic!("{}: the migration failed: {info}", case.name),
            _ => {}
        }
        assert!(
            start.elapsed() < MIGRATION_TIMEOUT,
            "{}: the migration did not complete within {MIGRATION_TIMEOUT:?}: {info}",
            case.name
        );
        std::thread::sleep(POLL);
    };
    // The destination's report is complete once it holds the downtime.
    let info = final_report(&dst);
    let out = src.finish(EXIT);
    assert_eq!(out.status.code(), Some(0), "the source: {out}");
    assert_eq!(dst.state(), "Running");
    let downtime_ms = info["downtime_ms"].as_f64().expect("downtime_ms");
    dst.signal(libc::SIGKILL);
    let mut dst = dst;
    let dst_out = dst.finish(EXIT);
    Run {
        total_ms: info["elapsed_ms"].as_f64().expect("elapsed_ms"),
        downtime_ms,
        client_ms,
        rounds: info["round"].as_u64().expect("round") + 1,
        pages: info["pages"].as_u64().expect("pages"),
        phases: phases(&out.stderr, &dst_out.stderr, downtime_ms),
    }
}

/// The destination's `GET /migration` once it holds `downtime_ms` (it may show `completed`
/// a moment before).
fn final_report(dst: &ApiVm) -> Value {
    let start = Instant::now();
    loop {
        let info = dst.migration();
        if info["downtime_ms"].is_number() {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "completed without downtime_ms: {info}"
        );
        std::thread::sleep(POLL);
    }
}

/// Median and 90th percentile.
fn stats(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

fn report(case: &Case, runs: &[Run], json_lines: &mut Vec<Value>) {
    let (total, total_p90) = stats(runs.iter().map(|r| r.total_ms).collect());
    let (down, down_p90) = stats(runs.iter().map(|r| r.downtime_ms).collect());
    let (client, client_p90) = stats(runs.iter().map(|r| r.client_ms).collect());
    let rounds = median_u64(runs.iter().map(|r| r.rounds));
    let pages = median_u64(runs.iter().map(|r| r.pages));
    let pages_max = runs.iter().map(|r| r.pages).max().unwrap_or(0);
    let rounds_max = runs.iter().map(|r| r.rounds).max().unwrap_or(0);
    println!(
        "{:<30} {:>5} {total:>8.2} {total_p90:>8.2} {down:>8.2} {down_p90:>8.2} {client:>8.2} \
         {client_p90:>8.2} {rounds:>6} {pages:>8} {pages_max:>8} {:>4}  {}",
        case.name,
        case.memory,
        runs.len(),
        case.target
    );
    let mut line = json!({
        "bench": "migration", "case": case.name, "memory": case.memory, "runs": runs.len(),
        "total_median_ms": total, "total_p90_ms": total_p90,
        "downtime_median_ms": down, "downtime_p90_ms": down_p90,
        "client_median_ms": client, "client_p90_ms": client_p90,
        "rounds": rounds, "rounds_max": rounds_max, "pages": pages, "pages_max": pages_max,
        "target": case.target,
    });
    let phases: Vec<Phases> = runs.iter().filter_map(|r| r.phases).collect();
    if !phases.is_empty() {
        let mut medians = serde_json::Map::new();
        let mut text = String::new();
        for (i, name) in Phases::NAMES.iter().enumerate() {
            let (median, _) = stats(phases.iter().map(|p| p.values()[i]).collect());
            medians.insert(name.to_string(), json!(median));
            let digits = if median.fract() == 0.0 { 0 } else { 2 };
            text.push_str(&format!("{name} {median:.digits$}, "));
        }
        println!(
            "    downtime by phase, median ms of {} runs: {}",
            phases.len(),
            text.trim_end_matches(", ")
        );
        line["downtime_phases_median_ms"] = Value::Object(medians);
    }
    json_lines.push(line);
}

fn main() {
    let Some((smoke, runs)) = tests::bench_plan(10) else {
        return;
    };
    let idle = |name, memory, transport, target| Case {
        name,
        guest: Guest::Idle,
        memory,
        transport,
        downtime_ms: None,
        max_bandwidth: None,
        target,
    };
    let mut cases = vec![idle(
        "idle, unix",
        "256M",
        Transport::Unix,
        "<= 11 ms total, <= 1 ms downtime (QEMU 21-23 ms, 1-3 ms)",
    )];
    if !smoke {
        cases.push(idle(
            "idle, unix",
            "1G",
            Transport::Unix,
            "total grows with touched memory, not size (QEMU 63 ms, 1 ms)",
        ));
        cases.push(idle(
            "idle, tcp loopback",
            "256M",
            Transport::Tcp,
            "<= 11 ms total, <= 1 ms downtime",
        ));
        for memory in ["256M", "1G"] {
            cases.push(idle(
                "idle, local (memfd)",
                memory,
                Transport::Local,
                "no page copied: the same whatever the size",
            ));
        }
        cases.push(Case {
            name: "dirtying (downtime 50), unix",
            guest: Guest::Dirtying,
            memory: "256M",
            transport: Transport::Unix,
            downtime_ms: Some(DIRTY_DOWNTIME_MS),
            max_bandwidth: None,
            target: "downtime <= 50 ms",
        });
        // A link slow enough for the guest's writes to matter: the rounds shrink until the
        // rest fits the pause.
        cases.push(Case {
            name: "dirtying, 64 MiB/s link",
            guest: Guest::Dirtying,
            memory: "256M",
            transport: Transport::Unix,
            downtime_ms: Some(DIRTY_DOWNTIME_MS),
            max_bandwidth: Some(64 << 20),
            target: "downtime <= 50 ms",
        });
    }
    println!(
        "{:<30} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>4}  target",
        "case",
        "guest",
        "total",
        "p90",
        "down",
        "p90",
        "client",
        "p90",
        "rounds",
        "pages",
        "pages",
        "runs"
    );
    println!(
        "{:<30} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
        "", "", "med ms", "ms", "med ms", "ms", "med ms", "ms", "med", "med", "max"
    );
    let mut json_lines = Vec::new();
    for case in &cases {
        let results: Vec<Run> = (0..runs).map(|_| run(case)).collect();
        report(case, &results, &mut json_lines);
    }
    report::emit_json(&json_lines);
}
