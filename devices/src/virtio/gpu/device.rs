//! The GPU as a [`VirtioDevice`]: features, config space, activation, and serving its two
//! queues. Each chain is a request (device-readable descriptors) followed by room for the
//! response (device-writable descriptors); the request is gathered, carried out at once,
//! and the response written back.

use memory::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::metrics::GpuMetrics;
use super::protocol::HDR_SIZE;
use super::resources::{Resources, MAX_BACKING_ENTRIES};
use super::scanout::{Cursor, Frame, Front, Scanout};
use super::{GpuConfig, EVENT_DISPLAY, QUEUE_SIZE, VIRTIO_GPU_F_EDID};
use crate::virtio::{
    features, ids, queue, read_config_bytes, ActivateError, DeviceEnv, VirtioDevice,
    CHAINS_PER_PASS,
};

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
pub(super) const CONTROL_QUEUE: usize = 0;
pub(super) const CURSOR_QUEUE: usize = 1;

/// Passes over an available ring that popped nothing before the device stops looking.
const EMPTY_ROUNDS: u32 = 2;

/// The longest request: ATTACH_BACKING with the most entries.
const MAX_REQUEST: usize = HDR_SIZE + 8 + MAX_BACKING_ENTRIES as usize * 16;

/// Why a chain could not be served.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("the request is longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("a device-readable descriptor follows a device-writable one")]
    Order,
}

/// The queues of an activated GPU.
pub(super) struct Active {
    pub(super) control: Queue,
    pub(super) cursor: Queue,
    pub(super) env: DeviceEnv,
}

/// A virtio-gpu with one scanout, 2D only.
pub struct Gpu {
    pub(super) config: GpuConfig,
    pub(super) resources: Resources,
    pub(super) scanout: Option<Scanout>,
    pub(super) front: Option<Front>,
    pub(super) generation: u64,
    pub(super) cursor: Cursor,
    /// `events_read` of the config space.
    pub(super) events_read: u32,
    pub(super) active: Option<Active>,
    pub(super) metrics: GpuMetrics,
}

impl Gpu {
    /// A GPU for `config` (already validated), not yet activated.
    pub fn new(config: GpuConfig) -> Self {
        Gpu {
            resources: Resources::new(config.max_memory),
            config,
            scanout: None,
            front: None,
            generation: 0,
            cursor: Cursor::default(),
            events_read: 0,
            active: None,
            metrics: GpuMetrics::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GpuConfig {
        &self.config
    }

    /// The counters, with the memory resources use now.
    pub fn metrics(&self) -> GpuMetrics {
        GpuMetrics {
            resource_bytes: self.resources.used,
            resources: self.resources.map.len() as u64,
            ..self.metrics
        }
    }

    /// A copy of what the screen shows, None while no scanout is set.
    pub fn frame(&self) -> Option<Frame> {
        self.front.as_ref().map(|f| f.frame(self.generation))
    }

    /// The generation of the picture (increments with each change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The cursor as the driver last set it.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Tells the driver the display configuration changed (`VIRTIO_GPU_EVENT_DISPLAY`).
    pub fn signal_display_change(&mut self) {
        self.events_read |= EVENT_DISPLAY;
        if let Some(active) = &self.active {
            active.env.interrupt.signal_config_change();
        }
    }

    /// The config space: events_read, events_clear, num_scanouts, num_capsets.
    fn config_space(&self) -> [u8; 16] {
        let mut space = [0u8; 16];
        space[0..4].copy_from_slice(&self.events_read.to_le_bytes());
        space[8..12].copy_from_slice(&1u32.to_le_bytes());
        space
    }

    /// Serves queue `index` (control or cursor) within the per-pass budget.
    fn process(&mut self, index: usize) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.env.mem.clone();
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        let mut empty_rounds = 0;
        loop {
            let q = if index == CONTROL_QUEUE {
                &mut active.control
            } else {
                &mut active.cursor
            };
            if let Err(e) = q.disable_notification(&mem) {
                tracing::debug!(%e, id = self.config.id, "gpu queue ring is unreadable");
                break;
            }
            let mut popped = false;
            while let Some(chain) = q.pop_descriptor_chain(&mem) {
                if budget == 0 {
                    // The rest waits for the next pass, after the event loop served others.
                    q.go_to_previous_position();
                    active.env.kicks.kick(index);
                    break;
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                let len = self.serve(&mem, index, chain);
                if let Err(e) = queue::add_used(q, &mem, head, len) {
                    tracing::debug!(%e, id = self.config.id, head, "gpu used ring");
                }
                used = true;
            }
            if budget == 0 {
                break;
            }
            if !popped {
                empty_rounds += 1;
            }
            // Chains that arrived while notifications were off are served now; an available
            // index the queue cannot serve ends the pass after EMPTY_ROUNDS instead of
            // spinning.
            let pending = q.enable_notification(&mem).unwrap_or(false);
            if !pending || empty_rounds >= EMPTY_ROUNDS {
                break;
            }
        }
        if used {
            let q = if index == CONTROL_QUEUE {
                &mut active.control
            } else {
                &mut active.cursor
            };
            queue::signal_used(q, &mem, &active.env.interrupt);
        }
        self.active = Some(active);
    }

    /// One chain: gathers the request, carries it out, writes the response; returns the
    /// bytes written.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let (request, writable) = match split_chain(mem, chain) {
            Ok(parts) => parts,
            Err(why) => {
                self.metrics.malformed += 1;
                tracing::debug!(%why, id = self.config.id, "malformed gpu chain");
                return 0;
            }
        };
        let response = if index == CONTROL_QUEUE {
            self.control_command(mem, &request)
        } else {
            self.cursor_command(&request)
        };
        let written = write_response(mem, &writable, &response);
        if written < response.len() && !(index == CURSOR_QUEUE && writable.is_empty()) {
            self.metrics.malformed += 1;
            tracing::debug!(
                id = self.config.id,
                need = response.len(),
                got = written,
                "gpu response truncated: the driver posted too little room"
            );
        }
        written as u32
    }
}

/// A guest buffer: address and length.
type Buffer = (GuestAddress, u32);

/// The request bytes and the writable buffers of a chain, each descriptor checked to be in
/// guest memory.
fn split_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Vec<u8>, Vec<Buffer>), Malformed> {
    let mut request = Vec::new();
    let mut writable = Vec::new();
    for d in chain {
        let (addr, len) = (d.addr(), d.len());
        if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(Malformed::OutOfRange { addr: addr.0, len });
        }
        if d.is_write_only() {
            writable.push((addr, len));
            continue;
        }
        if !writable.is_empty() {
            return Err(Malformed::Order);
        }
        let at = request.len();
        let end = at.checked_add(len as usize).filter(|&e| e <= MAX_REQUEST);
        let end = end.ok_or(Malformed::TooLong)?;
        request.resize(end, 0);
        mem.read_slice(&mut request[at..end], addr)
            .map_err(|_| Malformed::OutOfRange { addr: addr.0, len })?;
    }
    Ok((request, writable))
}

/// Writes as much of `response` as fits into `buffers`; returns the bytes written.
fn write_response(
    mem: &GuestMemoryMmap,
    buffers: &[(GuestAddress, u32)],
    response: &[u8],
) -> usize {
    let mut rest = response;
    let mut written = 0;
    for &(addr, len) in buffers {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        if mem.write_slice(&rest[..n], addr).is_err() {
            break;
        }
        written += n;
        rest = &rest[n..];
    }
    written
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u32 {
        ids::GPU
    }

    fn avail_features(&self) -> u64 {
        features::COMMON | VIRTIO_GPU_F_EDID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only events_clear (offset 4, 32 bits) is writable: its bits clear events_read.
        if offset == 4 && data.len() == 4 {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(data);
            self.events_read &= !u32::from_le_bytes(bytes);
        } else {
            tracing::debug!(
                offset,
                len = data.len(),
                id = self.config.id,
                "ignored gpu config write"
            );
        }
    }

    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        let got = queues.len();
        let [control, cursor]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 2, got })?;
        self.active = Some(Active {
            control,
            cursor,
            env,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Resources belong to the driver that created them: a reset drops them all and
        // the screen goes blank.
        self.active = None;
        self.resources.clear();
        self.disable_scanout();
        self.cursor = Cursor::default();
        self.events_read = 0;
    }

    fn queues(&self) -> Vec<&Queue> {
        self.active
            .as_ref()
            .map(|a| vec![&a.control, &a.cursor])
            .unwrap_or_default()
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            CONTROL_QUEUE | CURSOR_QUEUE => self.process(index),
            _ => tracing::debug!(
                index,
                id = self.config.id,
                "notification of an unknown queue"
            ),
        }
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(Gpu::metrics(self)).unwrap_or_default()
    }
}
