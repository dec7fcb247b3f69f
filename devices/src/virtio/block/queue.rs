//! The request queue of an active disk, on the VMM thread: chains are popped one at a time,
//! invalid ones answered at once, valid ones handed to the I/O thread; finished ones go on
//! the used ring and the driver is interrupted when it asked to be (`EVENT_IDX`).

use std::sync::mpsc::TryRecvError;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::metrics::{add, worth_logging, Counters};
use super::request::{self, DiskInfo, Reason, Rejected, STATUS_IOERR};
use super::worker::{Completion, Worker};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{queue, DeviceEnv, CHAINS_PER_PASS};

/// A device the driver activated: its queue, its environment and its I/O thread.
pub(super) struct Active {
    queue: Queue,
    env: DeviceEnv,
    worker: Worker,
    /// Requests handed to the I/O thread and not yet on the used ring; at most the queue
    /// size, so a driver that recycles heads cannot queue unbounded work.
    in_flight: u16,
    /// The driver broke the queue (or the I/O thread died): nothing more is served until
    /// a reset.
    broken: bool,
}

/// Why popping requests stopped.
enum Stop {
    /// No more available chains.
    Empty,
    /// A queue's worth of requests is in flight; completions resume processing.
    Full,
    /// The queue cannot be used.
    Broken,
    /// The rate limiter ran out; its timer serves the queue again.
    Throttled,
    /// This pass served its budget of chains; a kick of the queue serves the rest.
    Budget,
}

impl Active {
    pub(super) fn new(queue: Queue, env: DeviceEnv, worker: Worker) -> Self {
        Active {
            queue,
            env,
            worker,
            in_flight: 0,
            broken: false,
        }
    }

    pub(super) fn queue(&self) -> &Queue {
        &self.queue
    }

    pub(super) fn env(&self) -> &DeviceEnv {
        &self.env
    }

    /// Puts `worker` in place of the I/O thread and stops the old one. Call it after
    /// [`Self::quiesce`], so that nothing is in flight on the old thread; the queue stays
    /// where it is.
    pub(super) fn replace_worker(&mut self, worker: Worker) {
        let mut old = std::mem::replace(&mut self.worker, worker);
        old.stop();
    }

    /// Stops the I/O thread after it finished what it was given.
    pub(super) fn stop(&mut self) {
        self.worker.stop();
    }

    /// Serves the queue until it is empty (with notifications re-enabled), the in-flight
    /// bound is reached, or the queue turns out broken.
    pub(super) fn process(
        &mut self,
        info: DiskInfo,
        counters: &Counters,
        limiter: &mut RateLimiter,
    ) {
        if self.broken {
            return;
        }
        let mut used = false;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.env.mem) {
                tracing::debug!(%e, "cannot disable queue notifications");
            }
            match self.pop_requests(info, counters, limiter, &mut used) {
                Stop::Empty => match self.queue.enable_notification(&self.env.mem) {
                    // More chains arrived while notifications were off.
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(%e, "cannot enable queue notifications");
                        break;
                    }
                },
                Stop::Budget => {
                    self.env.kicks.kick(0);
                    break;
                }
                Stop::Full | Stop::Broken | Stop::Throttled => break,
            }
        }
        if used {
            self.signal_used();
        }
    }

    /// Puts every request the I/O thread finished on the used ring.
    pub(super) fn collect_completions(&mut self, counters: &Counters) {
        let mut used = false;
        loop {
            match self.worker.try_completion() {
                Ok(completion) => {
                    self.complete(completion, counters);
                    used = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    tracing::error!("the disk I/O thread stopped; the device needs a reset");
                    self.in_flight = 0;
                    self.broken = true;
                    self.env.interrupt.set_needs_reset();
                    break;
                }
            }
        }
        if used {
            self.signal_used();
        }
    }

    /// Waits for every request in flight and puts it on the used ring.
    pub(super) fn quiesce(&mut self, counters: &Counters) {
        let mut used = false;
        while self.in_flight > 0 {
            match self.worker.wait_completion() {
                Some(completion) => {
                    self.complete(completion, counters);
                    used = true;
                }
                None => {
                    self.in_flight = 0;
                    break;
                }
            }
        }
        if used {
            self.signal_used();
        }
    }

    /// Pops and dispatches chains until the ring is empty, the in-flight bound is reached,
    /// or the queue turns out broken. Sets `used` when a chain went on the used ring.
    fn pop_requests(
        &mut self,
        info: DiskInfo,
        counters: &Counters,
        limiter: &mut RateLimiter,
        used: &mut bool,
    ) -> Stop {
        for _ in 0..CHAINS_PER_PASS {
            if self.in_flight >= self.queue.size() {
                return Stop::Full;
            }
            let chain = match self.queue.iter(&self.env.mem) {
                Ok(mut avail) => avail.next(),
                Err(virtio_queue::Error::QueueNotReady) => {
                    tracing::debug!("notification for a queue that is not ready");
                    return Stop::Broken;
                }
                Err(e) => {
                    tracing::warn!(%e, "the driver broke the request queue; the device needs a reset");
                    self.broken = true;
                    self.env.interrupt.set_needs_reset();
                    return Stop::Broken;
                }
            };
            let Some(chain) = chain else {
                return Stop::Empty;
            };
            match request::parse(chain, &self.env.mem, info) {
                Ok(request) => {
                    if !limiter.consume_request(request.op.data_len()) {
                        // The chain stays available; the limiter's timer serves it.
                        self.queue.go_to_previous_position();
                        return Stop::Throttled;
                    }
                    match self.worker.submit(request) {
                        Ok(()) => self.in_flight += 1,
                        Err(request) => {
                            tracing::error!("the disk I/O thread is gone; failing a request");
                            add(&counters.io_errors, 1);
                            self.answer(request.head, Some(request.status), STATUS_IOERR, counters);
                            *used = true;
                        }
                    }
                }
                Err(rejected) => {
                    log_rejected(&rejected, counters);
                    self.answer(rejected.head, rejected.status, rejected.code(), counters);
                    *used = true;
                }
            }
        }
        Stop::Budget
    }

    /// Writes `code` as the status (if there is a status byte) and puts the chain on the
    /// used ring.
    fn answer(&mut self, head: u16, status: Option<GuestAddress>, code: u8, counters: &Counters) {
        let written = status.is_some_and(|addr| match self.env.mem.write_obj(code, addr) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%e, head, "cannot write a status byte");
                false
            }
        });
        self.add_used(head, u32::from(written), counters);
    }

    /// Puts a finished request on the used ring.
    fn complete(&mut self, completion: Completion, counters: &Counters) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.add_used(completion.head, completion.used_len, counters);
    }

    fn add_used(&mut self, head: u16, len: u32, counters: &Counters) {
        if let Err(e) = queue::add_used(&mut self.queue, &self.env.mem, head, len) {
            // The used ring was checked at activation, so this is the driver's doing too.
            let count = add(&counters.errors, 1);
            if worth_logging(count) {
                tracing::warn!(%e, head, count, "cannot put a chain on the used ring");
            }
        }
    }

    /// Interrupts the driver if it wants to hear about the chains just used.
    fn signal_used(&mut self) {
        queue::signal_used(&mut self.queue, &self.env.mem, &self.env.interrupt);
    }
}

/// Counts a rejected chain and logs the first few.
fn log_rejected(rejected: &Rejected, counters: &Counters) {
    let count = match rejected.reason {
        Reason::Unsupported(_) => add(&counters.unsupported_ops, 1),
        _ => add(&counters.errors, 1),
    };
    if !worth_logging(count) {
        return;
    }
    let head = rejected.head;
    match rejected.reason {
        Reason::Unsupported(request_type) => {
            tracing::debug!(head, request_type, count, "unsupported block request")
        }
        Reason::Malformed(what) => {
            tracing::warn!(head, what, count, "invalid block request")
        }
        Reason::OutOfRange => {
            tracing::warn!(head, count, "block request past the end of the disk")
        }
        Reason::ReadOnly => {
            tracing::warn!(head, count, "write request on a read-only disk")
        }
    }
}
