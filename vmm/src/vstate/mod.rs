//! KVM state: the VM (memory slots, irqchip, PIT) and the vCPUs with their threads.

pub mod affinity;
pub mod msrs;
pub mod pause;
mod raw;
#[cfg(test)]
mod test_vm;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
