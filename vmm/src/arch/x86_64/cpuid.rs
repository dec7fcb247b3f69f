//! Per-vCPU CPUID: KVM's supported set, with each vCPU's APIC id and the topology leaves
//! (one socket, one thread per core, one core per vCPU), the hypervisor bit, and a template
//! that can hide features.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::config::CpuTemplate;

/// Registers of one CPUID leaf.
mod bits {
    // Leaf 1 ECX.
    pub const FMA: u32 = 12;
    pub const CX16: u32 = 13;
    pub const TSC_DEADLINE: u32 = 24;
    pub const XSAVE: u32 = 26;
    pub const OSXSAVE: u32 = 27;
    pub const AVX: u32 = 28;
    pub const F16C: u32 = 29;
    pub const HYPERVISOR: u32 = 31;
    // Leaf 1 EDX.
    pub const HTT: u32 = 28;
    // Leaf 0x8000_0001 ECX.
    pub const CMP_LEGACY: u32 = 1;
    pub const XOP: u32 = 11;
    pub const FMA4: u32 = 16;
}

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// The CPU's vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Reads the vendor string from the CPUID set.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    match cpuid.as_slice().iter().find(|e| e.function == LEAF_VENDOR) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => {
            Vendor::Intel
        }
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// What a vCPU's CPUID depends on.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's APIC id (equal to its index).
    pub apic_id: u32,
    /// The number of vCPUs in the VM.
    pub vcpus: u32,
    /// Whether KVM emulates the TSC deadline timer.
    pub tsc_deadline: bool,
}

/// The number of bits an id needs to tell `n` things apart.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

/// Builds the CPUID of one vCPU from KVM's supported set.
pub fn vcpu_cpuid(
    supported: &CpuId,
    topo: VcpuTopology,
    template: CpuTemplate,
) -> Result<CpuId, vmm_sys_util::fam::Error> {
    let vendor = vendor(supported);
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .copied()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .filter(|e| !(template == CpuTemplate::Minimal && e.function == LEAF_XSAVE))
        .collect();
    let has_v2 = supported
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_TOPOLOGY_V2);
    let max_basic = supported
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .map_or(0, |e| e.eax);

    for e in entries.iter_mut() {
        patch_leaf(e, topo, vendor);
        if template == CpuTemplate::Minimal {
            minimal(e);
        }
    }
    if max_basic >= LEAF_TOPOLOGY {
        entries.extend(topology_leaf(LEAF_TOPOLOGY, topo));
    }
    if has_v2 {
        entries.extend(topology_leaf(LEAF_TOPOLOGY_V2, topo));
    }
    CpuId::from_entries(&entries)
}

fn patch_leaf(e: &mut kvm_cpuid_entry2, topo: VcpuTopology, vendor: Vendor) {
    let n = topo.vcpus;
    match e.function {
        LEAF_FEATURES => {
            // EBX: initial APIC id in 31:24, addressable logical processors in 23:16.
            let logical = (1u32 << id_bits(n)).min(255);
            e.ebx = (e.ebx & 0x0000_ffff) | (topo.apic_id << 24) | (logical << 16);
            set_bit(&mut e.ecx, bits::HYPERVISOR, true);
            set_bit(&mut e.ecx, bits::TSC_DEADLINE, topo.tsc_deadline);
            set_bit(&mut e.edx, bits::HTT, n > 1);
        }
        LEAF_CACHE_PARAMS if vendor == Vendor::Intel => {
            // EAX 31:26: cores per package - 1; threads sharing the cache are left as KVM set.
            let cores = (1u32 << id_bits(n)).min(64);
            e.eax = (e.eax & 0x03ff_ffff) | ((cores - 1) << 26);
        }
        LEAF_AMD_FEATURES if vendor == Vendor::Amd => {
            set_bit(&mut e.ecx, bits::CMP_LEGACY, n > 1);
        }
        LEAF_AMD_SIZES if vendor == Vendor::Amd => {
            // ECX: ApicIdSize in 15:12, number of cores - 1 in 7:0.
            e.ecx = (e.ecx & !0xf0ff) | (id_bits(n) << 12) | ((n - 1) & 0xff);
        }
        LEAF_AMD_TOPOLOGY if vendor == Vendor::Amd => {
            // One thread per core, one node: extended APIC id, core id, node id 0.
            e.eax = topo.apic_id;
            e.ebx = topo.apic_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Leaf 0xB (or 0x1F): level 0 is SMT with one thread, level 1 is the core level with every
/// vCPU, level 2 ends the list. EDX is the x2APIC id at every level.
fn topology_leaf(function: u32, topo: VcpuTopology) -> [kvm_cpuid_entry2; 3] {
    const LEVEL_SMT: u32 = 1;
    const LEVEL_CORE: u32 = 2;
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: ecx | index,
        edx: topo.apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_SMT << 8),
        entry(1, id_bits(topo.vcpus), topo.vcpus, LEVEL_CORE << 8),
        entry(2, 0, 0, 0),
    ]
}

/// Hides what `minimal` must: CMPXCHG16B, XSAVE and everything built on it (AVX, AVX2,
/// AVX-512, AMX, FMA, F16C), and AMD's XOP/FMA4.
fn minimal(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (LEAF_FEATURES, _) => {
            for b in [
                bits::FMA,
                bits::CX16,
                bits::XSAVE,
                bits::OSXSAVE,
                bits::AVX,
                bits::F16C,
            ] {
                set_bit(&mut e.ecx, b, false);
            }
        }
        (LEAF_EXT_FEATURES, 0) => {
            // EBX: AVX2, AVX512F, DQ, IFMA, PF, ER, CD, BW, VL.
            e.ebx &= !((1 << 5)
                | (1 << 16)
                | (1 << 17)
                | (1 << 21)
                | (1 << 26)
                | (1 << 27)
                | (1 << 28)
                | (1 << 30)
                | (1 << 31));
            // ECX: AVX512_VBMI, VBMI2, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ.
            e.ecx &=
                !((1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14));
            // EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8.
            e.edx &=
                !((1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25));
        }
        (LEAF_EXT_FEATURES, 1) => {
            // EAX: AVX_VNNI, AVX512_BF16.
            e.eax &= !((1 << 4) | (1 << 5));
        }
        (LEAF_AMD_FEATURES, _) => {
            set_bit(&mut e.ecx, bits::XOP, false);
            set_bit(&mut e.ecx, bits::FMA4, false);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn amd_host() -> CpuId {
        let mut vendor = leaf(0, 0);
        (vendor.eax, vendor.ebx, vendor.edx, vendor.ecx) =
            (0x10, 0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let mut f1 = leaf(1, 0);
        f1.ecx = (1 << bits::CX16) | (1 << bits::XSAVE) | (1 << bits::AVX) | 1;
        f1.ebx = 0x0008_0800;
        let mut f7 = leaf(7, 0);
        f7.ebx = (1 << 5) | (1 << 3);
        CpuId::from_entries(&[
            vendor,
            f1,
            f7,
            leaf(0xd, 0),
            leaf(0xb, 0),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
            leaf(0x4000_0000, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn topo(apic_id: u32, vcpus: u32) -> VcpuTopology {
        VcpuTopology {
            apic_id,
            vcpus,
            tsc_deadline: true,
        }
    }

    #[test]
    fn each_vcpu_sees_its_apic_id() {
        let host = amd_host();
        let c = vcpu_cpuid(&host, topo(5, 16), CpuTemplate::Host).unwrap();
        let f1 = find(&c, 1, 0);
        assert_eq!(f1.ebx >> 24, 5);
        assert_eq!((f1.ebx >> 16) & 0xff, 16);
        assert_eq!(f1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(f1.ecx & (1 << bits::HYPERVISOR), 0);
        assert_ne!(f1.edx & (1 << bits::HTT), 0);
        assert_eq!(find(&c, 0xb, 0).edx, 5);
        assert_eq!(find(&c, 0xb, 1).edx, 5);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 5);
    }

    #[test]
    fn topology_leaf_has_smt_then_core_levels() {
        let c = vcpu_cpuid(&amd_host(), topo(2, 6), CpuTemplate::Host).unwrap();
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        assert_eq!((core.eax, core.ebx, core.ecx), (3, 6, 0x201));
        assert_eq!((end.ebx, end.ecx), (0, 2));
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
        let sizes = find(&c, 0x8000_0008, 0);
        assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (5, 3));
    }

    #[test]
    fn one_vcpu_has_no_htt() {
        let c = vcpu_cpuid(&amd_host(), topo(0, 1), CpuTemplate::Host).unwrap();
        assert_eq!(find(&c, 1, 0).edx & (1 << bits::HTT), 0);
        assert_eq!(find(&c, 0xb, 1).eax, 0);
    }

    #[test]
    fn minimal_hides_cx16_xsave_and_avx() {
        let host = amd_host();
        let c = vcpu_cpuid(&host, topo(0, 1), CpuTemplate::Minimal).unwrap();
        let f1 = find(&c, 1, 0);
        assert_eq!(
            f1.ecx & ((1 << bits::CX16) | (1 << bits::XSAVE) | (1 << bits::AVX)),
            0
        );
        assert_eq!(f1.ecx & 1, 1, "SSE3 kept");
        let f7 = find(&c, 7, 0);
        assert_eq!(f7.ebx, 1 << 3, "AVX2 hidden, BMI1 kept");
        assert!(!c.as_slice().iter().any(|e| e.function == 0xd));
        let h = vcpu_cpuid(&host, topo(0, 1), CpuTemplate::Host).unwrap();
        assert_ne!(find(&h, 1, 0).ecx & (1 << bits::CX16), 0);
    }

    #[test]
    fn id_bits_counts_bits_to_tell_ids_apart() {
        assert_eq!(
            [1, 2, 3, 4, 5, 16, 17, 64, 254].map(id_bits),
            [0, 1, 2, 2, 3, 4, 5, 6, 8]
        );
    }
}
