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
    /// The API asked petrel to stop at once (`PUT /actions` `Kill`).
    Killed,
    /// Something failed in the VMM or KVM; the message says what.
    Fault(String),
    /// The VM moved to another petrel by live migration, which confirmed that it runs there.
    Migrated,
}

impl VmExit {
    /// The process exit status for this end: 0 when the guest reset or powered off,
    /// 0 when the API killed it or the VM migrated away, 128 + n for signal n, 1 for a triple fault or a fault.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::Reset | VmExit::PowerOff | VmExit::Killed | VmExit::Migrated => 0,
            VmExit::Signal(sig) => 128u8.saturating_add(u8::try_from(*sig).unwrap_or(u8::MAX)),
            VmExit::TripleFault { .. } | VmExit::Fault(_) => 1,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            VmExit::Signal(sig) => write!(f, "stopped by signal {sig}"),
            VmExit::Killed => write!(f, "killed through the API"),
            VmExit::Fault(msg) => write!(f, "{msg}"),
            VmExit::Migrated => write!(f, "migrated: the VM runs in the destination petrel"),
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
    fn guest_choices_exit_0_signals_128_plus_n_failures_1() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::Reset.exit_code(), 0);
        assert_eq!(VmExit::Killed.exit_code(), 0);
        assert_eq!(VmExit::Migrated.exit_code(), 0);
        assert_eq!(VmExit::Signal(15).exit_code(), 143);
        assert_eq!(VmExit::TripleFault { vcpu: 0 }.exit_code(), 1);
        assert_eq!(VmExit::Fault("x".into()).exit_code(), 1);
    }
}
