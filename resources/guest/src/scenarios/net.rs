//! `net`: one frame each way through the first virtio network device, with `virtio-drivers`'
//! `VirtIONetRaw`.
//!
//! ```text
//! NET mac=<aa:bb:cc:dd:ee:ff>                (from the device's config space)
//! NET sent len=<len> fnv=<16 hex digits>     (FNV-1a 64 over the whole frame we sent)
//! NET recv len=<len> fnv=<16 hex digits>     (the host's frame, see below)
//! NET echoed                                 (that frame, sent back unchanged)
//! ```
//!
//! The frame sent: destination ff:ff:ff:ff:ff:ff, source our MAC, ethertype 0x88b5, payload
//! `petrel-guest-frame` then the 46 bytes 0, 1, .., 45 (78 bytes in all). Then frames are
//! received until one has ethertype 0x88b5 and a payload starting `petrel-host-frame`; others
//! (IPv6 router solicitations, ...) are ignored.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

use crate::rt::bootparams::BootParams;
use crate::rt::deadline::Deadline;
use crate::rt::fnv::fnv1a64;
use crate::virtio::{self, poll, DeviceType, PetrelHal};

pub const QUEUE_SIZE: usize = 16;
pub type Net = VirtIONetRaw<PetrelHal, MmioTransport<'static>, QUEUE_SIZE>;

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const GUEST_MAGIC: &[u8] = b"petrel-guest-frame";
const HOST_MAGIC: &[u8] = b"petrel-host-frame";
const FILLER_LEN: u8 = 46;
/// Receive buffers kept posted, each big enough for the header and a 1514-byte frame.
pub const RX_BUFFERS: usize = 8;
pub const RX_BUFFER_LEN: usize = 2048;
const TX_TIMEOUT_MS: u64 = 10_000;
/// How long to wait for the host's frame: the host sends it once it has seen ours.
const RX_TIMEOUT_MS: u64 = 30_000;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let device = virtio::take(boot, DeviceType::Network)?
        .into_iter()
        .next()
        .ok_or("no virtio network device")?;
    // Declared before the driver so that they are dropped after it: dropping the driver resets
    // the device, which then no longer writes into the buffers still posted.
    let mut rx: Vec<Box<[u8]>> = (0..RX_BUFFERS)
        .map(|_| vec![0u8; RX_BUFFER_LEN].into_boxed_slice())
        .collect();
    let window = device.window;
    let mut net = Net::new(device.transport)
        .map_err(|e| format!("network device ({window}): initialisation failed: {e}"))?;

    let mac = net.mac_address();
    println!("NET mac={}", format_mac(&mac));

    // Post every receive buffer before sending, so the host's answer finds room at once.
    let mut tokens = [None; QUEUE_SIZE];
    for (slot, buf) in rx.iter_mut().enumerate() {
        // SAFETY: the buffers are heap allocations nothing touches until `receive_complete`
        // returns them, declared before the driver so that they outlive it.
        unsafe { post(&mut net, &mut tokens, slot, buf)? };
    }

    let frame = guest_frame(&mac);
    transmit(&mut net, &frame)?;
    println!("NET sent len={} fnv={:016x}", frame.len(), fnv1a64(&frame));

    let reply = receive_host_frame(&mut net, &mut tokens, &mut rx)?;
    println!("NET recv len={} fnv={:016x}", reply.len(), fnv1a64(&reply));
    transmit(&mut net, &reply)?;
    println!("NET echoed");
    Ok(())
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The frame the guest sends.
fn guest_frame(mac: &[u8; 6]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&ETHERTYPE);
    frame.extend_from_slice(GUEST_MAGIC);
    frame.extend(0..FILLER_LEN);
    frame
}

/// Sends `frame` (without a virtio-net header: this adds it) and waits until the device has
/// taken it. `VirtIONetRaw::send` would block forever on a dead device, hence the
/// non-blocking calls: the header and the frame go in one buffer (one descriptor).
pub fn transmit(net: &mut Net, frame: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; 16 + frame.len()];
    let header = net
        .fill_buffer_header(&mut buf)
        .map_err(|e| format!("virtio-net header: {e}"))?;
    buf.truncate(header + frame.len());
    buf[header..].copy_from_slice(frame);
    // SAFETY: `buf` is not touched until `transmit_complete`; if the device never completes,
    // `poll::wait` ends the run without returning, so `buf` outlives the device's use of it.
    let token = unsafe { net.transmit_begin(&buf) }.map_err(|e| format!("transmit: {e}"))?;
    poll::wait(
        TX_TIMEOUT_MS,
        format_args!("the network device to send a {}-byte frame", frame.len()),
        || net.poll_transmit().is_some(),
    );
    // SAFETY: the buffer `transmit_begin` was given for `token`.
    match unsafe { net.transmit_complete(token, &buf) } {
        Ok(_) => Ok(()),
        Err(Error::WrongToken) => crate::scenarios::fail_now(
            "the network device completed an unknown transmission instead of ours",
        ),
        Err(e) => Err(format!("transmit: {e}")),
    }
}

/// Posts receive buffer `slot`, noting which descriptor chain (token) holds it.
///
/// # Safety
///
/// Nothing may touch `buf` until `receive_complete` returns it, and it must outlive the
/// driver (whose drop resets the device), unless the device returned it.
pub unsafe fn post(
    net: &mut Net,
    tokens: &mut [Option<usize>; QUEUE_SIZE],
    slot: usize,
    buf: &mut [u8],
) -> Result<(), String> {
    // SAFETY: the caller's promise.
    let token =
        unsafe { net.receive_begin(buf) }.map_err(|e| format!("posting a receive buffer: {e}"))?;
    tokens[usize::from(token)] = Some(slot);
    Ok(())
}

/// Takes received frames until the host's arrives; returns it. Other frames' buffers are
/// posted again.
fn receive_host_frame(
    net: &mut Net,
    tokens: &mut [Option<usize>; QUEUE_SIZE],
    rx: &mut [Box<[u8]>],
) -> Result<Vec<u8>, String> {
    let deadline = Deadline::after_ms(RX_TIMEOUT_MS);
    let mut ignored = 0u32;
    loop {
        let Some(token) = net.poll_receive() else {
            if deadline.expired() {
                // The posted buffers are still the device's: end here rather than free them.
                crate::scenarios::fail_now(format_args!(
                    "no petrel-host-frame within {RX_TIMEOUT_MS} ms \
                     ({ignored} other frames ignored)"
                ));
            }
            core::hint::spin_loop();
            continue;
        };
        let Some(slot) = tokens.get_mut(usize::from(token)).and_then(Option::take) else {
            crate::scenarios::fail_now(format_args!(
                "the network device returned receive chain {token}, which holds no buffer"
            ));
        };
        let buf = &mut rx[slot];
        // SAFETY: `buf` is the buffer `receive_begin` was given for `token`.
        let (header, len) =
            unsafe { net.receive_complete(token, buf) }.map_err(|e| format!("receive: {e}"))?;
        let frame = buf.get(header..header + len).ok_or_else(|| {
            format!("the device reports a {len}-byte frame in a {RX_BUFFER_LEN}-byte buffer")
        })?;
        if is_host_frame(frame) {
            return Ok(frame.to_vec());
        }
        ignored += 1;
        // SAFETY: the device returned `buf`, which `run` keeps alive past the driver.
        unsafe { post(net, tokens, slot, buf)? };
    }
}

fn is_host_frame(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ETHERTYPE[..])
        && frame
            .get(14..)
            .is_some_and(|payload| payload.starts_with(HOST_MAGIC))
}
