//! KVM state: the VM (memory slots, irqchip, PIT) and the vCPUs with their threads.

pub mod pause;
pub mod vcpu;
pub mod vm;
