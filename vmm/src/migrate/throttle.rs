//! Auto-converge: a guest that dirties memory faster than the link takes it is slowed by
//! pausing its vCPUs for a growing share of every [`PERIOD`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::runtime::Runtime;

/// The vCPUs are paused for `percent` of each period.
const PERIOD: Duration = Duration::from_millis(20);
/// The first share, its step per round that does not converge, and its top.
const FIRST: u32 = 20;
const STEP: u32 = 10;
const MAX: u32 = 99;

/// The throttle of one migration; its thread starts at the first [`Throttle::step_up`] and
/// stops when the throttle is dropped (the vCPUs run freely again then).
pub struct Throttle {
    rt: Arc<Runtime>,
    percent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// A machine paused when the migration started dirties nothing: it is left alone.
    paused_by_user: bool,
}

impl Throttle {
    pub fn new(rt: Arc<Runtime>) -> Throttle {
        Throttle {
            paused_by_user: rt.pause.is_paused(),
            rt,
            percent: Arc::new(AtomicU32::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Throttles harder; returns the new share in percent (0 when it cannot throttle).
    pub fn step_up(&mut self) -> u32 {
        if self.paused_by_user {
            return 0;
        }
        let now = self.percent.load(Ordering::Relaxed);
        let next = if now == 0 {
            FIRST
        } else {
            (now + STEP).min(MAX)
        };
        self.percent.store(next, Ordering::Relaxed);
        if self.thread.is_none() {
            let (rt, p, s) = (self.rt.clone(), self.percent.clone(), self.stop.clone());
            match std::thread::Builder::new()
                .name("petrel-throttle".into())
                .spawn(move || run(&rt, &p, &s))
            {
                Ok(t) => self.thread = Some(t),
                Err(e) => {
                    tracing::warn!(%e, "cannot start auto-converge: the guest runs unthrottled");
                    return 0;
                }
            }
        }
        next
    }
}

impl Drop for Throttle {
    /// However the migration ends (a panic included), the guest is not left throttled.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rt: &Runtime, percent: &AtomicU32, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let off = PERIOD * percent.load(Ordering::Relaxed) / 100;
        // A VM paused by someone else stays paused: resuming it is not the throttle's.
        if !rt.pause.is_paused() && rt.pause().is_ok() {
            std::thread::sleep(off);
            // Only the vCPUs were paused: no device stopped, none to start again.
            rt.pause.release();
        }
        std::thread::sleep(PERIOD - off);
    }
}
