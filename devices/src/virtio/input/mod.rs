//! virtio-input (virtio 1.2, section 5.8): a keyboard or a tablet whose events come from the
//! host (the API, the web console).
//!
//! - Queues: `eventq` (0, device to driver, one 8-byte `virtio_input_event` per buffer) and
//!   `statusq` (1, driver to device: LED changes), [`QUEUE_SIZE`] entries each.
//! - Config space: the driver writes `select` and `subsel`, then reads `size` and the data
//!   ([`config_space`]). The answers follow QEMU's virtio-input-hid devices (vendor 0x0627,
//!   product 1 for the keyboard and 3 for the tablet), so Linux's `virtio_input` driver sees
//!   an ordinary keyboard (keys 1 to 248, autorepeat, three LEDs) or tablet (left, right and
//!   middle buttons, absolute X and Y in 0..=32767, a wheel).
//! - Host events ([`HostEvent`]) become groups of evdev events, each ending with
//!   `EV_SYN/SYN_REPORT`. Groups wait in a queue of at most [`MAX_PENDING_EVENTS`] events
//!   until the driver posts buffers; a group that does not fit is dropped whole and counted
//!   in [`InputMetrics::dropped_events`], so the guest never sees half a group.
//! - `statusq` buffers are read (EV_LED events update the recorded LED state) and returned.
//! - A malformed chain (a read-only buffer on eventq, a buffer shorter than an event, memory
//!   outside the guest) is used with length 0 and counted in [`InputMetrics::malformed`]; an
//!   event is never lost to it.

mod config_space;
mod device;
mod event;
mod keys;
mod persist;
mod queue;

use serde::{Deserialize, Serialize};

pub use config_space::ConfigSpace;
pub use device::{Input, InputMetrics};
pub use event::{Button, HostEvent, InvalidEvent, KeyAction, VirtioInputEvent};
pub use keys::{key_code, key_name, MAX_KEY};
pub use persist::InputState;
pub use queue::PendingEvents;

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 64;
/// The most events waiting for the driver's buffers.
pub const MAX_PENDING_EVENTS: usize = 4096;
/// The largest absolute coordinate a tablet reports (both axes start at 0).
pub const ABS_MAX: u32 = 32767;

/// evdev event types and codes (linux/input-event-codes.h) petrel's devices use.
pub mod codes {
    pub const EV_SYN: u16 = 0x00;
    pub const EV_KEY: u16 = 0x01;
    pub const EV_REL: u16 = 0x02;
    pub const EV_ABS: u16 = 0x03;
    pub const EV_LED: u16 = 0x11;
    pub const EV_REP: u16 = 0x14;
    pub const SYN_REPORT: u16 = 0;
    pub const REL_WHEEL: u16 = 0x08;
    pub const ABS_X: u16 = 0x00;
    pub const ABS_Y: u16 = 0x01;
    pub const BTN_LEFT: u16 = 0x110;
    pub const BTN_RIGHT: u16 = 0x111;
    pub const BTN_MIDDLE: u16 = 0x112;
    pub const LED_NUML: u16 = 0x00;
    pub const LED_CAPSL: u16 = 0x01;
    pub const LED_SCROLLL: u16 = 0x02;
    /// `BUS_VIRTUAL`, the bus type in `ID_DEVIDS`.
    pub const BUS_VIRTUAL: u16 = 0x06;
}

/// What the device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A keyboard: keys 1 to 248, autorepeat, num/caps/scroll lock LEDs.
    Keyboard,
    /// An absolute pointer: X and Y in 0..=32767, three buttons, a wheel.
    Tablet,
}

impl InputKind {
    /// The name used on the command line and in the API.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Keyboard => "keyboard",
            InputKind::Tablet => "tablet",
        }
    }
}

impl std::str::FromStr for InputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keyboard" => Ok(InputKind::Keyboard),
            "tablet" => Ok(InputKind::Tablet),
            other => Err(format!(
                "invalid input kind {other:?}: expected keyboard or tablet"
            )),
        }
    }
}

/// One virtio-input device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The id the API names it by (also its serial in the config space).
    pub id: String,
    /// Keyboard or tablet.
    pub kind: InputKind,
}

/// Errors building an input device.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A saved state holds more pending events than the device keeps.
    #[error("input {id}: saved state holds {len} pending events, more than {MAX_PENDING_EVENTS}")]
    PendingOverflow { id: String, len: usize },
    /// A saved state's pending events do not end with a SYN_REPORT.
    #[error("input {id}: saved pending events end in the middle of a group")]
    PartialGroup { id: String },
}

#[cfg(test)]
mod tests;
