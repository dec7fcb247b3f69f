//! One token bucket, with time passed in so that it can be tested without a clock.
//!
//! The bucket refills continuously: `size` tokens per `refill_time` milliseconds, computed from
//! the elapsed nanoseconds in `u128`. The fraction of a token not yet earned is kept (in
//! token-nanoseconds), so frequent refills lose nothing. A request larger than the whole
//! bucket is let through when the bucket is full and leaves a debt that later refills pay
//! back first (see [`Reduce::Debt`]).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spec::TokenBucketConfig;

const NANOS_PER_MILLI: u128 = 1_000_000;

/// A bucket's budget as plain data: what a snapshot keeps of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketState {
    /// Tokens in the bucket, at most its size.
    pub budget: u64,
    /// Tokens of the one-time burst not spent yet.
    pub one_time_burst: u64,
    /// Tokens owed by a request larger than the bucket; paid back before the budget refills.
    #[serde(default)]
    pub debt: u64,
}

/// What taking tokens did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The tokens were taken.
    Taken,
    /// The request was larger than the bucket and the bucket was full: everything there was
    /// taken and the rest is owed. The request may go ahead, but nothing else until the debt
    /// is paid back, which takes the given time.
    Debt(Duration),
    /// Not enough tokens; nothing was taken. The tokens (or, for a request larger than the
    /// bucket, a full bucket) will be there after the given time.
    Short(Duration),
}

/// A token bucket that limits something (its size and refill time are non-zero).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    /// The configured burst, to tell whether an update changes it.
    burst_config: u64,
    budget: u64,
    one_time_burst: u64,
    debt: u64,
    /// Token-nanoseconds earned towards the next token; always below `refill_ns`.
    partial: u128,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket with its whole burst, or `None` when `config` limits nothing.
    pub fn new(config: &TokenBucketConfig, now: Instant) -> Option<Self> {
        config.is_active().then(|| Self {
            size: config.size,
            refill_ns: u128::from(config.refill_time) * NANOS_PER_MILLI,
            burst_config: config.one_time_burst,
            budget: config.size,
            one_time_burst: config.one_time_burst,
            debt: 0,
            partial: 0,
            last_refill: now,
        })
    }

    /// The budget as of `now`.
    pub fn state(&self, now: Instant) -> TokenBucketState {
        let mut b = *self;
        b.refill(now);
        TokenBucketState {
            budget: b.budget,
            one_time_burst: b.one_time_burst,
            debt: b.debt,
        }
    }

    /// Puts a saved budget back; the caller has checked it against the configuration.
    pub fn set_state(&mut self, state: &TokenBucketState, now: Instant) {
        // A bucket in debt is empty: budget and debt cancel out.
        let budget = state.budget.min(self.size);
        let settled = budget.min(state.debt);
        self.budget = budget - settled;
        self.debt = state.debt - settled;
        self.one_time_burst = state.one_time_burst;
        self.partial = 0;
        self.last_refill = now;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn burst_config(&self) -> u64 {
        self.burst_config
    }

    /// Switches to a new size and refill time (`config` is active). The budget is kept,
    /// clamped to the new size; the remaining burst is kept unless the configured burst
    /// changes, in which case the new burst is granted in full.
    pub fn reconfigure(&mut self, config: &TokenBucketConfig, now: Instant) {
        self.refill(now);
        self.size = config.size;
        self.refill_ns = u128::from(config.refill_time) * NANOS_PER_MILLI;
        self.budget = self.budget.min(self.size);
        if config.one_time_burst != self.burst_config {
            self.burst_config = config.one_time_burst;
            self.one_time_burst = config.one_time_burst;
        }
        // The partial token was earned at the old rate; dropping it costs less than a token.
        self.partial = 0;
    }

    /// Takes `tokens`: from the one-time burst first, then from the bucket.
    pub fn reduce(&mut self, tokens: u64, now: Instant) -> Reduce {
        self.refill(now);
        if tokens <= self.one_time_burst {
            self.one_time_burst -= tokens;
            return Reduce::Taken;
        }
        let rest = tokens - self.one_time_burst;
        if self.debt == 0 && rest <= self.budget {
            self.one_time_burst = 0;
            self.budget -= rest;
            return Reduce::Taken;
        }
        if self.debt == 0 && self.budget == self.size {
            // `rest` > `size`: more than the bucket can ever hold.
            self.one_time_burst = 0;
            self.budget = 0;
            self.debt = rest - self.size;
            return Reduce::Debt(self.time_to_earn(self.debt));
        }
        // Wait for what this request needs, but never for more than a full bucket: a request
        // larger than the bucket goes through (into debt) once the bucket is full.
        let target = rest.min(self.size);
        let need = self
            .debt
            .saturating_add(target.saturating_sub(self.budget))
            .max(1);
        Reduce::Short(self.time_to_earn(need))
    }

    /// Gives back tokens taken for a request that was not carried out. While the one-time
    /// burst is not used up, the request was served from it entirely, so they go back there;
    /// otherwise they pay back debt first, then refill the bucket up to its size.
    pub fn replenish(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        if self.one_time_burst > 0 {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.burst_config.max(self.one_time_burst));
            return;
        }
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
        if self.budget == self.size {
            self.partial = 0;
        }
    }

    /// Adds the tokens earned since the last refill.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        self.last_refill = now;
        if self.debt == 0 && self.budget == self.size {
            self.partial = 0;
            return;
        }
        // elapsed ≤ u64::MAX after the min, so elapsed × size < 2^128.
        let earned = self
            .partial
            .saturating_add(elapsed.min(u128::from(u64::MAX)) * u128::from(self.size));
        let tokens = earned / self.refill_ns;
        self.partial = earned % self.refill_ns;
        let paid = tokens.min(u128::from(self.debt));
        // paid ≤ debt, a u64.
        self.debt -= paid as u64;
        let room = u128::from(self.size - self.budget);
        let added = (tokens - paid).min(room);
        // added ≤ room ≤ size, a u64.
        self.budget += added as u64;
        if self.budget == self.size {
            self.partial = 0;
        }
    }

    /// How long until `tokens` more have been earned, rounded up to the nanosecond.
    fn time_to_earn(&self, tokens: u64) -> Duration {
        let needed = u128::from(tokens)
            .saturating_mul(self.refill_ns)
            .saturating_sub(self.partial);
        let size = u128::from(self.size);
        let nanos = needed / size + u128::from(needed % size != 0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}
