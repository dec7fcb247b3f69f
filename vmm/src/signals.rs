//! SIGTERM and SIGINT end the VM in order: a handler writes to a pipe the VMM thread
//! watches, and the VMM thread stops the vCPUs and tears everything down.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use devices::{ExitSignal, VmExit};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

/// Watches for termination signals.
pub struct SignalWatcher {
    pipes: Vec<(i32, UnixStream)>,
    ids: Vec<signal_hook::SigId>,
    exit: Arc<ExitSignal>,
}

impl SignalWatcher {
    /// Installs handlers for SIGTERM and SIGINT.
    pub fn install(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let mut watcher = Self {
            pipes: Vec::new(),
            ids: Vec::new(),
            exit,
        };
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let (read, write) = UnixStream::pair()?;
            read.set_nonblocking(true)?;
            watcher
                .ids
                .push(signal_hook::low_level::pipe::register(sig, write)?);
            watcher.pipes.push((sig, read));
        }
        Ok(watcher)
    }
}

impl Drop for SignalWatcher {
    /// Unregisters the handlers, so a later watcher (the machine's, after the API
    /// configured it) is the only one.
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for (_, pipe) in &self.pipes {
            if let Err(e) = ops.add(Events::new(pipe, EventSet::IN)) {
                tracing::error!(?e, "cannot watch for signals");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        for (sig, pipe) in &mut self.pipes {
            if pipe.as_raw_fd() == events.fd() {
                let mut buf = [0u8; 16];
                let _ = pipe.read(&mut buf);
                tracing::info!(signal = *sig, "stopping on signal");
                self.exit.signal(VmExit::Signal(*sig));
            }
        }
    }
}
