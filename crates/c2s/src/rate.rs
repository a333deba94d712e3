//! Per-session rate limits (the seed's table: messages per destination, presence
//! updates, room joins, IQ requests, plus a general budget over every stanza), as token
//! buckets. I/O-free: callers pass the time.

use std::borrow::Cow;
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
    /// Every stanza the client sends, whatever its type or address: the four limits
    /// above leave types out on purpose (IQ results and errors, presence errors,
    /// leaving), and this budget is what bounds a flood of those.
    pub stanzas: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            messages: Rate::new(10, 10),
            presence: Rate::new(5, 60),
            joins: Rate::new(10, 60),
            iq: Rate::new(20, 10),
            stanzas: Rate::new(300, 10),
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
    /// The general budget over every stanza.
    Stanza,
}

/// The message bucket key of a `to` address: its bare JID, normalized as the router
/// will normalize it, so that case variants and resources of one destination share a
/// bucket (`Bob@HOST/x`, `bob@host/y` and `bob@host` are all `bob@host`). A lowercase
/// ASCII address is already normalized (nodeprep and nameprep only case-fold ASCII),
/// so the common case is a slice of `to` with no parse and no allocation. A `to` that
/// is not a JID keeps its lowercased bare part: the router refuses it anyway, but its
/// case variants still share a bucket.
pub fn destination_key(to: &str) -> Cow<'_, str> {
    let bare = to.split_once('/').map_or(to, |(bare, _)| bare);
    if bare.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return Cow::Borrowed(bare);
    }
    match waddle_jid::BareJid::new(bare) {
        Ok(jid) => Cow::Owned(jid.into_inner()),
        Err(_) => Cow::Owned(bare.to_lowercase()),
    }
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
    stanzas: Option<Bucket>,
}

const MAX_DESTINATIONS: usize = 64;

impl SessionRateLimiter {
    pub fn new(limits: RateLimits) -> SessionRateLimiter {
        SessionRateLimiter { limits, messages: HashMap::new(), presence: None, joins: None, iq: None, stanzas: None }
    }

    /// Whether one more stanza of `kind` (to `destination`, for messages: a key from
    /// [`destination_key`]) is allowed now.
    pub fn allow(&mut self, kind: Limited, destination: &str, now: Instant) -> bool {
        let limits = self.limits;
        let (slot, rate) = match kind {
            Limited::Presence => (&mut self.presence, limits.presence),
            Limited::Join => (&mut self.joins, limits.joins),
            Limited::Iq => (&mut self.iq, limits.iq),
            Limited::Stanza => (&mut self.stanzas, limits.stanzas),
            Limited::Message => {
                // Looked up before inserting: a known destination costs no allocation.
                if let Some(bucket) = self.messages.get_mut(destination) {
                    return bucket.take(limits.messages, now);
                }
                if self.messages.len() >= MAX_DESTINATIONS {
                    if let Some(oldest) = self.messages.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| k.clone()) {
                        self.messages.remove(&oldest);
                    }
                }
                let mut bucket = Bucket::full(limits.messages, now);
                let allowed = bucket.take(limits.messages, now);
                self.messages.insert(destination.to_owned(), bucket);
                return allowed;
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

    #[test]
    fn destination_keys_are_normalized_bare_jids() {
        for to in ["alice@host", "Alice@Host", "ALICE@HOST", "alice@host/x", "Alice@HOST/Phone"] {
            assert_eq!(destination_key(to), "alice@host", "{to}");
        }
        for to in ["Room@MUC.localhost", "room@muc.localhost/Nick", "ROOM@muc.LOCALHOST/other"] {
            assert_eq!(destination_key(to), "room@muc.localhost", "{to}");
        }
        // Non-ASCII: case folding and NFKC as the router's parser does them.
        assert_eq!(destination_key("\u{ff22}ob@host"), "bob@host");
        assert_eq!(destination_key("Ünïcode@Host"), "ünïcode@host");
        assert_eq!(destination_key("host"), "host");
        assert_eq!(destination_key("HOST/res"), "host");
        // Not a JID (two '@'): still case-insensitive.
        assert_eq!(destination_key("A@B@C"), destination_key("a@b@c"));
    }

    #[test]
    fn lowercase_ascii_is_not_copied() {
        assert!(matches!(destination_key("bob@host/phone"), Cow::Borrowed("bob@host")));
        assert!(matches!(destination_key("Bob@host"), Cow::Owned(_)));
    }

    #[test]
    fn case_variants_and_resources_share_one_bucket() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        let variants = ["Alice@Host", "alice@host", "ALICE@HOST", "alice@host/a", "Alice@HOST/b"];
        let allowed = (0..50).filter(|i| l.allow(Limited::Message, &destination_key(variants[i % 5]), now)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn general_budget_covers_every_stanza() {
        let now = Instant::now();
        let mut l = SessionRateLimiter::new(RateLimits::default());
        for i in 0..300 {
            assert!(l.allow(Limited::Stanza, "", now), "stanza {i}");
        }
        assert!(!l.allow(Limited::Stanza, "", now), "301st within the window");
        // 300 per 10 s: 30 come back per second.
        let later = now + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| l.allow(Limited::Stanza, "", later)).count(), 30);
        // The general budget is its own bucket: the others are untouched.
        assert!(l.allow(Limited::Iq, "", later));
        assert!(l.allow(Limited::Message, "bob@host", later));
    }
}
