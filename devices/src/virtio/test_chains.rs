//! Descriptor chains for the devices' in-process tests (test builds only).

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;

/// The descriptors of one chain of `(addr, len, flags)` placed at table index `first` on:
/// each links to the next (`VRING_DESC_F_NEXT` added), the last ends the chain.
pub fn chain(first: u16, descs: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect()
}
