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

mod login {
    use super::*;
    use waddle_sasl::{LoginDecision, LoginLimiter, FIRST_ACCOUNT_DELAY, MAX_ACCOUNT_DELAY};

    const A: Option<&str> = Some("127.0.0.2");
    const B: Option<&str> = Some("127.0.0.3");
    const ALICE: Option<&str> = Some("alice");

    #[test]
    fn failures_from_one_address_block_it_but_not_the_owner_elsewhere() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(5, 50, WINDOW, 1000);
        for i in 0..5 {
            assert_eq!(l.check(ALICE, A, t0 + secs(i)), LoginDecision::Allow);
            l.record_failure(ALICE, A, t0 + secs(i));
        }
        assert_eq!(l.check(ALICE, A, t0 + secs(5)), LoginDecision::Block(secs(55)));
        // The address is blocked for every account, not only alice.
        assert_eq!(l.check(Some("bob"), A, t0 + secs(5)), LoginDecision::Block(secs(55)));
        assert_eq!(l.check(None, A, t0 + secs(5)), LoginDecision::Block(secs(55)));
        // The owner from another address is not slowed at all below the ceiling.
        assert_eq!(l.check(ALICE, B, t0 + secs(5)), LoginDecision::Allow);
        assert_eq!(l.check(ALICE, A, t0 + secs(60)), LoginDecision::Allow);
    }

    #[test]
    fn distributed_failures_delay_clean_addresses_and_block_failing_ones() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(5, 10, WINDOW, 1000);
        // Ten attackers, one failure each: no address reaches its own limit.
        let attackers: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}")).collect();
        for a in &attackers {
            assert_eq!(l.check(ALICE, Some(a), t0), LoginDecision::Allow);
            l.record_failure(ALICE, Some(a), t0);
        }
        // Every address that failed for alice is refused now...
        assert!(matches!(l.check(ALICE, Some(&attackers[0]), t0), LoginDecision::Block(_)));
        // ... but may still try other accounts (its own limit is not reached).
        assert_eq!(l.check(Some("bob"), Some(&attackers[0]), t0), LoginDecision::Allow);
        // A clean address is delayed, never blocked, and the delay doubles up to a cap.
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Delay(FIRST_ACCOUNT_DELAY));
        l.record_failure(ALICE, Some("10.0.1.1"), t0);
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Delay(FIRST_ACCOUNT_DELAY * 2));
        for i in 2..30 {
            l.record_failure(ALICE, Some(&format!("10.0.1.{i}")), t0);
            assert!(matches!(l.check(ALICE, B, t0), LoginDecision::Delay(d) if d <= MAX_ACCOUNT_DELAY));
        }
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Delay(MAX_ACCOUNT_DELAY));
        // Other accounts are not affected.
        assert_eq!(l.check(Some("bob"), B, t0), LoginDecision::Allow);
        // The account-wide window slides like the others.
        assert_eq!(l.check(ALICE, B, t0 + WINDOW), LoginDecision::Allow);
    }

    #[test]
    fn success_forgets_the_pair_but_not_the_account_count() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(5, 5, WINDOW, 1000);
        for i in 0..4 {
            l.record_failure(ALICE, Some(&format!("10.0.0.{i}")), t0);
        }
        l.record_failure(ALICE, B, t0);
        assert!(matches!(l.check(ALICE, B, t0), LoginDecision::Block(_)));
        l.record_success("alice", B);
        // B is clean again for alice; the account is still over its ceiling.
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Delay(FIRST_ACCOUNT_DELAY));
    }

    #[test]
    fn unknown_address_and_unknown_account() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(2, 2, WINDOW, 1000);
        // No account: only the address counts.
        l.record_failure(None, A, t0);
        l.record_failure(None, A, t0);
        assert_eq!(l.check(None, A, t0), LoginDecision::Block(WINDOW));
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Allow);
        // No address: cannot be shown clean, so over the ceiling it is refused.
        l.record_failure(ALICE, None, t0);
        assert_eq!(l.check(ALICE, None, t0), LoginDecision::Allow);
        l.record_failure(ALICE, None, t0);
        assert!(matches!(l.check(ALICE, None, t0), LoginDecision::Block(_)));
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Delay(FIRST_ACCOUNT_DELAY));
    }

    #[test]
    fn admin_secret_failures_count_against_the_address() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::new(2, 10, WINDOW, 1000);
        assert_eq!(l.check_address("127.0.0.2", t0), Ok(()));
        l.record_address_failure("127.0.0.2", t0);
        l.record_address_failure("127.0.0.2", t0);
        assert_eq!(l.check_address("127.0.0.2", t0), Err(WINDOW));
        assert_eq!(l.check(ALICE, A, t0), LoginDecision::Block(WINDOW));
        assert_eq!(l.check(ALICE, B, t0), LoginDecision::Allow);
    }
}
