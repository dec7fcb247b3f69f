//! The KVM VM: opening `/dev/kvm`, checking capabilities, memory slots, the in-kernel
//! irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
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
/// and the PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("cannot create the VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("cannot set the TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("cannot set the identity map address"))?;
    for (slot, (guest, len, host)) in memory::host_regions(mem).into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: guest.0,
            memory_size: len,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: `host` is the start of a mapping of `len` bytes owned by `mem`, which the
        // caller keeps alive for as long as the VM runs (the VM holds a clone of it).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("cannot register guest memory with KVM"))?;
    }
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
}
