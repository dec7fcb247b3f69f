//! One connection to a vhost-user back end: the handshake (owner, features, protocol
//! features, config space), the vring setup that hands the back end a running device, and
//! stopping it again.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use memory::GuestMemoryMmap;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use super::VhostUserError;

/// How long a reply may take: a peer that accepts the connection but never answers (it
/// does not speak vhost-user) fails the handshake instead of hanging the VMM.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the back end has protocol features, and its rings
/// start disabled until `SET_VRING_ENABLE`.
pub const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The protocol features petrel uses when the back end has them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
}

/// One queue as the back end gets it.
pub struct VringSetup<'a> {
    /// The queue's configuration (size and addresses) from the driver.
    pub queue: &'a Queue,
    /// Where the back end starts in the available ring.
    pub base: u16,
    /// What the driver writes to notify the queue (the transport's ioeventfd).
    pub kick: &'a EventFd,
    /// What the back end writes when it used buffers.
    pub call: &'a EventFd,
}

/// A handshaken connection.
pub struct Connection {
    frontend: Frontend,
    /// The back end's virtio features, including [`PROTOCOL_FEATURES_BIT`].
    features: u64,
    protocol: VhostUserProtocolFeatures,
}

fn failed(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    move |source| VhostUserError::Protocol { what, source }
}

impl Connection {
    /// Connects to the back end listening on `path` and handshakes: SET_OWNER,
    /// GET_FEATURES and, when it has them, GET/SET_PROTOCOL_FEATURES. The device has
    /// `queues` queues.
    pub fn open(path: &Path, queues: usize) -> Result<Self, VhostUserError> {
        let stream = UnixStream::connect(path).map_err(|source| VhostUserError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|source| VhostUserError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(failed("SET_OWNER"))?;
        let features = frontend.get_features().map_err(failed("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(failed("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & wanted_protocol_features();
            tracing::debug!(
                path = %path.display(),
                features = format_args!("{features:#x}"),
                protocol = format_args!("{:#x}", offered.bits()),
                "vhost-user back end's features and protocol features"
            );
            frontend
                .set_protocol_features(protocol)
                .map_err(failed("SET_PROTOCOL_FEATURES"))?;
        }
        Ok(Connection {
            frontend,
            features,
            protocol,
        })
    }

    /// The back end's virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether the back end answers GET_CONFIG.
    pub fn has_config(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
    }

    /// The socket, for the event loop to notice a hangup.
    pub fn socket(&self) -> &Frontend {
        &self.frontend
    }

    /// `len` bytes of the device's config space.
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>, VhostUserError> {
        let buf = vec![0u8; len as usize];
        let (_, space) = self
            .frontend
            .get_config(0, len, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(failed("GET_CONFIG"))?;
        Ok(space)
    }

    /// Hands the back end a running device: the driver's features (those the back end
    /// offered: petrel may emulate others, such as a net device's MAC), the guest's memory
    /// and every queue.
    pub fn start(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        vrings: &[VringSetup<'_>],
    ) -> Result<(), VhostUserError> {
        let protocol_bit = self.features & PROTOCOL_FEATURES_BIT;
        self.frontend
            .set_features((acked_features & self.features) | protocol_bit)
            .map_err(failed("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| VhostUserError::MemoryNotShared)?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(failed("SET_MEM_TABLE"))?;
        for (index, v) in vrings.iter().enumerate() {
            let q = v.queue;
            if !q.ready() {
                continue;
            }
            let f = &mut self.frontend;
            f.set_vring_num(index, q.size())
                .map_err(failed("SET_VRING_NUM"))?;
            let addr = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_addr(mem, q.desc_table())?,
                used_ring_addr: host_addr(mem, q.used_ring())?,
                avail_ring_addr: host_addr(mem, q.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_addr(index, &addr)
                .map_err(failed("SET_VRING_ADDR"))?;
            f.set_vring_base(index, v.base)
                .map_err(failed("SET_VRING_BASE"))?;
            f.set_vring_call(index, v.call)
                .map_err(failed("SET_VRING_CALL"))?;
            f.set_vring_kick(index, v.kick)
                .map_err(failed("SET_VRING_KICK"))?;
            if protocol_bit != 0 {
                f.set_vring_enable(index, true)
                    .map_err(failed("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the back end's rings (the driver reset the device): each enabled ring is
    /// disabled and GET_VRING_BASE stops it.
    pub fn stop(&mut self, queues: &[Queue]) -> Result<(), VhostUserError> {
        for (index, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if self.features & PROTOCOL_FEATURES_BIT != 0 {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(failed("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(failed("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// The back end maps the guest's memory itself and translates ring addresses given as
/// this process's virtual addresses (the `userspace_addr` of the memory table).
fn host_addr(mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, VhostUserError> {
    mem.get_host_address(vm_memory::GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| VhostUserError::RingAddress(gpa))
}
