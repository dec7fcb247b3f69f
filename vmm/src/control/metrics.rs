//! The VM's metrics: the lifecycle, vCPU exit counts and every virtio device's counters,
//! as Prometheus text (`GET /metrics`) and as JSON lines written to the file of
//! `PUT /metrics` (every minute and on `FlushMetrics`, as Firecracker does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::ApiResponse;
use devices::virtio::ids;
use serde_json::{json, Map, Value};
use vmm_sys_util::timerfd::TimerFd;

use super::runtime::Runtime;
use super::state::Lifecycle;

/// How often the metrics file gets a line.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

const STATES: [Lifecycle; 4] = [
    Lifecycle::NotStarted,
    Lifecycle::Running,
    Lifecycle::Paused,
    Lifecycle::Stopped,
];

/// One virtio device's counters.
struct DeviceMetrics {
    id: String,
    kind: &'static str,
    values: Value,
}

/// Everything measured at one moment.
pub struct Sample {
    state: Lifecycle,
    uptime: Duration,
    vcpus: Vec<[(&'static str, u64); 6]>,
    devices: Vec<DeviceMetrics>,
}

fn kind_name(device_type: u32) -> &'static str {
    match device_type {
        ids::BLOCK => "block",
        ids::NET => "net",
        ids::CONSOLE => "console",
        ids::VSOCK => "vsock",
        ids::INPUT => "input",
        ids::GPU => "gpu",
        _ => "virtio",
    }
}

impl Sample {
    /// Measures `runtime` (None before the VM started).
    pub fn take(state: Lifecycle, runtime: Option<&Runtime>) -> Sample {
        let Some(rt) = runtime else {
            return Sample {
                state,
                uptime: Duration::ZERO,
                vcpus: Vec::new(),
                devices: Vec::new(),
            };
        };
        let devices = rt
            .virtio
            .iter()
            .map(|handle| {
                let t = handle.transport.lock().unwrap_or_else(|p| p.into_inner());
                DeviceMetrics {
                    id: handle.id.clone(),
                    kind: kind_name(t.device().device_type()),
                    values: t.device().metrics(),
                }
            })
            .collect();
        Sample {
            state,
            uptime: rt.started.elapsed(),
            vcpus: rt.exits.iter().map(|c| c.values()).collect(),
            devices,
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut families = Families::default();
        for s in STATES {
            families.add(
                "petrel_vm_state",
                "gauge",
                "1 for the VM's lifecycle state, 0 for the others.",
                format!("state=\"{}\"", escape(s.name())),
                u64::from(s == self.state) as f64,
            );
        }
        families.add(
            "petrel_vm_uptime_seconds",
            "gauge",
            "Seconds since the guest started.",
            String::new(),
            self.uptime.as_secs_f64(),
        );
        for (vcpu, counters) in self.vcpus.iter().enumerate() {
            for (reason, n) in counters {
                families.add(
                    "petrel_vcpu_exits_total",
                    "counter",
                    "Exits from KVM_RUN per vCPU and reason.",
                    format!("vcpu=\"{vcpu}\",reason=\"{reason}\""),
                    *n as f64,
                );
            }
        }
        for d in &self.devices {
            let labels = format!("device=\"{}\",type=\"{}\"", escape(&d.id), d.kind);
            flatten(&d.values, "petrel_virtio", &mut |name, v| {
                families.add(
                    name,
                    "untyped",
                    "A virtio device counter.",
                    labels.clone(),
                    v,
                );
            });
        }
        families.render()
    }

    /// One JSON object, for the metrics file.
    pub fn json(&self) -> Value {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let vcpus: Vec<Value> = self
            .vcpus
            .iter()
            .map(|c| Value::Object(c.iter().map(|(k, v)| ((*k).into(), json!(v))).collect()))
            .collect();
        let devices: Map<String, Value> = self
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.values.clone()))
            .collect();
        json!({
            "utc_timestamp_ms": millis,
            "vm": { "state": self.state.name(), "uptime_ms": self.uptime.as_millis() as u64 },
            "vcpus": vcpus,
            "devices": devices,
        })
    }
}

/// Prometheus label values escape `\`, `"` and newlines.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Calls `f` with a metric name and value for every number (and boolean) in `value`,
/// naming nested fields `prefix_outer_inner`.
fn flatten(value: &Value, prefix: &str, f: &mut dyn FnMut(&str, f64)) {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                f(prefix, v);
            }
        }
        Value::Bool(b) => f(prefix, u8::from(*b).into()),
        Value::Object(map) => {
            for (k, v) in map {
                let key: String = k
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                flatten(v, &format!("{prefix}_{key}"), f);
            }
        }
        _ => {}
    }
}

/// One metric family: its type, its help text and its samples (labels, value).
struct Family {
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// Samples grouped by metric name, as the format requires.
#[derive(Default)]
struct Families(BTreeMap<String, Family>);

impl Families {
    fn add(&mut self, name: &str, kind: &'static str, help: &'static str, labels: String, v: f64) {
        self.0
            .entry(name.to_string())
            .or_insert_with(|| Family {
                kind,
                help,
                samples: Vec::new(),
            })
            .samples
            .push((labels, v));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.0 {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, v) in &family.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

/// The file of `PUT /metrics` and the timer that writes to it.
pub struct MetricsFile {
    file: Option<(PathBuf, File)>,
    pub(super) timer: TimerFd,
}

impl MetricsFile {
    pub fn new() -> std::io::Result<Self> {
        Ok(MetricsFile {
            file: None,
            timer: TimerFd::new()?,
        })
    }

    /// Opens `path` (a file, created if missing, or a FIFO with a reader) for appending and
    /// starts the periodic flush. A path that cannot be opened changes nothing.
    pub fn set_path(&mut self, path: &Path) -> Result<(), ApiResponse> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::ENXIO) {
                    " (a FIFO needs a reader)"
                } else {
                    ""
                };
                ApiResponse::bad_request(format!("metrics_path: {}: {e}{hint}", path.display()))
            })?;
        self.timer
            .reset(FLUSH_INTERVAL, Some(FLUSH_INTERVAL))
            .map_err(|e| ApiResponse::error(500, format!("cannot start the metrics timer: {e}")))?;
        self.file = Some((path.to_owned(), file));
        Ok(())
    }

    /// Appends `sample` as one JSON line.
    pub fn flush(&mut self, sample: &Sample) -> Result<(), ApiResponse> {
        let Some((path, file)) = self.file.as_mut() else {
            return Err(ApiResponse::bad_request(
                "FlushMetrics: no metrics file is configured; PUT /metrics first",
            ));
        };
        let mut line = sample.json().to_string();
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(|e| {
            ApiResponse::error(
                500,
                format!("cannot write metrics to {}: {e}", path.display()),
            )
        })
    }

    /// Whether a file is configured.
    pub fn is_set(&self) -> bool {
        self.file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            state: Lifecycle::Paused,
            uptime: Duration::from_millis(1500),
            vcpus: vec![[
                ("io_in", 1),
                ("io_out", 2),
                ("mmio_read", 3),
                ("mmio_write", 4),
                ("interrupted", 5),
                ("other", 6),
            ]],
            devices: vec![DeviceMetrics {
                id: "root\"fs".into(),
                kind: "block",
                values: json!({"read_bytes": 4096, "rate_limiter": {"throttled": 2}, "x": "y"}),
            }],
        }
    }

    #[test]
    fn prometheus_groups_families_and_escapes_labels() {
        let text = sample().prometheus();
        assert!(
            text.contains("petrel_vm_state{state=\"Paused\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("petrel_vm_state{state=\"Running\"} 0\n"));
        assert!(text.contains("petrel_vm_uptime_seconds 1.5\n"));
        assert!(text.contains("petrel_vcpu_exits_total{vcpu=\"0\",reason=\"mmio_write\"} 4\n"));
        assert!(
            text.contains("petrel_virtio_read_bytes{device=\"root\\\"fs\",type=\"block\"} 4096\n")
        );
        assert!(text.contains("petrel_virtio_rate_limiter_throttled{"));
        // Every family's samples follow its one TYPE line.
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE petrel_vm_state "))
            .count();
        assert_eq!(types, 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn json_line_has_state_vcpus_and_devices() {
        let v = sample().json();
        assert_eq!(v["vm"]["state"], "Paused");
        assert_eq!(v["vcpus"][0]["other"], 6);
        assert_eq!(v["devices"]["root\"fs"]["read_bytes"], 4096);
    }

    #[test]
    fn metrics_file_appends_lines_and_refuses_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetricsFile::new().unwrap();
        assert!(m.flush(&sample()).is_err());
        assert!(m.set_path(&dir.path().join("no/such/dir")).is_err());
        assert!(m.set_path(dir.path()).is_err());
        assert!(!m.is_set());
        let path = dir.path().join("metrics.json");
        m.set_path(&path).unwrap();
        m.flush(&sample()).unwrap();
        m.flush(&sample()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }
}
