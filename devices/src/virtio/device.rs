//! The interface between a virtio device and its transport.

use std::any::Any;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use memory::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// Event-loop tokens at or above this value belong to the device's own host-side sources;
/// below it they are queue indices.
pub const HOST_EVENT_BASE: u32 = 1 << 16;

/// What an activated device works with.
#[derive(Clone)]
pub struct DeviceEnv {
    /// The guest's memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The queues' notification eventfds, for a device to call itself back.
    pub kicks: QueueKicks,
}

/// The most descriptor chains a device serves from one queue in one event-loop callback.
/// A guest can keep a ring full forever; past this budget the device schedules itself
/// again with [`QueueKicks::kick`] and returns, so the event loop (signals, the exit
/// event, other devices) keeps running.
pub const CHAINS_PER_PASS: usize = 256;

/// Copies the bytes of a config space `space` at `offset` into `data`, as
/// [`VirtioDevice::read_config`] reads: bytes past the end (or at an offset that does not fit
/// a `usize`) read as zero.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| space.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// The notification eventfds of a device's queues (shared with the transport).
#[derive(Clone, Default)]
pub struct QueueKicks(Arc<Vec<EventFd>>);

impl QueueKicks {
    /// Kicks for `evts`, one per queue.
    pub fn new(evts: Arc<Vec<EventFd>>) -> Self {
        QueueKicks(evts)
    }

    /// The notification eventfd of queue `index`, for a device whose queues another process
    /// serves (vhost-user): it reads the eventfd itself.
    pub fn eventfd(&self, index: usize) -> Option<&EventFd> {
        self.0.get(index)
    }

    /// Makes the event loop call `queue_notify(index)` again, after what else is ready.
    pub fn kick(&self, index: usize) {
        if let Some(evt) = self.0.get(index) {
            if let Err(e) = evt.write(1) {
                tracing::error!(%e, index, "cannot reschedule a queue");
            }
        }
    }
}

/// Gives `dyn VirtioDevice` a way back to its concrete type (for device-specific state,
/// metrics and runtime updates).
pub trait AsAny {
    /// The device as `Any`.
    fn as_any(&self) -> &dyn Any;
    /// The device as mutable `Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Why a device could not start working with the queues the driver gave it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer or more queues than the device works with.
    #[error("the device needs {expected} queues, the driver enabled {got}")]
    QueueCount { expected: usize, got: usize },
    /// A host resource the device needs failed.
    #[error("{0}")]
    Backend(String),
}

/// Why a device cannot log the guest pages it writes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirtyLogError(pub String);

/// A virtio device, independent of its transport. `queue_notify`, `init_host_events` and
/// `host_event` run on the VMM thread; `read_config`, `write_config`, `activate` and `reset`
/// run on the vCPU thread whose MMIO access caused them. All run with the transport locked.
pub trait VirtioDevice: Send + AsAny {
    /// The virtio device id (see [`super::ids`]).
    fn device_type(&self) -> u32;

    /// The features the device offers, including [`super::features::COMMON`] where it
    /// supports them.
    fn avail_features(&self) -> u64;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads `data.len()` bytes of the device-specific config space at `offset`. Bytes past
    /// the end of the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific config space. Most devices have nothing writable: the
    /// default logs and ignores the write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            device = self.device_type(),
            offset,
            len = data.len(),
            "ignored write to read-only config space"
        );
    }

    /// The driver set DRIVER_OK: the device takes its queues and starts working.
    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError>;

    /// The driver reset the device: it drops its queues, stops any in-flight work and goes
    /// back to its state before activation. Host-side connections (a TAP, a disk file) stay.
    fn reset(&mut self);

    /// The queues of an active device, for saving (the transport saves them with its own
    /// state). An inactive device returns none.
    fn queues(&self) -> Vec<&Queue>;

    /// The driver notified queue `index` (only called while the device is active).
    fn queue_notify(&mut self, index: usize);

    /// Whether something other than the event loop reads the queue notification eventfds
    /// (a vhost-user back end): the event loop then does not watch them.
    fn handles_queue_notifications(&self) -> bool {
        false
    }

    /// Registers the device's host-side event sources with tokens from
    /// [`HOST_EVENT_BASE`] up. Called once when the device joins the event loop.
    fn init_host_events(&mut self, _ops: &mut EventOps) {}

    /// One of the device's host-side sources is ready. The device may add or remove sources
    /// through `ops`.
    fn host_event(&mut self, _events: Events, _ops: &mut EventOps) {}

    /// The device's counters, as JSON (for logs and metrics endpoints).
    fn metrics(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Finishes whatever the device has in flight (requests handed to an I/O thread) and
    /// puts it on the used rings, so that saved queues hide nothing. The vCPUs are paused.
    /// A device that must stop for this (a vhost-user back end) stays stopped until
    /// [`Self::resume`].
    fn quiesce(&mut self) {}

    /// Why the device cannot be saved for a snapshot or a live migration, if it cannot.
    fn unsavable(&self) -> Option<&'static str> {
        None
    }

    /// The VM runs again after a [`Self::quiesce`]: what it stopped starts again.
    fn resume(&mut self) {}

    /// Starts or stops logging the guest pages the device writes where petrel's dirty log
    /// cannot see them (a vhost-user back end's writes). Devices that write guest memory
    /// only through petrel's own mappings have nothing to do.
    fn set_dirty_logging(&mut self, _on: bool) -> Result<(), DirtyLogError> {
        Ok(())
    }

    /// Whether [`Self::set_dirty_logging`] can turn logging on, and why not.
    fn can_log_dirty(&self) -> Result<(), DirtyLogError> {
        Ok(())
    }

    /// Adds to `set` (a RAM-order page set, see the `memory` crate) the pages logged since
    /// the last call, and clears them.
    fn take_dirty(&mut self, _set: &mut [u64]) {}

    /// The device-specific config generation changes whenever the device changes its config
    /// space on its own (for example link status or console size).
    fn config_generation(&self) -> u32 {
        0
    }
}
