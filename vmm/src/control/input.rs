//! `PUT /input/{id}`: API events to the virtio-input device's host events, then into the
//! device. Runs on the VMM thread.

use api::types::{ButtonAction, ButtonName, InputEvent, InputEvents, KeyAction};
use api::ApiResponse;
use devices::virtio::input::{self, Button, HostEvent, Input};

use super::runtime::Runtime;

fn bad(msg: String) -> ApiResponse {
    ApiResponse::bad_request(msg)
}

/// The device's host event for one API event; key names are looked up here.
fn host_event(i: usize, event: &InputEvent) -> Result<HostEvent, ApiResponse> {
    let key_action = |a: KeyAction| match a {
        KeyAction::Press => input::KeyAction::Press,
        KeyAction::Release => input::KeyAction::Release,
        KeyAction::Tap => input::KeyAction::Tap,
    };
    Ok(match event {
        InputEvent::Key { key, code, action } => {
            let code = match (key, code) {
                (Some(name), _) => input::key_code(name).ok_or_else(|| {
                    bad(format!(
                        "invalid request body: field `events[{i}]`: unknown key name {:?} \
                         (Linux KEY_ names, lowercase, without the prefix: a, enter, leftshift, f1)",
                        name.escape_default().to_string()
                    ))
                })?,
                (None, Some(code)) => *code,
                (None, None) => {
                    return Err(bad(format!(
                        "invalid request body: field `events[{i}]`: a key event needs `key` or `code`"
                    )))
                }
            };
            HostEvent::Key {
                code,
                action: key_action(*action),
            }
        }
        InputEvent::Move { x, y } => HostEvent::Move { x: *x, y: *y },
        InputEvent::Button { button, action } => HostEvent::Button {
            button: match button {
                ButtonName::Left => Button::Left,
                ButtonName::Right => Button::Right,
                ButtonName::Middle => Button::Middle,
            },
            action: match action {
                ButtonAction::Press => input::KeyAction::Press,
                ButtonAction::Release => input::KeyAction::Release,
                ButtonAction::Click => input::KeyAction::Tap,
            },
        },
        InputEvent::Wheel { delta } => HostEvent::Wheel { delta: *delta },
    })
}

/// Converts every event, then hands them to device `id` (all or none).
pub fn put_input(rt: &Runtime, id: &str, events: &InputEvents) -> Result<(), ApiResponse> {
    let host: Vec<HostEvent> = events
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| host_event(i, e))
        .collect::<Result<_, _>>()?;
    rt.with_device::<Input, _>("input device", id, |device| {
        device
            .inject(&host)
            .map(|_dropped| ())
            .map_err(|e| bad(format!("PUT /input/{id}: {e}")))
    })?
}

#[cfg(test)]
mod tests {
    use api::types::{InputEvent, KeyAction};

    use super::*;

    #[test]
    fn key_names_and_codes_become_codes() {
        let by_name = InputEvent::Key {
            key: Some("enter".into()),
            code: None,
            action: KeyAction::Tap,
        };
        assert_eq!(
            host_event(0, &by_name).unwrap(),
            HostEvent::Key {
                code: 28,
                action: input::KeyAction::Tap
            }
        );
        let unknown = InputEvent::Key {
            key: Some("Enter".into()),
            code: None,
            action: KeyAction::Tap,
        };
        let Err(ApiResponse::Error {
            status: 400,
            fault_message,
        }) = host_event(3, &unknown)
        else {
            panic!()
        };
        assert!(fault_message.contains("events[3]`: unknown key name \"Enter\""));
    }
}
