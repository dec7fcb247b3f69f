//! The host side: the listening socket, CONNECT lines, timeouts, socket paths.

use super::*;

#[test]
fn reserved_cids_and_busy_paths_are_refused() {
    let s = setup();
    for cid in [0, 1, 2, 1 << 32] {
        let c = VsockConfig {
            id: "v".into(),
            guest_cid: cid,
            uds_path: "/tmp/x".into(),
        };
        assert!(
            matches!(Vsock::new(&c), Err(VsockError::Cid(_))),
            "cid {cid}"
        );
    }
    let again = VsockConfig {
        id: "v".into(),
        guest_cid: 3,
        uds_path: s.uds.clone(),
    };
    assert!(matches!(
        Vsock::new(&again),
        Err(VsockError::SocketInUse(_))
    ));
    let file = s._dir.as_path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let c = VsockConfig {
        uds_path: file,
        ..again
    };
    assert!(matches!(Vsock::new(&c), Err(VsockError::NotASocket(_))));
}

#[test]
fn bad_connect_lines_are_refused() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x1\n",
        b"CONNECT 99999999999\n",
        b"connect 5\n",
        b"CONNECT -1\n",
        &[b'A'; 64],
    ] {
        let mut host = UnixStream::connect(&s.uds).unwrap();
        host.write_all(line).unwrap();
        pump(&mut s.vsock);
        let mut reply = Vec::new();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let read = host.read_to_end(&mut reply);
        if line.len() < 32 {
            read.unwrap();
            assert_eq!(reply, b"ERR\n", "line {:?}", String::from_utf8_lossy(line));
        } else {
            // Closed with unread bytes: the client may see a reset instead of the reply.
            assert!(read.is_err() || reply == b"ERR\n");
        }
    }
    // A client that hangs up before its newline.
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    drop(host);
    pump(&mut s.vsock);
    assert!(d.received().is_empty());
    assert_eq!(s.vsock.metrics().host_refused, 7);
    assert_eq!(s.vsock.connection_count(), 0);
}

#[test]
fn unanswered_host_connection_times_out() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.write_all(b"CONNECT 80\n").unwrap();
    pump(&mut s.vsock);
    assert_eq!(ops(&d.received()), [op::REQUEST]);
    let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
    while s.vsock.connection_count() > 0 {
        assert!(Instant::now() < deadline, "the request never timed out");
        pump(&mut s.vsock);
    }
    assert_eq!(ops(&d.received()), [op::RST]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(s.vsock.metrics().connect_timeouts, 1);
}

#[test]
fn long_or_nul_socket_paths_are_refused() {
    for path in ["a".repeat(MAX_PATH_LEN + 1), "/tmp/a\0b".to_string()] {
        let c = VsockConfig {
            id: "v".into(),
            guest_cid: 3,
            uds_path: path.into(),
        };
        assert!(matches!(c.validate(), Err(VsockError::BadPath(_))));
    }
}

#[test]
fn connect_lines_parse() {
    use crate::virtio::vsock::host::parse_connect;
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
    assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    assert_eq!(parse_connect(b"CONNECT +5"), None);
    assert_eq!(parse_connect(b"CONNECT  5"), None);
    assert_eq!(parse_connect(b"\xff"), None);
}

/// A listening Unix socket at `path` with a backlog of 0, never accepting.
fn tiny_backlog_listener(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid `sockaddr_un`.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, live `sockaddr_un` of `len` bytes; bind and listen touch only
    // the descriptor.
    unsafe {
        assert_eq!(
            libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
    }
    fd
}

#[test]
fn a_host_listener_with_a_full_backlog_refuses_without_stalling_the_device() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 16);
    let _listener = tiny_backlog_listener(&PathBuf::from(format!("{}_8", s.uds.display())));
    let mut answers = Vec::new();
    for port in 1..=4 {
        d.send(&mut s.vsock, d.header(op::REQUEST, port, 8), &[]);
        answers.extend(ops(&d.received()));
    }
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0], op::RESPONSE);
    assert_eq!(*answers.last().unwrap(), op::RST);
    assert!(s.vsock.metrics().connect_failures > 0);
}
