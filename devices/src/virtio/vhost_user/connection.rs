//! One connection to a vhost-user back end: the handshake (owner, features, protocol
//! features, config space), the vring setup that hands the back end a running device, and
//! stopping it again.

use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use memory::GuestMemoryMmap;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserVringAddrFlags};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::log::DirtyLog;
use super::VhostUserError;

/// How long a reply may take: a peer that accepts the connection but never answers (it
/// does not speak vhost-user) fails the handshake instead of hanging the VMM.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the back end has protocol features, and its rings
/// start disabled until `SET_VRING_ENABLE`.
pub const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The SET_LOG_BASE and GPU_SET_SOCKET requests, the header's version 1 and its reply bit.
const SET_LOG_BASE: u32 = 6;
const GPU_SET_SOCKET: u32 = 33;
const HEADER_VERSION: u32 = 0x1;
const REPLY_FLAG: u32 = 0x4;
/// The largest SET_LOG_BASE reply petrel reads (and drops): libvhost-user sends a u64, the
/// `vhost` crate's back ends the 16-byte `VhostUserLog`.
const MAX_LOG_BASE_REPLY: usize = 256;

/// `VHOST_F_LOG_ALL`: the back end logs the guest pages it writes while the front end asks.
pub const LOG_ALL_BIT: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// What a back end needs to share a dirty log with petrel.
pub const LOGGING: &str = "dirty page logging (VHOST_F_LOG_ALL and the LOG_SHMFD protocol feature)";

/// The protocol features petrel uses when the back end has them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::MQ
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
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                // A back end that says how many queues it has must have the device's.
                let offered = frontend.get_queue_num().map_err(failed("GET_QUEUE_NUM"))?;
                if offered < queues as u64 {
                    return Err(VhostUserError::TooFewQueues {
                        offered,
                        needed: queues,
                    });
                }
            }
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

    /// Whether the back end can log the guest pages it writes into a log petrel shares
    /// (`VHOST_F_LOG_ALL` with the `LOG_SHMFD` protocol feature).
    pub fn can_log(&self) -> bool {
        self.features & LOG_ALL_BIT != 0
            && self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD)
    }

    /// [`Connection::can_log`], or the error that names what the back end lacks.
    pub fn require_log(&self) -> Result<(), VhostUserError> {
        if self.can_log() {
            Ok(())
        } else {
            Err(VhostUserError::MissingFeature(LOGGING))
        }
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

    /// The features to set: the driver's (those the back end offered: petrel may emulate
    /// others, such as a net device's MAC), the protocol-features bit, and `LOG_ALL` while
    /// logging.
    fn features_to_set(&self, acked_features: u64, logging: bool) -> u64 {
        let log_bit = if logging { LOG_ALL_BIT } else { 0 };
        (acked_features & self.features) | (self.features & PROTOCOL_FEATURES_BIT) | log_bit
    }

    /// Hands the back end a running device: the driver's features, the guest's memory,
    /// the dirty log when there is one, and every queue.
    pub fn start(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        vrings: &[VringSetup<'_>],
        log: Option<&DirtyLog>,
    ) -> Result<(), VhostUserError> {
        let protocol_bit = self.features & PROTOCOL_FEATURES_BIT;
        self.frontend
            .set_features(self.features_to_set(acked_features, log.is_some()))
            .map_err(failed("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| VhostUserError::MemoryNotShared)?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(failed("SET_MEM_TABLE"))?;
        if let Some(log) = log {
            self.set_log_base(log)?;
        }
        for (index, v) in vrings.iter().enumerate() {
            let q = v.queue;
            if !q.ready() {
                continue;
            }
            let f = &mut self.frontend;
            f.set_vring_num(index, q.size())
                .map_err(failed("SET_VRING_NUM"))?;
            f.set_vring_addr(index, &vring_addr(mem, q, log.is_some())?)
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

    /// Starts or stops the running back end's dirty logging: `SET_LOG_BASE` with the log,
    /// the features again with or without `LOG_ALL`, and every ring's addresses again with
    /// or without its used ring logged (as QEMU does).
    pub fn set_logging(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        log: Option<&DirtyLog>,
    ) -> Result<(), VhostUserError> {
        if let Some(log) = log {
            self.set_log_base(log)?;
        }
        self.frontend
            .set_features(self.features_to_set(acked_features, log.is_some()))
            .map_err(failed("SET_FEATURES"))?;
        for (index, q) in queues.iter().enumerate().filter(|(_, q)| q.ready()) {
            self.frontend
                .set_vring_addr(index, &vring_addr(mem, q, log.is_some())?)
                .map_err(failed("SET_VRING_ADDR"))?;
        }
        // Neither message has a reply: a request that has one comes back only after the
        // back end handled them, so logging is on (or off) when this returns, as QEMU does.
        self.frontend
            .get_features()
            .map_err(failed("GET_FEATURES"))?;
        Ok(())
    }

    /// Shuts the socket down: the back end sees the hangup at once and stops serving, and
    /// nothing more is read from a connection that is out of step.
    pub fn shut_down(&self) {
        // SAFETY: shutdown on the connection's own socket descriptor; it touches no memory.
        unsafe { libc::shutdown(self.frontend.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// SET_LOG_BASE in its `LOG_SHMFD` form (the log's memfd, its size and offset), written
    /// by petrel on the connection's socket: the `vhost` crate's front end insists on a
    /// 16-byte reply, where libvhost-user back ends (QEMU's: qemu-storage-daemon, virtiofsd)
    /// answer with the specification's u64. Like QEMU's front end, petrel takes either.
    fn set_log_base(&mut self, log: &DirtyLog) -> Result<(), VhostUserError> {
        self.require_log()?;
        let fail = |e: vhost::vhost_user::Error| VhostUserError::Protocol {
            what: "SET_LOG_BASE",
            source: vhost::Error::VhostUserProtocol(e),
        };
        let io = |e: std::io::Error| fail(vhost::vhost_user::Error::SocketBroken(e));
        let mut msg = Vec::with_capacity(28);
        for word in [SET_LOG_BASE, HEADER_VERSION, 16] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(&log.size().to_le_bytes());
        msg.extend_from_slice(&0u64.to_le_bytes());
        // SAFETY: the connection's socket, borrowed as a `UnixStream` that is never dropped
        // (`ManuallyDrop`), so the descriptor stays the front end's.
        let socket =
            ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(self.frontend.as_raw_fd()) });
        socket
            .send_with_fd(&msg[..], log.file().as_raw_fd())
            .map_err(|e| io(std::io::Error::from_raw_os_error(e.errno())))?;
        // The reply: a header for SET_LOG_BASE with the reply bit, and a small payload.
        let reply = read_log_base_reply(&socket);
        if reply.is_err() {
            // Whatever is left of the reply would be read as the next one's.
            self.shut_down();
        }
        reply.map_err(io)?;
        Ok(())
    }

    /// `VHOST_USER_GPU_SET_SOCKET`: hands a vhost-user-gpu back end its end of the display
    /// channel (no reply: libvhost-user sends none unless asked).
    pub fn set_gpu_socket(&mut self, channel: &UnixStream) -> Result<(), VhostUserError> {
        let mut msg = Vec::with_capacity(12);
        for word in [GPU_SET_SOCKET, HEADER_VERSION, 0] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        // SAFETY: the connection's socket, borrowed as a `UnixStream` that is never dropped
        // (`ManuallyDrop`), so the descriptor stays the front end's.
        let socket =
            ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(self.frontend.as_raw_fd()) });
        socket
            .send_with_fd(&msg[..], channel.as_raw_fd())
            .map_err(|e| VhostUserError::Protocol {
                what: "GPU_SET_SOCKET",
                source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketError(
                    std::io::Error::from_raw_os_error(e.errno()),
                )),
            })?;
        Ok(())
    }

    /// Stops the back end's rings (the driver reset the device, or the VM is being saved):
    /// each enabled ring is disabled and GET_VRING_BASE stops it. Returns where each ring's
    /// back end stopped in the available ring (`None` for a ring that was not running).
    pub fn stop(&mut self, queues: &[Queue]) -> Result<Vec<Option<u16>>, VhostUserError> {
        let mut bases = Vec::with_capacity(queues.len());
        for (index, q) in queues.iter().enumerate() {
            if !q.ready() {
                bases.push(None);
                continue;
            }
            if self.features & PROTOCOL_FEATURES_BIT != 0 {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(failed("SET_VRING_ENABLE"))?;
            }
            let base = self
                .frontend
                .get_vring_base(index)
                .map_err(failed("GET_VRING_BASE"))?;
            bases.push(Some(base as u16));
        }
        Ok(bases)
    }
}

/// Reads SET_LOG_BASE's reply: a header for SET_LOG_BASE with the reply bit, and a payload
/// of at most [`MAX_LOG_BASE_REPLY`] bytes, dropped.
fn read_log_base_reply(socket: &UnixStream) -> std::io::Result<()> {
    let mut header = [0u8; 12];
    (&*socket).read_exact(&mut header)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let size = word(8) as usize;
    if word(0) != SET_LOG_BASE || word(4) & REPLY_FLAG == 0 || size > MAX_LOG_BASE_REPLY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the reply to SET_LOG_BASE is not one (request {}, flags {:#x}, {size} bytes)",
                word(0),
                word(4)
            ),
        ));
    }
    let mut payload = [0u8; MAX_LOG_BASE_REPLY];
    (&*socket).read_exact(&mut payload[..size])
}

/// A ring's addresses for SET_VRING_ADDR; with `log`, the back end logs its used-ring
/// writes (at the used ring's guest-physical address).
fn vring_addr(
    mem: &GuestMemoryMmap,
    q: &Queue,
    log: bool,
) -> Result<VringConfigData, VhostUserError> {
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: if log {
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
        } else {
            0
        },
        desc_table_addr: host_addr(mem, q.desc_table())?,
        used_ring_addr: host_addr(mem, q.used_ring())?,
        avail_ring_addr: host_addr(mem, q.avail_ring())?,
        log_addr: log.then_some(q.used_ring()),
    })
}

/// The back end maps the guest's memory itself and translates ring addresses given as
/// this process's virtual addresses (the `userspace_addr` of the memory table).
fn host_addr(mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, VhostUserError> {
    mem.get_host_address(vm_memory::GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| VhostUserError::RingAddress(gpa))
}
