//! Saving, restoring, resetting.

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

use super::*;
use crate::virtio::block::{BlockError, BlockState};
use crate::virtio::QueueState;

const DISK: usize = 64 * 512;

#[test]
fn restore_serves_requests_made_available_before_the_save() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let data: Vec<u8> = (0..512).map(|i| (i * 3) as u8).collect();
    let (_, write_status) = driver.queue_request(VIRTIO_BLK_T_OUT, 2, &data, 0);
    let (read_buf, read_status) = driver.queue_request(VIRTIO_BLK_T_IN, 2, &[], 512);

    let state = driver.block.save();
    let queue = QueueState::of(driver.block.queues()[0]);
    let json = serde_json::to_string(&state).unwrap();
    let mut driver = driver.swap_device(|old| {
        drop(old); // The new process opens the image once the old one let it go.
        let state: BlockState = serde_json::from_str(&json).unwrap();
        (Block::restore(&state).unwrap(), queue.to_queue().unwrap())
    });
    let used = driver.run(2);

    assert_eq!(used.len(), 2);
    assert_eq!(mem.read_obj::<u8>(write_status).unwrap(), OK);
    assert_eq!(mem.read_obj::<u8>(read_status).unwrap(), OK);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, read_buf).unwrap();
    assert_eq!(got, data);
    assert_eq!(&image.contents()[1024..1536], &data[..]);
}

#[test]
fn save_finishes_requests_in_flight_onto_the_used_ring() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let statuses: Vec<_> = (0..4u64)
        .map(|i| driver.queue_request(VIRTIO_BLK_T_IN, i, &[], 512).1)
        .collect();
    driver.block.queue_notify(0);

    let state = driver.block.save();

    // No completion was processed by the "event loop", yet all four are used.
    assert_eq!(driver.used_idx(), 4);
    for status in statuses {
        assert_eq!(mem.read_obj::<u8>(status).unwrap(), OK);
    }
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
    assert_eq!(QueueState::of(driver.block.queues()[0]).next_used, 4);
    assert_eq!(state.capacity, 64);
    assert_eq!(state.config, image.config(false));
}

#[test]
fn reset_stops_the_io_thread_quickly_and_the_disk_works_after_reactivation() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    // Five chains of three descriptors fill most of the 16-entry table.
    for i in 0..5u64 {
        driver.queue_request(VIRTIO_BLK_T_OUT, i, &[7u8; 512], 0);
    }
    driver.block.queue_notify(0);

    let mut driver = driver.swap_device(|mut block| {
        block.reset();
        assert!(block.queues().is_empty());
        // The driver sets the queue up again from scratch.
        (block, fresh_queue(&mem, &MockSplitQueue::new(&mem, QSIZE)))
    });
    driver.used_seen = 0;
    driver.next_desc = 0;
    // Requests the I/O thread had not started when the driver reset the device are not
    // carried out (a reset must not wait for a queue's worth of slow I/O); the one it was
    // on is finished whole, never torn.
    let done = driver.block.metrics().write_ops as usize;
    assert!(done <= 5);
    let contents = image.contents();
    assert_eq!(&contents[..done * 512], &vec![7u8; done * 512][..]);

    let out = driver.write(0, &[9u8; 512]);
    assert_eq!(out.status, OK);
    assert_eq!(driver.read(0, 512).data, vec![9u8; 512]);
}

#[test]
fn restore_refuses_an_image_whose_size_changed() {
    let image = Image::new(DISK);
    let mut block = Block::new(image.config(false)).unwrap();
    let state = block.save();
    drop(block);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image.path)
        .unwrap()
        .set_len(2 * DISK as u64)
        .unwrap();

    let err = Block::restore(&state).err().expect("the size changed");

    assert!(
        matches!(
            err,
            BlockError::CapacityChanged {
                saved: 64,
                now: 128,
                ..
            }
        ),
        "{err:?}"
    );
}
