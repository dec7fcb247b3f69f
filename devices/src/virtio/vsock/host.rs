//! The host side: the listening socket, host clients sending their `CONNECT <port>\n` line,
//! and deadlines.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::conn::{Conn, State};
use super::device::{Vsock, KIND_HANDSHAKE};
use super::packet::op;
use super::{VsockError, CONNECT_TIMEOUT, FIRST_HOST_PORT, MAX_CONNECTIONS};

/// The longest `CONNECT` line accepted, newline included.
const MAX_LINE: usize = 32;
/// The most host clients one call of `accept_clients` takes.
const ACCEPTS_PER_CALL: usize = 64;

/// The socket file petrel bound; removed when the device goes, if it is still that file.
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Listens on `path`, replacing a stale socket file there (nobody listening); refuses a path
/// another process listens on or that is not a socket.
pub fn listen(path: &Path) -> Result<(UnixListener, SocketFile), VsockError> {
    let listen_err = |source| VsockError::Listen {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(VsockError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(VsockError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                fs::remove_file(path).map_err(listen_err)?;
            }
            Err(e) => return Err(listen_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let meta = fs::metadata(path).map_err(listen_err)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// refuses (`WouldBlock`) instead of stalling the VMM thread.
pub fn connect_nonblocking(path: &std::ffi::OsStr) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: all-zero is a valid `sockaddr_un` (family 0, empty path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or with a NUL byte",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by socket(2) above and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    // SAFETY: `addr` is a valid `sockaddr_un` that outlives the call, and `len` covers its
    // family and the path bytes written into it (fewer than `sun_path` holds).
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// A host client that has not finished its `CONNECT` line.
pub struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// Parses `CONNECT <port>` (the newline already removed; a trailing `\r` is allowed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Vsock {
    fn open_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Accepts waiting host clients; each must send its `CONNECT` line within
    /// [`CONNECT_TIMEOUT`].
    ///
    /// At most [`ACCEPTS_PER_CALL`] a call: the listener is level-triggered, so the rest come
    /// on the next, and host clients that connect in a tight loop cannot hold the VMM thread.
    pub(super) fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_CALL {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: stop watching the listener until the next
                    // timer tick, so that the event loop does not spin on it.
                    tracing::warn!(%e, id = self.config.id, "vsock accept; pausing the listener");
                    self.pause_listener();
                    return;
                }
            };
            if self.open_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                self.metrics.host_refused += 1;
                continue;
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, KIND_HANDSHAKE | fd as u64);
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                tracing::warn!(%e, id = self.config.id, "vsock epoll");
                continue;
            }
            let handshake = Handshake {
                stream,
                line: Vec::new(),
                deadline: Instant::now() + CONNECT_TIMEOUT,
            };
            self.handshakes.insert(fd, handshake);
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) -> Option<Handshake> {
        let h = self.handshakes.remove(&fd)?;
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        Some(h)
    }

    /// Reads a client's `CONNECT` line one byte at a time (bytes after the newline are the
    /// guest's and stay in the socket).
    pub(super) fn handshake_readable(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match h.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if h.line.len() + 1 < MAX_LINE => h.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of file, an overlong line, an error.
                _ => {
                    self.refuse(fd, "no complete CONNECT line");
                    return;
                }
            }
        }
        let Some(port) = parse_connect(&h.line) else {
            let line = String::from_utf8_lossy(&h.line).into_owned();
            self.refuse(fd, &format!("malformed line {line:?}"));
            return;
        };
        let Some(h) = self.drop_handshake(fd) else {
            return;
        };
        let host_port = self.allocate_port(port);
        let state = State::Requested {
            deadline: Instant::now() + CONNECT_TIMEOUT,
        };
        let mut conn = match Conn::new(h.stream, state, self.config.guest_cid, port, host_port) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, id = self.config.id, "vsock host client");
                return;
            }
        };
        tracing::debug!(
            id = self.config.id,
            port,
            host_port,
            "host asks for a guest port"
        );
        let request = conn.header(op::REQUEST);
        self.insert_conn(conn);
        self.push_control(request);
    }

    fn refuse(&mut self, fd: RawFd, why: &str) {
        if let Some(mut h) = self.drop_handshake(fd) {
            tracing::debug!(id = self.config.id, why, "vsock host client refused");
            let _ = h.stream.write(b"ERR\n");
            self.metrics.host_refused += 1;
        }
    }

    /// A local port for a host-initiated connection to `guest_port`, unused with that port.
    fn allocate_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(guest_port, port)) {
                return port;
            }
        }
    }

    /// The timer fired: closes host clients and unanswered requests past their deadline, and
    /// watches a paused listener again.
    pub(super) fn tick(&mut self) {
        let _ = self.timer.wait();
        self.resume_listener();
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            self.refuse(fd, "CONNECT line timed out");
        }
        let late: Vec<(u32, u32)> = self
            .conns
            .values()
            .filter(|c| matches!(c.state, State::Requested { deadline } if deadline <= now))
            .map(|c| c.key())
            .collect();
        for key in late {
            tracing::debug!(
                id = self.config.id,
                ?key,
                "guest did not answer a connection"
            );
            self.metrics.connect_timeouts += 1;
            self.reset_conn(key);
        }
    }
}
