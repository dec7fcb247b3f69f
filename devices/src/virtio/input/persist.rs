//! Saving and restoring an input device: its configuration, what the driver selected in the
//! config space, the LED state and the events the guest has not received yet. The transport
//! saves and restores the queues and activates the device again.

use serde::{Deserialize, Serialize};

use super::{Input, InputConfig, InputError, VirtioInputEvent, MAX_PENDING_EVENTS};

/// An input device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputState {
    pub config: InputConfig,
    /// The config space's `select` and `subsel`.
    pub select: u8,
    pub subsel: u8,
    /// LED bits: 0 num lock, 1 caps lock, 2 scroll lock.
    pub leds: u8,
    /// Events not yet delivered, oldest first; whole groups.
    pub pending: Vec<VirtioInputEvent>,
}

impl Input {
    /// The device's state. The device must be quiescent (vCPUs paused).
    pub fn save(&self) -> InputState {
        let (select, subsel) = self.space.selected();
        InputState {
            config: self.config.clone(),
            select,
            subsel,
            leds: self.leds,
            pending: self.pending.to_vec(),
        }
    }

    /// A device rebuilt from `state`, not yet activated.
    pub fn restore(state: &InputState) -> Result<Self, InputError> {
        let id = || state.config.id.clone();
        if state.pending.len() > MAX_PENDING_EVENTS {
            return Err(InputError::PendingOverflow {
                id: id(),
                len: state.pending.len(),
            });
        }
        if state
            .pending
            .last()
            .is_some_and(|e| !VirtioInputEvent::is_syn_report(e))
        {
            return Err(InputError::PartialGroup { id: id() });
        }
        let mut input = Input::new(&state.config);
        input.space.set_selected(state.select, state.subsel);
        input.leds = state.leds & 0b111;
        // Fits: checked against the same capacity above.
        input.pending.push_group(&state.pending);
        Ok(input)
    }
}
