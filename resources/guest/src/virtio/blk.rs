//! Block requests on `virtio-drivers`' `VirtIOBlk` with a timeout: its blocking calls spin
//! forever on a device that never answers, so reads and writes go through its non-blocking
//! interface and [`poll::wait`].

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

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
