//! Devices of a petrel guest: the port-I/O and MMIO buses, the legacy PC devices (serial,
//! i8042, RTC/CMOS, power management), the virtio-mmio transport with one folder per
//! virtio device, and the rate limiter disks and network interfaces share.

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitSignal, VmExit};
