//! Guest RAM as plain byte slices, for writing a snapshot while nothing runs and for
//! filling memory at restore before any vCPU exists.
//!
//! Guest memory is normally shared: vCPUs write it through KVM and device threads through
//! vm-memory's volatile accessors, at any time. A Rust slice promises that nobody else
//! writes (`&[u8]`) or even reads (`&mut [u8]`) the bytes while it lives, so these functions
//! are `unsafe` and the caller states that the promise holds.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemoryMmap;

/// The host address and length of every region, in RAM order (the order of `ram_slices`):
/// the input for `migration::RamView::from_raw`, which reads guest RAM with volatile reads
/// while vCPUs and devices write it. Only produces pointers; they are valid while `mem` (or
/// a clone of it, which shares the mappings) lives.
pub fn ram_regions(mem: &GuestMemoryMmap) -> Vec<(*const u8, usize)> {
    mem.iter()
        .map(|r| (r.as_ptr() as *const u8, r.len() as usize))
        .collect()
}

/// The host memory of every region as a byte slice, in RAM order (slice `i` is region `i`,
/// the RAM offset space is their concatenation).
///
/// # Safety
/// While the returned slices live, nothing may write guest memory: every vCPU of the VM is
/// paused (out of `KVM_RUN`) or not created, and no device or other VMM thread writes
/// through `mem` or a clone of it (device activity is quiesced). Reading at the same time
/// is fine.
pub unsafe fn ram_slices(mem: &GuestMemoryMmap) -> Vec<&[u8]> {
    mem.iter()
        .map(|r| {
            // SAFETY: `as_ptr()` is the start of the region's mapping of exactly `len()`
            // bytes, readable (PROT_READ), owned by the region that `mem` borrows for the
            // slice's lifetime, so it stays mapped. The caller promises no writer exists
            // while the slice lives. A mapping never exceeds isize::MAX bytes.
            unsafe { std::slice::from_raw_parts(r.as_ptr() as *const u8, r.len() as usize) }
        })
        .collect()
}

/// The host memory of every region as a mutable byte slice, in RAM order.
///
/// Writes through these slices are not logged in the dirty bitmap (`take_vmm_dirty`): this
/// is for building the memory a restored guest starts from.
///
/// # Safety
/// While the returned slices live, nothing else may read or write guest memory: no vCPU of
/// the VM has been created or they are all paused, no device or other thread accesses `mem`
/// or a clone of it, and the caller calls this once at a time (two live results would alias).
// Mutable slices from a shared borrow are the point: guest memory is interior-mutable and the
// caller's promise above, not the borrow checker, rules out aliasing.
#[allow(clippy::mut_from_ref)]
pub unsafe fn ram_slices_mut(mem: &GuestMemoryMmap) -> Vec<&mut [u8]> {
    mem.iter()
        .map(|r| {
            // SAFETY: as in `ram_slices`, the mapping is `len()` bytes, readable and writable
            // (PROT_READ | PROT_WRITE, private), and outlives the borrow of `mem`. Regions do
            // not overlap, so the slices are disjoint; the caller promises that no other
            // access to guest memory happens while they live.
            unsafe { std::slice::from_raw_parts_mut(r.as_ptr(), r.len() as usize) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryLayout;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn slices_follow_ram_order_across_the_gap() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        mem.write_obj(0x11u8, GuestAddress(0x1234)).unwrap();
        mem.write_obj(0x22u8, GuestAddress((4 << 30) + 0x10))
            .unwrap();

        // SAFETY: this test is the only user of `mem`.
        let slices = unsafe { ram_slices(&mem) };

        assert_eq!(
            slices.iter().map(|s| s.len()).collect::<Vec<_>>(),
            vec![3 << 30, 2 << 30]
        );
        assert_eq!(slices[0][0x1234], 0x11);
        assert_eq!(slices[1][0x10], 0x22);
    }

    #[test]
    fn regions_are_the_slices_addresses_and_lengths() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        // SAFETY: this test is the only user of `mem`.
        let slices = unsafe { ram_slices(&mem) };
        let want: Vec<_> = slices.iter().map(|s| (s.as_ptr(), s.len())).collect();
        assert_eq!(ram_regions(&mem), want);
    }

    #[test]
    fn writes_through_mut_slices_are_guest_visible_and_not_logged() {
        let mem = MemoryLayout::new(5 << 30).unwrap().allocate().unwrap();
        {
            // SAFETY: this test is the only user of `mem`.
            let mut slices = unsafe { ram_slices_mut(&mem) };
            slices[1][0x3000] = 0x5a;
        }
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress((4 << 30) + 0x3000))
                .unwrap(),
            0x5a
        );
        assert_eq!(crate::count_pages(&crate::take_vmm_dirty(&mem)), 0);
    }
}
