//! Guest images for petrel's end-to-end tests.
//!
//! The test guest is a small `no_std` Rust program (see `resources/guest`) built for the
//! `x86_64-unknown-none` target by this crate's build script and embedded here as an ELF
//! image. It is linked to load and run at guest-physical 0x200000, expects the Linux 64-bit
//! boot protocol entry (long mode, identity map, `rsi` = zero page), picks a scenario from the
//! `petrel.test=<name>` kernel command-line parameter and reports over the serial port at
//! 0x3f8 with lines such as `PASS <name>` or `FAIL <name>: <reason>`.

/// The test guest: an ELF64 executable whose entry point and `PT_LOAD` segments lie at
/// guest-physical 0x200000 and above (`p_paddr == p_vaddr`).
///
/// Boot it like a Linux `vmlinux` (64-bit entry, zero page in `rsi`) and select a scenario
/// with `petrel.test=<name>` on the command line (`boot`, `smp` or `demo`; `demo` when absent).
pub static TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/petrel-guest"));

/// The test guest's Ctrl+Alt+Del decoder is plain `core` code: its tests run here, on the host
/// (the guest itself is built without a test harness).
#[cfg(test)]
#[path = "../guest/src/rt/scancode.rs"]
mod guest_scancode;
