//! One `petrel run`: the API server if asked for, then the VM — built at once, or
//! configured through the API and built when `InstanceStart` arrives — run until it stops.
//!
//! The VMM thread (the caller's) serves API requests all along: before start on a small
//! event loop of its own, then on the machine's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use api::{ApiResponse, ApiServer, ServerError, WebError, WebListener};
use devices::{ExitSignal, VmExit};
use event_manager::{EventManager, SubscriberOps};

use crate::builder::BuildError;
use crate::config::VmConfig;
use crate::control::{ControlQueue, Instance, Start};
use crate::logging::LogHandle;
use crate::machine::{ExitWatcher, Machine, RunError, SharedHandler, Subscriber};
use crate::persist::restore::RestoreRequest;
use crate::signals::SignalWatcher;

/// What `petrel run` was asked for.
pub struct LaunchOptions {
    /// The configuration from flags and file; the API may add to it before start.
    pub config: VmConfig,
    /// Build and boot at once; otherwise wait for `InstanceStart`.
    pub boot_now: bool,
    /// Where the API listens, if anywhere.
    pub api_sock: Option<PathBuf>,
    /// The instance id `GET /` reports.
    pub id: String,
    /// The process's logging, for `PUT /logger`.
    pub log: Option<LogHandle>,
    /// Where the web console listens (loopback), if anywhere.
    pub web_console: Option<SocketAddr>,
    /// Restore this snapshot instead of booting (`--restore`).
    pub restore: Option<RestoreRequest>,
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Api(#[from] ServerError),
    #[error(transparent)]
    Web(#[from] WebError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
}

impl LaunchError {
    /// Whether the user's input is at fault (exit status 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            LaunchError::Api(e) => !matches!(
                e,
                ServerError::Runtime(_) | ServerError::Thread(_) | ServerError::Io(..)
            ),
            LaunchError::Build(e) => e.is_user_error(),
            LaunchError::Web(e) => !matches!(e, WebError::Random(_)),
            _ => false,
        }
    }
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Setup { what, source }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one VM as `options` say. Returns why it stopped.
pub fn launch(options: LaunchOptions) -> Result<VmExit, LaunchError> {
    let queue = ControlQueue::new().map_err(setup("cannot create the control queue"))?;
    let handle = queue.handle();
    let web = options.web_console.map(WebListener::bind).transpose()?;
    // Dropped last: the socket goes away after the VM is torn down.
    let _server = if options.api_sock.is_some() || web.is_some() {
        let wake = handle
            .wake_fd()
            .map_err(setup("cannot share the control eventfd"))?;
        let url = web.as_ref().map(WebListener::url);
        let server =
            ApiServer::start_with(options.api_sock.as_deref(), web, handle.sender(), wake)?;
        if let Some(url) = url {
            announce_web_console(&url);
        }
        Some(server)
    } else {
        None
    };
    let exit = Arc::new(ExitSignal::new().map_err(setup("cannot create the exit event"))?);
    let instance = Instance {
        id: options.id,
        config: options.config,
        log: options.log,
    };
    let restore = options.restore;
    let handler = queue
        .into_handler(instance, exit.clone())
        .map_err(setup("cannot create the API handler"))?;
    let handler: SharedHandler = Arc::new(Mutex::new(handler));
    let (machine, start) = if let Some(request) = &restore {
        let config = lock(&handler).config().clone();
        (crate::persist::restore::restore(request, &config)?, None)
    } else if options.boot_now {
        let config = lock(&handler).config().clone();
        (crate::build(&config)?, None)
    } else {
        match wait_for_start(&handler, &exit)? {
            PreStart::Start(machine, reply) => (*machine, Some(reply)),
            PreStart::Exit(reason) => return Ok(reason),
        }
    };
    Ok(machine.run_controlled(Some(handler), start)?)
}

/// Prints where the web console is, with its token, on standard error (standard output may
/// carry the guest's serial console).
fn announce_web_console(url: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "petrel: web console at {url}");
    let _ = stderr.flush();
}

enum PreStart {
    /// Built; the reply of `InstanceStart` is sent once the vCPUs run.
    Start(Box<Machine>, Sender<ApiResponse>),
    /// Stopped before start (a signal, `Kill`).
    Exit(VmExit),
}

/// Serves the API until `InstanceStart` builds a machine, or until a signal or `Kill`
/// stops the process. A configuration that fails to build is reported to the client and
/// kept, to be fixed and started again.
fn wait_for_start(
    handler: &SharedHandler,
    exit: &Arc<ExitSignal>,
) -> Result<PreStart, LaunchError> {
    let mut events: EventManager<Subscriber> =
        EventManager::new().map_err(LaunchError::EventLoop)?;
    let signals = SignalWatcher::install(exit.clone()).map_err(setup("cannot watch signals"))?;
    events.add_subscriber(Arc::new(Mutex::new(signals)));
    events.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
    events.add_subscriber(handler.clone());
    tracing::info!("waiting for the API to configure and start the VM");
    loop {
        events.run().map_err(LaunchError::EventLoop)?;
        if let Some(reason) = exit.reason() {
            return Ok(PreStart::Exit(reason));
        }
        let pending = lock(handler).take_start();
        let Some((start, reply)) = pending else {
            continue;
        };
        let (built, what) = match start {
            Start::Boot(config) => (crate::build(&config), "InstanceStart"),
            Start::Restore(request, config) => (
                crate::persist::restore::restore(&request, &config),
                "PUT /snapshot/load",
            ),
            Start::Migrated(machine) => (Ok(*machine), "PUT /migration/receive"),
        };
        match built {
            Ok(machine) => return Ok(PreStart::Start(Box::new(machine), reply)),
            Err(e) => {
                let status = if e.is_user_error() { 400 } else { 500 };
                tracing::warn!(%e, "{what} failed");
                let _ = reply.send(ApiResponse::error(status, format!("{what} failed: {e}")));
            }
        }
    }
}
