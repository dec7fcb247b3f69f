//! A vhost-user-net back end that loops every frame back: what the guest transmits comes
//! back on its own receive queue. Debian packages no such back end, so petrel's tests bring
//! this one (built on the `vhost-user-backend` crate).
//!
//! A test starts the `vhost-user-net-loop` binary (`--socket PATH [--mac MAC]`), or a
//! [`LoopServer`] on a thread, then points petrel at the socket with
//! `--vhost-user-net socket=PATH`. Anything the guest sends on that NIC comes straight back
//! to it, so a guest can check its own frames arrive (e.g. a ping to an address with a static
//! ARP entry for its own MAC) without a TAP device or root.
//!
//! The device: two queues (RX 0, TX 1), `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` (the config
//! space holds the MAC), `VIRTIO_RING_F_EVENT_IDX`, and the vhost-user protocol features
//! `CONFIG`, `REPLY_ACK` and `MQ`. Each frame read from TX (after its 12-byte
//! `virtio_net_hdr_v1`) is written to RX behind a zeroed header with `num_buffers = 1`. With
//! no RX buffer posted, frames wait in a bounded queue; beyond its capacity the oldest is
//! dropped and counted. The server keeps serving after a front end disconnects, so a front
//! end can reconnect; each connection starts with a fresh device.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

#[cfg(test)]
mod tests;

/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// Bytes in a `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame taken from TX (a 64 KiB GSO-less frame plus headers is far more than
/// the 1514 bytes a guest sends without offloads); longer chains are dropped.
pub const MAX_FRAME: usize = 65_562;
/// Frames that may wait for an RX buffer by default.
pub const DEFAULT_BACKLOG: usize = 256;
const MAX_QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryMmap<()>;
type AtomicMem = GuestMemoryAtomic<Mem>;
type Vring = VringRwLock<AtomicMem>;

/// What went wrong serving the socket.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The socket could not be created or listened on.
    #[error("cannot listen on the vhost-user socket")]
    Listen(#[source] VhostUserError),
    /// The daemon could not be set up or could not accept a connection.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// A front end broke the protocol; its connection was closed.
    #[error("front end connection failed")]
    Connection(#[source] VhostUserError),
}

/// How the device looks to the front end.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// The MAC address in the config space.
    pub mac: [u8; 6],
    /// Frames that may wait for an RX buffer before the oldest is dropped.
    pub backlog: usize,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` is offered.
    pub event_idx: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            backlog: DEFAULT_BACKLOG,
            event_idx: true,
        }
    }
}

/// Counts kept across connections.
#[derive(Debug, Default)]
pub struct Counters {
    looped: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
}

impl Counters {
    /// Frames delivered back on RX.
    pub fn looped(&self) -> u64 {
        self.looped.load(Ordering::Relaxed)
    }
    /// Frames dropped: the oldest waiting beyond the backlog, or too big for an RX chain.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// TX chains that held no valid frame (too short, too long, device-writable, outside
    /// memory), and RX chains that could not be written.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "looped {} dropped {} malformed {}",
            self.looped(),
            self.dropped(),
            self.malformed()
        )
    }
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A listening socket that serves one front end at a time, for ever.
pub struct LoopServer {
    listener: Listener,
    config: LoopConfig,
    counters: Arc<Counters>,
}

impl LoopServer {
    /// Listens on `socket` (replacing a stale socket file there).
    pub fn bind(socket: &Path, config: LoopConfig) -> Result<Self, LoopError> {
        let listener = Listener::new(socket, true).map_err(LoopError::Listen)?;
        Ok(LoopServer {
            listener,
            config,
            counters: Arc::default(),
        })
    }

    /// The counters, shared with the server.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Waits for a front end and serves it, with a fresh device, until it disconnects
    /// (`Ok`) or breaks the protocol (`Err(LoopError::Connection)`, the connection closed).
    pub fn serve_one(&mut self) -> Result<(), LoopError> {
        let backend = Arc::new(LoopBackend::new(self.config, self.counters.clone()));
        let mem = GuestMemoryAtomic::new(Mem::new());
        let mut daemon = VhostUserDaemon::new("vhost-user-net-loop".into(), backend, mem)
            .map_err(|e| LoopError::Daemon(e.to_string()))?;
        daemon
            .start(&mut self.listener)
            .map_err(|e| LoopError::Daemon(e.to_string()))?;
        match daemon.wait() {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected
                | VhostUserError::PartialMessage
                | VhostUserError::SocketBroken(_),
            )) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(e)) => Err(LoopError::Connection(e)),
            Err(e) => Err(LoopError::Daemon(e.to_string())),
        }
        // Dropping the daemon stops its vring worker thread.
    }

    /// Serves front ends one after another; `on_end` hears how each connection ended. Only a
    /// failure to accept ends the loop.
    pub fn serve(&mut self, mut on_end: impl FnMut(Result<(), LoopError>)) -> LoopError {
        loop {
            match self.serve_one() {
                Err(e @ (LoopError::Listen(_) | LoopError::Daemon(_))) => return e,
                end => on_end(end),
            }
        }
    }
}

/// The device for one connection.
struct LoopBackend {
    config: LoopConfig,
    counters: Arc<Counters>,
    mem: Mutex<Option<AtomicMem>>,
    event_idx: AtomicBool,
    waiting: Mutex<VecDeque<Vec<u8>>>,
}

/// Why a TX chain held no frame.
#[derive(Debug)]
enum ChainError {
    DeviceWritable,
    TooShort,
    TooLong,
    OutsideMemory,
}

impl LoopBackend {
    fn new(config: LoopConfig, counters: Arc<Counters>) -> Self {
        LoopBackend {
            config,
            counters,
            mem: Mutex::new(None),
            event_idx: AtomicBool::new(false),
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    /// `virtio_net_config`: mac, status (link up), max_virtqueue_pairs (1).
    fn config_space(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.config.mac);
        c[6..8].copy_from_slice(&1u16.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Queues a frame for RX, dropping the oldest beyond the backlog.
    fn push_waiting(&self, frame: Vec<u8>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.push_back(frame);
        while waiting.len() > self.config.backlog {
            waiting.pop_front();
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes every chain from TX, queueing the frames; returns whether any was used.
    fn drain_tx(&self, vring: &Vring, mem: &Mem) -> io::Result<bool> {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut used = false;
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            loop {
                let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem);
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                match read_frame(chain, mem) {
                    Ok(frame) => self.push_waiting(frame),
                    Err(_) => {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                vring.add_used(head, 0).map_err(io::Error::other)?;
                used = true;
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(used)
    }

    /// Delivers waiting frames while RX has buffers; returns whether any chain was used.
    fn fill_rx(&self, vring: &Vring, mem: &Mem) -> io::Result<bool> {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used = false;
        while let Some(frame) = waiting.front() {
            let mut chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem);
            if chain.is_none()
                && event_idx
                && vring.enable_notification().map_err(io::Error::other)?
            {
                chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem);
            }
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = match write_frame(chain, mem, frame) {
                Ok(len) => {
                    self.counters.looped.fetch_add(1, Ordering::Relaxed);
                    waiting.pop_front();
                    len
                }
                Err(WriteError::TooSmall) => {
                    // The chain is fine, the frame is not: drop the frame, reuse the chain.
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    waiting.pop_front();
                    vring.get_mut().get_queue_mut().go_to_previous_position();
                    continue;
                }
                Err(WriteError::Chain) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            vring.add_used(head, len).map_err(io::Error::other)?;
            used = true;
        }
        Ok(used)
    }
}

/// Gathers the device-readable descriptors of a TX chain and strips the header.
fn read_frame(chain: DescriptorChain<&Mem>, mem: &Mem) -> Result<Vec<u8>, ChainError> {
    let mut data = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::DeviceWritable);
        }
        let len = desc.len() as usize;
        if data.len() + len > VNET_HDR_LEN + MAX_FRAME {
            return Err(ChainError::TooLong);
        }
        let start = data.len();
        data.resize(start + len, 0);
        mem.read_slice(&mut data[start..], desc.addr())
            .map_err(|_| ChainError::OutsideMemory)?;
    }
    if data.len() < VNET_HDR_LEN {
        return Err(ChainError::TooShort);
    }
    data.drain(..VNET_HDR_LEN);
    Ok(data)
}

#[derive(Debug)]
enum WriteError {
    /// The chain is too small for header and frame.
    TooSmall,
    /// A descriptor is device-readable or outside memory.
    Chain,
}

/// Writes a zeroed header (`num_buffers = 1`) and the frame into an RX chain.
fn write_frame(chain: DescriptorChain<&Mem>, mem: &Mem, frame: &[u8]) -> Result<u32, WriteError> {
    let mut data = vec![0u8; VNET_HDR_LEN];
    data[10..12].copy_from_slice(&1u16.to_le_bytes());
    data.extend_from_slice(frame);
    let mut descs = Vec::new();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(WriteError::Chain);
        }
        room += desc.len() as usize;
        descs.push(desc);
    }
    if room < data.len() {
        return Err(WriteError::TooSmall);
    }
    let mut written = 0;
    for desc in descs {
        let n = (desc.len() as usize).min(data.len() - written);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[written..written + n], desc.addr())
            .map_err(|_| WriteError::Chain)?;
        written += n;
    }
    let total = data.len();
    // `total` is at most VNET_HDR_LEN + MAX_FRAME.
    u32::try_from(total).map_err(|_| WriteError::TooSmall)
}

/// Signals the queue's call eventfd if the driver wants it.
fn notify(vring: &Vring) -> io::Result<()> {
    if vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

impl VhostUserBackend for LoopBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.config.event_idx {
            f |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        space
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    /// Without an exit event the vring worker never ends, and dropping the daemon after a
    /// front end leaves would wait for it for ever.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn reset_device(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let (Some(rx), Some(tx)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            return Ok(());
        };
        let atomic = self
            .mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(atomic) = atomic else {
            return Ok(());
        };
        let mem = atomic.memory();
        // A ring error here is the driver's fault: it stays this connection's problem (the
        // worker ends), never the server's.
        if device_event == TX_QUEUE && self.drain_tx(tx, &mem)? {
            notify(tx)?;
        }
        if (device_event == TX_QUEUE || device_event == RX_QUEUE) && self.fill_rx(rx, &mem)? {
            notify(rx)?;
        }
        Ok(())
    }
}
