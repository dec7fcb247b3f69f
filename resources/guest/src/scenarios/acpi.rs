//! `acpi`: reads the ACPI tables as an OS would, reports them, and powers off the way they say.
//!
//! ```text
//! RSDP zeropage=<addr|none> scan=<addr|none>
//! (with an RSDP:)
//! RSDP addr=<addr> rev=<n> oem=<id> root=<XSDT|RSDT>@<addr>
//! TABLE <sig> addr=<addr> len=<n> rev=<n>          (root first, then each table it lists)
//! TABLE DSDT addr=<addr> len=<n> rev=<n>
//! MADT lapic=<addr> flags=<hex>
//! CPU apic=<id> uid=<uid> enabled=<0|1> x2apic=<0|1>
//! IOAPIC id=<id> addr=<addr> gsi_base=<n>
//! OVERRIDE bus=<n> irq=<n> gsi=<n> flags=<hex>
//! NMI uid=<hex> lint=<n> flags=<hex>
//! FADT rev=<major>.<minor> flags=<hex> hw_reduced=<0|1> pwr_button=<0|1> slp_button=<0|1> reset_reg_sup=<0|1> iapc=<hex>
//! FADTREG reset=<port>/<value> sleep_control=<port> sleep_status=<port>
//! DEVICE <path> hid=<id> uid=<n|-> [cca=<n>] [mem=<base>+<len>] [io=<min>+<len>] [irq=<n> <edge|level> <high|low>] [region=<space>:<offset>+<len>] [method=<name>]
//! VIRTIO <addr> id=<device id>                     (each LNRO0005 window's device id register)
//! S5 slp_typ=<n>
//! POWEROFF port=<port> value=<hex>
//! (without one:)
//! NOACPI
//! WINDOW <size>@<addr>:<irq>                       (the windows the command line gives)
//! ```
//!
//! Every checksum is verified on the way (a bad one fails the scenario). The run ends by
//! powering off through the FADT's sleep control register with SLP_TYP from `\_S5_`.

use alloc::format;
use alloc::string::String;

use crate::rt::acpi::aml::Resource;
use crate::rt::acpi::{self, fadt, sig, Acpi, Table};
use crate::rt::bootparams::BootParams;
use crate::rt::{cpu, power};
use crate::virtio;

fn addr(found: Option<u64>) -> String {
    found.map_or_else(|| String::from("none"), |a| format!("{a:#x}"))
}

fn report_table(t: &Table) {
    println!(
        "TABLE {} addr={:#x} len={} rev={}",
        sig(t.signature()),
        t.addr,
        t.bytes.len(),
        t.revision()
    );
}

pub fn run(boot: &BootParams) -> Result<(), String> {
    let found = acpi::find_rsdp(boot)?;
    println!(
        "RSDP zeropage={} scan={}",
        addr(found.zero_page),
        addr(found.scan)
    );
    let Some(rsdp) = found.zero_page.or(found.scan) else {
        println!("NOACPI");
        for w in virtio::windows(boot)? {
            println!("WINDOW {w}");
        }
        return Ok(());
    };
    if let (Some(a), Some(b)) = (found.zero_page, found.scan) {
        if a != b {
            return Err(format!("the zero page says {a:#x}, the scan finds {b:#x}"));
        }
    }
    let tables = Acpi::from_rsdp(acpi::rsdp_at(rsdp)?)?;
    let r = &tables.rsdp;
    println!(
        "RSDP addr={:#x} rev={} oem={} root={}@{:#x}",
        r.addr,
        r.revision,
        sig(&r.oem_id),
        sig(tables.root.signature()),
        tables.root.addr
    );
    report_table(&tables.root);
    for t in &tables.tables {
        report_table(t);
    }
    let dsdt = tables.dsdt()?;
    report_table(&dsdt);

    report_madt(&tables)?;
    let fadt = tables.fadt()?;
    report_fadt(&fadt)?;
    let slp_typ = report_dsdt(&tables)?;

    let port = fadt
        .sleep_control
        .io_port()
        .ok_or("the FADT's sleep control register is not a byte-wide I/O port")?;
    let value = power::use_acpi_s5(port, slp_typ);
    println!("POWEROFF port={port:#x} value={value:#x}");
    Ok(())
}

fn report_madt(tables: &Acpi) -> Result<(), String> {
    let madt = tables.madt()?;
    println!(
        "MADT lapic={:#x} flags={:#x}",
        madt.local_apic_addr, madt.flags
    );
    for c in &madt.cpus {
        println!(
            "CPU apic={} uid={} enabled={} x2apic={}",
            c.apic_id,
            c.uid,
            u8::from(c.enabled),
            u8::from(c.x2apic)
        );
    }
    for io in &madt.ioapics {
        println!(
            "IOAPIC id={} addr={:#x} gsi_base={}",
            io.id, io.addr, io.gsi_base
        );
    }
    for o in &madt.overrides {
        println!(
            "OVERRIDE bus={} irq={} gsi={} flags={:#x}",
            o.bus, o.source, o.gsi, o.flags
        );
    }
    for n in &madt.nmis {
        println!("NMI uid={:#x} lint={} flags={:#x}", n.uid, n.lint, n.flags);
    }
    let bsp = cpu::apic_id();
    if !madt.cpus.iter().any(|c| c.enabled && c.apic_id == bsp) {
        return Err(format!(
            "the MADT has no enabled entry for the BSP (APIC id {bsp})"
        ));
    }
    if madt.ioapics.is_empty() {
        return Err("the MADT has no IOAPIC".into());
    }
    Ok(())
}

fn report_fadt(f: &fadt::Fadt) -> Result<(), String> {
    let bit = |flag: u32| u8::from(f.flags & flag != 0);
    println!(
        "FADT rev={}.{} flags={:#x} hw_reduced={} pwr_button={} slp_button={} reset_reg_sup={} iapc={:#x}",
        f.revision,
        f.minor_revision,
        f.flags,
        bit(fadt::FLAG_HW_REDUCED_ACPI),
        bit(fadt::FLAG_PWR_BUTTON),
        bit(fadt::FLAG_SLP_BUTTON),
        bit(fadt::FLAG_RESET_REG_SUP),
        f.iapc_boot_arch
    );
    let port = |g: &fadt::Gas| {
        g.io_port()
            .map_or_else(|| String::from("none"), |p| format!("{p:#x}"))
    };
    println!(
        "FADTREG reset={}/{:#x} sleep_control={} sleep_status={}",
        port(&f.reset_reg),
        f.reset_value,
        port(&f.sleep_control),
        port(&f.sleep_status)
    );
    Ok(())
}

/// Reports every device and `\_S5_`; returns SLP_TYPa.
fn report_dsdt(tables: &Acpi) -> Result<u8, String> {
    let ns = virtio::acpi::namespace(tables)?;
    for d in &ns.devices {
        let mut line = format!(
            "DEVICE {} hid={} uid={}",
            d.path,
            d.hid.as_deref().unwrap_or("-"),
            d.uid.map_or_else(|| String::from("-"), |u| format!("{u}"))
        );
        if let Some(cca) = d.cca {
            line += &format!(" cca={cca}");
        }
        for r in d.crs.iter().flatten() {
            line += &match *r {
                Resource::Memory32Fixed { base, len, .. } => format!(" mem={base:#x}+{len:#x}"),
                Resource::Io { min, len, .. } => format!(" io={min:#x}+{len}"),
                Resource::Interrupt {
                    gsi,
                    edge,
                    active_low,
                    ..
                } => format!(
                    " irq={gsi} {} {}",
                    if edge { "edge" } else { "level" },
                    if active_low { "low" } else { "high" }
                ),
                Resource::Irq {
                    irq,
                    edge,
                    active_low,
                    ..
                } => format!(
                    " isairq={irq} {} {}",
                    if edge { "edge" } else { "level" },
                    if active_low { "low" } else { "high" }
                ),
            };
        }
        for r in &d.regions {
            line += &format!(" region={}:{:#x}+{}", r.space, r.offset, r.len);
        }
        for m in &d.methods {
            line += &format!(" method={m}");
        }
        println!("{line}");
    }
    for d in ns.with_hid(virtio::acpi::VIRTIO_MMIO_HID) {
        let w = virtio::acpi::window(d)?;
        if w.addr % 4 != 0 || w.size < 12 {
            return Err(format!(
                "{}: window {w} cannot hold virtio-mmio registers",
                d.path
            ));
        }
        // SAFETY: the DSDT describes a virtio-mmio register block at this address, below
        // 4 GiB (a 32-bit descriptor) and so identity-mapped, 4-byte aligned and at least
        // 12 bytes long (checked); reading its magic and device id registers has no side
        // effects.
        let (magic, id) = unsafe {
            (
                core::ptr::read_volatile(w.addr as usize as *const u32),
                core::ptr::read_volatile((w.addr + 8) as usize as *const u32),
            )
        };
        if magic != 0x7472_6976 {
            return Err(format!("no virtio-mmio magic at {:#x}", w.addr));
        }
        println!("VIRTIO {:#x} id={id}", w.addr);
    }
    let slp_typ = ns.s5_sleep_type()?;
    println!("S5 slp_typ={slp_typ}");
    Ok(slp_typ)
}
