//! Which MSRs a vCPU snapshot holds, and reading and writing them.
//!
//! The list starts from `KVM_GET_MSR_INDEX_LIST` (every MSR KVM saves and restores, including
//! the TSC and the kvmclock MSRs), minus MSRs known not to restore (below). Reading then keeps
//! exactly what KVM reads back: `KVM_GET_MSRS` stops at the first MSR it cannot read (a PMU or
//! VMX MSR this vCPU's CPUID does not expose, for example); that one is dropped and reading
//! continues after it. On restore every saved MSR must be accepted.

use std::sync::OnceLock;

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::vcpu::VcpuError;

/// The most MSRs a saved vCPU may hold; KVM's list is a few hundred at most.
pub const MAX_SAVED_MSRS: usize = 1024;

/// The most MSRs one KVM_GET_MSRS / KVM_SET_MSRS takes: KVM refuses `nmsrs >= MAX_IO_MSRS`
/// (256) with E2BIG, one less than kvm-bindings' FAM maximum.
const MSRS_PER_IOCTL: usize = KVM_MAX_MSR_ENTRIES - 1;

/// The time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MCG_CTL: u32 = 0x17b;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// AMD OS-visible workaround MSRs: KVM lists them but a guest cannot change them and SET
/// refuses values the host did not report (Firecracker leaves them out too).
const MSR_AMD64_OSVW_ID_LENGTH: u32 = 0xc001_0140;
const MSR_AMD64_OSVW_STATUS: u32 = 0xc001_0141;

/// One saved MSR.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrValue {
    pub index: u32,
    pub value: u64,
}

/// Whether an MSR from KVM's list belongs in a snapshot. Left out, as Firecracker does:
/// IA32_MCG_CTL (Linux does not export it for restore; SET fails unless MCG_CAP says so) and
/// the AMD OSVW MSRs.
pub fn should_save(index: u32) -> bool {
    !matches!(
        index,
        MSR_IA32_MCG_CTL | MSR_AMD64_OSVW_ID_LENGTH | MSR_AMD64_OSVW_STATUS
    )
}

static HOST_LIST: OnceLock<Vec<u32>> = OnceLock::new();

/// KVM's MSR index list, filtered by [`should_save`], with the TSC deadline after the TSC (it
/// is relative to it). Read once per process: it is a property of the host's KVM.
pub fn msrs_to_save(id: u32) -> Result<&'static [u32], VcpuError> {
    if let Some(list) = HOST_LIST.get() {
        return Ok(list);
    }
    let kvm_err = |source| VcpuError::Kvm {
        id,
        what: "KVM_GET_MSR_INDEX_LIST",
        source,
    };
    let kvm = Kvm::new().map_err(kvm_err)?;
    let list = kvm.get_msr_index_list().map_err(kvm_err)?;
    let mut list: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| should_save(i))
        .collect();
    // Stable: everything else keeps KVM's order.
    list.sort_by_key(|&i| i == MSR_IA32_TSC_DEADLINE);
    Ok(HOST_LIST.get_or_init(|| list))
}

fn entries(indices: &[u32]) -> Vec<kvm_msr_entry> {
    indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect()
}

/// Reads `indices`, dropping those KVM refuses to read.
pub fn read(fd: &VcpuFd, id: u32, indices: &[u32]) -> Result<Vec<MsrValue>, VcpuError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSRS_PER_IOCTL)];
        let mut msrs = Msrs::from_entries(&entries(chunk)).map_err(|e| VcpuError::State {
            id,
            reason: format!("cannot build the MSR list: {e:?}"),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(|source| VcpuError::Kvm {
            id,
            what: "KVM_GET_MSRS",
            source,
        })?;
        let read = read.min(chunk.len());
        out.extend(msrs.as_slice()[..read].iter().map(|e| MsrValue {
            index: e.index,
            value: e.data,
        }));
        if read < chunk.len() {
            tracing::debug!(
                id,
                msr = format_args!("{:#x}", chunk[read]),
                "MSR not readable, not saved"
            );
            rest = &rest[read + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

/// Writes every MSR in `saved`; an MSR KVM refuses is an error naming it.
pub fn write(fd: &VcpuFd, id: u32, saved: &[MsrValue]) -> Result<(), VcpuError> {
    if saved.len() > MAX_SAVED_MSRS {
        return Err(VcpuError::State {
            id,
            reason: format!(
                "{} MSRs saved, at most {MAX_SAVED_MSRS} allowed",
                saved.len()
            ),
        });
    }
    for chunk in saved.chunks(MSRS_PER_IOCTL) {
        let list: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.value,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&list).map_err(|e| VcpuError::State {
            id,
            reason: format!("cannot build the MSR list: {e:?}"),
        })?;
        let set = fd.set_msrs(&msrs).map_err(|source| VcpuError::Kvm {
            id,
            what: "KVM_SET_MSRS",
            source,
        })?;
        if let Some(refused) = chunk.get(set) {
            return Err(VcpuError::MsrRefused {
                id,
                index: refused.index,
                value: refused.value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_check_control_and_osvw_are_not_saved() {
        assert!(!should_save(MSR_IA32_MCG_CTL));
        assert!(!should_save(MSR_AMD64_OSVW_STATUS));
        assert!(should_save(MSR_IA32_TSC));
        assert!(should_save(0x4b56_4d01)); // kvmclock system time
    }

    #[test]
    fn an_unreadable_msr_is_dropped_and_reading_goes_on() {
        let Some(t) = crate::vstate::test_vm::test_vm() else {
            return;
        };
        let vcpu = t.boot_vcpu(0);
        let fd = vcpu.fd_for_test();
        // 0x2_0000 is no MSR: KVM_GET_MSRS stops there.
        let got = read(&fd, 0, &[MSR_IA32_TSC, 0x2_0000, 0x2_0001, 0xc000_0102]).unwrap();
        let indices: Vec<u32> = got.iter().map(|m| m.index).collect();
        assert_eq!(indices, [MSR_IA32_TSC, 0xc000_0102]);
    }

    #[test]
    fn more_msrs_than_one_ioctl_takes_are_read_and_written_in_chunks() {
        let Some(t) = crate::vstate::test_vm::test_vm() else {
            return;
        };
        let vcpu = t.boot_vcpu(0);
        let fd = vcpu.fd_for_test();
        let many = vec![0xc000_0102; 2 * MSRS_PER_IOCTL + 5];
        let got = read(&fd, 0, &many).unwrap();
        assert_eq!(got.len(), many.len());
        write(&fd, 0, &got).unwrap();
    }
}
