//! `blk`: drives every virtio block device (command-line order, `i` from 0) with
//! `virtio-drivers`' `VirtIOBlk`.
//!
//! ```text
//! BLK <i> capacity=<sectors> ro=<0|1>        (ro: the device offered VIRTIO_BLK_F_RO)
//! BLK <i> id=<GET_ID string, up to its first NUL>     (or id=<error>, then FAIL)
//! BLK <i> read fnv=<16 hex digits>           (FNV-1a 64 over sectors 0..8, 4096 bytes)
//! BLK <i> write=rejected                     (read-only: the write of sectors 8..16 failed)
//! BLK <i> write=ok flush=ok                  (writable: then sectors 8..16 are read back)
//! ```
//!
//! The write puts `((sector * 7 + k) as u8) ^ 0x5a` at byte `k` of each sector 8..16 (`sector`
//! absolute). A read-only device that accepts the write, a read-back that differs, or no block
//! device at all, fails the scenario.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use virtio_drivers::device::blk::SECTOR_SIZE;

use crate::rt::bootparams::BootParams;
use crate::rt::fnv::fnv1a64;
use crate::virtio::blk::{self, Blk};
use crate::virtio::{self, DeviceType};

/// Generous: a request takes about a millisecond on this project's slowest KVM.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
const READ_SECTORS: core::ops::Range<u64> = 0..8;
const WRITE_SECTORS: core::ops::Range<u64> = 8..16;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let devices = virtio::take(boot, DeviceType::Block)?;
    if devices.is_empty() {
        return Err("no virtio block device".into());
    }
    for (i, device) in devices.into_iter().enumerate() {
        let window = device.window;
        let mut blk = Blk::new(device.transport)
            .map_err(|e| format!("block device {i} ({window}): initialisation failed: {e}"))?;
        check_device(i, &mut blk)?;
    }
    Ok(())
}

fn check_device(i: usize, blk: &mut Blk) -> Result<(), String> {
    let capacity = blk.capacity();
    let readonly = blk.readonly();
    println!("BLK {i} capacity={capacity} ro={}", u8::from(readonly));
    if capacity < WRITE_SECTORS.end {
        return Err(format!(
            "block device {i} has {capacity} sectors, the test needs {}",
            WRITE_SECTORS.end
        ));
    }

    // Read first, silently: `VirtIOBlk::device_id` (like `flush`) has no non-blocking form and
    // would spin forever on a dead device, so a read (with a timeout) proves the device answers.
    let mut data = vec![0u8; byte_len(READ_SECTORS)];
    blk::read(blk, READ_SECTORS.start, &mut data, REQUEST_TIMEOUT_MS)
        .map_err(|e| format!("block device {i}: reading sectors {READ_SECTORS:?} failed: {e}"))?;

    let mut id = [0u8; 20];
    match blk.device_id(&mut id) {
        Ok(len) => println!("BLK {i} id={}", String::from_utf8_lossy(&id[..len])),
        Err(e) => {
            println!("BLK {i} id={e}");
            return Err(format!("block device {i}: GET_ID failed: {e}"));
        }
    }
    println!("BLK {i} read fnv={:016x}", fnv1a64(&data));

    let pattern = pattern(WRITE_SECTORS);
    let written = blk::write(blk, WRITE_SECTORS.start, &pattern, REQUEST_TIMEOUT_MS);
    if readonly {
        return match written {
            Err(_) => {
                println!("BLK {i} write=rejected");
                Ok(())
            }
            Ok(()) => Err(format!(
                "block device {i} is read-only but accepted a write to sectors {WRITE_SECTORS:?}"
            )),
        };
    }
    written
        .map_err(|e| format!("block device {i}: writing sectors {WRITE_SECTORS:?} failed: {e}"))?;
    blk.flush()
        .map_err(|e| format!("block device {i}: flush failed: {e}"))?;
    println!("BLK {i} write=ok flush=ok");

    let mut back = vec![0u8; pattern.len()];
    blk::read(blk, WRITE_SECTORS.start, &mut back, REQUEST_TIMEOUT_MS).map_err(|e| {
        format!("block device {i}: reading back sectors {WRITE_SECTORS:?} failed: {e}")
    })?;
    if let Some(at) = back.iter().zip(&pattern).position(|(a, b)| a != b) {
        return Err(format!(
            "block device {i}: sector {} byte {} reads {:#04x} after writing {:#04x}",
            WRITE_SECTORS.start + (at / SECTOR_SIZE) as u64,
            at % SECTOR_SIZE,
            back[at],
            pattern[at]
        ));
    }
    Ok(())
}

fn byte_len(sectors: core::ops::Range<u64>) -> usize {
    (sectors.end - sectors.start) as usize * SECTOR_SIZE
}

/// The bytes the write test puts in `sectors`.
fn pattern(sectors: core::ops::Range<u64>) -> alloc::vec::Vec<u8> {
    sectors
        .flat_map(|sector| (0..SECTOR_SIZE).map(move |k| ((sector * 7 + k as u64) as u8) ^ 0x5a))
        .collect()
}
