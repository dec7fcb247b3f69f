//! Replacing a disk's backing file while it runs (`Block::update_backing`).

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use super::*;
use crate::virtio::block::{BlockError, BlockState};
use crate::virtio::QueueState;

const SECTORS: u64 = 64;
const DISK: usize = SECTORS as usize * 512;
/// What [`Image::filled`] images hold here, unlike any sector of [`pattern`].
const NEW: u8 = 0x5a;

fn capacity_in_config(block: &Block) -> u64 {
    let mut bytes = [0u8; 8];
    block.read_config(0, &mut bytes);
    u64::from_le_bytes(bytes)
}

fn pattern_of(range: std::ops::Range<usize>) -> Vec<u8> {
    range.map(pattern).collect()
}

#[test]
fn swap_while_idle_serves_the_new_file_and_releases_the_old_one() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::filled(DISK, NEW);
    let mut driver = Driver::new(&mem, old.config(false));
    assert_eq!(driver.read(0, 512).data, pattern_of(0..512));

    driver.block.update_backing(&new.path).unwrap();

    assert_eq!(driver.read(0, 512).data, vec![NEW; 512]);
    assert_eq!(driver.write(1, &[7; 512]).status, OK);
    assert_eq!(&new.contents()[512..1024], &[7; 512]);
    assert_eq!(old.contents(), pattern_of(0..DISK));
    assert_eq!(driver.block.config().path, new.path);
    assert_eq!(driver.block.metrics().backing_swaps, 1);
    // Same size, yet the driver hears that the medium changed.
    assert_eq!(capacity_in_config(&driver.block), SECTORS);
    assert_eq!(driver.block.config_generation(), 1);
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    // The old image's lock went with it; the new one's is held.
    assert!(Block::new(old.config(false)).is_ok());
    assert!(matches!(
        Block::new(new.config(false)),
        Err(BlockError::Locked { .. })
    ));
}

#[test]
fn requests_in_flight_finish_on_the_old_file_and_later_reads_see_the_new_one() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::filled(DISK, NEW);
    let mut driver = Driver::new(&mem, old.config(false));
    // Four writes and a read of the first one's sector: 15 of the 16 table entries.
    let writes: Vec<_> = (0..4u8)
        .map(|i| {
            let data = [0x10 + i; 512];
            driver
                .queue_request(VIRTIO_BLK_T_OUT, u64::from(i), &data, 0)
                .1
        })
        .collect();
    let (read_buf, read_status) = driver.queue_request(VIRTIO_BLK_T_IN, 0, &[], 512);
    driver.block.queue_notify(0);

    driver.block.update_backing(&new.path).unwrap();

    // The "event loop" collected nothing, yet all five are on the used ring, done.
    assert_eq!(driver.used_idx(), 5);
    for status in writes.into_iter().chain([read_status]) {
        assert_eq!(mem.read_obj::<u8>(status).unwrap(), OK);
    }
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, read_buf).unwrap();
    assert_eq!(got, vec![0x10; 512], "the read ran on the old file");
    let contents = old.contents();
    for i in 0..4u8 {
        let sector = usize::from(i) * 512;
        assert_eq!(&contents[sector..sector + 512], &[0x10 + i; 512]);
    }
    assert_eq!(new.contents(), vec![NEW; DISK]);
    driver.used_seen = 5;
    assert_eq!(driver.read(0, 512).data, vec![NEW; 512]);
    let m = driver.block.metrics();
    assert_eq!((m.write_ops, m.read_ops, m.io_errors), (4, 2, 0));
}

#[test]
fn chains_made_available_before_the_swap_but_not_yet_served_use_the_new_file() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::filled(DISK, NEW);
    let mut driver = Driver::new(&mem, old.config(false));
    // Available, but the driver has not notified yet.
    let (buf, status) = driver.queue_request(VIRTIO_BLK_T_IN, 2, &[], 512);

    driver.block.update_backing(&new.path).unwrap();
    let used = driver.wait_used(1);

    let out = driver.outcome(&used[0], buf, 512, status);
    assert_eq!(out.status, OK);
    assert_eq!(out.data, vec![NEW; 512]);
}

#[test]
fn capacity_change_shows_in_config_space_bumps_the_generation_and_raises_the_config_interrupt() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let bigger = Image::new(2 * DISK);
    let smaller = Image::new(DISK / 2);
    let mut driver = Driver::new(&mem, old.config(false));
    assert_eq!(driver.block.config_generation(), 0);
    assert_eq!(driver.read(SECTORS, 512).status, IOERR);
    driver.interrupt.ack(u32::MAX);

    driver.block.update_backing(&bigger.path).unwrap();

    assert_eq!(capacity_in_config(&driver.block), 2 * SECTORS);
    assert_eq!(driver.block.capacity(), 2 * SECTORS);
    assert_eq!(driver.block.config_generation(), 1);
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    let start = SECTORS as usize * 512;
    let out = driver.read(SECTORS, 512);
    assert_eq!(out.status, OK);
    assert_eq!(out.data, pattern_of(start..start + 512));

    driver.interrupt.ack(u32::MAX);
    driver.block.update_backing(&smaller.path).unwrap();

    assert_eq!(capacity_in_config(&driver.block), SECTORS / 2);
    assert_eq!(driver.block.config_generation(), 2);
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(driver.read(SECTORS / 2, 512).status, IOERR);
    assert_eq!(driver.block.metrics().backing_swaps, 2);
}

#[test]
fn failed_swap_leaves_the_old_disk_serving_untouched() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let short = dir.path().join("short.img");
    std::fs::write(&short, [1u8; 511]).unwrap();
    let taken = Image::new(DISK);
    let _holder = Block::new(taken.config(false)).unwrap();
    let mut driver = Driver::new(&mem, old.config(false));

    let errors: Vec<BlockError> = [&missing, dir.path(), &empty, &short, &taken.path]
        .into_iter()
        .map(|path| driver.block.update_backing(path).expect_err("a bad image"))
        .collect();

    assert!(
        matches!(
            &errors[..],
            [
                BlockError::Open { .. },
                BlockError::Open { .. } | BlockError::NotAFileOrBlockDevice { .. },
                BlockError::Empty { .. },
                BlockError::Empty { .. },
                BlockError::Locked { .. },
            ]
        ),
        "{errors:?}"
    );
    assert_eq!(driver.block.config().path, old.path);
    assert_eq!(driver.block.config_generation(), 0);
    assert_eq!(driver.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(driver.block.metrics().backing_swaps, 0);
    assert_eq!(capacity_in_config(&driver.block), SECTORS);
    assert_eq!(driver.read(3, 512).data, pattern_of(3 * 512..4 * 512));
    assert_eq!(driver.write(5, &[9; 512]).status, OK);
    assert_eq!(&old.contents()[5 * 512..6 * 512], &[9; 512]);
    // The old image is still locked by the disk.
    assert!(matches!(
        Block::new(old.config(true)),
        Err(BlockError::Locked { .. })
    ));
}

#[test]
fn read_only_disk_stays_read_only_after_a_swap() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::filled(DISK, NEW);
    let mut driver = Driver::new(&mem, old.config(true));

    driver.block.update_backing(&new.path).unwrap();

    assert_ne!(driver.block.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert!(driver.block.config().readonly);
    let out = driver.write(0, &[7; 512]);
    assert_eq!((out.status, out.used_len), (IOERR, 1));
    assert_eq!(new.contents(), vec![NEW; DISK]);
    assert_eq!(driver.read(0, 512).data, vec![NEW; 512]);
    // Opened with a read lock: readers share the image, a writer is kept out.
    assert!(Block::new(new.config(true)).is_ok());
    assert!(matches!(
        Block::new(new.config(false)),
        Err(BlockError::Locked { .. })
    ));
}

#[test]
fn swap_to_the_same_image_keeps_its_lock_and_picks_up_a_new_size() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    assert_eq!(driver.write(1, &[7; 512]).status, OK);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image.path)
        .unwrap()
        .set_len(2 * DISK as u64)
        .unwrap();

    driver.block.update_backing(&image.path).unwrap();

    assert_eq!(capacity_in_config(&driver.block), 2 * SECTORS);
    assert_eq!(driver.block.config_generation(), 1);
    assert_eq!(driver.read(1, 512).data, vec![7; 512]);
    assert_eq!(driver.read(2 * SECTORS - 1, 512).data, vec![0; 512]);
    assert!(matches!(
        Block::new(image.config(false)),
        Err(BlockError::Locked { .. })
    ));

    // Through another name of the same file.
    let link = image.path.with_file_name("link.img");
    std::fs::hard_link(&image.path, &link).unwrap();
    driver.block.update_backing(&link).unwrap();
    assert_eq!(driver.block.config().path, link);
    assert_eq!(driver.write(2, &[8; 512]).status, OK);
    assert_eq!(&image.contents()[1024..1536], &[8; 512]);
    assert!(matches!(
        Block::new(image.config(true)),
        Err(BlockError::Locked { .. })
    ));

    drop(driver);
    assert!(
        Block::new(image.config(false)).is_ok(),
        "the shared lock goes with the disk"
    );
}

#[test]
fn swap_before_activation_is_what_the_driver_finds() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::new(2 * DISK);
    let mut block = Block::new(old.config(false)).unwrap();

    block.update_backing(&new.path).unwrap();
    let mut driver = Driver::activate(&mem, block, |_| {});

    assert_eq!(driver.block.config_generation(), 1);
    assert_eq!(capacity_in_config(&driver.block), 2 * SECTORS);
    let start = (2 * SECTORS - 1) as usize * 512;
    assert_eq!(
        driver.read(2 * SECTORS - 1, 512).data,
        pattern_of(start..start + 512)
    );
}

#[test]
fn save_after_a_swap_restores_with_the_new_file_and_generation() {
    let mem = guest_memory();
    let old = Image::new(DISK);
    let new = Image::filled(2 * DISK, NEW);
    let mut driver = Driver::new(&mem, old.config(false));
    driver.block.update_backing(&new.path).unwrap();

    let state = driver.block.save();
    let queue = QueueState::of(driver.block.queues()[0]);
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(state.config.path, new.path);
    assert_eq!((state.capacity, state.config_generation), (2 * SECTORS, 1));
    let mut driver = driver.swap_device(|running| {
        drop(running);
        let state: BlockState = serde_json::from_str(&json).unwrap();
        (Block::restore(&state).unwrap(), queue.to_queue().unwrap())
    });

    assert_eq!(driver.block.config().path, new.path);
    assert_eq!(driver.block.config_generation(), 1);
    assert_eq!(capacity_in_config(&driver.block), 2 * SECTORS);
    assert_eq!(driver.read(2 * SECTORS - 1, 512).data, vec![NEW; 512]);
    assert!(
        Block::new(old.config(false)).is_ok(),
        "the old image is free"
    );
}

#[test]
fn state_saved_without_a_config_generation_restores_with_zero() {
    let image = Image::new(DISK);
    let mut block = Block::new(image.config(false)).unwrap();
    let mut value = serde_json::to_value(block.save()).unwrap();
    drop(block);
    value.as_object_mut().unwrap().remove("config_generation");

    let state: BlockState = serde_json::from_value(value).unwrap();
    let block = Block::restore(&state).unwrap();

    assert_eq!(block.config_generation(), 0);
}
