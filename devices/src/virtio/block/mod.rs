//! virtio-blk (virtio 1.2, section 5.2): a raw disk image or host block device as a guest
//! disk.
//!
//! - [`disk`]: the backend — opening and locking the image, its capacity, positional I/O
//!   straight into and out of guest memory, flush, discard and write-zeroes.
//! - [`request`]: turning a descriptor chain into a validated request, or into the status
//!   the guest gets for a chain that is not one.
//! - [`worker`]: the I/O thread.
//! - [`device`]: the [`Block`] device as the transport sees it — features, config space,
//!   activation, reset, events.
//! - [`queue`]: serving the request queue on the VMM thread — popping chains, handing
//!   requests to the I/O thread, completions and interrupts.
//! - [`persist`]: saving and restoring.
//!
//! # Threads
//!
//! The VMM thread pops descriptor chains in `queue_notify`, validates them and hands the
//! resulting requests (lists of guest-memory segments, never host pointers) to one I/O
//! thread per disk, `petrel-blk-<id>`. That thread does `pread`/`pwrite`/`fdatasync`/
//! `fallocate` directly against guest memory, writes the status byte, and reports
//! `(head, used length)` back on a channel plus an eventfd; the VMM thread then puts the
//! chain on the used ring and raises the interrupt (honouring `EVENT_IDX`). The queue itself
//! never leaves the VMM thread, so the transport can save it and a rate limiter can hold
//! chains back. At most one queue's worth of requests is in flight.
//!
//! A plain thread rather than io_uring: a blocking thread works on every kernel and every
//! file system or block device, needs no `unsafe` buffer-lifetime bookkeeping for requests
//! the kernel still owns (a reset or a save just waits for the thread), and is simple to
//! reason about. Its cost is one request at a time per disk; io_uring (or more threads) can
//! replace [`worker`] later without changing the VMM-thread side, which only sees
//! submissions and completions.
//!
//! # Swapping the backing file
//!
//! [`Block::update_backing`] replaces the image under a running disk (the API's
//! `PATCH /drives/{id}`): the new image is opened and locked first, requests in flight
//! finish on the old one, a new I/O thread takes over with the new one while the queue
//! stays on the VMM thread, and the driver gets a config-change interrupt with a new config
//! generation and capacity. Swapping to the image already in use re-reads its size and
//! keeps its lock (the new disk shares the open file description).
//!
//! # The guest is untrusted
//!
//! Every field of a chain is checked before any I/O: direction and length of each part,
//! guest-memory bounds, sector ranges with checked arithmetic, the read-only flag. A bad
//! chain fails that one request (`VIRTIO_BLK_S_IOERR` where a status byte can be written)
//! and is counted in [`BlockMetrics::errors`]; only the first few are logged, so the guest
//! cannot flood the log.

mod config_space;
mod device;
mod disk;
mod metrics;
mod persist;
mod queue;
mod request;
mod worker;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimitConfig;

pub use device::Block;
pub use metrics::BlockMetrics;
pub use persist::BlockState;

/// The one request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes in a virtio-blk sector, whatever the image's own block size.
pub const SECTOR_SIZE: u64 = 512;

/// A disk as the user configures it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw image file or a host block device.
    pub path: PathBuf,
    /// The disk's name in petrel (the API, logs, the I/O thread's name).
    pub id: String,
    /// The guest sees a read-only disk and the image is opened read-only.
    #[serde(default)]
    pub readonly: bool,
    /// What the guest reads as the disk's serial number (`VIRTIO_BLK_T_GET_ID`, at most 20
    /// bytes); the id when not set.
    #[serde(default)]
    pub serial: Option<String>,
    /// Bandwidth and operation limits (Firecracker's `rate_limiter` shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimitConfig>,
}

/// Why a disk could not be set up. Every variant except `EventFd` and `Thread` is a user
/// error: a path, permission, lock or configuration problem to report as it is.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The id cannot name a disk.
    #[error("invalid disk id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    /// The image does not exist or cannot be opened with the access asked for.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process (or another open of the same image) holds a conflicting lock.
    #[error(
        "disk image {} is locked by another process (is another VM using it?)",
        path.display()
    )]
    Locked { path: PathBuf },
    /// Taking the lock failed for another reason.
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the size of disk image {}: {source}", path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image is neither a regular file nor a block device.
    #[error("disk image {} is not a regular file or a block device", path.display())]
    NotAFileOrBlockDevice { path: PathBuf },
    /// The image holds less than one sector.
    #[error("disk image {} is smaller than one 512-byte sector", path.display())]
    Empty { path: PathBuf },
    /// Restoring found an image of a different size than the saved one.
    #[error(
        "disk image {} now has {now} sectors, the snapshot was taken with {saved}",
        path.display()
    )]
    CapacityChanged { path: PathBuf, saved: u64, now: u64 },
    /// The rate limit is invalid, or its timer could not be created.
    #[error("disk {id}: rate limit: {source}")]
    RateLimiter {
        id: String,
        #[source]
        source: crate::rate_limiter::RateLimiterError,
    },
    /// The completion eventfd could not be created.
    #[error("cannot create an eventfd for disk {id}: {source}")]
    EventFd {
        id: String,
        #[source]
        source: io::Error,
    },
    /// The I/O thread could not be started.
    #[error("cannot start the I/O thread for disk {id}: {source}")]
    Thread {
        id: String,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests;
