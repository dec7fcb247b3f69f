//! A virtio device's interrupt: the ISR status bits and the irqfd that raises the GSI.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// The interrupt line of one virtio device, shared by the transport (which reads and
/// acknowledges the status) and the device (which raises it).
pub struct Interrupt {
    irqfd: EventFd,
    status: AtomicU32,
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// An interrupt raised by writing `irqfd` (an eventfd registered with KVM as an irqfd).
    pub fn new(irqfd: EventFd) -> Self {
        Self::with_status(irqfd, 0)
    }

    /// An interrupt with pending status bits, for restore.
    pub fn with_status(irqfd: EventFd, status: u32) -> Self {
        Interrupt {
            irqfd,
            status: AtomicU32::new(status),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Tells the driver the device used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver the config space changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Marks the device as needing a reset (DEVICE_NEEDS_RESET, virtio 1.2 section 2.1.1)
    /// and tells the driver through a config-change interrupt.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.signal_config_change();
    }

    /// Sets DEVICE_NEEDS_RESET again after a restore, without a new interrupt (the saved
    /// status already carries the one the driver has not acknowledged).
    pub fn restore_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The pending status bits (the InterruptStatus register).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// Clears acknowledged bits (the InterruptACK register).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears everything, for a device reset.
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            tracing::error!(%e, "cannot raise a virtio interrupt");
        }
    }

    /// The irqfd, for tests that wait for the interrupt.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
