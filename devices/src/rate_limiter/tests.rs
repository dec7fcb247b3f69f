//! The rate limiter: its configuration forms, one bucket on a made-up clock, and the limiter
//! with its timer on the real one.

use std::time::{Duration, Instant};

use super::bucket::{Reduce, TokenBucket};
use super::*;

const MIB: u64 = 1 << 20;
/// A refill time so long that the few milliseconds a test takes earn no token.
const FOREVER_MS: u64 = 1_000_000_000;

fn bucket(size: u64, one_time_burst: u64, refill_time: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        one_time_burst,
        refill_time,
    }
}

fn limiter(bandwidth: Option<TokenBucketConfig>, ops: Option<TokenBucketConfig>) -> RateLimiter {
    RateLimiter::new(RateLimitConfig { bandwidth, ops }).unwrap()
}

/// Whether `fd` becomes readable within `timeout_ms`.
fn readable_within(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd that lives across the call, and the count passed is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(n >= 0, "poll: {}", io::Error::last_os_error());
    n == 1 && pfd.revents & libc::POLLIN != 0
}

// ---- the command-line form and the JSON shape ----

#[test]
fn parse_reads_rates_bursts_and_binary_suffixes() {
    let c = RateLimitConfig::parse("bw=50M,ops=1000,ops_burst=100").unwrap();
    assert_eq!(c.bandwidth, Some(bucket(50 * MIB, 0, 1000)));
    assert_eq!(c.ops, Some(bucket(1000, 100, 1000)));

    let c: RateLimitConfig = "bw_burst=1g,bw=512k".parse().unwrap();
    assert_eq!(c.bandwidth, Some(bucket(512 << 10, 1 << 30, 1000)));
    assert_eq!(c.ops, None);

    let c = RateLimitConfig::parse("ops=7,bw=4096").unwrap();
    assert_eq!(c.bandwidth, Some(bucket(4096, 0, 1000)));
    assert_eq!(c.ops, Some(bucket(7, 0, 1000)));
    assert!(c.is_limited());
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn parse_rejects_bad_specs_with_an_error_naming_the_culprit() {
    use RateLimitSpecError as E;
    let cases: &[(&str, E)] = &[
        ("", E::Empty),
        ("bw", E::NotKeyValue { item: "bw".into() }),
        ("bw=1M,", E::NotKeyValue { item: "".into() }),
        ("iops=5", E::UnknownKey { key: "iops".into() }),
        ("bw=1M,bw=2M", E::DuplicateKey { key: "bw" }),
        ("ops=0", E::ZeroRate { key: "ops" }),
        ("bw=0K", E::ZeroRate { key: "bw" }),
        (
            "ops_burst=10",
            E::BurstWithoutRate {
                key: "ops_burst",
                rate: "ops",
            },
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            RateLimitConfig::parse(spec).as_ref(),
            Err(expected),
            "{spec}"
        );
    }
    for (spec, key, value) in [
        ("bw=", "bw", ""),
        ("bw=M", "bw", "M"),
        ("bw=1T", "bw", "1T"),
        ("bw=+5", "bw", "+5"),
        ("bw=-5", "bw", "-5"),
        ("bw= 5", "bw", " 5"),
        ("bw=1.5M", "bw", "1.5M"),
        ("bw=99999999999G", "bw", "99999999999G"),
        ("bw=18446744073709551616", "bw", "18446744073709551616"),
        ("ops=1K", "ops", "1K"),
        ("ops=10,ops_burst=5M", "ops_burst", "5M"),
    ] {
        let err = RateLimitConfig::parse(spec).unwrap_err();
        assert!(
            matches!(&err, E::InvalidNumber { key: k, value: v, .. } if *k == key && v == value),
            "{spec}: {err:?}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn json_has_firecrackers_shape_and_rejects_unknown_fields() {
    let json = r#"{"bandwidth":{"size":1000,"one_time_burst":5,"refill_time":100},
                   "ops":{"size":10,"refill_time":1000}}"#;
    let c: RateLimitConfig = serde_json::from_str(json).unwrap();
    assert_eq!(c.bandwidth, Some(bucket(1000, 5, 100)));
    assert_eq!(c.ops, Some(bucket(10, 0, 1000)));
    assert_eq!(
        serde_json::to_string(&RateLimitConfig::default()).unwrap(),
        "{}"
    );
    assert!(serde_json::from_str::<RateLimitConfig>(r#"{"bw":{}}"#).is_err());
    assert!(serde_json::from_str::<RateLimitConfig>(
        r#"{"ops":{"size":1,"refill_time":1,"burst":2}}"#
    )
    .is_err());
}

#[test]
fn validate_wants_size_and_refill_time_both_set_or_both_zero() {
    use RateLimitSpecError as E;
    let only = |b| RateLimitConfig {
        bandwidth: None,
        ops: Some(b),
    };
    assert_eq!(
        only(bucket(0, 0, 100)).validate(),
        Err(E::RefillTimeWithoutSize { bucket: "ops" })
    );
    assert_eq!(
        only(bucket(100, 0, 0)).validate(),
        Err(E::SizeWithoutRefillTime { bucket: "ops" })
    );
    assert_eq!(
        only(bucket(0, 5, 0)).validate(),
        Err(E::BurstWithoutBucket { bucket: "ops" })
    );
    let disabled = only(bucket(0, 0, 0));
    assert_eq!(disabled.validate(), Ok(()));
    assert!(!disabled.is_limited());
    assert!(!RateLimitConfig::default().is_limited());
    assert!(only(bucket(u64::MAX, u64::MAX, u64::MAX))
        .validate()
        .is_ok());
    assert!(matches!(
        RateLimiter::new(only(bucket(1, 0, 0))),
        Err(RateLimiterError::InvalidConfig(
            E::SizeWithoutRefillTime { .. }
        ))
    ));
}

// ---- one bucket, on a made-up clock ----

#[test]
fn bucket_refills_continuously_without_losing_fractions_of_a_token() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    // 3 tokens per second: one every 333.33 ms.
    let mut b = TokenBucket::new(&bucket(3, 0, 1000), t0).unwrap();
    assert_eq!(b.reduce(3, t0), Reduce::Taken);
    assert_eq!(
        b.reduce(1, t0),
        Reduce::Short(Duration::from_nanos(333_333_334))
    );
    // Many small steps earn as much as one big one.
    for step in 1..=333 {
        assert!(matches!(b.reduce(1, ms(step)), Reduce::Short(_)));
    }
    assert_eq!(b.reduce(1, ms(334)), Reduce::Taken);
    assert_eq!(b.reduce(2, ms(1000)), Reduce::Taken);
    // A long idle time fills the bucket but not beyond.
    assert_eq!(
        b.reduce(4, ms(100_000)),
        Reduce::Debt(Duration::from_nanos(333_333_334))
    );
}

#[test]
fn short_request_waits_for_the_tokens_it_lacks() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(&bucket(1000, 0, 100), t0).unwrap();
    assert_eq!(b.reduce(900, t0), Reduce::Taken);
    // 100 left, 400 more needed at 10 tokens per ms.
    assert_eq!(b.reduce(500, t0), Reduce::Short(Duration::from_millis(40)));
    assert_eq!(b.state(t0).budget, 100, "a refused request takes nothing");
    assert_eq!(b.reduce(500, t0 + Duration::from_millis(40)), Reduce::Taken);
}

#[test]
fn oversize_request_waits_for_a_full_bucket_then_goes_into_debt() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut b = TokenBucket::new(&bucket(100, 0, 100), t0).unwrap();
    assert_eq!(b.reduce(50, t0), Reduce::Taken);
    // Not full: wait until it is (50 tokens at 1 per ms), not for 250 tokens.
    assert_eq!(b.reduce(250, t0), Reduce::Short(Duration::from_millis(50)));
    // Full: taken, with 150 owed.
    assert_eq!(
        b.reduce(250, ms(50)),
        Reduce::Debt(Duration::from_millis(150))
    );
    let s = b.state(ms(50));
    assert_eq!((s.budget, s.debt), (0, 150));
    // The debt is paid back before anything else is let through.
    assert_eq!(
        b.reduce(1, ms(150)),
        Reduce::Short(Duration::from_millis(51))
    );
    assert_eq!(
        b.reduce(1, ms(200)),
        Reduce::Short(Duration::from_millis(1))
    );
    assert_eq!(b.reduce(1, ms(201)), Reduce::Taken);
}

#[test]
fn one_time_burst_is_spent_first_and_never_refilled() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut b = TokenBucket::new(&bucket(100, 30, 100), t0).unwrap();
    assert_eq!(b.reduce(20, t0), Reduce::Taken);
    assert_eq!(b.state(t0).one_time_burst, 10);
    assert_eq!(b.state(t0).budget, 100);
    // 10 from the burst, 100 from the bucket.
    assert_eq!(b.reduce(110, t0), Reduce::Taken);
    let s = b.state(ms(10_000));
    assert_eq!((s.budget, s.one_time_burst), (100, 0));
}

#[test]
fn huge_values_neither_overflow_nor_panic() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(3600 * 24 * 365 * 100);
    for c in [
        bucket(u64::MAX, u64::MAX, u64::MAX),
        bucket(u64::MAX, 0, 1),
        bucket(1, u64::MAX, u64::MAX),
        bucket(1, 0, 1),
    ] {
        let mut b = TokenBucket::new(&c, t0).unwrap();
        for tokens in [0, 1, u64::MAX, u64::MAX, 1, u64::MAX / 2] {
            for now in [t0, far] {
                let r = b.reduce(tokens, now);
                if let Reduce::Short(d) | Reduce::Debt(d) = r {
                    assert!(d > Duration::ZERO, "{c:?}: {r:?}");
                }
                b.replenish(tokens, now);
            }
        }
    }
    // A full bucket of u64::MAX tokens refilled over u64::MAX ms: a century earns some.
    let mut b = TokenBucket::new(&bucket(u64::MAX, 0, u64::MAX), t0).unwrap();
    assert_eq!(b.reduce(u64::MAX, t0), Reduce::Taken);
    assert!(b.state(far).budget > 0);
}

// ---- the limiter and its timer ----

#[test]
fn unlimited_limiter_lets_everything_through_and_never_arms_its_timer() {
    for config in [
        RateLimitConfig::default(),
        RateLimitConfig {
            bandwidth: Some(bucket(0, 0, 0)),
            ops: None,
        },
    ] {
        let mut rl = RateLimiter::new(config).unwrap();
        for _ in 0..1000 {
            assert!(rl.consume(u64::MAX, TokenType::Bytes));
            assert!(rl.consume(u64::MAX, TokenType::Ops));
        }
        assert!(!rl.is_blocked());
        assert!(!readable_within(rl.as_raw_fd(), 5));
        assert!(matches!(
            rl.event_handler(),
            Err(RateLimiterError::SpuriousEvent)
        ));
        assert_eq!(rl.metrics().consumed_bytes, u64::MAX);
        assert_eq!(rl.metrics().throttled_bytes_events, 0);
    }
}

#[test]
fn drained_bucket_blocks_until_the_timer_fires_after_the_refill_time() {
    let start = Instant::now();
    let mut rl = limiter(Some(bucket(1000, 0, 100)), None);
    assert!(rl.consume(1000, TokenType::Bytes));
    assert!(!rl.consume(1000, TokenType::Bytes));
    assert!(rl.is_blocked());
    // Blocked means blocked, whatever is asked, until the timer fires.
    assert!(!rl.consume(1, TokenType::Bytes));
    assert!(!rl.consume(1, TokenType::Ops));
    assert!(matches!(
        rl.event_handler(),
        Err(RateLimiterError::SpuriousEvent)
    ));
    assert!(rl.is_blocked());

    assert!(readable_within(rl.as_raw_fd(), 5000));
    // The bucket was drained at or after `start`; a full refill takes 100 ms.
    assert!(start.elapsed() >= Duration::from_millis(100));
    rl.event_handler().unwrap();
    assert!(!rl.is_blocked());
    assert!(rl.consume(1000, TokenType::Bytes));
}

#[test]
fn a_request_larger_than_the_bucket_passes_when_full_then_blocks_for_the_debt() {
    let mut rl = limiter(None, Some(bucket(10, 0, 20)));
    assert!(rl.consume(30, TokenType::Ops));
    assert!(rl.is_blocked(), "20 ops owed");
    assert!(!rl.consume(1, TokenType::Ops));
    assert!(readable_within(rl.as_raw_fd(), 5000));
    rl.event_handler().unwrap();
    assert!(!rl.is_blocked());
    assert_eq!(rl.metrics().consumed_ops, 30);
}

#[test]
fn one_time_burst_lets_more_through_once() {
    let mut rl = limiter(Some(bucket(100, 50, FOREVER_MS)), None);
    assert!(rl.consume(150, TokenType::Bytes));
    assert!(!rl.consume(1, TokenType::Bytes));
    let s = rl.save().bandwidth.unwrap();
    assert_eq!((s.budget, s.one_time_burst), (0, 0));
}

#[test]
fn manual_replenish_gives_back_tokens_and_consumed_count() {
    let mut rl = limiter(None, Some(bucket(10, 0, FOREVER_MS)));
    assert!(rl.consume(10, TokenType::Ops));
    rl.manual_replenish(4, TokenType::Ops);
    assert_eq!(rl.metrics().consumed_ops, 6);
    assert!(rl.consume(4, TokenType::Ops));
    assert!(!rl.consume(1, TokenType::Ops));
    // Never beyond the bucket size, nor below zero consumed.
    let mut rl = limiter(None, Some(bucket(10, 0, FOREVER_MS)));
    rl.manual_replenish(u64::MAX, TokenType::Ops);
    rl.manual_replenish(5, TokenType::Bytes);
    assert_eq!(rl.save().ops.unwrap().budget, 10);
    assert_eq!(rl.metrics(), RateLimiterMetrics::default());
}

#[test]
fn manual_replenish_returns_burst_tokens_to_the_burst() {
    let mut rl = limiter(Some(bucket(100, 50, FOREVER_MS)), None);
    assert!(rl.consume(20, TokenType::Bytes));
    rl.manual_replenish(20, TokenType::Bytes);
    let s = rl.save().bandwidth.unwrap();
    assert_eq!((s.budget, s.one_time_burst), (100, 50));
}

#[test]
fn update_grows_and_shrinks_buckets_keeping_their_budget() {
    let mut rl = limiter(Some(bucket(100, 0, FOREVER_MS)), None);
    assert!(rl.consume(60, TokenType::Bytes));

    let grown = RateLimitConfig {
        bandwidth: Some(bucket(1000, 0, FOREVER_MS)),
        ops: Some(bucket(5, 0, FOREVER_MS)),
    };
    rl.update(grown);
    assert_eq!(rl.config(), grown);
    assert_eq!(rl.save().bandwidth.unwrap().budget, 40);
    assert_eq!(rl.save().ops.unwrap().budget, 5, "a new bucket starts full");
    assert!(!rl.consume(41, TokenType::Bytes));

    rl.update(RateLimitConfig {
        bandwidth: Some(bucket(10, 0, FOREVER_MS)),
        ops: None,
    });
    assert!(!rl.is_blocked());
    assert_eq!(rl.save().bandwidth.unwrap().budget, 10);
    assert_eq!(rl.save().ops, None);
    assert!(rl.consume(10, TokenType::Bytes));
    assert!(!rl.consume(1, TokenType::Bytes));
}

#[test]
fn removing_the_limit_unblocks_and_wakes_the_waiting_device() {
    let mut rl = limiter(Some(bucket(10, 0, FOREVER_MS)), None);
    assert!(rl.consume(10, TokenType::Bytes));
    assert!(!rl.consume(10, TokenType::Bytes));
    assert!(rl.is_blocked());

    rl.update(RateLimitConfig::default());
    assert!(!rl.is_blocked());
    assert!(readable_within(rl.as_raw_fd(), 5000));
    rl.event_handler().unwrap();
    assert!(rl.consume(u64::MAX, TokenType::Bytes));
}

#[test]
fn update_with_a_new_burst_grants_it_and_an_unchanged_one_keeps_what_is_left() {
    let mut rl = limiter(None, Some(bucket(10, 5, FOREVER_MS)));
    assert!(rl.consume(3, TokenType::Ops));
    rl.update(RateLimitConfig {
        bandwidth: None,
        ops: Some(bucket(20, 5, FOREVER_MS)),
    });
    assert_eq!(rl.save().ops.unwrap().one_time_burst, 2);
    rl.update(RateLimitConfig {
        bandwidth: None,
        ops: Some(bucket(20, 8, FOREVER_MS)),
    });
    assert_eq!(rl.save().ops.unwrap().one_time_burst, 8);
}

#[test]
fn save_and_restore_keep_config_and_budgets() {
    let config = RateLimitConfig {
        bandwidth: Some(bucket(1000, 100, FOREVER_MS)),
        ops: Some(bucket(10, 0, FOREVER_MS)),
    };
    let mut rl = RateLimiter::new(config).unwrap();
    assert!(rl.consume(400, TokenType::Bytes));
    assert!(rl.consume(3, TokenType::Ops));
    let state = rl.save();
    assert_eq!(
        state.bandwidth,
        Some(TokenBucketState {
            budget: 700,
            one_time_burst: 0,
            debt: 0
        })
    );

    let json = serde_json::to_string(&state).unwrap();
    let state: RateLimiterState = serde_json::from_str(&json).unwrap();
    let mut restored = RateLimiter::restore(&state).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.config(), config);
    assert!(!restored.is_blocked());
    assert!(restored.consume(7, TokenType::Ops));
    assert!(!restored.consume(1, TokenType::Ops));
}

#[test]
fn restore_keeps_a_debt_and_refuses_states_that_do_not_fit_the_config() {
    let config = RateLimitConfig {
        bandwidth: None,
        ops: Some(bucket(10, 2, FOREVER_MS)),
    };
    let ok = TokenBucketState {
        budget: 0,
        one_time_burst: 0,
        debt: 5,
    };
    let state = |ops| RateLimiterState {
        config,
        bandwidth: None,
        ops,
    };
    let mut rl = RateLimiter::restore(&state(Some(ok))).unwrap();
    assert!(!rl.consume(1, TokenType::Ops));

    let too_full = TokenBucketState { budget: 11, ..ok };
    assert!(matches!(
        RateLimiter::restore(&state(Some(too_full))),
        Err(RateLimiterError::StateBudgetOverSize {
            bucket: "ops",
            budget: 11,
            size: 10
        })
    ));
    let big_burst = TokenBucketState {
        one_time_burst: 3,
        ..ok
    };
    assert!(matches!(
        RateLimiter::restore(&state(Some(big_burst))),
        Err(RateLimiterError::StateBurstOverConfig { .. })
    ));
    assert!(matches!(
        RateLimiter::restore(&state(None)),
        Err(RateLimiterError::StateBucketMismatch { bucket: "ops" })
    ));
    let mut extra = state(Some(ok));
    extra.bandwidth = Some(ok);
    assert!(matches!(
        RateLimiter::restore(&extra),
        Err(RateLimiterError::StateBucketMismatch {
            bucket: "bandwidth"
        })
    ));
}

#[test]
fn metrics_count_what_passed_and_each_refusal() {
    let mut rl = limiter(
        Some(bucket(100, 0, FOREVER_MS)),
        Some(bucket(2, 0, FOREVER_MS)),
    );
    assert!(rl.consume(1, TokenType::Ops));
    assert!(rl.consume(60, TokenType::Bytes));
    assert!(rl.consume(1, TokenType::Ops));
    assert!(!rl.consume(1, TokenType::Ops));
    assert!(!rl.consume(60, TokenType::Bytes), "blocked");
    assert_eq!(
        rl.metrics(),
        RateLimiterMetrics {
            throttled_bytes_events: 1,
            throttled_ops_events: 1,
            consumed_bytes: 60,
            consumed_ops: 2,
        }
    );
}

#[test]
fn a_request_takes_an_op_and_its_bytes_or_nothing_and_can_be_refunded() {
    let bucket = |size| {
        Some(TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time: 100_000,
        })
    };
    let mut limiter = RateLimiter::new(RateLimitConfig {
        bandwidth: bucket(100),
        ops: bucket(2),
    })
    .unwrap();
    assert!(limiter.consume_request(60));
    // The bytes are short: the op it took is given back.
    assert!(!limiter.consume_request(60));
    let m = limiter.metrics();
    assert_eq!((m.consumed_ops, m.consumed_bytes), (1, 60));
    limiter.refund_request(60);
    let m = limiter.metrics();
    assert_eq!((m.consumed_ops, m.consumed_bytes), (0, 0));
}
