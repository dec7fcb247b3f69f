//! The 16550A UART at COM1 (port 0x3f8, IRQ 4): vm-superio's `Serial` on the port-I/O bus.
//!
//! Guest output goes to a host sink (stdout, a file, or nowhere); a failing sink loses bytes
//! but never stops the guest. Host input is pushed into the 64-byte receive FIFO with
//! [`Serial::enqueue_input`]; what does not fit stays with the caller, who retries later.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as UartError, NoEvents};
use vmm_sys_util::eventfd::EventFd;

use super::trigger::EventFdTrigger;
use crate::bus::BusDevice;

pub mod log;

/// COM1's base port.
pub const SERIAL_PORT: u64 = 0x3f8;
/// How many ports the UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// COM1's interrupt line (GSI).
pub const SERIAL_IRQ: u32 = 4;
/// Bytes the receive FIFO holds.
pub const SERIAL_FIFO_SIZE: usize = 64;

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// Errors from building a serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    OpenOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A saved state holds more input than the FIFO can.
    #[error(
        "saved serial state holds {len} input bytes, more than the {SERIAL_FIFO_SIZE}-byte FIFO"
    )]
    InputOverflow { len: usize },
    /// Raising the interrupt a restored state has pending failed.
    #[error("cannot raise the serial interrupt: {0}")]
    Interrupt(#[source] io::Error),
}

/// Where the guest's serial output goes. Written as `stdout`, `none` or `file:PATH`, on the
/// command line and in JSON alike.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialOutput {
    /// petrel's standard output.
    #[default]
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
    /// Discarded.
    None,
}

/// A serial output that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid serial {0:?}: expected stdout, none or file:PATH")]
pub struct SerialOutputError(pub String);

impl std::str::FromStr for SerialOutput {
    type Err = SerialOutputError;
    fn from_str(s: &str) -> Result<Self, SerialOutputError> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(SerialOutputError(s.to_string())),
            },
        }
    }
}

impl TryFrom<String> for SerialOutput {
    type Error = SerialOutputError;
    fn try_from(s: String) -> Result<Self, SerialOutputError> {
        s.parse()
    }
}

impl From<SerialOutput> for String {
    fn from(s: SerialOutput) -> String {
        match s {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::None => "none".into(),
            SerialOutput::File(p) => format!("file:{}", p.display()),
        }
    }
}

impl SerialOutput {
    /// Opens the sink.
    pub fn open(&self) -> Result<Box<dyn Write + Send>, SerialError> {
        Ok(match self {
            SerialOutput::Stdout => Box::new(io::stdout()),
            SerialOutput::File(path) => Box::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|source| SerialError::OpenOutput {
                        path: path.clone(),
                        source,
                    })?,
            ),
            SerialOutput::None => Box::new(io::sink()),
        })
    }
}

/// The UART's registers and receive FIFO, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// The COM1 UART.
pub struct Serial {
    uart: Uart,
    output_errors: u64,
}

impl Serial {
    /// A UART in its power-on state that raises `interrupt` and writes guest output to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(EventFdTrigger::new(interrupt), out),
            output_errors: 0,
        }
    }

    /// A UART in its power-on state writing to the sink `output` names.
    pub fn with_output(interrupt: EventFd, output: &SerialOutput) -> Result<Self, SerialError> {
        Ok(Self::new(interrupt, output.open()?))
    }

    /// A UART rebuilt from `state`; raises `interrupt` at once if the state has one pending.
    pub fn restore(
        state: &SerialState,
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        if state.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(SerialError::InputOverflow {
                len: state.in_buffer.len(),
            });
        }
        let s = vm_superio::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Uart::from_state(&s, EventFdTrigger::new(interrupt), NoEvents, out).map_err(
            |e| match e {
                UartError::Trigger(e) | UartError::IOError(e) => SerialError::Interrupt(e),
                UartError::FullFifo => SerialError::InputOverflow {
                    len: state.in_buffer.len(),
                },
            },
        )?;
        Ok(Self {
            uart,
            output_errors: 0,
        })
    }

    /// The UART's state.
    pub fn save(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// The interrupt event, for registering it as the irqfd of [`SERIAL_IRQ`].
    pub fn interrupt(&self) -> &EventFd {
        self.uart.interrupt_evt().event()
    }

    /// Puts host input into the receive FIFO and returns how many bytes fit. Accepts nothing
    /// while the FIFO is full or the guest has the UART in loopback mode.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let before = self.uart.fifo_capacity();
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(UartError::FullFifo) => 0,
            Err(e) => {
                // The bytes are in the FIFO; only the interrupt failed.
                tracing::warn!(%e, "serial input interrupt");
                before.saturating_sub(self.uart.fifo_capacity())
            }
        }
    }

    /// Free bytes in the receive FIFO.
    pub fn fifo_capacity_left(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Guest output bytes lost because the sink failed.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] if offset < SERIAL_PORT_LEN => *byte = self.uart.read(offset as u8),
            other => other.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        if offset >= SERIAL_PORT_LEN {
            return;
        }
        match self.uart.write(offset as u8, *value) {
            Ok(()) => {}
            Err(UartError::IOError(e)) => {
                self.output_errors += 1;
                // Log the 1st, 2nd, 4th, 8th... failure: a dead sink must not flood the log.
                if self.output_errors.is_power_of_two() {
                    tracing::warn!(%e, lost = self.output_errors, "serial output lost");
                }
            }
            Err(e) => tracing::warn!(%e, "serial write"),
        }
    }
}

#[cfg(test)]
mod tests;
