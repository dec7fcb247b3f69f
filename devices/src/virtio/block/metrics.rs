//! The disk's counters, shared by the VMM thread and the I/O thread.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A disk's counters since it was created. Operations count when they succeed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlockMetrics {
    pub read_ops: u64,
    pub write_ops: u64,
    /// Bytes read from the disk into guest memory.
    pub read_bytes: u64,
    /// Bytes written from guest memory to the disk.
    pub write_bytes: u64,
    pub flush_ops: u64,
    pub discard_ops: u64,
    pub write_zeroes_ops: u64,
    pub get_id_ops: u64,
    /// Requests of a type the device does not implement (answered `VIRTIO_BLK_S_UNSUPP`).
    pub unsupported_ops: u64,
    /// Requests the device refused without doing I/O: malformed chains, out-of-range
    /// sectors, writes to a read-only disk.
    pub errors: u64,
    /// Requests the host failed (answered `VIRTIO_BLK_S_IOERR`).
    pub io_errors: u64,
    /// Times the backing file was replaced while the disk existed
    /// ([`super::Block::update_backing`]).
    pub backing_swaps: u64,
}

/// The live counters behind [`BlockMetrics`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub discard_ops: AtomicU64,
    pub write_zeroes_ops: AtomicU64,
    pub get_id_ops: AtomicU64,
    pub unsupported_ops: AtomicU64,
    pub errors: AtomicU64,
    pub io_errors: AtomicU64,
    pub backing_swaps: AtomicU64,
}

/// Adds `n` to `counter` and returns the new value.
pub(super) fn add(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
}

/// Whether the `count`th occurrence of something the guest controls gets a log line: the
/// first ten, then only at powers of two, so a guest cannot flood the log.
pub(super) fn worth_logging(count: u64) -> bool {
    count <= 10 || count.is_power_of_two()
}

impl Counters {
    pub(super) fn snapshot(&self) -> BlockMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockMetrics {
            read_ops: get(&self.read_ops),
            write_ops: get(&self.write_ops),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            flush_ops: get(&self.flush_ops),
            discard_ops: get(&self.discard_ops),
            write_zeroes_ops: get(&self.write_zeroes_ops),
            get_id_ops: get(&self.get_id_ops),
            unsupported_ops: get(&self.unsupported_ops),
            errors: get(&self.errors),
            io_errors: get(&self.io_errors),
            backing_swaps: get(&self.backing_swaps),
        }
    }
}
