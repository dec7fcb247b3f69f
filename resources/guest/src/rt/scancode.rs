//! Recognising Ctrl+Alt+Del in the bytes a PS/2 keyboard sends, without knowing which scancode
//! set they are in: scancode set 1 (what an i8042 delivers when its control byte asks it to
//! translate) and set 2 (untranslated) are decoded side by side. Neither set's Ctrl, Alt or Del
//! codes mean Ctrl, Alt or Del in the other, so decoding both cannot mistake one for the other.
//!
//! | key         | set 1 press / release | set 2 press / release |
//! |-------------|-----------------------|-----------------------|
//! | Ctrl        | `1d` / `9d`           | `14` / `f0 14`        |
//! | Alt         | `38` / `b8`           | `11` / `f0 11`        |
//! | Del         | `e0 53` / `e0 d3`     | `e0 71` / `e0 f0 71`  |
//!
//! The right-hand Ctrl and Alt (the same codes after `e0`) count as well. Pause/Break's
//! `e1`-prefixed sequences, whose bytes include Ctrl's, are skipped.
//!
//! Plain `core`, no hardware access: the `resources` crate compiles this file for the host too
//! (`#[path]`) and runs the tests at its end there.

/// Bytes after an `e1` prefix that belong to it (Pause/Break sends `e1` and two more bytes,
/// twice).
const E1_TAIL: u8 = 2;

/// Watches a keyboard's bytes for a Del press while Ctrl and Alt are held.
#[derive(Default)]
pub struct CtrlAltDel {
    set1: Keys,
    set2: Keys,
}

/// What one decoder knows: held modifiers and the prefixes seen.
#[derive(Default)]
struct Keys {
    ctrl: bool,
    alt: bool,
    /// The last byte was `e0`.
    extended: bool,
    /// The last byte was `f0` (set 2's release prefix).
    release: bool,
    /// Bytes of an `e1` sequence still to skip.
    skip: u8,
}

/// A key this module cares about, pressed (`true`) or released.
enum Key {
    Ctrl(bool),
    Alt(bool),
    Del(bool),
    Other,
}

impl CtrlAltDel {
    pub const fn new() -> Self {
        const NONE: Keys = Keys {
            ctrl: false,
            alt: false,
            extended: false,
            release: false,
            skip: 0,
        };
        CtrlAltDel {
            set1: NONE,
            set2: NONE,
        }
    }

    /// Takes the next byte from the keyboard; true when it completes a Del press with Ctrl and
    /// Alt held, in either set.
    pub fn feed(&mut self, byte: u8) -> bool {
        let set1 = self.set1.feed(byte, decode_set1);
        let set2 = self.set2.feed(byte, decode_set2);
        set1 | set2
    }
}

impl Keys {
    fn feed(&mut self, byte: u8, decode: fn(&mut Keys, u8) -> Option<Key>) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        match decode(self, byte) {
            Some(Key::Ctrl(down)) => self.ctrl = down,
            Some(Key::Alt(down)) => self.alt = down,
            Some(Key::Del(true)) => return self.ctrl && self.alt,
            Some(Key::Del(false) | Key::Other) | None => {}
        }
        false
    }
}

/// Set 1: a key's release is its press code with bit 7 set. `None` for a prefix byte.
fn decode_set1(keys: &mut Keys, byte: u8) -> Option<Key> {
    match byte {
        0xe0 => {
            keys.extended = true;
            return None;
        }
        0xe1 => {
            keys.skip = E1_TAIL;
            return None;
        }
        _ => {}
    }
    let extended = core::mem::take(&mut keys.extended);
    let down = byte & 0x80 == 0;
    Some(match byte & 0x7f {
        0x1d => Key::Ctrl(down),
        0x38 => Key::Alt(down),
        0x53 if extended => Key::Del(down),
        _ => Key::Other,
    })
}

/// Set 2: a release is `f0` before the press code (after `e0` for an extended key). `None`
/// for a prefix byte.
fn decode_set2(keys: &mut Keys, byte: u8) -> Option<Key> {
    match byte {
        0xe0 => {
            keys.extended = true;
            return None;
        }
        0xf0 => {
            keys.release = true;
            return None;
        }
        0xe1 => {
            keys.skip = E1_TAIL;
            return None;
        }
        _ => {}
    }
    let extended = core::mem::take(&mut keys.extended);
    let down = !core::mem::take(&mut keys.release);
    Some(match byte {
        0x14 => Key::Ctrl(down),
        0x11 => Key::Alt(down),
        0x71 if extended => Key::Del(down),
        _ => Key::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes`; the index of the byte that completed Ctrl+Alt+Del, if one did.
    fn trigger(bytes: &[u8]) -> Option<usize> {
        let mut keys = CtrlAltDel::new();
        bytes.iter().position(|&b| keys.feed(b))
    }

    /// What petrel's i8042 sends (`devices/src/legacy/i8042.rs`, `CTRL_ALT_DEL_SET1/SET2`).
    const PETREL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
    const PETREL_SET2: [u8; 11] = [
        0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
    ];

    #[test]
    fn petrels_sequences_trigger_on_the_del_press_in_both_sets() {
        assert_eq!(trigger(&PETREL_SET1), Some(3));
        assert_eq!(trigger(&PETREL_SET2), Some(3));
    }

    #[test]
    fn right_hand_ctrl_and_alt_count() {
        assert_eq!(trigger(&[0xe0, 0x1d, 0xe0, 0x38, 0xe0, 0x53]), Some(5));
        assert_eq!(trigger(&[0xe0, 0x14, 0xe0, 0x11, 0xe0, 0x71]), Some(5));
    }

    #[test]
    fn del_without_both_modifiers_held_does_not_trigger() {
        // Set 1: Ctrl only; Alt pressed and released before Del.
        assert_eq!(trigger(&[0x1d, 0xe0, 0x53]), None);
        assert_eq!(trigger(&[0x1d, 0x38, 0xb8, 0xe0, 0x53]), None);
        // Set 2: Alt only; Ctrl released before Del.
        assert_eq!(trigger(&[0x11, 0xe0, 0x71]), None);
        assert_eq!(trigger(&[0x14, 0x11, 0xf0, 0x14, 0xe0, 0x71]), None);
    }

    #[test]
    fn keypad_period_is_not_del() {
        assert_eq!(trigger(&[0x1d, 0x38, 0x53]), None);
        assert_eq!(trigger(&[0x14, 0x11, 0x71]), None);
    }

    #[test]
    fn pause_break_does_not_count_as_ctrl() {
        // Pause (which carries Ctrl's code after e1), then Alt and Del.
        let set1 = [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5, 0x38, 0xe0, 0x53];
        let set2 = [
            0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77, 0x11, 0xe0, 0x71,
        ];
        assert_eq!(trigger(&set1), None);
        assert_eq!(trigger(&set2), None);
    }

    #[test]
    fn other_keys_in_between_do_not_matter() {
        // Set 2: Ctrl, 'a' press and release, Alt, Del.
        assert_eq!(
            trigger(&[0x14, 0x1c, 0xf0, 0x1c, 0x11, 0xe0, 0x71]),
            Some(6)
        );
    }
}
