//! A running machine: the VMM thread's event loop, the vCPU threads, and an orderly
//! teardown on every way out.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::ApiResponse;
use devices::legacy::{Rtc, Serial, SharedSerialLog, I8042};
use devices::{ExitSignal, VmExit};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use memory::{GuestMemoryMmap, MemoryLayout};
use vmm_sys_util::epoll::EventSet;

use crate::config::VmConfig;
use crate::control::runtime::Runtime;
use crate::control::{ControlHandle, ControlHandler, ControlQueue, Instance};
use crate::device_manager::ged::GedHandle;
use crate::device_manager::virtio::VirtioHandle;
use crate::persist::SnapshotBook;
use crate::stdin::RawTerminal;
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuHandle};

/// A subscriber as the event manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the event loop when an exit is signalled; the loop then sees the reason.
pub(crate) struct ExitWatcher(pub(crate) Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            tracing::error!(?e, "cannot watch the exit event");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.event().read();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors running the machine.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// A vCPU could not start.
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// The control queue could not be served.
    #[error("cannot serve the control queue: {0}")]
    Control(#[source] std::io::Error),
}

/// The API's handler, shared with the event loop.
pub type SharedHandler = Arc<Mutex<ControlHandler>>;

/// The id `GET /` reports when none is given.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Everything a built VM owns. Fields drop in order: vCPU threads are joined before the VM
/// fd and guest memory go away.
pub struct Machine {
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) ctx: VcpuContext,
    pub(crate) event_manager: EventManager<Subscriber>,
    pub(crate) terminal: Option<RawTerminal>,
    pub(crate) virtio: Vec<VirtioHandle>,
    pub(crate) ged: Option<GedHandle>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) rtc: Arc<Mutex<Rtc>>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) serial_log: SharedSerialLog,
    pub(crate) config: VmConfig,
    pub(crate) control: Option<ControlQueue>,
    /// What the machine remembers between snapshots (for a restored one, where it came
    /// from).
    pub(crate) book: SnapshotBook,
    /// Whether the vCPUs wait, paused, from the start (a snapshot loaded without
    /// `resume_vm`).
    pub(crate) start_paused: bool,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) layout: MemoryLayout,
    pub(crate) memory: GuestMemoryMmap,
}

impl Machine {
    /// Runs the guest until it stops, then tears the machine down. Returns why it stopped.
    /// Requests sent through [`Machine::control`] are served while it runs.
    pub fn run(mut self) -> Result<VmExit, RunError> {
        let handler = match self.control.take() {
            Some(queue) => {
                let instance = Instance {
                    id: DEFAULT_INSTANCE_ID.into(),
                    config: self.config.clone(),
                    log: None,
                };
                let handler = queue
                    .into_handler(instance, self.ctx.exit.clone())
                    .map_err(RunError::Control)?;
                Some(Arc::new(Mutex::new(handler)))
            }
            None => None,
        };
        self.run_controlled(handler, None)
    }

    /// Runs the guest with `handler` serving the API, and answers `start` (a pending
    /// `InstanceStart`) once the vCPUs run or could not start.
    pub fn run_controlled(
        mut self,
        handler: Option<SharedHandler>,
        start: Option<Sender<ApiResponse>>,
    ) -> Result<VmExit, RunError> {
        let exit = self.ctx.exit.clone();
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));

        let handles: Arc<Mutex<Vec<VcpuHandle>>> = Arc::default();
        if self.start_paused {
            // The vCPU threads park before their first KVM_RUN.
            self.ctx.pause.request();
        }
        let mut result = Ok(());
        for vcpu in self.vcpus.drain(..) {
            match vcpu.start(self.ctx.clone()) {
                Ok(h) => lock(&handles).push(h),
                Err(e) => {
                    result = Err(RunError::from(e));
                    break;
                }
            }
        }
        if self.start_paused && result.is_ok() {
            // Parked before anything asks for their state.
            let running = || lock(&handles).iter().filter(|h| !h.is_finished()).count();
            if !self
                .ctx
                .pause
                .wait_parked(running, std::time::Duration::from_secs(2))
            {
                tracing::warn!("the restored vCPUs did not park within 2 s");
            }
        }
        match (&result, handler) {
            (Ok(()), Some(handler)) => {
                let runtime = self.runtime(handles.clone());
                lock(&handler).started(runtime, self.config.clone(), start);
                self.event_manager.add_subscriber(handler);
            }
            (Err(e), _) => {
                if let Some(reply) = start {
                    let _ = reply.send(ApiResponse::error(500, e.to_string()));
                }
            }
            (Ok(()), None) => {}
        }
        while result.is_ok() && exit.reason().is_none() {
            if let Err(e) = self.event_manager.run() {
                result = Err(RunError::EventLoop(e));
            }
        }
        let handles = std::mem::take(&mut *lock(&handles));
        self.stop_vcpus(handles);
        self.log_metrics();
        result?;
        Ok(exit
            .reason()
            .unwrap_or_else(|| VmExit::Fault("the VM stopped without a reason".into())))
    }

    /// What the API handler keeps of the running machine.
    fn runtime(&mut self, vcpus: Arc<Mutex<Vec<VcpuHandle>>>) -> Runtime {
        Runtime {
            pause: self.ctx.pause.clone(),
            vcpus,
            exits: self.ctx.exits.clone(),
            virtio: self.virtio.clone(),
            ged: self.ged.clone(),
            i8042: self.i8042.clone(),
            rtc: self.rtc.clone(),
            serial: self.serial.clone(),
            serial_log: self.serial_log.clone(),
            exit: self.ctx.exit.clone(),
            started: Instant::now(),
            vm: self.vm.clone(),
            memory: self.memory.clone(),
            layout: self.layout.clone(),
            track_dirty: self.config.machine.track_dirty_pages,
            book: Mutex::new(std::mem::take(&mut self.book)),
        }
    }

    /// Stops and joins every vCPU thread.
    fn stop_vcpus(&self, handles: Vec<VcpuHandle>) {
        self.ctx.stop.store(true, Ordering::Release);
        self.ctx.pause.wake_all();
        for h in &handles {
            h.kick();
        }
        for h in handles {
            h.join();
        }
    }

    /// Logs every virtio device's counters (target `petrel::metrics`, level info).
    fn log_metrics(&self) {
        for handle in &self.virtio {
            let transport = handle
                .transport
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let metrics = transport.device().metrics();
            tracing::info!(target: "petrel::metrics", "device={} {metrics}", handle.id);
        }
    }

    /// A handle to pause and resume the machine from another thread while it runs.
    /// `None` once `run` has started.
    pub fn control(&self) -> Option<ControlHandle> {
        self.control.as_ref().map(ControlQueue::handle)
    }

    /// The signal that stops the machine, for other threads.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.ctx.exit.clone()
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Whether standard input is attached to the serial console.
    pub fn has_terminal(&self) -> bool {
        self.terminal.is_some()
    }
}
