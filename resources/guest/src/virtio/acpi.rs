//! The virtio-mmio devices the DSDT describes: `Device`s with `_HID "LNRO0005"` whose `_CRS`
//! holds one 32-bit memory window and one interrupt, as Linux's virtio-mmio driver reads them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::cmdline::MmioWindow;
use crate::rt::acpi::aml::{self, Device, Namespace, Resource};
use crate::rt::acpi::{self, Acpi};
use crate::rt::bootparams::BootParams;

/// The `_HID` of a virtio-mmio device.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// The DSDT's namespace, walked.
pub fn namespace(tables: &Acpi) -> Result<Namespace, String> {
    let dsdt = tables.dsdt()?;
    aml::parse(&dsdt.bytes[36..]).map_err(|e| format!("DSDT: {e}"))
}

/// The window and interrupt line of a virtio-mmio device from its `_CRS`.
pub fn window(device: &Device) -> Result<MmioWindow, String> {
    let crs = device
        .crs
        .as_ref()
        .ok_or_else(|| format!("{} has no _CRS", device.path))?;
    let mut memory = crs.iter().filter_map(|r| match *r {
        Resource::Memory32Fixed { base, len, .. } => Some((base, len)),
        _ => None,
    });
    let mut irqs = crs.iter().filter_map(|r| match *r {
        Resource::Interrupt { gsi, .. } => Some(gsi),
        Resource::Irq { irq, .. } => Some(u32::from(irq)),
        _ => None,
    });
    match (memory.next(), memory.next(), irqs.next(), irqs.next()) {
        (Some((addr, size)), None, Some(irq), None) if size > 0 => Ok(MmioWindow {
            size: u64::from(size),
            addr: u64::from(addr),
            irq,
        }),
        _ => Err(format!(
            "{}: _CRS is not one memory window and one interrupt",
            device.path
        )),
    }
}

/// Every virtio-mmio window of the DSDT, in table order; none when there are no ACPI tables.
pub fn windows(boot: &BootParams) -> Result<Vec<MmioWindow>, String> {
    let Some(tables) = acpi::load(boot)? else {
        return Ok(Vec::new());
    };
    let ns = namespace(&tables)?;
    ns.with_hid(VIRTIO_MMIO_HID).map(window).collect()
}
