//! A physical page allocator: hands out 4 KiB pages, never freed, from the usable RAM after the
//! guest image (per the e820 map), below 4 GiB (the VMM's identity map) and clear of the
//! command line and initrd.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use super::bootparams::{BootParams, E820_RAM};
use super::layout;

pub const PAGE_SIZE: u64 = 4096;
/// The end of the VMM's identity map.
const IDENTITY_MAPPED_END: u64 = 4 << 30;

static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// Finds the free region. Call once on the BSP before any allocation.
pub fn init(boot: &BootParams) {
    let region = free_region(boot);
    NEXT.store(region.start, Ordering::Relaxed);
    END.store(region.end, Ordering::Relaxed);
}

fn free_region(boot: &BootParams) -> Range<u64> {
    let image_end = layout::image().end;
    // The RAM entry holding the image's end, else the lowest one above it.
    let Some(ram) = boot
        .e820()
        .filter(|e| e.kind == E820_RAM && e.range().end > image_end)
        .min_by_key(|e| e.addr)
    else {
        return 0..0;
    };
    let mut region = ram.addr.max(image_end)..ram.range().end.min(IDENTITY_MAPPED_END);
    for used in boot.referenced_ranges() {
        if used.is_empty() || used.end <= region.start || used.start >= region.end {
            continue;
        }
        if used.start > region.start {
            region.end = used.start;
        } else {
            region.start = used.end;
        }
    }
    let start = region.start.next_multiple_of(PAGE_SIZE);
    let end = region.end & !(PAGE_SIZE - 1);
    if start < end {
        start..end
    } else {
        0..0
    }
}

/// Allocates `count` physically contiguous pages; returns the first one's address. The memory
/// is identity-mapped and not zeroed.
pub fn alloc(count: u64) -> Option<u64> {
    let size = count.checked_mul(PAGE_SIZE)?;
    let end = END.load(Ordering::Relaxed);
    let mut next = NEXT.load(Ordering::Relaxed);
    loop {
        let new_next = next.checked_add(size).filter(|&n| n <= end)?;
        match NEXT.compare_exchange_weak(next, new_next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(next),
            Err(actual) => next = actual,
        }
    }
}

/// What is left to allocate.
pub fn free() -> Range<u64> {
    NEXT.load(Ordering::Relaxed)..END.load(Ordering::Relaxed)
}
