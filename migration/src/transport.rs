//! Connections and listeners over Unix and TCP stream sockets.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::MigrationError;
use crate::frame::{self, PayloadReader, STAGING};
use crate::message::Message;
use crate::url::MigrationUrl;

#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected migration stream. Not buffered on the read side, so a clone from
/// [`Connection::try_clone`] sees the same byte position (it is meant for `shutdown` from
/// another thread).
#[derive(Debug)]
pub struct Connection {
    pub(crate) stream: Stream,
    /// Staging buffer for streamed frames, kept between frames.
    pub(crate) staging: Vec<u8>,
}

impl Connection {
    /// Wraps a connected Unix stream (for a socketpair, or a socket received elsewhere).
    pub fn from_unix(stream: UnixStream) -> Connection {
        Connection {
            stream: Stream::Unix(stream),
            staging: Vec::new(),
        }
    }

    /// Wraps a connected TCP stream, setting TCP_NODELAY.
    pub fn from_tcp(stream: TcpStream) -> Result<Connection, MigrationError> {
        stream
            .set_nodelay(true)
            .map_err(MigrationError::SocketOption)?;
        Ok(Connection {
            stream: Stream::Tcp(stream),
            staging: Vec::new(),
        })
    }

    /// Connects to `url`. For TCP, `timeout` bounds each address tried; a Unix connect does
    /// not wait for the listener to accept, so it does not block.
    pub fn connect(url: &MigrationUrl, timeout: Duration) -> Result<Connection, MigrationError> {
        match url {
            MigrationUrl::Unix(path) => UnixStream::connect(path)
                .map(Connection::from_unix)
                .map_err(|source| MigrationError::Connect {
                    url: url.to_string(),
                    source,
                }),
            MigrationUrl::Tcp(host, port) => {
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|source| MigrationError::Resolve {
                        host: host.clone(),
                        source,
                    })?
                    .collect();
                let mut last = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => return Connection::from_tcp(s),
                        Err(e) => last = Some(e),
                    }
                }
                match last {
                    Some(source) => Err(MigrationError::Connect {
                        url: url.to_string(),
                        source,
                    }),
                    None => Err(MigrationError::NoAddress { host: host.clone() }),
                }
            }
        }
    }

    /// Sets the read and write timeouts (`None`: wait forever). A timeout makes `send`/`recv`
    /// fail with `MigrationError::Timeout`.
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), MigrationError> {
        let r = match &self.stream {
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
        };
        r.map_err(MigrationError::SocketOption)
    }

    /// Sends one message; returns the bytes it took on the wire.
    pub fn send(&mut self, msg: &Message) -> Result<u64, MigrationError> {
        let payload = msg.encode_payload()?;
        let frame = frame::encode_frame(msg.kind(), &payload)?;
        self.stream
            .write_all(&frame)
            .map_err(MigrationError::from_io)?;
        Ok(frame.len() as u64)
    }

    /// Receives one message. A peer that closed between frames is `Closed`; in a frame,
    /// `Truncated`.
    pub fn recv(&mut self) -> Result<Message, MigrationError> {
        let (kind, len) = frame::read_header(&mut self.stream)?.ok_or(MigrationError::Closed)?;
        let mut reader = PayloadReader::new(&mut self.stream, kind, len);
        let msg = Message::decode(&mut reader)?;
        reader.finish()?;
        Ok(msg)
    }

    /// Shuts both directions down: a `send` or `recv` blocked in another thread (on a clone)
    /// returns at once.
    pub fn shutdown(&self) {
        let _ = match &self.stream {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Another handle on the same socket, for `shutdown` from another thread.
    pub fn try_clone(&self) -> Result<Connection, MigrationError> {
        let stream = match &self.stream {
            Stream::Unix(s) => Stream::Unix(s.try_clone().map_err(MigrationError::Io)?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone().map_err(MigrationError::Io)?),
        };
        Ok(Connection {
            stream,
            staging: Vec::new(),
        })
    }

    pub(crate) fn staging(&mut self) -> (&mut Stream, &mut Vec<u8>) {
        if self.staging.capacity() < STAGING {
            self.staging.reserve_exact(STAGING);
        }
        (&mut self.stream, &mut self.staging)
    }
}

#[derive(Debug)]
enum Inner {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// Listens for the one incoming migration connection.
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
}

impl Listener {
    /// Listens on `url`. A Unix socket file left by a process that no longer listens is
    /// replaced; a path that is not a socket, or a socket someone listens on, is refused.
    pub fn bind(url: &MigrationUrl) -> Result<Listener, MigrationError> {
        let bind_err = |source| MigrationError::Bind {
            url: url.to_string(),
            source,
        };
        let inner = match url {
            MigrationUrl::Unix(path) => {
                remove_stale_socket(path)?;
                Inner::Unix(UnixListener::bind(path).map_err(bind_err)?, path.clone())
            }
            MigrationUrl::Tcp(host, port) => {
                Inner::Tcp(TcpListener::bind((host.as_str(), *port)).map_err(bind_err)?)
            }
        };
        Ok(Listener { inner })
    }

    /// Where this listener can be reached; a TCP port 0 is replaced by the real port.
    pub fn local_url(&self) -> MigrationUrl {
        match &self.inner {
            Inner::Unix(_, path) => MigrationUrl::Unix(path.clone()),
            Inner::Tcp(l) => match l.local_addr() {
                Ok(a) => MigrationUrl::Tcp(a.ip().to_string(), a.port()),
                Err(_) => MigrationUrl::Tcp(String::new(), 0),
            },
        }
    }

    fn fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix(l, _) => l.as_raw_fd(),
            Inner::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Waits up to `timeout` for a connection.
    pub fn accept(&self, timeout: Duration) -> Result<Connection, MigrationError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd on our stack and we pass a count of exactly one;
            // the listening fd stays open for the duration of the call since we borrow self.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(MigrationError::Accept(e));
            }
            if n == 0 {
                if left.is_zero() {
                    return Err(MigrationError::AcceptTimeout(timeout));
                }
                continue;
            }
            return match &self.inner {
                Inner::Unix(l, _) => l
                    .accept()
                    .map(|(s, _)| Connection::from_unix(s))
                    .map_err(MigrationError::Accept),
                Inner::Tcp(l) => match l.accept() {
                    Ok((s, _)) => Connection::from_tcp(s),
                    Err(e) => Err(MigrationError::Accept(e)),
                },
            };
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Inner::Unix(_, path) = &self.inner {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), MigrationError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MigrationError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(MigrationError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(MigrationError::SocketInUse {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path).map_err(|source| MigrationError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}
