//! The KVM VM: opening `/dev/kvm`, checking capabilities, memory slots, the in-kernel
//! irqchip and PIT, and KVM's log of the pages the guest wrote.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use memory::GuestMemoryMmap;

/// Where KVM keeps the real-mode TSS (three pages) and identity-map page, inside the
/// 32-bit MMIO gap so they never cover guest RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Capabilities petrel cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Pit2, "PIT2"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
];

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run where virtualization is available)")]
    KvmMissing,
    /// `/dev/kvm` exists but this user may not open it.
    #[error("permission denied opening /dev/kvm: run as a user in the kvm group or as root")]
    KvmPermission,
    /// Opening `/dev/kvm` failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    /// The KVM API is not the stable one.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// The host allows fewer vCPUs than asked.
    #[error("this host's KVM allows at most {max} vCPUs, {asked} asked")]
    TooManyVcpus { asked: u32, max: usize },
    /// A KVM VM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What a failure to open `/dev/kvm` means to the user.
fn open_error(e: kvm_ioctls::Error) -> VmError {
    match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    }
}

/// Opens `/dev/kvm` and checks the API version and the capabilities petrel needs.
pub fn open_kvm(vcpus: u32) -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(open_error)?;
    let api = kvm.get_api_version();
    if api != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(api));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if vcpus as usize > max {
        return Err(VmError::TooManyVcpus { asked: vcpus, max });
    }
    Ok(kvm)
}

/// Creates the VM with its memory slots, the in-kernel irqchip (PIC, IOAPIC, local APICs)
/// and the PIT. Slot `i` is region `i` of `mem` (`memory::host_regions` order, which is RAM
/// order). With `dirty_log`, KVM logs the pages the guest writes in every slot
/// (`KVM_MEM_LOG_DIRTY_PAGES`), read with `take_kvm_dirty`; it costs a write-protection fault
/// on the first write to each page after every read of the log.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap, dirty_log: bool) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("cannot create the VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("cannot set the TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("cannot set the identity map address"))?;
    register_memory(&vm, mem, dirty_log)
        .map_err(kvm_err("cannot register guest memory with KVM"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("cannot create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("cannot create the PIT"))?;
    Ok(vm)
}

/// Registers slot `i` as region `i` of `mem`, logging dirty pages or not. Called again on a
/// registered VM it changes only the slots' flags (KVM allows that while the vCPUs run):
/// turning the log on write-protects every page, so the next `take_kvm_dirty` holds exactly
/// the pages written since.
fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    dirty_log: bool,
) -> Result<(), kvm_ioctls::Error> {
    for (slot, (guest, len, host)) in memory::host_regions(mem).into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: guest.0,
            memory_size: len,
            userspace_addr: host,
            flags: if dirty_log {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: `host` is the start of a mapping of `len` bytes owned by `mem`, which the
        // caller keeps alive for as long as the VM runs (the VM holds a clone of it).
        unsafe { vm.set_user_memory_region(region) }?;
    }
    Ok(())
}

/// Turns KVM's dirty page log on or off in every slot of a running VM (live migration logs
/// the guest's writes only while it runs, unless the VM logs them anyway).
pub fn set_dirty_log(vm: &VmFd, mem: &GuestMemoryMmap, on: bool) -> Result<(), VmError> {
    register_memory(vm, mem, on).map_err(kvm_err("cannot change the dirty log of guest memory"))
}

/// The pages KVM saw the guest write, in every slot, since the VM was created or the last
/// call, as one RAM-order page set (bit `i` of word `w` is RAM page `w * 64 + i`, as
/// everywhere in the `memory` crate); clears KVM's log. The VM must have been created with
/// `dirty_log`, or this fails on the first slot and clears nothing. Call it with the vCPUs
/// paused for an exact set; while they run, a page written during the call is reported now
/// or next time, never lost.
///
/// This is the classic `KVM_GET_DIRTY_LOG`: one ioctl per slot returns the slot's log and,
/// in the same step, clears it and write-protects those pages again. The alternative,
/// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `KVM_GET_DIRTY_LOG` then `KVM_CLEAR_DIRTY_LOG`,
/// lets a *running* guest be re-protected in small chunks (shorter mmu_lock holds during live
/// migration) and skips write-protecting all memory when logging starts; snapshots read the
/// log with the vCPUs paused, where it only adds a second ioctl per slot (and kvm-ioctls does
/// not wrap CLEAR). Measured on the development machine for a 1 GiB slot with the vCPU
/// paused, both ways cost the same: about 6 µs with nothing dirty and 6.4 µs with 128 pages
/// the guest wrote (about 28 µs the first time), so the simpler one is used.
///
/// KVM clears each slot's log as it is read, so a slot that fails after another was read
/// does not fail the call (the pages read would be lost): the failed slot counts as wholly
/// dirty instead. Only when no slot can be read (no dirty logging) is it an error.
pub fn take_kvm_dirty(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<u64>, VmError> {
    let mut set = memory::empty_page_set(mem);
    let slots = memory::host_regions(mem)
        .into_iter()
        .zip(memory::region_pages_in_ram(mem));
    let mut failed = None;
    let mut read = 0;
    for (slot, ((_, len, _), (first, pages))) in slots.enumerate() {
        match vm.get_dirty_log(slot as u32, len as usize) {
            Ok(bits) => {
                memory::or_page_set_at(&mut set, first, &bits, pages);
                read += 1;
            }
            Err(e) => {
                tracing::warn!(slot, %e, "cannot read KVM's dirty log: the slot counts as dirty");
                let all = vec![u64::MAX; pages.div_ceil(64)];
                memory::or_page_set_at(&mut set, first, &all, pages);
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if read == 0 => Err(kvm_err("cannot read KVM's dirty log")(e)),
        _ => Ok(set),
    }
}

/// The pages written since the last call — by the guest (KVM's log) or by the VMM
/// (vm-memory's bitmap) — as one RAM-order page set, clearing both: what an incremental
/// snapshot saves. After a full snapshot, call it and discard the result so that the next
/// incremental snapshot starts from there.
pub fn take_dirty(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<u64>, VmError> {
    let mut set = take_kvm_dirty(vm, mem)?;
    for (word, vmm) in set.iter_mut().zip(memory::take_vmm_dirty(mem)) {
        *word |= vmm;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_forbidden_dev_kvm_is_explained() {
        let err = |n| open_error(kvm_ioctls::Error::new(n));
        assert!(matches!(err(libc::ENOENT), VmError::KvmMissing));
        assert!(err(libc::ENOENT)
            .to_string()
            .starts_with("/dev/kvm does not exist"));
        assert!(matches!(err(libc::EACCES), VmError::KvmPermission));
        assert!(err(libc::EPERM).to_string().contains("kvm group"));
        assert!(matches!(err(libc::EIO), VmError::KvmOpen(_)));
    }

    /// A VM with dirty logging over a 5 GiB guest (two slots) and one real-mode vCPU, or
    /// `None` without `/dev/kvm` (outside CI).
    fn dirty_logging_vm() -> Option<(Kvm, VmFd, GuestMemoryMmap)> {
        if !std::path::Path::new("/dev/kvm").exists() {
            assert!(std::env::var_os("CI").is_none(), "CI needs /dev/kvm");
            return None;
        }
        let mem = memory::MemoryLayout::new(5 << 30)
            .unwrap()
            .allocate()
            .unwrap();
        let kvm = open_kvm(1).unwrap();
        let vm = create_vm(&kvm, &mem, true).unwrap();
        Some((kvm, vm, mem))
    }

    /// Runs `code` at guest address 0x1000 in real mode (cs = ds = 0) until it does `out`.
    fn run_real_mode(vm: &VmFd, mem: &GuestMemoryMmap, code: &[u8]) {
        use kvm_ioctls::VcpuExit;
        use memory::vm_memory::{Bytes, GuestAddress};
        mem.write_slice(code, GuestAddress(0x1000)).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.base = 0;
        sregs.ds.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
        // `hlt` would stay in the kernel with an in-kernel irqchip: `out` returns to us.
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(0x10, _) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }

    #[test]
    fn kvm_dirty_log_holds_exactly_the_pages_the_guest_wrote_then_nothing() {
        let Some((_kvm, vm, mem)) = dirty_logging_vm() else {
            return;
        };
        // mov byte [0x5000], 1; mov byte [0x9000], 1; out 0x10, al
        let code = [
            0xc6, 0x06, 0x00, 0x50, 0x01, 0xc6, 0x06, 0x00, 0x90, 0x01, 0xe6, 0x10,
        ];
        run_real_mode(&vm, &mem, &code);

        let dirty = take_kvm_dirty(&vm, &mem).unwrap();

        assert_eq!(dirty.len(), memory::ram_pages(&mem).div_ceil(64));
        // Not the code page at 0x1000: the VMM wrote it, the guest only read it.
        assert_eq!(memory::pages_in(&dirty).collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(memory::count_pages(&take_kvm_dirty(&vm, &mem).unwrap()), 0);
    }

    #[test]
    fn take_dirty_joins_the_guests_and_the_vmms_writes_and_clears_both() {
        use memory::vm_memory::{Bytes, GuestAddress};
        let Some((_kvm, vm, mem)) = dirty_logging_vm() else {
            return;
        };
        // mov byte [0x7000], 1; out 0x10, al
        run_real_mode(&vm, &mem, &[0xc6, 0x06, 0x00, 0x70, 0x01, 0xe6, 0x10]);
        mem.write_obj(1u8, GuestAddress((4 << 30) + 0x3000))
            .unwrap();

        let dirty = take_dirty(&vm, &mem).unwrap();

        let high = (3usize << 30) / memory::PAGE_SIZE + 3;
        // 0x1000: the VMM wrote the code.
        assert_eq!(
            memory::pages_in(&dirty).collect::<Vec<_>>(),
            vec![1, 7, high]
        );
        assert_eq!(memory::count_pages(&take_dirty(&vm, &mem).unwrap()), 0);
    }

    #[test]
    fn a_vm_without_dirty_logging_has_no_log_to_take() {
        if !std::path::Path::new("/dev/kvm").exists() {
            return;
        }
        let mem = memory::MemoryLayout::new(16 << 20)
            .unwrap()
            .allocate()
            .unwrap();
        let kvm = open_kvm(1).unwrap();
        let vm = create_vm(&kvm, &mem, false).unwrap();
        let err = take_kvm_dirty(&vm, &mem).unwrap_err();
        assert!(err.to_string().contains("dirty log"), "{err}");
    }
}
