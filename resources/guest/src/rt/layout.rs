//! Addresses of the memory regions `linker.ld` lays out.

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __ap_stacks_start: u8;
    static __ap_stacks_end: u8;
    static __heap_start: u8;
    static __heap_end: u8;
}

/// The image's first byte (0x200000) and the first page boundary after everything it uses
/// (code, data, `.bss`, stacks, heap).
pub fn image() -> core::ops::Range<u64> {
    (&raw const __image_start) as u64..(&raw const __image_end) as u64
}

/// The region holding the per-AP stacks.
pub fn ap_stacks() -> core::ops::Range<u64> {
    (&raw const __ap_stacks_start) as u64..(&raw const __ap_stacks_end) as u64
}

/// The region the global allocator hands out.
pub fn heap() -> core::ops::Range<usize> {
    (&raw const __heap_start) as usize..(&raw const __heap_end) as usize
}
