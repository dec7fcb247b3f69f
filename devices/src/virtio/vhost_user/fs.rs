//! [`VhostUserFs`]: a virtio-fs device served by a vhost-user back end such as `virtiofsd`.
//!
//! Two queues: the high-priority queue (0) and one request queue (1); no notification queue
//! and no DAX window. petrel presents the config space itself — the tag and the number of
//! request queues — because `virtiofsd` does not answer GET_CONFIG. The driver is offered
//! the back end's features among `VERSION_1` (required), `RING_EVENT_IDX` and
//! `RING_INDIRECT_DESC`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::connection::Connection;
use super::device::{VhostUserDevice, VhostUserKind};
use super::VhostUserError;
use crate::virtio::{features, ids};

/// The size of the config space's `tag` field (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// The request queues petrel gives the device (besides the high-priority queue).
pub const NUM_REQUEST_QUEUES: u32 = 1;

/// Why a tag is not a virtio-fs tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("the tag is empty")]
    Empty,
    #[error("the tag is {0} bytes long; at most {TAG_LEN} fit in the config space")]
    TooLong(usize),
    #[error("the tag contains a NUL byte")]
    Nul,
}

/// The name the guest mounts a virtio-fs device by: 1 to [`TAG_LEN`] bytes of UTF-8 without
/// NUL (the config space pads it with NULs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FsTag(String);

impl FsTag {
    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FsTag {
    type Error = TagError;
    fn try_from(tag: String) -> Result<Self, TagError> {
        if tag.is_empty() {
            return Err(TagError::Empty);
        }
        if tag.len() > TAG_LEN {
            return Err(TagError::TooLong(tag.len()));
        }
        if tag.contains('\0') {
            return Err(TagError::Nul);
        }
        Ok(FsTag(tag))
    }
}

impl FromStr for FsTag {
    type Err = TagError;
    fn from_str(tag: &str) -> Result<Self, TagError> {
        tag.to_string().try_into()
    }
}

impl From<FsTag> for String {
    fn from(tag: FsTag) -> String {
        tag.0
    }
}

impl fmt::Display for FsTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A vhost-user-fs device as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserFsConfig {
    /// The device's id.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: PathBuf,
    /// The tag the guest mounts the file system by.
    pub tag: FsTag,
}

/// A virtio-fs device whose requests a vhost-user back end serves.
pub type VhostUserFs = VhostUserDevice<VhostUserFsConfig>;

/// `struct virtio_fs_config`: `tag[36]`, NUL-padded, then le32 `num_request_queues`.
pub fn config_space(tag: &FsTag) -> Vec<u8> {
    let mut space = vec![0u8; TAG_LEN + 4];
    space[..tag.0.len()].copy_from_slice(tag.0.as_bytes());
    space[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
    space
}

/// What the driver is offered of the back end's `offered` features.
pub fn offered_features(offered: u64) -> Result<u64, VhostUserError> {
    if offered & features::VERSION_1 == 0 {
        return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    Ok(offered & features::COMMON)
}

impl VhostUserKind for VhostUserFsConfig {
    const DEVICE_TYPE: u32 = ids::FS;
    /// The high-priority queue, then the request queue.
    const QUEUE_SIZES: &'static [u16] = &[128, 128];

    fn id(&self) -> &str {
        &self.id
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn set_socket(&mut self, socket: PathBuf) {
        self.socket = socket;
    }

    /// The back end's FUSE session (the inodes it handed out, the files the driver has
    /// open) lives in its process, and nothing in the protocol moves it.
    const UNSAVABLE: Option<&'static str> = Some(
        "its vhost-user back end keeps the file system's state (inode numbers, open files), which cannot be saved or moved",
    );

    fn probe(&mut self, conn: &mut Connection) -> Result<(u64, Vec<u8>), VhostUserError> {
        Ok((offered_features(conn.features())?, config_space(&self.tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_space_is_the_tag_nul_padded_then_one_request_queue() {
        let space = config_space(&"myfs".parse().unwrap());
        assert_eq!(space.len(), 40);
        assert_eq!(&space[..4], b"myfs");
        assert!(space[4..36].iter().all(|&b| b == 0));
        assert_eq!(&space[36..], &1u32.to_le_bytes());
        let full = "a".repeat(TAG_LEN);
        let space = config_space(&full.parse().unwrap());
        assert_eq!(&space[..36], full.as_bytes());
        assert_eq!(&space[36..], &1u32.to_le_bytes());
    }

    #[test]
    fn tags_are_1_to_36_bytes_of_utf8_without_nul() {
        assert_eq!("".parse::<FsTag>(), Err(TagError::Empty));
        assert_eq!("a".repeat(37).parse::<FsTag>(), Err(TagError::TooLong(37)));
        // 36 bytes, 12 characters.
        assert!("é".repeat(18).parse::<FsTag>().is_ok());
        assert_eq!("é".repeat(19).parse::<FsTag>(), Err(TagError::TooLong(38)));
        assert_eq!("a\0b".parse::<FsTag>(), Err(TagError::Nul));
        assert_eq!("root fs".parse::<FsTag>().unwrap().as_str(), "root fs");
    }

    #[test]
    fn a_bad_tag_in_a_config_file_is_refused() {
        let ok: VhostUserFsConfig =
            serde_json::from_str(r#"{"id":"fs0","socket":"/s","tag":"t"}"#).unwrap();
        assert_eq!(ok.tag.as_str(), "t");
        let e = serde_json::from_str::<VhostUserFsConfig>(r#"{"id":"fs0","socket":"/s","tag":""}"#)
            .unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn features_need_version_1_and_pass_only_the_common_ones() {
        let notify = 1 << virtio_bindings::virtio_config::VIRTIO_F_NOTIFY_ON_EMPTY;
        let protocol = super::super::connection::PROTOCOL_FEATURES_BIT;
        let offered = features::VERSION_1 | features::RING_EVENT_IDX | notify | protocol;
        assert_eq!(
            offered_features(offered).unwrap(),
            features::VERSION_1 | features::RING_EVENT_IDX
        );
        let e = offered_features(features::RING_EVENT_IDX).unwrap_err();
        assert!(e.to_string().contains("VIRTIO_F_VERSION_1"), "{e}");
    }
}
