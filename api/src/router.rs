//! Routing: turns a method, a path and a body into an [`ApiRequest`], on the API thread.
//!
//! Everything that can be checked without the VMM is checked here: the route, the method,
//! the JSON body (unknown fields are rejected), path ids and their match with the body.

use serde::de::DeserializeOwned;

use crate::request::{ApiRequest, ApiResponse};
use crate::types::InputEvents;
use crate::types::SerialInput;
use crate::types::{
    BootSource, Console, Drive, DrivePatch, InstanceActionInfo, Logger, MachineConfig,
    MachineConfigPatch, Metrics, MigrationReceiveParams, MigrationSendParams, NetworkInterface,
    NetworkInterfacePatch, NumaConfig, SnapshotCreateParams, SnapshotLoadParams, VhostUserBlk,
    VhostUserFs, VhostUserNet, Vm, Vsock,
};

/// Every route and its methods. `{id}` stands for one path segment.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/boot-source", &["PUT"]),
    ("/machine-config", &["GET", "PUT", "PATCH"]),
    ("/drives/{drive_id}", &["PUT", "PATCH"]),
    ("/network-interfaces/{iface_id}", &["PUT", "PATCH"]),
    ("/consoles/{id}", &["PUT"]),
    ("/vhost-user-blk/{id}", &["PUT"]),
    ("/vhost-user-net/{id}", &["PUT"]),
    ("/vhost-user-fs/{id}", &["PUT"]),
    ("/vsock", &["PUT"]),
    ("/numa", &["PUT"]),
    ("/actions", &["PUT"]),
    ("/vm", &["PATCH"]),
    ("/vm/config", &["GET"]),
    ("/snapshot/create", &["PUT"]),
    ("/snapshot/load", &["PUT"]),
    ("/migration", &["GET"]),
    ("/migration/send", &["PUT"]),
    ("/migration/receive", &["PUT"]),
    ("/logger", &["PUT"]),
    ("/metrics", &["GET", "PUT"]),
    ("/input/{id}", &["PUT"]),
    ("/display/screenshot", &["GET"]),
    ("/serial", &["GET", "PUT"]),
    ("/console", &["GET"]),
    ("/console.js", &["GET"]),
    ("/console.css", &["GET"]),
];

/// Most bytes one `PUT /serial` carries: what the UART's receive FIFO holds.
pub const MAX_SERIAL_INPUT: usize = 64;

/// Longest id accepted in a path.
pub const MAX_ID_LEN: usize = 64;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// To the VMM thread.
    Vmm(Box<ApiRequest>),
    /// Answered by the API thread itself with the OpenAPI document.
    OpenApi,
    /// Answered by the API thread itself with a file of the web console.
    Asset(&'static crate::web::Asset),
}

/// Whether `id` is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn bad_request(msg: impl Into<String>) -> ApiResponse {
    ApiResponse::bad_request(msg)
}

/// Matches `path` against a template; on a match returns the `{...}` segment, if any.
pub(crate) fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut id = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some(ts), Some(ps)) if ts.starts_with('{') => id = Some(ps),
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Parses a JSON body, naming the field at fault in the error.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    parse_with_arrays(body, &[])
}

/// [`parse`] for a body whose fields named in `arrays` (paths like `events`) are lists; the
/// objects in them follow the objects-only rule again.
fn parse_with_arrays<T: DeserializeOwned>(body: &[u8], arrays: &[&str]) -> Result<T, ApiResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request(
            "missing request body: this request needs a JSON body",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let kind = if inner.is_data() {
            "invalid request body"
        } else {
            "malformed JSON in request body"
        };
        if path == "." || path.is_empty() {
            bad_request(format!("{kind}: {inner}"))
        } else {
            bad_request(format!("{kind}: field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| bad_request(format!("malformed JSON in request body: {e}")))?;
    // serde also reads a struct from an array of its fields in order (`["/path"]` for
    // `{"metrics_path": "/path"}`); the document allows objects only, and no request body
    // has an array field except those in `arrays`, so any other array is such a struct.
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("malformed JSON in request body: {e}")))?;
    if let Some(at) = first_array(&json, "", arrays) {
        let field = if at.is_empty() {
            String::new()
        } else {
            format!("field `{at}`: ")
        };
        return Err(bad_request(format!(
            "invalid request body: {field}invalid type: array, expected an object"
        )));
    }
    Ok(value)
}

/// `at` without its array indices: `a[0].b[12]` is `a[].b[]`.
fn without_indices(at: &str) -> String {
    let mut out = String::with_capacity(at.len());
    let mut in_index = false;
    for c in at.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push(c);
            }
            ']' => {
                in_index = false;
                out.push(c);
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// The path (`a.b`; empty for the root) of the first array in `value` that is not one of
/// the `allowed` lists (whose elements are searched in turn, as `a.b[0].c`; an allowed list
/// inside another is written `a[].c`), if any.
fn first_array(value: &serde_json::Value, at: &str, allowed: &[&str]) -> Option<String> {
    match value {
        serde_json::Value::Array(items) if allowed.contains(&without_indices(at).as_str()) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_array(v, &format!("{at}[{i}]"), allowed)),
        serde_json::Value::Array(_) => Some(at.to_owned()),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            first_array(v, &path, allowed)
        }),
        _ => None,
    }
}

fn path_id<'a>(field: &str, id: Option<&'a str>) -> Result<&'a str, ApiResponse> {
    let id = id.unwrap_or_default();
    if is_valid_id(id) {
        Ok(id)
    } else {
        Err(bad_request(format!(
            "invalid {field} `{}` in path: it must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, `_` and `-`",
            id.escape_default()
        )))
    }
}

fn same_id(field: &str, path: &str, body: &str) -> Result<(), ApiResponse> {
    if path == body {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{field} in the body (`{}`) does not match the one in the path (`{path}`)",
            body.escape_default()
        )))
    }
}

/// Routes a request without a query string. Errors are ready-made replies (400, 404 or 405).
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Routed, ApiResponse> {
    route_query(method, path, None, body)
}

/// The `key=value` pairs of a query string. Only the routes that take parameters look at
/// it; the others ignore it, as they always have.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `GET /serial`'s `from` parameter: a byte offset, 0 when absent.
fn serial_from(query: Option<&str>) -> Result<u64, ApiResponse> {
    let mut from = None;
    for (key, value) in query_pairs(query) {
        if key != "from" {
            return Err(bad_request(format!(
                "unknown query parameter `{}`: GET /serial takes only `from`",
                key.escape_default()
            )));
        }
        if from.is_some() {
            return Err(bad_request("query parameter `from` given twice"));
        }
        let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        let parsed = value.parse::<u64>().ok().filter(|_| ok);
        from = Some(parsed.ok_or_else(|| {
            bad_request(format!(
                "invalid query parameter `from`: `{}` is not a byte offset (0 to {})",
                value.escape_default(),
                u64::MAX
            ))
        })?);
    }
    Ok(from.unwrap_or(0))
}

fn serial_input(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let input = parse::<SerialInput>(body)?;
    let len = input.data.len();
    if !(1..=MAX_SERIAL_INPUT).contains(&len) {
        return Err(bad_request(format!(
            "invalid request body: field `data`: {len} bytes; send 1 to {MAX_SERIAL_INPUT}"
        )));
    }
    Ok(ApiRequest::PutSerial(input))
}

/// Routes a request; `query` is the part of the target after `?`, if any. Errors are
/// ready-made replies (400, 404 or 405).
pub fn route_query(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Routed, ApiResponse> {
    use ApiRequest as R;
    let Some((template, methods, id)) = ROUTES
        .iter()
        .find_map(|(t, m)| match_template(t, path).map(|id| (*t, *m, id)))
    else {
        return Err(ApiResponse::error(
            404,
            format!("no such route: `{}`", path.escape_default()),
        ));
    };
    let req = match (template, method) {
        ("/", "GET") => R::GetInstanceInfo,
        ("/openapi.json", "GET") => return Ok(Routed::OpenApi),
        ("/boot-source", "PUT") => R::PutBootSource(parse::<BootSource>(body)?),
        ("/machine-config", "GET") => R::GetMachineConfig,
        ("/machine-config", "PUT") => R::PutMachineConfig(parse::<MachineConfig>(body)?),
        ("/machine-config", "PATCH") => R::PatchMachineConfig(parse::<MachineConfigPatch>(body)?),
        ("/drives/{drive_id}", "PUT") => {
            let id = path_id("drive_id", id)?;
            let drive = parse::<Drive>(body)?;
            same_id("drive_id", id, &drive.drive_id)?;
            R::PutDrive(drive)
        }
        ("/drives/{drive_id}", "PATCH") => {
            let id = path_id("drive_id", id)?;
            let patch = parse::<DrivePatch>(body)?;
            same_id("drive_id", id, &patch.drive_id)?;
            R::PatchDrive(patch)
        }
        ("/network-interfaces/{iface_id}", "PUT") => {
            let id = path_id("iface_id", id)?;
            let iface = parse::<NetworkInterface>(body)?;
            same_id("iface_id", id, &iface.iface_id)?;
            R::PutNetworkInterface(iface)
        }
        ("/network-interfaces/{iface_id}", "PATCH") => {
            let id = path_id("iface_id", id)?;
            let patch = parse::<NetworkInterfacePatch>(body)?;
            same_id("iface_id", id, &patch.iface_id)?;
            R::PatchNetworkInterface(patch)
        }
        ("/consoles/{id}", "PUT") => {
            let id = path_id("id", id)?;
            let console = parse::<Console>(body)?;
            same_id("id", id, &console.id)?;
            R::PutConsole(console)
        }
        ("/vhost-user-blk/{id}", "PUT") => {
            let id = path_id("id", id)?;
            let device = parse::<VhostUserBlk>(body)?;
            same_id("id", id, &device.id)?;
            R::PutVhostUserBlk(device)
        }
        ("/vhost-user-net/{id}", "PUT") => {
            let id = path_id("id", id)?;
            let device = parse::<VhostUserNet>(body)?;
            same_id("id", id, &device.id)?;
            R::PutVhostUserNet(device)
        }
        ("/vhost-user-fs/{id}", "PUT") => {
            let id = path_id("id", id)?;
            let device = parse::<VhostUserFs>(body)?;
            same_id("id", id, &device.id)?;
            R::PutVhostUserFs(device)
        }
        ("/vsock", "PUT") => R::PutVsock(parse::<Vsock>(body)?),
        ("/numa", "PUT") => R::PutNuma(parse_with_arrays::<NumaConfig>(
            body,
            &["nodes", "nodes[].cpus", "nodes[].distances"],
        )?),
        ("/actions", "PUT") => R::Action(parse::<InstanceActionInfo>(body)?.action_type),
        ("/vm", "PATCH") => R::PatchVm(parse::<Vm>(body)?.state),
        ("/vm/config", "GET") => R::GetVmConfig,
        ("/snapshot/create", "PUT") => R::CreateSnapshot(parse::<SnapshotCreateParams>(body)?),
        ("/snapshot/load", "PUT") => R::LoadSnapshot(parse::<SnapshotLoadParams>(body)?),
        ("/migration", "GET") => R::GetMigration,
        ("/migration/send", "PUT") => R::MigrationSend(parse::<MigrationSendParams>(body)?),
        ("/migration/receive", "PUT") => {
            R::MigrationReceive(parse::<MigrationReceiveParams>(body)?)
        }
        ("/logger", "PUT") => R::PutLogger(parse::<Logger>(body)?),
        ("/metrics", "GET") => R::GetMetrics,
        ("/metrics", "PUT") => R::PutMetrics(parse::<Metrics>(body)?),
        ("/input/{id}", "PUT") => {
            let id = path_id("id", id)?;
            let events = parse_with_arrays::<InputEvents>(body, &["events"])?;
            events.validate().map_err(bad_request)?;
            R::PutInput(id.to_string(), events)
        }
        ("/display/screenshot", "GET") => R::GetScreenshot,
        ("/serial", "GET") => R::GetSerial {
            from: serial_from(query)?,
        },
        ("/serial", "PUT") => serial_input(body)?,
        ("/console" | "/console.js" | "/console.css", "GET") => {
            return Ok(Routed::Asset(crate::web::asset(template)))
        }
        _ => {
            return Err(ApiResponse::error(
                405,
                format!(
                    "method {method} is not allowed on {template}; allowed: {}",
                    methods.join(", ")
                ),
            ))
        }
    };
    Ok(Routed::Vmm(Box::new(req)))
}

/// The methods allowed on `path`, if it is a route.
pub fn allowed_methods(path: &str) -> Option<&'static [&'static str]> {
    ROUTES
        .iter()
        .find(|(t, _)| match_template(t, path).is_some())
        .map(|(_, m)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("rootfs"));
        assert!(is_valid_id("a-B_9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        for bad in ["a.b", "a/b", "a b", "é", "a%20", "a\0"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn templates() {
        assert_eq!(match_template("/", "/"), Some(None));
        assert_eq!(match_template("/vm", "/vm/config"), None);
        assert_eq!(
            match_template("/drives/{drive_id}", "/drives/a"),
            Some(Some("a"))
        );
        assert_eq!(match_template("/drives/{drive_id}", "/drives"), None);
        assert_eq!(allowed_methods("/metrics"), Some(&["GET", "PUT"][..]));
        assert_eq!(allowed_methods("/nope"), None);
    }

    #[test]
    fn errors_are_ready_replies() {
        let status = |r: Result<Routed, ApiResponse>| match r {
            Err(ApiResponse::Error { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(route("GET", "/x", b"")), 404);
        assert_eq!(status(route("DELETE", "/vm", b"")), 405);
        assert_eq!(status(route("PUT", "/vsock", b"[]")), 400);
        // Structs are objects only, never serde's array form.
        assert_eq!(
            status(route("PATCH", "/machine-config", b"[null, null]")),
            400
        );
        assert_eq!(status(route("PUT", "/metrics", br#"["/m"]"#)), 400);
        assert_eq!(
            status(route(
                "PUT",
                "/drives/d",
                br#"{"drive_id": "d", "path_on_host": "/p", "is_root_device": false,
                     "rate_limiter": {"ops": [1, null, 2]}}"#
            )),
            400
        );
        // Enums are names, never serde's `{"Variant": null}` form.
        assert_eq!(
            status(route(
                "PUT",
                "/actions",
                br#"{"action_type": {"Kill": null}}"#
            )),
            400
        );
        assert_eq!(
            status(route("PATCH", "/vm", br#"{"state": {"Paused": null}}"#)),
            400
        );
        assert_eq!(route("GET", "/openapi.json", b""), Ok(Routed::OpenApi));
        assert_eq!(status(route("POST", "/serial", b"")), 405);
        assert_eq!(
            route("GET", "/", b"ignored"),
            Ok(Routed::Vmm(Box::new(ApiRequest::GetInstanceInfo)))
        );
    }

    #[test]
    fn input_events_are_a_list_of_objects() {
        let status = |r: Result<Routed, ApiResponse>| match r {
            Err(ApiResponse::Error { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        let ok = route(
            "PUT",
            "/input/kbd",
            br#"{"events": [{"kind": "key", "key": "a", "action": "tap"}]}"#,
        )
        .unwrap();
        let Routed::Vmm(req) = ok else { panic!() };
        assert!(
            matches!(*req, ApiRequest::PutInput(ref id, ref e) if id == "kbd" && e.events.len() == 1)
        );
        for bad in [
            &br#"{"events": []}"#[..],
            br#"{"events": [[]]}"#,
            br#"{"events": [{"kind": "move", "x": [1], "y": 2}]}"#,
            br#"{"events": [{"kind": "move", "x": 1, "y": 40000}]}"#,
            br#"[{"kind": "wheel", "delta": 1}]"#,
            br#"{"events": null}"#,
            b"",
        ] {
            assert_eq!(
                status(route("PUT", "/input/kbd", bad)),
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            status(route("PUT", "/input/a.b", br#"{"events": []}"#)),
            400
        );
        assert_eq!(status(route("GET", "/input/kbd", b"")), 405);
        // Other bodies still refuse arrays under the same name.
        assert_eq!(status(route("PUT", "/metrics", br#"{"events": []}"#)), 400);
    }

    #[test]
    fn serial_takes_an_offset_in_the_query() {
        let get = |q: Option<&str>| route_query("GET", "/serial", q, b"");
        let from = |n| Ok(Routed::Vmm(Box::new(ApiRequest::GetSerial { from: n })));
        assert_eq!(get(None), from(0));
        assert_eq!(get(Some("")), from(0));
        assert_eq!(get(Some("from=42")), from(42));
        assert_eq!(get(Some("from=18446744073709551615")), from(u64::MAX));
        for bad in [
            "from=",
            "from=-1",
            "from=+1",
            "from=1e3",
            "from=0x10",
            "from=18446744073709551616",
            "from=1&from=2",
            "to=3",
            "from",
            "from=%31",
        ] {
            assert!(
                matches!(get(Some(bad)), Err(ApiResponse::Error { status: 400, .. })),
                "{bad}"
            );
        }
        // Routes without parameters ignore a query, as before.
        assert!(route_query("GET", "/", Some("x=1"), b"").is_ok());
    }

    #[test]
    fn serial_input_is_one_to_64_bytes() {
        let put = |body: &str| route("PUT", "/serial", body.as_bytes());
        let ok = |d: &str| {
            Ok(Routed::Vmm(Box::new(ApiRequest::PutSerial(SerialInput {
                data: d.into(),
            }))))
        };
        assert_eq!(put(r#"{"data": "ls\n"}"#), ok("ls\n"));
        let max = "x".repeat(64);
        assert_eq!(put(&format!(r#"{{"data": "{max}"}}"#)), ok(&max));
        for bad in [
            r#"{"data": ""}"#.to_string(),
            format!(r#"{{"data": "{}"}}"#, "x".repeat(65)),
            // 22 three-byte characters: 66 bytes.
            format!(r#"{{"data": "{}"}}"#, "☃".repeat(22)),
            r#"{"data": 5}"#.to_string(),
            r#"{"data": "a", "more": 1}"#.to_string(),
            r#"{}"#.to_string(),
            String::new(),
        ] {
            assert!(
                matches!(put(&bad), Err(ApiResponse::Error { status: 400, .. })),
                "{bad}"
            );
        }
    }
}
