//! Devices of a petrel guest: the port-I/O and MMIO buses, the legacy PC devices (serial,
//! i8042, RTC/CMOS, power management), and — in later issues — the virtio transport, one
//! folder per virtio device, and rate limiters.

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitSignal, VmExit};
