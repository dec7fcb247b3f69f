//! `PUT /input/{id}` (petrel's): events for a virtio-input keyboard or tablet.
//!
//! ```json
//! {"events": [{"kind": "key", "key": "a", "action": "tap"},
//!             {"kind": "move", "x": 16384, "y": 0},
//!             {"kind": "button", "button": "left", "action": "click"},
//!             {"kind": "wheel", "delta": -1}]}
//! ```
//!
//! The web console sends the same body. What can be checked without the VM is checked
//! here ([`InputEvents::validate`]): the list is 1 to [`MAX_INPUT_EVENTS`] long, a key has
//! either a name or a code (1 to 248), coordinates are 0 to 32767. The VMM checks key names
//! and that the device is of the right kind.

use serde::{Deserialize, Serialize};

use crate::types::by_name;

/// The most events one request may carry.
pub const MAX_INPUT_EVENTS: usize = 1024;
/// The highest key code.
pub const MAX_KEY_CODE: u16 = 248;
/// The highest absolute coordinate.
pub const MAX_COORDINATE: u32 = 32767;

/// `PUT /input/{id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEvents {
    /// The events, in order.
    pub events: Vec<InputEvent>,
}

/// One event, by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputEvent {
    /// A keyboard key, by Linux key name (`a`, `enter`, `leftshift`, `f1`) or code.
    Key {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(deserialize_with = "by_name")]
        action: KeyAction,
    },
    /// The tablet's pointer to an absolute position.
    Move { x: u32, y: u32 },
    /// A tablet button.
    Button {
        #[serde(deserialize_with = "by_name")]
        button: ButtonName,
        #[serde(deserialize_with = "by_name")]
        action: ButtonAction,
    },
    /// The tablet's wheel (positive: away from the user).
    Wheel { delta: i32 },
}

/// What happens to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAction {
    Press,
    Release,
    /// Press, then release.
    Tap,
}

/// A tablet button.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonName {
    Left,
    Right,
    Middle,
}

/// What happens to a button.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonAction {
    Press,
    Release,
    /// Press, then release.
    Click,
}

impl InputEvents {
    /// Checks what does not need the VM; the error names the event at fault.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.events.len();
        if n == 0 {
            return Err("invalid request body: field `events`: the list is empty".into());
        }
        if n > MAX_INPUT_EVENTS {
            return Err(format!(
                "invalid request body: field `events`: {n} events, more than {MAX_INPUT_EVENTS}"
            ));
        }
        for (i, e) in self.events.iter().enumerate() {
            e.validate()
                .map_err(|why| format!("invalid request body: field `events[{i}]`: {why}"))?;
        }
        Ok(())
    }
}

impl InputEvent {
    fn validate(&self) -> Result<(), String> {
        match self {
            InputEvent::Key { key, code, .. } => match (key, code) {
                (Some(_), Some(_)) => Err("give `key` or `code`, not both".into()),
                (None, None) => Err("a key event needs `key` (a name) or `code`".into()),
                (None, Some(c)) if !(1..=MAX_KEY_CODE).contains(c) => {
                    Err(format!("code {c} is outside 1..={MAX_KEY_CODE}"))
                }
                _ => Ok(()),
            },
            InputEvent::Move { x, y } => {
                for (axis, v) in [("x", x), ("y", y)] {
                    if *v > MAX_COORDINATE {
                        return Err(format!("{axis}={v} is outside 0..={MAX_COORDINATE}"));
                    }
                }
                Ok(())
            }
            InputEvent::Button { .. } | InputEvent::Wheel { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<InputEvents, String> {
        let e: InputEvents = serde_json::from_value(v).map_err(|e| e.to_string())?;
        e.validate()?;
        Ok(e)
    }

    #[test]
    fn every_kind_parses() {
        let e = parse(json!({"events": [
            {"kind": "key", "key": "a", "action": "tap"},
            {"kind": "key", "code": 28, "action": "press"},
            {"kind": "move", "x": 0, "y": 32767},
            {"kind": "button", "button": "middle", "action": "click"},
            {"kind": "wheel", "delta": -3},
        ]}))
        .unwrap();
        assert_eq!(e.events.len(), 5);
        assert_eq!(
            e.events[3],
            InputEvent::Button {
                button: ButtonName::Middle,
                action: ButtonAction::Click
            }
        );
        // Serializing gives the same body back.
        let again: InputEvents = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn bad_events_are_refused_with_the_event_named() {
        for (body, want) in [
            (json!({"events": []}), "the list is empty"),
            (
                json!({"events": [{"kind": "key", "action": "tap"}]}),
                "events[0]",
            ),
            (
                json!({"events": [{"kind": "key", "key": "a", "code": 30, "action": "tap"}]}),
                "not both",
            ),
            (
                json!({"events": [{"kind": "key", "code": 0, "action": "tap"}]}),
                "outside",
            ),
            (
                json!({"events": [{"kind": "key", "code": 249, "action": "tap"}]}),
                "outside",
            ),
            (
                json!({"events": [{"kind": "wheel", "delta": 1}, {"kind": "move", "x": 32768, "y": 0}]}),
                "events[1]`: x=32768",
            ),
            (
                json!({"events": [{"kind": "move", "x": 1, "y": -1}]}),
                "invalid value",
            ),
            (
                json!({"events": [{"kind": "scroll", "delta": 1}]}),
                "unknown variant",
            ),
            (
                json!({"events": [{"x": 1, "y": 1}]}),
                "missing field `kind`",
            ),
            (
                json!({"events": [{"kind": "move", "x": 1, "y": 1, "z": 1}]}),
                "unknown field",
            ),
            (
                json!({"events": [{"kind": "key", "key": "a", "action": "hold"}]}),
                "unknown variant",
            ),
            (
                json!({"events": [{"kind": "button", "button": "left", "action": "tap"}]}),
                "unknown variant",
            ),
            (
                json!({"events": [{"kind": "button", "button": {"left": null}, "action": "click"}]}),
                "invalid type",
            ),
            (
                json!({"events": [{"kind": "wheel", "delta": 1.5}]}),
                "invalid type",
            ),
            (
                json!({"events": {"kind": "wheel", "delta": 1}}),
                "invalid type",
            ),
            (json!({"events": [], "more": 1}), "unknown field"),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let many = vec![json!({"kind": "wheel", "delta": 1}); MAX_INPUT_EVENTS + 1];
        assert!(parse(json!({ "events": many }))
            .unwrap_err()
            .contains("more than"));
        let max = vec![json!({"kind": "wheel", "delta": 1}); MAX_INPUT_EVENTS];
        assert!(parse(json!({ "events": max })).is_ok());
    }
}
