//! Requests the device refuses: read-only disks, out-of-range sectors, malformed chains.
//! Each fails alone; the device keeps serving.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;

use super::*;

const SECTORS: u64 = 32;
const DISK: usize = SECTORS as usize * 512;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// A driver on a fresh read-write image.
fn driver(mem: &GuestMemoryMmap) -> (Image, Driver<'_>) {
    let image = Image::new(DISK);
    let driver = Driver::new(mem, image.config(false));
    (image, driver)
}

/// Checks the device still serves a good request after a bad one.
fn assert_still_serving(driver: &mut Driver) {
    let out = driver.read(0, 512);
    assert_eq!(out.status, OK);
    assert_eq!(out.data, (0..512).map(pattern).collect::<Vec<_>>());
}

#[test]
fn read_only_disk_rejects_write_discard_and_write_zeroes_and_leaves_the_file_unchanged() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let before = image.contents();
    let mut driver = Driver::new(&mem, image.config(true));

    let write = driver.write(0, &[0x55; 512]);
    let discard = driver.dwz(VIRTIO_BLK_T_DISCARD, 0, 4, 0);
    let zeroes = driver.dwz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 4, 0);

    for out in [&write, &discard, &zeroes] {
        assert_eq!((out.status, out.used_len), (IOERR, 1));
    }
    assert_eq!(image.contents(), before);
    let m = driver.block.metrics();
    assert_eq!(
        (m.errors, m.write_ops, m.discard_ops, m.write_zeroes_ops),
        (3, 0, 0, 0)
    );
    // Reads and flushes still work.
    assert_still_serving(&mut driver);
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, OK);
}

#[test]
fn read_past_the_end_of_the_disk_is_an_io_error() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);

    let out = driver.read(SECTORS - 1, 1024);

    assert_eq!((out.status, out.used_len), (IOERR, 1));
    assert!(
        out.data.iter().all(|&b| b == 0xaa),
        "the buffer was written"
    );
    assert_eq!(driver.block.metrics().errors, 1);
    assert_still_serving(&mut driver);
}

#[test]
fn sector_arithmetic_overflow_is_an_io_error() {
    let mem = guest_memory();
    let (image, mut driver) = driver(&mem);
    let before = image.contents();

    assert_eq!(driver.read(u64::MAX, 512).status, IOERR);
    assert_eq!(driver.write(u64::MAX - 1, &[0; 1024]).status, IOERR);
    assert_eq!(
        driver
            .dwz(VIRTIO_BLK_T_DISCARD, u64::MAX, u32::MAX, 0)
            .status,
        IOERR
    );
    assert_eq!(
        driver.dwz(VIRTIO_BLK_T_WRITE_ZEROES, SECTORS, 1, 0).status,
        IOERR
    );

    assert_eq!(image.contents(), before);
    assert_eq!(driver.block.metrics().errors, 4);
}

#[test]
fn data_length_not_a_multiple_of_512_is_an_io_error() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);

    assert_eq!(driver.read(0, 100).status, IOERR);
    assert_eq!(driver.write(0, &[1; 513]).status, IOERR);
}

#[test]
fn discard_and_write_zeroes_with_unknown_flags_are_unsupported() {
    let mem = guest_memory();
    let (image, mut driver) = driver(&mem);
    let before = image.contents();

    // UNMAP is a write-zeroes flag only.
    let discard = driver.dwz(
        VIRTIO_BLK_T_DISCARD,
        0,
        1,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    );
    let zeroes = driver.dwz(VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 0x8000_0000);

    assert_eq!((discard.status, zeroes.status), (UNSUPP, UNSUPP));
    assert_eq!(image.contents(), before);
}

#[test]
fn discard_with_more_segments_than_max_discard_seg_is_an_io_error() {
    let mem = guest_memory();
    let (image, mut driver) = driver(&mem);
    let before = image.contents();
    let mut two = segment(0, 1, 0);
    two.extend(segment(2, 1, 0));

    let out = driver.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &two, 0);

    assert_eq!(out.status, IOERR);
    assert_eq!(image.contents(), before);
}

#[test]
fn write_only_header_is_an_io_error() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let header = driver.header(VIRTIO_BLK_T_IN, 0);
    let data = driver.alloc(512, 0xaa);
    let status = driver.alloc(1, 0xff);

    driver.add_chain(&[(header, 16, W), (data, 512, W), (status, 1, W)]);
    let used = driver.run(1);

    let out = driver.outcome(&used[0], data, 512, status);
    assert_eq!((out.status, out.used_len), (IOERR, 1));
    assert!(out.data.iter().all(|&b| b == 0xaa));
    assert_eq!(driver.block.metrics().errors, 1);
    assert_still_serving(&mut driver);
}

#[test]
fn readable_buffer_after_a_writable_one_is_an_io_error() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let header = driver.header(VIRTIO_BLK_T_OUT, 0);
    let data = driver.alloc(512, 0);
    let status = driver.alloc(1, 0xff);
    let extra = driver.alloc(16, 0);

    driver.add_chain(&[
        (header, 16, R),
        (extra, 16, W),
        (data, 512, R),
        (status, 1, W),
    ]);
    let used = driver.run(1);

    assert_eq!(used[0].len(), 1);
    assert_eq!(mem.read_obj::<u8>(status).unwrap(), IOERR);
}

#[test]
fn data_buffer_outside_guest_memory_is_an_io_error() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    for (addr, len) in [
        (3 * REGION, 512),
        (2 * REGION - 256, 512),
        (u64::MAX - 100, 512),
    ] {
        let header = driver.header(VIRTIO_BLK_T_IN, 0);
        let status = driver.alloc(1, 0xff);

        driver.add_chain(&[
            (header, 16, R),
            (GuestAddress(addr), len, W),
            (status, 1, W),
        ]);
        let used = driver.run(1);

        assert_eq!(used[0].len(), 1, "buffer at {addr:#x}");
        assert_eq!(mem.read_obj::<u8>(status).unwrap(), IOERR);
    }
    assert_eq!(driver.block.metrics().errors, 3);
    assert_still_serving(&mut driver);
}

#[test]
fn read_only_or_empty_status_descriptor_gets_no_status() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    for (status_len, status_flags) in [(1, R), (0, W)] {
        let header = driver.header(VIRTIO_BLK_T_IN, 0);
        let data = driver.alloc(512, 0xaa);
        let status = driver.alloc(1, 0xff);

        driver.add_chain(&[
            (header, 16, R),
            (data, 512, W),
            (status, status_len, status_flags),
        ]);
        let used = driver.run(1);

        assert_eq!(used[0].len(), 0);
        assert_eq!(mem.read_obj::<u8>(status).unwrap(), 0xff);
        let mut buf = [0u8; 512];
        mem.read_slice(&mut buf, data).unwrap();
        assert!(buf.iter().all(|&b| b == 0xaa));
    }
    assert_eq!(driver.block.metrics().errors, 2);
    assert_still_serving(&mut driver);
}

#[test]
fn status_byte_outside_guest_memory_gets_no_status() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let header = driver.header(VIRTIO_BLK_T_FLUSH, 0);

    driver.add_chain(&[(header, 16, R), (GuestAddress(5 * REGION), 1, W)]);
    let used = driver.run(1);

    assert_eq!(used[0].len(), 0);
    assert_still_serving(&mut driver);
}

#[test]
fn chain_of_only_one_descriptor_is_refused() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let header = driver.header(VIRTIO_BLK_T_FLUSH, 0);

    driver.add_chain(&[(header, 16, R)]);
    let used = driver.run(1);

    assert_eq!(used[0].len(), 0);
    assert_eq!(driver.block.metrics().errors, 1);
    assert_eq!(driver.block.metrics().flush_ops, 0);
    assert_still_serving(&mut driver);
}

#[test]
fn indirect_table_pointing_to_itself_is_refused() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let table = driver.alloc(32, 0);
    let status = driver.alloc(1, 0xff);
    // Entry 0 of the table is an indirect descriptor naming the table again.
    mem.write_obj(
        RawDescriptor::from(Descriptor::new(table.0, 32, INDIRECT, 0)),
        table,
    )
    .unwrap();
    mem.write_obj(
        RawDescriptor::from(Descriptor::new(status.0, 1, W, 0)),
        table.unchecked_add(16),
    )
    .unwrap();

    driver.add_chain(&[(table, 32, INDIRECT)]);
    let used = driver.run(1);

    assert_eq!(used[0].len(), 0);
    assert_eq!(driver.block.metrics().errors, 1);
    assert_still_serving(&mut driver);
}

#[test]
fn next_loop_is_refused() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);
    let header = driver.header(VIRTIO_BLK_T_IN, 0);
    let status = driver.alloc(1, 0xff);
    // 0 -> 1 -> 0 -> ...: virtio-queue stops after a queue's worth of descriptors.
    let next = VRING_DESC_F_NEXT as u16;
    driver.put_desc(0, header.0, 16, R | next, 1);
    driver.put_desc(1, status.0, 1, W | next, 0);
    driver.next_desc = 2;
    driver.make_available(0);

    let used = driver.run(1);

    assert_eq!(used[0].len(), 0);
    assert_eq!(mem.read_obj::<u8>(status).unwrap(), 0xff);
    assert_still_serving(&mut driver);
}

#[test]
fn head_index_past_the_queue_is_counted_and_skipped() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);

    driver.make_available(QSIZE + 3);
    driver.block.queue_notify(0);

    // Such a chain cannot go on the used ring; the next one is served normally.
    assert_eq!(driver.block.metrics().errors, 1);
    assert_eq!(driver.used_idx(), 0);
    assert_still_serving(&mut driver);
}

#[test]
fn available_index_running_ahead_marks_the_device_as_needing_reset() {
    let mem = guest_memory();
    let (_image, mut driver) = driver(&mem);

    driver.set_avail_idx(QSIZE + 1);
    driver.block.queue_notify(0);

    assert!(driver.interrupt.needs_reset());
    assert_eq!(driver.used_idx(), 0);
}
