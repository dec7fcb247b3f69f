//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status/command), with a minimal
//! keyboard behind it and no aux (mouse) port.
//!
//! Enough for Linux's i8042 probe and atkbd: the self and interface tests pass, the control
//! byte reads back, the aux port is reported absent (its disable bit never clears, which
//! Linux's `i8042_check_aux` takes as "no aux"), and the keyboard acknowledges commands. The
//! guest resets the machine through the controller's reset line (command 0xFE); the host can
//! press Ctrl+Alt+Del with [`I8042::trigger_ctrl_alt_del`].

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::trigger::EventFdTrigger;
use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// The data port; the VMM maps the controller at this port.
pub const I8042_PORT: u64 = 0x60;
/// The controller's range on the bus: data at offset 0, status/command at offset 4.
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's interrupt line (GSI).
pub const I8042_IRQ: u32 = 1;
/// Bytes the output buffer holds; more are dropped.
pub const I8042_BUFFER_SIZE: usize = 16;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;
const STATUS_AUX_DATA: u8 = 1 << 5;

const CTR_KBD_INT: u8 = 1 << 0;
/// The system flag; the status register mirrors it in the same bit.
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;

/// Output port bit 0 low holds the CPU in reset; bit 1 is the A20 gate.
const OUTP_NOT_RESET: u8 = 1 << 0;
const OUTP_A20: u8 = 1 << 1;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_MODE: u8 = 0xca;
const CMD_WRITE_MODE: u8 = 0xcb;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Controller mode bit 0: PS/2 (rather than ISA) interface.
const MODE_PS2: u8 = 0x01;

const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_SCANCODE_SET_2: u8 = 0x02;

/// Ctrl, Alt, Del pressed, then released in reverse order, in scancode set 2 ...
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// ... and in set 1, what the guest sees when it has the controller translate.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Errors from the host side of the controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// The guest has not drained the output buffer enough for the key sequence.
    #[error("i8042 output buffer full: {needed} bytes needed, {free} free")]
    BufferFull { needed: usize, free: usize },
    /// A saved state holds more output than the buffer can.
    #[error("saved i8042 state holds {len} output bytes, more than {I8042_BUFFER_SIZE}")]
    BufferOverflow { len: usize },
}

/// Who put a byte in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputSource {
    /// A reply to a controller command (no interrupt).
    Controller,
    /// The keyboard (IRQ 1 when the control byte enables it).
    Keyboard,
    /// The aux port, through the loopback command 0xD3 (status bit 5 set, no interrupt).
    Aux,
}

/// The controller's and keyboard's registers, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The control byte (command 0x20/0x60).
    pub control: u8,
    /// The output port (command 0xD0/0xD1).
    pub output_port: u8,
    /// The controller mode (command 0xCA/0xCB).
    pub mode: u8,
    /// Whether the last write went to the command port (status bit 3).
    pub last_write_was_command: bool,
    /// A controller command waiting for its data byte.
    pub pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter byte.
    pub pending_keyboard_command: Option<u8>,
    /// Bytes for the guest to read from the data port, oldest first.
    pub output: VecDeque<(u8, OutputSource)>,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            control: CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED,
            output_port: OUTP_NOT_RESET | OUTP_A20,
            mode: MODE_PS2,
            last_write_was_command: false,
            pending_command: None,
            pending_keyboard_command: None,
            output: VecDeque::new(),
        }
    }
}

/// The i8042 controller and its keyboard.
pub struct I8042 {
    state: I8042State,
    exit: Arc<ExitSignal>,
    irq: EventFdTrigger,
}

impl I8042 {
    /// A controller in its power-on state that reports resets to `exit` and raises the
    /// keyboard interrupt through `interrupt`.
    pub fn new(exit: Arc<ExitSignal>, interrupt: EventFd) -> Self {
        Self {
            state: I8042State::default(),
            exit,
            irq: EventFdTrigger::new(interrupt),
        }
    }

    /// A controller rebuilt from `state`.
    pub fn restore(
        state: &I8042State,
        exit: Arc<ExitSignal>,
        interrupt: EventFd,
    ) -> Result<Self, I8042Error> {
        if state.output.len() > I8042_BUFFER_SIZE {
            return Err(I8042Error::BufferOverflow {
                len: state.output.len(),
            });
        }
        let dev = Self {
            state: state.clone(),
            exit,
            irq: EventFdTrigger::new(interrupt),
        };
        dev.interrupt_if_keyboard_data();
        Ok(dev)
    }

    /// The controller's state.
    pub fn save(&self) -> I8042State {
        self.state.clone()
    }

    /// The interrupt event, for registering it as the irqfd of [`I8042_IRQ`].
    pub fn interrupt(&self) -> &EventFd {
        self.irq.event()
    }

    /// Presses and releases Ctrl+Alt+Del on the keyboard, in the scancode set the guest sees,
    /// and interrupts the guest if it enabled keyboard interrupts. Nothing is queued when the
    /// whole sequence does not fit.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        let codes: &[u8] = if self.state.control & CTR_TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        self.push(codes, OutputSource::Keyboard)
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED | (self.state.control & CTR_SYSTEM);
        if let Some(&(_, source)) = self.state.output.front() {
            status |= STATUS_OUTPUT_FULL;
            if source == OutputSource::Aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if self.state.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        let Some((byte, _)) = self.state.output.pop_front() else {
            return 0;
        };
        // One interrupt per byte: Linux reads a single byte per keyboard interrupt.
        self.interrupt_if_keyboard_data();
        byte
    }

    fn push(&mut self, bytes: &[u8], source: OutputSource) -> Result<(), I8042Error> {
        let free = I8042_BUFFER_SIZE - self.state.output.len().min(I8042_BUFFER_SIZE);
        if bytes.len() > free {
            return Err(I8042Error::BufferFull {
                needed: bytes.len(),
                free,
            });
        }
        let was_empty = self.state.output.is_empty();
        self.state.output.extend(bytes.iter().map(|&b| (b, source)));
        if was_empty {
            self.interrupt_if_keyboard_data();
        }
        Ok(())
    }

    /// Pushes a reply for the guest; a guest that never reads its replies loses the newest.
    fn reply(&mut self, bytes: &[u8], source: OutputSource) {
        if let Err(e) = self.push(bytes, source) {
            tracing::debug!(%e, "i8042 reply dropped");
        }
    }

    fn interrupt_if_keyboard_data(&self) {
        let keyboard_byte_waiting =
            matches!(self.state.output.front(), Some((_, OutputSource::Keyboard)));
        if keyboard_byte_waiting && self.state.control & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                tracing::warn!(%e, "i8042 keyboard interrupt");
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.state.pending_command = None;
        let ctrl = OutputSource::Controller;
        match cmd {
            CMD_READ_CTR => self.reply(&[self.state.control], ctrl),
            CMD_WRITE_CTR | CMD_WRITE_MODE | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT
            | CMD_WRITE_AUX_OUT | CMD_WRITE_AUX => self.state.pending_command = Some(cmd),
            CMD_SELF_TEST => self.reply(&[SELF_TEST_OK], ctrl),
            CMD_KBD_TEST | CMD_AUX_TEST => self.reply(&[INTERFACE_TEST_OK], ctrl),
            CMD_KBD_DISABLE => self.state.control |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.state.control &= !CTR_KBD_DISABLED,
            CMD_AUX_DISABLE => self.state.control |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => tracing::debug!("i8042 has no aux port; it stays disabled"),
            CMD_READ_MODE => self.reply(&[self.state.mode], ctrl),
            CMD_READ_OUTP => self.reply(&[self.state.output_port], ctrl),
            // 0xF0-0xFF pulse the output port's low bits low; bit 0 is the CPU reset line.
            0xf0..=0xff if cmd & OUTP_NOT_RESET == 0 => self.exit.signal(VmExit::Reset),
            0xf0..=0xff => {}
            _ => tracing::debug!(cmd, "unknown i8042 command ignored"),
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.state.pending_command.take() {
            Some(CMD_WRITE_CTR) => {
                self.state.control = value | CTR_AUX_DISABLED;
                self.interrupt_if_keyboard_data();
            }
            Some(CMD_WRITE_MODE) => self.state.mode = value,
            Some(CMD_WRITE_OUTP) => {
                self.state.output_port = value;
                if value & OUTP_NOT_RESET == 0 {
                    self.exit.signal(VmExit::Reset);
                }
            }
            Some(CMD_WRITE_KBD_OUT) => self.reply(&[value], OutputSource::Keyboard),
            Some(CMD_WRITE_AUX_OUT) => self.reply(&[value], OutputSource::Aux),
            Some(_) => tracing::debug!(value, "i8042 has no aux device; byte dropped"),
            None => self.keyboard_command(value),
        }
    }

    fn keyboard_command(&mut self, value: u8) {
        let kbd = OutputSource::Keyboard;
        if let Some(cmd) = self.state.pending_keyboard_command.take() {
            // The parameter of a previous command.
            if cmd == KBD_SCANCODE_SET && value == 0 {
                self.reply(&[KBD_ACK, KBD_SCANCODE_SET_2], kbd);
            } else {
                self.reply(&[KBD_ACK], kbd);
            }
            return;
        }
        match value {
            KBD_RESET => self.reply(&[KBD_ACK, KBD_SELF_TEST_OK], kbd),
            KBD_GET_ID => self.reply(&[KBD_ACK, KBD_ID[0], KBD_ID[1]], kbd),
            KBD_ECHO => self.reply(&[KBD_ECHO], kbd),
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_SET_TYPEMATIC => {
                self.state.pending_keyboard_command = Some(value);
                self.reply(&[KBD_ACK], kbd);
            }
            _ => self.reply(&[KBD_ACK], kbd),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, offset) {
            ([byte], DATA) => *byte = self.read_data(),
            ([byte], COMMAND) => *byte = self.status(),
            (other, _) => other.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, offset) {
            (&[value], DATA) => {
                self.state.last_write_was_command = false;
                self.write_data(value);
            }
            (&[value], COMMAND) => {
                self.state.last_write_was_command = true;
                self.command(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
