//! `blkrate`: N sequential one-sector reads of sector 0 on the first virtio block device, for
//! host tests that check the device's rate limiter (its counters, and that requests it delays
//! still complete). N is `petrel.n=<N>` on the command line, 20 when absent.
//!
//! ```text
//! BLKRATE n=<N> done
//! ```

use alloc::format;
use alloc::string::String;

use virtio_drivers::device::blk::SECTOR_SIZE;

use crate::rt::bootparams::BootParams;
use crate::virtio::blk::{self, Blk};
use crate::virtio::{self, DeviceType};

const DEFAULT_N: u64 = 20;
/// Per request, and generous: the rate limiter may hold a request back for a while.
const REQUEST_TIMEOUT_MS: u64 = 30_000;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let cmdline = boot.cmdline();
    let n = match cmdline.get("petrel.n") {
        None => DEFAULT_N,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| format!("petrel.n=`{text}` is not a request count"))?,
    };
    let device = virtio::take(boot, DeviceType::Block)?
        .into_iter()
        .next()
        .ok_or("no virtio block device")?;
    let window = device.window;
    let mut blk = Blk::new(device.transport)
        .map_err(|e| format!("block device 0 ({window}): initialisation failed: {e}"))?;
    let mut sector = [0u8; SECTOR_SIZE];
    for request in 0..n {
        blk::read(&mut blk, 0, &mut sector, REQUEST_TIMEOUT_MS)
            .map_err(|e| format!("read {} of {n} failed: {e}", request + 1))?;
    }
    println!("BLKRATE n={n} done");
    Ok(())
}
