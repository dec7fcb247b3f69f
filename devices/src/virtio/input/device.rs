//! The input device as a [`VirtioDevice`]: config space, activation, host events in,
//! eventq out, statusq consumed.

use memory::GuestMemoryMmap;
use serde::Serialize;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::codes::{EV_LED, LED_CAPSL, LED_NUML, LED_SCROLLL};
use super::{
    ConfigSpace, HostEvent, InputConfig, InvalidEvent, PendingEvents, VirtioInputEvent,
    MAX_PENDING_EVENTS, QUEUE_SIZE,
};
use crate::virtio::queue::{self, ChainError};
use crate::virtio::{features, ids, ActivateError, DeviceEnv, VirtioDevice, CHAINS_PER_PASS};

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
pub(super) const EVENT_QUEUE: usize = 0;
pub(super) const STATUS_QUEUE: usize = 1;

/// The most bytes one statusq chain may carry (a driver sends one 8-byte event per chain).
const MAX_STATUS_CHAIN: u64 = 4096;

/// The device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InputMetrics {
    /// Events the host queued (SYN_REPORTs included).
    pub events_queued: u64,
    /// Events written into eventq buffers.
    pub events_delivered: u64,
    /// Events dropped because the pending queue was full (whole groups), or pending when
    /// the driver reset the device.
    pub dropped_events: u64,
    /// Events the driver sent on statusq.
    pub status_events: u64,
    /// Descriptor chains refused as malformed.
    pub malformed: u64,
}

/// Why a descriptor chain was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum Malformed {
    #[error(transparent)]
    Chain(ChainError),
    #[error("read-only descriptor on eventq")]
    ReadOnly,
    #[error("write-only descriptor on statusq")]
    WriteOnly,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("eventq chain of {0} bytes is shorter than an event")]
    TooShort(u64),
    #[error("statusq chain of {0} bytes is over the {MAX_STATUS_CHAIN} byte limit")]
    TooLong(u64),
}

struct Active {
    event: Queue,
    status: Queue,
    env: DeviceEnv,
}

/// A virtio keyboard or tablet.
pub struct Input {
    pub(super) config: InputConfig,
    pub(super) space: ConfigSpace,
    pub(super) pending: PendingEvents,
    /// LED state the driver last sent: bit 0 num lock, 1 caps lock, 2 scroll lock.
    pub(super) leds: u8,
    pub(super) metrics: InputMetrics,
    active: Option<Active>,
}

/// The buffers of `chain`, checked (see [`queue::chain_buffers`]), and their total length.
fn buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<(Vec<(GuestAddress, u32)>, u64), Malformed> {
    let bufs = queue::chain_buffers(mem, chain, writable).map_err(|e| match e {
        // An empty chain holds no event: too short for the eventq, nothing on the statusq.
        ChainError::Empty => Malformed::TooShort(0),
        ChainError::ReadOnly => Malformed::ReadOnly,
        ChainError::WriteOnly => Malformed::WriteOnly,
        ChainError::OutOfRange { addr, len } => Malformed::OutOfRange { addr, len },
        other => Malformed::Chain(other),
    })?;
    let total = bufs.iter().map(|&(_, len)| u64::from(len)).sum();
    Ok((bufs, total))
}

impl Input {
    /// A device as `config` describes, not yet activated.
    pub fn new(config: &InputConfig) -> Self {
        Input {
            config: config.clone(),
            space: ConfigSpace::new(config),
            pending: PendingEvents::new(MAX_PENDING_EVENTS),
            leds: 0,
            metrics: InputMetrics::default(),
            active: None,
        }
    }

    pub fn config(&self) -> &InputConfig {
        &self.config
    }

    pub fn metrics(&self) -> InputMetrics {
        self.metrics
    }

    /// The LED state the driver last sent (bit 0 num lock, 1 caps lock, 2 scroll lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// Events waiting for eventq buffers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Checks every event first, then queues them all and delivers what the driver's buffers
    /// take. Nothing is queued if any event is invalid. Returns how many events were dropped
    /// because the pending queue was full.
    pub fn inject(&mut self, events: &[HostEvent]) -> Result<u64, InvalidEvent> {
        for e in events {
            e.check(self.config.kind)?;
        }
        let mut groups = Vec::with_capacity(events.len() * 2);
        for e in events {
            e.groups(&mut groups);
        }
        let mut dropped = 0;
        for group in &groups {
            if self.pending.push_group(group) {
                self.metrics.events_queued += group.len() as u64;
            } else {
                dropped += group.len() as u64;
            }
        }
        if dropped > 0 {
            self.metrics.dropped_events += dropped;
            tracing::info!(
                id = self.config.id,
                dropped,
                "input events dropped: the guest is not reading its event queue"
            );
        }
        self.deliver();
        Ok(dropped)
    }

    /// Writes pending events into the buffers the driver posted on eventq.
    pub fn deliver(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.env.mem.clone();
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        loop {
            let mut popped = false;
            while !self.pending.is_empty() {
                let Some(chain) = active.event.pop_descriptor_chain(&mem) else {
                    break;
                };
                if budget == 0 {
                    active.event.go_to_previous_position();
                    active.env.kicks.kick(EVENT_QUEUE);
                    break;
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                let len = match self.write_event(&mem, chain) {
                    Ok(()) => VirtioInputEvent::SIZE as u32,
                    Err(why) => {
                        self.malformed(EVENT_QUEUE, &why);
                        0
                    }
                };
                self.add_used(&mut active.event, &mem, head, len);
                used = true;
            }
            if self.pending.is_empty() || budget == 0 || !popped {
                // Out of buffers (or the pass ended): ask to be told when more arrive.
                let _ = active.event.enable_notification(&mem);
                break;
            }
            match active.event.enable_notification(&mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            queue::signal_used(&mut active.event, &mem, &active.env.interrupt);
        }
        self.active = Some(active);
    }

    /// Writes the oldest pending event into `chain`; the event is taken only on success.
    fn write_event(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(), Malformed> {
        let (descriptors, total) = buffers(mem, chain, true)?;
        if total < VirtioInputEvent::SIZE as u64 {
            return Err(Malformed::TooShort(total));
        }
        let Some(event) = self.pending.front() else {
            return Ok(());
        };
        let bytes = event.to_bytes();
        let mut done = 0;
        for (addr, len) in descriptors {
            if done == bytes.len() {
                break;
            }
            let n = (len as usize).min(bytes.len() - done);
            mem.write_slice(&bytes[done..done + n], addr)
                .map_err(|_| Malformed::OutOfRange { addr: addr.0, len })?;
            done += n;
        }
        self.pending.pop();
        self.metrics.events_delivered += 1;
        Ok(())
    }

    /// Takes what the driver sent on statusq and returns the buffers.
    pub fn process_status(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.env.mem.clone();
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        loop {
            let mut popped = false;
            while let Some(chain) = active.status.pop_descriptor_chain(&mem) {
                if budget == 0 {
                    active.status.go_to_previous_position();
                    active.env.kicks.kick(STATUS_QUEUE);
                    break;
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                if let Err(why) = self.read_status(&mem, chain) {
                    self.malformed(STATUS_QUEUE, &why);
                }
                self.add_used(&mut active.status, &mem, head, 0);
                used = true;
            }
            if budget == 0 || !popped {
                let _ = active.status.enable_notification(&mem);
                break;
            }
            match active.status.enable_notification(&mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            queue::signal_used(&mut active.status, &mem, &active.env.interrupt);
        }
        self.active = Some(active);
    }

    /// Reads the events of one statusq chain; EV_LED ones update [`Self::leds`].
    fn read_status(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(), Malformed> {
        let (descriptors, total) = buffers(mem, chain, false)?;
        if total > MAX_STATUS_CHAIN {
            return Err(Malformed::TooLong(total));
        }
        let mut bytes = Vec::with_capacity(total as usize);
        for (addr, len) in descriptors {
            let start = bytes.len();
            bytes.resize(start + len as usize, 0);
            mem.read_slice(&mut bytes[start..], addr)
                .map_err(|_| Malformed::OutOfRange { addr: addr.0, len })?;
        }
        for chunk in bytes.chunks_exact(VirtioInputEvent::SIZE) {
            let mut b = [0u8; VirtioInputEvent::SIZE];
            b.copy_from_slice(chunk);
            self.status_event(VirtioInputEvent::from_bytes(b));
        }
        Ok(())
    }

    fn status_event(&mut self, event: VirtioInputEvent) {
        self.metrics.status_events += 1;
        if event.kind != EV_LED {
            return;
        }
        let bit = match event.code {
            LED_NUML | LED_CAPSL | LED_SCROLLL => 1u8 << event.code,
            _ => return,
        };
        if event.value != 0 {
            self.leds |= bit;
        } else {
            self.leds &= !bit;
        }
    }

    fn add_used(&self, q: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if let Err(e) = queue::add_used(q, mem, head, len) {
            tracing::debug!(%e, id = self.config.id, head, "input used ring");
        }
    }

    /// Counts a refused chain, logging the 1st, 2nd, 4th, 8th... one.
    fn malformed(&mut self, queue: usize, why: &Malformed) {
        self.metrics.malformed += 1;
        if self.metrics.malformed.is_power_of_two() {
            tracing::warn!(
                id = self.config.id,
                queue,
                %why,
                count = self.metrics.malformed,
                "malformed input descriptor chain"
            );
        }
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        ids::INPUT
    }

    fn avail_features(&self) -> u64 {
        features::COMMON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.space.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.space.write(offset, data) {
            tracing::debug!(
                id = self.config.id,
                offset,
                len = data.len(),
                "ignored write to the read-only part of the input config space"
            );
        }
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let got = queues.len();
        let [event, status]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 2, got })?;
        self.active = Some(Active { event, status, env });
        self.deliver();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // Events meant for the driver that went away would reach its successor as stale
        // key presses: drop them.
        let stale = self.pending.len() as u64;
        if stale > 0 {
            self.metrics.dropped_events += stale;
            self.pending = PendingEvents::new(MAX_PENDING_EVENTS);
        }
        self.leds = 0;
        self.space.set_selected(0, 0);
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .as_ref()
            .map(|a| vec![&a.event, &a.status])
            .unwrap_or_default()
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            EVENT_QUEUE => self.deliver(),
            STATUS_QUEUE => self.process_status(),
            _ => tracing::debug!(
                index,
                id = self.config.id,
                "notification of an unknown queue"
            ),
        }
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(self.metrics).unwrap_or_default()
    }
}
