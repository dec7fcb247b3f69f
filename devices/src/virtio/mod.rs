//! Virtio devices (virtio 1.x, "modern") on the MMIO transport.
//!
//! - [`VirtioDevice`] is what a device implements: its type, features, queues, config
//!   space, and what it does when the driver activates, notifies or resets it.
//! - [`mmio::MmioTransport`] puts a device on the MMIO bus: the register file of the
//!   virtio-mmio version 2 layout, feature negotiation, device status, queue setup.
//! - [`mmio::VirtioSubscriber`] connects the transport to the event loop: queue notifications
//!   arrive on ioeventfds, the device's own host-side sources (a TAP, sockets, timers) next
//!   to them.
//! - [`Interrupt`] raises the device's interrupt through an irqfd.
//!
//! The guest is untrusted: a malformed descriptor chain fails that request, or marks the
//! device as needing reset; it never panics and never stops the VMM.

pub mod block;
pub mod console;
mod device;
pub mod gpu;
pub mod input;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
#[cfg(test)]
mod test_chains;
pub mod vhost_user;
pub mod vsock;

pub use device::{
    read_config_bytes, ActivateError, AsAny, DeviceEnv, DirtyLogError, QueueKicks, VirtioDevice,
    CHAINS_PER_PASS, HOST_EVENT_BASE,
};
pub use interrupt::Interrupt;
pub use queue::QueueState;

/// Device ids (virtio 1.2, section 5).
pub mod ids {
    pub const NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
    pub const BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
    pub const CONSOLE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
    pub const VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
    pub const INPUT: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_INPUT;
    pub const GPU: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_GPU;
    pub const FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
}

/// Feature bits every device shares (virtio 1.2, section 6).
pub mod features {
    /// The device follows virtio 1.x (the modern interface). Every petrel device offers it
    /// and the transport refuses a driver that does not accept it.
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 =
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    /// What every petrel device offers on top of its own features.
    pub const COMMON: u64 = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;
}

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}
