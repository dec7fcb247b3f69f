//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): the register file a
//! driver uses to negotiate features, set up queues and drive the device status, plus the
//! event-loop subscriber that delivers queue notifications.

mod events;
mod persist;
mod transport;

pub use events::VirtioSubscriber;
pub use persist::{MmioState, RestoreError};
pub use transport::{MmioTransport, MMIO_SIZE, NOTIFY_OFFSET};

#[cfg(test)]
mod tests;
