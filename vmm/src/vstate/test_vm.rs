//! A small VM for in-process KVM tests of the vstate modules.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VmFd};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::vcpu::{Vcpu, VcpuSetup};
use super::vm;
use crate::arch::x86_64::regs;
use crate::config::CpuTemplate;

/// Where the test guest's code is: `hlt; jmp $-3`, in a loop.
pub const ENTRY: u64 = 0x10_0000;

pub struct TestVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    /// Registered with KVM: kept alive as long as the VM.
    mem: GuestMemoryMmap,
}

/// A VM with 16 MiB, the irqchip and PIT, boot page tables and a halting loop at [`ENTRY`];
/// `None` (skip) without `/dev/kvm` outside CI.
pub fn test_vm() -> Option<TestVm> {
    let kvm = match vm::open_kvm(1) {
        Ok(kvm) => kvm,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "KVM needed in CI: {e}");
            eprintln!("skipped: {e}");
            return None;
        }
    };
    let mem = memory::MemoryLayout::new(16 << 20)
        .unwrap()
        .allocate()
        .unwrap();
    regs::write_boot_tables(&mem).unwrap();
    mem.write_slice(&[0xf4, 0xeb, 0xfd], GuestAddress(ENTRY))
        .unwrap();
    let vm = vm::create_vm(&kvm, &mem, false).unwrap();
    Some(TestVm { kvm, vm, mem })
}

impl TestVm {
    /// Puts `code` (64-bit) at [`ENTRY`] instead of the halting loop.
    pub fn set_code(&self, code: &[u8]) {
        self.mem.write_slice(code, GuestAddress(ENTRY)).unwrap();
    }

    /// vCPU `id` through the normal boot path (vCPU 0 gets the entry point).
    pub fn boot_vcpu(&self, id: u32) -> Vcpu {
        let supported = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let setup = VcpuSetup {
            supported_cpuid: &supported,
            vcpus: 2,
            template: CpuTemplate::Host,
            tsc_deadline: self.vm.check_extension(Cap::TscDeadlineTimer),
            entry: (id == 0).then_some(ENTRY),
        };
        Vcpu::new(&self.vm, id, &setup).unwrap()
    }
}
