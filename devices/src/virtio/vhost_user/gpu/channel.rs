//! The display channel of a vhost-user-gpu back end (`VHOST_USER_GPU_SET_SOCKET`): petrel's
//! end of a socketpair on which the back end sends requests (a 12-byte header — request,
//! flags, payload size, all u32 — then the payload) and petrel sends the replies some need.
//!
//! The socket is non-blocking: each readiness reads what is there, at most
//! [`MESSAGES_PER_PASS`] messages and [`BYTES_PER_PASS`] bytes, and keeps a message that is
//! only partly in. A payload petrel will not hold (larger than the screen allows) is read and
//! discarded. Replies never wait: a back end waits for each reply before its next request, so
//! one that does not fit in the socket's buffer at once means the back end stopped reading,
//! and the channel is dropped rather than the VMM thread held.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The requests (`VhostUserGpuRequest`).
pub const GET_PROTOCOL_FEATURES: u32 = 1;
pub const SET_PROTOCOL_FEATURES: u32 = 2;
pub const GET_DISPLAY_INFO: u32 = 3;
pub const CURSOR_POS: u32 = 4;
pub const CURSOR_POS_HIDE: u32 = 5;
pub const CURSOR_UPDATE: u32 = 6;
pub const SCANOUT: u32 = 7;
pub const UPDATE: u32 = 8;
pub const DMABUF_SCANOUT: u32 = 9;
pub const DMABUF_UPDATE: u32 = 10;
pub const GET_EDID: u32 = 11;
pub const DMABUF_SCANOUT2: u32 = 12;

/// The header's reply flag.
pub const REPLY_FLAG: u32 = 0x4;
const HEADER_LEN: usize = 12;
/// The largest payload of a request other than UPDATE: CURSOR_UPDATE (position, hot spot
/// and a 64x64 image).
pub const MAX_SMALL_PAYLOAD: usize = 12 + 8 + 64 * 64 * 4;
/// UPDATE's fixed part: scanout id, x, y, width, height.
pub const UPDATE_HEADER_LEN: usize = 20;
/// Messages handled per readiness before the event loop serves others.
pub const MESSAGES_PER_PASS: usize = 64;
/// Bytes read (or discarded) per readiness before the event loop serves others.
pub const BYTES_PER_PASS: usize = 16 << 20;
/// Bytes read (or discarded) at a time.
const CHUNK: usize = 64 << 10;

/// One request from the back end.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    /// The payload; empty when it was discarded (`discarded` bytes).
    pub payload: Vec<u8>,
    pub discarded: usize,
    /// The descriptor that came with the message (a DMABUF_SCANOUT's buffer).
    pub fd: Option<File>,
}

/// Why the channel is no longer usable.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the back end closed the display channel")]
    Closed,
    #[error("display channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("display channel: the back end does not read its replies")]
    ReplyBlocked,
}

/// What has come in of the message being read.
enum Partial {
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    Payload {
        request: u32,
        flags: u32,
        buf: Vec<u8>,
        filled: usize,
    },
    Discard {
        request: u32,
        flags: u32,
        total: usize,
        left: usize,
    },
}

/// petrel's end of the display channel.
pub struct Channel {
    socket: UnixStream,
    partial: Partial,
    /// Where discarded payload bytes are read to.
    sink: Vec<u8>,
    /// A descriptor received with the message being read (a later one replaces it).
    fd: Option<File>,
}

fn header() -> Partial {
    Partial::Header {
        buf: [0; HEADER_LEN],
        filled: 0,
    }
}

impl Channel {
    /// A channel on `socket` (made non-blocking).
    pub fn new(socket: UnixStream) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Channel {
            socket,
            partial: header(),
            sink: vec![0; CHUNK],
            fd: None,
        })
    }

    /// The socket, for the event loop.
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Gives the socket back (to be unwatched, then dropped).
    pub fn into_socket(self) -> UnixStream {
        self.socket
    }

    /// The next whole message, or None until more comes in or once `budget` bytes (counted
    /// down) have been read. `max_payload(request)` is the largest payload petrel keeps for
    /// a request; a larger one is discarded.
    pub fn next_message(
        &mut self,
        max_payload: impl Fn(u32) -> usize,
        budget: &mut usize,
    ) -> Result<Option<Message>, ChannelError> {
        let Channel {
            socket,
            partial,
            sink,
            fd,
        } = self;
        let mut read_some = |buf: &mut [u8]| {
            let (n, received) = read_some(socket, buf, budget)?;
            if received.is_some() {
                *fd = received;
            }
            Ok::<_, ChannelError>(n)
        };
        loop {
            match partial {
                Partial::Header { buf, filled } => {
                    let Some(n) = read_some(&mut buf[*filled..])? else {
                        return Ok(None);
                    };
                    *filled += n;
                    if *filled < HEADER_LEN {
                        continue;
                    }
                    let word =
                        |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                    let (request, flags, size) = (word(0), word(4), word(8) as usize);
                    *partial = if size > max_payload(request) {
                        Partial::Discard {
                            request,
                            flags,
                            total: size,
                            left: size,
                        }
                    } else {
                        let mut buf = Vec::new();
                        buf.try_reserve_exact(size)
                            .map_err(|_| std::io::Error::from(ErrorKind::OutOfMemory))?;
                        buf.resize(size, 0);
                        Partial::Payload {
                            request,
                            flags,
                            buf,
                            filled: 0,
                        }
                    };
                }
                Partial::Payload {
                    request,
                    flags,
                    buf,
                    filled,
                } => {
                    if *filled < buf.len() {
                        let end = buf.len().min(*filled + CHUNK);
                        let Some(n) = read_some(&mut buf[*filled..end])? else {
                            return Ok(None);
                        };
                        *filled += n;
                        continue;
                    }
                    let message = Message {
                        request: *request,
                        flags: *flags,
                        payload: std::mem::take(buf),
                        discarded: 0,
                        fd: fd.take(),
                    };
                    *partial = header();
                    return Ok(Some(message));
                }
                Partial::Discard {
                    request,
                    flags,
                    total,
                    left,
                } => {
                    if *left == 0 {
                        let message = Message {
                            request: *request,
                            flags: *flags,
                            payload: Vec::new(),
                            discarded: *total,
                            fd: fd.take(),
                        };
                        *partial = header();
                        return Ok(Some(message));
                    }
                    let Some(n) = read_some(&mut sink[..(*left).min(CHUNK)])? else {
                        return Ok(None);
                    };
                    *left -= n;
                }
            }
        }
    }

    /// Sends the reply to `request` carrying `payload` (a few KiB at most), without waiting:
    /// a reply that does not go out whole at once is [`ChannelError::ReplyBlocked`].
    pub fn reply(&mut self, request: u32, payload: &[u8]) -> Result<(), ChannelError> {
        let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
        for word in [request, REPLY_FLAG, payload.len() as u32] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        match (&self.socket).write(&msg) {
            Ok(n) if n == msg.len() => Ok(()),
            Ok(_) => Err(ChannelError::ReplyBlocked),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ChannelError::ReplyBlocked),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads into `buf` (not empty), at most `budget` bytes (counted down), and the descriptor
/// that came with them if any; None when nothing is there now or the budget is spent.
fn read_some(
    socket: &UnixStream,
    buf: &mut [u8],
    budget: &mut usize,
) -> Result<(Option<usize>, Option<File>), ChannelError> {
    let len = buf.len().min(*budget);
    if len == 0 {
        return Ok((None, None));
    }
    match socket.recv_with_fd(&mut buf[..len]) {
        Ok((0, _)) => Err(ChannelError::Closed),
        Ok((n, fd)) => {
            *budget -= n;
            if let Some(f) = &fd {
                // recvmsg without MSG_CMSG_CLOEXEC: keep the buffer from a child's exec.
                // SAFETY: F_SETFD on the descriptor just received sets only its flags.
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            Ok((Some(n), fd))
        }
        Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => Ok((None, None)),
        Err(e) => Err(std::io::Error::from_raw_os_error(e.errno()).into()),
    }
}
