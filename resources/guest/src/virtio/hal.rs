//! The [`Hal`] `virtio-drivers` needs: how to get DMA memory and what address a device sees for
//! a buffer.
//!
//! The VMM's boot page tables identity-map the first 4 GiB (physical == virtual), which holds
//! the image (stacks, heap) and everything the page allocator hands out, so sharing a buffer is
//! naming its address, and MMIO windows below 4 GiB are reachable at their physical address.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::rt::pages;

/// The guest's `Hal`: DMA pages from `rt::pages` (never freed), identity translation.
pub struct PetrelHal;

// SAFETY: `dma_alloc` returns pages the page allocator handed out to this call alone (it never
// hands a page out twice), zeroed, page-aligned (the allocator's granule is the page) and
// identity-mapped, so the pointer is valid and aliases nothing; `dma_dealloc` leaks them, so
// they stay valid. `mmio_phys_to_virt` and `share` return the identity mapping, which is what
// the device and the CPU both use below 4 GiB.
unsafe impl Hal for PetrelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(addr) = pages::alloc(pages as u64) else {
            // A physical address of 0 tells `virtio-drivers` the allocation failed.
            return (0, NonNull::dangling());
        };
        let Some(ptr) = NonNull::new(addr as usize as *mut u8) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the allocator gave us `pages` whole pages at `addr`, identity-mapped RAM that
        // nothing else uses; `pages * PAGE_SIZE` did not overflow inside `pages::alloc`.
        unsafe { ptr.as_ptr().write_bytes(0, pages * PAGE_SIZE) };
        (addr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The page allocator never frees; the few queues a scenario sets up are leaked.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Only the PCI transport calls this (for BARs); identity-mapped like everything else.
        NonNull::new(paddr as usize as *mut u8).expect("MMIO at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as usize as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Nothing was copied or mapped: the device used the buffer in place.
    }
}
