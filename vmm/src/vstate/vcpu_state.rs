//! One vCPU's KVM state: what is saved, and the order it is read and written in.
//!
//! kvm-bindings structs are kept as they are and serialized as their exact bytes (see
//! [`super::raw`]); `kvm_fpu` (which kvm-bindings gives no byte layout for), CPUID entries
//! and MSRs are plain structs. State the host's KVM does not have (XSAVE, XCRS, TSC
//! frequency) is `None`.
//!
//! Nested-virtualization state (`KVM_GET_NESTED_STATE`) is not saved: this development host's
//! KVM lacks `KVM_CAP_NESTED_STATE`, so its save and restore order could not be tested. Where
//! the capability exists and a guest has VMX/SVM in use (KVM reports more than the header),
//! saving fails with [`VcpuError::NestedState`] rather than leaving it out silently.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, KvmNestedStateBuffer, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::msrs::{self, MsrValue};
use super::raw;
use super::vcpu::VcpuError;

/// The legacy XSAVE region: 4 KiB as 32-bit words.
const XSAVE_REGION_WORDS: usize = 1024;

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VcpuState {
    #[serde(with = "raw")]
    pub regs: kvm_regs,
    #[serde(with = "raw")]
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// The XSAVE area as 32-bit words: 1024 (`KVM_GET_XSAVE`), or more when KVM reports a
    /// larger size (`KVM_CAP_XSAVE2`). `None` when KVM lacks XSAVE.
    pub xsave: Option<Vec<u32>>,
    /// `None` when KVM lacks XCRS.
    #[serde(with = "raw::option")]
    pub xcrs: Option<kvm_xcrs>,
    /// See [`super::msrs`] for which MSRs.
    pub msrs: Vec<MsrValue>,
    #[serde(with = "raw")]
    pub lapic: kvm_lapic_state,
    #[serde(with = "raw")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "raw")]
    pub vcpu_events: kvm_vcpu_events,
    #[serde(with = "raw")]
    pub debugregs: kvm_debugregs,
    pub cpuid: Vec<CpuidEntry>,
    /// The guest TSC frequency; `None` when KVM cannot report it.
    pub tsc_khz: Option<u32>,
}

/// `kvm_fpu`, field for field.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// One CPUID leaf as KVM holds it (`kvm_cpuid_entry2` without padding).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// The optional vCPU state this host's KVM has, probed once per VM with `KVM_CHECK_EXTENSION`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuCaps {
    pub xsave: bool,
    /// Words past the legacy 4 KiB region that `KVM_CAP_XSAVE2` asks for (0 without it).
    pub xsave_extra_words: usize,
    pub xcrs: bool,
    pub get_tsc_khz: bool,
    pub tsc_control: bool,
    pub nested_state: bool,
}

impl VcpuCaps {
    pub fn probe(vm: &VmFd) -> Self {
        let xsave2_bytes = usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        Self {
            xsave: vm.check_extension(Cap::Xsave),
            xsave_extra_words: xsave2_bytes
                .saturating_sub(std::mem::size_of::<kvm_xsave>())
                .div_ceil(4),
            xcrs: vm.check_extension(Cap::Xcrs),
            get_tsc_khz: vm.check_extension(Cap::GetTscKhz),
            tsc_control: vm.check_extension(Cap::TscControl),
            nested_state: vm.check_extension(Cap::NestedState),
        }
    }

    fn xsave_words(&self) -> usize {
        XSAVE_REGION_WORDS + self.xsave_extra_words
    }
}

fn kvm(id: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm { id, what, source }
}

fn invalid(id: u32, reason: String) -> VcpuError {
    VcpuError::State { id, reason }
}

/// Reads vCPU `id`'s state. The vCPU must be out of `KVM_RUN`.
pub fn save(fd: &VcpuFd, id: u32, caps: &VcpuCaps) -> Result<VcpuState, VcpuError> {
    let mp_state = fd.get_mp_state().map_err(kvm(id, "KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm(id, "KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm(id, "KVM_GET_SREGS"))?;
    let fpu = FpuState::from(&fd.get_fpu().map_err(kvm(id, "KVM_GET_FPU"))?);
    let xsave = if caps.xsave {
        Some(save_xsave(fd, id, caps)?)
    } else {
        None
    };
    let xcrs = if caps.xcrs {
        Some(fd.get_xcrs().map_err(kvm(id, "KVM_GET_XCRS"))?)
    } else {
        None
    };
    let debugregs = fd.get_debug_regs().map_err(kvm(id, "KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm(id, "KVM_GET_LAPIC"))?;
    let tsc_khz = if caps.get_tsc_khz {
        Some(fd.get_tsc_khz().map_err(kvm(id, "KVM_GET_TSC_KHZ"))?)
    } else {
        None
    };
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm(id, "KVM_GET_CPUID2"))?;
    let msrs = msrs::read(fd, id, msrs::msrs_to_save(id)?)?;
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(kvm(id, "KVM_GET_VCPU_EVENTS"))?;
    if caps.nested_state {
        let mut nested = KvmNestedStateBuffer::empty();
        if fd
            .nested_state(&mut nested)
            .map_err(kvm(id, "KVM_GET_NESTED_STATE"))?
            .is_some()
        {
            return Err(VcpuError::NestedState { id });
        }
    }
    Ok(VcpuState {
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        msrs,
        lapic,
        mp_state,
        vcpu_events,
        debugregs,
        cpuid: cpuid.as_slice().iter().map(CpuidEntry::from).collect(),
        tsc_khz,
    })
}

fn save_xsave(fd: &VcpuFd, id: u32, caps: &VcpuCaps) -> Result<Vec<u32>, VcpuError> {
    if caps.xsave_extra_words == 0 {
        let xsave = fd.get_xsave().map_err(kvm(id, "KVM_GET_XSAVE"))?;
        return Ok(xsave.region.to_vec());
    }
    let mut xsave = Xsave::new(caps.xsave_extra_words)
        .map_err(|e| invalid(id, format!("cannot allocate the XSAVE area: {e:?}")))?;
    // SAFETY: the buffer holds 4 KiB plus the words past it that KVM_CAP_XSAVE2 reported for
    // this VM, so KVM writes within it; petrel enables no XSTATE feature after the probe.
    unsafe { fd.get_xsave2(&mut xsave) }.map_err(kvm(id, "KVM_GET_XSAVE2"))?;
    let fam = xsave.as_fam_struct_ref();
    let mut words = fam.xsave.region.to_vec();
    words.extend_from_slice(xsave.as_slice());
    Ok(words)
}

/// Checks what can be checked before touching KVM: sizes and counts, and that the host has
/// what the state needs.
pub fn validate(state: &VcpuState, id: u32, caps: &VcpuCaps) -> Result<(), VcpuError> {
    if state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(invalid(
            id,
            format!(
                "{} CPUID entries saved, KVM takes at most {KVM_MAX_CPUID_ENTRIES}",
                state.cpuid.len()
            ),
        ));
    }
    if state.msrs.len() > msrs::MAX_SAVED_MSRS {
        return Err(invalid(
            id,
            format!(
                "{} MSRs saved, at most {} allowed",
                state.msrs.len(),
                msrs::MAX_SAVED_MSRS
            ),
        ));
    }
    if let Some(words) = &state.xsave {
        if !caps.xsave {
            return Err(VcpuError::MissingCap { id, cap: "XSAVE" });
        }
        let max = caps.xsave_words();
        if words.len() < XSAVE_REGION_WORDS || words.len() > max {
            return Err(invalid(
                id,
                format!(
                    "the XSAVE area is {} bytes, this host takes {} to {} bytes",
                    words.len() * 4,
                    XSAVE_REGION_WORDS * 4,
                    max * 4
                ),
            ));
        }
    }
    if let Some(xcrs) = &state.xcrs {
        if !caps.xcrs {
            return Err(VcpuError::MissingCap { id, cap: "XCRS" });
        }
        if xcrs.nr_xcrs as usize > xcrs.xcrs.len() {
            return Err(invalid(
                id,
                format!("{} XCRs saved, at most {}", xcrs.nr_xcrs, xcrs.xcrs.len()),
            ));
        }
    }
    Ok(())
}

/// Writes a saved state into a fresh vCPU, in the order KVM needs (QEMU's and Firecracker's):
/// the TSC frequency and CPUID first (other ioctls depend on the features it shows); regs
/// before vCPU events (SET_REGS may clear a pending exception the events restore); sregs
/// before the LAPIC (sregs restore the APIC base); the LAPIC before the MSRs (the TSC deadline
/// MSR only takes when the LAPIC timer is in deadline mode).
pub fn restore(fd: &VcpuFd, id: u32, caps: &VcpuCaps, state: &VcpuState) -> Result<(), VcpuError> {
    validate(state, id, caps)?;
    if let Some(khz) = state.tsc_khz {
        restore_tsc_khz(fd, id, caps, khz)?;
    }
    let entries: Vec<kvm_cpuid_entry2> = state.cpuid.iter().map(Into::into).collect();
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|e| invalid(id, format!("cannot build the CPUID: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(kvm(id, "KVM_SET_CPUID2"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm(id, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(kvm(id, "KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm(id, "KVM_SET_SREGS"))?;
    fd.set_fpu(&(&state.fpu).into())
        .map_err(kvm(id, "KVM_SET_FPU"))?;
    if let Some(words) = &state.xsave {
        restore_xsave(fd, id, caps, words)?;
    }
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(kvm(id, "KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm(id, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm(id, "KVM_SET_LAPIC"))?;
    msrs::write(fd, id, &state.msrs)?;
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm(id, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn restore_tsc_khz(fd: &VcpuFd, id: u32, caps: &VcpuCaps, khz: u32) -> Result<(), VcpuError> {
    let current = if caps.get_tsc_khz {
        fd.get_tsc_khz().ok()
    } else {
        None
    };
    if current == Some(khz) {
        return Ok(());
    }
    if caps.tsc_control {
        fd.set_tsc_khz(khz).map_err(kvm(id, "KVM_SET_TSC_KHZ"))
    } else {
        tracing::warn!(
            id,
            saved_khz = khz,
            host_khz = ?current,
            "KVM cannot scale the TSC: the guest's TSC runs at this host's frequency"
        );
        Ok(())
    }
}

fn restore_xsave(fd: &VcpuFd, id: u32, caps: &VcpuCaps, words: &[u32]) -> Result<(), VcpuError> {
    // `validate` checked 1024 <= len <= caps.xsave_words(); a shorter area than this host's
    // is padded with zeros (components beyond it are in their init state, XSTATE_BV says so).
    let mut xsave = Xsave::new(caps.xsave_extra_words)
        .map_err(|e| invalid(id, format!("cannot allocate the XSAVE area: {e:?}")))?;
    let (region, extra) = words.split_at(XSAVE_REGION_WORDS.min(words.len()));
    // SAFETY: the FAM was allocated with `xsave_extra_words` entries and its length says so;
    // only the plain `region` array of the header is written here.
    let header = unsafe { xsave.as_mut_fam_struct() };
    for (to, from) in header.xsave.region.iter_mut().zip(region) {
        *to = *from;
    }
    for (to, from) in xsave.as_mut_slice().iter_mut().zip(extra) {
        *to = *from;
    }
    // SAFETY: the buffer holds 4 KiB plus the words past it that KVM_CAP_XSAVE2 reported for
    // this VM (none without XSAVE2, when KVM reads exactly 4 KiB), so KVM reads within it.
    unsafe { fd.set_xsave2(&xsave) }.map_err(kvm(id, "KVM_SET_XSAVE"))
}

#[cfg(test)]
mod tests;
