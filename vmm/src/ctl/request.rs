//! What each command asks of the API: method, path and JSON body. No I/O.

use std::path::{Path, PathBuf};

use devices::rate_limiter::{RateLimitConfig, TokenBucketConfig};
use serde_json::{json, Value};

use super::args::{
    CtlCommand, DriveCommand, InputCommand, MigrateCommand, NetCommand, RateSpec, SnapshotCommand,
};
use super::CtlError;

/// One API request.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: &'static str,
    /// Path, e.g. `/drives/rootfs`.
    pub path: String,
    /// JSON body, if the request has one.
    pub body: Option<Value>,
}

impl ApiCall {
    fn get(path: &str) -> Self {
        ApiCall {
            method: "GET",
            path: path.to_owned(),
            body: None,
        }
    }

    fn with_body(method: &'static str, path: String, body: Value) -> Self {
        ApiCall {
            method,
            path,
            body: Some(body),
        }
    }
}

/// The request `cmd` makes. `cwd` is where a relative file path given to the command is
/// made absolute (the VMM may run in another directory); `None` when it cannot be read.
pub fn request(cmd: &CtlCommand, cwd: Option<&Path>) -> Result<ApiCall, CtlError> {
    let action = |action_type: &str| {
        ApiCall::with_body(
            "PUT",
            "/actions".into(),
            json!({ "action_type": action_type }),
        )
    };
    let vm_state =
        |state: &str| ApiCall::with_body("PATCH", "/vm".into(), json!({ "state": state }));
    Ok(match cmd {
        CtlCommand::Status => ApiCall::get("/"),
        CtlCommand::Pause => vm_state("Paused"),
        CtlCommand::Resume => vm_state("Resumed"),
        CtlCommand::Start => action("InstanceStart"),
        CtlCommand::Shutdown => action("Shutdown"),
        CtlCommand::Kill => action("Kill"),
        CtlCommand::CtrlAltDel => action("SendCtrlAltDel"),
        CtlCommand::PowerButton => action("PowerButton"),
        CtlCommand::Config => ApiCall::get("/vm/config"),
        CtlCommand::Metrics => ApiCall::get("/metrics"),
        CtlCommand::Screenshot { .. } => ApiCall::get("/display/screenshot"),
        CtlCommand::Drive(DriveCommand::SetPath { id, file }) => {
            check_id("drive", id)?;
            ApiCall::with_body(
                "PATCH",
                format!("/drives/{id}"),
                json!({ "drive_id": id, "path_on_host": path_text(file, cwd)? }),
            )
        }
        CtlCommand::Drive(DriveCommand::SetRate { id, spec }) => {
            check_id("drive", id)?;
            ApiCall::with_body(
                "PATCH",
                format!("/drives/{id}"),
                json!({ "drive_id": id, "rate_limiter": rate_limiter(spec) }),
            )
        }
        CtlCommand::Net(NetCommand::SetRate { id, rx, tx }) => {
            check_id("network interface", id)?;
            if rx.is_none() && tx.is_none() {
                return Err(CtlError::NoDirection(id.clone()));
            }
            let mut body = json!({ "iface_id": id });
            if let Some(rx) = rx {
                body["rx_rate_limiter"] = rate_limiter(rx);
            }
            if let Some(tx) = tx {
                body["tx_rate_limiter"] = rate_limiter(tx);
            }
            ApiCall::with_body("PATCH", format!("/network-interfaces/{id}"), body)
        }
        CtlCommand::Snapshot(SnapshotCommand::Create {
            state,
            mem,
            diff,
            parent,
        }) => {
            let mut body = json!({
                "snapshot_type": if *diff { "Diff" } else { "Full" },
                "snapshot_path": path_text(state, cwd)?,
                "mem_file_path": path_text(mem, cwd)?,
            });
            if let Some(parent) = parent {
                body["parent_mem_file_path"] = json!(path_text(parent, cwd)?);
            }
            ApiCall::with_body("PUT", "/snapshot/create".into(), body)
        }
        CtlCommand::Snapshot(SnapshotCommand::Load {
            state,
            mem,
            resume,
            track_dirty_pages,
        }) => {
            let mut body = json!({
                "snapshot_path": path_text(state, cwd)?,
                "resume_vm": resume,
                "enable_diff_snapshots": track_dirty_pages,
            });
            if let Some(mem) = mem {
                body["mem_backend"] =
                    json!({"backend_type": "File", "backend_path": path_text(mem, cwd)?});
            }
            ApiCall::with_body("PUT", "/snapshot/load".into(), body)
        }
        CtlCommand::Migrate(MigrateCommand::Send {
            url,
            downtime_ms,
            timeout_s,
            no_auto_converge,
            max_bandwidth,
            max_rounds,
            local,
            ..
        }) => {
            // Options not given are left out: the server's defaults apply.
            let mut body = json!({ "url": url_text(url, cwd)? });
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(v) = value {
                    body[key] = v;
                }
            };
            set("downtime_ms", downtime_ms.map(Value::from));
            set("timeout_s", timeout_s.map(Value::from));
            set(
                "auto_converge",
                no_auto_converge.then_some(Value::Bool(false)),
            );
            set("max_bandwidth", max_bandwidth.map(Value::from));
            set("max_rounds", max_rounds.map(Value::from));
            set("local", local.then_some(Value::Bool(true)));
            ApiCall::with_body("PUT", MIGRATION_SEND.into(), body)
        }
        CtlCommand::Migrate(MigrateCommand::Receive { url, .. }) => ApiCall::with_body(
            "PUT",
            MIGRATION_RECEIVE.into(),
            json!({ "url": url_text(url, cwd)? }),
        ),
        CtlCommand::Migrate(MigrateCommand::Status) => ApiCall::get(MIGRATION),
        CtlCommand::Input { id, event } => {
            check_id("input device", id)?;
            let event = match event {
                InputCommand::Key { name } => json!({"kind": "key", "key": name, "action": "tap"}),
                InputCommand::Move { x, y } => json!({"kind": "move", "x": x, "y": y}),
                InputCommand::Click { button } => {
                    json!({"kind": "button", "button": button, "action": "click"})
                }
                InputCommand::Wheel { delta } => json!({"kind": "wheel", "delta": delta}),
            };
            ApiCall::with_body("PUT", format!("/input/{id}"), json!({ "events": [event] }))
        }
    })
}

/// `GET /migration`: the progress of the migration, polled while following it.
pub const MIGRATION: &str = "/migration";
const MIGRATION_SEND: &str = "/migration/send";
const MIGRATION_RECEIVE: &str = "/migration/receive";

/// A migration URL as the API takes it: `unix:PATH` with `PATH` made absolute (the VMM may
/// run in another directory); anything else as given, for the server to judge.
fn url_text(url: &str, cwd: Option<&Path>) -> Result<String, CtlError> {
    match url.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(format!("unix:{}", path_text(Path::new(path), cwd)?)),
        _ => Ok(url.to_owned()),
    }
}

/// An id goes into the path, so it is checked here as the server would, rather than
/// letting `a/b` or `a?b` reach another route.
fn check_id(kind: &'static str, id: &str) -> Result<(), CtlError> {
    if api::router::is_valid_id(id) {
        Ok(())
    } else {
        Err(CtlError::InvalidId {
            kind,
            id: id.to_owned(),
        })
    }
}

/// `file` made absolute, as the JSON string the API takes.
fn path_text(file: &Path, cwd: Option<&Path>) -> Result<String, CtlError> {
    let file = absolute(file, cwd)?;
    file.to_str()
        .map(str::to_owned)
        .ok_or(CtlError::NonUtf8Path(file))
}

fn absolute(file: &Path, cwd: Option<&Path>) -> Result<PathBuf, CtlError> {
    if file.is_absolute() {
        return Ok(file.to_owned());
    }
    let cwd = cwd.ok_or_else(|| CtlError::NoCurrentDir(file.to_owned()))?;
    // `components` drops `.` and doubled slashes; `..` stays, since a symlink may precede it.
    Ok(cwd.join(file).components().collect())
}

/// Firecracker's `RateLimiter` JSON for `spec`. Both buckets are always sent, a resource
/// without a limit as a bucket of size 0 and refill time 0 (which limits nothing): the
/// drive's whole limit becomes `spec`, whether the server replaces the limiter or, as
/// Firecracker does, only updates the buckets a PATCH names.
fn rate_limiter(spec: &RateSpec) -> Value {
    let none = TokenBucketConfig::default();
    let config = spec.config().copied().unwrap_or_default();
    let full = RateLimitConfig {
        bandwidth: Some(config.bandwidth.unwrap_or(none)),
        ops: Some(config.ops.unwrap_or(none)),
    };
    // Plain integers and options: serialising cannot fail.
    serde_json::to_value(full).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::router::{route, Routed};
    use api::types::{
        ActionType, DrivePatch, MemBackend, MigrationReceiveParams, MigrationSendParams,
        NetworkInterfacePatch, RateLimiter, SnapshotCreateParams, SnapshotLoadParams, TokenBucket,
    };
    use api::ApiRequest;

    fn call(cmd: CtlCommand) -> ApiCall {
        request(&cmd, Some(Path::new("/home/u"))).unwrap()
    }

    /// What the real router makes of the call: the body is one the server accepts.
    fn routed(cmd: CtlCommand) -> ApiRequest {
        let c = call(cmd);
        let body = c.body.map(|b| b.to_string()).unwrap_or_default();
        match route(c.method, &c.path, body.as_bytes()) {
            Ok(Routed::Vmm(r)) => *r,
            other => panic!("{} {}: {other:?}", c.method, c.path),
        }
    }

    fn spec(s: &str) -> RateSpec {
        s.parse().unwrap()
    }

    fn bucket(size: u64, one_time_burst: u64, refill_time: u64) -> Option<TokenBucket> {
        Some(TokenBucket {
            size,
            one_time_burst: Some(one_time_burst),
            refill_time,
        })
    }

    #[test]
    fn queries_are_gets_without_a_body() {
        assert_eq!(call(CtlCommand::Status), ApiCall::get("/"));
        assert_eq!(call(CtlCommand::Config), ApiCall::get("/vm/config"));
        assert_eq!(call(CtlCommand::Metrics), ApiCall::get("/metrics"));
        assert_eq!(routed(CtlCommand::Status), ApiRequest::GetInstanceInfo);
        assert_eq!(routed(CtlCommand::Config), ApiRequest::GetVmConfig);
        assert_eq!(routed(CtlCommand::Metrics), ApiRequest::GetMetrics);
        let shot = CtlCommand::Screenshot {
            file: "s.png".into(),
        };
        assert_eq!(call(shot.clone()), ApiCall::get("/display/screenshot"));
        assert_eq!(routed(shot), ApiRequest::GetScreenshot);
    }

    #[test]
    fn pause_and_resume_patch_the_vm_state() {
        let c = call(CtlCommand::Pause);
        assert_eq!((c.method, c.path.as_str()), ("PATCH", "/vm"));
        assert_eq!(c.body, Some(json!({"state": "Paused"})));
        assert_eq!(
            call(CtlCommand::Resume).body,
            Some(json!({"state": "Resumed"}))
        );
        use api::types::VmState;
        assert_eq!(
            routed(CtlCommand::Pause),
            ApiRequest::PatchVm(VmState::Paused)
        );
        assert_eq!(
            routed(CtlCommand::Resume),
            ApiRequest::PatchVm(VmState::Resumed)
        );
    }

    #[test]
    fn actions_put_their_action_type() {
        for (cmd, name, action) in [
            (
                CtlCommand::Start,
                "InstanceStart",
                ActionType::InstanceStart,
            ),
            (CtlCommand::Shutdown, "Shutdown", ActionType::Shutdown),
            (CtlCommand::Kill, "Kill", ActionType::Kill),
            (
                CtlCommand::CtrlAltDel,
                "SendCtrlAltDel",
                ActionType::SendCtrlAltDel,
            ),
            (
                CtlCommand::PowerButton,
                "PowerButton",
                ActionType::PowerButton,
            ),
        ] {
            let c = call(cmd.clone());
            assert_eq!((c.method, c.path.as_str()), ("PUT", "/actions"));
            assert_eq!(c.body, Some(json!({"action_type": name})));
            assert_eq!(routed(cmd), ApiRequest::Action(action));
        }
    }

    #[test]
    fn set_path_sends_an_absolute_path() {
        let set_path = |file: &str| {
            CtlCommand::Drive(DriveCommand::SetPath {
                id: "root".into(),
                file: file.into(),
            })
        };
        let c = call(set_path("./img/../disk.img"));
        assert_eq!((c.method, c.path.as_str()), ("PATCH", "/drives/root"));
        assert_eq!(
            c.body,
            Some(json!({"drive_id": "root", "path_on_host": "/home/u/img/../disk.img"}))
        );
        assert_eq!(
            routed(set_path("/abs/disk.img")),
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: Some("/abs/disk.img".into()),
                rate_limiter: None,
            })
        );
        // Without a current directory only an absolute path can be sent.
        assert!(request(&set_path("/abs"), None).is_ok());
        assert!(matches!(
            request(&set_path("rel"), None),
            Err(CtlError::NoCurrentDir(_))
        ));
    }

    #[test]
    fn snapshot_commands_route_to_the_snapshot_requests() {
        let create = |diff, parent: Option<&str>| {
            routed(CtlCommand::Snapshot(SnapshotCommand::Create {
                state: "s.state".into(),
                mem: "/m/mem".into(),
                diff,
                parent: parent.map(Into::into),
            }))
        };
        assert_eq!(
            create(false, None),
            ApiRequest::CreateSnapshot(SnapshotCreateParams {
                snapshot_type: Some("Full".into()),
                snapshot_path: "/home/u/s.state".into(),
                mem_file_path: "/m/mem".into(),
                parent_mem_file_path: None,
            })
        );
        let ApiRequest::CreateSnapshot(p) = create(true, Some("base")) else {
            panic!()
        };
        assert_eq!(p.snapshot_type.as_deref(), Some("Diff"));
        assert_eq!(p.parent_mem_file_path.as_deref(), Some("/home/u/base"));
        let load = routed(CtlCommand::Snapshot(SnapshotCommand::Load {
            state: "/s".into(),
            mem: Some("layer".into()),
            resume: true,
            track_dirty_pages: false,
        }));
        assert_eq!(
            load,
            ApiRequest::LoadSnapshot(SnapshotLoadParams {
                snapshot_path: "/s".into(),
                mem_backend: Some(MemBackend {
                    backend_type: "File".into(),
                    backend_path: "/home/u/layer".into(),
                }),
                mem_file_path: None,
                enable_diff_snapshots: Some(false),
                resume_vm: Some(true),
            })
        );
    }

    #[test]
    fn migrate_send_sends_only_the_options_given() {
        let c = call(CtlCommand::Migrate(MigrateCommand::send_to(
            "tcp:10.0.0.2:4444",
        )));
        assert_eq!((c.method, c.path.as_str()), ("PUT", "/migration/send"));
        assert_eq!(c.body, Some(json!({"url": "tcp:10.0.0.2:4444"})));
        let all = MigrateCommand::Send {
            url: "tcp:[::1]:4444".into(),
            downtime_ms: Some(20),
            timeout_s: Some(5),
            no_auto_converge: true,
            max_bandwidth: Some(1 << 30),
            max_rounds: Some(3),
            local: true,
            no_wait: true,
        };
        assert_eq!(
            routed(CtlCommand::Migrate(all)),
            ApiRequest::MigrationSend(MigrationSendParams {
                url: "tcp:[::1]:4444".into(),
                downtime_ms: Some(20),
                timeout_s: Some(5),
                auto_converge: Some(false),
                max_bandwidth: Some(1 << 30),
                max_rounds: Some(3),
                local: Some(true),
            })
        );
        assert_eq!(
            routed(CtlCommand::Migrate(MigrateCommand::send_to(
                "unix:/run/m.sock"
            ))),
            ApiRequest::MigrationSend(MigrationSendParams {
                url: "unix:/run/m.sock".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn migrate_receive_and_status_route_to_the_migration_requests() {
        let receive = |url: &str, no_wait| {
            CtlCommand::Migrate(MigrateCommand::Receive {
                url: url.into(),
                no_wait,
            })
        };
        assert_eq!(
            routed(receive("tcp:0.0.0.0:0", false)),
            ApiRequest::MigrationReceive(MigrationReceiveParams {
                url: "tcp:0.0.0.0:0".into()
            })
        );
        assert_eq!(
            call(receive("tcp:0.0.0.0:0", true)),
            call(receive("tcp:0.0.0.0:0", false))
        );
        let status = CtlCommand::Migrate(MigrateCommand::Status);
        assert_eq!(call(status.clone()), ApiCall::get("/migration"));
        assert_eq!(routed(status), ApiRequest::GetMigration);
    }

    #[test]
    fn migrate_unix_paths_are_made_absolute_and_other_urls_sent_as_typed() {
        let url = |cmd: MigrateCommand| call(CtlCommand::Migrate(cmd)).body.unwrap()["url"].clone();
        assert_eq!(
            url(MigrateCommand::send_to("unix:./run/m.sock")),
            "unix:/home/u/run/m.sock"
        );
        assert_eq!(
            url(MigrateCommand::send_to("unix:/abs.sock")),
            "unix:/abs.sock"
        );
        // The server judges the rest: a bad URL is its 400.
        for typed in ["tcp:host:1", "unix:", "ftp://x", "m.sock"] {
            assert_eq!(url(MigrateCommand::send_to(typed)), typed);
        }
        let relative = CtlCommand::Migrate(MigrateCommand::Receive {
            url: "unix:m.sock".into(),
            no_wait: false,
        });
        assert!(matches!(
            request(&relative, None),
            Err(CtlError::NoCurrentDir(_))
        ));
    }

    #[test]
    fn drive_rate_sends_both_buckets_in_firecrackers_shape() {
        let set_rate = |s: &str| {
            CtlCommand::Drive(DriveCommand::SetRate {
                id: "root".into(),
                spec: spec(s),
            })
        };
        let c = call(set_rate("bw=10M,bw_burst=1K"));
        assert_eq!((c.method, c.path.as_str()), ("PATCH", "/drives/root"));
        assert_eq!(
            c.body,
            Some(json!({"drive_id": "root", "rate_limiter": {
                "bandwidth": {"size": 10 << 20, "one_time_burst": 1024, "refill_time": 1000},
                "ops": {"size": 0, "one_time_burst": 0, "refill_time": 0},
            }}))
        );
        assert_eq!(
            routed(set_rate("ops=1000")),
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: None,
                rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(0, 0, 0),
                    ops: bucket(1000, 0, 1000),
                }),
            })
        );
        // `none` disables both buckets.
        assert_eq!(
            routed(set_rate("none")),
            ApiRequest::PatchDrive(DrivePatch {
                drive_id: "root".into(),
                path_on_host: None,
                rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(0, 0, 0),
                    ops: bucket(0, 0, 0),
                }),
            })
        );
    }

    #[test]
    fn net_rate_sends_only_the_directions_given() {
        let c = call(CtlCommand::Net(NetCommand::SetRate {
            id: "eth0".into(),
            rx: Some(spec("ops=5")),
            tx: None,
        }));
        assert_eq!(
            (c.method, c.path.as_str()),
            ("PATCH", "/network-interfaces/eth0")
        );
        let body = c.body.unwrap();
        assert_eq!(body["iface_id"], "eth0");
        assert_eq!(body["rx_rate_limiter"]["ops"]["size"], 5);
        assert!(body.get("tx_rate_limiter").is_none());
        assert_eq!(
            routed(CtlCommand::Net(NetCommand::SetRate {
                id: "eth0".into(),
                rx: Some(spec("none")),
                tx: Some(spec("bw=1K")),
            })),
            ApiRequest::PatchNetworkInterface(NetworkInterfacePatch {
                iface_id: "eth0".into(),
                rx_rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(0, 0, 0),
                    ops: bucket(0, 0, 0),
                }),
                tx_rate_limiter: Some(RateLimiter {
                    bandwidth: bucket(1024, 0, 1000),
                    ops: bucket(0, 0, 0),
                }),
            })
        );
    }

    #[test]
    fn input_commands_put_one_event() {
        let input = |event| CtlCommand::Input {
            id: "kbd".into(),
            event,
        };
        let c = call(input(InputCommand::Key {
            name: "enter".into(),
        }));
        assert_eq!((c.method, c.path.as_str()), ("PUT", "/input/kbd"));
        assert_eq!(
            c.body,
            Some(json!({"events": [{"kind": "key", "key": "enter", "action": "tap"}]}))
        );
        for event in [
            InputCommand::Move { x: 1, y: 32767 },
            InputCommand::Click {
                button: "middle".into(),
            },
            InputCommand::Wheel { delta: -1 },
        ] {
            let ApiRequest::PutInput(id, events) = routed(input(event)) else {
                panic!()
            };
            assert_eq!((id.as_str(), events.events.len()), ("kbd", 1));
        }
        let bad = CtlCommand::Input {
            id: "a/b".into(),
            event: InputCommand::Wheel { delta: 1 },
        };
        assert!(matches!(
            request(&bad, None),
            Err(CtlError::InvalidId { .. })
        ));
    }

    #[test]
    fn net_rate_needs_a_direction() {
        let cmd = CtlCommand::Net(NetCommand::SetRate {
            id: "eth0".into(),
            rx: None,
            tx: None,
        });
        assert!(matches!(
            request(&cmd, None),
            Err(CtlError::NoDirection(id)) if id == "eth0"
        ));
    }

    #[test]
    fn ids_that_would_change_the_path_are_refused() {
        for id in ["a/b", "a?b", "", "..", &"x".repeat(65)] {
            let drive = CtlCommand::Drive(DriveCommand::SetRate {
                id: id.into(),
                spec: spec("none"),
            });
            let net = CtlCommand::Net(NetCommand::SetRate {
                id: id.into(),
                rx: None,
                tx: Some(spec("none")),
            });
            for cmd in [drive, net] {
                assert!(
                    matches!(request(&cmd, None), Err(CtlError::InvalidId { .. })),
                    "{id}"
                );
            }
        }
    }
}
