//! Slow, half-sent, chunked and abandoned requests; the socket file; a VMM thread gone.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::{fault, Harness};
use crate::server::{ApiServer, ServerError};
use crate::Client;

/// Reads the whole reply until the server closes (or a 10 s timeout).
fn read_reply(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn stalled_clients_do_not_block_others() {
    let h = Harness::new();
    // Half a head, and a whole head with half a body.
    let mut head = UnixStream::connect(h.path()).unwrap();
    head.write_all(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    let mut body = UnixStream::connect(h.path()).unwrap();
    body.write_all(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"kern")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let (status, _) = h.client.request("GET", "/", None).unwrap();
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(h.last_seen(), crate::ApiRequest::GetInstanceInfo);
    assert!(h.nothing_seen());
    drop((head, body));
}

#[test]
fn disconnect_mid_request_leaves_server_working() {
    let h = Harness::new();
    for partial in [
        &b"PUT /drives/a HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"dri"[..],
        b"GET / HT",
        b"\x00\x01garbage\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(h.path()).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
    }
    let (status, _) = h.client.request("GET", "/", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(h.last_seen(), crate::ApiRequest::GetInstanceInfo);
    assert!(h.nothing_seen());
}

#[test]
fn garbage_gets_400_and_server_keeps_running() {
    let h = Harness::new();
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let reply = read_reply(&mut s);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let (status, _) = h.client.request("GET", "/", None).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn chunked_oversize_body_413() {
    let h = Harness::new();
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.write_all(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..5 {
        let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = s.write_all(&chunk);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let reply = read_reply(&mut s);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("fault_message"), "{reply}");
    assert!(h.nothing_seen());
}

#[test]
fn wrong_method_has_allow_header() {
    let h = Harness::new();
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.write_all(b"DELETE /machine-config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut s).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 405"), "{reply}");
    assert!(reply.contains("allow: get, put, patch"), "{reply}");
}

#[test]
fn slow_header_times_out() {
    let h = Harness::new();
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let start = Instant::now();
    let reply = read_reply(&mut s);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert!(h.nothing_seen());
}

#[test]
fn socket_mode_0600_and_removed_on_drop() {
    let mut h = Harness::new();
    let path = h.path().to_owned();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    h.server.take();
    assert!(!path.exists());
    assert!(Client::new(&path).request("GET", "/", None).is_err());
}

#[test]
fn stale_socket_replaced_live_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    let (tx, _rx) = mpsc::channel();
    let server = ApiServer::start(&path, tx.clone(), EventFd::new(0).unwrap()).unwrap();
    assert_eq!(server.path(), Some(path.as_path()));
    let err = ApiServer::start(&path, tx, EventFd::new(0).unwrap()).unwrap_err();
    assert!(matches!(err, ServerError::InUse(_)), "{err}");
    assert!(err.to_string().contains("in use"));
    // The refused start left the live socket alone.
    assert!(UnixStream::connect(&path).is_ok());
    drop(server);
}

#[test]
fn vmm_gone_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel();
    drop(rx);
    let _server = ApiServer::start(&path, tx, EventFd::new(0).unwrap()).unwrap();
    let (status, body) = Client::new(&path).request("GET", "/", None).unwrap();
    assert_eq!(status, 503);
    assert!(fault(&body).contains("VMM"));
}

#[test]
fn vmm_drops_reply_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel::<(crate::ApiRequest, mpsc::Sender<crate::ApiResponse>)>();
    let vmm = std::thread::spawn(move || {
        // Take one request and drop it unanswered.
        let _ = rx.recv();
    });
    let _server = ApiServer::start(&path, tx, EventFd::new(0).unwrap()).unwrap();
    let (status, _) = Client::new(&path)
        .request("GET", "/vm/config", None)
        .unwrap();
    assert_eq!(status, 503);
    vmm.join().unwrap();
}
