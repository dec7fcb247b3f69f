//! Starting application processors (APs) with INIT / STARTUP / STARTUP, the real-hardware way.
//!
//! An AP starts in real mode at `TRAMPOLINE_BASE` (STARTUP vector 8). The trampoline below is
//! copied there; it switches to protected mode, then long mode with the BSP's page tables,
//! loads a stack the BSP patched in and calls `ap_main(index)`. APs are started one at a time,
//! so a single set of patched values suffices.

use alloc::format;
use alloc::string::String;
use core::arch::global_asm;
use core::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

use super::apic::LocalApic;
use super::{cpu, layout};

/// The trampoline's page: below 1 MiB and page-aligned, as STARTUP requires. The VMM's initial
/// boot stack lives in this page, which the BSP has left by the time it copies the trampoline.
pub const TRAMPOLINE_BASE: u64 = 0x8000;
/// How many APs the stacks in `linker.ld` are laid out for.
pub const MAX_APS: usize = 256;

/// Spin iterations: after INIT (~10 ms here), after each STARTUP, and the check-in timeout.
const INIT_DELAY: u32 = 10_000;
const STARTUP_DELAY: u32 = 1_000;
const CHECK_IN_TIMEOUT: u32 = 2_000_000;

// Real mode -> protected mode -> long mode. Position-independent with respect to its start:
// absolute addresses are `TRAMPOLINE_BASE` plus an offset into the trampoline. The temporary
// GDT has flat 32-bit code (0x08), data (0x10) and 64-bit code (0x18) segments.
global_asm!(
    ".pushsection .rodata.ap_trampoline, \"a\"",
    ".balign 16",
    ".global ap_trampoline_start",
    "ap_trampoline_start:",
    ".code16",
    "    cli",
    "    cld",
    "    movw %cs, %ax",
    "    movw %ax, %ds",
    "    lgdtl ap_tramp_gdtr - ap_trampoline_start",
    "    movl $0x11, %eax", // CR0.PE | CR0.ET
    "    movl %eax, %cr0",
    "    ljmpl $0x08, ${base} + ap_tramp_32 - ap_trampoline_start",
    ".code32",
    "ap_tramp_32:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax", // CR4.PAE
    "    movl %eax, %cr4",
    "    movl {base} + ap_tramp_cr3 - ap_trampoline_start, %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx", // IA32_EFER := the BSP's (LME set)
    "    movl {base} + ap_tramp_efer - ap_trampoline_start, %eax",
    "    xorl %edx, %edx",
    "    wrmsr",
    "    movl $0x80000031, %eax", // CR0.PG | NE | ET | PE
    "    movl %eax, %cr0",
    "    ljmpl $0x18, ${base} + ap_tramp_64 - ap_trampoline_start",
    ".code64",
    "ap_tramp_64:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movq ap_tramp_stack(%rip), %rsp",
    "    movq ap_tramp_arg(%rip), %rdi",
    "    movq ap_tramp_entry(%rip), %rax",
    "    xorl %ebp, %ebp",
    "    callq *%rax",
    "9:  cli",
    "    hlt",
    "    jmp 9b",
    ".balign 8",
    "ap_tramp_gdt:",
    "    .quad 0",
    "    .quad 0x00cf9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    "    .quad 0x00af9a000000ffff",
    "ap_tramp_gdt_end:",
    "ap_tramp_gdtr:",
    "    .word ap_tramp_gdt_end - ap_tramp_gdt - 1",
    "    .long {base} + ap_tramp_gdt - ap_trampoline_start",
    // Patched by the BSP.
    ".balign 8",
    ".global ap_tramp_cr3",
    "ap_tramp_cr3: .long 0",
    ".global ap_tramp_efer",
    "ap_tramp_efer: .long 0",
    ".global ap_tramp_stack",
    "ap_tramp_stack: .quad 0",
    ".global ap_tramp_entry",
    "ap_tramp_entry: .quad 0",
    ".global ap_tramp_arg",
    "ap_tramp_arg: .quad 0",
    ".global ap_trampoline_end",
    "ap_trampoline_end:",
    ".popsection",
    base = const TRAMPOLINE_BASE,
    options(att_syntax),
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_cr3: u32;
    static ap_tramp_efer: u32;
    static ap_tramp_stack: u64;
    static ap_tramp_entry: u64;
    static ap_tramp_arg: u64;
}

/// APIC ids the APs read themselves, by start order.
static AP_IDS: [AtomicU32; MAX_APS] = [const { AtomicU32::new(0) }; MAX_APS];
/// How many APs have checked in.
static AP_CHECKED_IN: AtomicUsize = AtomicUsize::new(0);

/// Where the copy of the trampoline symbol `symbol` lives.
fn patch_address<T>(symbol: *const T) -> *mut T {
    let offset = symbol as u64 - (&raw const ap_trampoline_start) as u64;
    (TRAMPOLINE_BASE + offset) as usize as *mut T
}

/// The installed trampoline; starting APs requires one.
pub struct Trampoline(());

impl Trampoline {
    /// Copies the trampoline to `TRAMPOLINE_BASE` and patches in the BSP's CR3 and EFER.
    pub fn install() -> Result<Trampoline, String> {
        let start = &raw const ap_trampoline_start;
        let size = (&raw const ap_trampoline_end) as usize - start as usize;
        assert!(size <= 4096, "the AP trampoline does not fit in a page");
        let cr3 = u32::try_from(cpu::read_cr3())
            .map_err(|_| "the page tables lie above 4 GiB, out of the trampoline's reach")?;
        // SAFETY: IA32_EFER exists on every x86_64 CPU.
        let efer = unsafe { cpu::rdmsr(cpu::MSR_EFER) };
        // Bit 10 (LMA) is read-only; the rest (LME, NXE, ...) is what the AP needs.
        let efer = (efer & !(1 << 10)) as u32;
        let entry: extern "C" fn(usize) -> ! = ap_main;
        // SAFETY: the page at TRAMPOLINE_BASE is guest RAM reserved for this by the VMM
        // contract (only the VMM's initial stack used it, which `_start` left); it is
        // identity-mapped and outside the image, so the copy overlaps nothing Rust owns. The
        // patched fields lie inside the copy.
        unsafe {
            core::ptr::copy_nonoverlapping(start, TRAMPOLINE_BASE as usize as *mut u8, size);
            patch_address(&raw const ap_tramp_cr3).write_volatile(cr3);
            patch_address(&raw const ap_tramp_efer).write_volatile(efer);
            patch_address(&raw const ap_tramp_entry).write_volatile(entry as usize as u64);
        }
        Ok(Trampoline(()))
    }

    /// Starts the AP with APIC id `apic_id` as the `index`-th AP and waits until it checks in.
    /// Returns the APIC id the AP read itself.
    pub fn start_ap(&self, apic: &LocalApic, apic_id: u32, index: usize) -> Result<u32, String> {
        if index >= MAX_APS {
            return Err(format!("more than {MAX_APS} APs"));
        }
        let stacks = layout::ap_stacks();
        let stack_size = (stacks.end - stacks.start) / MAX_APS as u64;
        let stack_top = stacks.start + (index as u64 + 1) * stack_size;
        // SAFETY: the fields lie in the trampoline copy (see `install`), which no AP reads
        // now: the previous AP checked in, so it is past the trampoline.
        unsafe {
            patch_address(&raw const ap_tramp_stack).write_volatile(stack_top);
            patch_address(&raw const ap_tramp_arg).write_volatile(index as u64);
        }
        // The AP must see the patched trampoline once started.
        fence(Ordering::SeqCst);

        let vector = (TRAMPOLINE_BASE >> 12) as u8;
        apic.send_init(apic_id);
        cpu::spin(INIT_DELAY);
        apic.send_startup(apic_id, vector);
        cpu::spin(STARTUP_DELAY);
        apic.send_startup(apic_id, vector);

        for _ in 0..CHECK_IN_TIMEOUT {
            if AP_CHECKED_IN.load(Ordering::Acquire) > index {
                return Ok(AP_IDS[index].load(Ordering::Relaxed));
            }
            core::hint::spin_loop();
        }
        Err(format!("AP {apic_id} did not start"))
    }
}

/// Where each AP lands, on its own stack, with the start index the BSP gave it.
extern "C" fn ap_main(index: usize) -> ! {
    if let Some(slot) = AP_IDS.get(index) {
        slot.store(cpu::apic_id(), Ordering::Relaxed);
        AP_CHECKED_IN.fetch_add(1, Ordering::Release);
    }
    cpu::halt_forever()
}
