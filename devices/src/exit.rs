//! How the VM ends: devices and vCPUs report why the guest must stop, and the VMM thread,
//! woken through an `EventFd`, tears the machine down.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 CPU reset, the reset register).
    Reset,
    /// The guest powered off (the sleep control register, S5).
    PowerOff,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault { vcpu: u32 },
    /// The host asked petrel to stop (SIGTERM, SIGINT).
    Signal(i32),
    /// Something failed in the VMM or KVM; the message says what.
    Fault(String),
}

impl VmExit {
    /// Whether this is an orderly end the guest chose (exit status 0).
    pub fn is_orderly(&self) -> bool {
        matches!(self, VmExit::Reset | VmExit::PowerOff | VmExit::Signal(_))
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            VmExit::Signal(sig) => write!(f, "stopped by signal {sig}"),
            VmExit::Fault(msg) => write!(f, "{msg}"),
        }
    }
}

/// The one place an exit is reported. The first report wins; later ones are logged only.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitSignal {
    /// A new, unsignalled exit.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `exit` (if none is recorded yet) and wakes the VMM thread.
    pub fn signal(&self, exit: VmExit) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            match &*reason {
                None => *reason = Some(exit),
                Some(first) => tracing::debug!(%exit, %first, "exit already requested"),
            }
        }
        if let Err(e) = self.evt.write(1) {
            tracing::error!(%e, "cannot wake the VMM thread for an exit");
        }
    }

    /// The reason recorded, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The event the VMM thread waits on.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_vmm() {
        let exit = ExitSignal::new().unwrap();
        assert_eq!(exit.reason(), None);
        exit.signal(VmExit::Reset);
        exit.signal(VmExit::TripleFault { vcpu: 1 });
        assert_eq!(exit.reason(), Some(VmExit::Reset));
        assert_eq!(exit.event().read().unwrap(), 2);
    }

    #[test]
    fn only_guest_choices_and_signals_are_orderly() {
        assert!(VmExit::PowerOff.is_orderly());
        assert!(VmExit::Reset.is_orderly());
        assert!(!VmExit::TripleFault { vcpu: 0 }.is_orderly());
        assert!(!VmExit::Fault("x".into()).is_orderly());
    }
}
