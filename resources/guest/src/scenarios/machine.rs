//! `machine`: what the guest sees of the machine beyond boot parameters.
//!
//! ```text
//! UNCLAIMED port=0x<byte read from an unclaimed port> mmio=0x<u32 read from unclaimed MMIO>
//! CPUID apic=<id> hypervisor=<0|1> x2apic=<0|1> cx16=<0|1> xsave=<0|1> avx=<0|1> avx2=<0|1> kvm=<0|1>
//! RTC <yyyy>-<mm>-<dd> <hh>:<mm>:<ss>
//! ```
//!
//! Unclaimed accesses must read all ones and writes must be ignored (the guest keeps
//! running); the host compares the CPUID line with the CPU template and the RTC line with
//! its clock.

use alloc::format;
use alloc::string::String;
use core::ptr;

use crate::rt::{cmos, cpu};

/// A port no device claims.
const UNCLAIMED_PORT: u16 = 0x2f0;
/// An address in the 32-bit MMIO gap, identity-mapped, that no device claims.
const UNCLAIMED_MMIO: u64 = 0xd000_0000;

pub fn run(_: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    // SAFETY: port I/O to an unclaimed port has no effect on guest memory.
    let port = unsafe {
        cpu::outb(UNCLAIMED_PORT, 0x5a);
        cpu::inb(UNCLAIMED_PORT)
    };
    let mmio = UNCLAIMED_MMIO as *mut u32;
    // SAFETY: the address is identity-mapped by the boot page tables and is not RAM; the
    // accesses trap to the VMM, which ignores the write and answers the read.
    let value = unsafe {
        ptr::write_volatile(mmio, 0x1234_5678);
        ptr::read_volatile(mmio)
    };
    println!("UNCLAIMED port={port:#x} mmio={value:#x}");
    if port != 0xff || value != 0xffff_ffff {
        return Err(format!("unclaimed reads gave {port:#x} and {value:#x}, not all ones"));
    }

    let bit = |reg: u32, n: u32| (reg >> n) & 1;
    let f1 = cpu::cpuid(1);
    let f7 = cpu::cpuid(7);
    let hv = cpu::cpuid(0x4000_0000);
    let kvm = (hv.ebx, hv.ecx, hv.edx) == (0x4b4d_564b, 0x564b_4d56, 0x4d);
    println!(
        "CPUID apic={} hypervisor={} x2apic={} cx16={} xsave={} avx={} avx2={} kvm={}",
        cpu::apic_id(),
        bit(f1.ecx, 31),
        bit(f1.ecx, 21),
        bit(f1.ecx, 13),
        bit(f1.ecx, 26),
        bit(f1.ecx, 28),
        bit(f7.ebx, 5),
        u32::from(kvm)
    );

    let (Some(date), Some(time)) = (cmos::read_date(), cmos::read_time()) else {
        return Err("no RTC".into());
    };
    println!(
        "RTC {:02}{:02}-{:02}-{:02} {:02}:{:02}:{:02}",
        date.century, date.year, date.month, date.day, time.hours, time.minutes, time.seconds
    );
    Ok(())
}
