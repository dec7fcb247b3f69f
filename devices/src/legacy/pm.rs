//! The ACPI hardware-reduced sleep control and reset register: one byte at port 0x600 that
//! the FADT names as both `SLEEP_CONTROL_REG` and `RESET_REG`.
//!
//! Writing SLP_EN with SLP_TYP = S5 powers the VM off; writing [`RESET_VALUE`] resets it.
//! Other sleep states are not supported and are ignored.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// The register's port.
pub const PM_PORT: u64 = 0x600;
/// The register is one byte wide.
pub const PM_PORT_LEN: u64 = 1;
/// The sleep type of S5 (soft off), as the DSDT's `\_S5` package also says.
pub const S5_SLP_TYP: u8 = 5;
/// The value the FADT's reset register takes to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// SLP_EN: enter the sleep state in SLP_TYP.
pub const SLEEP_ENABLE: u8 = 1 << 5;

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The sleep control / reset register.
pub struct PowerManagement {
    exit: Arc<ExitSignal>,
}

impl PowerManagement {
    /// A register that reports power-off and reset to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (&[value], 0) = (data, offset) else {
            tracing::debug!(offset, len = data.len(), "PM register access ignored");
            return;
        };
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLEEP_ENABLE != 0 && sleep_type == S5_SLP_TYP {
            self.exit.signal(VmExit::PowerOff);
        } else if value == RESET_VALUE {
            self.exit.signal(VmExit::Reset);
        } else {
            tracing::debug!(value, "unsupported PM register value ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm() -> (PowerManagement, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (PowerManagement::new(exit.clone()), exit)
    }

    #[test]
    fn sleep_enable_with_s5_powers_off() {
        let (mut pm, exit) = pm();
        pm.write(0, &[SLEEP_ENABLE | S5_SLP_TYP << 2]);
        assert_eq!(exit.reason(), Some(VmExit::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let (mut pm, exit) = pm();
        pm.write(0, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }

    #[test]
    fn other_sleep_states_and_values_are_ignored() {
        let (mut pm, exit) = pm();
        pm.write(0, &[S5_SLP_TYP << 2]); // S5 without SLP_EN
        pm.write(0, &[SLEEP_ENABLE | 3 << 2]); // S3
        pm.write(0, &[SLEEP_ENABLE]); // S0
        pm.write(0, &[0x02]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn only_one_byte_writes_count() {
        let (mut pm, exit) = pm();
        pm.write(0, &[RESET_VALUE, 0]);
        pm.write(0, &[]);
        pm.write(1, &[RESET_VALUE]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn reads_return_zero() {
        let (mut pm, _) = pm();
        let mut data = [0xff; 4];
        pm.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn every_byte_value_is_handled_without_panicking() {
        for value in 0..=255u8 {
            let (mut pm, exit) = pm();
            pm.write(0, &[value]);
            let expected = match value {
                RESET_VALUE => Some(VmExit::Reset),
                v if v & SLEEP_ENABLE != 0 && (v >> 2) & 7 == S5_SLP_TYP => Some(VmExit::PowerOff),
                _ => None,
            };
            assert_eq!(exit.reason(), expected, "value {value:#04x}");
        }
    }
}
