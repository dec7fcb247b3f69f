//! Snapshot costs with the real `petrel` binary under KVM, measured as a client sees them
//! (the wall time of the API request, which includes the HTTP round trip on the Unix
//! socket):
//!
//! - full snapshot create of an idle guest (the `idle` scenario: it prints `IDLE` and halts)
//!   of 256 MiB and 1 GiB, and the bytes its files take on disk;
//! - incremental (Diff) create of the same idle guest, with nothing dirtied;
//! - incremental create after the guest dirtied 16 MiB (the `snapshot` scenario's `A`);
//! - load-to-running: `PUT /snapshot/load` with `resume_vm` into a waiting petrel, until the
//!   reply (sent once the vCPUs run), of the idle guest's full snapshot, and of a chain (a
//!   full base and a 16 MiB layer) against its merged form.
//!
//! `cargo bench -p tests --bench snapshot`. `PETREL_BENCH_RUNS` (default 20) runs per case;
//! `PETREL_BENCH_JSON` as for the other benches. Without `--bench` (as `cargo test
//! --benches` runs it) it does a short smoke run (2 runs, 256 MiB only). Needs KVM.

#[path = "../../benches/report.rs"]
mod report;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::api_vm::ApiVm;
use tests::snapshot_guest::SnapshotGuest;

fn create(vm: &ApiVm, kind: &str, state: &Path, mem: &Path) -> Duration {
    let body = json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem});
    let start = Instant::now();
    vm.ok("PUT", "/snapshot/create", body);
    start.elapsed()
}

fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Median and 90th percentile in ms.
fn stats(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(times[((times.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.9))
}

struct Report {
    json: Vec<serde_json::Value>,
}

impl Report {
    fn add(&mut self, case: &str, memory: &str, times: Vec<Duration>, bytes: Option<u64>) {
        let runs = times.len();
        let (median, p90) = stats(times);
        let bytes_text = bytes.map_or(String::new(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        println!("{case:<34} {memory:>6} {median:>10.2} {p90:>10.2} {runs:>5}  {bytes_text}");
        self.json.push(json!({
            "bench": "snapshot", "case": case, "memory": memory,
            "median_ms": median, "p90_ms": p90, "runs": runs, "bytes_on_disk": bytes,
        }));
    }
}

fn idle_guest(memory: &str) -> ApiVm {
    let vm = ApiVm::spawn(&[
        "--kernel",
        tests::test_guest().to_str().expect("UTF-8 path"),
        "--cmdline",
        "petrel.test=idle",
        "--memory",
        memory,
        "--track-dirty-pages",
    ]);
    vm.wait_serial(Duration::from_secs(60), |l| (l == "IDLE").then_some(()));
    vm
}

/// Full and idle Diff creates of an idle guest, then loads of its last Full snapshot.
fn idle_cases(report: &mut Report, memory: &str, runs: usize, dir: &Path) {
    let vm = idle_guest(memory);
    vm.set_state("Paused");
    let (state, mem) = (dir.join("full.state"), dir.join("full.mem"));
    let full: Vec<Duration> = (0..runs)
        .map(|_| create(&vm, "Full", &state, &mem))
        .collect();
    let bytes = on_disk(&mem) + on_disk(&state);
    report.add("full create (idle)", memory, full, Some(bytes));
    let mut diff = Vec::new();
    let mut bytes = 0;
    for i in 0..runs {
        vm.set_state("Resumed");
        std::thread::sleep(Duration::from_millis(5));
        vm.set_state("Paused");
        let (s, m) = (
            dir.join(format!("d{i}.state")),
            dir.join(format!("d{i}.mem")),
        );
        diff.push(create(&vm, "Diff", &s, &m));
        bytes = on_disk(&m) + on_disk(&s);
    }
    report.add("diff create (idle)", memory, diff, Some(bytes));
    drop(vm);

    let times = (0..runs).map(|_| load(&state, &mem)).collect();
    report.add("load to running", memory, times, None);
}

/// Diff creates after the guest dirtied its 16 MiB region.
fn dirty_case(report: &mut Report, memory: &str, runs: usize, dir: &Path) {
    let (vm, mut guest) = SnapshotGuest::boot(memory, &["--track-dirty-pages"]);
    vm.set_state("Paused");
    create(&vm, "Full", &dir.join("base.state"), &dir.join("base.mem"));
    let mut times = Vec::new();
    let mut bytes = 0;
    for i in 0..runs {
        vm.set_state("Resumed");
        guest.write_all(&vm);
        vm.set_state("Paused");
        let (s, m) = (
            dir.join(format!("w{i}.state")),
            dir.join(format!("w{i}.mem")),
        );
        times.push(create(&vm, "Diff", &s, &m));
        bytes = on_disk(&m) + on_disk(&s);
    }
    report.add("diff create (16 MiB dirtied)", memory, times, Some(bytes));
    drop(vm);

    // Restoring a chain copies its layers' pages into memory; its merged form is mapped
    // with no copy. The chain is the full base and the first 16 MiB layer.
    let state = dir.join("w0.state");
    let merged = dir.join("w0.flat");
    let status = std::process::Command::new(tests::petrel())
        .args(["snapshot", "merge"])
        .arg(dir.join("w0.mem"))
        .arg(&merged)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run petrel snapshot merge");
    assert!(status.success());
    for (case, mem) in [
        ("load to running, base + 16 MiB layer", dir.join("w0.mem")),
        ("load to running, the same merged", merged),
    ] {
        let times = (0..runs).map(|_| load(&state, &mem)).collect();
        report.add(case, memory, times, None);
    }
}

/// Loads a snapshot into a new, waiting petrel and runs it; the time of the request.
fn load(state: &Path, mem: &Path) -> Duration {
    let target = ApiVm::spawn(&[]);
    let body = json!({"snapshot_path": state, "resume_vm": true,
                      "mem_backend": {"backend_type": "File", "backend_path": mem}});
    let start = Instant::now();
    target.ok("PUT", "/snapshot/load", body);
    let took = start.elapsed();
    assert_eq!(target.state(), "Running");
    took
}

fn main() {
    let Some((smoke, runs)) = tests::bench_plan(20) else {
        return;
    };
    let sizes: &[&str] = if smoke { &["256M"] } else { &["256M", "1G"] };
    let mut report = Report { json: Vec::new() };
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>5}  files on disk",
        "case", "guest", "median ms", "p90 ms", "runs"
    );
    for memory in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        idle_cases(&mut report, memory, runs, dir.path());
        dirty_case(&mut report, memory, runs, dir.path());
    }
    report::emit_json(&report.json);
}
