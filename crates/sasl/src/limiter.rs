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
