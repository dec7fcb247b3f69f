//! Connections and listeners over Unix and TCP stream sockets.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::error::MigrationError;
use crate::frame::{self, PayloadReader};
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
    /// The send buffer is raised (best effort, up to `net.core.wmem_max`): with the default
    /// ~200 KiB a 1 MiB write is cut into many small socket buffers.
    pub fn from_unix(stream: UnixStream) -> Connection {
        set_sndbuf(&stream, UNIX_SNDBUF);
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

    /// Same host only: hands `file`, the guest's memory of `size` bytes, to the peer: a
    /// MemoryFd message, then one byte that carries the descriptor (`SCM_RIGHTS`). The peer
    /// takes it with [`Connection::recv_memory_fd`] after it received the message.
    pub fn send_memory_fd(&mut self, file: &File, size: u64) -> Result<u64, MigrationError> {
        let Stream::Unix(s) = &mut self.stream else {
            return Err(MigrationError::NotLocal);
        };
        let frame = encode(&Message::MemoryFd { size })?;
        s.write_all(&frame).map_err(MigrationError::from_io)?;
        s.send_with_fd(&[0u8][..], file.as_raw_fd())
            .map_err(|e| MigrationError::MemoryFd(e.to_string()))?;
        Ok(frame.len() as u64 + 1)
    }

    /// The descriptor that follows a MemoryFd message just received, close-on-exec (like
    /// every descriptor petrel opens: a child the VMM starts must not keep guest RAM).
    pub fn recv_memory_fd(&mut self) -> Result<File, MigrationError> {
        let Stream::Unix(s) = &self.stream else {
            return Err(MigrationError::NotLocal);
        };
        let mut byte = [0u8; 1];
        let file = match s.recv_with_fd(&mut byte) {
            Ok((1, Some(file))) => file,
            Ok((0, _)) => return Err(MigrationError::Closed),
            Ok(_) => {
                return Err(MigrationError::MemoryFd(
                    "no descriptor came with the MemoryFd message".into(),
                ))
            }
            Err(e) if e.errno() == libc::EAGAIN => return Err(MigrationError::Timeout),
            Err(e) => return Err(MigrationError::MemoryFd(e.to_string())),
        };
        // recvmsg without MSG_CMSG_CLOEXEC (vmm-sys-util passes no flags) leaves it inheritable.
        // SAFETY: `file` owns the open descriptor for this call; F_SETFD only changes its
        // descriptor flags.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(MigrationError::MemoryFd(format!(
                "cannot make the received descriptor close-on-exec: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(file)
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
        let frame = encode(msg)?;
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

    /// The stream and the staging buffer, which `FrameWriter::begin` sizes on first use.
    pub(crate) fn staging(&mut self) -> (&mut Stream, &mut Vec<u8>) {
        (&mut self.stream, &mut self.staging)
    }
}

/// `msg` as one whole frame.
fn encode(msg: &Message) -> Result<Vec<u8>, MigrationError> {
    frame::encode_frame(msg.kind(), &msg.encode_payload()?)
}

/// Send buffer asked for on Unix streams.
const UNIX_SNDBUF: libc::c_int = 4 << 20;

fn set_sndbuf(stream: &UnixStream, size: libc::c_int) {
    // SAFETY: the fd is an open socket owned by `stream` for the duration of the call, and
    // the option value points at a c_int of the length passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
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
    /// Telling the two apart takes one connection attempt: a live listener there sees one
    /// connection that closes at once.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, Kind, CHECKSUM_LEN, HEADER_LEN};
    use crate::message::tests::every_message;
    use crate::PROTOCOL_VERSION;

    fn pair() -> (Connection, Connection) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::from_unix(a), Connection::from_unix(b))
    }

    /// A connection that reads `bytes` and then sees the peer close.
    fn reading(bytes: &[u8]) -> Connection {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(bytes).unwrap();
        drop(a);
        let c = Connection::from_unix(b);
        c.set_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    fn round_trip(mut tx: Connection, mut rx: Connection) {
        let msgs = every_message();
        let sender = std::thread::spawn(move || {
            for m in &every_message() {
                let n = tx.send(m).unwrap();
                let payload = m.encode_payload().unwrap();
                assert_eq!(n, (HEADER_LEN + payload.len() + CHECKSUM_LEN) as u64);
            }
        });
        for want in msgs {
            assert_eq!(rx.recv().unwrap(), want);
        }
        sender.join().unwrap();
        assert!(matches!(rx.recv(), Err(MigrationError::Closed)));
    }

    #[test]
    fn every_message_round_trips_over_a_unix_socket_pair() {
        let (a, b) = pair();
        round_trip(a, b);
    }

    #[test]
    fn every_message_round_trips_over_tcp_loopback() {
        let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let url = l.local_url();
        assert!(matches!(&url, MigrationUrl::Tcp(h, p) if h == "127.0.0.1" && *p != 0));
        let tx = Connection::connect(&url, Duration::from_secs(5)).unwrap();
        let rx = l.accept(Duration::from_secs(5)).unwrap();
        round_trip(tx, rx);
    }

    #[test]
    fn every_message_round_trips_through_a_unix_listener() {
        let dir = tempfile::tempdir().unwrap();
        let url = MigrationUrl::Unix(dir.path().join("mig.sock"));
        let l = Listener::bind(&url).unwrap();
        assert_eq!(l.local_url(), url);
        let tx = Connection::connect(&url, Duration::from_secs(5)).unwrap();
        let rx = l.accept(Duration::from_secs(5)).unwrap();
        round_trip(tx, rx);
    }

    fn good_frame() -> Vec<u8> {
        encode_frame(Kind::RoundEnd, &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]).unwrap()
    }

    #[test]
    fn a_good_frame_is_read() {
        assert_eq!(
            reading(&good_frame()).recv().unwrap(),
            Message::RoundEnd { round: 1, pages: 2 }
        );
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut f = good_frame();
        f[0] = b'X';
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::BadMagic(m)) if &m == b"XTMG"
        ));
    }

    #[test]
    fn unknown_type_is_refused() {
        let mut f = good_frame();
        f[4..8].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::UnknownType(99))
        ));
    }

    #[test]
    fn length_over_the_maximum_is_refused_before_reading_the_payload() {
        let mut f = good_frame();
        f[8..16].copy_from_slice(&(64u64 << 10 | 1).to_le_bytes());
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::FrameTooLong { kind: "RoundEnd", len, max })
                if len == 65537 && max == 65536
        ));
        // A bulk type has the bigger limit, and a huge length allocates nothing.
        f[4..8].copy_from_slice(&(Kind::Pages as u32).to_le_bytes());
        f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::FrameTooLong { kind: "Pages", max, .. }) if max == 64 << 20
        ));
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut f = good_frame();
        f[HEADER_LEN] ^= 1; // payload bit flip
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::BadChecksum { kind: "RoundEnd" })
        ));
        let mut f = good_frame();
        *f.last_mut().unwrap() ^= 1; // checksum bit flip
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::BadChecksum { kind: "RoundEnd" })
        ));
    }

    #[test]
    fn truncated_frames_are_refused_where_they_stop() {
        let f = good_frame();
        assert!(matches!(
            reading(&f[..10]).recv(),
            Err(MigrationError::Truncated {
                part: "frame header",
                missing: 6
            })
        ));
        assert!(matches!(
            reading(&f[..HEADER_LEN + 5]).recv(),
            Err(MigrationError::Truncated {
                part: "payload",
                ..
            })
        ));
        assert!(matches!(
            reading(&f[..f.len() - 1]).recv(),
            Err(MigrationError::Truncated {
                part: "checksum",
                missing: 1
            })
        ));
        assert!(matches!(reading(&[]).recv(), Err(MigrationError::Closed)));
    }

    #[test]
    fn payload_that_does_not_match_its_type_is_malformed() {
        let short = encode_frame(Kind::RoundEnd, &[1, 2, 3]).unwrap();
        assert!(matches!(
            reading(&short).recv(),
            Err(MigrationError::Malformed {
                kind: "RoundEnd",
                ..
            })
        ));
        let long = encode_frame(Kind::Running, &[0]).unwrap();
        assert!(matches!(
            reading(&long).recv(),
            Err(MigrationError::Malformed {
                kind: "Running",
                ..
            })
        ));
        let reason = encode_frame(Kind::Abort, &[0xff, 0xfe]).unwrap();
        assert!(matches!(
            reading(&reason).recv(),
            Err(MigrationError::Malformed { kind: "Abort", .. })
        ));
        // 2 records announced, a data run claiming more pages than the frame holds.
        let mut p = crate::message::pages_header(0, 2).to_vec();
        p.extend_from_slice(&crate::message::record_header(false, 0, 1000));
        p.extend_from_slice(&[0; 13]);
        let pages = encode_frame(Kind::Pages, &p).unwrap();
        assert!(matches!(
            reading(&pages).recv(),
            Err(MigrationError::Malformed { kind: "Pages", .. })
        ));
        // More records than the frame can hold is refused before allocating them.
        let p = crate::message::pages_header(0, 1 << 20).to_vec();
        assert!(matches!(
            reading(&encode_frame(Kind::Pages, &p).unwrap()).recv(),
            Err(MigrationError::Malformed { kind: "Pages", .. })
        ));
    }

    #[test]
    fn hello_of_another_version_is_refused() {
        let mut p = (PROTOCOL_VERSION + 1).to_le_bytes().to_vec();
        p.extend_from_slice(b"{}");
        let f = encode_frame(Kind::Hello, &p).unwrap();
        assert!(matches!(
            reading(&f).recv(),
            Err(MigrationError::UnsupportedVersion { theirs: 2, ours: 1 })
        ));
    }

    #[test]
    fn recv_times_out_and_shutdown_from_a_clone_unblocks_it() {
        let (_a, mut b) = pair();
        b.set_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(b.recv(), Err(MigrationError::Timeout)));

        b.set_timeout(None).unwrap();
        let clone = b.try_clone().unwrap();
        let t = std::thread::spawn(move || b.recv());
        std::thread::sleep(Duration::from_millis(50));
        clone.shutdown();
        assert!(matches!(t.join().unwrap(), Err(MigrationError::Closed)));
    }

    #[test]
    fn listener_replaces_a_stale_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mig.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale); // the file stays behind, nobody listens
        assert!(path.exists());
        let l = Listener::bind(&MigrationUrl::Unix(path.clone())).unwrap();
        let _c = Connection::connect(&l.local_url(), Duration::from_secs(1)).unwrap();
        l.accept(Duration::from_secs(1)).unwrap();
        drop(l);
        assert!(
            !path.exists(),
            "the listener removes its socket when dropped"
        );
    }

    #[test]
    fn listener_refuses_a_regular_file_and_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            Listener::bind(&MigrationUrl::Unix(path.clone())),
            Err(MigrationError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn listener_refuses_a_socket_someone_listens_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = MigrationUrl::Unix(dir.path().join("mig.sock"));
        let _first = Listener::bind(&url).unwrap();
        assert!(matches!(
            Listener::bind(&url),
            Err(MigrationError::SocketInUse { .. })
        ));
    }

    #[test]
    fn accept_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let l = Listener::bind(&MigrationUrl::Unix(dir.path().join("s"))).unwrap();
        assert!(matches!(
            l.accept(Duration::from_millis(30)),
            Err(MigrationError::AcceptTimeout(_))
        ));
    }

    #[test]
    fn connect_to_nobody_names_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = MigrationUrl::Unix(dir.path().join("none"));
        let e = Connection::connect(&url, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, MigrationError::Connect { .. }));
        assert!(e.to_string().contains("none"));
    }

    #[test]
    fn every_message_round_trips_over_tcp_ipv6_loopback_by_url() {
        let Ok(l) = Listener::bind(&"tcp:[::1]:0".parse().unwrap()) else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let url = l.local_url();
        assert!(url.to_string().starts_with("tcp:[::1]:"), "{url}");
        let tx =
            Connection::connect(&url.to_string().parse().unwrap(), Duration::from_secs(5)).unwrap();
        let rx = l.accept(Duration::from_secs(5)).unwrap();
        round_trip(tx, rx);
    }

    #[test]
    fn tcp_connects_to_a_host_name() {
        let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let MigrationUrl::Tcp(_, port) = l.local_url() else {
            unreachable!()
        };
        let by_name = MigrationUrl::Tcp("localhost".into(), port);
        // localhost may resolve to ::1 first; connect tries each address.
        let mut tx = Connection::connect(&by_name, Duration::from_secs(5)).unwrap();
        let mut rx = l.accept(Duration::from_secs(5)).unwrap();
        tx.send(&Message::Running).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::Running);
    }

    #[test]
    fn a_pages_frame_cut_in_its_page_data_is_truncated() {
        let msg = Message::Pages {
            round: 0,
            pages: vec![crate::PageRecord::Data {
                first: 0,
                data: vec![5; 3 * crate::PAGE_SIZE],
            }],
        };
        let f = encode_frame(Kind::Pages, &msg.encode_payload().unwrap()).unwrap();
        assert!(matches!(
            reading(&f[..HEADER_LEN + 100]).recv(),
            Err(MigrationError::Truncated {
                part: "payload",
                ..
            })
        ));
        assert_eq!(reading(&f).recv().unwrap(), msg);
    }

    #[test]
    fn memory_handed_over_on_a_unix_socket_is_the_same_file_and_tcp_refuses() {
        let (mut tx, mut rx) = pair();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"guest ram").unwrap();
        tx.send_memory_fd(&file, 9).unwrap();
        tx.send(&Message::Running).unwrap();
        assert_eq!(rx.recv().unwrap(), Message::MemoryFd { size: 9 });
        let mut got = rx.recv_memory_fd().unwrap();
        // SAFETY: F_GETFD only reads the flags of the descriptor `got` owns.
        let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec");
        // The very file: a write through one shows through the other.
        use std::io::Seek;
        got.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "guest ram");
        // The stream goes on after the descriptor's byte.
        assert_eq!(rx.recv().unwrap(), Message::Running);

        // A MemoryFd message without its descriptor (a peer that lies) is an error.
        let (mut tx, mut rx) = pair();
        tx.send(&Message::MemoryFd { size: 9 }).unwrap();
        tx.send(&Message::Running).unwrap();
        rx.recv().unwrap();
        assert!(matches!(
            rx.recv_memory_fd(),
            Err(MigrationError::MemoryFd(_))
        ));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut tcp = Connection::from_tcp(a).unwrap();
        assert!(matches!(
            tcp.send_memory_fd(&file, 9),
            Err(MigrationError::NotLocal)
        ));
    }
}
