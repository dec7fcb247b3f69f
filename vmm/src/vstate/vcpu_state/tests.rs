use kvm_bindings::{kvm_lapic_state, kvm_msr_entry, Msrs};

use super::*;
use crate::vstate::msrs::MSR_IA32_TSC;
use crate::vstate::test_vm::test_vm;
use crate::vstate::vcpu::Vcpu;

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const APIC_TPR: usize = 0x80;
const APIC_LVT_TIMER: usize = 0x320;
const APIC_TIMER_DIVIDE: usize = 0x3e0;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

fn msr(state: &VcpuState, index: u32) -> Option<u64> {
    state
        .msrs
        .iter()
        .find(|m| m.index == index)
        .map(|m| m.value)
}

/// Puts values a fresh vCPU would not have into every kind of state.
fn make_recognisable(fd: &VcpuFd) {
    let mut regs = fd.get_regs().unwrap();
    regs.rax = 0x1111_2222_3333_4444;
    regs.r15 = 0xfeed_f00d;
    fd.set_regs(&regs).unwrap();
    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            data: 0xffff_8880_1234_5000,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: 0x10_0000_0000,
            ..Default::default()
        },
    ])
    .unwrap();
    assert_eq!(fd.set_msrs(&msrs).unwrap(), 2);
    let mut lapic = fd.get_lapic().unwrap();
    set_lapic_reg(&mut lapic, APIC_TPR, 0x20);
    // Masked, periodic, vector 0x31: a timer that never fires.
    set_lapic_reg(&mut lapic, APIC_LVT_TIMER, 0x0003_0031);
    set_lapic_reg(&mut lapic, APIC_TIMER_DIVIDE, 0xb);
    fd.set_lapic(&lapic).unwrap();
    let mut events = fd.get_vcpu_events().unwrap();
    events.nmi.masked = 1;
    // A #GP(0x18) about to be delivered.
    events.exception.injected = 1;
    events.exception.nr = 13;
    events.exception.has_error_code = 1;
    events.exception.error_code = 0x18;
    fd.set_vcpu_events(&events).unwrap();
    let mut dregs = fd.get_debug_regs().unwrap();
    dregs.db[0] = 0x40_1000;
    fd.set_debug_regs(&dregs).unwrap();
}

/// The TSC keeps counting between two saves: checks it moved forward by less than `secs`
/// seconds and returns the state with it equal to `before`'s, for comparing the rest.
fn without_tsc_drift(before: &VcpuState, mut after: VcpuState, secs: u64) -> VcpuState {
    let (b, a) = (
        msr(before, MSR_IA32_TSC).unwrap(),
        msr(&after, MSR_IA32_TSC).unwrap(),
    );
    let khz = u64::from(before.tsc_khz.unwrap_or(10_000_000));
    assert!(
        a >= b && a - b < secs * khz * 1000,
        "TSC {b:#x} then {a:#x}"
    );
    for m in &mut after.msrs {
        if m.index == MSR_IA32_TSC {
            m.value = b;
        }
    }
    after
}

#[test]
fn vcpu_state_restored_into_a_new_vm_saves_back_equal() {
    let Some(t1) = test_vm() else { return };
    let vcpu = t1.boot_vcpu(0);
    make_recognisable(&vcpu.fd_for_test());
    let saved = vcpu.save_state().unwrap();

    assert_eq!(saved.regs.rax, 0x1111_2222_3333_4444);
    assert_eq!(saved.regs.rip, crate::vstate::test_vm::ENTRY);
    assert_eq!(msr(&saved, MSR_KERNEL_GS_BASE), Some(0xffff_8880_1234_5000));
    assert!(msr(&saved, MSR_IA32_TSC).unwrap() >= 0x10_0000_0000);
    assert_eq!(lapic_reg(&saved.lapic, APIC_TPR), 0x20);
    assert_eq!(saved.vcpu_events.nmi.masked, 1);
    assert_eq!(
        (
            saved.vcpu_events.exception.injected,
            saved.vcpu_events.exception.nr
        ),
        (1, 13)
    );
    assert_eq!(saved.debugregs.db[0], 0x40_1000);
    assert!(!saved.cpuid.is_empty());

    // Through JSON, as a state file would carry it.
    let json = serde_json::to_string(&saved).unwrap();
    let loaded: VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, saved);

    let Some(t2) = test_vm() else { return };
    let restored = Vcpu::restore(&t2.vm, 0, &loaded).unwrap();
    let again = restored.save_state().unwrap();
    assert_eq!(without_tsc_drift(&saved, again, 10), saved);
}

#[test]
fn every_listed_msr_that_reads_back_restores() {
    let Some(t1) = test_vm() else { return };
    let saved = t1.boot_vcpu(0).save_state().unwrap();
    let listed = msrs::msrs_to_save(0).unwrap();
    assert!(saved.msrs.len() <= listed.len());
    assert!(msr(&saved, MSR_IA32_TSC).is_some());
    let Some(t2) = test_vm() else { return };
    Vcpu::restore(&t2.vm, 0, &saved).unwrap();
}

#[test]
fn oversized_or_malformed_state_is_refused_before_kvm_sees_it() {
    let Some(t) = test_vm() else { return };
    let good = t.boot_vcpu(0).save_state().unwrap();
    let refused = |bad: VcpuState, id| match Vcpu::restore(&t.vm, id, &bad) {
        Err(VcpuError::State { id: got, reason }) => {
            assert_eq!(got, id);
            reason
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("accepted"),
    };

    let mut bad = good.clone();
    bad.msrs = vec![
        MsrValue {
            index: MSR_KERNEL_GS_BASE,
            value: 0
        };
        1_000_000
    ];
    assert!(refused(bad, 1).contains("1000000 MSRs"));

    let mut bad = good.clone();
    bad.cpuid = vec![good.cpuid[0]; KVM_MAX_CPUID_ENTRIES + 1];
    assert!(refused(bad, 2).contains("257 CPUID entries"));

    if good.xsave.is_some() {
        for words in [5, 1023, 1_000_000] {
            let mut bad = good.clone();
            bad.xsave = Some(vec![0; words]);
            assert!(refused(bad, 3).contains("XSAVE area"));
        }
    }

    let mut bad = good.clone();
    bad.xcrs = Some(kvm_xcrs {
        nr_xcrs: 17,
        ..Default::default()
    });
    if VcpuCaps::probe(&t.vm).xcrs {
        assert!(refused(bad, 3).contains("17 XCRs"));
    }
    // Refused before the vCPU was created: its id is still free.
    Vcpu::restore(&t.vm, 3, &good).unwrap();
}

#[test]
fn an_msr_kvm_refuses_is_named() {
    let Some(t) = test_vm() else { return };
    let mut bad = t.boot_vcpu(0).save_state().unwrap();
    // An index in no MSR range KVM knows.
    bad.msrs.push(MsrValue {
        index: 0x2_0000,
        value: 7,
    });
    match Vcpu::restore(&t.vm, 1, &bad) {
        Err(
            e @ VcpuError::MsrRefused {
                id: 1,
                index: 0x2_0000,
                ..
            },
        ) => {
            assert!(e.to_string().contains("MSR 0x20000"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn a_state_file_with_a_truncated_lapic_does_not_load() {
    let Some(t) = test_vm() else { return };
    let good = serde_json::to_value(t.boot_vcpu(0).save_state().unwrap()).unwrap();
    let mut bad = good.clone();
    bad["lapic"] = serde_json::Value::from(vec![0u8; 1000]);
    let err = serde_json::from_value::<VcpuState>(bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kvm_lapic_state is 1024 bytes, the state holds 1000"),
        "{err}"
    );
    let mut bad = good;
    bad["xcrs"] = serde_json::Value::from(vec![0u8; 10]);
    let err = serde_json::from_value::<VcpuState>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kvm_xcrs is"), "{err}");
}

#[test]
fn an_armed_tsc_deadline_timer_survives_restore() {
    const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
    let Some(t1) = test_vm() else { return };
    if !t1.vm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        eprintln!("skipped: no TSC deadline timer");
        return;
    }
    let vcpu = t1.boot_vcpu(0);
    {
        let fd = vcpu.fd_for_test();
        let mut lapic = fd.get_lapic().unwrap();
        // TSC-deadline mode (bits 18:17 = 10), masked, vector 0x32.
        set_lapic_reg(&mut lapic, APIC_LVT_TIMER, (2 << 17) | (1 << 16) | 0x32);
        fd.set_lapic(&lapic).unwrap();
        let far = 1u64 << 60;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC_DEADLINE,
            data: far,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(fd.set_msrs(&msrs).unwrap(), 1);
    }
    let saved = vcpu.save_state().unwrap();
    assert_eq!(msr(&saved, MSR_IA32_TSC_DEADLINE), Some(1 << 60));

    // KVM only takes the deadline once the LAPIC timer is in deadline mode: restore sets the
    // LAPIC before the MSRs.
    let Some(t2) = test_vm() else { return };
    let again = Vcpu::restore(&t2.vm, 0, &saved)
        .unwrap()
        .save_state()
        .unwrap();
    assert_eq!(msr(&again, MSR_IA32_TSC_DEADLINE), Some(1 << 60));
}

#[test]
fn an_application_processor_waiting_for_sipi_restores_waiting() {
    let Some(t1) = test_vm() else { return };
    let bsp = t1.boot_vcpu(0);
    let saved = t1.boot_vcpu(1).save_state().unwrap();
    assert_eq!(
        saved.mp_state.mp_state,
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED
    );
    assert_eq!(
        saved.lapic.regs[0x23], 1,
        "APIC id 1 in bits 31:24 of the ID register"
    );

    let Some(t2) = test_vm() else { return };
    Vcpu::restore(&t2.vm, 0, &bsp.save_state().unwrap()).unwrap();
    let again = Vcpu::restore(&t2.vm, 1, &saved)
        .unwrap()
        .save_state()
        .unwrap();
    assert_eq!(without_tsc_drift(&saved, again, 10), saved);
}
