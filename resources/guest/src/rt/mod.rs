//! The guest's runtime: console, boot information, memory, CPU and platform helpers.

#[macro_use]
pub mod serial;

pub mod acpi;
pub mod apic;
pub mod bootparams;
pub mod cmdline;
pub mod cmos;
pub mod cpu;
pub mod deadline;
pub mod fnv;
pub mod heap;
pub mod ioapic;
pub mod layout;
pub mod mptable;
pub mod pages;
pub mod power;
pub mod scancode;
pub mod smp;
