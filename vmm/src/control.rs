//! Requests other threads (the API server, tests) make of a running machine. They are
//! carried out on the VMM thread: the sender queues a request with a reply channel and
//! wakes the event loop through an eventfd, then waits for the reply.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vstate::pause::PauseGate;
use crate::vstate::vcpu::VcpuHandle;

/// What can be asked of a running machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop every vCPU; the reply comes once none is in `KVM_RUN`.
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Whether the machine is paused.
    IsPaused,
}

/// The answer to a [`Control`] request.
pub type ControlReply = Result<ControlState, String>;

/// The machine's state after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    Running,
    Paused,
}

type Message = (Control, Sender<ControlReply>);

/// How long a pause waits for the vCPUs to leave `KVM_RUN`.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub fn request(&self, request: Control) -> Result<ControlReply, ControlGone> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx.send((request, reply_tx)).map_err(|_| ControlGone)?;
        self.wake.write(1).map_err(|_| ControlGone)?;
        reply_rx.recv().map_err(|_| ControlGone)
    }
}

/// The receiving side, kept by the machine until it runs.
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

    /// The subscriber that serves the queue on the event loop.
    pub(crate) fn into_handler(
        self,
        vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
        pause: Arc<PauseGate>,
    ) -> ControlHandler {
        ControlHandler {
            rx: self.rx,
            wake: self.wake,
            vcpus,
            pause,
        }
    }
}

/// Serves control requests on the VMM thread.
pub(crate) struct ControlHandler {
    rx: Receiver<Message>,
    wake: Arc<EventFd>,
    vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
    pause: Arc<PauseGate>,
}

impl ControlHandler {
    fn state(&self) -> ControlState {
        if self.pause.is_paused() {
            ControlState::Paused
        } else {
            ControlState::Running
        }
    }

    fn handle(&self, request: Control) -> ControlReply {
        match request {
            Control::Pause => self.pause_vcpus(),
            Control::Resume => {
                self.pause.release();
                Ok(ControlState::Running)
            }
            Control::IsPaused => Ok(self.state()),
        }
    }

    fn pause_vcpus(&self) -> ControlReply {
        if self.pause.is_paused() {
            return Ok(ControlState::Paused);
        }
        self.pause.request();
        let vcpus = self.vcpus.lock().unwrap_or_else(|p| p.into_inner());
        for vcpu in vcpus.iter() {
            vcpu.kick();
        }
        let running = || vcpus.iter().filter(|v| !v.is_finished()).count();
        if self.pause.wait_parked(running, PAUSE_TIMEOUT) {
            Ok(ControlState::Paused)
        } else {
            self.pause.release();
            Err(format!(
                "the vCPUs did not stop within {} ms",
                PAUSE_TIMEOUT.as_millis()
            ))
        }
    }
}

impl MutEventSubscriber for ControlHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.wake.as_ref(), EventSet::IN)) {
            tracing::error!(?e, "cannot watch control requests");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.wake.read();
        while let Ok((request, reply)) = self.rx.try_recv() {
            let answer = self.handle(request);
            tracing::debug!(?request, ?answer, "control request");
            // The sender may have given up waiting; nothing to do then.
            let _ = reply.send(answer);
        }
    }
}
