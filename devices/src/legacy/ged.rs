//! The ACPI Generic Event Device (GED, `ACPI0013`): how the host signals platform events to
//! a hardware-reduced guest. Today it carries one event, the power button.
//!
//! The device is one 32-bit register, the event status, at offset 0 of an MMIO window, and
//! one interrupt line (an edge, active high). A press sets [`GED_POWER_BUTTON`] in the
//! status and pulses the interrupt. The DSDT's `_EVT` method, which the OS runs on that
//! interrupt, reads the register and notifies the power button device.
//!
//! - A 4-byte read at offset 0 returns the pending events and clears them, in one access:
//!   an event is never reported twice nor lost between a read and a clear.
//! - Any other read (another size or offset inside the window) returns zeros and changes
//!   nothing; writes are ignored.

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::trigger::EventFdTrigger;
use crate::bus::BusDevice;

/// The length of the MMIO window the device takes (one page; only the first 4 bytes decode).
pub const GED_WINDOW_LEN: u64 = 0x1000;
/// The event status register's offset in the window.
pub const GED_STATUS_OFFSET: u64 = 0;
/// The event status register's width in bytes.
pub const GED_STATUS_LEN: u64 = 4;
/// Event status bit: the power button was pressed.
pub const GED_POWER_BUTTON: u32 = 1 << 0;
/// Every event bit the device defines.
const GED_EVENTS: u32 = GED_POWER_BUTTON;

/// Errors of the Generic Event Device.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// The interrupt could not be raised.
    #[error("cannot raise the GED interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
    /// A saved state has events the device does not know.
    #[error("saved GED status {0:#x} has bits no event uses")]
    UnknownEvents(u32),
}

/// The device's registers, as plain data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GedState {
    /// Events raised and not yet read by the guest.
    pub status: u32,
}

/// The Generic Event Device.
pub struct Ged {
    status: u32,
    irq: EventFdTrigger,
}

impl Ged {
    /// A device with no pending event that raises its interrupt through `interrupt`.
    pub fn new(interrupt: EventFd) -> Self {
        Self {
            status: 0,
            irq: EventFdTrigger::new(interrupt),
        }
    }

    /// A device rebuilt from `state`. Its interrupt is not raised again: an interrupt the
    /// guest had not taken yet is in the saved interrupt controllers' state.
    pub fn restore(state: &GedState, interrupt: EventFd) -> Result<Self, GedError> {
        if state.status & !GED_EVENTS != 0 {
            return Err(GedError::UnknownEvents(state.status));
        }
        Ok(Self {
            status: state.status,
            irq: EventFdTrigger::new(interrupt),
        })
    }

    /// The device's state.
    pub fn save(&self) -> GedState {
        GedState {
            status: self.status,
        }
    }

    /// The interrupt event, for registering it as the irqfd of the device's GSI.
    pub fn interrupt(&self) -> &EventFd {
        self.irq.event()
    }

    /// Presses the power button: sets [`GED_POWER_BUTTON`] and interrupts the guest. A press
    /// the guest has not read yet and a new one read as one.
    pub fn press_power_button(&mut self) -> Result<(), GedError> {
        self.status |= GED_POWER_BUTTON;
        self.irq.trigger().map_err(GedError::Interrupt)
    }

    /// The events the guest has not read yet.
    pub fn pending(&self) -> u32 {
        self.status
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == GED_STATUS_OFFSET && data.len() as u64 == GED_STATUS_LEN {
            data.copy_from_slice(&std::mem::take(&mut self.status).to_le_bytes());
        } else {
            tracing::debug!(
                offset,
                len = data.len(),
                "GED read outside the status register"
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "GED write ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn ged() -> Ged {
        Ged::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    fn read_status(ged: &mut Ged) -> u32 {
        let mut data = [0xff; 4];
        ged.read(GED_STATUS_OFFSET, &mut data);
        u32::from_le_bytes(data)
    }

    /// How many interrupts were raised since the last call.
    fn interrupts(ged: &Ged) -> u64 {
        ged.interrupt().read().unwrap_or(0)
    }

    #[test]
    fn a_new_device_has_no_event_and_raises_no_interrupt() {
        let mut ged = ged();
        assert_eq!(read_status(&mut ged), 0);
        assert_eq!(interrupts(&ged), 0);
    }

    #[test]
    fn a_press_sets_the_power_button_bit_and_interrupts_once() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        assert_eq!(interrupts(&ged), 1);
        assert_eq!(ged.pending(), GED_POWER_BUTTON);
        assert_eq!(read_status(&mut ged), GED_POWER_BUTTON);
    }

    #[test]
    fn reading_the_status_clears_it() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        assert_eq!(read_status(&mut ged), GED_POWER_BUTTON);
        assert_eq!(read_status(&mut ged), 0);
        assert_eq!(ged.pending(), 0);
    }

    #[test]
    fn two_presses_before_a_read_interrupt_twice_and_read_as_one() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        ged.press_power_button().unwrap();
        assert_eq!(interrupts(&ged), 2);
        assert_eq!(read_status(&mut ged), GED_POWER_BUTTON);
        assert_eq!(read_status(&mut ged), 0);
    }

    #[test]
    fn other_reads_return_zeros_and_keep_the_event() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        for (offset, len) in [(0, 1), (0, 2), (0, 8), (1, 4), (4, 4), (0xffc, 4), (0, 0)] {
            let mut data = vec![0xff; len];
            ged.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0), "read {len} at {offset:#x}");
        }
        assert_eq!(read_status(&mut ged), GED_POWER_BUTTON);
    }

    #[test]
    fn writes_are_ignored() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        interrupts(&ged);
        for (offset, data) in [
            (0, &[0u8; 4][..]),
            (0, &[0xff; 4]),
            (0, &[1]),
            (8, &[]),
            (u64::MAX, &[1]),
        ] {
            ged.write(offset, data);
        }
        assert_eq!(interrupts(&ged), 0);
        assert_eq!(read_status(&mut ged), GED_POWER_BUTTON);
    }

    #[test]
    fn save_and_restore_keep_a_pending_press_without_a_new_interrupt() {
        let mut ged = ged();
        ged.press_power_button().unwrap();
        let state = ged.save();
        assert_eq!(
            state,
            GedState {
                status: GED_POWER_BUTTON
            }
        );
        let mut restored = Ged::restore(&state, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        assert_eq!(interrupts(&restored), 0);
        assert_eq!(read_status(&mut restored), GED_POWER_BUTTON);
        assert_eq!(
            Ged::restore(&GedState::default(), EventFd::new(EFD_NONBLOCK).unwrap())
                .unwrap()
                .pending(),
            0
        );
    }

    #[test]
    fn a_state_with_unknown_events_is_refused() {
        let bad = GedState { status: 1 << 7 };
        assert!(matches!(
            Ged::restore(&bad, EventFd::new(EFD_NONBLOCK).unwrap()),
            Err(GedError::UnknownEvents(0x80))
        ));
    }
}
