//! Building a disk: opening and locking the image, features, config space, configuration.

use std::mem::offset_of;

use virtio_bindings::virtio_blk::virtio_blk_config;

use super::*;
use crate::virtio::block::config_space;
use crate::virtio::block::BlockError;
use crate::virtio::{features, ids};

const DISK: usize = 1 << 20;

fn config_u32(block: &Block, offset: u64) -> u32 {
    let mut word = [0u8; 4];
    block.read_config(offset, &mut word);
    u32::from_le_bytes(word)
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let image = Image::new(DISK);
    let block = Block::new(image.config(false)).unwrap();

    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), (DISK / 512) as u64);
    // The halves, as a 32-bit driver reads them.
    assert_eq!(config_u32(&block, 0), (DISK / 512) as u32);
    assert_eq!(config_u32(&block, 4), 0);
    assert_eq!(config_u32(&block, 12), 254, "seg_max");
    assert_eq!(config_u32(&block, 20), 512, "blk_size");
    assert_eq!(config_u32(&block, 40), 1, "max_discard_seg");
    assert_eq!(config_u32(&block, 52), 1, "max_write_zeroes_seg");
    let mut byte = [0xffu8];
    block.read_config(56, &mut byte);
    assert_eq!(byte, [1], "write_zeroes_may_unmap");
    // An unaligned read inside the space, and reads past its end.
    let mut odd = [0u8; 3];
    block.read_config(1, &mut odd);
    assert_eq!(odd, [((DISK / 512) >> 8) as u8, 0, 0]);
    let mut tail = [0xffu8; 8];
    block.read_config(58, &mut tail);
    assert_eq!(tail, [0; 8]);
    block.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn config_space_offsets_match_the_virtio_headers() {
    assert_eq!(
        config_space::CAPACITY,
        offset_of!(virtio_blk_config, capacity)
    );
    assert_eq!(
        config_space::SEG_MAX_OFFSET,
        offset_of!(virtio_blk_config, seg_max)
    );
    assert_eq!(
        config_space::BLK_SIZE,
        offset_of!(virtio_blk_config, blk_size)
    );
    assert_eq!(
        config_space::NUM_QUEUES,
        offset_of!(virtio_blk_config, num_queues)
    );
    assert_eq!(
        config_space::MAX_DISCARD_SECTORS,
        offset_of!(virtio_blk_config, max_discard_sectors)
    );
    assert_eq!(
        config_space::MAX_DISCARD_SEG,
        offset_of!(virtio_blk_config, max_discard_seg)
    );
    assert_eq!(
        config_space::DISCARD_SECTOR_ALIGNMENT,
        offset_of!(virtio_blk_config, discard_sector_alignment)
    );
    assert_eq!(
        config_space::MAX_WRITE_ZEROES_SECTORS,
        offset_of!(virtio_blk_config, max_write_zeroes_sectors)
    );
    assert_eq!(
        config_space::MAX_WRITE_ZEROES_SEG,
        offset_of!(virtio_blk_config, max_write_zeroes_seg)
    );
    assert_eq!(
        config_space::WRITE_ZEROES_MAY_UNMAP,
        offset_of!(virtio_blk_config, write_zeroes_may_unmap)
    );
    assert_eq!(
        config_space::CONFIG_LEN,
        offset_of!(virtio_blk_config, max_secure_erase_sectors)
    );
}

#[test]
fn features_include_ro_only_for_a_read_only_disk() {
    let image = Image::new(DISK);
    let ro = 1u64 << VIRTIO_BLK_F_RO;
    let wanted = features::COMMON
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_DISCARD
        | 1 << VIRTIO_BLK_F_WRITE_ZEROES;

    let rw = Block::new(image.config(false)).unwrap();
    assert_eq!(rw.avail_features(), wanted);
    assert_eq!(rw.device_type(), ids::BLOCK);
    assert_eq!(rw.queue_max_sizes(), &[256]);
    drop(rw);

    let readonly = Block::new(image.config(true)).unwrap();
    assert_eq!(readonly.avail_features(), wanted | ro);
}

#[test]
fn second_writer_of_an_image_is_refused_as_locked() {
    let image = Image::new(DISK);
    let first = Block::new(image.config(false)).unwrap();

    let second = Block::new(image.config(false));
    let reader = Block::new(image.config(true));

    for result in [second, reader] {
        let err = result.err().expect("the image is locked");
        assert!(matches!(err, BlockError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("locked by another process"), "{message}");
        assert!(message.contains(image.path.to_str().unwrap()), "{message}");
    }
    drop(first);
    assert!(
        Block::new(image.config(false)).is_ok(),
        "the lock goes with the disk"
    );
}

#[test]
fn read_only_disks_share_an_image_but_exclude_a_writer() {
    let image = Image::new(DISK);
    let a = Block::new(image.config(true)).unwrap();
    let b = Block::new(image.config(true)).unwrap();

    let writer = Block::new(image.config(false));

    assert!(matches!(writer, Err(BlockError::Locked { .. })));
    drop((a, b));
}

#[test]
fn missing_image_is_an_open_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.img");
    let config = BlockConfig {
        path: path.clone(),
        id: "d".into(),
        readonly: false,
        serial: None,
        rate_limiter: None,
    };

    let err = Block::new(config).err().expect("no such file");

    assert!(matches!(err, BlockError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    assert!(!message.contains('\n'));
}

#[test]
fn image_smaller_than_a_sector_or_a_directory_is_refused() {
    let small = Image::new(100);
    assert!(matches!(
        Block::new(small.config(false)),
        Err(BlockError::Empty { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let mut config = small.config(true);
    config.path = dir.path().to_owned();
    let err = Block::new(config).err().expect("a directory is no disk");
    assert!(
        matches!(
            err,
            BlockError::NotAFileOrBlockDevice { .. } | BlockError::Open { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn id_with_a_nul_byte_or_empty_is_refused() {
    let image = Image::new(DISK);
    for id in ["", "a\0b"] {
        let mut config = image.config(false);
        config.id = id.into();
        assert!(matches!(
            Block::new(config),
            Err(BlockError::InvalidId { .. })
        ));
    }
}

#[test]
fn config_reads_from_json_with_defaults_and_rejects_unknown_fields() {
    let config: BlockConfig = serde_json::from_str(r#"{"path": "/d.img", "id": "root"}"#).unwrap();
    assert_eq!(
        config,
        BlockConfig {
            path: "/d.img".into(),
            id: "root".into(),
            readonly: false,
            serial: None,
            rate_limiter: None,
        }
    );
    let unknown = serde_json::from_str::<BlockConfig>(r#"{"path": "/d", "id": "r", "cache": 1}"#);
    assert!(unknown.is_err());
}
