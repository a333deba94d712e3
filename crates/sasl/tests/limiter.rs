#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use waddle_sasl::FailureLimiter;

const WINDOW: Duration = Duration::from_secs(60);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn blocks_after_max_failures_and_unblocks_after_window() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(3, WINDOW, 100);
    assert_eq!(l.check("ip:1", t0), Ok(()));
    l.record_failure("ip:1", t0);
    l.record_failure("ip:1", t0 + secs(10));
    assert_eq!(l.check("ip:1", t0 + secs(10)), Ok(()));
    l.record_failure("ip:1", t0 + secs(20));
    assert_eq!(l.check("ip:1", t0 + secs(20)), Err(secs(40)));
    assert_eq!(l.check("ip:1", t0 + secs(59)), Err(secs(1)));
    // The first failure has left the window.
    assert_eq!(l.check("ip:1", t0 + secs(60)), Ok(()));
    // Sliding window: one more failure blocks again until the second one leaves.
    l.record_failure("ip:1", t0 + secs(61));
    assert_eq!(l.check("ip:1", t0 + secs(61)), Err(secs(9)));
    assert_eq!(l.check("ip:1", t0 + secs(70)), Ok(()));
}

#[test]
fn failures_spread_beyond_the_window_never_block() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(2, WINDOW, 100);
    for i in 0..10 {
        let now = t0 + secs(61 * i);
        assert_eq!(l.check("user:alice", now), Ok(()));
        l.record_failure("user:alice", now);
    }
}

#[test]
fn success_resets() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(2, WINDOW, 100);
    l.record_failure("user:alice", t0);
    l.record_success("user:alice");
    l.record_failure("user:alice", t0);
    assert_eq!(l.check("user:alice", t0), Ok(()));
    l.record_failure("user:alice", t0);
    assert!(l.check("user:alice", t0).is_err());
    l.record_success("user:alice");
    assert_eq!(l.check("user:alice", t0), Ok(()));
    assert_eq!(l.tracked_keys(), 0);
    l.record_success("user:nobody");
}

#[test]
fn keys_are_independent() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(1, WINDOW, 100);
    l.record_failure("ip:1", t0);
    assert!(l.check("ip:1", t0).is_err());
    assert_eq!(l.check("ip:2", t0), Ok(()));
    assert_eq!(l.check("user:ip:1", t0), Ok(()));
}

#[test]
fn eviction_bounds_memory() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(1, WINDOW, 3);
    for i in 0..10u64 {
        l.record_failure(&format!("ip:{i}"), t0 + secs(i));
        assert!(l.tracked_keys() <= 3);
    }
    assert_eq!(l.tracked_keys(), 3);
    // The oldest keys were evicted, the newest are still blocked.
    assert_eq!(l.check("ip:0", t0 + secs(10)), Ok(()));
    assert_eq!(l.check("ip:6", t0 + secs(10)), Ok(()));
    for i in 7..10 {
        assert!(l.check(&format!("ip:{i}"), t0 + secs(10)).is_err(), "ip:{i}");
    }
}

#[test]
fn eviction_picks_the_least_recent_failure() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(5, WINDOW, 2);
    l.record_failure("a", t0);
    l.record_failure("b", t0);
    l.record_failure("a", t0 + secs(1)); // "a" is now the most recent
    l.record_failure("c", t0 + secs(2)); // evicts "b"
    assert_eq!(l.tracked_keys(), 2);
    for _ in 0..3 {
        l.record_failure("a", t0 + secs(3));
    }
    assert!(l.check("a", t0 + secs(3)).is_err(), "a kept its five failures");
    l.record_failure("b", t0 + secs(4)); // evicts "c"
    for _ in 0..4 {
        l.record_failure("c", t0 + secs(4)); // evicts "a" first, then fills "c"
    }
    assert_eq!(l.tracked_keys(), 2);
    assert_eq!(l.check("a", t0 + secs(4)), Ok(()));
}

#[test]
fn failures_per_key_are_capped() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(2, WINDOW, 10);
    for i in 0..1000 {
        l.record_failure("k", t0 + Duration::from_millis(i));
    }
    // Only the last two failures count: blocked until the older of them expires.
    assert_eq!(l.check("k", t0 + Duration::from_millis(999)), Err(WINDOW - Duration::from_millis(1)));
}

#[test]
fn purge_expired_and_check_forget_stale_keys() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(3, WINDOW, 10);
    l.record_failure("a", t0);
    l.record_failure("b", t0 + secs(30));
    l.purge_expired(t0 + secs(60));
    assert_eq!(l.tracked_keys(), 1);
    assert_eq!(l.check("b", t0 + secs(90)), Ok(()));
    assert_eq!(l.tracked_keys(), 0);
}

#[test]
fn zero_limits_are_clamped() {
    let t0 = Instant::now();
    let mut l = FailureLimiter::new(0, WINDOW, 0);
    assert_eq!(l.check("a", t0), Ok(()));
    l.record_failure("a", t0);
    assert_eq!(l.check("a", t0), Err(WINDOW));
    l.record_failure("b", t0);
    assert_eq!(l.tracked_keys(), 1);
    assert_eq!(l.check("a", t0), Ok(()));
}

#[test]
fn clock_going_backwards_does_not_panic() {
    let t0 = Instant::now() + secs(1000);
    let mut l = FailureLimiter::new(1, WINDOW, 10);
    l.record_failure("a", t0);
    assert_eq!(l.check("a", t0 - secs(5)), Err(WINDOW));
    let mut huge = FailureLimiter::new(1, Duration::MAX, 10);
    huge.record_failure("a", t0);
    assert_eq!(huge.check("a", t0 + secs(5)), Err(Duration::MAX - secs(5)));
}
