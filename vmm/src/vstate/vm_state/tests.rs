use kvm_bindings::kvm_pit_state2;

use super::*;
use crate::vstate::test_vm::test_vm;

/// Makes the irqchips and PIT hold values a fresh VM would not have.
fn make_recognisable(vm: &VmFd) {
    let mut ioapic = get_irqchip(vm, KVM_IRQCHIP_IOAPIC, "").unwrap();
    // SAFETY: chip_id IOAPIC: the `ioapic` member is the live one.
    let state = unsafe { &mut ioapic.chip.ioapic };
    // Entry 5: masked, level-triggered, vector 0x35, to APIC 0.
    state.redirtbl[5].bits = (1 << 16) | (1 << 15) | 0x35;
    vm.set_irqchip(&ioapic).unwrap();

    let mut master = get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "").unwrap();
    // SAFETY: chip_id PIC_MASTER: the `pic` member is the live one.
    let pic = unsafe { &mut master.chip.pic };
    pic.irq_base = 0x20;
    pic.imr = 0xfb;
    vm.set_irqchip(&master).unwrap();

    let mut pit = vm.get_pit2().unwrap();
    pit.channels[0].count = 0x1234;
    pit.channels[0].mode = 2;
    pit.channels[0].rw_mode = 3;
    vm.set_pit2(&pit).unwrap();
}

/// Moment-dependent fields cleared: when each PIT count was loaded (KVM_SET_PIT2 reloads it
/// at the time of the call) and the clock, which is checked separately.
fn timeless(mut s: VmState) -> VmState {
    for ch in &mut s.pit.channels {
        ch.count_load_time = 0;
    }
    s.clock = kvm_clock_data::default();
    s
}

#[test]
fn vm_state_restored_into_a_new_vm_saves_back_equal() {
    let Some(t1) = test_vm() else { return };
    make_recognisable(&t1.vm);
    let saved = save_vm_state(&t1.vm).unwrap();
    assert_eq!(ioapic_redirection_table(&saved.ioapic)[5], 0x1_8035);
    assert_eq!(
        (saved.pic_master.irq_base, saved.pic_master.imr),
        (0x20, 0xfb)
    );
    assert_eq!(saved.pit.channels[0].count, 0x1234);

    let json = serde_json::to_string(&saved).unwrap();
    let loaded: VmState = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, saved);

    let Some(t2) = test_vm() else { return };
    restore_vm_state(&t2.vm, &loaded).unwrap();
    let again = save_vm_state(&t2.vm).unwrap();
    // The KVM clock counts on from the saved value: forward, by less than 10 s.
    let (before, after) = (saved.clock.clock, again.clock.clock);
    assert!(
        after >= before && after - before < 10_000_000_000,
        "clock {before} then {after}"
    );
    assert_eq!(timeless(again), timeless(saved));
}

#[test]
fn a_fresh_vm_state_differs_from_a_changed_one() {
    // Guards the test above against comparing two defaults.
    let Some(t1) = test_vm() else { return };
    let fresh = timeless(save_vm_state(&t1.vm).unwrap());
    make_recognisable(&t1.vm);
    let changed = timeless(save_vm_state(&t1.vm).unwrap());
    assert_ne!(fresh, changed);
    assert_ne!(fresh.pit, kvm_pit_state2::default());
}
