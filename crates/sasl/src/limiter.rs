use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Rate limiting of authentication failures, I/O-free (callers pass `now`).
///
/// Keys are arbitrary strings (`"ip:127.0.0.1"`, `"user:alice"`). A key is blocked while
/// it has `max_failures` recorded failures within the last `window` (a sliding window):
/// [`check`](Self::check) then returns how long until the oldest of those failures leaves
/// the window. [`record_success`](Self::record_success) forgets a key.
///
/// Memory is bounded: at most `max_keys` keys are tracked, each with at most
/// `max_failures` timestamps. When full, the key whose last failure is the oldest is
/// evicted to make room.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    max_keys: usize,
    entries: HashMap<String, Entry>,
    /// Recency index: sequence number of each key's last failure → key.
    order: BTreeMap<u64, String>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    /// Failure times within the window, oldest first, at most `max_failures`.
    failures: VecDeque<Instant>,
    seq: u64,
}

impl Entry {
    fn prune(&mut self, now: Instant, window: Duration) {
        self.failures.retain(|&t| now.saturating_duration_since(t) < window);
    }
}

impl FailureLimiter {
    /// `max_failures` and `max_keys` of 0 are treated as 1.
    pub fn new(max_failures: u32, window: Duration, max_keys: usize) -> FailureLimiter {
        FailureLimiter {
            max_failures: max_failures.max(1),
            window,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// `Ok(())` if an attempt for `key` may proceed, otherwise `Err(retry_after)`.
    pub fn check(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Ok(());
        };
        entry.prune(now, self.window);
        if entry.failures.is_empty() {
            let seq = entry.seq;
            self.entries.remove(key);
            self.order.remove(&seq);
            return Ok(());
        }
        if entry.failures.len() < self.max_failures as usize {
            return Ok(());
        }
        let oldest = entry.failures.iter().min().copied().unwrap_or(now);
        Err(self.window.saturating_sub(now.saturating_duration_since(oldest)))
    }

    /// Records one failed attempt for `key` at `now`.
    pub fn record_failure(&mut self, key: &str, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            entry.prune(now, self.window);
            entry.failures.push_back(now);
            while entry.failures.len() > self.max_failures as usize {
                entry.failures.pop_front();
            }
            self.order.remove(&entry.seq);
            entry.seq = seq;
            self.order.insert(seq, key.to_owned());
            return;
        }
        while self.entries.len() >= self.max_keys {
            let Some((_, evicted)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&evicted);
        }
        self.entries.insert(key.to_owned(), Entry { failures: VecDeque::from([now]), seq });
        self.order.insert(seq, key.to_owned());
    }

    /// Forgets `key` (after a successful authentication).
    pub fn record_success(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.seq);
        }
    }

    /// Failures of `key` still within the window at `now`.
    pub fn failures(&mut self, key: &str, now: Instant) -> usize {
        let window = self.window;
        self.entries.get_mut(key).map_or(0, |entry| {
            entry.prune(now, window);
            entry.failures.len()
        })
    }

    /// Drops every key with no failure left in the window (optional housekeeping; the
    /// `max_keys` bound holds without it).
    pub fn purge_expired(&mut self, now: Instant) {
        let window = self.window;
        let order = &mut self.order;
        self.entries.retain(|_, entry| {
            entry.prune(now, window);
            let keep = !entry.failures.is_empty();
            if !keep {
                order.remove(&entry.seq);
            }
            keep
        });
    }

    /// Number of keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.entries.len()
    }
}

/// What a login attempt may do, from [`LoginLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginDecision {
    /// Verify the credentials now.
    Allow,
    /// Verify the credentials after waiting this long (the account is under attack from
    /// elsewhere; this address has not failed for it).
    Delay(Duration),
    /// Refuse without verifying; try again after about this long (exact for an address
    /// block, a hint for an account under attack).
    Block(Duration),
}

/// Login rate limiting that an attacker cannot turn into a lockout of someone else.
///
/// Three sliding windows of the same length, I/O-free (callers pass `now`):
/// - per client address: `max_failures` failures block the address for every account
///   (strict: stops one source guessing or spraying);
/// - per (account, address): whether this address has failed for this account;
/// - per account, all addresses together: from `account_ceiling` failures on, attempts
///   from an address that has failed for the account are refused, and attempts from any
///   other address are delayed ([`LoginDecision::Delay`], doubling with every further
///   failure up to [`MAX_ACCOUNT_DELAY`]) but still verified, so the right password
///   from a clean address always gets in.
///
/// A success forgets the (account, address) failures only: the account-wide count keeps
/// slowing a distributed attacker after the owner has logged in.
#[derive(Debug)]
pub struct LoginLimiter {
    by_address: FailureLimiter,
    by_pair: FailureLimiter,
    by_account: FailureLimiter,
    account_ceiling: usize,
}

/// First account-wide delay, at `account_ceiling` failures.
pub const FIRST_ACCOUNT_DELAY: Duration = Duration::from_millis(500);
/// Longest account-wide delay (well below the XMPP negotiation and HTTP timeouts).
pub const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(8);
/// Doublings from [`FIRST_ACCOUNT_DELAY`] to [`MAX_ACCOUNT_DELAY`]: failures counted
/// beyond the ceiling are capped at this, which also bounds the memory per account.
const DELAY_STEPS: u32 = 4;

impl LoginLimiter {
    /// `max_failures` per address (and per account and address), `account_ceiling` per
    /// account (raised to `max_failures` if lower), within `window`; at most `max_keys`
    /// addresses and pairs and `max_keys / 10` accounts are tracked (the oldest evicted).
    pub fn new(max_failures: u32, account_ceiling: u32, window: Duration, max_keys: usize) -> LoginLimiter {
        let max_failures = max_failures.max(1);
        let account_ceiling = account_ceiling.max(max_failures);
        LoginLimiter {
            by_address: FailureLimiter::new(max_failures, window, max_keys),
            by_pair: FailureLimiter::new(max_failures, window, max_keys),
            by_account: FailureLimiter::new(account_ceiling.saturating_add(DELAY_STEPS), window, max_keys / 10),
            account_ceiling: account_ceiling as usize,
        }
    }

    /// Whether an attempt from `address` (when known) may proceed, and how. `account`
    /// is `None` when the attempt names no valid account (only the address counts).
    pub fn check(&mut self, account: Option<&str>, address: Option<&str>, now: Instant) -> LoginDecision {
        if let Some(address) = address {
            if let Err(retry_after) = self.by_address.check(address, now) {
                return LoginDecision::Block(retry_after);
            }
        }
        let Some(account) = account else {
            return LoginDecision::Allow;
        };
        let pair_failures = match address {
            Some(address) => {
                let pair = pair_key(account, address);
                if let Err(retry_after) = self.by_pair.check(&pair, now) {
                    return LoginDecision::Block(retry_after);
                }
                self.by_pair.failures(&pair, now)
            }
            // An unknown address cannot prove it has not failed.
            None => 1,
        };
        let account_failures = self.by_account.failures(account, now);
        if account_failures < self.account_ceiling {
            return LoginDecision::Allow;
        }
        if pair_failures > 0 {
            return LoginDecision::Block(self.by_account.check(account, now).err().unwrap_or(MAX_ACCOUNT_DELAY));
        }
        let steps = (account_failures - self.account_ceiling).min(DELAY_STEPS as usize) as u32;
        LoginDecision::Delay(FIRST_ACCOUNT_DELAY.saturating_mul(1 << steps).min(MAX_ACCOUNT_DELAY))
    }

    /// Records a failed attempt (wrong password, unknown account, bad proof).
    pub fn record_failure(&mut self, account: Option<&str>, address: Option<&str>, now: Instant) {
        if let Some(address) = address {
            self.by_address.record_failure(address, now);
        }
        if let Some(account) = account {
            if let Some(address) = address {
                self.by_pair.record_failure(&pair_key(account, address), now);
            }
            self.by_account.record_failure(account, now);
        }
    }

    /// Records a successful login: forgets this address's failures for the account.
    pub fn record_success(&mut self, account: &str, address: Option<&str>) {
        if let Some(address) = address {
            self.by_pair.record_success(&pair_key(account, address));
        }
    }

    /// The per-address window alone, for other secrets presented by a client (the admin
    /// token): `Err(retry_after)` while the address is blocked.
    pub fn check_address(&mut self, address: &str, now: Instant) -> Result<(), Duration> {
        self.by_address.check(address, now)
    }

    /// Records a failure against the address only.
    pub fn record_address_failure(&mut self, address: &str, now: Instant) {
        self.by_address.record_failure(address, now);
    }
}

/// Addresses never contain `|`; usernames may, so the address goes first.
fn pair_key(account: &str, address: &str) -> String {
    format!("{address}|{account}")
}
