//! Saving and restoring the transport.

use std::sync::Arc;

use memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

use super::transport::{queue_events, MmioTransport};
use crate::virtio::{features, status, Interrupt, QueueState, VirtioDevice};

/// The transport's registers and queues. The device's own state is saved by the device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub queue_config_error: bool,
    #[serde(default)]
    pub disabled_queues: u64,
    pub interrupt_status: u32,
    /// The device had asked for a reset (DEVICE_NEEDS_RESET).
    #[serde(default)]
    pub needs_reset: bool,
    pub active: bool,
    pub queues: Vec<QueueState>,
}

/// Why a transport could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved queues do not match the device.
    #[error("saved state has {saved} queues, the device has {device}")]
    QueueCount { saved: usize, device: usize },
    /// A saved queue is invalid.
    #[error("saved queue {index}: {source}")]
    Queue {
        index: usize,
        source: virtio_queue::Error,
    },
    /// The saved features are not ones the device offers.
    #[error(
        "saved features {acked:#x} are not a subset of the device's {offered:#x} with VERSION_1"
    )]
    Features { acked: u64, offered: u64 },
    /// The device refused the restored queues.
    #[error("device activation: {0}")]
    Activate(#[from] crate::virtio::ActivateError),
    /// The queue eventfds could not be created.
    #[error("cannot create queue eventfds: {0}")]
    Io(#[from] std::io::Error),
}

impl MmioTransport {
    /// The transport's state. The vCPUs must be paused; the device first finishes what it
    /// has in flight, so the saved queues include it.
    pub fn save(&mut self) -> MmioState {
        if self.active {
            self.device.quiesce();
        }
        let queues = if self.active {
            self.device
                .queues()
                .into_iter()
                .map(QueueState::of)
                .collect()
        } else {
            self.queues.iter().map(QueueState::of).collect()
        };
        MmioState {
            device_status: self.device_status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            queue_config_error: self.queue_config_error,
            disabled_queues: self.disabled_queues,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            active: self.active,
            queues,
        }
    }

    /// Builds a transport around `device` (already restored from its own state) as it was
    /// saved; an active device gets its queues back and carries on where it stopped.
    /// `irqfd` is the device's interrupt line in the new VM.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: vmm_sys_util::eventfd::EventFd,
        state: &MmioState,
    ) -> Result<Self, RestoreError> {
        let expected = device.queue_max_sizes().len();
        let offered = device.avail_features();
        if state.acked_features & !offered != 0
            || (state.device_status & status::FEATURES_OK != 0
                && state.acked_features & features::VERSION_1 == 0)
        {
            return Err(RestoreError::Features {
                acked: state.acked_features,
                offered,
            });
        }
        if state.queues.len() != expected {
            return Err(RestoreError::QueueCount {
                saved: state.queues.len(),
                device: expected,
            });
        }
        let queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                q.to_queue()
                    .map_err(|source| RestoreError::Queue { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(Interrupt::with_status(irqfd, state.interrupt_status));
        if state.needs_reset {
            interrupt.restore_needs_reset();
        }
        let mut transport = MmioTransport {
            queue_evts: queue_events(queues.len())?,
            device,
            mem,
            interrupt,
            queues: Vec::new(),
            device_status: state.device_status,
            active: false,
            acked_features: state.acked_features,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            queue_sel: state.queue_sel,
            queue_config_error: state.queue_config_error,
            disabled_queues: state.disabled_queues,
        };
        if state.active && state.device_status & status::DRIVER_OK != 0 {
            let env = transport.device_env();
            transport.device.activate(queues, env)?;
            transport.active = true;
            // Buffers the driver made available while the VM was being saved are served now.
            for index in 0..expected {
                transport.device.queue_notify(index);
            }
        } else {
            transport.queues = queues;
        }
        Ok(transport)
    }
}
