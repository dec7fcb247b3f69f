//! Every way migration can fail, each refusal naming what is wrong.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::url::UrlError;

/// An error of the migration wire protocol or its transport.
///
/// After any error from `send`, `recv` or `send_pages` the connection may be out of step with
/// the peer (half a frame read or written) and must be dropped.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("bad migration URL: {0}")]
    Url(#[from] UrlError),
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: io::Error },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot listen on {url}: {source}")]
    Bind { url: String, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another process is listening on this socket")]
    SocketInUse { path: PathBuf },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("no incoming connection within {0:?}")]
    AcceptTimeout(Duration),
    #[error("accept failed: {0}")]
    Accept(io::Error),
    #[error("cannot set a socket option: {0}")]
    SocketOption(io::Error),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("the peer closed the connection")]
    Closed,
    #[error("guest memory can be handed over only on a Unix socket (the same host)")]
    NotLocal,
    #[error("handing over guest memory: {0}")]
    MemoryFd(String),
    #[error("the peer closed the connection mid-frame (in the {part}, {missing} bytes missing)")]
    Truncated { part: &'static str, missing: u64 },
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unknown message type {0}")]
    UnknownType(u32),
    #[error("{kind} frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLong {
        kind: &'static str,
        len: u64,
        max: u64,
    },
    #[error("checksum mismatch in a {kind} frame")]
    BadChecksum { kind: &'static str },
    #[error("malformed {kind} payload: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("the peer speaks migration protocol version {theirs}, this side speaks {ours}")]
    UnsupportedVersion { theirs: u32, ours: u32 },
    #[error("cannot send a {kind} message of {len} bytes: the maximum is {max}")]
    MessageTooLarge {
        kind: &'static str,
        len: u64,
        max: u64,
    },
    #[error("invalid {kind} message to send: {reason}")]
    InvalidMessage { kind: &'static str, reason: String },
    #[error("page {index} is outside guest memory ({pages} pages)")]
    PageOutOfRange { index: u64, pages: u64 },
    #[error("memory region {region} is {len} bytes, not a whole number of pages")]
    UnalignedRegion { region: usize, len: usize },
    #[error("connection I/O error: {0}")]
    Io(io::Error),
}

impl MigrationError {
    /// Maps an I/O error of a read or write on an established connection.
    pub(crate) fn from_io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => MigrationError::Timeout,
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => MigrationError::Closed,
            _ => MigrationError::Io(e),
        }
    }
}
