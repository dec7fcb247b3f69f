//! vhost-user devices: the device's data path runs in another process (the back end), which
//! petrel reaches over a Unix socket with the vhost-user protocol, through the `vhost`
//! crate's front end.
//!
//! - [`connection`]: one connection — handshake, config space, handing the rings to the
//!   back end and taking them back.
//! - [`device`]: [`VhostUserDevice`], what every vhost-user device does: the call relay,
//!   starting and stopping the back end, reconnection; a [`VhostUserKind`] says which device.
//! - [`blk`]: [`VhostUserBlk`], a virtio-blk device whose requests a back end such as
//!   `qemu-storage-daemon` serves.
//! - [`net`]: [`VhostUserNet`], a virtio-net device whose queues a back end serves.
//! - [`fs`]: [`VhostUserFs`], a virtio-fs device whose FUSE requests a back end such as
//!   `virtiofsd` serves.
//! - [`gpu`]: [`VhostUserGpu`], a virtio-gpu device whose queues a back end such as QEMU's
//!   `vhost-user-gpu` serves, and whose picture petrel shows (screenshot, web console).
//! - [`persist`]: saving and restoring, stopping the back end for a save, and the back
//!   end's dirty log ([`log`]) for Diff snapshots and live migration.
//!
//! # What goes where
//!
//! The back end maps the guest's memory from the fds of the memory table (guest memory must
//! be a shared memfd: the VMM configuration makes it so when a vhost-user device is
//! present). Queue notifications go straight from KVM to the back end: the transport's
//! queue-notify ioeventfd is the ring's kick fd, and the event loop leaves it alone. The back
//! end's call fd is an eventfd of petrel's, relayed to the device's [`Interrupt`] so that
//! the virtio-mmio InterruptStatus register says "used buffer" before the GSI fires.
//!
//! # Losing the back end
//!
//! A hangup on the socket (or a failed request) drops the connection; the device keeps its
//! queues and tries to connect again every [`RECONNECT_INTERVAL`]. On success it replays
//! the handshake and, if the driver had started the device, the whole ring setup with each
//! ring's base at the used index in guest memory: requests the old back end took but never
//! completed are served again. The guest sees a pause.
//!
//! [`Interrupt`]: super::Interrupt

pub mod blk;
pub mod connection;
pub mod device;
pub mod fs;
pub mod gpu;
pub mod log;
pub mod net;
pub mod persist;
#[cfg(test)]
mod qsd_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use blk::{VhostUserBlk, VhostUserBlkConfig};
pub use device::{VhostUserDevice, VhostUserKind};
pub use fs::{FsTag, TagError, VhostUserFs, VhostUserFsConfig};
pub use gpu::{VhostUserGpu, VhostUserGpuKind};
pub use net::{VhostUserNet, VhostUserNetConfig, VhostUserNetKind};
pub use persist::VhostUserState;

/// How often a device that lost its back end tries to connect again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Why talking to a vhost-user back end failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// Nothing accepts connections at the socket path.
    #[error("cannot connect to the vhost-user socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The peer did not answer a request the way the protocol says (it may not speak
    /// vhost-user, or it went away).
    #[error("the vhost-user back end failed {what} (is it a vhost-user back end?): {source}")]
    Protocol {
        what: &'static str,
        source: vhost::Error,
    },
    /// The back end closed the connection.
    #[error("the vhost-user back end closed the connection")]
    Disconnected,
    /// The back end has fewer queues than the device.
    #[error("the vhost-user back end serves at most {offered} queues; the device needs {needed}")]
    TooFewQueues { offered: u64, needed: usize },
    /// The back end lacks a feature petrel needs.
    #[error("the vhost-user back end lacks {0}")]
    MissingFeature(&'static str),
    /// Guest memory has a region without a file behind it.
    #[error("guest memory is not shared (a memfd), so the back end cannot map it")]
    MemoryNotShared,
    /// A ring address the driver gave is outside guest memory.
    #[error("ring address {0:#x} is outside guest memory")]
    RingAddress(u64),
    /// A host resource (eventfd, timer) could not be created.
    #[error("cannot create {what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
}

impl VhostUserError {
    /// Whether the connection itself failed (closed, broken, timed out), as opposed to a
    /// back end that answered and refused.
    pub fn is_connection_lost(&self) -> bool {
        use vhost::vhost_user::Error as E;
        match self {
            VhostUserError::Disconnected => true,
            VhostUserError::Protocol {
                source: vhost::Error::VhostUserProtocol(e),
                ..
            } => matches!(
                e,
                E::Disconnected
                    | E::PartialMessage
                    | E::SocketBroken(_)
                    | E::SocketError(_)
                    | E::SocketRetry(_)
            ),
            _ => false,
        }
    }

    /// Whether the user's input is at fault (a path, the peer at it), not the host.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, VhostUserError::Os { .. })
    }
}
