//! x86_64: the guest-physical layout of boot structures, CPUID, MSRs, registers and page
//! tables for 64-bit entry, the zero page with its e820 map, the MP table and the ACPI tables.

pub mod acpi;
pub mod bootparams;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
