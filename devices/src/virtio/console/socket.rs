//! A Unix stream socket as the console's other end, one client at a time.
//!
//! The socket file is created with mode 0600. An existing path is refused when a process
//! listens on it or when it is not a socket, and replaced when it is a stale socket (nobody
//! listening). A second client is accepted, told the console is busy, and closed. The socket
//! file is removed when the console goes away, if it is still the one petrel created.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::backend::{Read, Write};
use super::ConsoleError;

/// A listening socket and its current client.
pub(super) struct Socket {
    id: String,
    path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file petrel bound, so that only that file is removed.
    file: (u64, u64),
    client: Option<Client>,
    accept_errors: u64,
}

struct Client {
    stream: UnixStream,
    /// The client hung up or failed; it is closed once the event loop no longer watches it.
    gone: bool,
}

impl Socket {
    /// Listens on `path`, replacing a stale socket file there.
    pub(super) fn open(id: &str, path: &Path) -> Result<Self, ConsoleError> {
        let socket_err = |source| ConsoleError::Socket {
            id: id.to_string(),
            path: path.to_path_buf(),
            source,
        };
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ConsoleError::NotASocket {
                    id: id.to_string(),
                    path: path.to_path_buf(),
                })
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ConsoleError::SocketInUse {
                        id: id.to_string(),
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(id, path = %path.display(), "replacing a stale console socket");
                    fs::remove_file(path).map_err(socket_err)?;
                }
                Err(e) => return Err(socket_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e)),
        }
        let listener = bind_private(id, path)?;
        let meta = fs::metadata(path).map_err(socket_err)?;
        tracing::info!(id, path = %path.display(), "console listening");
        Ok(Socket {
            id: id.to_string(),
            path: path.to_path_buf(),
            listener,
            file: (meta.dev(), meta.ino()),
            client: None,
            accept_errors: 0,
        })
    }

    pub(super) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The attached client, unless it has gone.
    pub(super) fn client_fd(&self) -> Option<RawFd> {
        self.client
            .as_ref()
            .filter(|c| !c.gone)
            .map(|c| c.stream.as_raw_fd())
    }

    /// Closes a client that has gone. The caller makes sure the event loop no longer
    /// watches its descriptor.
    pub(super) fn close_gone_client(&mut self) {
        if self.client.as_ref().is_some_and(|c| c.gone) {
            self.client = None;
            tracing::info!(id = self.id, "console client detached");
        }
    }

    /// Accepts every waiting connection: the first becomes the client if there is none,
    /// the others are told the console is busy and closed.
    pub(super) fn accept(&mut self) {
        loop {
            if self.client.as_ref().is_some_and(|c| c.gone) {
                // The slot frees up once the caller closes the old client; the newcomer
                // waits in the backlog until then.
                return;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE, ENOBUFS...: the connection stays queued and is tried again on
                    // the next readiness of the listener. Log the 1st, 2nd, 4th... failure.
                    self.accept_errors += 1;
                    if self.accept_errors.is_power_of_two() {
                        let count = self.accept_errors;
                        tracing::warn!(%e, id = self.id, count, "console accept");
                    }
                    return;
                }
            };
            if self.client.is_some() {
                let msg = format!("petrel: console {} is busy\n", self.id);
                // Best effort: a fresh socket's buffer takes one line without blocking.
                let _ = stream.set_nonblocking(true);
                let _ = (&stream).write(msg.as_bytes());
                tracing::info!(id = self.id, "second console client turned away");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!(%e, id = self.id, "console client dropped");
                continue;
            }
            tracing::info!(id = self.id, "console client attached");
            self.client = Some(Client {
                stream,
                gone: false,
            });
        }
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> Read {
        let Some(client) = self.client.as_mut().filter(|c| !c.gone) else {
            return Read::Closed;
        };
        match client.stream.read(buf) {
            Ok(0) => {
                client.gone = true;
                Read::Closed
            }
            Ok(n) => Read::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Read::WouldBlock,
            Err(e) => {
                tracing::info!(%e, id = %self.id, "console client read failed");
                client.gone = true;
                Read::Closed
            }
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) -> Write {
        let Some(client) = self.client.as_mut().filter(|c| !c.gone) else {
            // Kept (up to the device's output bound) for the next client, so a person who
            // attaches after boot still sees what the guest printed.
            return Write::WouldBlock;
        };
        // SAFETY: `data` is valid for reads of `data.len()` bytes for the call, and the
        // descriptor belongs to `client.stream`, which is open. MSG_NOSIGNAL turns a hung-up
        // peer into EPIPE instead of SIGPIPE.
        let ret = unsafe {
            libc::send(
                client.stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if ret >= 0 {
            return Write::Wrote(ret as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Write::WouldBlock,
            _ => {
                tracing::info!(%e, id = self.id, "console client write failed");
                client.gone = true;
                Write::Lost
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A listening, non-blocking socket at `path` whose file has mode 0600 from the start.
fn bind_private(id: &str, path: &Path) -> Result<UnixListener, ConsoleError> {
    let err = |source| ConsoleError::Socket {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ConsoleError::SocketPathTooLong {
            id: id.to_string(),
            path: path.to_path_buf(),
            max: addr.sun_path.len() - 1,
        });
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;

    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket takes only integer arguments and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // On Linux the file bind() creates takes the socket's own mode (less the umask): set it
    // before binding so that the file is never reachable by others, without touching the
    // process-wide umask.
    // SAFETY: fchmod only changes the mode of the open descriptor `sock` owns.
    if unsafe { libc::fchmod(sock.as_raw_fd(), 0o600) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers its family, the path and the
    // NUL, all within the struct; bind only reads it.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: listen takes the open socket descriptor and a backlog.
    if unsafe { libc::listen(sock.as_raw_fd(), 8) } < 0 {
        let e = io::Error::last_os_error();
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    Ok(UnixListener::from(sock))
}
