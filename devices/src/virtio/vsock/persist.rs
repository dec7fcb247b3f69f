//! Saving and restoring the vsock device.
//!
//! The state is the configuration and the next host port. Connections are not kept: their
//! host sockets belong to processes that do not follow the snapshot. A restored device
//! listens again and, once the transport activates it with its restored queues, tells the
//! guest with `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` that every connection is gone. The
//! features and queues are saved by the transport (`MmioState`).

use serde::{Deserialize, Serialize};

use super::{Vsock, VsockConfig, VsockError, FIRST_HOST_PORT};

/// A vsock device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// CID, socket path, id.
    pub config: VsockConfig,
    /// The next local port for a host-initiated connection.
    pub next_host_port: u32,
}

impl Vsock {
    /// The device's state. The vCPUs must be paused.
    pub fn save(&self) -> VsockState {
        VsockState {
            config: self.config.clone(),
            next_host_port: self.next_host_port,
        }
    }

    /// A device rebuilt from `state`, listening again, not yet activated; it announces a
    /// transport reset to the guest once activated.
    pub fn restore(state: &VsockState) -> Result<Self, VsockError> {
        let mut vsock = Vsock::new(&state.config)?;
        vsock.next_host_port = state.next_host_port.max(FIRST_HOST_PORT);
        vsock.reset_event_pending = true;
        Ok(vsock)
    }
}
