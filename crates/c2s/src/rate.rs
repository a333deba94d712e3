//! Per-session rate limits (the seed's table: messages per room, presence updates, room
//! joins, IQ requests), as token buckets. I/O-free: callers pass the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `count` events per `window`, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub window: Duration,
}

impl Rate {
    pub const fn new(count: u32, window_secs: u64) -> Rate {
        Rate { count, window: Duration::from_secs(window_secs) }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// Messages to one destination (room or contact).
    pub messages: Rate,
    pub presence: Rate,
    pub joins: Rate,
    pub iq: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            messages: Rate::new(10, 10),
            presence: Rate::new(5, 60),
            joins: Rate::new(10, 60),
            iq: Rate::new(20, 10),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(rate.count), updated: now }
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let capacity = f64::from(rate.count);
        let window = rate.window.as_secs_f64();
        if window > 0.0 {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * capacity / window).min(capacity);
        } else {
            self.tokens = capacity;
        }
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which limit a stanza falls under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    Message,
    Presence,
    Join,
    Iq,
}

/// The buckets of one session. Per-destination message buckets are bounded: the
/// least recently used destination is forgotten beyond `MAX_DESTINATIONS` (forgetting
/// only ever grants a fresh allowance to a destination idle long enough to be evicted).
#[derive(Debug)]
pub struct SessionRateLimiter {
    limits: RateLimits,
    messages: HashMap<String, Bucket>,
    presence: Option<Bucket>,
    joins: Option<Bucket>,
    iq: Option<Bucket>,
}

const MAX_DESTINATIONS: usize = 64;

impl SessionRateLimiter {
    pub fn new(limits: RateLimits) -> SessionRateLimiter {
        SessionRateLimiter { limits, messages: HashMap::new(), presence: None, joins: None, iq: None }
    }

    /// Whether one more stanza of `kind` (to `destination`, for messages) is allowed now.
    pub fn allow(&mut self, kind: Limited, destination: &str, now: Instant) -> bool {
        let limits = self.limits;
        let (slot, rate) = match kind {
            Limited::Presence => (&mut self.presence, limits.presence),
            Limited::Join => (&mut self.joins, limits.joins),
            Limited::Iq => (&mut self.iq, limits.iq),
            Limited::Message => {
                if !self.messages.contains_key(destination) && self.messages.len() >= MAX_DESTINATIONS {
                    if let Some(oldest) = self.messages.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| k.clone()) {
                        self.messages.remove(&oldest);
                    }
                }
                let bucket =
                    self.messages.entry(destination.to_owned()).or_insert_with(|| Bucket::full(limits.messages, now));
                return bucket.take(limits.messages, now);
            }
        };
        slot.get_or_insert_with(|| Bucket::full(rate, now)).take(rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_limited_per_destination() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        for i in 0..10 {
            assert!(l.allow(Limited::Message, "room@muc", now), "message {i}");
        }
        assert!(!l.allow(Limited::Message, "room@muc", now), "11th within the window");
        assert!(l.allow(Limited::Message, "other@muc", now), "another room has its own budget");
        // One token comes back per second (10 per 10 s).
        assert!(l.allow(Limited::Message, "room@muc", now + Duration::from_millis(1000)));
        assert!(!l.allow(Limited::Message, "room@muc", now + Duration::from_millis(1000)));
    }

    #[test]
    fn presence_joins_and_iq_follow_the_seed_table() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        for (kind, n) in [(Limited::Presence, 5), (Limited::Join, 10), (Limited::Iq, 20)] {
            for _ in 0..n {
                assert!(l.allow(kind, "", now));
            }
            assert!(!l.allow(kind, "", now), "{kind:?} over its limit");
        }
        let later = now + Duration::from_secs(60);
        assert!(l.allow(Limited::Presence, "", later));
        assert!(l.allow(Limited::Join, "", later));
    }

    #[test]
    fn full_window_refills_completely_but_not_beyond_capacity() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        let much_later = now + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(l.allow(Limited::Iq, "", much_later));
        }
        assert!(!l.allow(Limited::Iq, "", much_later));
    }

    #[test]
    fn destination_buckets_are_bounded() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        for i in 0..(MAX_DESTINATIONS * 3) {
            assert!(l.allow(Limited::Message, &format!("r{i}@muc"), now + Duration::from_millis(i as u64)));
        }
        assert!(l.messages.len() <= MAX_DESTINATIONS);
    }
}
