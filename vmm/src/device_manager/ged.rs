//! The Generic Event Device that carries the power button (with ACPI only): its place on
//! the MMIO bus, its interrupt wired to KVM, and what a snapshot keeps of it.

use std::sync::{Arc, Mutex};

use devices::legacy::{Ged, GedState, GED_WINDOW_LEN};
use devices::Bus;
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::allocator::{AllocError, DeviceSlot, ResourceAllocator};
use super::{irq_line, DeviceError};

/// The device on the MMIO bus.
#[derive(Clone)]
pub struct GedHandle {
    /// Its register window and interrupt, as the DSDT gives them.
    pub slot: DeviceSlot,
    /// The device, shared with the MMIO bus.
    pub device: Arc<Mutex<Ged>>,
}

/// The device as saved: where it sat and its registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GedSaved {
    /// Its MMIO window and interrupt.
    pub base: u64,
    pub len: u64,
    pub irq: u32,
    /// Its registers.
    pub device: GedState,
}

/// A window and an interrupt line for the device. Taken after every virtio device's, so
/// those sit where they would without ACPI.
pub fn allocate(allocator: &mut ResourceAllocator) -> Result<DeviceSlot, AllocError> {
    allocator
        .allocate_slot(GED_WINDOW_LEN)
        .map_err(|e| match e {
            AllocError::OutOfIrqs { max } => AllocError::NoIrqForGed {
                max_virtio: max - 1,
            },
            other => other,
        })
}

/// A new device at `slot`, on `bus`, its interrupt wired to KVM.
pub fn attach(vm: &VmFd, bus: &mut Bus, slot: DeviceSlot) -> Result<GedHandle, DeviceError> {
    let ged = Ged::new(irq_line(vm, slot.irq)?);
    place(bus, slot, ged)
}

/// The saved device, where it was and as it was.
pub fn restore(vm: &VmFd, bus: &mut Bus, saved: &GedSaved) -> Result<GedHandle, DeviceError> {
    let slot = DeviceSlot {
        base: saved.base,
        len: saved.len,
        irq: saved.irq,
    };
    let ged =
        Ged::restore(&saved.device, irq_line(vm, slot.irq)?).map_err(|e| DeviceError::Restore {
            what: "the power button's Generic Event Device",
            reason: e.to_string(),
        })?;
    place(bus, slot, ged)
}

fn place(bus: &mut Bus, slot: DeviceSlot, ged: Ged) -> Result<GedHandle, DeviceError> {
    let device = Arc::new(Mutex::new(ged));
    bus.insert(device.clone(), slot.base, slot.len)?;
    tracing::debug!(
        base = slot.base,
        irq = slot.irq,
        "Generic Event Device attached"
    );
    Ok(GedHandle { slot, device })
}

/// What a snapshot keeps of the device. The vCPUs must be paused.
pub fn save(handle: &GedHandle) -> GedSaved {
    let device = handle
        .device
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .save();
    GedSaved {
        base: handle.slot.base,
        len: handle.slot.len,
        irq: handle.slot.irq,
        device,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_comes_after_the_virtio_devices_and_says_so_when_no_line_is_left() {
        let mut a = ResourceAllocator::new(memory::MMIO32_START);
        let virtio = a.allocate_slot(0x1000).unwrap();
        let ged = allocate(&mut a).unwrap();
        assert_eq!(ged.base, virtio.base + 0x1000);
        assert_eq!(ged.len, GED_WINDOW_LEN);
        assert_ne!(ged.irq, virtio.irq);

        let mut full = ResourceAllocator::new(memory::MMIO32_START);
        while full.allocate_slot(0x1000).is_ok() {}
        let max = ResourceAllocator::max_devices();
        let err = allocate(&mut full).unwrap_err();
        assert_eq!(
            err,
            AllocError::NoIrqForGed {
                max_virtio: max - 1
            }
        );
        assert!(err.to_string().contains("--acpi off"), "{err}");
    }

    #[test]
    fn a_saved_device_round_trips_through_json() {
        let saved = GedSaved {
            base: 0xc000_1000,
            len: 0x1000,
            irq: 6,
            device: GedState { status: 1 },
        };
        let json = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<GedSaved>(&json).unwrap(), saved);
    }
}
