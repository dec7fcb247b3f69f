//! The global allocator: a bump allocator over the 1 MiB heap region of `linker.ld`.
//!
//! Freeing only returns memory when it is the most recent allocation; that is enough for the
//! short scenarios this guest runs.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::layout;

#[global_allocator]
static HEAP: BumpHeap = BumpHeap {
    next: AtomicUsize::new(0),
};

struct BumpHeap {
    /// The first free byte; 0 until the first allocation (the heap's start is a link-time
    /// address, not a constant).
    next: AtomicUsize,
}

// SAFETY: `alloc` hands out disjoint, suitably aligned blocks inside the heap region (which
// nothing else uses): the compare-exchange claims `[aligned, aligned + size)` atomically, and
// `dealloc` only moves `next` back over a block that is the most recent one and being freed.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = layout::heap();
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let next = if current == 0 { heap.start } else { current };
            let Some(start) = next.checked_next_multiple_of(layout.align()) else {
                return ptr::null_mut();
            };
            let end = match start.checked_add(layout.size()) {
                Some(end) if end <= heap.end => end,
                _ => return ptr::null_mut(),
            };
            match self.next.compare_exchange_weak(
                current,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return start as *mut u8,
                Err(actual) => current = actual,
            }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let start = block as usize;
        // Only succeeds if this block is the last one handed out.
        let _ = self.next.compare_exchange(
            start + layout.size(),
            start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}
