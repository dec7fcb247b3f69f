//! `blkswap`: watches the first virtio block device for its backing file being replaced under
//! it (the host swaps the image, as `PATCH /drives/{id}` does, or rewrites sector 0 in place).
//!
//! ```text
//! BLKSWAP before fnv=<16 hex digits>             (FNV-1a 64 over sector 0, 512 bytes)
//! BLKSWAP capacity=<sectors>                     (as read at initialisation)
//! BLKSWAP after fnv=<16 hex digits> capacity=<sectors>
//! ```
//!
//! After the first two lines the guest re-reads sector 0 about every millisecond of guest time
//! (the pacing of `count`) until its contents differ from the first read; then it prints the
//! `after` line, with the capacity read again from the config space (not the value
//! `virtio-drivers` cached at initialisation), and passes. No change within 60 s (measured with
//! the TSC), a failed read or no block device fails the scenario.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use virtio_drivers::device::blk::SECTOR_SIZE;

use crate::rt::bootparams::BootParams;
use crate::rt::cpu;
use crate::rt::deadline::Deadline;
use crate::rt::fnv::fnv1a64;
use crate::virtio::blk::{self, Blk};
use crate::virtio::{self, DeviceType};

/// Generous: a request takes about a millisecond on this project's slowest KVM.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long the host has to change the disk.
const CHANGE_TIMEOUT_MS: u64 = 60_000;
/// Spins between two reads: about a millisecond of guest time, as `count` paces.
const POLL_SPINS: u32 = 100_000;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let Some(device) = virtio::take(boot, DeviceType::Block)?.into_iter().next() else {
        return Err("no virtio block device".into());
    };
    let window = device.window;
    let mut blk = Blk::new(device.transport)
        .map_err(|e| format!("block device ({window}): initialisation failed: {e}"))?;

    let first = read_sector_0(&mut blk)?;
    println!("BLKSWAP before fnv={:016x}", fnv1a64(&first));
    println!("BLKSWAP capacity={}", blk.capacity());

    let deadline = Deadline::after_ms(CHANGE_TIMEOUT_MS);
    let now = loop {
        cpu::spin(POLL_SPINS);
        let now = read_sector_0(&mut blk)?;
        if now != first {
            break now;
        }
        if deadline.expired() {
            return Err(format!(
                "sector 0 did not change within {CHANGE_TIMEOUT_MS} ms"
            ));
        }
    };
    let capacity = blk::config_capacity(&window)
        .ok_or_else(|| format!("block device ({window}): cannot read its capacity"))?;
    println!(
        "BLKSWAP after fnv={:016x} capacity={capacity}",
        fnv1a64(&now)
    );
    Ok(())
}

fn read_sector_0(blk: &mut Blk) -> Result<alloc::vec::Vec<u8>, String> {
    let mut sector = vec![0u8; SECTOR_SIZE];
    blk::read(blk, 0, &mut sector, REQUEST_TIMEOUT_MS)
        .map_err(|e| format!("reading sector 0 failed: {e}"))?;
    Ok(sector)
}
