//! Scenarios that end the machine in ways other than passing.
//!
//! `triplefault`: loads an empty IDT and raises an exception, so the CPU cannot deliver it,
//! nor the double fault that follows: a triple fault, which the VMM must report.
//! `idle`: halts with interrupts off forever, for tests and benchmarks that stop petrel
//! from outside (signals) or measure an idle machine.

use alloc::string::String;
use core::arch::asm;

use crate::rt::cpu;

pub fn triple_fault(_: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    println!("TRIPLEFAULT now");
    let idtr = [0u16; 5];
    // SAFETY: deliberately makes every exception undeliverable; the guest ends here.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) idtr.as_ptr(), options(nostack));
    }
    Err("the CPU survived an exception with an empty IDT".into())
}

pub fn idle(_: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    println!("IDLE");
    cpu::halt_forever()
}
