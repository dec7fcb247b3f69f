//! Saving a vhost-user device and building it again, stopping the back end for a save and
//! starting it after, and the back end's dirty log.
//!
//! # Saving
//!
//! With the vCPUs paused, [`VhostUserDevice::stop_for_save`] stops every ring
//! (GET_VRING_BASE) and waits up to [`DRAIN_TIMEOUT`] for the requests the back end took to
//! reach the used ring. Each queue then records the used index in guest memory as where it
//! stands, so a saved (or migrated) device starts its new back end there: a request still
//! unfinished at the deadline is served again, as after a lost back end. The rings stay
//! stopped until the VM runs again ([`VhostUserDevice::start_after_save`]), so nothing
//! writes guest memory while it is being saved.
//!
//! What petrel holds of the device is its configuration and the config space it showed
//! the driver ([`VhostUserState`]); the transport saves the queues. Restoring connects to
//! the back end at the configured socket, which must offer what the driver accepted.
//!
//! # Dirty log
//!
//! A back end writes guest memory (used rings, buffers it fills) where KVM's dirty log
//! cannot see it. While logging is on ([`VhostUserDevice::change_logging`]) petrel shares a
//! [`DirtyLog`] with the back end (`SET_LOG_BASE`, `VHOST_F_LOG_ALL`, used rings logged),
//! and `take_dirty` adds its pages to the VM's. A back end without the feature is refused
//! clearly wherever logging is needed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::device::{VhostUserDevice, VhostUserKind};
use super::log::DirtyLog;
use super::VhostUserError;

/// How long a save waits for the back end to finish the requests it took.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What petrel holds of a vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserState<C> {
    /// The device's configuration (its id and back-end socket, and a kind's own settings).
    pub config: C,
    /// The config space the driver was shown, and its generation.
    pub config_space: Vec<u8>,
    pub config_generation: u32,
}

impl<C: VhostUserKind + Clone> VhostUserDevice<C> {
    /// The device's state. The device must be quiescent (saved after `quiesce`).
    pub fn save(&self) -> VhostUserState<C> {
        VhostUserState {
            config: self.config.clone(),
            config_space: self.config_space.clone(),
            config_generation: self.config_generation,
        }
    }

    /// Connects to the back end of `state`'s configuration again. A back end whose config
    /// space differs (a disk that grew) shows the driver a new generation.
    pub fn restore(state: &VhostUserState<C>) -> Result<Self, VhostUserError> {
        let mut device = Self::new(state.config.clone())?;
        device.config_generation = if device.config_space == state.config_space {
            state.config_generation
        } else {
            state.config_generation.wrapping_add(1)
        };
        Ok(device)
    }
}

/// How long a queue's used index must stand still, with buffers still available, for the
/// back end to count as waiting rather than busy (a receive queue's buffers wait for frames).
const IDLE: Duration = Duration::from_millis(50);

fn used_index(queue: &Queue, mem: &GuestMemoryMmap) -> Option<u16> {
    queue.used_idx(mem, Ordering::Acquire).ok().map(|w| w.0)
}

/// Waits until, on every ready queue, the back end has used everything the driver made
/// available, or no used index moved for [`IDLE`] (the back end waits for something else,
/// as a receive queue's buffers wait for frames), or `deadline` passed. The queues share
/// one idle window, so a device pays [`IDLE`] once, not per queue. The vCPUs are paused,
/// so the available indices do not move.
fn wait_until_idle(queues: &[Queue], mem: &GuestMemoryMmap, deadline: Instant) {
    let watched: Vec<(&Queue, u16)> = queues
        .iter()
        .filter(|q| q.ready())
        .filter_map(|q| Some((q, q.avail_idx(mem, Ordering::Acquire).ok()?.0)))
        .collect();
    let used = || -> Vec<Option<u16>> { watched.iter().map(|(q, _)| used_index(q, mem)).collect() };
    let mut last = used();
    let mut since = Instant::now();
    loop {
        let done = watched
            .iter()
            .zip(&last)
            .all(|((_, avail), u)| u.is_none_or(|u| u == *avail));
        if done || since.elapsed() >= IDLE || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
        let now = used();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

impl<C: VhostUserKind> VhostUserDevice<C> {
    /// Stops the running back end's rings for a save and records where each queue stands.
    ///
    /// First, while the rings still run, petrel waits for the requests the driver made
    /// available to come back ([`wait_until_idle`]): libvhost-user back ends close the call
    /// eventfd at GET_VRING_BASE, and one that completes a request after it fails. Then the
    /// rings stop, and petrel waits for what the back end took to reach the used ring. A
    /// used index that moved meanwhile raises the used-buffer interrupt (saved with the
    /// transport), since the back end's own notification may be lost or not yet relayed.
    pub(super) fn stop_for_save(&mut self) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mem = &active.env.mem;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let before: Vec<Option<u16>> = active.queues.iter().map(|q| used_index(q, mem)).collect();
        wait_until_idle(&active.queues, mem, deadline);
        let mut taken = vec![None; active.queues.len()];
        if let Some(conn) = self.conn.as_mut() {
            match conn.stop(&active.queues) {
                Ok(bases) => taken = bases,
                Err(e) => self.lose(&e),
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.env.mem;
        let mut moved = false;
        for ((queue, taken), before) in active.queues.iter_mut().zip(taken).zip(before) {
            if !queue.ready() {
                continue;
            }
            // The back end finishes what it took: wait for the used index to catch up.
            while let (Some(taken), Some(now)) = (taken, used_index(queue, mem)) {
                if now == taken || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let Some(now) = used_index(queue, mem) else {
                tracing::warn!(id = %self.config.id(), "a ring's used index is outside guest memory");
                continue;
            };
            if taken.is_some_and(|t| t != now) {
                tracing::warn!(id = %self.config.id(), taken = ?taken, used = now,
                    "the vhost-user back end did not finish every request in time; they will be served again");
            }
            moved |= before != Some(now);
            queue.set_next_avail(now);
            queue.set_next_used(now);
        }
        if moved {
            active.env.interrupt.signal_used_queue();
        }
    }

    /// Starts the rings `stop_for_save` stopped, from where each queue stands, and passes on
    /// what the driver made available meanwhile.
    pub(super) fn start_after_save(&mut self) {
        if !std::mem::take(&mut self.stopped) {
            return;
        }
        let (Some(conn), Some(active)) = (self.conn.as_mut(), self.active.as_ref()) else {
            return;
        };
        match Self::start(conn, active, &self.call, false, self.log.as_ref()) {
            Ok(()) => {
                for index in 0..active.queues.len() {
                    active.env.kicks.kick(index);
                }
                // Completions of the stop whose notification went nowhere (harmless if none).
                active.env.interrupt.signal_used_queue();
            }
            Err(e) if e.is_connection_lost() => self.lose(&e),
            Err(e) => {
                tracing::error!(id = %self.config.id(), %e, "the vhost-user back end refused to start again");
                active.env.interrupt.set_needs_reset();
            }
        }
    }

    /// Turns the back end's dirty logging on or off. Off drops the log and what it held.
    pub(super) fn change_logging(&mut self, on: bool) -> Result<(), VhostUserError> {
        if on == self.logging {
            return Ok(());
        }
        if on {
            if let Some(conn) = &self.conn {
                conn.require_log()?;
            }
        }
        let log = match (&self.active, on) {
            (Some(active), true) => Some(DirtyLog::new(&active.env.mem)?),
            _ => None,
        };
        if let (Some(conn), Some(active), false) =
            (self.conn.as_mut(), self.active.as_ref(), self.stopped)
        {
            let result = conn.set_logging(
                active.env.acked_features,
                &active.env.mem,
                &active.queues,
                log.as_ref(),
            );
            if let Err(e) = result {
                if !e.is_connection_lost() {
                    return Err(e);
                }
                // The next back end gets the log when it starts.
                self.lose(&e);
            }
        }
        self.logging = on;
        self.log = log;
        Ok(())
    }
}
