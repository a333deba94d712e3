//! The client side of XEP-0198 Stream Management (`--sm`): counting, acknowledgement
//! requests and answers, and the check that the server never acknowledges more than was
//! sent. The generator never resumes (a benchmark session that breaks is a failed run);
//! [`Sm::resumed`] and `Connector::resume` are for the chaos harness, whose clients do.
//!
//! Counting follows XEP-0198 §4: from `<enabled/>` on, the client counts the stanzas it
//! handles (`message`, `presence`, `iq`; nonzas such as `<r/>` and `<a/>` do not count),
//! the server counts the stanzas it received after `<enable/>`, and `h` travels modulo
//! 2^32. The generator answers every `<r/>` at once and asks for an acknowledgement
//! itself every `--sm-request-every` stanzas, as a mobile client would.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use waddle_xml::{Element, NS_CLIENT};

pub const NS_SM: &str = "urn:xmpp:sm:3";

/// `<r/>`, as the generator sends it.
pub const REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// What the run asks of stream management.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmConfig {
    /// Send `<r/>` after every this many stanzas; 0: never during the load (the final
    /// request after the load is still sent).
    pub request_every: u32,
    /// Ask for a resumable session (`<enable resume='true'/>`) and require the server to
    /// grant it. The generator never resumes; this only measures what offering it costs.
    pub resume: bool,
}

/// The server advertised no `<sm xmlns='urn:xmpp:sm:3'/>` after authentication. A type of
/// its own so that `main` can exit with a code of its own (3), which lets
/// `scripts/bench-smoke.sh` tell "not offered" from "offered and broken".
#[derive(Debug, thiserror::Error)]
#[error(
    "the server does not advertise XEP-0198 stream management (<sm xmlns='urn:xmpp:sm:3'/>) in its \
     post-authentication stream features"
)]
pub struct SmNotOffered;

/// The answer to the server's `<r/>`.
pub fn write_answer(out: &mut Vec<u8>, h: u32) {
    use std::io::Write as _;
    let _ = write!(out, "<a xmlns='urn:xmpp:sm:3' h='{h}'/>");
}

/// `h` of the server's `<a/>`, checked against what the client sent.
///
/// `acked` and `sent` are the client's totals (not wrapped): the server's `h` is their
/// value modulo 2^32. Returns how many stanzas `h` newly acknowledges, or a description
/// of the protocol error when `h` acknowledges more than was sent (which includes an `h`
/// that went backwards: modulo 2^32 that is a jump forwards by almost 2^32).
pub fn check_ack(acked: u64, h: u32, sent: u64) -> Result<u32, String> {
    let newly = h.wrapping_sub(acked as u32);
    let outstanding = sent.saturating_sub(acked);
    if u64::from(newly) > outstanding {
        return Err(format!(
            "server acknowledged h={h}, but the client has sent {sent} stanzas (h={} mod 2^32) and {acked} were \
             acknowledged before",
            sent as u32
        ));
    }
    Ok(newly)
}

/// Counters one session's reader and writer share, and the report reads.
#[derive(Debug, Default)]
pub struct SmShared {
    /// Stanzas sent since `<enable/>` (the writer counts before writing, so an `<a/>`
    /// can never race ahead of the count).
    sent: AtomicU64,
    /// Stanzas the server has acknowledged (written by the reader only).
    acked: AtomicU64,
    /// `<r/>` sent by the client.
    requests_sent: AtomicU64,
    /// The server's `<r/>` answered.
    requests_answered: AtomicU64,
    /// `<a/>` received.
    acks_received: AtomicU64,
    /// Protocol errors; the first one's description is kept for the report.
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Inbound stanzas handled (the `h` to resume with), mirrored by the reader.
    handled: AtomicU32,
    /// The server's id for a resumable session (`<enabled id='…'/>`).
    resume_id: Mutex<Option<String>>,
}

/// Totals over the sessions of a run, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmStats {
    /// Sessions with stream management enabled.
    pub sessions: u64,
    pub sent: u64,
    pub acked: u64,
    pub requests_sent: u64,
    pub requests_answered: u64,
    pub acks_received: u64,
    pub errors: u64,
}

impl SmStats {
    pub fn add(&mut self, other: SmStats) {
        self.sessions += other.sessions;
        self.sent += other.sent;
        self.acked += other.acked;
        self.requests_sent += other.requests_sent;
        self.requests_answered += other.requests_answered;
        self.acks_received += other.acks_received;
        self.errors += other.errors;
    }

    /// Stanzas sent and not (yet) acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent.saturating_sub(self.acked)
    }
}

impl SmShared {
    pub fn stats(&self) -> SmStats {
        SmStats {
            sessions: 1,
            sent: self.sent.load(Ordering::Acquire),
            acked: self.acked.load(Ordering::Acquire),
            requests_sent: self.requests_sent.load(Ordering::Relaxed),
            requests_answered: self.requests_answered.load(Ordering::Relaxed),
            acks_received: self.acks_received.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Everything sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked.load(Ordering::Acquire) >= self.sent.load(Ordering::Acquire)
    }

    /// Everything sent has been acknowledged and as many `<a/>` have arrived as `<r/>`
    /// were sent (a server may also send `<a/>` unasked, so this cannot tell which
    /// request an answer was for; it does wait for the answer to the last one).
    pub fn settled(&self) -> bool {
        self.all_acked() && self.acks_received.load(Ordering::Acquire) >= self.requests_sent.load(Ordering::Acquire)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// Inbound stanzas handled so far (modulo 2^32): the `h` of a `<resume/>`.
    pub fn handled(&self) -> u32 {
        self.handled.load(Ordering::Acquire)
    }

    /// The id to resume this session with, when the server granted resumption.
    pub fn resume_id(&self) -> Option<String> {
        self.resume_id.lock().ok().and_then(|id| id.clone())
    }

    /// Records a protocol error that did not end the session.
    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(what);
        }
    }
}

/// The sending side: counts outbound stanzas and says when to ask for an ack.
#[derive(Debug)]
pub struct SmOut {
    shared: Arc<SmShared>,
    request_every: u32,
    since_request: u32,
}

impl SmOut {
    /// Called before one stanza is written; true when an `<r/>` should follow it (in the
    /// same write).
    pub fn stanza(&mut self) -> bool {
        self.shared.sent.fetch_add(1, Ordering::AcqRel);
        if self.request_every == 0 {
            return false;
        }
        self.since_request += 1;
        if self.since_request >= self.request_every {
            self.request_sent();
            return true;
        }
        false
    }

    /// An `<r/>` was sent (after a stanza or on its own).
    pub fn request_sent(&mut self) {
        self.since_request = 0;
        self.shared.requests_sent.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the reader does with one top-level element.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Not stream management: hand it on (counted if it is a stanza).
    Stanza,
    /// The server's `<r/>`: send `<a h='…'/>` with this value at once.
    Answer(u32),
    /// The server's `<a/>`, accepted.
    Acked,
    /// A stream management nonza that breaks the protocol.
    ProtocolError(String),
}

/// The receiving side: counts handled stanzas, classifies nonzas.
#[derive(Debug)]
pub struct SmIn {
    shared: Arc<SmShared>,
    /// Inbound stanzas handled since `<enabled/>`, modulo 2^32.
    handled: u32,
}

impl SmIn {
    pub fn classify(&mut self, el: &Element) -> Inbound {
        if el.ns() != NS_SM {
            if el.ns() == NS_CLIENT && matches!(el.name(), "message" | "presence" | "iq") {
                self.handled = self.handled.wrapping_add(1);
                self.shared.handled.store(self.handled, Ordering::Release);
            }
            return Inbound::Stanza;
        }
        match el.name() {
            "r" => {
                self.shared.requests_answered.fetch_add(1, Ordering::Relaxed);
                Inbound::Answer(self.handled)
            }
            "a" => {
                self.shared.acks_received.fetch_add(1, Ordering::AcqRel);
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Inbound::ProtocolError(format!("<a/> without a valid h: h={:?}", el.attr("h")));
                };
                let acked = self.shared.acked.load(Ordering::Acquire);
                match check_ack(acked, h, self.shared.sent.load(Ordering::Acquire)) {
                    Ok(newly) => {
                        self.shared.acked.store(acked + u64::from(newly), Ordering::Release);
                        Inbound::Acked
                    }
                    Err(e) => Inbound::ProtocolError(e),
                }
            }
            other => Inbound::ProtocolError(format!("unexpected <{other} xmlns='{NS_SM}'/> on an enabled stream")),
        }
    }

    /// The current `h` (for the last `<a/>` before closing).
    pub fn handled(&self) -> u32 {
        self.handled
    }

    pub fn shared(&self) -> &Arc<SmShared> {
        &self.shared
    }
}

/// Both sides of one enabled stream, before the stream is split.
#[derive(Debug)]
pub struct Sm {
    pub inbound: SmIn,
    pub outbound: SmOut,
}

impl Sm {
    /// State for a stream the server has just answered with `<enabled/>`.
    pub fn enabled(config: SmConfig) -> Sm {
        Sm::starting_at(config, 0)
    }

    /// As [`Sm::enabled`], with the inbound counter starting at `handled` (tests of the
    /// wrap at 2^32).
    pub fn starting_at(config: SmConfig, handled: u32) -> Sm {
        let shared = Arc::new(SmShared { handled: AtomicU32::new(handled), ..SmShared::default() });
        Sm {
            inbound: SmIn { shared: Arc::clone(&shared), handled },
            outbound: SmOut { shared, request_every: config.request_every, since_request: 0 },
        }
    }
}

impl Sm {
    /// State for a stream resumed (`<resumed h='server_h'/>`) from a session whose
    /// counters were `previous`: inbound counting goes on from the `h` the client
    /// resumed with, outbound from what the old session sent, and `server_h`
    /// acknowledges what the server had received of it.
    pub fn resumed(config: SmConfig, previous: &SmShared, server_h: u32) -> Result<Sm, String> {
        let (sent, acked) = (previous.sent.load(Ordering::Acquire), previous.acked.load(Ordering::Acquire));
        let newly = check_ack(acked, server_h, sent)?;
        let handled = previous.handled();
        let shared = Arc::new(SmShared {
            sent: AtomicU64::new(sent),
            acked: AtomicU64::new(acked + u64::from(newly)),
            handled: AtomicU32::new(handled),
            resume_id: Mutex::new(previous.resume_id()),
            ..SmShared::default()
        });
        Ok(Sm {
            inbound: SmIn { shared: Arc::clone(&shared), handled },
            outbound: SmOut { shared, request_every: config.request_every, since_request: 0 },
        })
    }

    /// Records the id a resumable session was granted.
    pub fn set_resume_id(&self, id: &str) {
        if let Ok(mut slot) = self.inbound.shared.resume_id.lock() {
            *slot = Some(id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_counters_go_on_from_the_old_session() {
        let mut old = Sm::enabled(SmConfig { request_every: 0, resume: true });
        old.set_resume_id("abc");
        for _ in 0..5 {
            old.outbound.stanza();
        }
        assert_eq!(old.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='2'/>")), Inbound::Acked);
        old.inbound.classify(&el("<message/>"));
        let shared = Arc::clone(old.inbound.shared());
        assert_eq!(shared.handled(), 1);
        let new =
            Sm::resumed(SmConfig { request_every: 0, resume: true }, &shared, 4).unwrap_or_else(|e| panic!("{e}"));
        let stats = new.inbound.shared().stats();
        assert_eq!((stats.sent, stats.acked), (5, 4));
        assert_eq!(new.inbound.handled(), 1);
        assert_eq!(new.inbound.shared().resume_id().as_deref(), Some("abc"));
        assert!(Sm::resumed(SmConfig { request_every: 0, resume: true }, &shared, 6).is_err());
    }

    fn el(xml: &str) -> Element {
        Element::from_bytes(xml.as_bytes(), NS_CLIENT).unwrap_or_else(|e| panic!("{xml}: {e}"))
    }

    const CONFIG: SmConfig = SmConfig { request_every: 5, resume: false };

    #[test]
    fn inbound_counter_wraps_at_2_pow_32() {
        let mut sm = Sm::starting_at(CONFIG, u32::MAX - 1);
        let msg = el("<message from='a@b/c'><body>x</body></message>");
        assert_eq!(sm.inbound.classify(&msg), Inbound::Stanza);
        assert_eq!(sm.inbound.handled(), u32::MAX);
        assert_eq!(sm.inbound.classify(&el("<presence/>")), Inbound::Stanza);
        assert_eq!(sm.inbound.handled(), 0, "h wraps to 0 after 2^32 - 1");
        assert_eq!(sm.inbound.classify(&el("<iq type='get' id='1'/>")), Inbound::Stanza);
        assert_eq!(sm.inbound.classify(&el("<r xmlns='urn:xmpp:sm:3'/>")), Inbound::Answer(1));
    }

    #[test]
    fn only_stanzas_count() {
        let mut sm = Sm::enabled(CONFIG);
        for xml in [
            "<r xmlns='urn:xmpp:sm:3'/>",
            "<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>",
            "<message xmlns='jabber:server'/>",
            "<foo/>",
        ] {
            sm.inbound.classify(&el(xml));
        }
        assert_eq!(sm.inbound.handled(), 0);
        for xml in ["<message/>", "<presence/>", "<iq type='result' id='x'/>"] {
            assert_eq!(sm.inbound.classify(&el(xml)), Inbound::Stanza);
        }
        assert_eq!(sm.inbound.handled(), 3);
        // Requests do not count, however many: the answer stays at 3.
        assert_eq!(sm.inbound.classify(&el("<r xmlns='urn:xmpp:sm:3'/>")), Inbound::Answer(3));
        assert_eq!(sm.inbound.classify(&el("<r xmlns='urn:xmpp:sm:3'/>")), Inbound::Answer(3));
        assert_eq!(sm.inbound.shared().stats().requests_answered, 3);
    }

    #[test]
    fn answer_is_well_formed() {
        let mut out = Vec::new();
        write_answer(&mut out, u32::MAX);
        let a = el(std::str::from_utf8(&out).unwrap_or_default());
        assert!(a.is("a", NS_SM));
        assert_eq!(a.attr("h"), Some("4294967295"));
        let r = el(std::str::from_utf8(REQUEST).unwrap_or_default());
        assert!(r.is("r", NS_SM));
    }

    #[test]
    fn ack_arithmetic_across_the_wrap() {
        let two32 = 1u64 << 32;
        // Nothing outstanding: only h equal to the last one is valid.
        assert_eq!(check_ack(7, 7, 7), Ok(0));
        assert!(check_ack(7, 8, 7).is_err());
        assert_eq!(check_ack(0, 3, 5), Ok(3));
        assert!(check_ack(0, 6, 5).is_err());
        // The client has sent 2^32 + 3 stanzas; 2^32 - 2 were acknowledged (h = 2^32 - 2).
        assert_eq!(check_ack(two32 - 2, 1, two32 + 3), Ok(3));
        assert_eq!(check_ack(two32 - 2, 3, two32 + 3), Ok(5));
        assert!(check_ack(two32 - 2, 4, two32 + 3).is_err(), "one more than was sent");
        // h going backwards is a huge jump forwards modulo 2^32.
        assert!(check_ack(two32 - 2, u32::MAX - 2, two32 + 3).is_err());
        assert!(check_ack(10, 9, 20).is_err());
    }

    #[test]
    fn acks_are_checked_against_what_was_sent() {
        let mut sm = Sm::enabled(SmConfig { request_every: 2, resume: false });
        // Three stanzas sent; a request is due after the second.
        assert!(!sm.outbound.stanza());
        assert!(sm.outbound.stanza());
        assert!(!sm.outbound.stanza());
        assert_eq!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='2'/>")), Inbound::Acked);
        assert!(!sm.inbound.shared().all_acked());
        assert_eq!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='3'/>")), Inbound::Acked);
        assert!(sm.inbound.shared().all_acked());
        assert!(matches!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='4'/>")), Inbound::ProtocolError(_)));
        assert!(matches!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='x'/>")), Inbound::ProtocolError(_)));
        assert!(matches!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3'/>")), Inbound::ProtocolError(_)));
        assert!(matches!(sm.inbound.classify(&el("<enabled xmlns='urn:xmpp:sm:3'/>")), Inbound::ProtocolError(_)));
        let stats = sm.inbound.shared().stats();
        assert_eq!((stats.sent, stats.acked, stats.requests_sent, stats.acks_received), (3, 3, 1, 5));
        assert_eq!(stats.unacked(), 0);
    }

    #[test]
    fn settled_waits_for_the_answer_to_the_last_request() {
        let mut sm = Sm::enabled(SmConfig { request_every: 2, resume: false });
        let shared = Arc::clone(sm.inbound.shared());
        assert!(shared.settled(), "nothing sent, nothing asked");
        sm.outbound.stanza();
        assert!(sm.outbound.stanza());
        assert!(!shared.settled());
        // An answer that leaves a stanza unacknowledged does not settle the session.
        assert_eq!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='1'/>")), Inbound::Acked);
        assert!(!shared.settled(), "one stanza still unacknowledged");
        sm.outbound.request_sent();
        assert_eq!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='2'/>")), Inbound::Acked);
        assert!(shared.settled());
        // Everything is acknowledged, but a new request has had no answer yet.
        sm.outbound.request_sent();
        assert!(shared.all_acked() && !shared.settled());
        assert_eq!(sm.inbound.classify(&el("<a xmlns='urn:xmpp:sm:3' h='2'/>")), Inbound::Acked);
        assert!(shared.settled());
    }

    #[test]
    fn no_requests_when_every_is_zero() {
        let mut sm = Sm::enabled(SmConfig { request_every: 0, resume: false });
        assert!((0..100).all(|_| !sm.outbound.stanza()));
        assert_eq!(sm.inbound.shared().stats().sent, 100);
    }
}
