//! What `GET /migration` reports, shared between the VMM thread and a migration's thread.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use api::types::MigrationInfo;

/// The migration's states, as `GET /migration` names them.
pub const LISTENING: &str = "listening";
pub const CONNECTING: &str = "connecting";
pub const PRECOPY: &str = "precopy";
pub const STOPPING: &str = "stopping";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";

/// A migration's progress; clones share it.
#[derive(Clone)]
pub struct Progress {
    info: Arc<Mutex<MigrationInfo>>,
    started: Instant,
}

impl Progress {
    /// A migration of `role` (`send` or `receive`) with `url`, in `state`.
    pub fn new(role: &str, state: &str, url: String) -> Progress {
        Progress {
            info: Arc::new(Mutex::new(MigrationInfo {
                role: role.into(),
                state: state.into(),
                url: Some(url),
                ..MigrationInfo::default()
            })),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MigrationInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes what is reported.
    pub fn update(&self, f: impl FnOnce(&mut MigrationInfo)) {
        f(&mut self.lock());
    }

    /// Moves to `state`; the clock stops at `completed` or `failed`.
    pub fn set_state(&self, state: &str) {
        let mut info = self.lock();
        info.state = state.into();
        if !is_active(state) {
            info.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        }
    }

    /// Ends in `completed`, with `f`'s last changes made in the same step: nobody sees
    /// `completed` without them. `f` may replace the elapsed time.
    pub fn complete(&self, f: impl FnOnce(&mut MigrationInfo)) {
        let mut info = self.lock();
        info.state = COMPLETED.into();
        info.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        f(&mut info);
    }

    /// Ends in `failed` with `error` (and logs it).
    pub fn fail(&self, error: String) {
        tracing::warn!(%error, "migration failed");
        self.lock().error = Some(error);
        self.set_state(FAILED);
    }

    /// The report as it stands.
    pub fn info(&self) -> MigrationInfo {
        let mut info = self.lock().clone();
        if is_active(&info.state) {
            info.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        }
        info
    }

    /// Whether the migration is still under way.
    pub fn is_active(&self) -> bool {
        is_active(&self.lock().state)
    }

    /// Time since the migration started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

fn is_active(state: &str) -> bool {
    state != COMPLETED && state != FAILED
}
