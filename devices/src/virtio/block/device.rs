//! The virtio-blk device as the transport sees it: features, config space, activation and
//! reset, events. The request queue itself is served by [`super::queue`].

use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::*;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config_space::{self, CONFIG_LEN};
use super::disk::Disk;
use super::metrics::{add, BlockMetrics, Counters};
use super::queue::Active;
use super::request::{DiskInfo, ID_BYTES};
use super::worker::{Worker, WorkerEnv};
use super::{BlockConfig, BlockError, QUEUE_SIZE};
use crate::rate_limiter::{RateLimitConfig, RateLimiter};
use crate::virtio::{features, ids, ActivateError, DeviceEnv, VirtioDevice, HOST_EVENT_BASE};

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// A virtio-blk device backed by one disk image.
pub struct Block {
    config: BlockConfig,
    disk: Arc<Disk>,
    /// What GET_ID returns: the serial or the id, NUL-padded.
    id: [u8; ID_BYTES],
    avail_features: u64,
    config_space: [u8; CONFIG_LEN],
    /// The I/O thread writes it once per finished request.
    completion_evt: EventFd,
    counters: Arc<Counters>,
    limiter: RateLimiter,
    /// The config generation (virtio 1.2, 4.2.2.2, `ConfigGeneration`): bumped whenever the
    /// config space changes under the driver, that is, on every backing-file swap.
    pub(super) generation: u32,
    active: Option<Active>,
}

/// The event-loop token of the rate limiter's timer (the completion eventfd has
/// `HOST_EVENT_BASE`).
const LIMITER_TOKEN: u32 = HOST_EVENT_BASE + 1;

impl Block {
    /// Opens and locks the disk image. The I/O thread starts when the driver activates the
    /// device.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let limiter =
            RateLimiter::new(config.rate_limiter.unwrap_or_default()).map_err(|source| {
                BlockError::RateLimiter {
                    id: config.id.clone(),
                    source,
                }
            })?;
        Self::with_limiter(config, limiter)
    }

    /// Opens the disk with a limiter already built (restore brings its budgets back).
    pub(super) fn with_limiter(
        config: BlockConfig,
        limiter: RateLimiter,
    ) -> Result<Self, BlockError> {
        if config.id.is_empty() || config.id.contains('\0') {
            return Err(BlockError::InvalidId {
                id: config.id.clone(),
                reason: "it must be non-empty and contain no NUL byte",
            });
        }
        let disk = Disk::open(&config.path, config.readonly)?;
        let completion_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| BlockError::EventFd {
            id: config.id.clone(),
            source,
        })?;
        let mut id = [0u8; ID_BYTES];
        let name = config.serial.as_deref().unwrap_or(&config.id).as_bytes();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name[..n]);
        let mut avail_features = features::COMMON
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if config.readonly {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        tracing::info!(
            id = %config.id,
            path = %config.path.display(),
            sectors = disk.capacity(),
            readonly = config.readonly,
            "disk opened"
        );
        Ok(Block {
            config_space: config_space::build(disk.capacity()),
            config,
            disk: Arc::new(disk),
            id,
            avail_features,
            completion_evt,
            counters: Arc::default(),
            limiter,
            generation: 0,
            active: None,
        })
    }

    /// The configuration the disk was built from.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// Gives up the image's lock for live migration's final phase (the destination takes
    /// it); the VM must stay paused until [`Block::take_image_lock`] or the end.
    pub fn release_image_lock(&self) -> std::io::Result<()> {
        self.disk.unlock()
    }

    /// Takes the image's lock back after [`Block::release_image_lock`] (the migration
    /// failed): refused if another process took the image meanwhile.
    pub fn take_image_lock(&self) -> Result<(), BlockError> {
        self.disk.relock(self.config.readonly)
    }

    /// Replaces the disk's backing file with the image at `path` (Firecracker's
    /// `PATCH /drives/{id}` with `path_on_host`), opened with the disk's read-only setting.
    ///
    /// The new image is opened and locked first, so a missing, unreadable, locked, empty or
    /// non-file `path` is an error that leaves the disk exactly as it was. Then, on an
    /// active disk, every request in flight finishes against the old file and goes on the
    /// used ring, and a new I/O thread takes over with the new file; chains still available
    /// are served against the new one. The capacity in the config space is rebuilt, the
    /// config generation is bumped and, when the driver is active, told through a
    /// config-change interrupt (always, as Firecracker does: even at the same size the
    /// medium changed). The old file's lock goes when the last request on it has finished.
    ///
    /// `path` may name the current image again (for example after it was resized): the new
    /// disk then shares the current open file description, whose lock a second open of the
    /// same file could not take (see `Disk::reopen`).
    ///
    /// Runs on the thread that owns the device, between two queue notifications; the vCPUs
    /// need not be paused. It blocks until the requests in flight are done, as a save does.
    pub fn update_backing(&mut self, path: &Path) -> Result<(), BlockError> {
        let disk = Arc::new(Disk::reopen(path, self.config.readonly, &self.disk)?);
        if let Some(mem) = self.active.as_ref().map(|active| active.env().mem.clone()) {
            // Started before anything changes, so a failure leaves the old thread serving.
            let worker = self.spawn_worker(disk.clone(), mem)?;
            if let Some(active) = self.active.as_mut() {
                active.quiesce(&self.counters);
                active.replace_worker(worker);
            }
        }
        tracing::info!(
            id = %self.config.id,
            old = %self.disk.path().display(),
            new = %path.display(),
            old_sectors = self.disk.capacity(),
            sectors = disk.capacity(),
            "disk backing file replaced"
        );
        self.disk = disk;
        self.config.path = path.to_owned();
        self.config_space = config_space::build(self.disk.capacity());
        self.generation = self.generation.wrapping_add(1);
        add(&self.counters.backing_swaps, 1);
        if let Some(active) = &self.active {
            active.env().interrupt.signal_config_change();
        }
        // Chains that waited for room while requests were in flight.
        self.process_queue();
        Ok(())
    }

    /// The disk's counters.
    pub fn metrics(&self) -> BlockMetrics {
        self.counters.snapshot()
    }

    /// The rate limiter (its counters, its saved state).
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Replaces the rate limit while the disk runs; a queue the old limit held back is
    /// served again when the limiter's timer fires.
    pub fn update_rate_limiter(&mut self, config: RateLimitConfig) {
        self.limiter.update(config);
        self.config.rate_limiter = config.is_limited().then_some(config);
    }

    /// The limiter's timer fired: serve what it held back.
    pub fn process_rate_limiter(&mut self) {
        if let Err(e) = self.limiter.event_handler() {
            tracing::debug!(%e, id = %self.config.id, "rate limiter event");
        }
        self.process_queue();
    }

    /// The eventfd the I/O thread signals when requests finish.
    pub fn completion_evt(&self) -> &EventFd {
        &self.completion_evt
    }

    /// Puts finished requests on the used ring, interrupts the driver if it asked for it,
    /// and serves requests that waited for room. Runs when the completion eventfd fires.
    pub fn process_completions(&mut self) {
        if let Err(e) = self.completion_evt.read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                tracing::warn!(%e, "cannot read the disk completion eventfd");
            }
        }
        if let Some(active) = self.active.as_mut() {
            active.collect_completions(&self.counters);
        }
        self.process_queue();
    }

    /// Waits for every request in flight and puts it on the used ring, so that nothing is
    /// left inside the device (for a save).
    pub(super) fn finish_in_flight(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.quiesce(&self.counters);
        }
    }

    /// Starts an I/O thread on `disk`.
    fn spawn_worker(&self, disk: Arc<Disk>, mem: GuestMemoryMmap) -> Result<Worker, BlockError> {
        let id = &self.config.id;
        let done_evt = self
            .completion_evt
            .try_clone()
            .map_err(|source| BlockError::EventFd {
                id: id.clone(),
                source,
            })?;
        let env = WorkerEnv {
            disk,
            mem,
            id: self.id,
            counters: self.counters.clone(),
            done_evt,
        };
        Worker::spawn(format!("petrel-blk-{id}"), env).map_err(|source| BlockError::Thread {
            id: id.clone(),
            source,
        })
    }

    fn process_queue(&mut self) {
        let info = DiskInfo {
            capacity: self.disk.capacity(),
            readonly: self.config.readonly,
        };
        if let Some(active) = self.active.as_mut() {
            active.process(info, &self.counters, &mut self.limiter);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        ids::BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config_space::read(&self.config_space, offset, data);
    }

    fn activate(&mut self, mut queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        if self.active.is_some() {
            self.reset();
        }
        // A completion signal left from before a reset means nothing now.
        let _ = self.completion_evt.read();
        let worker = self
            .spawn_worker(self.disk.clone(), env.mem.clone())
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        let Some(queue) = queues.pop() else {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: 0,
            });
        };
        self.active = Some(Active::new(queue, env, worker));
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            // Waits for the requests in flight; their completions no longer matter.
            active.stop();
        }
        let _ = self.completion_evt.read();
    }

    fn quiesce(&mut self) {
        self.finish_in_flight();
    }

    fn metrics(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self.metrics()).unwrap_or_default();
        if let (Some(map), Ok(limiter)) = (
            value.as_object_mut(),
            serde_json::to_value(self.limiter.metrics()),
        ) {
            map.insert("rate_limiter".into(), limiter);
        }
        value
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active.iter().map(Active::queue).collect()
    }

    fn config_generation(&self) -> u32 {
        self.generation
    }

    fn queue_notify(&mut self, index: usize) {
        if index == 0 {
            self.process_queue();
        } else {
            tracing::debug!(index, "notification for a queue the disk does not have");
        }
    }

    fn init_host_events(&mut self, ops: &mut EventOps) {
        let events = Events::with_data(&self.completion_evt, HOST_EVENT_BASE, EventSet::IN);
        if let Err(e) = ops.add(events) {
            tracing::error!(?e, id = %self.config.id, "cannot watch disk completions");
        }
        let timer = Events::with_data(&self.limiter, LIMITER_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            tracing::error!(?e, id = %self.config.id, "cannot watch the rate limiter");
        }
    }

    fn host_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == HOST_EVENT_BASE {
            self.process_completions();
        } else if events.data() == LIMITER_TOKEN {
            self.process_rate_limiter();
        } else {
            tracing::debug!(token = events.data(), "unknown disk event");
        }
    }
}
