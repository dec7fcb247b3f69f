//! The virtio-input config space (virtio 1.2, section 5.8.4):
//!
//! ```text
//! u8 select; u8 subsel; u8 size; u8 reserved[5]; union { char string[128]; u8 bitmap[128];
//!     struct virtio_input_absinfo abs; struct virtio_input_devids ids; } u;
//! ```
//!
//! The driver writes `select` and `subsel` and reads `size` and `u`. The answers are QEMU's
//! virtio-input-hid ones; anything not listed (an unknown select, an event type the device
//! does not have, an axis it does not have) answers size 0.

use super::codes::*;
use super::{InputConfig, InputKind, ABS_MAX, MAX_KEY};

/// `select` values (`VIRTIO_INPUT_CFG_*`).
pub mod select {
    pub const UNSET: u8 = 0x00;
    pub const ID_NAME: u8 = 0x01;
    pub const ID_SERIAL: u8 = 0x02;
    pub const ID_DEVIDS: u8 = 0x03;
    pub const PROP_BITS: u8 = 0x10;
    pub const EV_BITS: u8 = 0x11;
    pub const ABS_INFO: u8 = 0x12;
}

/// Offset of `u` in the config space.
const DATA: usize = 8;
/// Size of `u`.
const DATA_LEN: usize = 128;
/// QEMU's vendor id for its virtio input devices.
pub const VENDOR: u16 = 0x0627;

/// What the driver selected and what the device answers.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    kind: InputKind,
    name: String,
    serial: String,
    select: u8,
    subsel: u8,
    /// The answer to `select`/`subsel`, at most 128 bytes.
    answer: Vec<u8>,
}

/// A bitmap with `bits` set, as short as its highest set bit allows.
fn bitmap(bits: impl IntoIterator<Item = u16>) -> Vec<u8> {
    let mut map = Vec::new();
    for bit in bits {
        let byte = usize::from(bit / 8);
        if map.len() <= byte {
            map.resize(byte + 1, 0);
        }
        map[byte] |= 1 << (bit % 8);
    }
    map
}

impl ConfigSpace {
    /// The config space of the device `config` describes, nothing selected.
    pub fn new(config: &InputConfig) -> Self {
        let name = match config.kind {
            InputKind::Keyboard => "petrel virtio keyboard",
            InputKind::Tablet => "petrel virtio tablet",
        };
        let mut serial = config.id.clone();
        serial.truncate(DATA_LEN);
        ConfigSpace {
            kind: config.kind,
            name: name.to_string(),
            serial,
            select: select::UNSET,
            subsel: 0,
            answer: Vec::new(),
        }
    }

    /// The selected `(select, subsel)`.
    pub fn selected(&self) -> (u8, u8) {
        (self.select, self.subsel)
    }

    /// Selects `select`/`subsel` (as after the driver wrote them).
    pub fn set_selected(&mut self, select: u8, subsel: u8) {
        self.select = select;
        self.subsel = subsel;
        self.answer = self.query(select, subsel);
        self.answer.truncate(DATA_LEN);
    }

    /// The answer to `select`/`subsel`.
    pub fn query(&self, sel: u8, subsel: u8) -> Vec<u8> {
        match (sel, subsel) {
            (select::ID_NAME, 0) => self.name.as_bytes().to_vec(),
            (select::ID_SERIAL, 0) => self.serial.as_bytes().to_vec(),
            (select::ID_DEVIDS, 0) => {
                let product: u16 = match self.kind {
                    InputKind::Keyboard => 1,
                    InputKind::Tablet => 3,
                };
                [BUS_VIRTUAL, VENDOR, product, 1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            (select::PROP_BITS, 0) => Vec::new(),
            (select::EV_BITS, ev) => self.ev_bits(u16::from(ev)),
            (select::ABS_INFO, axis) => self.abs_info(u16::from(axis)),
            _ => Vec::new(),
        }
    }

    fn ev_bits(&self, ev: u16) -> Vec<u8> {
        match (self.kind, ev) {
            (InputKind::Keyboard, EV_KEY) => bitmap(1..=MAX_KEY),
            // Autorepeat: the type is there, with no codes (as QEMU answers).
            (InputKind::Keyboard, EV_REP) => vec![0],
            (InputKind::Keyboard, EV_LED) => bitmap([LED_NUML, LED_CAPSL, LED_SCROLLL]),
            (InputKind::Tablet, EV_KEY) => bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
            (InputKind::Tablet, EV_REL) => bitmap([REL_WHEEL]),
            (InputKind::Tablet, EV_ABS) => bitmap([ABS_X, ABS_Y]),
            _ => Vec::new(),
        }
    }

    /// `struct virtio_input_absinfo { le32 min, max, fuzz, flat, res; }`.
    fn abs_info(&self, axis: u16) -> Vec<u8> {
        match (self.kind, axis) {
            (InputKind::Tablet, ABS_X | ABS_Y) => [0u32, ABS_MAX, 0, 0, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.map_or(0, |at| self.byte(at));
        }
    }

    fn byte(&self, at: usize) -> u8 {
        match at {
            0 => self.select,
            1 => self.subsel,
            // The answer is at most 128 bytes.
            2 => self.answer.len() as u8,
            _ => at
                .checked_sub(DATA)
                .and_then(|i| self.answer.get(i))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Writes `select` and/or `subsel`; returns false for a write elsewhere (read-only).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let (mut sel, mut sub) = (self.select, self.subsel);
        let mut ok = true;
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => sel = byte,
                Some(1) => sub = byte,
                _ => ok = false,
            }
        }
        self.set_selected(sel, sub);
        ok
    }
}
