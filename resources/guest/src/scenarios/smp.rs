//! `smp`: checks the MP table against the running CPU and starts every AP.
//!
//! ```text
//! CPUS <enabled processor entries>
//! MPCPU <apic id>        (one per enabled processor entry, in table order)
//! AP <apic id> up        (per AP, in start order, with the id the AP read itself)
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::rt::apic::LocalApic;
use crate::rt::bootparams::BootParams;
use crate::rt::smp::Trampoline;
use crate::rt::{cpu, mptable};

pub fn run(_boot: &BootParams) -> Result<(), String> {
    let table = mptable::find()?;
    println!("CPUS {}", table.enabled().count());
    for cpu in table.enabled() {
        println!("MPCPU {}", cpu.apic_id);
    }

    let bsp_entries = table.processors.iter().filter(|p| p.bsp).count();
    if bsp_entries != 1 {
        return Err(format!("{bsp_entries} processor entries have the BSP flag"));
    }
    let bsp = table
        .processors
        .iter()
        .find(|p| p.bsp)
        .map_or(0, |p| u32::from(p.apic_id));
    let running = cpu::apic_id();
    if bsp != running {
        return Err(format!(
            "the BSP flag is on APIC id {bsp}, but the BSP is APIC id {running}"
        ));
    }

    let aps: Vec<_> = table.enabled().filter(|p| !p.bsp).collect();
    if aps.is_empty() {
        return Ok(());
    }
    let apic = LocalApic::enable();
    let trampoline = Trampoline::install()?;
    for (index, ap) in aps.iter().enumerate() {
        let expected = u32::from(ap.apic_id);
        let reported = trampoline.start_ap(&apic, expected, index)?;
        println!("AP {reported} up");
        if reported != expected {
            return Err(format!("AP {expected} reported APIC id {reported}"));
        }
    }
    Ok(())
}
