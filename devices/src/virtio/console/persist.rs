//! Saving and restoring a console.
//!
//! The state is the configuration and the host input the guest has not received yet.
//! Restoring reopens the backend (a new pty, the socket listening again, the file appended
//! to); the transport then activates the device with its restored queues. Output still
//! waiting for a slow pty or socket client is not kept: it was meant for a connection that
//! does not survive the snapshot.

use serde::{Deserialize, Serialize};

use super::{Console, ConsoleConfig, ConsoleError};

/// A console's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleState {
    /// Where the console's other end is.
    pub config: ConsoleConfig,
    /// Host input not yet delivered to the guest, oldest first.
    pub pending_input: Vec<u8>,
}

impl Console {
    /// The console's state. The device must be quiescent (vCPUs paused).
    pub fn save(&self) -> ConsoleState {
        ConsoleState {
            config: self.config.clone(),
            pending_input: self.input.clone(),
        }
    }

    /// A console rebuilt from `state`, its backend reopened, not yet activated.
    pub fn restore(state: &ConsoleState) -> Result<Self, ConsoleError> {
        Self::with_input(&state.config, state.pending_input.clone())
    }
}
