//! A queue's saved state.

use memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::Interrupt;

/// The most descriptors one chain may have for [`chain_buffers`]: more than any of its
/// devices' queues holds (the spec forbids chains longer than the queue, section 2.7.5.3.1),
/// so an indirect table of 65535 zero-length descriptors costs the VMM thread little.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Why a chain's buffers cannot be used as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptors.
    #[error("the chain has no descriptors")]
    Empty,
    /// A device-readable descriptor where the device writes.
    #[error("read-only descriptor where the device writes")]
    ReadOnly,
    /// A device-writable descriptor where the device reads.
    #[error("write-only descriptor where the device reads")]
    WriteOnly,
    /// A buffer that is not all inside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    /// More than [`MAX_CHAIN_DESCRIPTORS`] descriptors.
    #[error("the chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooLong,
    /// The chain ends at a descriptor that says another follows (a bad `next` index, an
    /// unreadable or misplaced indirect table).
    #[error("the chain breaks off: a descriptor's next one cannot be read")]
    Broken,
}

/// The buffers of `chain` as `(address, length)`, each checked to be inside guest memory and
/// device-writable if `writable`, else device-readable. Each device turns a [`ChainError`]
/// into its own error, which names its queue.
pub fn chain_buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, ChainError> {
    let descriptors: Vec<Descriptor> = chain.take(MAX_CHAIN_DESCRIPTORS + 1).collect();
    match descriptors.last() {
        None => return Err(ChainError::Empty),
        Some(_) if descriptors.len() > MAX_CHAIN_DESCRIPTORS => return Err(ChainError::TooLong),
        Some(last) if last.has_next() => return Err(ChainError::Broken),
        Some(_) => {}
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

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    use super::*;
    use crate::virtio::test_chains::chain;

    const WO: u16 = VRING_DESC_F_WRITE as u16;

    /// `chain_buffers` of the one chain `descs` on a fresh 256-entry queue.
    fn buffers_of(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        writable: bool,
    ) -> Result<Vec<(GuestAddress, u32)>, ChainError> {
        let mock = MockSplitQueue::new(mem, 256);
        mock.add_desc_chains(descs, 0).unwrap();
        let mut queue = mock.create_queue::<Queue>().unwrap();
        let chain = queue.pop_descriptor_chain(mem).expect("a chain");
        chain_buffers(mem, chain, writable)
    }

    #[test]
    fn chains_are_checked_for_direction_range_length_and_breaks() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let ok = chain(0, &[(0x10_0000, 16, WO), (0x10_1000, 32, WO)]);
        assert_eq!(
            buffers_of(&mem, &ok, true),
            Ok(vec![
                (GuestAddress(0x10_0000), 16),
                (GuestAddress(0x10_1000), 32)
            ])
        );
        assert_eq!(buffers_of(&mem, &ok, false), Err(ChainError::WriteOnly));
        let outside = chain(0, &[(0x10_0000, 16, 0), (0x2000_0000, 1, 0)]);
        assert_eq!(
            buffers_of(&mem, &outside, false),
            Err(ChainError::OutOfRange {
                addr: 0x2000_0000,
                len: 1
            })
        );
        // A descriptor whose `next` is past the table: the chain breaks off.
        let mut broken = chain(0, &[(0x10_0000, 16, 0), (0x10_1000, 16, 0)]);
        broken.truncate(1);
        let first = Descriptor::from(broken[0]);
        broken[0] = RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
            first.addr().0,
            first.len(),
            first.flags(),
            300,
        ));
        assert_eq!(buffers_of(&mem, &broken, false), Err(ChainError::Broken));
        // An indirect table of 4096 zero-length descriptors: refused after the cap, not
        // walked to its end.
        let table = chain(0, &vec![(0x10_0000, 0, 0); 4096]);
        let at = 0x20_0000u64;
        for (i, d) in table.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(at + 16 * i as u64)).unwrap();
        }
        let indirect = [RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(
                at,
                16 * 4096,
                VRING_DESC_F_INDIRECT as u16,
                0,
            ),
        )];
        assert_eq!(buffers_of(&mem, &indirect, false), Err(ChainError::TooLong));
    }
}
