//! The web console's TCP listener through the real server: the gate decides before anything
//! reaches the VMM thread, and what passes is routed as on the socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::Harness;
use crate::request::ApiRequest;
use crate::WebListener;

/// Sends a raw request; returns the status and the whole answer.
fn send(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

fn setup() -> (Harness, SocketAddr, String) {
    let web = WebListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = web.local_addr();
    let token = web.url().split("token=").nth(1).unwrap().to_string();
    (Harness::with_web(Some(web)), addr, token)
}

#[test]
fn refused_requests_never_reach_the_vmm_thread() {
    let (h, addr, token) = setup();
    let host = format!("Host: {addr}");
    let bearer = format!("Authorization: Bearer {token}");
    let (status, _) = send(
        addr,
        &format!("PATCH /vm HTTP/1.1\r\n{host}"),
        r#"{"state":"Paused"}"#,
    );
    assert_eq!(status, 401);
    let (status, _) = send(
        addr,
        &format!("PATCH /vm HTTP/1.1\r\nHost: evil.example\r\n{bearer}"),
        r#"{"state":"Paused"}"#,
    );
    assert_eq!(status, 403);
    let (status, _) = send(
        addr,
        &format!("PUT /actions HTTP/1.1\r\n{host}\r\n{bearer}"),
        r#"{"action_type":"Kill"}"#,
    );
    assert_eq!(status, 404);
    assert!(h.nothing_seen());
}

#[test]
fn what_passes_is_routed_as_on_the_socket_with_security_headers() {
    let (h, addr, token) = setup();
    let head =
        |line: &str| format!("{line} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}");
    let (status, answer) = send(addr, &head("GET /serial?from=7"), "");
    assert_eq!(status, 204, "{answer}");
    assert_eq!(h.last_seen(), ApiRequest::GetSerial { from: 7 });
    assert!(
        answer.contains("content-security-policy: default-src 'self'"),
        "{answer}"
    );
    let (status, answer) = send(addr, &head("GET /serial?from=x"), "");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = send(addr, &head("GET /console"), "");
    assert_eq!(status, 200);
    assert!(
        answer.contains("content-type: text/html; charset=utf-8"),
        "{answer}"
    );
    assert!(answer.contains("<canvas id=\"screen\""));
    assert!(h.nothing_seen());
}

#[test]
fn the_page_is_on_the_socket_too_without_a_token() {
    let h = Harness::new();
    for (path, ct) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let (status, body) = h.client.request("GET", path, None).unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, crate::web::asset(path).body, "{ct}");
    }
    let (status, _) = h.client.request("GET", "/serial?from=3", None).unwrap();
    assert_eq!(status, 204);
    assert_eq!(h.last_seen(), ApiRequest::GetSerial { from: 3 });
}
