//! What `petrel ctl` prints for an answer of the API, and its exit status. No I/O.

use serde_json::{Map, Number, Value};

use super::args::{CtlCommand, DriveCommand, MigrateCommand, NetCommand, SnapshotCommand};
use super::EXIT_FAILURE;

/// What to print and how to exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// For standard output; ends with a newline unless empty.
    pub stdout: String,
    /// For standard error; ends with a newline unless empty.
    pub stderr: String,
    /// Exit status.
    pub code: u8,
}

impl Output {
    /// A failure: `message` on stderr; with `json`, `json_body` on stdout.
    pub fn failure(message: &str, json: bool, json_body: String) -> Self {
        Output {
            stdout: if json { line(json_body) } else { String::new() },
            stderr: format!("petrel: error: {message}\n"),
            code: EXIT_FAILURE,
        }
    }
}

/// `text` ending with one newline.
fn line(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// What to print for the answer `status` with `body` to `cmd`. `json` prints bodies as the
/// server sent them (`{}` for an empty one; metrics, which are text, as an object from each
/// series to its value). An error status prints its `fault_message` on stderr and exits 1.
pub fn render(cmd: &CtlCommand, status: u16, body: &str, json: bool) -> Output {
    if !(200..300).contains(&status) {
        return render_error(status, body, json);
    }
    if json {
        let stdout = match cmd {
            CtlCommand::Metrics => match metrics_to_json(body) {
                Ok(v) => v.to_string(),
                Err(e) => {
                    let message = format!("unexpected metrics from the server: {e}");
                    return Output::failure(&message, json, fault_body(&message));
                }
            },
            _ if body.trim().is_empty() => "{}".to_owned(),
            _ => body.to_owned(),
        };
        return Output {
            stdout: line(stdout),
            ..Output::default()
        };
    }
    let stdout = match cmd {
        CtlCommand::Status => instance_info(body).unwrap_or_else(|| pretty(body)),
        CtlCommand::Config | CtlCommand::Migrate(MigrateCommand::Status) => pretty(body),
        CtlCommand::Metrics => body.to_owned(),
        _ => confirmation(cmd),
    };
    Output {
        stdout: if stdout.is_empty() {
            stdout
        } else {
            line(stdout)
        },
        ..Output::default()
    }
}

fn render_error(status: u16, body: &str, json: bool) -> Output {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let fault = parsed
        .as_ref()
        .and_then(|v| v.get("fault_message"))
        .and_then(Value::as_str);
    let message = match fault {
        Some(f) => f.to_owned(),
        None if body.trim().is_empty() => format!("the API answered HTTP {status}"),
        None => format!("the API answered HTTP {status}: {}", body.trim()),
    };
    let json_body = match parsed {
        Some(v) if v.is_object() => body.to_owned(),
        _ => fault_body(&message),
    };
    Output::failure(&message, json, json_body)
}

/// `GET /` as `key: value` lines, or `None` if the body is not an instance info.
fn instance_info(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    Some(format!(
        "id: {}\nstate: {}\nversion: {}",
        field("id")?,
        field("state")?,
        field("vmm_version")?
    ))
}

/// JSON pretty-printed; anything else as it came.
fn pretty(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

/// The line a command without an answer body prints.
fn confirmation(cmd: &CtlCommand) -> String {
    match cmd {
        CtlCommand::Pause => "paused".into(),
        CtlCommand::Resume => "resumed".into(),
        CtlCommand::Start => "started".into(),
        CtlCommand::Shutdown => "shutdown requested".into(),
        CtlCommand::Kill => "killed".into(),
        CtlCommand::CtrlAltDel => "Ctrl+Alt+Del sent".into(),
        CtlCommand::PowerButton => "power button pressed".into(),
        CtlCommand::Drive(DriveCommand::SetPath { id, .. }) => {
            format!("drive {id}: backing file replaced")
        }
        CtlCommand::Drive(DriveCommand::SetRate { id, spec }) => {
            format!("drive {id}: rate limit {spec}")
        }
        CtlCommand::Net(NetCommand::SetRate { id, rx, tx }) => {
            let mut parts = Vec::new();
            if let Some(rx) = rx {
                parts.push(format!("rx {rx}"));
            }
            if let Some(tx) = tx {
                parts.push(format!("tx {tx}"));
            }
            format!("net {id}: rate limit {}", parts.join(", "))
        }
        CtlCommand::Input { id, .. } => format!("input {id}: sent"),
        CtlCommand::Snapshot(SnapshotCommand::Create { state, mem, .. }) => format!(
            "snapshot written: state {}, memory {}",
            state.display(),
            mem.display()
        ),
        CtlCommand::Snapshot(SnapshotCommand::Load { resume, .. }) => if *resume {
            "snapshot loaded; running"
        } else {
            "snapshot loaded; paused"
        }
        .into(),
        CtlCommand::Screenshot { file } => format!("screenshot saved to {}", file.display()),
        CtlCommand::Migrate(MigrateCommand::Send { url, .. }) => {
            format!("migration to {url} started; `petrel ctl migrate status` follows it")
        }
        CtlCommand::Migrate(MigrateCommand::Receive { url, .. }) => {
            format!("listening for a migration on {url}")
        }
        CtlCommand::Status
        | CtlCommand::Config
        | CtlCommand::Metrics
        | CtlCommand::Migrate(MigrateCommand::Status) => "ok".into(),
    }
}

/// Prometheus text as `{"series": value}`: each sample line's series exactly as written
/// (name and labels), and its value as a JSON number; `NaN` and `±Inf`, which JSON has no
/// number for, as strings. Comments and blank lines are skipped; a timestamp is dropped.
pub fn metrics_to_json(text: &str) -> Result<Value, String> {
    let mut map = Map::new();
    for (n, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: {:?}", n + 1, raw);
        // Label values may hold spaces, but no value or timestamp holds a `}`.
        let (series, rest) = match l.rfind('}') {
            Some(end) => l.split_at(end + 1),
            None => l.split_once(char::is_whitespace).ok_or_else(bad)?,
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(bad)?;
        if fields.count() > 1 {
            return Err(bad());
        }
        map.insert(
            series.trim().to_owned(),
            sample_value(value).ok_or_else(bad)?,
        );
    }
    Ok(Value::Object(map))
}

fn sample_value(s: &str) -> Option<Value> {
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    let f = s.parse::<f64>().ok()?;
    Some(match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None => Value::String(s.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::args::RateSpec;
    use serde_json::json;

    const INFO: &str =
        r#"{"id":"vm0","state":"Running","vmm_version":"0.1.0","app_name":"petrel"}"#;

    fn ok(stdout: &str) -> Output {
        Output {
            stdout: stdout.into(),
            ..Output::default()
        }
    }

    fn spec(s: &str) -> RateSpec {
        s.parse().unwrap()
    }

    #[test]
    fn status_prints_id_state_and_version() {
        assert_eq!(
            render(&CtlCommand::Status, 200, INFO, false),
            ok("id: vm0\nstate: Running\nversion: 0.1.0\n")
        );
        // Something else is shown as it came, pretty if it is JSON.
        assert_eq!(
            render(&CtlCommand::Status, 200, r#"{"x":1}"#, false),
            ok("{\n  \"x\": 1\n}\n")
        );
    }

    #[test]
    fn json_mode_prints_the_body_as_sent() {
        assert_eq!(
            render(&CtlCommand::Status, 200, INFO, true),
            ok(&format!("{INFO}\n"))
        );
        assert_eq!(
            render(&CtlCommand::Config, 200, r#"{"a":[1]}"#, true),
            ok("{\"a\":[1]}\n")
        );
        for cmd in [CtlCommand::Pause, CtlCommand::Kill] {
            assert_eq!(render(&cmd, 204, "", true), ok("{}\n"));
        }
    }

    #[test]
    fn config_is_pretty_json() {
        assert_eq!(
            render(
                &CtlCommand::Config,
                200,
                r#"{"machine":{"vcpus":2}}"#,
                false
            ),
            ok("{\n  \"machine\": {\n    \"vcpus\": 2\n  }\n}\n")
        );
    }

    #[test]
    fn migrate_status_is_pretty_json_and_no_wait_confirms() {
        let status = CtlCommand::Migrate(MigrateCommand::Status);
        assert_eq!(
            render(&status, 200, r#"{"role":"none","state":"idle"}"#, false),
            ok("{\n  \"role\": \"none\",\n  \"state\": \"idle\"\n}\n")
        );
        let receive = CtlCommand::Migrate(MigrateCommand::Receive {
            url: "unix:/m.sock".into(),
            no_wait: true,
        });
        assert_eq!(
            render(&receive, 204, "", false),
            ok("listening for a migration on unix:/m.sock\n")
        );
        let out = render(
            &receive,
            400,
            r#"{"fault_message":"the VM has started"}"#,
            false,
        );
        assert_eq!(
            (out.stderr.as_str(), out.code),
            ("petrel: error: the VM has started\n", 1)
        );
    }

    #[test]
    fn commands_without_a_body_confirm_in_one_line() {
        let cases = [
            (CtlCommand::Pause, "paused"),
            (CtlCommand::Resume, "resumed"),
            (CtlCommand::Start, "started"),
            (CtlCommand::Shutdown, "shutdown requested"),
            (CtlCommand::Kill, "killed"),
            (CtlCommand::CtrlAltDel, "Ctrl+Alt+Del sent"),
            (CtlCommand::PowerButton, "power button pressed"),
            (
                CtlCommand::Drive(DriveCommand::SetPath {
                    id: "root".into(),
                    file: "d.img".into(),
                }),
                "drive root: backing file replaced",
            ),
            (
                CtlCommand::Drive(DriveCommand::SetRate {
                    id: "root".into(),
                    spec: spec("bw=1M"),
                }),
                "drive root: rate limit bw=1M",
            ),
            (
                CtlCommand::Net(NetCommand::SetRate {
                    id: "eth0".into(),
                    rx: Some(spec("ops=5")),
                    tx: Some(spec("none")),
                }),
                "net eth0: rate limit rx ops=5, tx unlimited",
            ),
        ];
        for (cmd, text) in cases {
            assert_eq!(render(&cmd, 204, "", false), ok(&format!("{text}\n")));
        }
    }

    #[test]
    fn errors_print_the_fault_message_and_exit_1() {
        let body = r#"{"fault_message":"the VM is not running"}"#;
        let out = render(&CtlCommand::Pause, 400, body, false);
        assert_eq!(
            out,
            Output {
                stdout: String::new(),
                stderr: "petrel: error: the VM is not running\n".into(),
                code: 1,
            }
        );
        // With --json stdout also gets the body, for scripts.
        let out = render(&CtlCommand::Pause, 400, body, true);
        assert_eq!(out.stdout, format!("{body}\n"));
        assert_eq!(out.stderr, "petrel: error: the VM is not running\n");
        assert_eq!(out.code, 1);
    }

    #[test]
    fn errors_without_a_fault_message_name_the_status() {
        let out = render(&CtlCommand::Status, 502, "bad gateway", true);
        assert_eq!(
            out.stderr,
            "petrel: error: the API answered HTTP 502: bad gateway\n"
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v,
            json!({"fault_message": "the API answered HTTP 502: bad gateway"})
        );
        assert_eq!(
            render(&CtlCommand::Status, 500, "", false).stderr,
            "petrel: error: the API answered HTTP 500\n"
        );
    }

    const METRICS: &str = "\
# HELP petrel_vcpu_exits_total vCPU exits.
# TYPE petrel_vcpu_exits_total counter
petrel_vcpu_exits_total{vcpu=\"0\",reason=\"io out\"} 42
petrel_uptime_seconds 1.5 1700000000000

petrel_temperature -3
petrel_ratio NaN
";

    #[test]
    fn metrics_print_as_is_or_as_series_to_values() {
        assert_eq!(
            render(&CtlCommand::Metrics, 200, METRICS, false),
            ok(METRICS)
        );
        let out = render(&CtlCommand::Metrics, 200, METRICS, true);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v,
            json!({
                "petrel_vcpu_exits_total{vcpu=\"0\",reason=\"io out\"}": 42,
                "petrel_uptime_seconds": 1.5,
                "petrel_temperature": -3,
                "petrel_ratio": "NaN",
            })
        );
        assert_eq!(render(&CtlCommand::Metrics, 200, "", true), ok("{}\n"));
    }

    #[test]
    fn malformed_metrics_fail_naming_the_line() {
        for bad in ["lonely", "x{a=\"b\"}", "x 1 2 3", "x one"] {
            let err = metrics_to_json(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(err.starts_with("line 2:"), "{bad}: {err}");
            let out = render(&CtlCommand::Metrics, 200, bad, true);
            assert_eq!(out.code, 1, "{bad}");
        }
    }
}
