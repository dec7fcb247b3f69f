//! The VM-wide KVM state: the in-kernel PICs and IOAPIC, the PIT and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_ioapic_state, kvm_irqchip, kvm_pic_state, kvm_pit_state2,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use zerocopy::IntoBytes;

use super::raw;
use super::vm::VmError;

/// Everything KVM holds for the VM besides memory and vCPUs.
#[derive(Serialize, Deserialize, Clone)]
pub struct VmState {
    #[serde(with = "raw")]
    pub pic_master: kvm_pic_state,
    #[serde(with = "raw")]
    pub pic_slave: kvm_pic_state,
    #[serde(with = "raw")]
    pub ioapic: kvm_ioapic_state,
    #[serde(with = "raw")]
    pub pit: kvm_pit_state2,
    #[serde(with = "raw")]
    pub clock: kvm_clock_data,
}

// kvm_ioapic_state holds a union, so bindgen gives it neither PartialEq nor Debug: compare
// and show the raw bytes, which is what is saved.
impl PartialEq for VmState {
    fn eq(&self, other: &Self) -> bool {
        self.pic_master == other.pic_master
            && self.pic_slave == other.pic_slave
            && self.ioapic.as_bytes() == other.ioapic.as_bytes()
            && self.pit == other.pit
            && self.clock == other.clock
    }
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("pic_master", &self.pic_master)
            .field("pic_slave", &self.pic_slave)
            .field("ioapic_id", &self.ioapic.id)
            .field("ioapic_redirtbl", &ioapic_redirection_table(&self.ioapic))
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish()
    }
}

/// The IOAPIC's 24 redirection entries as 64-bit values.
pub fn ioapic_redirection_table(ioapic: &kvm_ioapic_state) -> Vec<u64> {
    ioapic
        .redirtbl
        .iter()
        .map(|e| {
            // SAFETY: both members of the union are 8 bytes of plain data; `bits` views all of
            // them.
            unsafe { e.bits }
        })
        .collect()
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn get_irqchip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm(what))?;
    Ok(chip)
}

/// Reads the VM's state. The vCPUs must be out of `KVM_RUN` (the VM paused).
pub fn save_vm_state(vm: &VmFd) -> Result<VmState, VmError> {
    let master = get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?;
    let slave = get_irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?;
    let ioapic = get_irqchip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?;
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    Ok(VmState {
        // SAFETY: chip_id PIC_MASTER: KVM filled the `pic` member of the union.
        pic_master: unsafe { master.chip.pic },
        // SAFETY: chip_id PIC_SLAVE: KVM filled the `pic` member of the union.
        pic_slave: unsafe { slave.chip.pic },
        // SAFETY: chip_id IOAPIC: KVM filled the `ioapic` member of the union.
        ioapic: unsafe { ioapic.chip.ioapic },
        pit,
        clock,
    })
}

/// Writes a saved state into a VM that `create_vm` built (irqchip and PIT exist).
///
/// The clock is set with no flags: `KVM_CLOCK_TSC_STABLE` and `KVM_CLOCK_HOST_TSC` are
/// outputs of KVM_GET_CLOCK that kernels before 5.16 refuse in KVM_SET_CLOCK (Firecracker
/// clears TSC_STABLE for that reason), and `KVM_CLOCK_REALTIME` would move the guest clock
/// forward by the wall time since the save; a restored guest continues from the saved
/// clock, as it was.
pub fn restore_vm_state(vm: &VmFd, state: &VmState) -> Result<(), VmError> {
    let chip = |chip_id, set: &dyn Fn(&mut kvm_irqchip)| {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        set(&mut c);
        c
    };
    let master = chip(KVM_IRQCHIP_PIC_MASTER, &|c| c.chip.pic = state.pic_master);
    let slave = chip(KVM_IRQCHIP_PIC_SLAVE, &|c| c.chip.pic = state.pic_slave);
    let ioapic = chip(KVM_IRQCHIP_IOAPIC, &|c| c.chip.ioapic = state.ioapic);
    vm.set_irqchip(&master)
        .map_err(kvm("KVM_SET_IRQCHIP (PIC master)"))?;
    vm.set_irqchip(&slave)
        .map_err(kvm("KVM_SET_IRQCHIP (PIC slave)"))?;
    vm.set_irqchip(&ioapic)
        .map_err(kvm("KVM_SET_IRQCHIP (IOAPIC)"))?;
    vm.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
