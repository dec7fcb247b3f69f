//! Pausing vCPUs: the VMM asks, kicks every vCPU out of `KVM_RUN`, and waits until each has
//! parked at the top of its run loop; resuming releases them. While paused no guest code
//! runs, and a vCPU continues exactly where `KVM_RUN` returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    requested: bool,
    parked: usize,
}

/// Where vCPU threads wait while the VM is paused.
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<State>,
    cv: Condvar,
    /// `state.requested`, readable without the lock: vCPU threads look at it after every
    /// exit. Written only with the lock held.
    requested: AtomicBool,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// vCPU side, between two `KVM_RUN`s: waits while a pause is requested and `stop` is
    /// not set.
    pub fn park_if_requested(&self, stop: &AtomicBool) {
        if !self.is_paused() {
            return;
        }
        let mut state = self.lock();
        if !state.requested {
            return;
        }
        state.parked += 1;
        self.cv.notify_all();
        while state.requested && !stop.load(Ordering::Acquire) {
            state = self.cv.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        self.cv.notify_all();
    }

    /// Asks vCPUs to park at their next chance (the caller kicks them).
    pub fn request(&self) {
        let mut state = self.lock();
        state.requested = true;
        self.requested.store(true, Ordering::Release);
    }

    /// Waits until `count` vCPUs are parked, or `timeout` passes (then false); `running`
    /// says how many vCPU threads are still alive, so an exited one is not waited for.
    pub fn wait_parked(&self, running: impl Fn() -> usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.parked >= running() {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            // Short waits: a vCPU thread that exits does not notify.
            let step = left.min(Duration::from_millis(10));
            state = self
                .cv
                .wait_timeout(state, step)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Lets parked vCPUs run again.
    pub fn release(&self) {
        let mut state = self.lock();
        state.requested = false;
        self.requested.store(false, Ordering::Release);
        self.cv.notify_all();
    }

    /// Wakes parked vCPUs so they see `stop`.
    pub fn wake_all(&self) {
        let _guard = self.lock();
        self.cv.notify_all();
    }

    /// Whether a pause is in force (one atomic load: the vCPU run loop asks after every
    /// exit).
    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}
