//! Guest-side virtio through the `virtio-drivers` crate: an implementation independent of
//! petrel's devices, so the end-to-end tests check petrel against someone else's reading of the
//! specification.
//!
//! - `hal`: the [`virtio_drivers::Hal`] for this guest (identity-mapped DMA from the page
//!   allocator);
//! - `cmdline`: the `virtio_mmio.device=<size>@<addr>:<irq>` tokens petrel appends to the
//!   kernel command line, one per device, in the order the user gave the devices;
//! - `acpi`: the same windows from the DSDT's `LNRO0005` devices, when petrel gives ACPI tables
//!   (and then leaves them off the command line);
//! - `devices`: probes those windows and hands scenarios the transports by device type;
//! - `poll`, `blk`: waiting for a device with a timeout (a timeout is a failure, never a hang);
//! - `raw`, `fuse`: a device `virtio-drivers` has no type for (virtio-fs), register by
//!   register, and FUSE requests on its request queue.
//!
//! The guest runs with interrupts disabled: drivers are polled, never interrupt-driven.

pub mod acpi;
pub mod blk;
pub mod cmdline;
pub mod devices;
pub mod fuse;
pub mod gpu;
pub mod hal;
pub mod poll;
pub mod raw;

pub use devices::{take, take_kinds, take_raw, windows, Device};
pub use hal::PetrelHal;
pub use virtio_drivers::transport::DeviceType;
