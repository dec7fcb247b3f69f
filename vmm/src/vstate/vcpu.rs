//! vCPUs: configuration (CPUID, MSRs, LAPIC, FPU, boot registers) and the thread that runs
//! `KVM_RUN` and dispatches port I/O and MMIO exits to the buses.
//!
//! Stopping: the VMM sets `stop` and sends the kick signal to each vCPU thread. The signal
//! handler sets `immediate_exit` in that thread's `kvm_run`, so a thread that was about to
//! enter `KVM_RUN` returns at once with `EINTR` instead of missing the kick.
//!
//! Saving while paused: the vCPU's `VcpuFd` sits in an `Arc<Mutex<_>>` shared by the vCPU
//! thread and its [`VcpuHandle`]. The thread holds the lock only around one `KVM_RUN` and the
//! handling of its exit, never while parked in the pause gate, so once the VM is paused the
//! VMM thread can take the lock and read the state with the vCPU ioctls itself (as Cloud
//! Hypervisor does). This is simpler than a request/reply handshake through the pause gate
//! and needs no cooperation from the parked thread. [`VcpuHandle::save_state`] only
//! `try_lock`s: a vCPU that is inside `KVM_RUN` (not paused) makes it fail at once instead
//! of blocking the VMM thread. The kick path is unchanged: the signal handler writes
//! `immediate_exit` through the thread's `kvm_run` pointer, taken once under the lock; the
//! mapping lives as long as the `VcpuFd`, which the thread keeps alive through its `Arc`
//! until after it cleared the pointer.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;

use devices::{Bus, ExitSignal, VmExit};
use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::affinity::CpuMask;
use super::vcpu_state::{self, VcpuCaps, VcpuState};
use crate::arch::x86_64::{cpuid, msr, regs};
use crate::config::CpuTemplate;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        id: u32,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Building the CPUID failed.
    #[error("vCPU {id}: cannot build CPUID: {reason}")]
    Cpuid { id: u32, reason: String },
    /// Not every boot MSR was accepted.
    #[error("vCPU {id}: KVM accepted {set} of {total} boot MSRs")]
    Msrs { id: u32, set: usize, total: usize },
    /// Boot registers could not be set.
    #[error("vCPU {id}: {source}")]
    Regs {
        id: u32,
        #[source]
        source: regs::RegsError,
    },
    /// The vCPU thread could not be started.
    #[error("vCPU {id}: cannot start its thread: {source}")]
    Spawn {
        id: u32,
        #[source]
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// A saved vCPU state is malformed (a size or a count out of range).
    #[error("vCPU {id}: invalid saved state: {reason}")]
    State { id: u32, reason: String },
    /// KVM refused one of the saved MSRs.
    #[error("vCPU {id}: KVM_SET_MSRS refused MSR {index:#x} (value {value:#x})")]
    MsrRefused { id: u32, index: u32, value: u64 },
    /// The saved state needs a capability this host's KVM lacks.
    #[error("vCPU {id}: the saved state needs KVM_CAP_{cap}, which this host's KVM lacks")]
    MissingCap { id: u32, cap: &'static str },
    /// The guest uses nested virtualization, whose state petrel does not save.
    #[error("vCPU {id}: the guest has nested virtualization (VMX/SVM) state, which snapshots do not save")]
    NestedState { id: u32 },
    /// The vCPU thread could not be restricted to its host CPUs.
    #[error("vCPU {id}: cannot pin its thread to host CPUs {cpus}: {source}")]
    Affinity {
        id: u32,
        cpus: String,
        #[source]
        source: std::io::Error,
    },
    /// The vCPU is inside `KVM_RUN`: its state can only be read while the VM is paused.
    #[error("vCPU {id} is running: pause the VM before saving its state")]
    NotPaused { id: u32 },
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    // This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own `kvm_run` mapping, set by the vCPU
            // thread before it first enters KVM_RUN and cleared before the VcpuFd (and so
            // the mapping) is dropped; a volatile byte write is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
    fence(Ordering::SeqCst);
}

/// Installs the kick signal handler. Idempotent.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

/// How often one vCPU left `KVM_RUN`, by reason. Each vCPU thread counts its own.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    /// Kicked out by a signal (pause, stop) or an interrupt window.
    pub interrupted: AtomicU64,
    /// Anything else, including the exit that stopped the VM.
    pub other: AtomicU64,
}

impl ExitCounters {
    /// Every counter with its name, for metrics.
    pub fn values(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("io_in", get(&self.io_in)),
            ("io_out", get(&self.io_out)),
            ("mmio_read", get(&self.mmio_read)),
            ("mmio_write", get(&self.mmio_write)),
            ("interrupted", get(&self.interrupted)),
            ("other", get(&self.other)),
        ]
    }

    fn count(&self, exit: &VcpuExit) {
        let counter = match exit {
            VcpuExit::IoIn(..) => &self.io_in,
            VcpuExit::IoOut(..) => &self.io_out,
            VcpuExit::MmioRead(..) => &self.mmio_read,
            VcpuExit::MmioWrite(..) => &self.mmio_write,
            VcpuExit::Intr => &self.interrupted,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every vCPU of a VM shares with the others and with the VMM thread.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub stop: Arc<AtomicBool>,
    /// Where the vCPUs wait while the VM is paused.
    pub pause: Arc<super::pause::PauseGate>,
    /// Exit counters, indexed by vCPU id.
    pub exits: Arc<[ExitCounters]>,
}

/// A configured vCPU, ready to run.
pub struct Vcpu {
    id: u32,
    fd: Arc<Mutex<VcpuFd>>,
    caps: VcpuCaps,
    /// The host CPUs its thread runs on; anywhere when `None`.
    affinity: Option<CpuMask>,
}

/// Locks a vCPU fd; a panic on the vCPU thread leaves the fd itself intact.
fn lock(fd: &Mutex<VcpuFd>) -> MutexGuard<'_, VcpuFd> {
    fd.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one vCPU is set up.
pub struct VcpuSetup<'a> {
    pub supported_cpuid: &'a CpuId,
    pub vcpus: u32,
    pub template: CpuTemplate,
    pub tsc_deadline: bool,
    /// The 64-bit entry point, for the boot vCPU only: the others wait for INIT/SIPI.
    pub entry: Option<u64>,
}

impl Vcpu {
    /// Creates vCPU `id` and configures it.
    pub fn new(vm: &VmFd, id: u32, setup: &VcpuSetup) -> Result<Self, VcpuError> {
        let kvm = |what| move |source| VcpuError::Kvm { id, what, source };
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm("cannot create"))?;
        let topo = cpuid::VcpuTopology {
            apic_id: id,
            vcpus: setup.vcpus,
            tsc_deadline: setup.tsc_deadline,
        };
        let cpuid =
            cpuid::vcpu_cpuid(setup.supported_cpuid, topo, setup.template).map_err(|e| {
                VcpuError::Cpuid {
                    id,
                    reason: format!("{e:?}"),
                }
            })?;
        fd.set_cpuid2(&cpuid).map_err(kvm("cannot set CPUID"))?;
        let msrs = msr::boot_msrs().map_err(|e| VcpuError::Cpuid {
            id,
            reason: format!("boot MSRs: {e:?}"),
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm("cannot set MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                id,
                set,
                total: msrs.as_slice().len(),
            });
        }
        regs::setup_lapic(&fd).map_err(|source| VcpuError::Regs { id, source })?;
        if let Some(entry) = setup.entry {
            regs::setup_fpu(&fd).map_err(|source| VcpuError::Regs { id, source })?;
            regs::setup_boot_vcpu(&fd, entry).map_err(|source| VcpuError::Regs { id, source })?;
        }
        Ok(Self {
            id,
            fd: Arc::new(Mutex::new(fd)),
            caps: VcpuCaps::probe(vm),
            affinity: None,
        })
    }

    /// Creates vCPU `id` from a saved state (no boot setup: CPUID, MSRs, registers and LAPIC
    /// all come from `state`).
    pub fn restore(vm: &VmFd, id: u32, state: &VcpuState) -> Result<Self, VcpuError> {
        let caps = VcpuCaps::probe(vm);
        // Before KVM_CREATE_VCPU: a vCPU cannot be destroyed, a refused state keeps its id free.
        vcpu_state::validate(state, id, &caps)?;
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Kvm {
                id,
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        vcpu_state::restore(&fd, id, &caps, state)?;
        Ok(Self {
            id,
            fd: Arc::new(Mutex::new(fd)),
            caps,
            affinity: None,
        })
    }

    /// This vCPU's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn fd_for_test(&self) -> MutexGuard<'_, VcpuFd> {
        lock(&self.fd)
    }

    /// Reads the state of a vCPU that has not started.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        vcpu_state::save(&lock(&self.fd), self.id, &self.caps)
    }

    /// Restricts the vCPU's thread to `cpus` (from its first instruction on), or lets it
    /// run anywhere (`None`).
    pub fn set_affinity(&mut self, cpus: Option<CpuMask>) {
        self.affinity = cpus;
    }

    /// Starts the vCPU's thread. With an affinity, the thread pins itself before its first
    /// `KVM_RUN` and this waits for that: a thread that cannot be pinned ends without running
    /// the guest, and the error is returned here.
    pub fn start(self, ctx: VcpuContext) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let fd = Arc::clone(&self.fd);
        let caps = self.caps;
        let pause = Arc::clone(&ctx.pause);
        let (pinned_tx, pinned_rx) = std::sync::mpsc::sync_channel(1);
        let affinity = self.affinity.clone();
        let thread = std::thread::Builder::new()
            .name(format!("petrel_vcpu{id}"))
            .spawn(move || {
                if let Some(mask) = &self.affinity {
                    let pinned = mask.apply_to_current_thread();
                    let failed = pinned.is_err();
                    let _ = pinned_tx.send(pinned);
                    if failed {
                        return;
                    }
                }
                self.run(ctx)
            })
            .map_err(|source| VcpuError::Spawn { id, source })?;
        if let Some(mask) = affinity {
            let pinned = pinned_rx.recv().unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "the vCPU thread ended before pinning",
                ))
            });
            if let Err(source) = pinned {
                let _ = thread.join();
                return Err(VcpuError::Affinity {
                    id,
                    cpus: mask.to_string(),
                    source,
                });
            }
        }
        Ok(VcpuHandle {
            id,
            thread,
            fd,
            caps,
            pause,
        })
    }

    fn run(self, ctx: VcpuContext) {
        let run_ptr: *mut kvm_run = lock(&self.fd).get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        let reason = self.run_loop(&ctx);
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        if let Some(reason) = reason {
            ctx.exit.signal(reason);
        }
    }

    /// Runs until the VM stops. Returns why, when this vCPU is the reason.
    /// Lets KVM finish the port I/O or MMIO access of the last exit (an `IN`'s data into
    /// the register, rip past the instruction) without running guest code: KVM_RUN with
    /// `immediate_exit` set completes it and returns `EINTR`. Until then the vCPU's saved
    /// state would be in the middle of the instruction, and a restored guest would do the
    /// access again (a byte printed twice, an input byte lost).
    fn complete_io(&self) -> Result<(), VmExit> {
        let mut fd = lock(&self.fd);
        fd.set_kvm_immediate_exit(1);
        let result = fd.run().map(|_| ());
        fd.set_kvm_immediate_exit(0);
        match result {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(VmExit::Fault(format!(
                "vCPU {}: completing an I/O access before pausing: {e}",
                self.id
            ))),
            Ok(()) => Err(VmExit::Fault(format!(
                "vCPU {}: KVM ran the guest while completing an I/O access",
                self.id
            ))),
        }
    }

    fn run_loop(&self, ctx: &VcpuContext) -> Option<VmExit> {
        let default = ExitCounters::default();
        let counters = ctx.exits.get(self.id as usize).unwrap_or(&default);
        // The last exit was port I/O or MMIO that KVM completes only at the next KVM_RUN.
        let mut io_pending = false;
        loop {
            // Only a pause seen here parks the thread, after the access is completed. A pause
            // requested after this check comes with a kick, and the KVM_RUN below completes
            // the access before it returns EINTR.
            if ctx.pause.is_paused() {
                if io_pending {
                    if let Err(reason) = self.complete_io() {
                        return Some(reason);
                    }
                }
                ctx.pause.park_if_requested(&ctx.stop);
            }
            if ctx.stop.load(Ordering::Acquire) {
                return None;
            }
            // Held for one KVM_RUN and its exit, released before parking.
            let mut fd = lock(&self.fd);
            io_pending = false;
            match fd.run() {
                Ok(exit) => {
                    counters.count(&exit);
                    io_pending = matches!(
                        exit,
                        VcpuExit::IoIn(..)
                            | VcpuExit::IoOut(..)
                            | VcpuExit::MmioRead(..)
                            | VcpuExit::MmioWrite(..)
                    );
                    if let Some(reason) = handle_exit(self.id, exit, ctx) {
                        return Some(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    counters.interrupted.fetch_add(1, Ordering::Relaxed);
                    fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    return Some(VmExit::Fault(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.id
                    )))
                }
            }
            if let Some(reason) = internal_error(self.id, &mut fd) {
                return Some(reason);
            }
        }
    }
}

/// After `KVM_EXIT_INTERNAL_ERROR`, the reason with KVM's sub-error and the guest's rip.
fn internal_error(id: u32, fd: &mut VcpuFd) -> Option<VmExit> {
    let run = fd.get_kvm_run();
    if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason says the `internal` member of the union is the live one.
    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
    run.exit_reason = kvm_bindings::KVM_EXIT_UNKNOWN;
    let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
    Some(VmExit::Fault(format!(
        "vCPU {id}: KVM internal error (suberror {suberror}) at rip {rip:#x}: KVM could not emulate the guest's instruction"
    )))
}

/// Handles one exit. Returns a reason when the VM must stop.
fn handle_exit(id: u32, exit: VcpuExit, ctx: &VcpuContext) -> Option<VmExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                tracing::debug!(port = format_args!("{port:#x}"), len = data.len(), "read from an unclaimed port");
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                tracing::debug!(port = format_args!("{port:#x}"), ?data, "write to an unclaimed port");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                tracing::debug!(addr = format_args!("{addr:#x}"), len = data.len(), "read from unclaimed MMIO");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                tracing::debug!(addr = format_args!("{addr:#x}"), ?data, "write to unclaimed MMIO");
            }
        }
        VcpuExit::Intr => {}
        VcpuExit::Shutdown => return Some(VmExit::TripleFault { vcpu: id }),
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                other => VmExit::Fault(format!("vCPU {id}: guest system event {other}")),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(VmExit::Fault(format!(
                "vCPU {id}: KVM failed to enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
            )))
        }
        // Reported with details by `internal_error` once the exit's borrow ends.
        VcpuExit::InternalError => {}
        other => {
            return Some(VmExit::Fault(format!("vCPU {id}: unexpected KVM exit {other:?}")));
        }
    }
    None
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u32,
    thread: JoinHandle<()>,
    fd: Arc<Mutex<VcpuFd>>,
    caps: VcpuCaps,
    pause: Arc<super::pause::PauseGate>,
}

impl VcpuHandle {
    /// This vCPU's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads the vCPU's state from the calling (VMM) thread. The VM must be paused (every
    /// vCPU thread parked, see `PauseGate::wait_parked`) or the thread ended. Without a pause
    /// in force, or with this vCPU still inside `KVM_RUN`, it gives
    /// [`VcpuError::NotPaused`] at once rather than blocking.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        if !self.pause.is_paused() && !self.thread.is_finished() {
            return Err(VcpuError::NotPaused { id: self.id });
        }
        let fd = match self.fd.try_lock() {
            Ok(fd) => fd,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(VcpuError::NotPaused { id: self.id }),
        };
        vcpu_state::save(&fd, self.id, &self.caps)
    }

    /// Kicks the thread out of `KVM_RUN` (the caller has set `stop`).
    pub fn kick(&self) {
        if self.thread.is_finished() {
            return;
        }
        if let Err(e) = self.thread.kill(kick_signal()) {
            tracing::warn!(id = self.id, %e, "cannot kick vCPU thread");
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread to end.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!(id = self.id, "vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests;
