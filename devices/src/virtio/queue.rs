//! A queue's saved state.

use memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::Interrupt;

/// Why a chain's buffers cannot be used as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// The chain has no descriptors.
    Empty,
    /// A device-readable descriptor where the device writes.
    ReadOnly,
    /// A device-writable descriptor where the device reads.
    WriteOnly,
    /// A buffer that is not all inside guest memory.
    OutOfRange { addr: u64, len: u32 },
}

/// The buffers of `chain` as `(address, length)`, each checked to be inside guest memory and
/// device-writable if `writable`, else device-readable. Each device turns a [`ChainError`]
/// into its own error, which names its queue.
pub fn chain_buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, ChainError> {
    let descriptors: Vec<Descriptor> = chain.collect();
    if descriptors.is_empty() {
        return Err(ChainError::Empty);
    }
    descriptors
        .iter()
        .map(|d| {
            if d.is_write_only() != writable {
                return Err(if writable {
                    ChainError::ReadOnly
                } else {
                    ChainError::WriteOnly
                });
            }
            if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
                return Err(ChainError::OutOfRange {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            Ok((d.addr(), d.len()))
        })
        .collect()
}

/// Puts a chain on the used ring. A head past the ring (from a garbage available entry)
/// cannot be used and is skipped, so that virtio-queue does not log it once per chain; the
/// device has already answered (or counted) that chain.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    if head >= queue.size() {
        return Ok(());
    }
    queue.add_used(mem, head, len)
}

/// Raises the used-buffer interrupt if the driver wants one for what was just used
/// (EVENT_IDX); if `used_event` cannot be read, interrupts anyway: better a spurious
/// interrupt than a driver waiting forever.
pub fn signal_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) => interrupt.signal_used_queue(),
        Err(e) => {
            tracing::debug!(%e, "cannot read used_event; interrupting");
            interrupt.signal_used_queue();
        }
    }
}

/// Everything about a virtqueue that a snapshot keeps: the driver's configuration and the
/// device's ring positions. Descriptors the driver made available but the device has not
/// used are in guest memory, past `next_avail`, and are picked up after restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl QueueState {
    /// The state of `queue`.
    pub fn of(queue: &Queue) -> Self {
        QueueState {
            max_size: queue.max_size(),
            size: queue.size(),
            ready: queue.ready(),
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            event_idx: queue.event_idx_enabled(),
        }
    }

    /// Rebuilds the queue, checking the saved values as `virtio-queue` checks a driver's.
    pub fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}
