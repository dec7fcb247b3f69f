//! The vsock device as a [`VirtioDevice`]: config space, activation, reset, and its place on
//! the event loop.
//!
//! The device keeps its own epoll set (the listening socket, host clients still sending
//! `CONNECT`, connection sockets, a timer for connect timeouts) and puts that one descriptor
//! on the VMM's event loop, so that connections can come and go from any callback. Interest
//! in a connection socket follows its state: readable while the device wants host bytes and
//! has not yet seen `WouldBlock`, writable while guest bytes wait; a socket with no interest
//! is out of the set (so a hung-up socket cannot spin the loop).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use event_manager::{EventOps, Events};
use serde::Serialize;
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, State};
use super::host::{Handshake, SocketFile};
use super::packet::Header;
use super::{VsockConfig, VsockError, FIRST_HOST_PORT, QUEUE_SIZE};
use crate::virtio::{
    features, ids, read_config_bytes, ActivateError, DeviceEnv, VirtioDevice, HOST_EVENT_BASE,
};

/// The device's epoll descriptor on the VMM's event loop.
const EPOLL_TOKEN: u32 = HOST_EVENT_BASE;

/// Inner epoll data: the kind in the upper 32 bits, the descriptor in the lower.
pub(super) const LISTENER: u64 = 0;
pub(super) const TIMER: u64 = 1;
pub(super) const KIND_HANDSHAKE: u64 = 1 << 32;
pub(super) const KIND_CONN: u64 = 2 << 32;

pub(super) const RX_QUEUE: usize = 0;
pub(super) const TX_QUEUE: usize = 1;
pub(super) const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// How often the timer checks deadlines while something waits for one.
const TICK: Duration = Duration::from_millis(250);

/// The device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VsockMetrics {
    /// Packets taken from tx / put on rx.
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// Payload bytes guest to host (taken by a host socket) and host to guest.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Connections established, in either direction.
    pub connections: u64,
    /// Guest connections to a host port nobody listens on.
    pub connect_failures: u64,
    /// Host-initiated connections the guest did not answer in time.
    pub connect_timeouts: u64,
    /// RST packets the device sent.
    pub resets_sent: u64,
    /// Malformed chains and packets.
    pub malformed: u64,
    /// Packets sent past the credit the device gave.
    pub credit_violations: u64,
    /// Host clients refused (bad `CONNECT` line, too many connections, timeout).
    pub host_refused: u64,
    /// Times a host socket could not take all the guest's bytes at once (they waited in the
    /// connection's buffer).
    pub host_write_blocked: u64,
    /// CREDIT_REQUESTs sent: the guest had no room for host bytes that were waiting.
    pub credit_requests: u64,
    /// Replies dropped because the guest let [`super::MAX_CONTROL`] of them wait.
    pub control_dropped: u64,
}

/// The queues of an activated device.
pub(super) struct Active {
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) event: Queue,
    pub(super) env: DeviceEnv,
}

/// A virtio-vsock device.
pub struct Vsock {
    pub(super) config: VsockConfig,
    pub(super) listener: UnixListener,
    pub(super) _file: SocketFile,
    pub(super) epoll: Epoll,
    pub(super) timer: TimerFd,
    timer_armed: bool,
    /// The listener is out of the epoll set after an accept error, until the next tick.
    listener_paused: bool,
    pub(super) active: Option<Active>,
    pub(super) conns: BTreeMap<(u32, u32), Conn>,
    pub(super) by_fd: HashMap<RawFd, (u32, u32)>,
    /// Interest registered per connection descriptor.
    registered: HashMap<RawFd, EventSet>,
    pub(super) handshakes: HashMap<RawFd, Handshake>,
    /// Data-less packets for the guest, oldest first.
    pub(super) control: VecDeque<Header>,
    pub(super) next_host_port: u32,
    /// The connection served last on rx, for round-robin.
    pub(super) last_served: Option<(u32, u32)>,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    pub(super) reset_event_pending: bool,
    pub(super) metrics: VsockMetrics,
    /// Host bytes on their way into an rx buffer ([`super::MAX_PAYLOAD`] bytes, reused).
    pub(super) scratch: Vec<u8>,
}

impl Vsock {
    /// A vsock device listening on `config.uds_path`, not yet activated.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        let (listener, file) = super::host::listen(&config.uds_path)?;
        let os = |what| move |source| VsockError::Os { what, source };
        let epoll = Epoll::new().map_err(os("an epoll set"))?;
        let timer = TimerFd::new().map_err(|e| VsockError::Os {
            what: "a timer",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        // SAFETY: fcntl on the timer descriptor this function owns, with F_SETFL and flags
        // read from it just before; it touches no memory.
        let nonblocking = unsafe {
            let flags = libc::fcntl(timer.as_raw_fd(), libc::F_GETFL);
            flags >= 0
                && libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !nonblocking {
            return Err(VsockError::Os {
                what: "a non-blocking timer",
                source: std::io::Error::last_os_error(),
            });
        }
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(os("an epoll entry"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER),
            )
            .map_err(os("an epoll entry"))?;
        tracing::info!(id = config.id, cid = config.guest_cid, path = %config.uds_path.display(), "vsock listening");
        Ok(Vsock {
            config: config.clone(),
            listener,
            _file: file,
            epoll,
            timer,
            timer_armed: false,
            listener_paused: false,
            active: None,
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            registered: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            last_served: None,
            reset_event_pending: false,
            metrics: VsockMetrics::default(),
            scratch: vec![0; super::MAX_PAYLOAD],
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> VsockMetrics {
        self.metrics
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The device's epoll descriptor (for tests and benchmarks that drive it without an
    /// event loop).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Handles whatever is ready on the device's host side (sockets, timer), then moves what
    /// it can to the guest. The event loop calls this when the epoll descriptor is readable.
    pub fn process_host(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(%e, id = self.config.id, "vsock epoll");
                    break;
                }
            };
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.event_set());
            }
            if n < events.len() {
                break;
            }
        }
        self.process_rx();
        self.sync();
    }

    fn dispatch(&mut self, data: u64, set: EventSet) {
        let fd = (data & 0xffff_ffff) as RawFd;
        match data & !0xffff_ffff {
            _ if data == LISTENER => self.accept_clients(),
            _ if data == TIMER => self.tick(),
            KIND_HANDSHAKE => self.handshake_readable(fd),
            KIND_CONN => {
                let Some(&key) = self.by_fd.get(&fd) else {
                    return;
                };
                if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                    self.flush_conn(key);
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.readable = true;
                    }
                }
            }
            _ => tracing::debug!(data, "unknown vsock epoll event"),
        }
    }

    /// Adds a connection and registers its descriptor.
    pub(super) fn insert_conn(&mut self, conn: Conn) {
        let key = conn.key();
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
    }

    /// Drops a connection, closing its host socket.
    pub(super) fn remove_conn(&mut self, key: (u32, u32)) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        let fd = conn.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        if self.registered.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        tracing::debug!(id = self.config.id, ?key, "vsock connection closed");
        Some(conn)
    }

    /// Drops a connection and tells the guest with RST.
    pub(super) fn reset_conn(&mut self, key: (u32, u32)) {
        if let Some(mut conn) = self.remove_conn(key) {
            let h = conn.header(super::packet::op::RST);
            self.push_control(h);
        }
    }

    /// Queues a data-less packet for the guest.
    pub(super) fn push_control(&mut self, h: Header) {
        if self.control.len() >= super::MAX_CONTROL {
            self.metrics.control_dropped += 1;
            if self.metrics.control_dropped.is_power_of_two() {
                tracing::warn!(
                    id = self.config.id,
                    dropped = self.metrics.control_dropped,
                    "vsock guest posts no rx buffers; replies dropped"
                );
            }
            return;
        }
        if h.op == super::packet::op::RST {
            self.metrics.resets_sent += 1;
        }
        self.control.push_back(h);
    }

    /// Drops every connection and host client (device reset, restore).
    fn drop_all(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        for (fd, _) in self.handshakes.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.control.clear();
        self.last_served = None;
    }

    /// Brings epoll interest and the timer up to date with the connections' states.
    pub(super) fn sync(&mut self) {
        let mut changes = Vec::new();
        for conn in self.conns.values() {
            let fd = conn.stream.as_raw_fd();
            let mut want = EventSet::empty();
            if conn.reads_host() && !conn.readable && conn.peer_credit() > 0 {
                want |= EventSet::IN;
            }
            if !conn.drained() {
                want |= EventSet::OUT;
            }
            let have = self.registered.get(&fd).copied();
            if have != (!want.is_empty()).then_some(want) {
                changes.push((fd, have, want));
            }
        }
        for (fd, have, want) in changes {
            let result = match (have, want.is_empty()) {
                (Some(_), true) => {
                    self.registered.remove(&fd);
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (Some(_), false) => {
                    self.registered.insert(fd, want);
                    let ev = EpollEvent::new(want, KIND_CONN | fd as u64);
                    self.epoll.ctl(ControlOperation::Modify, fd, ev)
                }
                (None, _) => {
                    self.registered.insert(fd, want);
                    let ev = EpollEvent::new(want, KIND_CONN | fd as u64);
                    self.epoll.ctl(ControlOperation::Add, fd, ev)
                }
            };
            if let Err(e) = result {
                tracing::warn!(%e, fd, id = self.config.id, "vsock epoll interest");
            }
        }
        let waiting = self.listener_paused
            || !self.handshakes.is_empty()
            || self
                .conns
                .values()
                .any(|c| matches!(c.state, State::Requested { .. }));
        if waiting != self.timer_armed {
            let result = if waiting {
                self.timer.reset(TICK, Some(TICK))
            } else {
                self.timer.clear()
            };
            match result {
                Ok(()) => self.timer_armed = waiting,
                Err(e) => tracing::warn!(%e, id = self.config.id, "vsock timer"),
            }
        }
    }

    /// Takes the listener out of the epoll set (until [`Self::resume_listener`]).
    pub(super) fn pause_listener(&mut self) {
        if !self.listener_paused {
            let fd = self.listener.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.listener_paused = true;
        }
    }

    /// Watches the listener again after a pause.
    pub(super) fn resume_listener(&mut self) {
        if self.listener_paused {
            let fd = self.listener.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, LISTENER);
            match self.epoll.ctl(ControlOperation::Add, fd, ev) {
                Ok(()) => self.listener_paused = false,
                Err(e) => tracing::warn!(%e, id = self.config.id, "vsock listener"),
            }
        }
    }

    /// The config space: `guest_cid`.
    fn config_space(&self) -> [u8; 8] {
        self.config.guest_cid.to_le_bytes()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        ids::VSOCK
    }

    fn avail_features(&self) -> u64 {
        features::COMMON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; 3] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 3, got })?;
        self.active = Some(Active { rx, tx, event, env });
        self.deliver_reset_event();
        self.process_tx();
        Ok(())
    }

    fn reset(&mut self) {
        self.drop_all();
        self.active = None;
        self.reset_event_pending = false;
        self.sync();
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .as_ref()
            .map(|a| vec![&a.rx, &a.tx, &a.event])
            .unwrap_or_default()
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            EVENT_QUEUE => self.deliver_reset_event(),
            _ => tracing::debug!(
                index,
                id = self.config.id,
                "notification of an unknown queue"
            ),
        }
        self.sync();
    }

    fn init_host_events(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data_raw(self.epoll.as_raw_fd(), EPOLL_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            tracing::error!(?e, id = self.config.id, "cannot watch the vsock sockets");
        }
    }

    fn host_event(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EPOLL_TOKEN => self.process_host(),
            token => tracing::debug!(token, id = self.config.id, "unknown vsock event"),
        }
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(self.metrics).unwrap_or(serde_json::Value::Null)
    }
}
