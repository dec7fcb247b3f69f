//! Bad input gets a clear 4xx with `fault_message`, and never reaches the VMM thread.

use serde_json::json;

use super::{fault, Harness};

/// Sends a raw body and returns status and fault message.
fn send(h: &Harness, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, reply) = h
        .client
        .request_bytes(method, path, Some(body.to_vec()))
        .unwrap();
    (status, fault(&reply))
}

#[test]
fn unknown_field_rejected_naming_it() {
    let h = Harness::new();
    let (status, msg) = send(
        &h,
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": 1, "mem_size_mib": 128, "turbo": true}"#,
    );
    assert_eq!(status, 400);
    assert!(msg.contains("unknown field `turbo`"), "{msg}");
    // Nested too.
    let (status, msg) = send(
        &h,
        "PUT",
        "/drives/d",
        br#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false,
             "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "bogus": 2}}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        msg.contains("bogus") && msg.contains("rate_limiter.bandwidth"),
        "{msg}"
    );
    assert!(h.nothing_seen());
}

#[test]
fn malformed_json_rejected() {
    let h = Harness::new();
    for body in [
        &b"{"[..],
        b"{\"vcpu_count\": }",
        b"not json",
        b"{} trailing",
        b"\xff\xfe",
    ] {
        let (status, msg) = send(&h, "PUT", "/machine-config", body);
        assert_eq!(status, 400, "{body:?}");
        assert!(msg.contains("JSON") || msg.contains("invalid"), "{msg}");
    }
    let (status, msg) = send(&h, "PUT", "/machine-config", b"");
    assert_eq!(status, 400);
    assert!(msg.contains("missing request body"), "{msg}");
    assert!(h.nothing_seen());
}

#[test]
fn wrong_types_and_missing_fields_name_the_field() {
    let h = Harness::new();
    let (status, msg) = send(
        &h,
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
    );
    assert_eq!(status, 400);
    assert!(
        msg.contains("vcpu_count") && msg.contains("invalid type"),
        "{msg}"
    );
    let (status, msg) = send(
        &h,
        "PUT",
        "/machine-config",
        br#"{"vcpu_count": -1, "mem_size_mib": 128}"#,
    );
    assert_eq!(status, 400);
    assert!(msg.contains("vcpu_count"), "{msg}");
    let (status, msg) = send(&h, "PUT", "/machine-config", br#"{"vcpu_count": 1}"#);
    assert_eq!(status, 400);
    assert!(msg.contains("missing field `mem_size_mib`"), "{msg}");
    let (status, msg) = send(&h, "PUT", "/actions", br#"{"action_type": "Explode"}"#);
    assert_eq!(status, 400);
    assert!(
        msg.contains("action_type") && msg.contains("Explode"),
        "{msg}"
    );
    let (status, msg) = send(&h, "PATCH", "/vm", br#"{"state": 1}"#);
    assert_eq!(status, 400);
    assert!(msg.contains("state"), "{msg}");
    assert!(h.nothing_seen());
}

#[test]
fn bad_ids_rejected_naming_the_field() {
    let h = Harness::new();
    let long = "a".repeat(65);
    for (path, field) in [
        ("/drives/bad.id".to_string(), "drive_id"),
        ("/drives/bad%20id".to_string(), "drive_id"),
        (format!("/drives/{long}"), "drive_id"),
        ("/drives/".to_string(), "drive_id"),
        ("/network-interfaces/eth:0".to_string(), "iface_id"),
        ("/consoles/c$".to_string(), "id"),
        ("/input/k$".to_string(), "id"),
    ] {
        let (status, msg) = send(&h, "PUT", &path, b"{}");
        assert_eq!(status, 400, "{path}");
        assert!(
            msg.starts_with(&format!("invalid {field} ")),
            "{path}: {msg}"
        );
    }
    let max = "a".repeat(64);
    let body = json!({"drive_id": max, "path_on_host": "/x", "is_root_device": false});
    let (status, _) = h
        .client
        .request("PUT", &format!("/drives/{max}"), Some(body))
        .unwrap();
    assert_eq!(status, 204);
}

#[test]
fn id_mismatch_rejected() {
    let h = Harness::new();
    let (status, msg) = send(
        &h,
        "PUT",
        "/drives/a",
        br#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
    );
    assert_eq!(status, 400);
    assert!(
        msg.contains("drive_id") && msg.contains("does not match"),
        "{msg}"
    );
    let (status, msg) = send(
        &h,
        "PATCH",
        "/network-interfaces/a",
        br#"{"iface_id": "b"}"#,
    );
    assert_eq!(status, 400);
    assert!(msg.contains("iface_id"), "{msg}");
    let (status, msg) = send(
        &h,
        "PUT",
        "/consoles/a",
        br#"{"id": "b", "output": "socket:/x"}"#,
    );
    assert_eq!(status, 400);
    assert!(msg.starts_with("id in the body"), "{msg}");
    assert!(h.nothing_seen());
}

#[test]
fn unknown_route_and_wrong_method() {
    let h = Harness::new();
    for path in [
        "/nope",
        "/drives",
        "/drives/a/b",
        "/vm/",
        "/machine-config/x",
    ] {
        let (status, body) = h.client.request("GET", path, None).unwrap();
        assert_eq!(status, 404, "{path}");
        assert!(fault(&body).contains("no such route"));
    }
    for (method, path) in [
        ("DELETE", "/drives/a"),
        ("GET", "/actions"),
        ("POST", "/vm"),
        ("PUT", "/"),
    ] {
        let (status, body) = h.client.request(method, path, None).unwrap();
        assert_eq!(status, 405, "{method} {path}");
        assert!(fault(&body).contains("not allowed"), "{body}");
    }
    assert!(h.nothing_seen());
}

#[test]
fn oversize_body_413() {
    let h = Harness::new();
    let big = format!(
        r#"{{"kernel_image_path": "/k", "boot_args": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, msg) = send(&h, "PUT", "/boot-source", big.as_bytes());
    assert_eq!(status, 413);
    assert!(msg.contains("too large"), "{msg}");
    assert!(h.nothing_seen());
}

#[test]
fn numa_bodies_are_objects_with_lists_only_where_the_document_has_them() {
    let h = Harness::new();
    for (body, says) in [
        (&br#"[[]]"#[..], "invalid type: array"),
        (br#"{"nodes": [[0, [0], 64]]}"#, "field `nodes[0]`"),
        (
            br#"{"nodes": [{"node_id": 0, "mem_size_mib": 64, "distances": [[1, 20]]}]}"#,
            "field `nodes[0].distances[0]`",
        ),
        (
            br#"{"nodes": [{"node_id": 0, "mem_size_mib": 64, "host_node": [0]}]}"#,
            "host_node",
        ),
        (
            br#"{"nodes": [{"node_id": 0, "mem_size_mib": 64, "distances": [{"node_id": 1, "distance": 300}]}]}"#,
            "distance",
        ),
        (br#"{"nodes": [{"node_id": 0}]}"#, "missing field `mem_size_mib`"),
        (br#"{"nodes": [{"node_id": 0, "mem_size_mib": 64, "zone": 1}]}"#, "unknown field `zone`"),
    ] {
        let (status, msg) = send(&h, "PUT", "/numa", body);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert!(msg.contains(says), "{msg}");
    }
    assert!(h.nothing_seen());
}
