//! Virtio devices: opened on the host before the VM exists (so a bad disk or TAP is
//! reported as the user's error on any host), then put on the MMIO bus with an irqfd and
//! one ioeventfd per queue.

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, NOTIFY_OFFSET};
use devices::virtio::{Interrupt, VirtioDevice};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use memory::GuestMemoryMmap;

use super::allocator::{DeviceSlot, ResourceAllocator};
use super::persist::{self, VirtioState};
use super::{irq_line, DeviceError};
use crate::config::VmConfig;

/// A virtio device opened on the host, with the place it will have in the machine.
pub struct PlannedDevice {
    /// The device's id from the configuration.
    pub id: String,
    /// Its MMIO window and interrupt.
    pub slot: DeviceSlot,
    /// The device.
    pub device: Box<dyn VirtioDevice>,
}

/// A virtio device on the MMIO bus.
#[derive(Clone)]
pub struct VirtioHandle {
    /// The device's id from the configuration.
    pub id: String,
    /// Its MMIO window and interrupt.
    pub slot: DeviceSlot,
    /// The transport, shared with the MMIO bus and the event loop.
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Opens every virtio device `config` asks for, in the order the guest will see them, and
/// gives each a slot.
pub fn open_devices(
    config: &VmConfig,
    allocator: &mut ResourceAllocator,
) -> Result<Vec<PlannedDevice>, DeviceError> {
    let opened = super::backends::open(config)?;
    opened
        .into_iter()
        .map(|(id, device)| {
            let slot = allocator.allocate_slot(MMIO_SIZE)?;
            Ok(PlannedDevice { id, slot, device })
        })
        .collect()
}

/// Puts a planned device on `bus` and wires its interrupt and queue notifications to KVM.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    planned: PlannedDevice,
    track_dirty: bool,
) -> Result<VirtioHandle, DeviceError> {
    let PlannedDevice {
        id,
        slot,
        mut device,
    } = planned;
    log_for_diff_snapshots(&id, device.as_mut(), track_dirty)?;
    let interrupt = Arc::new(Interrupt::new(irq_line(vm, slot.irq)?));
    let transport =
        MmioTransport::new(device, mem.clone(), interrupt).map_err(|e| DeviceError::Virtio {
            id: id.clone(),
            reason: e.to_string(),
        })?;
    place(vm, bus, id, slot, transport)
}

/// Rebuilds a saved device where it was, with its transport as it was. With `track_dirty`,
/// the device logs the pages it writes from its first request on (a restored device starts
/// serving when its transport is restored, before the machine is assembled).
pub fn restore(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    state: &VirtioState,
    track_dirty: bool,
) -> Result<VirtioHandle, DeviceError> {
    let mut device = persist::restore_device(&state.id, &state.device)?;
    log_for_diff_snapshots(&state.id, device.as_mut(), track_dirty)?;
    let slot = state.slot();
    let irqfd = irq_line(vm, slot.irq)?;
    let transport =
        persist::restore_transport(&state.id, device, mem.clone(), irqfd, &state.transport)?;
    place(vm, bus, state.id.clone(), slot, transport)
}

/// With `track_dirty` (the machine's `track_dirty_pages`), `device` logs the pages it writes
/// outside KVM's dirty log (a vhost-user back end's) from its first request on, as Diff
/// snapshots need.
fn log_for_diff_snapshots(
    id: &str,
    device: &mut dyn VirtioDevice,
    track_dirty: bool,
) -> Result<(), DeviceError> {
    if !track_dirty {
        return Ok(());
    }
    device
        .set_dirty_logging(true)
        .map_err(|e| DeviceError::Virtio {
            id: id.to_string(),
            reason: format!("{e}, which Diff snapshots (track_dirty_pages) need"),
        })
}

/// Registers a transport's queue notifications with KVM and puts it on `bus`.
fn place(
    vm: &VmFd,
    bus: &mut Bus,
    id: String,
    slot: DeviceSlot,
    transport: MmioTransport,
) -> Result<VirtioHandle, DeviceError> {
    let notify = IoEventAddress::Mmio(slot.base + NOTIFY_OFFSET);
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(evt, &notify, index as u32)
            .map_err(|e| DeviceError::Virtio {
                id: id.clone(),
                reason: format!("cannot register the ioeventfd of queue {index}: {e}"),
            })?;
    }
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(transport.clone(), slot.base, slot.len)?;
    tracing::debug!(%id, base = slot.base, irq = slot.irq, "virtio device attached");
    Ok(VirtioHandle {
        id,
        slot,
        transport,
    })
}

fn lock(transport: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    transport
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Turns on (or off) every device's logging of the guest pages it writes where KVM's dirty
/// log cannot see them (vhost-user back ends). Turning on stops at the first device that
/// cannot log, turns the others off again and fails naming that device.
pub fn set_dirty_logging(handles: &[VirtioHandle], on: bool) -> Result<(), DeviceError> {
    for (i, handle) in handles.iter().enumerate() {
        if let Err(e) = lock(&handle.transport).device_mut().set_dirty_logging(on) {
            if on {
                for done in &handles[..i] {
                    let _ = lock(&done.transport).device_mut().set_dirty_logging(false);
                }
            }
            return Err(DeviceError::Virtio {
                id: handle.id.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Adds to `set` (a RAM-order page set) the pages the devices logged since the last call.
pub fn take_dirty(handles: &[VirtioHandle], set: &mut [u64]) {
    for handle in handles {
        lock(&handle.transport).device_mut().take_dirty(set);
    }
}

/// The VM runs again after a save: every device starts what it stopped for it.
pub fn resume(handles: &[VirtioHandle]) {
    for handle in handles {
        lock(&handle.transport).device_mut().resume();
    }
}

/// Whether every device can log the pages it writes outside KVM's dirty log; the error names
/// the first that cannot.
pub fn can_log_dirty(handles: &[VirtioHandle]) -> Result<(), DeviceError> {
    for handle in handles {
        if let Err(e) = lock(&handle.transport).device().can_log_dirty() {
            return Err(DeviceError::Virtio {
                id: handle.id.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Whether every device can be saved (for a snapshot or a live migration); the error names
/// the first that cannot and why.
pub fn check_savable(handles: &[VirtioHandle]) -> Result<(), DeviceError> {
    for handle in handles {
        if let Some(why) = lock(&handle.transport).device().unsavable() {
            return Err(DeviceError::Virtio {
                id: handle.id.clone(),
                reason: why.to_string(),
            });
        }
    }
    Ok(())
}
