//! `numa`: reports the NUMA topology the ACPI tables give, and the e820 map beside it.
//!
//! ```text
//! E820 <addr 0x..> <size 0x..> <type, decimal>     (one per entry, in table order)
//! (then the topology lines of `topology`, see there)
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::rt::acpi::srat::{parse_slit, parse_srat};
use crate::rt::acpi::{self};
use crate::rt::bootparams::BootParams;

pub fn run(boot: &BootParams) -> Result<(), String> {
    for entry in boot.e820() {
        println!("E820 {:#x} {:#x} {}", entry.addr, entry.size, entry.kind);
    }
    for line in topology(boot)? {
        println!("{line}");
    }
    Ok(())
}

/// The topology as lines:
///
/// ```text
/// NOSRAT                                            (no SRAT: one node)
/// SRAT cpu apic=<id> node=<n> enabled=<0|1> x2apic=<0|1>   (one per processor structure)
/// SRAT mem node=<n> base=<addr> len=<len> flags=<hex>      (one per memory structure)
/// NOSLIT | SLIT n=<localities>
/// SLIT row=<i> <d(i,0)> <d(i,1)> ...                (one per locality)
/// ```
pub fn topology(boot: &BootParams) -> Result<Vec<String>, String> {
    let tables = acpi::load(boot)?.ok_or("no ACPI tables")?;
    let mut lines = Vec::new();
    match tables.find(b"SRAT") {
        None => lines.push(String::from("NOSRAT")),
        Some(table) => {
            let srat = parse_srat(table)?;
            for c in &srat.cpus {
                lines.push(format!(
                    "SRAT cpu apic={} node={} enabled={} x2apic={}",
                    c.apic_id,
                    c.domain,
                    u8::from(c.enabled),
                    u8::from(c.x2apic)
                ));
            }
            for m in &srat.memory {
                lines.push(format!(
                    "SRAT mem node={} base={:#x} len={:#x} flags={:#x}",
                    m.domain, m.base, m.len, m.flags
                ));
            }
        }
    }
    match tables.find(b"SLIT") {
        None => lines.push(String::from("NOSLIT")),
        Some(table) => {
            let slit = parse_slit(table)?;
            lines.push(format!("SLIT n={}", slit.localities));
            for (i, row) in slit
                .distances
                .chunks(slit.localities.max(1))
                .enumerate()
            {
                let cells: Vec<String> = row.iter().map(|d| format!("{d}")).collect();
                lines.push(format!("SLIT row={i} {}", cells.join(" ")));
            }
        }
    }
    Ok(lines)
}
