//! The link's measured bandwidth and its optional limit.

use std::time::{Duration, Instant};

/// What the link has carried, and the bandwidth limit.
pub struct Link {
    bytes: u64,
    busy: Duration,
    limit: Option<u64>,
    since: Instant,
}

impl Link {
    pub fn new(limit: Option<u64>) -> Link {
        Link {
            bytes: 0,
            busy: Duration::ZERO,
            limit,
            since: Instant::now(),
        }
    }

    /// Counts `bytes` sent in `took`; with a limit, sleeps until the average is back under it.
    pub fn sent(&mut self, bytes: u64, took: Duration) {
        self.bytes += bytes;
        self.busy += took;
        if let Some(limit) = self.limit {
            let due = Duration::from_secs_f64(self.bytes as f64 / limit as f64);
            let elapsed = self.since.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
                self.busy += due - elapsed;
            }
        }
    }

    /// Sends at full speed from now on (the final pause).
    pub fn lift_limit(&mut self) {
        self.limit = None;
    }

    /// Bytes a second, measured over the time spent sending (and waiting for the limit).
    pub fn bandwidth(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            f64::INFINITY
        }
    }

    /// How long `pages` would take at the measured bandwidth.
    pub fn time_for(&self, pages: usize) -> Duration {
        let secs = (pages * memory::PAGE_SIZE) as f64 / self.bandwidth();
        Duration::from_secs_f64(secs.min(1e6))
    }
}
