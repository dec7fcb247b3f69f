//! An interrupt line as the VMM wires it: an `EventFd` registered with KVM as an irqfd for
//! the device's GSI. Raising the interrupt is writing 1 to it.

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` that raises an interrupt when written; vm-superio's `Trigger` for it.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`, which the VMM registers (or has registered) as an irqfd.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The event behind the interrupt, for registering it as an irqfd.
    pub fn event(&self) -> &EventFd {
        &self.0
    }

    /// Another handle on the same interrupt.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_writes_one_to_the_event() {
        let irq = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let clone = irq.try_clone().unwrap();
        irq.trigger().unwrap();
        clone.trigger().unwrap();
        assert_eq!(irq.event().read().unwrap(), 2);
    }
}
