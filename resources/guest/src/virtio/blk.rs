//! Block requests on `virtio-drivers`' `VirtIOBlk` with a timeout: its blocking calls spin
//! forever on a device that never answers, so reads and writes go through its non-blocking
//! interface and [`poll::wait`].

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

use super::cmdline::MmioWindow;
use super::{poll, PetrelHal};
use crate::scenarios;

/// A virtio block device driven by `virtio-drivers`.
pub type Blk = VirtIOBlk<PetrelHal, MmioTransport<'static>>;

/// Reads `buf.len()` bytes (a non-zero multiple of 512) from `sector` on.
pub fn read(blk: &mut Blk, sector: u64, buf: &mut [u8], timeout_ms: u64) -> Result<(), Error> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` are not touched again until `complete_read_blocks`; if
    // the device never completes the request, `poll::wait` ends the run without returning, so
    // they outlive the device's use of them.
    let token = unsafe { blk.read_blocks_nb(sector as usize, &mut req, buf, &mut resp)? };
    poll::wait(
        timeout_ms,
        format_args!("a read of sector {sector}"),
        || blk.peek_used().is_some(),
    );
    // SAFETY: the same buffers `read_blocks_nb` was given for `token`.
    let result = unsafe { blk.complete_read_blocks(token, &req, buf, &mut resp) };
    check_popped(result, "read")
}

/// Writes `buf` (a non-zero multiple of 512 bytes long) from `sector` on.
pub fn write(blk: &mut Blk, sector: u64, buf: &[u8], timeout_ms: u64) -> Result<(), Error> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: as in `read`: nothing touches `req`, `buf` or `resp` until the request completes
    // (or the run ends in `poll::wait`).
    let token = unsafe { blk.write_blocks_nb(sector as usize, &mut req, buf, &mut resp)? };
    poll::wait(
        timeout_ms,
        format_args!("a write of sector {sector}"),
        || blk.peek_used().is_some(),
    );
    // SAFETY: the same buffers `write_blocks_nb` was given for `token`.
    let result = unsafe { blk.complete_write_blocks(token, &req, buf, &mut resp) };
    check_popped(result, "write")
}

/// virtio-mmio (version 2) register offsets: the config generation and the device-specific
/// config space, whose first field for a block device is the 64-bit `capacity`.
const MMIO_CONFIG_GENERATION: u64 = 0x0fc;
const MMIO_CONFIG: u64 = 0x100;
/// Rounds of re-reading when the generation keeps changing under the reads.
const CONSISTENT_READ_TRIES: u32 = 100;

/// The capacity, in sectors, that the config space of the block device at `window` holds now.
///
/// `VirtIOBlk::capacity` cannot tell: virtio-drivers 0.13 reads the config space once, in
/// `VirtIOBlk::new`, and returns that value ever after. So this reads it again, as a driver
/// handling a config-change interrupt would: both 32-bit halves between two equal readings of
/// the config generation (virtio 1.2, 4.2.2.2). `None` if the window is too small to hold the
/// field, or the generation never settled.
pub fn config_capacity(window: &MmioWindow) -> Option<u64> {
    if window.size < MMIO_CONFIG + 8 {
        return None;
    }
    let reg = |offset: u64| {
        let ptr = (window.addr + offset) as usize as *const u32;
        // SAFETY: `window` was probed as a virtio-mmio device (`virtio::take`), which checked
        // it is identity-mapped below 4 GiB and aligned, and `offset + 4 <= window.size`, so
        // `ptr` is an aligned device register. Reading the config space or the generation has
        // no side effect on the device. The device's `MmioTransport` accesses its registers
        // only through volatile reads and writes within its own calls and hands out no
        // references to them, and none of its calls runs while this one does.
        unsafe { ptr.read_volatile() }
    };
    for _ in 0..CONSISTENT_READ_TRIES {
        let before = reg(MMIO_CONFIG_GENERATION);
        let low = reg(MMIO_CONFIG);
        let high = reg(MMIO_CONFIG + 4);
        if reg(MMIO_CONFIG_GENERATION) == before {
            return Some(u64::from(high) << 32 | u64::from(low));
        }
    }
    None
}

/// `WrongToken` means the device returned another chain than the only one outstanding: ours
/// was not popped and the device may still use its buffers, so the run must end here.
fn check_popped(result: Result<(), Error>, what: &str) -> Result<(), Error> {
    if result == Err(Error::WrongToken) {
        scenarios::fail_now(format_args!(
            "the block device completed an unknown request instead of our {what}"
        ));
    }
    result
}
