//! Events: the 8-byte `virtio_input_event` the queues carry, and the host-side events
//! (a key, a pointer move, a button, the wheel) that become groups of them.

use serde::{Deserialize, Serialize};

use super::codes::*;
use super::{InputKind, ABS_MAX, MAX_KEY};

/// `struct virtio_input_event`: `le16 type, le16 code, le32 value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioInputEvent {
    #[serde(rename = "type")]
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl VirtioInputEvent {
    /// Its size in a queue buffer.
    pub const SIZE: usize = 8;

    pub const fn new(kind: u16, code: u16, value: u32) -> Self {
        VirtioInputEvent { kind, code, value }
    }

    /// `EV_SYN/SYN_REPORT`, which ends a group.
    pub const SYN: Self = Self::new(EV_SYN, SYN_REPORT, 0);

    /// Whether this event ends a group.
    pub fn is_syn_report(&self) -> bool {
        *self == Self::SYN
    }

    /// The little-endian wire form.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Reads the wire form.
    pub fn from_bytes(b: [u8; Self::SIZE]) -> Self {
        VirtioInputEvent {
            kind: u16::from_le_bytes([b[0], b[1]]),
            code: u16::from_le_bytes([b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Pressing, releasing, or both in turn (two groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Press,
    Release,
    /// Press then release: a tap of a key, a click of a button.
    Tap,
}

/// A tablet button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Left,
    Right,
    Middle,
}

impl Button {
    /// Its evdev code.
    pub fn code(self) -> u16 {
        match self {
            Button::Left => BTN_LEFT,
            Button::Right => BTN_RIGHT,
            Button::Middle => BTN_MIDDLE,
        }
    }
}

/// Something the host does on an input device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEvent {
    /// A keyboard key, by Linux key code (1 to [`MAX_KEY`]).
    Key { code: u16, action: KeyAction },
    /// The tablet's pointer to an absolute position (0 to [`ABS_MAX`] on each axis).
    Move { x: u32, y: u32 },
    /// A tablet button.
    Button { button: Button, action: KeyAction },
    /// The tablet's wheel: positive is away from the user.
    Wheel { delta: i32 },
}

/// A host event the device cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("a {event} event is for a {wants}; this device is a {kind}")]
    WrongDevice {
        event: &'static str,
        wants: &'static str,
        kind: &'static str,
    },
    #[error("key code {0} is outside 1..={MAX_KEY}")]
    KeyCode(u16),
    #[error("coordinate {axis}={value} is outside 0..={ABS_MAX}")]
    Coordinate { axis: &'static str, value: u32 },
}

impl HostEvent {
    fn name(&self) -> &'static str {
        match self {
            HostEvent::Key { .. } => "key",
            HostEvent::Move { .. } => "move",
            HostEvent::Button { .. } => "button",
            HostEvent::Wheel { .. } => "wheel",
        }
    }

    /// Checks that a `kind` device can carry this event.
    pub fn check(&self, kind: InputKind) -> Result<(), InvalidEvent> {
        let wants = match self {
            HostEvent::Key { .. } => InputKind::Keyboard,
            _ => InputKind::Tablet,
        };
        if wants != kind {
            return Err(InvalidEvent::WrongDevice {
                event: self.name(),
                wants: wants.name(),
                kind: kind.name(),
            });
        }
        match *self {
            HostEvent::Key { code, .. } if !(1..=MAX_KEY).contains(&code) => {
                Err(InvalidEvent::KeyCode(code))
            }
            HostEvent::Move { x, .. } if x > ABS_MAX => Err(InvalidEvent::Coordinate {
                axis: "x",
                value: x,
            }),
            HostEvent::Move { y, .. } if y > ABS_MAX => Err(InvalidEvent::Coordinate {
                axis: "y",
                value: y,
            }),
            _ => Ok(()),
        }
    }

    /// The groups of evdev events this becomes, each ending with `SYN_REPORT`, appended to
    /// `out` (one group; two for a tap or click).
    pub fn groups(&self, out: &mut Vec<Vec<VirtioInputEvent>>) {
        let press = |kind, code, action: KeyAction, out: &mut Vec<Vec<VirtioInputEvent>>| {
            let values: &[u32] = match action {
                KeyAction::Press => &[1],
                KeyAction::Release => &[0],
                KeyAction::Tap => &[1, 0],
            };
            for &v in values {
                out.push(vec![
                    VirtioInputEvent::new(kind, code, v),
                    VirtioInputEvent::SYN,
                ]);
            }
        };
        match *self {
            HostEvent::Key { code, action } => press(EV_KEY, code, action, out),
            HostEvent::Button { button, action } => press(EV_KEY, button.code(), action, out),
            HostEvent::Move { x, y } => out.push(vec![
                VirtioInputEvent::new(EV_ABS, ABS_X, x),
                VirtioInputEvent::new(EV_ABS, ABS_Y, y),
                VirtioInputEvent::SYN,
            ]),
            // evdev carries a negative value as its two's complement.
            HostEvent::Wheel { delta } => out.push(vec![
                VirtioInputEvent::new(EV_REL, REL_WHEEL, delta as u32),
                VirtioInputEvent::SYN,
            ]),
        }
    }
}
