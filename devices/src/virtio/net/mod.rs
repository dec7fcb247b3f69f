//! virtio-net (virtio 1.2, section 5.1) on a host TAP interface.
//!
//! - [`NetConfig`] / [`MacAddr`]: what the user configures.
//! - `tap`: the TAP, opened with `IFF_VNET_HDR` so frames carry a 12-byte
//!   `virtio_net_hdr_v1` both ways; the kernel does checksum and segmentation work the guest
//!   negotiated away (`TUNSETOFFLOAD`).
//! - [`Net`] (`device`): the [`VirtioDevice`](super::VirtioDevice) with a receive queue (0)
//!   and a transmit queue (1), no control queue.
//! - `tx`: frames the guest sends are written to the TAP straight from guest memory
//!   (`writev`), one frame per descriptor chain.
//! - `rx`: frames read from the TAP are copied into the guest's receive buffers, spread over
//!   several buffers when `VIRTIO_NET_F_MRG_RXBUF` was negotiated. A frame is delivered as soon
//!   as the posted buffers can hold it; while they cannot, it waits in the device and the TAP
//!   is not read further.
//! - `persist`: [`NetState`], and restore as a constructor.
//!
//! Both directions are loops that handle one frame per step, so that a rate limiter can stop
//! a loop between frames and resume it from a timer.

mod config;
mod device;
mod persist;
mod rx;
mod tap;
mod tx;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use config::{MacAddr, MacError, NetConfig};
pub use device::Net;
pub use persist::NetState;
pub use tap::{Tap, TapError};

/// Size of `virtio_net_hdr_v1`: with VERSION_1 the header always has `num_buffers`.
pub const VNET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();
/// The Ethernet header: destination, source, ethertype.
pub const ETH_HLEN: usize = 14;
/// The largest frame either way: 64 KiB of payload (a segmentation offload's limit) plus
/// the Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + ETH_HLEN;
/// The largest packet on the TAP or in a transmit chain: header plus frame (65562 bytes).
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Size of the receive and transmit queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Why a network device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP could not be opened or set up.
    #[error("net device {id:?}: {source}")]
    Tap {
        id: String,
        #[source]
        source: TapError,
    },
    /// No MAC address was configured and no random one could be made.
    #[error("net device {id:?}: cannot generate a MAC address: {source}")]
    Random {
        id: String,
        #[source]
        source: std::io::Error,
    },
    /// On restore, the TAP lacks offloads the device offered when it was saved (the guest
    /// may be using them).
    #[error(
        "net device {id:?}: TAP {tap:?} does not support offloads the saved device offered \
         (virtio-net feature bits {missing:#x})"
    )]
    RestoreFeatures {
        id: String,
        tap: String,
        missing: u64,
    },
    /// A rate limit is invalid, or its timer could not be created.
    #[error("net device {id:?}: rate limit: {source}")]
    RateLimiter {
        id: String,
        #[source]
        source: crate::rate_limiter::RateLimiterError,
    },
}

impl NetError {
    /// Whether the user can fix this in their configuration or host setup (a bad TAP name,
    /// missing permission, a TAP in use or of the wrong kind, a host whose TAP lacks
    /// offloads), as opposed to a failure of the host.
    pub fn is_user_error(&self) -> bool {
        match self {
            NetError::Tap { source, .. } => source.is_user_error(),
            NetError::Random { .. } => false,
            NetError::RestoreFeatures { .. } => true,
            NetError::RateLimiter { source, .. } => {
                matches!(
                    source,
                    crate::rate_limiter::RateLimiterError::InvalidConfig(_)
                )
            }
        }
    }
}

/// Counters of one network device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames from the TAP the guest could not take: too big for its buffers, or the device
    /// was not activated.
    pub rx_dropped: u64,
    /// Receive chains the device could not write (not device-writable, outside guest memory,
    /// too small for the header); they are returned empty.
    pub rx_malformed: u64,
    /// Frames the guest sent that reached the TAP.
    pub tx_frames: u64,
    /// Bytes of those frames (without the virtio-net header).
    pub tx_bytes: u64,
    /// Well-formed frames the TAP could not take at the moment (`EAGAIN`).
    pub tx_dropped: u64,
    /// Transmit chains that were not a frame (a device-writable descriptor, shorter than the
    /// header plus an Ethernet header, longer than [`MAX_PACKET_LEN`], outside guest memory).
    pub tx_malformed: u64,
    /// Reads from the TAP that failed, other than "nothing to read".
    pub tap_read_errors: u64,
    /// Writes to the TAP that failed, other than `EAGAIN`.
    pub tap_write_errors: u64,
}

/// Lets through one log line per interval and counts the ones held back, so a guest cannot
/// flood the host's log.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    const INTERVAL: Duration = Duration::from_secs(1);

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + Self::INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod rx_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tx_tests;
