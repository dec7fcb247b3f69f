//! Token-bucket rate limiting for device I/O: one bucket for bytes, one for operations.
//!
//! A device asks [`RateLimiter::consume`] before it carries out a request. When a bucket
//! cannot cover the request, `consume` returns `false`, the limiter becomes blocked and arms
//! its one-shot timer (a non-blocking timerfd, registered by the device in the event loop
//! through [`AsRawFd`]) for the time the tokens will be there. The device stops, and when the
//! timer fd is readable it calls [`RateLimiter::event_handler`] and retries. The limiter never
//! sleeps, never spins, and a timer is never armed for less than [`MIN_WAIT`].
//!
//! Each bucket refills continuously (`size` tokens per `refill_time` ms) and starts full; its
//! `one_time_burst` is spent first and never refilled.
//!
//! A request for more tokens than a bucket holds cannot wait for them. It goes through once
//! the bucket is full (a `consume` on a bucket that is not full returns `false` and the timer
//! fires when it is): it takes the one-time burst and the whole bucket, and the rest becomes a
//! debt. `consume` returns `true`, but the limiter is blocked until refills have paid the debt
//! back, so the long-run rate still holds.

mod bucket;
mod spec;

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

pub use bucket::TokenBucketState;
use bucket::{Reduce, TokenBucket};
pub use spec::{RateLimitConfig, RateLimitSpecError, TokenBucketConfig, CLI_REFILL_TIME_MS};

/// The shortest time the timer is armed for.
pub const MIN_WAIT: Duration = Duration::from_millis(1);

/// Errors from building or driving a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The configuration does not validate.
    #[error("invalid rate limit: {0}")]
    InvalidConfig(#[from] RateLimitSpecError),
    /// The timerfd could not be created.
    #[error("cannot create the rate limiter's timerfd: {0}")]
    TimerCreate(#[source] io::Error),
    /// Reading the timerfd failed.
    #[error("cannot read the rate limiter's timerfd: {0}")]
    TimerRead(#[source] io::Error),
    /// The timer fd was reported readable but the timer had not expired.
    #[error("spurious rate limiter event: the timer has not expired")]
    SpuriousEvent,
    /// A saved state has a bucket's budget where the configuration has no bucket, or the
    /// reverse.
    #[error("saved {bucket} rate limit state does not match its configuration")]
    StateBucketMismatch { bucket: &'static str },
    /// A saved budget larger than its bucket.
    #[error("saved {bucket} rate limit budget {budget} exceeds the bucket size {size}")]
    StateBudgetOverSize {
        bucket: &'static str,
        budget: u64,
        size: u64,
    },
    /// A saved remaining burst larger than the configured burst.
    #[error("saved {bucket} one-time burst {remaining} exceeds the configured {configured}")]
    StateBurstOverConfig {
        bucket: &'static str,
        remaining: u64,
        configured: u64,
    },
}

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// The bandwidth bucket.
    Bytes,
    /// The operations bucket.
    Ops,
}

/// A rate limiter's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RateLimiterMetrics {
    /// Byte requests refused.
    pub throttled_bytes_events: u64,
    /// Operation requests refused.
    pub throttled_ops_events: u64,
    /// Bytes let through, less those given back.
    pub consumed_bytes: u64,
    /// Operations let through, less those given back.
    pub consumed_ops: u64,
}

/// A rate limiter as plain data: its configuration and each bucket's budget. Budgets, not
/// instants: a restored limiter counts time from its restore, so the time the VM spent saved
/// earns no tokens. Not blocked on restore; a request that finds too few tokens blocks again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterState {
    pub config: RateLimitConfig,
    /// Present exactly when the configuration's bandwidth bucket limits anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketState>,
    /// Present exactly when the configuration's ops bucket limits anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketState>,
}

/// A bandwidth and an operations token bucket, and the timer that tells when to retry.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    metrics: RateLimiterMetrics,
}

impl RateLimiter {
    /// A limiter with full buckets. Without a bucket that limits anything, every `consume`
    /// succeeds and the timer is never armed.
    pub fn new(config: RateLimitConfig) -> Result<Self, RateLimiterError> {
        config.validate()?;
        let now = Instant::now();
        Ok(Self {
            config,
            bandwidth: config.bandwidth.and_then(|c| TokenBucket::new(&c, now)),
            ops: config.ops.and_then(|c| TokenBucket::new(&c, now)),
            timer: nonblocking_timerfd().map_err(RateLimiterError::TimerCreate)?,
            blocked: false,
            metrics: RateLimiterMetrics::default(),
        })
    }

    /// Takes `tokens` of `kind`. Returns `false` without taking anything (and counts a
    /// throttle event) while blocked, or when the bucket cannot cover them; in the latter case
    /// the limiter blocks and its timer is armed for when they will be there. The caller
    /// stops and retries after [`event_handler`](Self::event_handler). A request larger than
    /// the bucket: see the module documentation.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            self.count_throttled(kind);
            return false;
        }
        let Some(bucket) = self.bucket(kind) else {
            self.count_consumed(tokens, kind);
            return true;
        };
        match bucket.reduce(tokens, Instant::now()) {
            Reduce::Taken => {
                self.count_consumed(tokens, kind);
                true
            }
            Reduce::Debt(wait) => {
                self.count_consumed(tokens, kind);
                self.block_for(wait);
                true
            }
            Reduce::Short(wait) => {
                self.count_throttled(kind);
                self.block_for(wait);
                false
            }
        }
    }

    /// Takes one operation and `bytes` for one request (a disk request, a frame), or
    /// nothing if either bucket is short.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if !self.consume(1, TokenType::Ops) {
            return false;
        }
        if bytes > 0 && !self.consume(bytes, TokenType::Bytes) {
            self.manual_replenish(1, TokenType::Ops);
            return false;
        }
        true
    }

    /// Gives back what [`consume_request`](Self::consume_request) took for a request that
    /// was not carried out after all.
    pub fn refund_request(&mut self, bytes: u64) {
        self.manual_replenish(1, TokenType::Ops);
        if bytes > 0 {
            self.manual_replenish(bytes, TokenType::Bytes);
        }
    }

    /// Gives back tokens taken for a request that could not be carried out after all. It does
    /// not unblock the limiter.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.bucket(kind) {
            bucket.replenish(tokens, Instant::now());
        }
        let consumed = match kind {
            TokenType::Bytes => &mut self.metrics.consumed_bytes,
            TokenType::Ops => &mut self.metrics.consumed_ops,
        };
        *consumed = consumed.saturating_sub(tokens);
    }

    /// Whether the limiter is waiting for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Called when the timer fd is readable: reads it and unblocks. `Ok` means the timer had
    /// expired (the event was ours); [`RateLimiterError::SpuriousEvent`] that it had not, and
    /// the limiter stays as it was.
    pub fn event_handler(&mut self) -> Result<(), RateLimiterError> {
        match self.timer.wait() {
            Ok(0) => Err(RateLimiterError::SpuriousEvent),
            Ok(_) => {
                self.blocked = false;
                Ok(())
            }
            Err(e) if e.errno() == libc::EAGAIN => Err(RateLimiterError::SpuriousEvent),
            Err(e) => Err(RateLimiterError::TimerRead(e.into())),
        }
    }

    /// Replaces the configuration at runtime. Buckets that stay keep their budget, clamped to
    /// the new size (and their remaining burst, unless the configured burst changes: then the
    /// new burst is granted); a new bucket starts full; a removed one is dropped with its debt.
    ///
    /// The limiter is unblocked. If it was blocked, the timer is re-armed for [`MIN_WAIT`] so
    /// that a device waiting for it wakes and retries under the new limits.
    ///
    /// `config` is not validated here (validate it before accepting it): a bucket with a zero
    /// size or refill time limits nothing.
    pub fn update(&mut self, config: RateLimitConfig) {
        let now = Instant::now();
        update_bucket(&mut self.bandwidth, config.bandwidth, now);
        update_bucket(&mut self.ops, config.ops, now);
        self.config = config;
        if self.blocked {
            self.blocked = false;
            if let Err(e) = self.timer.reset(MIN_WAIT, None) {
                tracing::error!(%e, "cannot arm the rate limiter timer after an update");
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// The counters.
    pub fn metrics(&self) -> RateLimiterMetrics {
        self.metrics
    }

    /// The configuration and each bucket's budget as of now.
    pub fn save(&self) -> RateLimiterState {
        let now = Instant::now();
        RateLimiterState {
            config: self.config,
            bandwidth: self.bandwidth.map(|b| b.state(now)),
            ops: self.ops.map(|b| b.state(now)),
        }
    }

    /// Builds a limiter from a saved state, unblocked, with the saved budgets.
    pub fn restore(state: &RateLimiterState) -> Result<Self, RateLimiterError> {
        let mut limiter = Self::new(state.config)?;
        let now = Instant::now();
        restore_bucket(&mut limiter.bandwidth, &state.bandwidth, "bandwidth", now)?;
        restore_bucket(&mut limiter.ops, &state.ops, "ops", now)?;
        Ok(limiter)
    }

    fn bucket(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Blocks until the timer fires after `wait` (at least [`MIN_WAIT`]). If the timer cannot
    /// be armed the limiter stays unblocked rather than wait for an event that never comes;
    /// the device retries on its next notification.
    fn block_for(&mut self, wait: Duration) {
        match self.timer.reset(wait.max(MIN_WAIT), None) {
            Ok(()) => self.blocked = true,
            Err(e) => tracing::error!(%e, "cannot arm the rate limiter timer"),
        }
    }

    fn count_consumed(&mut self, tokens: u64, kind: TokenType) {
        let consumed = match kind {
            TokenType::Bytes => &mut self.metrics.consumed_bytes,
            TokenType::Ops => &mut self.metrics.consumed_ops,
        };
        *consumed = consumed.saturating_add(tokens);
    }

    fn count_throttled(&mut self, kind: TokenType) {
        let events = match kind {
            TokenType::Bytes => &mut self.metrics.throttled_bytes_events,
            TokenType::Ops => &mut self.metrics.throttled_ops_events,
        };
        *events = events.saturating_add(1);
    }
}

impl AsRawFd for RateLimiter {
    /// The timer fd: readable when the limiter may be retried.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

fn update_bucket(
    bucket: &mut Option<TokenBucket>,
    config: Option<TokenBucketConfig>,
    now: Instant,
) {
    *bucket = match (bucket.take(), config.filter(TokenBucketConfig::is_active)) {
        (Some(mut b), Some(c)) => {
            b.reconfigure(&c, now);
            Some(b)
        }
        (None, Some(c)) => TokenBucket::new(&c, now),
        (_, None) => None,
    };
}

fn restore_bucket(
    bucket: &mut Option<TokenBucket>,
    state: &Option<TokenBucketState>,
    name: &'static str,
    now: Instant,
) -> Result<(), RateLimiterError> {
    match (bucket.as_mut(), state) {
        (None, None) => Ok(()),
        (Some(b), Some(s)) => {
            if s.budget > b.size() {
                return Err(RateLimiterError::StateBudgetOverSize {
                    bucket: name,
                    budget: s.budget,
                    size: b.size(),
                });
            }
            if s.one_time_burst > b.burst_config() {
                return Err(RateLimiterError::StateBurstOverConfig {
                    bucket: name,
                    remaining: s.one_time_burst,
                    configured: b.burst_config(),
                });
            }
            b.set_state(s, now);
            Ok(())
        }
        _ => Err(RateLimiterError::StateBucketMismatch { bucket: name }),
    }
}

/// A one-shot-capable timerfd on `CLOCK_MONOTONIC` whose reads never block.
fn nonblocking_timerfd() -> io::Result<TimerFd> {
    // SAFETY: timerfd_create takes no pointers and touches no memory of ours; the result is
    // checked before use.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by timerfd_create, is valid, and nothing else owns it:
    // the TimerFd becomes its only owner and closes it on drop.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
