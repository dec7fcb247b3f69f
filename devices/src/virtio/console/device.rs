//! The console as a [`VirtioDevice`]: features, config space, activation, and its place on
//! the event loop.
//!
//! Event-loop tokens: `BACKEND_TOKEN` is the pty master or the socket client (watched for
//! input while the pending-input buffer has room, for writability while output waits),
//! `LISTENER_TOKEN` the listening socket, `WAKE_TOKEN` an eventfd the device writes when
//! something outside a host event (a queue notification) changed what should be watched:
//! only `host_event` has the `EventOps` to change it.

use std::os::fd::RawFd;
use std::path::Path;

use event_manager::{EventOps, Events};
use serde::Serialize;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::Backend;
use super::{ConsoleConfig, ConsoleError, INPUT_BUFFER_SIZE, QUEUE_SIZE, VIRTIO_CONSOLE_F_SIZE};
use crate::virtio::{
    features, ids, read_config_bytes, ActivateError, DeviceEnv, VirtioDevice, HOST_EVENT_BASE,
};

/// The pty master or the socket client.
pub(super) const BACKEND_TOKEN: u32 = HOST_EVENT_BASE;
/// The listening socket.
pub(super) const LISTENER_TOKEN: u32 = HOST_EVENT_BASE + 1;
/// The device's own wake-up eventfd.
pub(super) const WAKE_TOKEN: u32 = HOST_EVENT_BASE + 2;

/// receiveq, transmitq.
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
pub(super) const RX_QUEUE: usize = 0;
pub(super) const TX_QUEUE: usize = 1;

/// The console's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConsoleMetrics {
    /// Bytes the guest sent (taken from transmitq).
    pub tx_bytes: u64,
    /// Bytes delivered to the guest (into receiveq buffers).
    pub rx_bytes: u64,
    /// Bytes the guest sent that the backend could not take: no socket client, a full pty
    /// or client past the output buffer, a failed sink.
    pub tx_dropped_bytes: u64,
    /// Descriptor chains refused as malformed.
    pub malformed: u64,
}

/// The queues of an activated console.
pub(super) struct Active {
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) env: DeviceEnv,
}

/// A virtio console with one port.
pub struct Console {
    pub(super) config: ConsoleConfig,
    pub(super) backend: Backend,
    /// cols, rows.
    pub(super) size: (u16, u16),
    pub(super) generation: u32,
    pub(super) active: Option<Active>,
    /// Host input not yet delivered to the guest, at most [`INPUT_BUFFER_SIZE`] bytes.
    pub(super) input: Vec<u8>,
    /// Guest output the backend has not taken yet, at most [`super::OUTPUT_BUFFER_SIZE`].
    pub(super) output: Vec<u8>,
    pub(super) metrics: ConsoleMetrics,
    /// How many times output was dropped, for rate-limiting the log.
    pub(super) drop_events: u64,
    wake: EventFd,
    /// `init_host_events` ran: watched descriptors change through the event loop.
    watching: bool,
    /// What the event loop watches under [`BACKEND_TOKEN`].
    registered: Option<(RawFd, EventSet)>,
}

impl Console {
    /// A console on the backend `config` names, not yet activated. Opening a pty announces
    /// its path on stderr.
    pub fn new(config: &ConsoleConfig) -> Result<Self, ConsoleError> {
        Self::with_input(config, Vec::new())
    }

    /// A console that still has `input` to deliver.
    pub(super) fn with_input(config: &ConsoleConfig, input: Vec<u8>) -> Result<Self, ConsoleError> {
        if input.len() > INPUT_BUFFER_SIZE {
            return Err(ConsoleError::InputOverflow {
                id: config.id.clone(),
                len: input.len(),
            });
        }
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|source| ConsoleError::EventFd {
            id: config.id.clone(),
            source,
        })?;
        let backend = Backend::open(config)?;
        Ok(Console {
            config: config.clone(),
            size: backend.size(),
            backend,
            generation: 0,
            active: None,
            input,
            output: Vec::new(),
            metrics: ConsoleMetrics::default(),
            drop_events: 0,
            wake,
            watching: false,
            registered: None,
        })
    }

    /// The console's configuration.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> ConsoleMetrics {
        self.metrics
    }

    /// The slave path of a pty backend.
    pub fn pty_path(&self) -> Option<&Path> {
        self.backend.pty_path()
    }

    /// The console size (cols, rows) the config space reports.
    pub fn size(&self) -> (u16, u16) {
        self.size
    }

    /// Accepts waiting socket clients (the listener is readable): the first becomes the
    /// client if none is attached, the others are told the console is busy.
    pub fn accept_client(&mut self) {
        if self.registered.is_none() {
            self.backend.close_gone_client();
        }
        self.backend.accept();
        self.flush_output();
    }

    /// The config space: `cols`, `rows`, `max_nr_ports` (1), `emerg_wr` (0).
    fn config_space(&self) -> [u8; 12] {
        let mut space = [0u8; 12];
        space[0..2].copy_from_slice(&self.size.0.to_le_bytes());
        space[2..4].copy_from_slice(&self.size.1.to_le_bytes());
        space[4..8].copy_from_slice(&1u32.to_le_bytes());
        space
    }

    /// Re-reads the backend's size; a change bumps the config generation and tells the driver.
    pub(super) fn refresh_size(&mut self) {
        let size = self.backend.size();
        if size == self.size {
            return;
        }
        tracing::debug!(id = self.config.id, ?size, "console size changed");
        self.size = size;
        self.generation = self.generation.wrapping_add(1);
        if let Some(active) = &self.active {
            active.env.interrupt.signal_config_change();
        }
    }

    /// What the event loop should watch under [`BACKEND_TOKEN`].
    fn wanted(&self) -> Option<(RawFd, EventSet)> {
        let fd = self.backend.watch_fd()?;
        let mut set = EventSet::empty();
        if self.backend.reads_input() && self.input.len() < INPUT_BUFFER_SIZE {
            set |= EventSet::IN;
        }
        if !self.output.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some((fd, set))
    }

    /// Called after anything that may change what should be watched, outside the event
    /// loop's reach: asks for a wake-up so that `host_event` brings the watch up to date.
    pub(super) fn sync(&mut self) {
        if self.registered.is_none() {
            // A client nobody watches can be closed at once.
            self.backend.close_gone_client();
        }
        if self.watching && self.wanted() != self.registered {
            if let Err(e) = self.wake.write(1) {
                tracing::warn!(%e, id = self.config.id, "console wake-up");
            }
        }
    }

    /// Brings the watch of the backend descriptor up to date, then closes a gone client.
    fn reconcile(&mut self, ops: &mut EventOps) {
        let want = self.wanted();
        if want != self.registered {
            match (self.registered, want) {
                (Some((old, _)), Some((fd, set))) if old == fd => {
                    if let Err(e) = ops.modify(Events::with_data_raw(fd, BACKEND_TOKEN, set)) {
                        tracing::warn!(?e, id = self.config.id, "cannot change console watch");
                    }
                    self.registered = want;
                }
                (old, new) => {
                    if let Some((fd, set)) = old {
                        if let Err(e) = ops.remove(Events::with_data_raw(fd, BACKEND_TOKEN, set)) {
                            tracing::warn!(?e, id = self.config.id, "cannot unwatch console");
                        }
                    }
                    self.registered = None;
                    if let Some((fd, set)) = new {
                        match ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, set)) {
                            Ok(()) => self.registered = new,
                            Err(e) => {
                                tracing::warn!(?e, id = self.config.id, "cannot watch console")
                            }
                        }
                    }
                }
            }
        }
        if self.registered.is_none() {
            self.backend.close_gone_client();
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        ids::CONSOLE
    }

    fn avail_features(&self) -> u64 {
        features::COMMON | VIRTIO_CONSOLE_F_SIZE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 2, got })?;
        self.active = Some(Active { rx, tx, env });
        // Input typed before the driver was ready goes into buffers it already posted.
        self.process_input();
        Ok(())
    }

    fn reset(&mut self) {
        // Host-side state stays: the backend, undelivered input, unflushed output.
        self.active = None;
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .as_ref()
            .map(|a| vec![&a.rx, &a.tx])
            .unwrap_or_default()
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_input(),
            TX_QUEUE => self.process_tx(),
            _ => tracing::debug!(
                index,
                id = self.config.id,
                "notification of an unknown queue"
            ),
        }
    }

    fn init_host_events(&mut self, ops: &mut EventOps) {
        self.watching = true;
        if let Err(e) = ops.add(Events::with_data(&self.wake, WAKE_TOKEN, EventSet::IN)) {
            tracing::error!(?e, id = self.config.id, "cannot watch the console wake-up");
        }
        if let Some(fd) = self.backend.listener_fd() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, LISTENER_TOKEN, EventSet::IN)) {
                tracing::error!(?e, id = self.config.id, "cannot watch the console socket");
            }
        }
        self.reconcile(ops);
    }

    fn host_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            BACKEND_TOKEN => {
                self.flush_output();
                self.process_input();
            }
            LISTENER_TOKEN => {
                // Close a client that left first, so that the newcomer can take its place.
                self.reconcile(ops);
                self.accept_client();
            }
            WAKE_TOKEN => {}
            token => tracing::debug!(token, id = self.config.id, "unknown console event"),
        }
        self.reconcile(ops);
        // The watch is up to date: a wake-up asked for in the meantime has nothing left to do.
        let _ = self.wake.read();
    }

    fn config_generation(&self) -> u32 {
        self.generation
    }
}
