//! [`VhostUserNet`]: a virtio-net device served by a vhost-user back end.
//!
//! Two queues (RX 0, TX 1): no multiqueue, no control queue. The driver is offered the back
//! end's features among `VERSION_1`, `RING_EVENT_IDX`, `RING_INDIRECT_DESC` and
//! `NET_F_MRG_RXBUF`, plus `NET_F_STATUS` and `NET_F_MTU` when the back end also answers
//! GET_CONFIG (their values come from its config space), plus `NET_F_MAC` always: petrel
//! presents the MAC itself. The MAC is, in order: `mac=` from the configuration, the back
//! end's (when it offers `NET_F_MAC` and answers GET_CONFIG), or a random locally
//! administered address chosen once per device (kept across reconnections).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};

use super::connection::Connection;
use super::device::{VhostUserDevice, VhostUserKind};
use super::VhostUserError;
use crate::virtio::net::MacAddr;
use crate::virtio::{features, ids};

/// A vhost-user-net device as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserNetConfig {
    /// The device's id.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: PathBuf,
    /// The guest's MAC address; without it, the back end's or a generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// A virtio-net device whose queues a vhost-user back end serves.
pub type VhostUserNet = VhostUserDevice<VhostUserNetKind>;

/// The configuration and the MAC generated for it, if one was needed (saved with the
/// device: the guest keeps its MAC across a restore or a migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserNetKind {
    config: VhostUserNetConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generated: Option<MacAddr>,
}

impl From<VhostUserNetConfig> for VhostUserNetKind {
    fn from(config: VhostUserNetConfig) -> Self {
        VhostUserNetKind {
            config,
            generated: None,
        }
    }
}

impl VhostUserNetKind {
    /// The configuration.
    pub fn config(&self) -> &VhostUserNetConfig {
        &self.config
    }

    /// The configured MAC, else the one generated for this device (generated on first use).
    fn own_mac(&mut self) -> Result<MacAddr, VhostUserError> {
        if let Some(mac) = self.config.mac.or(self.generated) {
            return Ok(mac);
        }
        let mac = MacAddr::random().map_err(|source| VhostUserError::Os {
            what: "a random MAC address",
            source,
        })?;
        self.generated = Some(mac);
        Ok(mac)
    }
}

/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;
const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
const STATUS: u64 = 1 << VIRTIO_NET_F_STATUS;
const MTU: u64 = 1 << VIRTIO_NET_F_MTU;
/// Features passed through whenever the back end offers them.
const PASSED: u64 = features::COMMON | 1 << VIRTIO_NET_F_MRG_RXBUF;

impl VhostUserKind for VhostUserNetKind {
    const DEVICE_TYPE: u32 = ids::NET;
    /// RX, TX.
    const QUEUE_SIZES: &'static [u16] = &[256, 256];

    fn id(&self) -> &str {
        &self.config.id
    }

    fn socket(&self) -> &Path {
        &self.config.socket
    }

    fn set_socket(&mut self, socket: PathBuf) {
        self.config.socket = socket;
    }

    fn probe(&mut self, conn: &mut Connection) -> Result<(u64, Vec<u8>), VhostUserError> {
        let offered = conn.features();
        if offered & features::VERSION_1 == 0 {
            return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        let from_config = if conn.has_config() {
            offered & (MAC | STATUS | MTU)
        } else {
            0
        };
        let (mut space, from_backend) = backend_config(conn, from_config)?;
        let backend_mac = (from_backend & MAC != 0 && self.config.mac.is_none())
            .then(|| MacAddr::new(space[..6].try_into().unwrap_or_default()).ok())
            .flatten();
        let mac = match backend_mac {
            Some(mac) => mac,
            None => self.own_mac()?,
        };
        space[..6].copy_from_slice(&mac.bytes());
        let offer = (offered & PASSED) | MAC | (from_backend & (STATUS | MTU));
        Ok((offer, space))
    }
}

/// The config space of [`CONFIG_LEN`] bytes with what the back end has of the fields of
/// `wanted` (a set of MAC, STATUS, MTU), and which fields it had.
fn backend_config(conn: &mut Connection, wanted: u64) -> Result<(Vec<u8>, u64), VhostUserError> {
    let mut space = vec![0u8; CONFIG_LEN];
    // Read only as far as the last wanted field: a back end may keep a shorter space.
    let len = if wanted & MTU != 0 {
        12
    } else if wanted & STATUS != 0 {
        8
    } else if wanted & MAC != 0 {
        6
    } else {
        return Ok((space, 0));
    };
    let got = conn.config(len)?;
    if got.len() < len as usize {
        return Ok((space, 0));
    }
    space[..len as usize].copy_from_slice(&got[..len as usize]);
    Ok((space, wanted))
}
