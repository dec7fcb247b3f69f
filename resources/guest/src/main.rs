//! The petrel test guest.
//!
//! A `no_std` program booted by petrel like a Linux `vmlinux` (64-bit entry, `rsi` = zero
//! page). It runs the scenario named by `petrel.test=<name>` on the kernel command line
//! (`demo` when there is none), reports `PASS <name>` or `FAIL <name>: <reason>` on the serial
//! port at 0x3f8 and then resets or powers off the machine. See `scenarios/` for the list.
//!
//! Built for `x86_64-unknown-none` (no SSE: this KVM's instruction emulator rejects it) with
//! `linker.ld`, by `../build.rs`.

#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod rt;
mod scenarios;
mod virtio;

use core::arch::global_asm;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use rt::bootparams::BootParams;

// Entry from the VMM: long mode, identity map, interrupts off, `rsi` = zero page, `rsp` on a
// temporary stack in the page 0x8000 (which `smp` later reuses for the AP trampoline). Switch
// to the boot stack, zero `.bss`, and call `rust_main(zero_page)`.
global_asm!(
    ".pushsection .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    mov rdi, rsi",
    "    lea rsp, [rip + __boot_stack_top]",
    "    lea rcx, [rip + __bss_start]",
    "    lea rdx, [rip + __bss_end]",
    "2:  cmp rcx, rdx",
    "    jae 3f",
    "    mov qword ptr [rcx], 0",
    "    add rcx, 8",
    "    jmp 2b",
    "3:  xor ebp, ebp",
    "    call {rust_main}",
    "4:  cli",
    "    hlt",
    "    jmp 4b",
    ".popsection",
    rust_main = sym rust_main,
);

extern "C" fn rust_main(zero_page: u64) -> ! {
    // SAFETY: per the boot protocol petrel follows, `rsi` (passed on as `zero_page`) holds the
    // address of the identity-mapped zero page, and the command line, e820 table and initrd it
    // describes stay valid and unwritten by anyone else while the guest runs.
    let boot = unsafe { BootParams::from_addr(zero_page) };
    rt::pages::init(&boot);
    let name = boot
        .cmdline()
        .get("petrel.test")
        .unwrap_or(scenarios::DEFAULT);
    scenarios::run(name, &boot)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: just stop.
        rt::power::reset();
    }
    if let Some(location) = info.location() {
        println!(
            "panicked at {}:{}:{}",
            location.file(),
            location.line(),
            location.column()
        );
    }
    println!("FAIL {}: panic: {}", scenarios::current(), info.message());
    rt::power::reset()
}
