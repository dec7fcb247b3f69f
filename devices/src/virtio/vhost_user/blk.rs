//! [`VhostUserBlk`]: a virtio-blk device served by a vhost-user back end.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::*;

use super::connection::Connection;
use super::device::{VhostUserDevice, VhostUserKind};
use super::VhostUserError;
use crate::virtio::{features, ids};

/// A vhost-user-blk device as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserBlkConfig {
    /// The device's id.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: PathBuf,
}

/// A virtio-blk device whose requests a vhost-user back end serves.
pub type VhostUserBlk = VhostUserDevice<VhostUserBlkConfig>;

/// The config space petrel reads from the back end, `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` (the back end may have more; the driver needs no more).
const CONFIG_LEN: u32 = 60;

/// The virtio-blk features passed through from the back end. Not MQ (one queue) and not
/// CONFIG_WCE (the config space is read-only here).
const BLK_FEATURES: u64 = 1 << VIRTIO_BLK_F_SIZE_MAX
    | 1 << VIRTIO_BLK_F_SEG_MAX
    | 1 << VIRTIO_BLK_F_GEOMETRY
    | 1 << VIRTIO_BLK_F_RO
    | 1 << VIRTIO_BLK_F_BLK_SIZE
    | 1 << VIRTIO_BLK_F_FLUSH
    | 1 << VIRTIO_BLK_F_TOPOLOGY
    | 1 << VIRTIO_BLK_F_DISCARD
    | 1 << VIRTIO_BLK_F_WRITE_ZEROES;

impl VhostUserKind for VhostUserBlkConfig {
    const DEVICE_TYPE: u32 = ids::BLOCK;
    /// One request queue.
    const QUEUE_SIZES: &'static [u16] = &[256];

    fn id(&self) -> &str {
        &self.id
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn set_socket(&mut self, socket: PathBuf) {
        self.socket = socket;
    }

    fn probe(&mut self, conn: &mut Connection) -> Result<(u64, Vec<u8>), VhostUserError> {
        let offered = conn.features();
        if offered & features::VERSION_1 == 0 {
            return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if !conn.has_config() {
            return Err(VhostUserError::MissingFeature(
                "the CONFIG protocol feature (petrel reads the disk's capacity with GET_CONFIG)",
            ));
        }
        let space = conn.config(CONFIG_LEN)?;
        Ok((offered & (BLK_FEATURES | features::COMMON), space))
    }
}
