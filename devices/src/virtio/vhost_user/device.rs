//! [`VhostUserDevice`]: a virtio device served by a vhost-user back end, whatever its kind:
//! the connection, the ring hand-over, the call relay and reconnection. A [`VhostUserKind`]
//! (the device's configuration) says which device it is and what to ask the back end.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, VringSetup};
use super::log::DirtyLog;
use super::{VhostUserError, RECONNECT_INTERVAL};
use crate::virtio::{
    read_config_bytes, ActivateError, DeviceEnv, DirtyLogError, VirtioDevice, HOST_EVENT_BASE,
};

/// What differs between vhost-user devices; implemented by each kind's configuration.
pub trait VhostUserKind: Send + 'static {
    /// The virtio device id.
    const DEVICE_TYPE: u32;
    /// The maximum size of each queue, one entry per queue.
    const QUEUE_SIZES: &'static [u16];
    /// Why the device cannot be saved (snapshots, live migration), if it cannot.
    const UNSAVABLE: Option<&'static str> = None;
    /// The device's id.
    fn id(&self) -> &str;
    /// The back end's Unix socket.
    fn socket(&self) -> &Path;
    /// Serves the device from the back end at `socket` (a restored or migrated device's,
    /// on this host).
    fn set_socket(&mut self, socket: std::path::PathBuf);
    /// The features to offer the driver and the config space to present, from a fresh
    /// connection (which has done the handshake).
    fn probe(&mut self, conn: &mut Connection) -> Result<(u64, Vec<u8>), VhostUserError>;
    /// A descriptor of the kind's own that the event loop watches besides the connection
    /// (vhost-user-gpu's display channel), while the kind has one.
    fn channel(&self) -> Option<RawFd> {
        None
    }
    /// Channels the kind stopped using: the device unwatches each, then drops it.
    fn retired_channels(&mut self) -> Vec<OwnedFd> {
        Vec::new()
    }
    /// The channel is readable or hung up (on the VMM thread).
    fn channel_ready(&mut self) {}
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// The kind's own counters, added to the device's metrics.
    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// Event tokens past [`HOST_EVENT_BASE`].
const TOKEN_SOCKET: u32 = HOST_EVENT_BASE;
const TOKEN_TIMER: u32 = HOST_EVENT_BASE + 1;
const TOKEN_CALL: u32 = HOST_EVENT_BASE + 2;
const TOKEN_CHANNEL: u32 = HOST_EVENT_BASE + 3;

/// A running device: what the back end needs again after a reconnection.
pub(super) struct Active {
    pub(super) queues: Vec<Queue>,
    pub(super) env: DeviceEnv,
}

/// A virtio device whose queues a vhost-user back end serves.
pub struct VhostUserDevice<C> {
    pub(super) config: C,
    /// The connection, `None` while the back end is away.
    pub(super) conn: Option<Connection>,
    /// A lost connection still registered with the event loop, dropped on the VMM thread.
    stale: Option<Connection>,
    /// Whether the connection is registered with the event loop.
    watched: bool,
    /// The kind's channel registered with the event loop.
    channel_watched: Option<RawFd>,
    pub(super) avail_features: u64,
    pub(super) config_space: Vec<u8>,
    /// The back end's used-buffer notifications, relayed to the interrupt.
    pub(super) call: EventFd,
    reconnect: TimerFd,
    /// Why the last reconnection attempt failed, so each new reason is logged once.
    last_failure: Option<String>,
    /// Bumped when a new back end has a different config space.
    pub(super) config_generation: u32,
    /// Connections lost and connections made again since the device was created.
    disconnections: u64,
    reconnections: u64,
    pub(super) active: Option<Active>,
    /// Whether the back end is to log the pages it writes (for Diff snapshots or a live
    /// migration), and the log once the device is active.
    pub(super) logging: bool,
    pub(super) log: Option<DirtyLog>,
    /// The back end's rings are stopped for a save (`quiesce`) until `resume`.
    pub(super) stopped: bool,
}

impl<C: VhostUserKind> VhostUserDevice<C> {
    /// Connects to the back end at the configured socket, handshakes and reads the config space.
    pub fn new(config: impl Into<C>) -> Result<Self, VhostUserError> {
        let mut config: C = config.into();
        let mut conn = Connection::open(config.socket(), C::QUEUE_SIZES.len())?;
        let (avail_features, config_space) = config.probe(&mut conn)?;
        let os = |what| move |source| VhostUserError::Os { what, source };
        let call = EventFd::new(EFD_NONBLOCK).map_err(os("an eventfd"))?;
        let reconnect = TimerFd::new()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
            .map_err(os("a timer"))?;
        // Non-blocking: a vCPU thread may re-arm the timer (which resets its count) between
        // the event loop seeing it ready and reading it.
        // SAFETY: fcntl on the timer descriptor this function owns, with F_SETFL and flags
        // read from it just before; it touches no memory.
        let nonblocking = unsafe {
            let flags = libc::fcntl(reconnect.as_raw_fd(), libc::F_GETFL);
            flags >= 0
                && libc::fcntl(
                    reconnect.as_raw_fd(),
                    libc::F_SETFL,
                    flags | libc::O_NONBLOCK,
                ) == 0
        };
        if !nonblocking {
            return Err(os("a non-blocking timer")(std::io::Error::last_os_error()));
        }
        Ok(VhostUserDevice {
            config,
            conn: Some(conn),
            stale: None,
            watched: false,
            channel_watched: None,
            avail_features,
            config_space,
            call,
            reconnect,
            last_failure: None,
            config_generation: 0,
            disconnections: 0,
            reconnections: 0,
            active: None,
            logging: false,
            log: None,
            stopped: false,
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Whether the back end is connected.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Hands the running device to the back end; `resume` after a lost back end.
    pub(super) fn start(
        conn: &mut Connection,
        active: &Active,
        call: &EventFd,
        resume: bool,
        log: Option<&DirtyLog>,
    ) -> Result<(), VhostUserError> {
        let mem = &active.env.mem;
        let mut vrings = Vec::with_capacity(active.queues.len());
        for (index, queue) in active.queues.iter().enumerate() {
            let kick = active
                .env
                .kicks
                .eventfd(index)
                .ok_or(VhostUserError::MissingFeature("a kick eventfd per queue"))?;
            // Where the back end starts: the queue's start on a first start; after a lost
            // back end, the used index in guest memory (what it finished).
            let base = if !resume {
                queue.next_avail()
            } else if queue.ready() {
                queue
                    .used_idx(mem, std::sync::atomic::Ordering::Acquire)
                    .map_err(|_| VhostUserError::RingAddress(queue.used_ring()))?
                    .0
            } else {
                0
            };
            vrings.push(VringSetup {
                queue,
                base,
                kick,
                call,
            });
        }
        conn.start(active.env.acked_features, mem, &vrings, log)
    }

    /// The connection failed: keep what the driver set up and try again later.
    pub(super) fn lose(&mut self, e: &VhostUserError) {
        tracing::warn!(id = %self.config.id(), %e, "vhost-user back end lost; reconnecting");
        self.disconnections += 1;
        if let Some(conn) = &self.conn {
            // The back end stops at once, not when the VMM thread next drops the socket.
            conn.shut_down();
        }
        self.stale = self.conn.take().or(self.stale.take());
        self.arm_reconnect();
    }

    fn arm_reconnect(&mut self) {
        if let Err(e) = self
            .reconnect
            .reset(RECONNECT_INTERVAL, Some(RECONNECT_INTERVAL))
        {
            tracing::error!(id = %self.config.id(), %e, "cannot arm the reconnection timer");
        }
    }

    fn socket_events(conn: &Connection) -> Events {
        Events::with_data(
            conn.socket(),
            TOKEN_SOCKET,
            EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP,
        )
    }

    /// Registers the connection with the event loop, after unregistering a lost one.
    fn sync_watch(&mut self, ops: &mut EventOps) {
        if let Some(old) = self.stale.take() {
            if self.watched {
                let _ = ops.remove(Self::socket_events(&old));
                self.watched = false;
            }
        }
        if let (Some(conn), false) = (&self.conn, self.watched) {
            match ops.add(Self::socket_events(conn)) {
                Ok(()) => self.watched = true,
                Err(e) => tracing::error!(id = %self.config.id(), ?e, "cannot watch the socket"),
            }
        }
        self.sync_channel_watch(ops);
    }

    /// Unwatches (then drops) the kind's retired channels and watches its current one.
    fn sync_channel_watch(&mut self, ops: &mut EventOps) {
        let events =
            |fd| Events::with_data_raw(fd, TOKEN_CHANNEL, EventSet::IN | EventSet::HANG_UP);
        for old in self.config.retired_channels() {
            if self.channel_watched == Some(old.as_raw_fd()) {
                let _ = ops.remove(events(old.as_raw_fd()));
                self.channel_watched = None;
            }
        }
        if let (Some(fd), None) = (self.config.channel(), self.channel_watched) {
            match ops.add(events(fd)) {
                Ok(()) => self.channel_watched = Some(fd),
                Err(e) => tracing::error!(id = %self.config.id(), ?e, "cannot watch the channel"),
            }
        }
    }

    /// One reconnection attempt.
    fn try_reconnect(&mut self) {
        let attempt =
            Connection::open(self.config.socket(), C::QUEUE_SIZES.len()).and_then(|mut conn| {
                let (features, space) = self.config.probe(&mut conn)?;
                let acked = self.active.as_ref().map_or(0, |a| a.env.acked_features);
                if acked & !features & !super::connection::PROTOCOL_FEATURES_BIT != 0 {
                    return Err(VhostUserError::MissingFeature(
                        "the features the driver accepted from the previous back end",
                    ));
                }
                // petrel has logging on for this VM: a new back end must log too.
                if self.logging {
                    conn.require_log()?;
                }
                // Stopped for a save: `resume` starts the rings.
                if let (Some(active), false) = (&self.active, self.stopped) {
                    Self::start(&mut conn, active, &self.call, true, self.log.as_ref())?;
                }
                Ok((conn, (features, space)))
            });
        match attempt {
            Ok((conn, (features, space))) => {
                if self.active.is_none() {
                    // The driver has not started the device: offer what this back end has.
                    self.avail_features = features;
                }
                tracing::warn!(id = %self.config.id(), "vhost-user back end reconnected");
                self.conn = Some(conn);
                self.reconnections += 1;
                self.last_failure = None;
                let changed = space != self.config_space;
                self.config_space = space;
                if changed {
                    self.config_generation = self.config_generation.wrapping_add(1);
                }
                let _ = self.reconnect.clear();
                if let Some(active) = &self.active {
                    // Completions the old back end signalled may not have been relayed.
                    active.env.interrupt.signal_used_queue();
                    if changed {
                        active.env.interrupt.signal_config_change();
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                if self.last_failure.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(id = %self.config.id(), %e, "vhost-user reconnection failed; retrying");
                    self.last_failure = Some(reason);
                }
            }
        }
    }
}

impl<C: VhostUserKind> VirtioDevice for VhostUserDevice<C> {
    fn device_type(&self) -> u32 {
        C::DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        C::QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let active = Active { queues, env };
        if self.logging && self.log.is_none() {
            let log = DirtyLog::new(&active.env.mem)
                .map_err(|e| ActivateError::Backend(e.to_string()))?;
            self.log = Some(log);
        }
        self.stopped = false;
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = Self::start(conn, &active, &self.call, false, self.log.as_ref()) {
                if !e.is_connection_lost() {
                    // The back end answered and refused (or petrel cannot describe the
                    // memory): the device needs a reset, reconnecting would not help.
                    return Err(ActivateError::Backend(e.to_string()));
                }
                self.active = Some(active);
                self.lose(&e);
                return Ok(());
            }
        }
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) {
        self.config.reset();
        self.stopped = false;
        let Some(active) = self.active.take() else {
            return;
        };
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = conn.stop(&active.queues) {
                self.lose(&e);
            }
        }
        let _ = self.call.read();
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .as_ref()
            .map_or_else(Vec::new, |a| a.queues.iter().collect())
    }

    fn queue_notify(&mut self, index: usize) {
        // The back end reads the kick eventfd itself; this is a notification that reached
        // the transport by another way (an MMIO write without ioeventfd): pass it on.
        if let Some(active) = &self.active {
            active.env.kicks.kick(index);
        }
    }

    fn handles_queue_notifications(&self) -> bool {
        true
    }

    fn quiesce(&mut self) {
        self.stop_for_save();
    }

    fn resume(&mut self) {
        self.start_after_save();
    }

    fn set_dirty_logging(&mut self, on: bool) -> Result<(), DirtyLogError> {
        self.change_logging(on)
            .map_err(|e| DirtyLogError(e.to_string()))
    }

    fn unsavable(&self) -> Option<&'static str> {
        C::UNSAVABLE
    }

    fn can_log_dirty(&self) -> Result<(), DirtyLogError> {
        match &self.conn {
            Some(conn) => conn.require_log().map_err(|e| DirtyLogError(e.to_string())),
            None => Ok(()),
        }
    }

    fn take_dirty(&mut self, set: &mut [u64]) {
        if let (Some(log), Some(active)) = (&self.log, &self.active) {
            // libvhost-user writes a used index before it logs it: the used rings always
            // count as written (a few pages a round).
            for q in active.queues.iter().filter(|q| q.ready()) {
                log.mark_range(q.used_ring(), 8 + 8 * u64::from(q.size()));
            }
            log.take_into(&active.env.mem, set);
        }
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn metrics(&self) -> serde_json::Value {
        let mut metrics = self.config.metrics();
        metrics.insert("vhost_user_connected".into(), self.conn.is_some().into());
        metrics.insert(
            "vhost_user_disconnections".into(),
            self.disconnections.into(),
        );
        metrics.insert("vhost_user_reconnections".into(), self.reconnections.into());
        serde_json::Value::Object(metrics)
    }

    fn init_host_events(&mut self, ops: &mut EventOps) {
        let sources = [
            Events::with_data(&self.call, TOKEN_CALL, EventSet::IN),
            Events::with_data(&self.reconnect, TOKEN_TIMER, EventSet::IN),
        ];
        for events in sources {
            if let Err(e) = ops.add(events) {
                tracing::error!(id = %self.config.id(), ?e, "cannot watch a vhost-user event");
            }
        }
        self.sync_watch(ops);
    }

    fn host_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_CALL => {
                let _ = self.call.read();
                if let Some(active) = &self.active {
                    active.env.interrupt.signal_used_queue();
                }
            }
            // The back end sends nothing unasked: readable means closed (or broken).
            TOKEN_SOCKET if peer_closed(self.conn.as_ref()) => {
                self.lose(&VhostUserError::Disconnected);
            }
            TOKEN_CHANNEL => self.config.channel_ready(),
            TOKEN_TIMER => {
                let _ = self.reconnect.wait();
                if self.conn.is_none() {
                    self.try_reconnect();
                } else {
                    let _ = self.reconnect.clear();
                }
            }
            _ => {}
        }
        self.sync_watch(ops);
    }
}

/// Whether the socket of `conn` is closed by the peer (or broken); a readiness that went
/// away (a reply read meanwhile) is not.
fn peer_closed(conn: Option<&Connection>) -> bool {
    let Some(conn) = conn else { return false };
    let mut byte = 0u8;
    // SAFETY: recv into one byte on the stack that outlives the call, on the connection's
    // socket; MSG_PEEK leaves the data in the socket and MSG_DONTWAIT keeps it from blocking.
    let n = unsafe {
        libc::recv(
            conn.socket().as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return err.kind() != std::io::ErrorKind::WouldBlock;
    }
    // EOF, or a message nobody asked for: the protocol is out of step either way.
    true
}
