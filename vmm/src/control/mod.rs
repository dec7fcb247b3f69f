//! The VMM thread's side of the API: requests from other threads (the API server, tests)
//! are carried out here. A sender queues an [`ApiRequest`] with a reply channel and wakes
//! the event loop through an eventfd; the [`ControlHandler`], an event-loop subscriber,
//! checks the request against the lifecycle state, carries it out and replies.
//!
//! - [`state`]: the lifecycle and which requests each state allows.
//! - [`configure`]: edits of the configuration before start.
//! - [`runtime`]: pause, resume, keys and device changes on a started VM.
//! - [`metrics`]: Prometheus text and the metrics file.

pub mod configure;
mod input;
mod logger;
pub mod metrics;
mod migration;
pub mod runtime;
pub mod state;

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use api::types::{ActionType, InstanceInfo, VmState};
use api::{ApiRequest, ApiResponse};
use devices::{ExitSignal, VmExit};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use crate::logging::LogHandle;
use crate::persist::restore::RestoreRequest;
use metrics::{MetricsFile, Sample};
use runtime::Runtime;
use state::Lifecycle;

/// A request with the channel its answer goes back on.
pub type Message = (ApiRequest, Sender<ApiResponse>);

/// The sending side, cloneable across threads.
#[derive(Clone)]
pub struct ControlHandle {
    tx: Sender<Message>,
    wake: Arc<EventFd>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[error("the VMM thread is gone")]
pub struct ControlGone;

impl ControlHandle {
    /// Sends `request` and waits for the VMM thread's answer.
    pub fn request(&self, request: ApiRequest) -> Result<ApiResponse, ControlGone> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx.send((request, reply_tx)).map_err(|_| ControlGone)?;
        self.wake.write(1).map_err(|_| ControlGone)?;
        reply_rx.recv().map_err(|_| ControlGone)
    }

    /// The channel the API server sends on.
    pub fn sender(&self) -> api::RequestSender {
        self.tx.clone()
    }

    /// A new descriptor of the wake-up eventfd, for the API server.
    pub fn wake_fd(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }
}

/// The receiving side, before a handler serves it.
pub struct ControlQueue {
    rx: Receiver<Message>,
    wake: Arc<EventFd>,
    handle: ControlHandle,
}

impl ControlQueue {
    /// A new, empty queue.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        Ok(ControlQueue {
            rx,
            handle: ControlHandle {
                tx,
                wake: wake.clone(),
            },
            wake,
        })
    }

    /// A handle for senders.
    pub fn handle(&self) -> ControlHandle {
        self.handle.clone()
    }

    /// The handler that serves this queue for the VM `config` describes. `exit` stops the
    /// process before the VM starts (`Kill`).
    pub fn into_handler(
        self,
        instance: Instance,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<ControlHandler> {
        Ok(ControlHandler {
            rx: self.rx,
            wake: self.wake,
            instance,
            runtime: None,
            exit,
            start: None,
            pending: None,
            metrics: MetricsFile::new()?,
            migration: None,
            migration_wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }
}

/// What the handler knows of the VM besides its machine.
pub struct Instance {
    /// The id `GET /` reports.
    pub id: String,
    /// The configuration: filled by the API before start, kept current after.
    pub config: VmConfig,
    /// Logging, for `PUT /logger`; None when this process does not own it (tests).
    pub log: Option<LogHandle>,
}

/// What a pending start builds.
enum Pending {
    Boot,
    Restore(RestoreRequest),
    /// Built already: received by live migration.
    Migrated(Box<crate::machine::Machine>),
}

/// What the VMM thread builds when the API starts the VM.
pub enum Start {
    /// A fresh machine from this configuration.
    Boot(VmConfig),
    /// The machine of a snapshot; the configuration gives the host-side settings (the
    /// serial console's output).
    Restore(RestoreRequest, VmConfig),
    /// A machine received by live migration, built and ready to run.
    Migrated(Box<crate::machine::Machine>),
}

/// Event-loop tokens.
const WAKE: u32 = 0;
const METRICS_TIMER: u32 = 1;
const MIGRATION: u32 = 2;

/// Serves API requests on the VMM thread.
pub struct ControlHandler {
    rx: Receiver<Message>,
    wake: Arc<EventFd>,
    instance: Instance,
    runtime: Option<Arc<Runtime>>,
    /// Before start: the process's exit; after: the machine's.
    exit: Arc<ExitSignal>,
    /// `InstanceStart`'s (or a load's) reply, until the machine runs or fails to build.
    start: Option<Sender<ApiResponse>>,
    /// What the pending start builds.
    pending: Option<Pending>,
    metrics: MetricsFile,
    /// The migration under way, or the last one.
    migration: Option<crate::migrate::Migration>,
    /// Written by a migration's thread when the VMM thread has work to do.
    migration_wake: Arc<EventFd>,
}

impl ControlHandler {
    /// The lifecycle state now.
    pub fn state(&self) -> Lifecycle {
        match &self.runtime {
            Some(rt) => rt.state(),
            None if self.exit.reason().is_some() => Lifecycle::Stopped,
            None => Lifecycle::NotStarted,
        }
    }

    /// The configuration as it stands.
    pub fn config(&self) -> &VmConfig {
        &self.instance.config
    }

    /// A pending `InstanceStart` or `PUT /snapshot/load`: what to build and where the
    /// answer goes.
    pub fn take_start(&mut self) -> Option<(Start, Sender<ApiResponse>)> {
        let reply = self.start.take()?;
        let config = self.instance.config.clone();
        let start = match self.pending.take() {
            Some(Pending::Restore(request)) => Start::Restore(request, config),
            Some(Pending::Migrated(machine)) => Start::Migrated(machine),
            Some(Pending::Boot) | None => Start::Boot(config),
        };
        Some((start, reply))
    }

    /// The machine runs (or waits, paused, for a restored one): requests from now on act on
    /// it and its configuration (a restored machine's comes from its snapshot), and a pending
    /// `InstanceStart` or `PUT /snapshot/load` is answered.
    pub fn started(
        &mut self,
        runtime: Runtime,
        config: VmConfig,
        reply: Option<Sender<ApiResponse>>,
    ) {
        self.exit = runtime.exit.clone();
        self.instance.config = config;
        self.runtime = Some(Arc::new(runtime));
        if let Some(reply) = reply {
            let _ = reply.send(ApiResponse::NoContent);
        }
    }

    fn runtime(&self) -> Result<&Runtime, ApiResponse> {
        self.runtime
            .as_deref()
            .ok_or_else(|| ApiResponse::error(500, "the VM has no machine"))
    }

    fn sample(&self) -> Sample {
        Sample::take(self.state(), self.runtime.as_deref())
    }

    /// Carries out `request`; `None` when the answer comes later (`InstanceStart`).
    fn handle(&mut self, request: ApiRequest, reply: &Sender<ApiResponse>) -> Option<ApiResponse> {
        if let Err(e) = state::check(&request, self.state()) {
            return Some(e);
        }
        if let Some(Err(e)) = self.migration.as_ref().map(|m| m.check(&request)) {
            return Some(e);
        }
        let done = |r: Result<(), ApiResponse>| r.map_or_else(|e| e, |()| ApiResponse::NoContent);
        let config = &mut self.instance.config;
        use ApiRequest as R;
        Some(match request {
            R::GetInstanceInfo => ApiResponse::json(&InstanceInfo {
                id: self.instance.id.clone(),
                state: self.state().name().into(),
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                app_name: "petrel".into(),
            }),
            R::GetVmConfig => ApiResponse::json(config),
            R::GetMachineConfig => ApiResponse::json(&configure::machine_config(config)),
            R::GetMetrics => ApiResponse::Text(self.sample().prometheus()),
            R::PutMetrics(m) => done(self.metrics.set_path(Path::new(&m.metrics_path))),
            R::PutLogger(l) => done(self.put_logger(l)),
            R::PutBootSource(b) => done(configure::put_boot_source(config, b)),
            R::PutMachineConfig(m) => done(configure::put_machine_config(config, m)),
            R::PatchMachineConfig(m) => done(configure::patch_machine_config(config, m)),
            R::PutDrive(d) => done(configure::put_drive(config, d)),
            R::PutNetworkInterface(n) => done(configure::put_net(config, n)),
            R::PutConsole(c) => done(configure::put_console(config, c)),
            R::PutVhostUserBlk(v) => done(configure::put_vhost_user_blk(config, v)),
            R::PutVhostUserNet(v) => done(configure::put_vhost_user_net(config, v)),
            R::PutVhostUserFs(v) => done(configure::put_vhost_user_fs(config, v)),
            R::PatchDrive(p) => done(match &self.runtime {
                Some(rt) => rt.patch_drive(config, p),
                None => configure::patch_drive(config, p),
            }),
            R::PatchNetworkInterface(p) => done(match &self.runtime {
                Some(rt) => rt.patch_net(config, p),
                None => configure::patch_net(config, p),
            }),
            R::PutVsock(v) => done(configure::put_vsock(config, v)),
            R::PutNuma(n) => done(configure::put_numa(config, n)),
            R::CreateSnapshot(params) => done(match &self.runtime {
                Some(rt) => crate::persist::create::create(rt, config, &params),
                None => Err(ApiResponse::error(500, "the VM has no machine")),
            }),
            R::LoadSnapshot(_) | R::Action(ActionType::InstanceStart) if self.start.is_some() => {
                ApiResponse::bad_request(format!(
                    "{}: the VM is being started already",
                    request.name()
                ))
            }
            R::LoadSnapshot(params) => {
                let request = match crate::persist::restore::RestoreRequest::from_api(&params) {
                    Ok(r) => r,
                    Err(e) => return Some(e),
                };
                self.start = Some(reply.clone());
                self.pending = Some(Pending::Restore(request));
                return None;
            }
            R::MigrationSend(params) => done(self.send_migration(&params)),
            R::MigrationReceive(params) => done(self.receive_migration(&params)),
            R::GetMigration => ApiResponse::json(&self.migration_info()),
            R::PatchVm(VmState::Paused) => done(self.runtime().and_then(Runtime::pause)),
            R::PatchVm(VmState::Resumed) => done(self.runtime().map(Runtime::resume)),
            R::Action(ActionType::InstanceStart) => {
                if let Err(e) = configure::check_bootable(config) {
                    return Some(e);
                }
                self.start = Some(reply.clone());
                self.pending = Some(Pending::Boot);
                return None;
            }
            R::Action(ActionType::SendCtrlAltDel | ActionType::Shutdown) => {
                done(self.runtime().and_then(Runtime::ctrl_alt_del))
            }
            R::Action(ActionType::PowerButton) => {
                let acpi = config.machine.acpi;
                done(self.runtime().and_then(|rt| rt.power_button(acpi)))
            }
            R::Action(ActionType::FlushMetrics) => {
                let sample = self.sample();
                done(self.metrics.flush(&sample))
            }
            R::GetScreenshot => match self.runtime() {
                Ok(rt) => rt.screenshot(),
                Err(e) => e,
            },
            R::Action(ActionType::Kill) => {
                self.exit.signal(VmExit::Killed);
                ApiResponse::NoContent
            }
            R::PutInput(id, events) => done(
                self.runtime()
                    .and_then(|rt| input::put_input(rt, &id, &events)),
            ),
            R::GetSerial { from } => match &self.runtime {
                Some(rt) => ApiResponse::json(&rt.serial_log(from)),
                // Nothing was written before the guest exists.
                None => ApiResponse::json(&api::types::SerialLog::default()),
            },
            R::PutSerial(input) => done(
                self.runtime()
                    .and_then(|rt| rt.serial_input(input.data.as_bytes())),
            ),
        })
    }

    fn put_logger(&self, logger: api::types::Logger) -> Result<(), ApiResponse> {
        let Some(log) = &self.instance.log else {
            return Err(ApiResponse::bad_request(
                "PUT /logger: this petrel does not own its process's logging",
            ));
        };
        logger::configure(log, logger)
    }

    fn serve_queue(&mut self) {
        let _ = self.wake.read();
        while let Ok((request, reply)) = self.rx.try_recv() {
            let name = request.name();
            if let Some(answer) = self.handle(request, &reply) {
                tracing::debug!(request = %name, ?answer, "API request");
                // The sender may have given up waiting; nothing to do then.
                let _ = reply.send(answer);
            }
        }
    }

    fn flush_metrics(&mut self) {
        let _ = self.metrics.timer.wait();
        let sample = self.sample();
        if let Err(e) = self.metrics.flush(&sample) {
            tracing::warn!(?e, "cannot write the metrics file");
        }
    }
}

impl MutEventSubscriber for ControlHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let wake = Events::with_data(self.wake.as_ref(), WAKE, EventSet::IN);
        if let Err(e) = ops.add(wake) {
            tracing::error!(?e, "cannot watch API requests");
        }
        let migration = Events::with_data(self.migration_wake.as_ref(), MIGRATION, EventSet::IN);
        if let Err(e) = ops.add(migration) {
            tracing::error!(?e, "cannot watch migrations");
        }
        let timer = Events::with_data(&self.metrics.timer, METRICS_TIMER, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            tracing::error!(?e, "cannot watch the metrics timer");
        }
    }

    fn process(&mut self, events: Events, _: &mut EventOps) {
        match events.data() {
            WAKE => self.serve_queue(),
            METRICS_TIMER => self.flush_metrics(),
            MIGRATION => self.migration_event(),
            other => tracing::debug!(token = other, "unknown control event"),
        }
    }
}
