//! The register file.

use std::sync::Arc;

use memory::GuestMemoryMmap;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::virtio::{features, status, DeviceEnv, Interrupt, QueueKicks, QueueState, VirtioDevice};

/// Size of a device's MMIO window: the registers and up to 3.75 KiB of config space.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where ioeventfds are registered.
pub const NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// The vendor id petrel reports ("PTRL").
const VENDOR_ID: u32 = 0x4c52_5450;

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    /// The queues while the driver configures them; empty while the device owns them.
    pub(super) queues: Vec<Queue>,
    pub(super) queue_evts: Arc<Vec<EventFd>>,
    pub(super) device_status: u32,
    pub(super) active: bool,
    pub(super) acked_features: u64,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) queue_sel: u32,
    /// The driver wrote an invalid queue size or address since the last reset.
    pub(super) queue_config_error: bool,
    /// Queues the driver wrote QueueReady = 0 for while the device was active (a bit per
    /// queue index).
    pub(super) disabled_queues: u64,
}

/// Queues of the sizes `device` offers, not yet configured.
pub(super) fn fresh_queues(device: &dyn VirtioDevice) -> Result<Vec<Queue>, virtio_queue::Error> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max))
        .collect()
}

/// One non-blocking eventfd per queue, for the ioeventfds.
pub(super) fn queue_events(count: usize) -> std::io::Result<Arc<Vec<EventFd>>> {
    (0..count)
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::new)
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A queue size the device offers is not a power of two up to 32768.
    #[error("invalid queue size offered by the device: {0}")]
    Queue(virtio_queue::Error),
    /// The queue eventfds could not be created.
    #[error("cannot create queue eventfds: {0}")]
    Io(#[from] std::io::Error),
}

impl MmioTransport {
    /// Puts `device` behind a transport. `interrupt` is the device's line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, TransportError> {
        let queues = fresh_queues(device.as_ref()).map_err(TransportError::Queue)?;
        let queue_evts = queue_events(queues.len())?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_status: 0,
            active: false,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queue_config_error: false,
            disabled_queues: 0,
        })
    }

    /// The eventfd signalled when the driver notifies queue `index`; register it as an
    /// ioeventfd at `base + NOTIFY_OFFSET` with `index` as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether the driver set DRIVER_OK and the device is working.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        let reset_bit = if self.interrupt.needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.device_status | reset_bit
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let configurable = self.device_status & status::FEATURES_OK != 0
            && self.device_status & status::DRIVER_OK == 0;
        if !configurable {
            tracing::debug!(
                status = self.device_status,
                "queue setup outside FEATURES_OK"
            );
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .device
                .queue_max_sizes()
                .get(self.queue_sel as usize)
                .map_or(0, |&max| u32::from(max)),
            VIRTIO_MMIO_QUEUE_READY => {
                let sel = self.queue_sel as usize;
                let ready = if self.active {
                    let disabled = self.disabled_queues & (1 << sel.min(63)) != 0;
                    !disabled && self.device.queues().get(sel).is_some_and(|q| q.ready())
                } else {
                    self.queues.get(sel).is_some_and(|q| q.ready())
                };
                u32::from(ready)
            }
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.device_status(),
            // No shared memory regions: a length of all ones says so.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.device.config_generation(),
            _ => {
                tracing::debug!(
                    offset,
                    "read of a write-only or unknown virtio-mmio register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                self.configure_queue(|q| value <= 0xffff && q.try_set_size(value as u16).is_ok())
            }
            VIRTIO_MMIO_QUEUE_READY if self.active => self.disable_active_queue(value),
            VIRTIO_MMIO_QUEUE_READY => self.configure_queue(|q| {
                q.set_ready(value == 1);
                true
            }),
            VIRTIO_MMIO_QUEUE_DESC_LOW..=VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.set_queue_address(offset, value)
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => tracing::debug!(
                offset,
                value,
                "write to a read-only or unknown virtio-mmio register"
            ),
        }
    }

    /// QueueReady written while the device runs. Without VIRTIO_F_RING_RESET a driver may
    /// not take a queue away from a running device, but some (the `virtio-drivers` crate,
    /// when it drops a device) write 0 and wait to read 0 back before they reset the
    /// device: the register says so, and the device keeps the queue until the reset.
    fn disable_active_queue(&mut self, value: u32) {
        if value == 0 && self.queue_sel < 64 {
            tracing::debug!(
                queue = self.queue_sel,
                "queue disabled while the device runs"
            );
            self.disabled_queues |= 1 << self.queue_sel;
        }
    }

    /// Applies `set` to the selected queue; `set` returns false for a value the driver must
    /// not write, which is remembered and refused at DRIVER_OK (virtio 1.2, 4.2.2.2).
    fn configure_queue(&mut self, set: impl FnOnce(&mut Queue) -> bool) {
        if let Some(q) = self.selected_queue() {
            if !set(q) {
                tracing::warn!(queue = self.queue_sel, "invalid queue configuration");
                self.queue_config_error = true;
            }
        }
    }

    /// One half of a queue's descriptor table, driver area or device area address.
    fn set_queue_address(&mut self, offset: u32, value: u32) {
        let high = offset % 8 == 4;
        let merge = |old: u64| {
            if high {
                (old & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (old & !0xffff_ffff) | u64::from(value)
            }
        };
        self.configure_queue(|q| {
            let result = match offset & !4 {
                VIRTIO_MMIO_QUEUE_DESC_LOW => {
                    q.try_set_desc_table_address(GuestAddress(merge(q.desc_table())))
                }
                VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                    q.try_set_avail_ring_address(GuestAddress(merge(q.avail_ring())))
                }
                VIRTIO_MMIO_QUEUE_USED_LOW => {
                    q.try_set_used_ring_address(GuestAddress(merge(q.used_ring())))
                }
                _ => return true,
            };
            // Only the full address is checked for alignment: the low half carries it.
            result.is_ok() || high
        });
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.device_status & status::DRIVER != 0
            && self.device_status & status::FEATURES_OK == 0;
        if !negotiating {
            tracing::debug!(
                status = self.device_status,
                "driver features written outside negotiation"
            );
            return;
        }
        let (shift, mask) = match self.driver_features_sel {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000u64),
            _ => return,
        };
        self.acked_features = (self.acked_features & !mask) | (u64::from(value) << shift);
    }

    /// A notification that reached the transport rather than an ioeventfd (none was
    /// registered, or the value matches no queue).
    fn notify(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::error!(%e, "cannot forward a queue notification");
                }
            }
            None => tracing::debug!(index, "notification for a queue that does not exist"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        // The driver only ever adds bits (virtio 1.2, 3.1.1); a write that clears one is
        // ignored, except FAILED which the driver may set at any time.
        if value & old != old {
            tracing::debug!(old, value, "device status write that clears bits ignored");
            return;
        }
        let added = value & !old;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // FEATURES_OK stays clear: the driver reads it back and gives up.
            self.device_status = value & !status::FEATURES_OK;
            return;
        }
        if added & status::DRIVER_OK != 0 {
            if value & status::FEATURES_OK == 0 {
                tracing::debug!(value, "DRIVER_OK without FEATURES_OK");
                self.device_status = value & !status::DRIVER_OK;
                return;
            }
            self.device_status = value;
            self.activate();
            return;
        }
        self.device_status = value;
    }

    /// Whether the accepted features are ones the device offered, including VERSION_1.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        let ok =
            self.acked_features & !offered == 0 && self.acked_features & features::VERSION_1 != 0;
        if !ok {
            tracing::warn!(
                acked = self.acked_features,
                offered,
                "driver accepted features the device did not offer, or not VERSION_1"
            );
        }
        ok
    }

    fn activate(&mut self) {
        if self.queue_config_error {
            self.interrupt.set_needs_reset();
            return;
        }
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        for (index, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.mem) {
                tracing::warn!(index, "the driver enabled an invalid queue");
                self.interrupt.set_needs_reset();
                return;
            }
        }
        // The device takes the queues; their configuration stays for the registers (and a
        // snapshot) if it refuses them.
        let saved: Vec<QueueState> = self.queues.iter().map(QueueState::of).collect();
        let env = self.device_env();
        match self.device.activate(std::mem::take(&mut self.queues), env) {
            Ok(()) => self.active = true,
            Err(e) => {
                tracing::warn!(%e, device = self.device.device_type(), "activation failed");
                self.interrupt.set_needs_reset();
                let rebuilt: Result<Vec<Queue>, _> =
                    saved.iter().map(QueueState::to_queue).collect();
                self.queues = rebuilt
                    .or_else(|_| fresh_queues(self.device.as_ref()))
                    .unwrap_or_default();
            }
        }
    }

    /// What the device works with once active.
    pub(super) fn device_env(&self) -> DeviceEnv {
        DeviceEnv {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
            kicks: QueueKicks::new(self.queue_evts.clone()),
        }
    }

    /// Resets the device and the transport to their state before the driver found them.
    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        // Sizes were valid when the transport was built, so this cannot fail.
        self.queues = fresh_queues(self.device.as_ref()).unwrap_or_default();
        self.device_status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queue_config_error = false;
        self.disabled_queues = 0;
        self.interrupt.reset();
        for evt in self.queue_evts.iter() {
            let _ = evt.read();
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset as u32).to_le_bytes()
            }
            _ => {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "unaligned virtio-mmio register read"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            if self.device_status & status::FAILED == 0 {
                self.device.write_config(offset - config, data);
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_register(offset as u32, u32::from_le_bytes(word))
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "unaligned virtio-mmio register write"
            ),
        }
    }
}
