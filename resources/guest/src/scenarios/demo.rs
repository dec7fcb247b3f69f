//! `demo`: the bundled demo guest. Describes the machine it finds, then powers off.
//!
//! ```text
//! petrel demo guest
//! vCPUs: <enabled processors in the MP table>
//! memory: <usable e820 RAM, MiB, rounded to nearest> MiB
//! devices: serial 0x3f8, i8042, rtc          (those that answer)
//! virtio: <net|block|console> at <addr> irq <n>   (one per virtio_mmio.device= entry)
//! rtc: <hh:mm:ss>                            (or `rtc: absent`)
//! free pages: <n> from <addr 0x..>           (the page allocator's pool; one page is then
//!                                            allocated and checked)
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::rt::bootparams::{BootParams, E820_RAM};
use crate::rt::{cmos, cpu, mptable, pages};
use crate::virtio;

const MIB: u64 = 1 << 20;
const COM1_LSR: u16 = 0x3f8 + 5;
const I8042_STATUS: u16 = 0x64;

pub fn run(boot: &BootParams) -> Result<(), String> {
    println!("petrel demo guest");
    match mptable::find() {
        Ok(table) => println!("vCPUs: {}", table.enabled().count()),
        Err(e) => println!("vCPUs: unknown ({e})"),
    }
    let ram: u64 = boot
        .e820()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum();
    println!("memory: {} MiB", (ram + MIB / 2) / MIB);

    let mut devices = Vec::new();
    if answers(COM1_LSR) {
        devices.push("serial 0x3f8");
    }
    if answers(I8042_STATUS) {
        devices.push("i8042");
    }
    if cmos::present() {
        devices.push("rtc");
    }
    println!(
        "devices: {}",
        if devices.is_empty() {
            String::from("none")
        } else {
            devices.join(", ")
        }
    );
    print_virtio(boot);
    match cmos::read_time() {
        Some(t) => println!("rtc: {:02}:{:02}:{:02}", t.hours, t.minutes, t.seconds),
        None => println!("rtc: absent"),
    }

    let free = pages::free();
    println!(
        "free pages: {} from {:#x}",
        (free.end - free.start) / pages::PAGE_SIZE,
        free.start
    );
    check_page()
}

/// One line per virtio-mmio window (command line or DSDT): its device type as the device
/// reports it.
fn print_virtio(boot: &BootParams) {
    let windows = match virtio::windows(boot) {
        Ok(w) => w,
        Err(e) => {
            println!("virtio: {e}");
            return;
        }
    };
    for w in windows {
        let reg = |offset: u64| {
            // SAFETY: the VMM put a virtio-mmio register file at this identity-mapped
            // address; reading the magic and device id registers has no side effects.
            unsafe { core::ptr::read_volatile((w.addr + offset) as *const u32) }
        };
        let kind = match (reg(0), reg(8)) {
            (0x7472_6976, 1) => "net",
            (0x7472_6976, 2) => "block",
            (0x7472_6976, 3) => "console",
            (0x7472_6976, _) => "other",
            _ => "absent",
        };
        println!("virtio: {kind} at {:#x} irq {}", w.addr, w.irq);
    }
}

/// Takes a page from the allocator and checks that it is writable RAM.
fn check_page() -> Result<(), String> {
    let page = pages::alloc(1).ok_or("the page allocator has no memory")?;
    let words = (pages::PAGE_SIZE / 8) as usize;
    let page = page as usize as *mut u64;
    let pattern = |i: usize| 0x5a5a_0000_0000_0000 | i as u64;
    for i in [0, words - 1] {
        // SAFETY: the allocator handed this page to us alone; it is identity-mapped RAM.
        let back = unsafe {
            page.add(i).write_volatile(pattern(i));
            page.add(i).read_volatile()
        };
        if back != pattern(i) {
            return Err(format!(
                "page {:#x} is not RAM: wrote {:#x}, read {back:#x}",
                page as usize,
                pattern(i)
            ));
        }
    }
    Ok(())
}

/// Whether a device answers at `port` (ports without one read 0xff).
fn answers(port: u16) -> bool {
    // SAFETY: the status registers probed here (UART LSR, i8042 status) have no read side
    // effects on memory.
    unsafe { cpu::inb(port) != 0xff }
}
