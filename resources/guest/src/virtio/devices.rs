//! Probing the virtio-mmio windows and handing their transports to scenarios.
//!
//! The windows come from the command line's `virtio_mmio.device=` tokens when it has any
//! (petrel without ACPI), else from the DSDT's `LNRO0005` devices (petrel with ACPI). Every
//! window is probed (magic, version, device id) in that order. A window that does
//! not hold a virtio-mmio version 2 device is an error, except one whose device id
//! `virtio-drivers` does not know (including the placeholder id 0), which is skipped: it is a
//! device no scenario drives.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use virtio_drivers::transport::mmio::{MmioError, MmioTransport, MmioVersion, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use super::cmdline::{self, MmioWindow};
use super::raw::RawMmio;
use crate::rt::bootparams::BootParams;

/// The end of the VMM's identity map: windows must lie below it.
const IDENTITY_MAPPED_END: u64 = 4 << 30;

/// Set once the windows have been probed: each window gets one transport per run, which is
/// what makes the transports' exclusive access to their registers true.
static PROBED: AtomicBool = AtomicBool::new(false);

/// A probed virtio-mmio device.
pub struct Device {
    pub window: MmioWindow,
    pub transport: MmioTransport<'static>,
}

/// The virtio-mmio windows: the command line's, or else the DSDT's (see the module docs).
pub fn windows(boot: &BootParams) -> Result<Vec<MmioWindow>, String> {
    let on_cmdline = cmdline::windows(&boot.cmdline())?;
    if !on_cmdline.is_empty() {
        return Ok(on_cmdline);
    }
    super::acpi::windows(boot)
}

/// Probes every virtio-mmio window and returns the devices of type `kind`, in window order;
/// the others are left untouched. Can be called once per run.
pub fn take(boot: &BootParams, kind: DeviceType) -> Result<Vec<Device>, String> {
    take_kinds(boot, &[kind])
}

/// The virtio-mmio windows, checked disjoint, once per run: a second probe would reset
/// devices a scenario already drives.
fn windows_to_probe(boot: &BootParams) -> Result<Vec<MmioWindow>, String> {
    let windows = windows(boot)?;
    check_disjoint(&windows)?;
    if PROBED.swap(true, Ordering::SeqCst) {
        return Err("the virtio-mmio devices were already probed".into());
    }
    Ok(windows)
}

/// `take` for a scenario that drives devices of several `kinds`: all of them, in window
/// order.
pub fn take_kinds(boot: &BootParams, kinds: &[DeviceType]) -> Result<Vec<Device>, String> {
    let windows = windows_to_probe(boot)?;
    let mut devices = Vec::new();
    for window in windows {
        match probe(window)? {
            Some(device) if kinds.contains(&device.transport.device_type()) => devices.push(device),
            // Dropping a transport resets its device: leave devices this scenario does not
            // drive alone (a transport owns nothing but its register pointers).
            Some(other) => core::mem::forget(other),
            None => {}
        }
    }
    Ok(devices)
}

/// Probes every virtio-mmio window for version 2 devices with device id `id`, which
/// `virtio-drivers` has no type for (the file system device), and returns their register
/// blocks in window order. Shares `take`'s once-per-run guard.
pub fn take_raw(boot: &BootParams, id: u32) -> Result<Vec<RawMmio>, String> {
    let windows = windows_to_probe(boot)?;
    let mut devices = Vec::new();
    for window in windows {
        check_placement(&window)?;
        if window.size < RAW_MIN_SIZE {
            continue;
        }
        // SAFETY: the window is a virtio-mmio register block (the VMM's contract for the
        // command line and the DSDT), identity-mapped below 4 GiB and aligned
        // (`check_placement`), at least `RAW_MIN_SIZE` long, overlapping no other window and
        // probed once per run, so this value is the only user of these registers.
        let regs = unsafe { RawMmio::new(window) };
        if regs.is_modern(id) {
            devices.push(regs);
        }
    }
    Ok(devices)
}

/// The register header up to the config space.
const RAW_MIN_SIZE: u64 = 0x100;

/// Checks that no two windows overlap (each transport must own its registers).
fn check_disjoint(windows: &[MmioWindow]) -> Result<(), String> {
    for (i, a) in windows.iter().enumerate() {
        for b in &windows[..i] {
            // `end()` is checked in `probe`; a wrapping window overlaps everything after it.
            let (a_end, b_end) = (a.end().unwrap_or(u64::MAX), b.end().unwrap_or(u64::MAX));
            if a.addr < b_end && b.addr < a_end {
                return Err(format!("virtio-mmio windows {b} and {a} overlap"));
            }
        }
    }
    Ok(())
}

/// Checks that `window` lies below 4 GiB (the identity map) and is aligned for the registers.
fn check_placement(window: &MmioWindow) -> Result<(), String> {
    let fail = |why: &str| Err(format!("virtio-mmio device {window}: {why}"));
    match window.end() {
        Some(end) if end <= IDENTITY_MAPPED_END => {}
        _ => return fail("the window does not lie below 4 GiB"),
    }
    let align = align_of::<VirtIOHeader>() as u64;
    if !window.addr.is_multiple_of(align) {
        return fail("the window is not aligned for the register block");
    }
    Ok(())
}

/// Creates the transport for `window`; `None` for a device type `virtio-drivers` does not know.
fn probe(window: MmioWindow) -> Result<Option<Device>, String> {
    let fail = |why: &str| Err(format!("virtio-mmio device {window}: {why}"));
    check_placement(&window)?;
    let Some(header) = NonNull::new(window.addr as usize as *mut VirtIOHeader) else {
        return fail("the window is at address 0");
    };
    // SAFETY: the window is a virtio-mmio register block of `size` bytes (the VMM's contract
    // for the command line and the DSDT), identity-mapped below 4 GiB (checked above) for the whole run, suitably
    // aligned (checked), overlapping no other window (`check_disjoint`) and probed once per run
    // (`PROBED`), so this transport is the only user of these registers.
    let transport = match unsafe { MmioTransport::new(header, window.size as usize) } {
        Ok(transport) => transport,
        Err(MmioError::InvalidDeviceID(_)) => return Ok(None),
        Err(e) => return fail(&format!("{e}")),
    };
    if transport.version() != MmioVersion::Modern {
        return fail(&format!(
            "version {} (legacy) transport, not version 2",
            u32::from(transport.version())
        ));
    }
    Ok(Some(Device { window, transport }))
}
