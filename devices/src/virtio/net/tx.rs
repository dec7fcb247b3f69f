//! Transmit: frames the guest sends, written to the TAP.
//!
//! Each transmit chain is one packet: the 12-byte virtio-net header, then the frame. Its
//! device-readable descriptors are gathered into an iovec array on the stack and written to
//! the TAP with one `writev`, straight from guest memory: no copy, no allocation.
//!
//! A chain that is not a packet (a device-writable descriptor, shorter than the header plus an
//! Ethernet header, longer than [`MAX_PACKET_LEN`], outside guest memory) is returned unused
//! and counted. When the TAP cannot take a packet at the moment (`EAGAIN`: its queue is
//! full), the packet is dropped and counted, as a NIC drops what its link cannot carry:
//! waiting for the TAP to drain would stall the guest's transmit queue for a frame the
//! network is free to lose anyway.

use std::ptr;

use memory::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryBackend;

use super::device::{signal_used, Active};
use super::rx::{add_used, next_chain};
use super::{LogLimit, Net, NetMetrics, Tap, ETH_HLEN, MAX_PACKET_LEN, VNET_HDR_LEN};
use crate::virtio::CHAINS_PER_PASS;

/// Most pieces of guest memory one packet may be gathered from: a descriptor gives one, or
/// two where it crosses from one guest memory region to the next.
const MAX_IOVS: usize = 512;

/// Why a transmit chain is not a packet.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("a descriptor is device-writable")]
    WriteOnly,
    #[error("the packet is longer than {MAX_PACKET_LEN} bytes")]
    TooLong,
    #[error("the packet is {0} bytes, shorter than the virtio-net and Ethernet headers")]
    TooShort(usize),
    #[error("a descriptor is outside guest memory")]
    OutsideMemory,
    #[error("the packet is in more than {MAX_IOVS} pieces")]
    TooManyPieces,
}

impl Net {
    /// Sends every packet the driver made available on the transmit queue.
    pub(super) fn process_tx(&mut self) {
        let Net {
            tap,
            active,
            metrics,
            log,
            config,
            tx_limiter,
            ..
        } = self;
        let Some(Active {
            mem,
            tx_queue: queue,
            interrupt,
            kicks,
            ..
        }) = active.as_mut()
        else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let id = config.id.as_str();
        let empty = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty; MAX_IOVS];
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        while let Some(chain) = next_chain(queue, mem, interrupt, log, id) {
            if budget == 0 {
                // The rest waits for the next pass, after the event loop served the others.
                queue.go_to_previous_position();
                kicks.kick(super::TX_QUEUE);
                break;
            }
            budget -= 1;
            let head = chain.head_index();
            let gathered = gather(chain, mem, &mut iov);
            if let Ok((_, len)) = gathered {
                if !tx_limiter.consume_request((len - VNET_HDR_LEN) as u64) {
                    // The chain stays available; the limiter's timer resumes this loop.
                    queue.go_to_previous_position();
                    break;
                }
            }
            match gathered {
                // SAFETY: `gather` filled `iov[..pieces]` with slices of guest memory, which
                // `mem` (borrowed for this whole function) keeps mapped; the regions are plain
                // mmaps, so the pointers need no guard.
                Ok((pieces, len)) => unsafe { send(tap, &iov[..pieces], len, metrics, log, id) },
                Err(e) => {
                    metrics.tx_malformed += 1;
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(id, head, %e, suppressed, "malformed transmit chain dropped");
                    }
                }
            }
            // Transmit buffers are only read: the used length is 0 (virtio 1.2, 2.7.8).
            add_used(queue, mem, head, 0, log, id);
            used = true;
        }
        if used {
            signal_used(queue, mem, interrupt);
        }
    }
}

/// Writes one packet of `len` bytes to the TAP and counts the outcome.
///
/// # Safety
///
/// Every iovec in `iov` must point at memory mapped and readable for its length.
unsafe fn send(
    tap: &Tap,
    iov: &[libc::iovec],
    len: usize,
    metrics: &mut NetMetrics,
    log: &mut LogLimit,
    id: &str,
) {
    let result = loop {
        // SAFETY: the caller guarantees the iovecs point at readable memory.
        match unsafe { tap.writev(iov) } {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match result {
        Ok(_) => {
            metrics.tx_frames += 1;
            metrics.tx_bytes += (len - VNET_HDR_LEN) as u64;
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            metrics.tx_dropped += 1;
            if let Some(suppressed) = log.allow() {
                tracing::debug!(id, tap = tap.name(), suppressed, "TAP full: frame dropped");
            }
        }
        Err(e) => {
            metrics.tap_write_errors += 1;
            if let Some(suppressed) = log.allow() {
                tracing::warn!(id, tap = tap.name(), %e, suppressed, "cannot write to the TAP");
            }
        }
    }
}

/// Fills `iov` with the pieces of guest memory the packet in `chain` is made of. Returns the
/// number of pieces and the packet's length.
fn gather(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    iov: &mut [libc::iovec; MAX_IOVS],
) -> Result<(usize, usize), ChainError> {
    let mut pieces = 0;
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WriteOnly);
        }
        let desc_len = desc.len() as usize;
        len += desc_len;
        if len > MAX_PACKET_LEN {
            return Err(ChainError::TooLong);
        }
        for slice in mem.get_slices(desc.addr(), desc_len) {
            let slice = slice.map_err(|_| ChainError::OutsideMemory)?;
            let entry = iov.get_mut(pieces).ok_or(ChainError::TooManyPieces)?;
            *entry = libc::iovec {
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            };
            pieces += 1;
        }
    }
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(ChainError::TooShort(len));
    }
    Ok((pieces, len))
}
