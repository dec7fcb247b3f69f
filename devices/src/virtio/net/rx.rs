//! Receive: frames from the TAP into the guest's receive buffers.
//!
//! One frame is read from the TAP into a buffer allocated once, then copied into as many
//! receive chains as it needs (one without `VIRTIO_NET_F_MRG_RXBUF`). While the posted
//! buffers cannot hold it, the frame stays in the device and the TAP is not read further;
//! the driver's next notification of the receive queue picks it up. The TAP is registered
//! edge-triggered, so each pass reads it until it is empty or the guest runs out of buffers.

use memory::GuestMemoryMmap;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::device::{signal_used, Active};
use super::{LogLimit, Net, NetMetrics, ETH_HLEN, MAX_PACKET_LEN, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::CHAINS_PER_PASS;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The receive side's memory, allocated once when the device is built.
pub(super) struct RxBuffers {
    /// One packet from the TAP: the virtio-net header, then the frame.
    packet: Box<[u8]>,
    /// Length of the packet in `packet` that waits for receive buffers.
    pending: Option<usize>,
    /// The chains holding the current frame, in order: head index and bytes written.
    placed: Vec<(u16, u32)>,
    /// Chains found unusable after the first chain of the current frame; they are returned
    /// empty once the frame is delivered, so the frame's chains stay together in the used ring.
    malformed: Vec<u16>,
}

impl RxBuffers {
    pub(super) fn new() -> Self {
        RxBuffers {
            packet: vec![0; MAX_PACKET_LEN].into_boxed_slice(),
            pending: None,
            placed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            malformed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        }
    }

    /// Forgets the frame waiting for buffers (device reset).
    pub(super) fn drop_pending(&mut self) {
        self.pending = None;
    }

    /// Whether a frame waits for receive buffers.
    #[cfg(test)]
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// What became of one frame.
enum Outcome {
    /// In the guest's buffers.
    Delivered,
    /// Too big for the guest's buffers: thrown away.
    TooBig,
    /// The posted buffers cannot hold it yet: it stays pending.
    NoBuffers,
}

/// Why a receive chain cannot take data.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("a descriptor is not device-writable")]
    ReadOnly,
    #[error("a descriptor is outside guest memory")]
    OutsideMemory,
    #[error("the chain is too small ({0} writable bytes)")]
    TooSmall(usize),
}

/// How much of the frame one chain took, and where the header's `num_buffers` landed.
struct ChainFill {
    written: usize,
    num_buffers_at: [Option<GuestAddress>; 2],
}

impl Net {
    /// Moves frames from the TAP to the guest until the TAP is empty or the guest has no room
    /// for the next frame. Runs when the TAP becomes readable and when the driver posts
    /// receive buffers.
    pub(super) fn process_rx(&mut self) {
        let Net {
            tap,
            active,
            rx,
            metrics,
            log,
            config,
            rx_limiter,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            // A NIC that is not up drops what arrives: stale frames are not kept for later.
            while matches!(tap.read(&mut rx.packet), Ok(n) if n > 0) {
                metrics.rx_dropped += 1;
            }
            return;
        };
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        loop {
            if budget == 0 {
                // A flood from the TAP waits for the next pass, after the event loop served
                // the others (the TAP is edge-triggered: the kick is what brings us back).
                active.kicks.kick(super::RX_QUEUE);
                break;
            }
            budget -= 1;
            let len = match rx.pending {
                Some(len) => len,
                None => match tap.read(&mut rx.packet) {
                    // End of file: the TAP went away; nothing more to read.
                    Ok(0) => break,
                    Ok(len) if len < VNET_HDR_LEN + ETH_HLEN => {
                        metrics.tap_read_errors += 1;
                        if let Some(suppressed) = log.allow() {
                            tracing::warn!(
                                id = %config.id,
                                tap = tap.name(),
                                len,
                                suppressed,
                                "runt packet from the TAP dropped",
                            );
                        }
                        continue;
                    }
                    Ok(len) => {
                        rx.pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        metrics.tap_read_errors += 1;
                        if let Some(suppressed) = log.allow() {
                            tracing::warn!(
                                id = %config.id,
                                tap = tap.name(),
                                %e,
                                suppressed,
                                "cannot read from the TAP",
                            );
                        }
                        break;
                    }
                },
            };
            let frame_len = (len - VNET_HDR_LEN) as u64;
            if !rx_limiter.consume_request(frame_len) {
                // The frame stays pending; the limiter's timer resumes this loop.
                break;
            }
            let outcome = place_frame(active, rx, len, &mut used, metrics, log, &config.id);
            if !matches!(outcome, Outcome::Delivered) {
                // Only delivered frames are charged.
                rx_limiter.refund_request(frame_len);
            }
            match outcome {
                Outcome::Delivered => {
                    rx.pending = None;
                    metrics.rx_frames += 1;
                    metrics.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Outcome::TooBig => {
                    rx.pending = None;
                    metrics.rx_dropped += 1;
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(
                            id = %config.id,
                            len,
                            suppressed,
                            "received frame too big for the guest's buffers dropped",
                        );
                    }
                }
                Outcome::NoBuffers => break,
            }
        }
        if used {
            signal_used(&mut active.rx_queue, &active.mem, &active.interrupt);
        }
    }
}

/// Puts the packet of `len` bytes in `rx` into the receive queue. Sets `used` when it added
/// anything to the used ring.
fn place_frame(
    active: &mut Active,
    rx: &mut RxBuffers,
    len: usize,
    used: &mut bool,
    metrics: &mut NetMetrics,
    log: &mut LogLimit,
    id: &str,
) -> Outcome {
    let Active {
        mem,
        rx_queue: queue,
        acked_features,
        interrupt,
        ..
    } = active;
    let mergeable = *acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    if *acked_features & (1 << VIRTIO_NET_F_GUEST_CSUM) == 0 {
        // Without GUEST_CSUM the flags must be zero (virtio 1.2, 5.1.6.4.1).
        rx.packet[0] = 0;
    }
    rx.placed.clear();
    rx.malformed.clear();
    if !queue.ready() {
        return Outcome::NoBuffers;
    }
    let packet = &rx.packet[..len];
    // Chains taken from the ring for this frame and not given back yet.
    let mut popped: u16 = 0;
    let mut written = 0;
    let mut num_buffers_at = [None, None];
    while written < len {
        let Some(chain) = next_chain(queue, mem, interrupt, log, id) else {
            let ring_full = popped == queue.size();
            rewind(queue, popped);
            // With every slot of the ring posted and still too little room, no buffer can
            // come: the frame will never fit.
            return if ring_full {
                Outcome::TooBig
            } else {
                Outcome::NoBuffers
            };
        };
        popped += 1;
        let head = chain.head_index();
        let first = rx.placed.is_empty();
        match write_chain(chain, mem, &packet[written..], first) {
            Ok(fill) => {
                if first {
                    num_buffers_at = fill.num_buffers_at;
                }
                rx.placed.push((head, fill.written as u32));
                written += fill.written;
                if !mergeable && written < len {
                    // The frame must fit one chain; the chain serves the next frame.
                    rewind(queue, popped);
                    return Outcome::TooBig;
                }
            }
            Err(e) => {
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(
                        id,
                        head,
                        %e,
                        suppressed,
                        "unusable receive chain returned empty",
                    );
                }
                if first {
                    // Nothing of this frame is in the used ring yet: give it back right away.
                    metrics.rx_malformed += 1;
                    add_used(queue, mem, head, 0, log, id);
                    *used = true;
                    popped -= 1;
                } else {
                    rx.malformed.push(head);
                }
            }
        }
    }
    let num_buffers = (rx.placed.len() as u16).to_le_bytes();
    for (addr, byte) in num_buffers_at.iter().zip(num_buffers) {
        // Both bytes were written a moment ago as part of the header, so they are in guest
        // memory and the write cannot fail.
        if let Some(addr) = addr {
            let _ = mem.write_obj(byte, *addr);
        }
    }
    for &(head, len) in &rx.placed {
        add_used(queue, mem, head, len, log, id);
    }
    for &head in &rx.malformed {
        metrics.rx_malformed += 1;
        add_used(queue, mem, head, 0, log, id);
    }
    *used = true;
    Outcome::Delivered
}

/// The next available chain; when the ring is empty, notifications are re-enabled (with
/// `EVENT_IDX`, `avail_event` now points past every chain taken) and the ring checked once
/// more for a buffer posted meanwhile.
pub(super) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    interrupt: &crate::virtio::Interrupt,
    log: &mut LogLimit,
    id: &str,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Some(chain);
    }
    match queue.enable_notification(mem) {
        Ok(false) => None,
        Ok(true) => {
            let chain = queue.pop_descriptor_chain(mem);
            if chain.is_none() {
                // The available index moved but no chain can be taken: the driver wrote an
                // impossible index or the ring is outside memory.
                if let Some(suppressed) = log.allow() {
                    tracing::error!(
                        id,
                        suppressed,
                        "broken available ring; the device needs a reset"
                    );
                }
                interrupt.set_needs_reset();
            }
            chain
        }
        Err(e) => {
            if let Some(suppressed) = log.allow() {
                tracing::error!(id, ?e, suppressed, "cannot re-enable queue notifications");
            }
            None
        }
    }
}

/// Puts the last `count` chains taken back into the available ring.
fn rewind(queue: &mut Queue, count: u16) {
    for _ in 0..count {
        queue.go_to_previous_position();
    }
}

/// Adds a used element, logging a failure (the used ring was checked at activation).
pub(super) fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    log: &mut LogLimit,
    id: &str,
) {
    if let Err(e) = crate::virtio::queue::add_used(queue, mem, head, len) {
        if let Some(suppressed) = log.allow() {
            tracing::warn!(
                id,
                head,
                ?e,
                suppressed,
                "cannot return a chain to the used ring"
            );
        }
    }
}

/// Copies as much of `data` as fits into the device-writable descriptors of `chain`. The
/// first chain of a frame must hold the whole virtio-net header.
fn write_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    data: &[u8],
    first: bool,
) -> Result<ChainFill, ChainError> {
    let mut fill = ChainFill {
        written: 0,
        num_buffers_at: [None, None],
    };
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::ReadOnly);
        }
        let start = fill.written;
        let n = (desc.len() as usize).min(data.len() - start);
        if n == 0 {
            continue;
        }
        mem.write_slice(&data[start..start + n], desc.addr())
            .map_err(|_| ChainError::OutsideMemory)?;
        if first {
            for (i, at) in fill.num_buffers_at.iter_mut().enumerate() {
                let offset = NUM_BUFFERS_OFFSET + i;
                if (start..start + n).contains(&offset) {
                    *at = desc.addr().checked_add((offset - start) as u64);
                }
            }
        }
        fill.written += n;
    }
    if fill.written == 0 || (first && fill.written < VNET_HDR_LEN) {
        return Err(ChainError::TooSmall(fill.written));
    }
    Ok(fill)
}
