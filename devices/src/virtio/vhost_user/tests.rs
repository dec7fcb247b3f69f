use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread::JoinHandle;

use super::{
    VhostUserBlk, VhostUserBlkConfig, VhostUserError, VhostUserFs, VhostUserFsConfig, VhostUserNet,
    VhostUserNetConfig,
};
use crate::virtio::features;
use crate::virtio::net::MacAddr;
use crate::virtio::VirtioDevice;

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
/// `VHOST_USER_F_PROTOCOL_FEATURES` and the `MQ` protocol feature.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const MQ: u64 = 1 << 0;
/// Header flags of a reply: version 1 and the reply bit.
const REPLY_FLAGS: u32 = 0x1 | 0x4;

fn config(socket: &Path) -> VhostUserBlkConfig {
    VhostUserBlkConfig {
        id: "vu".into(),
        socket: socket.to_path_buf(),
    }
}

/// A peer that answers GET_FEATURES with `offered` and ignores SET_OWNER, then hangs up
/// when the front end does.
fn fake_backend(listener: UnixListener, offered: u64) -> JoinHandle<()> {
    fake_backend_with(listener, offered, 0, 0)
}

/// As [`fake_backend`], also answering GET_PROTOCOL_FEATURES with `protocol` and
/// GET_QUEUE_NUM with `queues` (SET_PROTOCOL_FEATURES needs no answer without REPLY_ACK).
fn fake_backend_with(
    listener: UnixListener,
    offered: u64,
    protocol: u64,
    queues: u64,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut header = [0u8; 12];
        while conn.read_exact(&mut header).is_ok() {
            let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
            let mut body = vec![0u8; word(8) as usize];
            if conn.read_exact(&mut body).is_err() {
                return;
            }
            let value = match word(0) {
                GET_FEATURES => offered,
                GET_PROTOCOL_FEATURES => protocol,
                GET_QUEUE_NUM => queues,
                _ => continue,
            };
            let mut reply = Vec::new();
            reply.extend_from_slice(&word(0).to_le_bytes());
            reply.extend_from_slice(&REPLY_FLAGS.to_le_bytes());
            reply.extend_from_slice(&8u32.to_le_bytes());
            reply.extend_from_slice(&value.to_le_bytes());
            if conn.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_socket_nobody_serves_is_a_connect_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let Err(e) = VhostUserBlk::new(config(&socket)) else {
        panic!("connected to nothing");
    };
    assert!(matches!(e, VhostUserError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("absent.sock"), "{e}");
    assert!(e.is_user_error());
}

#[test]
fn a_peer_that_hangs_up_at_once_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("closer.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let peer = std::thread::spawn(move || drop(listener.accept()));
    let Err(e) = VhostUserBlk::new(config(&socket)) else {
        panic!("a closed peer was accepted");
    };
    peer.join().unwrap();
    assert!(matches!(e, VhostUserError::Protocol { .. }), "{e}");
    assert!(
        e.to_string().contains("is it a vhost-user back end?"),
        "{e}"
    );
}

#[test]
fn a_back_end_without_version_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("legacy.sock");
    let peer = fake_backend(UnixListener::bind(&socket).unwrap(), 0);
    let Err(e) = VhostUserBlk::new(config(&socket)) else {
        panic!("a legacy back end was accepted");
    };
    peer.join().unwrap();
    assert!(e.to_string().contains("VIRTIO_F_VERSION_1"), "{e}");
}

#[test]
fn a_back_end_without_protocol_features_cannot_give_the_config_space() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("noconfig.sock");
    let peer = fake_backend(UnixListener::bind(&socket).unwrap(), features::VERSION_1);
    let Err(e) = VhostUserBlk::new(config(&socket)) else {
        panic!("a back end without GET_CONFIG was accepted");
    };
    peer.join().unwrap();
    assert!(matches!(e, VhostUserError::MissingFeature(_)), "{e}");
    assert!(e.to_string().contains("CONFIG protocol feature"), "{e}");
}

/// A vhost-user-net device on a fake back end offering `offered` (no protocol features, so
/// no config space), with `mac` configured; its offered features and config space.
fn net_on_fake_backend(offered: u64, mac: Option<MacAddr>) -> (u64, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let peer = fake_backend(UnixListener::bind(&socket).unwrap(), offered);
    let device = VhostUserNet::new(VhostUserNetConfig {
        id: "vn".into(),
        socket: socket.clone(),
        mac,
    })
    .unwrap();
    let mut space = vec![0u8; 12];
    device.read_config(0, &mut space);
    let features = device.avail_features();
    drop(device);
    peer.join().unwrap();
    (features, space)
}

const NET_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
const NET_STATUS: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
const NET_MRG_RXBUF: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
const NET_CTRL_VQ: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ;

#[test]
fn net_presents_the_configured_mac_and_passes_only_supported_features() {
    let mac: MacAddr = "02:00:00:00:00:07".parse().unwrap();
    let offered = features::VERSION_1 | NET_MRG_RXBUF | NET_STATUS | NET_CTRL_VQ;
    let (avail, space) = net_on_fake_backend(offered, Some(mac));
    assert_eq!(&space[..6], &mac.bytes());
    // MAC is petrel's own; STATUS needs the back end's config space; no control queue.
    assert_eq!(avail, features::VERSION_1 | NET_MRG_RXBUF | NET_MAC);
}

#[test]
fn net_without_a_mac_anywhere_generates_a_local_unicast_one() {
    let (avail, space) = net_on_fake_backend(features::VERSION_1 | NET_MAC, None);
    assert_eq!(space[0] & 0b11, 0b10, "{space:?}");
    assert_ne!(&space[..6], &[0u8; 6]);
    assert_eq!(avail, features::VERSION_1 | NET_MAC);
}

#[test]
fn net_without_version_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("legacy.sock");
    let peer = fake_backend(UnixListener::bind(&socket).unwrap(), NET_MAC);
    let Err(e) = VhostUserNet::new(VhostUserNetConfig {
        id: "vn".into(),
        socket,
        mac: None,
    }) else {
        panic!("a legacy back end was accepted");
    };
    peer.join().unwrap();
    assert!(e.to_string().contains("VIRTIO_F_VERSION_1"), "{e}");
}

#[test]
fn fs_presents_its_own_config_space_without_get_config() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    // Like virtiofsd: VERSION_1, no CONFIG protocol feature (here no protocol features at all).
    let offered = features::VERSION_1 | features::RING_EVENT_IDX;
    let peer = fake_backend(UnixListener::bind(&socket).unwrap(), offered);
    let device = VhostUserFs::new(VhostUserFsConfig {
        id: "fs0".into(),
        socket,
        tag: "shared".parse().unwrap(),
    })
    .unwrap();
    assert_eq!(device.device_type(), 26);
    assert_eq!(device.queue_max_sizes().len(), 2);
    assert_eq!(device.avail_features(), offered);
    let mut space = [0xffu8; 40];
    device.read_config(0, &mut space);
    assert_eq!(&space[..7], b"shared\0");
    assert_eq!(&space[36..], &1u32.to_le_bytes());
    drop(device);
    peer.join().unwrap();
}

#[test]
fn a_back_end_with_fewer_queues_than_the_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("onequeue.sock");
    let offered = features::VERSION_1 | PROTOCOL_FEATURES;
    let peer = fake_backend_with(UnixListener::bind(&socket).unwrap(), offered, MQ, 1);
    // A net device needs two queues (RX and TX).
    let Err(e) = VhostUserNet::new(VhostUserNetConfig {
        id: "vn".into(),
        socket,
        mac: None,
    }) else {
        panic!("a back end with one queue was accepted");
    };
    peer.join().unwrap();
    assert!(
        matches!(
            e,
            VhostUserError::TooFewQueues {
                offered: 1,
                needed: 2
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("at most 1 queues; the device needs 2"),
        "{e}"
    );
}

#[test]
fn a_back_end_with_enough_queues_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("twoqueues.sock");
    let offered = features::VERSION_1 | PROTOCOL_FEATURES;
    let peer = fake_backend_with(UnixListener::bind(&socket).unwrap(), offered, MQ, 2);
    let device = VhostUserNet::new(VhostUserNetConfig {
        id: "vn".into(),
        socket,
        mac: None,
    })
    .unwrap();
    drop(device);
    peer.join().unwrap();
}
