//! `boot`: reports what the VMM handed over in the zero page.
//!
//! ```text
//! CMDLINE <command line>
//! E820 <addr 0x..> <size 0x..> <type, decimal>     (one per entry, in table order)
//! INITRD <addr 0x..> <size 0x..> <FNV-1a 64 0x..>  (only if ramdisk_size != 0)
//! ```

use alloc::string::String;

use crate::rt::bootparams::BootParams;
use crate::rt::fnv::fnv1a64;

pub fn run(boot: &BootParams) -> Result<(), String> {
    println!("CMDLINE {}", boot.cmdline().as_str());
    for entry in boot.e820() {
        println!("E820 {:#x} {:#x} {}", entry.addr, entry.size, entry.kind);
    }
    if let Some(initrd) = boot.initrd() {
        println!(
            "INITRD {:#x} {:#x} {:#x}",
            initrd.addr,
            initrd.data.len(),
            fnv1a64(initrd.data)
        );
    }
    Ok(())
}
