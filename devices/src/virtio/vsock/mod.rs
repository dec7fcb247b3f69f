//! virtio-vsock (virtio 1.2, section 5.10, device id 19) with its host side on Unix sockets,
//! the way Firecracker does it, so that host tooling written for Firecracker works.
//!
//! - Queues: `rx` (0, device to guest), `tx` (1, guest to device), `event` (2), 256 entries
//!   each. Config space: `guest_cid` (u64). Only stream sockets (`VIRTIO_VSOCK_TYPE_STREAM`).
//! - Host to guest: a host process connects to the Unix socket `uds_path`, writes
//!   `CONNECT <port>\n` and, once the guest accepted, reads `OK <host_port>\n` (`host_port` is
//!   a local port petrel allocated from 2^30 up); the stream is then connected to guest port
//!   `<port>`. A guest that answers RST, or does not answer within
//!   [`CONNECT_TIMEOUT`], gets the host socket closed.
//! - Guest to host: a request for host (CID 2) port `P` connects to the Unix socket
//!   `<uds_path>_P`; if nothing listens there the guest gets RST.
//! - Flow control: each connection gives the guest [`BUF_ALLOC`] bytes of credit. Bytes the
//!   host socket cannot take at once wait in the connection's buffer, which the guest's credit
//!   bounds (the device advances `fwd_cnt` only as the host socket takes bytes); a guest that
//!   sends past its credit gets RST. Host to guest, the device reads from a host socket only as
//!   much as the guest's credit (`peer buf_alloc - (sent - peer fwd_cnt)`) allows, and asks for
//!   credit (CREDIT_REQUEST) when it has none. A slow reader on either side stalls only its
//!   own connection: every transmit chain is used at once.
//! - Reset and restore drop every connection (their host sockets are closed). A restored device
//!   puts `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue once the driver posts a
//!   buffer there.
//! - Malformed packets (a header shorter than 44 bytes, `len` past the buffer, a write-only
//!   buffer on tx, a type other than stream, an unknown op) are answered with RST where the
//!   sender can be named, dropped otherwise, and counted in [`VsockMetrics::malformed`]; a
//!   packet whose `src_cid` is not the guest's is dropped. Nothing the guest sends panics.

mod chain;
mod conn;
mod device;
mod host;
mod packet;
mod persist;
mod rx;
mod tx;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use device::{Vsock, VsockMetrics};
pub use packet::{Header, HEADER_LEN};
pub use persist::VsockState;

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive buffer each connection offers the guest (`buf_alloc`).
pub const BUF_ALLOC: u32 = 256 << 10;
/// The largest payload of one transmit packet; a larger `len` is malformed.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0 to 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// How long a host-initiated connection waits for the guest's answer, and a host client for
/// its `CONNECT` line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections (and host clients still sending their `CONNECT` line) the device keeps at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Data-less packets (replies, credit updates, resets) waiting for rx buffers; past this a
/// guest that sends without posting rx buffers has further replies dropped and counted.
pub const MAX_CONTROL: usize = 4 * MAX_CONNECTIONS;
/// The longest socket path: `sun_path` holds 108 bytes with the terminating NUL.
pub const MAX_PATH_LEN: usize = 107;
/// The first local port handed to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The vsock device's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// A name for logs and metrics.
    #[serde(default = "default_id")]
    pub id: String,
    /// The guest's context id (3 or more; the upper 32 bits must be zero).
    pub guest_cid: u64,
    /// The Unix socket host processes connect to; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// The id a vsock device gets when none is given.
pub fn default_id() -> String {
    "vsock0".to_string()
}

impl VsockConfig {
    /// Checks the CID: at least [`MIN_GUEST_CID`], below 2^32 (virtio 1.2, 5.10.4).
    pub fn validate(&self) -> Result<(), VsockError> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid > u64::from(u32::MAX - 1) {
            return Err(VsockError::Cid(self.guest_cid));
        }
        let path = self.uds_path.as_os_str().as_encoded_bytes();
        if path.is_empty() {
            return Err(VsockError::EmptyPath);
        }
        if path.len() > MAX_PATH_LEN || path.contains(&0) {
            return Err(VsockError::BadPath(self.uds_path.clone()));
        }
        Ok(())
    }
}

/// Errors building a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or too large.
    #[error("guest cid {0} is invalid: use 3 to 4294967294")]
    Cid(u64),
    /// No socket path.
    #[error("the vsock uds path is empty")]
    EmptyPath,
    /// The socket path is too long for a Unix socket address or holds a NUL byte.
    #[error("vsock uds path {0:?} is longer than {MAX_PATH_LEN} bytes or holds a NUL byte")]
    BadPath(PathBuf),
    /// Another process listens on the socket path.
    #[error("vsock socket {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket; it is left alone.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding or listening failed.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An epoll, timer or eventfd could not be created.
    #[error("vsock: cannot create {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl VsockError {
    /// Whether the error comes from the user's configuration (not the host running out of
    /// descriptors).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, VsockError::Os { .. })
    }
}

#[cfg(test)]
mod tests;
