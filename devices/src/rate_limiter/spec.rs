//! A rate limiter's configuration: Firecracker's JSON shape, the command-line form, and the
//! checks both go through.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Refill time of the buckets the command-line form builds: its rates are per second.
pub const CLI_REFILL_TIME_MS: u64 = 1000;

/// One bucket's configuration, with Firecracker's API field names.
///
/// The bucket holds up to `size` tokens and refills them continuously at `size` tokens per
/// `refill_time` milliseconds. `one_time_burst` extra tokens are there at the start, are spent
/// before the bucket's own, and never come back. A bucket with `size` and `refill_time` both 0
/// limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full (bytes or operations).
    pub size: u64,
    /// Tokens available once, on top of the bucket.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything (both `size` and `refill_time` non-zero).
    pub fn is_active(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    fn validate(&self, bucket: &'static str) -> Result<(), RateLimitSpecError> {
        match (self.size, self.refill_time) {
            (0, 0) if self.one_time_burst != 0 => {
                Err(RateLimitSpecError::BurstWithoutBucket { bucket })
            }
            (0, 0) => Ok(()),
            (0, _) => Err(RateLimitSpecError::RefillTimeWithoutSize { bucket }),
            (_, 0) => Err(RateLimitSpecError::SizeWithoutRefillTime { bucket }),
            _ => Ok(()),
        }
    }
}

/// Both buckets; Firecracker's `RateLimiter` JSON shape: `{"bandwidth": {...}, "ops": {...}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests, packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// A rate-limit configuration that cannot be used, or a command-line form that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitSpecError {
    /// The command-line form is empty.
    #[error("empty rate limit: expected bw=<bytes/s>,ops=<ops/s>,bw_burst=<bytes>,ops_burst=<n>")]
    Empty,
    /// An item is not `key=value`.
    #[error("rate limit item {item:?} is not key=value")]
    NotKeyValue { item: String },
    /// A key that is not `bw`, `ops`, `bw_burst` or `ops_burst`.
    #[error("unknown rate limit key {key:?}: expected bw, ops, bw_burst or ops_burst")]
    UnknownKey { key: String },
    /// A key given twice.
    #[error("rate limit key {key} given twice")]
    DuplicateKey { key: &'static str },
    /// A value that is not a number of the kind the key takes.
    #[error("invalid value {value:?} for rate limit key {key}: expected {expected}")]
    InvalidNumber {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A rate of zero; leave the key out to leave that resource unlimited.
    #[error("rate limit {key}=0: a rate must be positive (leave {key} out for no limit)")]
    ZeroRate { key: &'static str },
    /// A burst for a resource whose rate is not given.
    #[error("rate limit {key} needs {rate} too")]
    BurstWithoutRate {
        key: &'static str,
        rate: &'static str,
    },
    /// `size` 0 with a non-zero `refill_time`.
    #[error("{bucket} rate limit: refill_time is set but size is 0 (set both, or both to 0)")]
    RefillTimeWithoutSize { bucket: &'static str },
    /// A non-zero `size` with `refill_time` 0.
    #[error("{bucket} rate limit: size is set but refill_time is 0 (set both, or both to 0)")]
    SizeWithoutRefillTime { bucket: &'static str },
    /// A `one_time_burst` on a bucket that limits nothing.
    #[error("{bucket} rate limit: one_time_burst needs a size and a refill_time")]
    BurstWithoutBucket { bucket: &'static str },
}

const SIZE_EXPECTED: &str = "a number of bytes, optionally with a K, M or G suffix (x1024)";
const COUNT_EXPECTED: &str = "a plain number";

impl RateLimitConfig {
    /// Parses the command-line form: comma-separated `bw=<bytes/s>`, `ops=<ops/s>`,
    /// `bw_burst=<bytes>`, `ops_burst=<n>`, e.g. `bw=50M,ops=1000,ops_burst=100`.
    ///
    /// Byte amounts take an optional `K`, `M` or `G` suffix (powers of 1024, either case);
    /// operation counts are plain numbers. Buckets refill in [`CLI_REFILL_TIME_MS`]. A rate
    /// must be positive; a burst needs its rate; no key may repeat.
    pub fn parse(s: &str) -> Result<Self, RateLimitSpecError> {
        if s.is_empty() {
            return Err(RateLimitSpecError::Empty);
        }
        let mut keys = [None::<u64>; 4];
        for item in s.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(RateLimitSpecError::NotKeyValue { item: item.into() });
            };
            let (slot, key, with_suffix) = match key {
                "bw" => (0, "bw", true),
                "ops" => (1, "ops", false),
                "bw_burst" => (2, "bw_burst", true),
                "ops_burst" => (3, "ops_burst", false),
                _ => return Err(RateLimitSpecError::UnknownKey { key: key.into() }),
            };
            if keys[slot].is_some() {
                return Err(RateLimitSpecError::DuplicateKey { key });
            }
            let n = parse_number(value, with_suffix).ok_or(RateLimitSpecError::InvalidNumber {
                key,
                value: value.into(),
                expected: if with_suffix {
                    SIZE_EXPECTED
                } else {
                    COUNT_EXPECTED
                },
            })?;
            if n == 0 && slot < 2 {
                return Err(RateLimitSpecError::ZeroRate { key });
            }
            keys[slot] = Some(n);
        }
        let [bw, ops, bw_burst, ops_burst] = keys;
        Ok(Self {
            bandwidth: cli_bucket(bw, bw_burst, "bw_burst", "bw")?,
            ops: cli_bucket(ops, ops_burst, "ops_burst", "ops")?,
        })
    }

    /// True when one of the buckets limits anything (is present, with a non-zero size and
    /// refill time).
    pub fn is_limited(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(TokenBucketConfig::is_active)
    }

    /// Checks each bucket: `size` and `refill_time` are both non-zero (a limit) or both zero
    /// (no limit, the same as leaving the bucket out, and then without a `one_time_burst`).
    pub fn validate(&self) -> Result<(), RateLimitSpecError> {
        if let Some(b) = &self.bandwidth {
            b.validate("bandwidth")?;
        }
        if let Some(b) = &self.ops {
            b.validate("ops")?;
        }
        Ok(())
    }
}

impl FromStr for RateLimitConfig {
    type Err = RateLimitSpecError;
    fn from_str(s: &str) -> Result<Self, RateLimitSpecError> {
        Self::parse(s)
    }
}

fn cli_bucket(
    rate: Option<u64>,
    burst: Option<u64>,
    burst_key: &'static str,
    rate_key: &'static str,
) -> Result<Option<TokenBucketConfig>, RateLimitSpecError> {
    match (rate, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(RateLimitSpecError::BurstWithoutRate {
            key: burst_key,
            rate: rate_key,
        }),
        (Some(size), burst) => Ok(Some(TokenBucketConfig {
            size,
            one_time_burst: burst.unwrap_or(0),
            refill_time: CLI_REFILL_TIME_MS,
        })),
    }
}

/// Digits only (no sign, no spaces), then one optional K/M/G suffix when `with_suffix`.
fn parse_number(value: &str, with_suffix: bool) -> Option<u64> {
    let (digits, shift) = match value.as_bytes().last()? {
        b'k' | b'K' if with_suffix => (&value[..value.len() - 1], 10),
        b'm' | b'M' if with_suffix => (&value[..value.len() - 1], 20),
        b'g' | b'G' if with_suffix => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}
