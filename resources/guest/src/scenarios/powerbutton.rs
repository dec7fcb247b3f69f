//! `powerbutton`: waits for the ACPI power button the way an OS's Generic Event Device driver
//! does, then powers off through S5 as the OS would after an orderly shutdown.
//!
//! It finds the GED (`_HID "ACPI0013"`) in the DSDT with its `_EVT` method, its interrupt
//! (`_CRS`) and its event register (the `SystemMemory` operation region `_EVT` reads), routes
//! the interrupt's GSI through the IOAPIC to [`VECTOR`] of this CPU's local APIC with
//! interrupts masked, and polls the local APIC's IRR until the interrupt arrives. Then it reads
//! the event register the way `_EVT` does (one 4-byte read, which clears it) and once more.
//!
//! ```text
//! GED path=<path> gsi=<n> <edge|level> <high|low> region=<addr>+<len> evt=<0|1>
//! ROUTE gsi=<n> pin=<n> vector=<hex> apic=<id> mode=<x2apic|xapic> entry=<hex>
//! READY                                       (the host may press the button now)
//! IRQ vector=<hex>
//! GED status=<hex> then=<hex>                 (the read, and a second one)
//! POWERBUTTON pressed
//! POWEROFF port=<port> value=<hex>
//! ```

use alloc::format;
use alloc::string::String;

use crate::rt::acpi::aml::{Device, Resource, SPACE_SYSTEM_MEMORY};
use crate::rt::acpi::{self, Acpi};
use crate::rt::apic::LocalApic;
use crate::rt::deadline::Deadline;
use crate::rt::ioapic::{IoApic, Trigger};
use crate::rt::{cpu, power};
use crate::virtio;

/// The `_HID` of a Generic Event Device.
const GED_HID: &str = "ACPI0013";
/// The vector the GED's interrupt is routed to.
pub const VECTOR: u8 = 0x40;
/// The power button's bit in petrel's GED event register.
const POWER_BUTTON: u32 = 1 << 0;
/// How long to wait for the press.
const WAIT_MS: u64 = 60_000;
/// The register is one doubleword, the field `_EVT` reads.
const STATUS_LEN: u64 = 4;
const IDENTITY_MAPPED_END: u64 = 4 << 30;

/// The GED's interrupt and event register.
struct Ged {
    gsi: u32,
    trigger: Trigger,
    status: u64,
}

fn find_ged(device: &Device) -> Result<Ged, String> {
    let path = &device.path;
    let mut irqs = device.crs.iter().flatten().filter_map(|r| match *r {
        Resource::Interrupt {
            gsi,
            edge,
            active_low,
            ..
        } => Some((gsi, Trigger { edge, active_low })),
        _ => None,
    });
    let (Some((gsi, trigger)), None) = (irqs.next(), irqs.next()) else {
        return Err(format!("{path}: _CRS is not one interrupt"));
    };
    if device.crs.iter().flatten().count() != 1 {
        return Err(format!(
            "{path}: _CRS holds more than the interrupt (Linux's GED driver refuses that)"
        ));
    }
    let mut regions = device
        .regions
        .iter()
        .filter(|r| r.space == SPACE_SYSTEM_MEMORY);
    let (Some(region), None) = (regions.next(), regions.next()) else {
        return Err(format!("{path}: not one SystemMemory operation region"));
    };
    let fits = region
        .offset
        .checked_add(STATUS_LEN)
        .is_some_and(|end| end <= IDENTITY_MAPPED_END);
    if region.len < STATUS_LEN || region.offset % 4 != 0 || region.offset == 0 || !fits {
        return Err(format!(
            "{path}: region {} at {:#x}+{} cannot be a doubleword register",
            region.name, region.offset, region.len
        ));
    }
    let evt = device.methods.iter().any(|m| m == "_EVT");
    println!(
        "GED path={path} gsi={gsi} {} {} region={:#x}+{} evt={}",
        if trigger.edge { "edge" } else { "level" },
        if trigger.active_low { "low" } else { "high" },
        region.offset,
        region.len,
        u8::from(evt)
    );
    if !evt {
        return Err(format!("{path} has no _EVT method"));
    }
    Ok(Ged {
        gsi,
        trigger,
        status: region.offset,
    })
}

/// Routes `gsi` to `VECTOR` of this CPU through the IOAPIC that has it.
fn route(tables: &Acpi, ged: &Ged, apic: &LocalApic) -> Result<(), String> {
    let madt = tables.madt()?;
    let io = madt
        .ioapics
        .iter()
        .filter(|io| io.gsi_base <= ged.gsi)
        .max_by_key(|io| io.gsi_base)
        .ok_or_else(|| format!("no IOAPIC has GSI {}", ged.gsi))?;
    // SAFETY: the MADT names this IOAPIC's register window; it lies below 4 GiB (a 32-bit
    // address), so in the identity map, and is MMIO, not memory Rust owns.
    let ioapic = unsafe { IoApic::at(u64::from(io.addr)) };
    let pin = ged.gsi - io.gsi_base;
    if pin >= ioapic.pins() {
        return Err(format!(
            "GSI {} is pin {pin} of an IOAPIC with {} pins",
            ged.gsi,
            ioapic.pins()
        ));
    }
    let apic_id = cpu::apic_id();
    let dest = u8::try_from(apic_id).map_err(|_| format!("APIC id {apic_id} is above 255"))?;
    let entry = ioapic.route(pin, VECTOR, dest, ged.trigger);
    println!(
        "ROUTE gsi={} pin={pin} vector={VECTOR:#x} apic={apic_id} mode={} entry={entry:#x}",
        ged.gsi,
        if apic.is_x2apic() { "x2apic" } else { "xapic" }
    );
    Ok(())
}

fn read_status(ged: &Ged) -> u32 {
    // SAFETY: the DSDT's operation region names this doubleword register, 4-byte aligned and
    // below 4 GiB (checked in `find_ged`), so identity-mapped MMIO; reading it clears the
    // events, which is what `_EVT` does too, and touches no memory Rust owns.
    unsafe { core::ptr::read_volatile(ged.status as usize as *const u32) }
}

pub fn run(boot: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    let tables = acpi::load(boot)?.ok_or("no ACPI tables: there is no power button")?;
    let ns = virtio::acpi::namespace(&tables)?;
    let device = ns
        .with_hid(GED_HID)
        .next()
        .ok_or("the DSDT has no Generic Event Device (ACPI0013)")?;
    let ged = find_ged(device)?;

    // What the shutdown will need, read before the press so the reaction to it is short.
    let fadt = tables.fadt()?;
    let port = fadt
        .sleep_control
        .io_port()
        .ok_or("the FADT's sleep control register is not a byte-wide I/O port")?;
    let slp_typ = ns.s5_sleep_type()?;

    cpu::interrupts_off();
    let apic = LocalApic::enable();
    route(&tables, &ged, &apic)?;
    println!("READY");

    let deadline = Deadline::after_ms(WAIT_MS);
    while !apic.pending(VECTOR) {
        if deadline.expired() {
            return Err(format!(
                "no interrupt on vector {VECTOR:#x} within {WAIT_MS} ms"
            ));
        }
        core::hint::spin_loop();
    }
    println!("IRQ vector={VECTOR:#x}");
    let status = read_status(&ged);
    let then = read_status(&ged);
    println!("GED status={status:#x} then={then:#x}");
    if status & POWER_BUTTON == 0 {
        return Err(format!(
            "the interrupt came with event status {status:#x}, without the power button"
        ));
    }
    println!("POWERBUTTON pressed");
    let value = power::use_acpi_s5(port, slp_typ);
    println!("POWEROFF port={port:#x} value={value:#x}");
    Ok(())
}
