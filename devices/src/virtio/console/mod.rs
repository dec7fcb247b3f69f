//! virtio-console (virtio 1.2, section 5.3) with a single port: a `hvc` console for the guest
//! whose other end is stdout, a file, a host pty, a Unix socket, or nothing.
//!
//! - Queues: `receiveq` (0, host to guest) and `transmitq` (1, guest to host), 256 entries
//!   each. No `VIRTIO_CONSOLE_F_MULTIPORT`, so no control queues.
//! - `VIRTIO_CONSOLE_F_SIZE`: the config space carries the console size (a pty's window size,
//!   the terminal's size for stdout, 80x25 otherwise). A pty's size is re-read whenever the
//!   device handles pty input; a change bumps the config generation and raises a config
//!   interrupt.
//! - Output (transmitq) never stalls the guest: every chain is used as soon as its bytes are
//!   taken. Bytes a non-blocking backend (pty, socket client) cannot take at once wait in a
//!   buffer of [`OUTPUT_BUFFER_SIZE`] bytes, flushed when the backend is writable again or a
//!   socket client attaches (so a person attaching late sees what the guest printed); past
//!   that bound output is dropped and counted in
//!   [`ConsoleMetrics::tx_dropped_bytes`]. Stdout and files are written with ordinary
//!   (blocking) writes, as the serial console does.
//! - Input (receiveq) from a pty or a socket client is read into a pending buffer of at most
//!   [`INPUT_BUFFER_SIZE`] bytes and copied into the buffers the driver posts. While that
//!   buffer is full the device stops reading the backend; a notification of `receiveq` (the
//!   driver posted buffers) resumes it. No byte is lost, and the pending bytes are part of
//!   the saved state.
//! - A socket serves one client at a time. A second client is accepted, told
//!   `petrel: console <id> is busy` and closed. When the client goes, the device listens
//!   again; attach with `socat - UNIX-CONNECT:PATH` (or `socat -,raw,echo=0 ...`).
//! - A malformed chain (a write-only descriptor on transmitq, a read-only one on receiveq, a
//!   buffer outside guest memory) is used with length 0, counted in
//!   [`ConsoleMetrics::malformed`] and logged (rate-limited).

mod backend;
mod device;
mod persist;
mod pty;
mod socket;
mod transfer;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::legacy::SerialOutput;

pub use device::{Console, ConsoleMetrics};
pub use persist::ConsoleState;

/// The console size feature: `cols` and `rows` in the config space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Host input held for the guest while it has no receive buffers posted.
pub const INPUT_BUFFER_SIZE: usize = 64 << 10;
/// Guest output held while a pty or socket client cannot take it.
pub const OUTPUT_BUFFER_SIZE: usize = 64 << 10;
/// The size reported when the backend has none.
pub const DEFAULT_SIZE: (u16, u16) = (80, 25);

/// One virtio console: its name and where its other end is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A name for logs and the pty announcement.
    pub id: String,
    /// The host side.
    pub output: ConsoleOutput,
}

/// The host side of a console. Written as `stdout`, `file:PATH`, `pty`, `socket:PATH` or
/// `none`, on the command line and in JSON alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConsoleOutput {
    /// Output to petrel's standard output; no input (the serial console owns stdin).
    Stdout,
    /// Output appended to a file, created if missing; no input.
    File(PathBuf),
    /// A new host pty: output to it, input from it.
    Pty,
    /// A Unix stream socket petrel listens on: output to the client, input from it.
    Socket(PathBuf),
    /// Output discarded; no input.
    None,
}

/// A console output that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid console output {0:?}: expected stdout, none, pty, file:PATH or socket:PATH")]
pub struct ConsoleOutputError(pub String);

impl FromStr for ConsoleOutput {
    type Err = ConsoleOutputError;
    fn from_str(s: &str) -> Result<Self, ConsoleOutputError> {
        // The forms the serial port knows mean the same here.
        if let Ok(serial) = s.parse::<SerialOutput>() {
            return Ok(serial.into());
        }
        match s {
            "pty" => Ok(Self::Pty),
            _ => match s.strip_prefix("socket:") {
                Some(p) if !p.is_empty() => Ok(Self::Socket(PathBuf::from(p))),
                _ => Err(ConsoleOutputError(s.to_string())),
            },
        }
    }
}

impl From<SerialOutput> for ConsoleOutput {
    fn from(s: SerialOutput) -> Self {
        match s {
            SerialOutput::Stdout => Self::Stdout,
            SerialOutput::File(p) => Self::File(p),
            SerialOutput::None => Self::None,
        }
    }
}

impl fmt::Display for ConsoleOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Pty => f.write_str("pty"),
            Self::Socket(p) => write!(f, "socket:{}", p.display()),
            Self::None => f.write_str("none"),
        }
    }
}

impl TryFrom<String> for ConsoleOutput {
    type Error = ConsoleOutputError;
    fn try_from(s: String) -> Result<Self, ConsoleOutputError> {
        s.parse()
    }
}

impl From<ConsoleOutput> for String {
    fn from(o: ConsoleOutput) -> String {
        o.to_string()
    }
}

/// Errors building a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("console {id}: cannot open output file {path}: {source}")]
    OpenFile {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No pty could be allocated or set up.
    #[error("console {id}: cannot set up a pty ({step}): {source}")]
    Pty {
        id: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another process listens on the socket path.
    #[error("console {id}: socket {path} is in use by another process")]
    SocketInUse { id: String, path: PathBuf },
    /// The socket path exists and is not a socket; it is left alone.
    #[error("console {id}: {path} exists and is not a socket")]
    NotASocket { id: String, path: PathBuf },
    /// The socket path does not fit in a Unix socket address.
    #[error("console {id}: socket path {path} is longer than {max} bytes")]
    SocketPathTooLong {
        id: String,
        path: PathBuf,
        max: usize,
    },
    /// Creating, binding or listening on the socket failed.
    #[error("console {id}: cannot listen on socket {path}: {source}")]
    Socket {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The device's wake-up eventfd could not be created.
    #[error("console {id}: cannot create an eventfd: {source}")]
    EventFd {
        id: String,
        #[source]
        source: io::Error,
    },
    /// A saved state holds more pending input than the device keeps.
    #[error("console {id}: saved state holds {len} input bytes, more than {INPUT_BUFFER_SIZE}")]
    InputOverflow { id: String, len: usize },
}

#[cfg(test)]
mod tests;
