//! Every request type, served through the I/O thread.

use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::*;

const SECTORS: usize = 64;
const DISK: usize = SECTORS * 512;

#[test]
fn read_returns_the_image_contents() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));

    let out = driver.read(3, 1024);

    assert_eq!(out.status, OK);
    assert_eq!(out.used_len, 1024 + 1);
    assert_eq!(
        out.data,
        (3 * 512..5 * 512).map(pattern).collect::<Vec<_>>()
    );
    let m = driver.block.metrics();
    assert_eq!(
        (m.read_ops, m.read_bytes, m.errors, m.io_errors),
        (1, 1024, 0, 0)
    );
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
}

#[test]
fn read_into_a_buffer_that_spans_two_memory_regions() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let header = driver.header(VIRTIO_BLK_T_IN, 0);
    let data = GuestAddress(REGION - 512);
    let status = driver.alloc(1, 0xff);

    driver.add_chain(&[(header, 16, R), (data, 1024, W), (status, 1, W)]);
    let used = driver.run(1);

    let out = driver.outcome(&used[0], data, 1024, status);
    assert_eq!(out.status, OK);
    assert_eq!(out.data, (0..1024).map(pattern).collect::<Vec<_>>());
}

#[test]
fn read_split_over_several_descriptors_with_status_in_the_last_data_byte() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let header = driver.header(VIRTIO_BLK_T_IN, 1);
    let a = driver.alloc(100, 0);
    let b = driver.alloc(413, 0);

    // 100 + 413 = 512 data bytes and the status byte at the end of `b`.
    driver.add_chain(&[(header, 16, R), (a, 100, W), (b, 413, W)]);
    let used = driver.run(1);

    assert_eq!(used[0].len(), 513);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got[..100], a).unwrap();
    mem.read_slice(&mut got[100..], b).unwrap();
    assert_eq!(got, (512..1024).map(pattern).collect::<Vec<_>>());
    assert_eq!(mem.read_obj::<u8>(b.unchecked_add(412)).unwrap(), OK);
}

#[test]
fn read_marks_the_guest_pages_it_fills_dirty() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let header = driver.header(VIRTIO_BLK_T_IN, 0);
    let status = driver.alloc(1, 0xff);
    // A page the driver never wrote, so only the device can have dirtied it.
    let data = GuestAddress(0x8_0000);
    let dirty = |addr: u64| {
        mem.find_region(GuestAddress(addr))
            .unwrap()
            .bitmap()
            .dirty_at(addr as usize)
    };
    assert!(!dirty(0x8_0000));

    driver.add_chain(&[(header, 16, R), (data, 4096, W), (status, 1, W)]);
    driver.run(1);

    assert!(dirty(0x8_0000));
    assert!(!dirty(0x8_1000));
}

#[test]
fn write_reaches_the_image_and_reads_back() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();

    let out = driver.write(10, &data);

    assert_eq!((out.status, out.used_len), (OK, 1));
    let file = image.contents();
    assert_eq!(&file[10 * 512..12 * 512], &data[..]);
    assert_eq!(
        file[..10 * 512],
        (0..10 * 512).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(driver.read(10, 1024).data, data);
    let m = driver.block.metrics();
    assert_eq!((m.write_ops, m.write_bytes), (1, 1024));
}

#[test]
fn flush_succeeds() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));

    let out = driver.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);

    assert_eq!((out.status, out.used_len), (OK, 1));
    assert_eq!(driver.block.metrics().flush_ops, 1);
}

#[test]
fn get_id_returns_the_serial_nul_padded() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut config = image.config(false);
    config.serial = Some("SN-42".into());
    let mut driver = Driver::new(&mem, config);

    let out = driver.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);

    assert_eq!(out.status, OK);
    assert_eq!(out.used_len, 21);
    assert_eq!(&out.data[..], b"SN-42\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(driver.block.metrics().get_id_ops, 1);
}

#[test]
fn get_id_falls_back_to_the_id_truncated_to_20_bytes() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut config = image.config(false);
    config.id = "a-very-long-disk-identifier".into();
    let mut driver = Driver::new(&mem, config);

    let out = driver.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);

    assert_eq!(out.status, OK);
    assert_eq!(&out.data[..], b"a-very-long-disk-ide");
}

#[test]
fn discard_succeeds_and_keeps_the_image_size() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));

    let out = driver.dwz(VIRTIO_BLK_T_DISCARD, 8, 16, 0);

    assert_eq!((out.status, out.used_len), (OK, 1));
    let file = image.contents();
    assert_eq!(file.len(), DISK);
    // What a discarded range reads is unspecified; everything else is untouched.
    assert_eq!(
        file[..8 * 512],
        (0..8 * 512).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(
        file[24 * 512..],
        (24 * 512..DISK).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(driver.block.metrics().discard_ops, 1);
}

#[test]
fn write_zeroes_zeroes_exactly_the_range() {
    for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
        let mem = guest_memory();
        let image = Image::new(DISK);
        let mut driver = Driver::new(&mem, image.config(false));

        let out = driver.dwz(VIRTIO_BLK_T_WRITE_ZEROES, 4, 9, flags);

        assert_eq!((out.status, out.used_len), (OK, 1), "flags {flags}");
        let file = image.contents();
        assert_eq!(file.len(), DISK);
        assert!(
            file[4 * 512..13 * 512].iter().all(|&b| b == 0),
            "flags {flags}"
        );
        assert_eq!(
            file[..4 * 512],
            (0..4 * 512).map(pattern).collect::<Vec<_>>()
        );
        assert_eq!(
            file[13 * 512..],
            (13 * 512..DISK).map(pattern).collect::<Vec<_>>()
        );
        assert_eq!(driver.block.metrics().write_zeroes_ops, 1);
    }
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));

    let out = driver.request(VIRTIO_BLK_T_SCSI_CMD, 0, &[], 0);

    assert_eq!((out.status, out.used_len), (UNSUPP, 1));
    let m = driver.block.metrics();
    assert_eq!((m.unsupported_ops, m.errors), (1, 0));
}

#[test]
fn several_requests_in_one_notification_all_complete() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut driver = Driver::new(&mem, image.config(false));
    let statuses: Vec<_> = (0..5u64)
        .map(|i| driver.queue_request(VIRTIO_BLK_T_IN, i, &[], 512).1)
        .collect();

    let used = driver.run(5);

    assert_eq!(used.len(), 5);
    for status in statuses {
        assert_eq!(mem.read_obj::<u8>(status).unwrap(), OK);
    }
    assert_eq!(driver.block.metrics().read_ops, 5);
}

#[test]
fn event_idx_holds_the_interrupt_until_used_event() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let block = Block::new(image.config(false)).unwrap();
    let mut driver = Driver::activate(&mem, block, |q| q.set_event_idx(true));
    // used_event sits after the available ring's entries.
    let used_event = driver.used_event_addr();
    mem.write_obj(5u16, used_event).unwrap();

    driver.read(0, 512);
    assert_eq!(driver.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);

    mem.write_obj(1u16, used_event).unwrap();
    driver.read(0, 512);
    assert_ne!(driver.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
}

#[test]
fn image_size_not_a_multiple_of_512_rounds_down() {
    let mem = guest_memory();
    let image = Image::new(DISK + 100);
    let mut driver = Driver::new(&mem, image.config(false));

    assert_eq!(driver.block.capacity(), SECTORS as u64);
    assert_eq!(driver.read(SECTORS as u64, 512).status, IOERR);
    // The tail past the last whole sector is never touched.
    driver.write(SECTORS as u64 - 1, &[1u8; 512]);
    let mut tail = [0u8; 100];
    std::fs::File::open(&image.path)
        .unwrap()
        .read_exact_at(&mut tail, DISK as u64)
        .unwrap();
    assert_eq!(
        tail.to_vec(),
        (DISK..DISK + 100).map(pattern).collect::<Vec<_>>()
    );
}

#[test]
fn ops_limit_holds_requests_back_until_the_timer_refills_the_bucket() {
    use crate::rate_limiter::{RateLimitConfig, TokenBucketConfig};
    let mem = guest_memory();
    let image = Image::new(DISK);
    let mut config = image.config(false);
    // Two operations per 50 ms, no burst.
    config.rate_limiter = Some(RateLimitConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 2,
            one_time_burst: 0,
            refill_time: 50,
        }),
    });
    let mut driver = Driver::new(&mem, config);
    for sector in 0..5u64 {
        driver.queue_request(VIRTIO_BLK_T_IN, sector, &[], 512);
    }

    // The bucket covers two; the rest stay on the available ring, in order.
    assert_eq!(driver.run(2).len(), 2);
    assert!(driver.block.rate_limiter().is_blocked());
    assert_eq!(driver.block.metrics().read_ops, 2);

    // Each timer expiry lets the next ones through, until all five are served.
    while driver.block.metrics().read_ops < 5 {
        wait_readable(driver.block.rate_limiter(), Duration::from_secs(5));
        driver.block.process_rate_limiter();
        driver.drain_completions();
    }
    let limiter = driver.block.rate_limiter().metrics();
    assert_eq!(limiter.consumed_ops, 5);
    assert!(limiter.throttled_ops_events >= 2, "{limiter:?}");
    let used: Vec<u32> = driver.used_so_far().iter().map(|u| u.id()).collect();
    assert_eq!(
        used,
        vec![0, 3, 6, 9, 12],
        "served in the order made available"
    );
}

/// A loop device over an image, detached on drop.
struct LoopDevice(std::path::PathBuf);

impl LoopDevice {
    /// Attaches `image`; None (with the reason printed) where loop devices cannot be used,
    /// which fails the test when CI is set.
    fn attach(image: &std::path::Path) -> Option<Self> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Some(LoopDevice(path.into()))
            }
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "losetup failed and CI is set: {other:?}"
                );
                eprintln!("skipped: cannot attach a loop device: {other:?}");
                None
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn host_block_device_serves_reads_writes_and_reports_its_size() {
    let mem = guest_memory();
    let image = Image::new(DISK);
    let Some(dev) = LoopDevice::attach(&image.path) else {
        return;
    };
    let mut config = image.config(false);
    config.path = dev.0.clone();
    let mut driver = Driver::new(&mem, config);
    assert_eq!(driver.block.capacity(), (DISK / 512) as u64);

    let data: Vec<u8> = (0..512).map(|i| (i * 3) as u8).collect();
    assert_eq!(driver.write(4, &data).status, OK);
    assert_eq!(driver.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, OK);
    assert_eq!(driver.read(4, 512).data, data);
    assert_eq!(
        driver.read(0, 512).data,
        (0..512).map(pattern).collect::<Vec<_>>()
    );
    drop(driver);
    drop(dev);
    assert_eq!(&image.contents()[4 * 512..5 * 512], &data[..]);
}
