//! XEP-0198 Stream Management, free of I/O: the counters, the queue of stanzas the
//! client has not acknowledged, when to ask for an acknowledgement, and the nonzas.
//!
//! The session task owns one [`StreamManagement`] per enabled stream and is its only
//! user: it counts every stanza it handles from the client ([`StreamManagement::handled`])
//! and every stanza it sends ([`StreamManagement::sent`]), and on resumption hands the
//! unacknowledged ones to the new connection. The queue holds whatever the shell sends
//! (shared stanzas), so nothing here knows how a stanza is written.

use std::collections::VecDeque;

use waddle_xml::Element;

use crate::ns;

/// The Stream Management namespace (XEP-0198 §2).
pub const NS: &str = "urn:xmpp:sm:3";

/// Why an acknowledgement or a stanza was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmError {
    /// The client acknowledged more stanzas than were sent (XEP-0198 §4: a stream
    /// error `undefined-condition` with `<handled-count-too-high/>`).
    #[error("acknowledged {h} stanzas, but only {sent} were sent")]
    HandledCountTooHigh { h: u32, sent: u32 },
    /// More stanzas are unacknowledged than the configured bound.
    #[error("more than {0} stanzas unacknowledged")]
    QueueFull(usize),
}

/// When the server asks the client for an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// Ask after this many stanzas sent since the last request (0: never by count).
    pub every_stanzas: u32,
    /// Stanzas allowed to wait unacknowledged; one more ends the session.
    pub max_unacked: usize,
}

/// The Stream Management state of one stream: XEP-0198's two counters and the stanzas
/// sent but not yet acknowledged, oldest first. Counters wrap at 2^32 (§4).
#[derive(Debug)]
pub struct StreamManagement<T> {
    /// Stanzas received from the client and handled (the `h` this side reports).
    handled_in: u32,
    /// The last `h` the client reported: the count of our stanzas it has handled.
    acked_out: u32,
    /// Sent and not acknowledged, oldest first: stanza number `acked_out + 1` is first.
    unacked: VecDeque<T>,
    policy: AckPolicy,
    since_request: u32,
    awaiting_ack: bool,
}

impl<T> StreamManagement<T> {
    pub fn new(policy: AckPolicy) -> StreamManagement<T> {
        StreamManagement {
            handled_in: 0,
            acked_out: 0,
            unacked: VecDeque::new(),
            policy,
            since_request: 0,
            awaiting_ack: false,
        }
    }

    /// Counts one stanza received from the client and handled.
    pub fn handled(&mut self) {
        self.handled_in = self.handled_in.wrapping_add(1);
    }

    /// The `h` this side reports: stanzas handled, modulo 2^32.
    pub fn handled_count(&self) -> u32 {
        self.handled_in
    }

    /// Stanzas sent since enabling, modulo 2^32.
    pub fn sent_count(&self) -> u32 {
        // The queue never holds 2^32 stanzas (it is bounded far below), so the
        // truncation cannot lose anything.
        self.acked_out.wrapping_add(self.unacked.len() as u32)
    }

    /// Records a stanza sent to the client. `Ok(true)` when an `<r/>` should follow it.
    /// `Err(QueueFull)` when it is one more than the bound allows: the stanza is still
    /// kept (it went out and is not acknowledged; where it goes next is the caller's
    /// ending of the session), but the session must end.
    pub fn sent(&mut self, stanza: T) -> Result<bool, SmError> {
        let full = self.unacked.len() >= self.policy.max_unacked;
        self.unacked.push_back(stanza);
        if full {
            return Err(SmError::QueueFull(self.policy.max_unacked));
        }
        self.since_request = self.since_request.saturating_add(1);
        let due = self.policy.every_stanzas > 0 && self.since_request >= self.policy.every_stanzas;
        Ok(due && self.request())
    }

    /// Whether an `<r/>` should go out now for a timed request: something is waiting
    /// and no request is outstanding. Marks the request as sent when it says yes.
    pub fn request_if_waiting(&mut self) -> bool {
        !self.unacked.is_empty() && self.request()
    }

    fn request(&mut self) -> bool {
        if self.awaiting_ack {
            return false;
        }
        self.awaiting_ack = true;
        self.since_request = 0;
        true
    }

    /// Applies the client's `h` (from `<a/>` or `<resume/>`): releases what it
    /// acknowledges and returns how many stanzas that was. An `h` that acknowledges
    /// fewer stanzas than an earlier one did releases nothing.
    pub fn ack(&mut self, h: u32) -> Result<usize, SmError> {
        let newly = h.wrapping_sub(self.acked_out) as usize;
        if newly > self.unacked.len() {
            return Err(SmError::HandledCountTooHigh { h, sent: self.sent_count() });
        }
        self.unacked.drain(..newly);
        self.acked_out = h;
        self.awaiting_ack = false;
        Ok(newly)
    }

    /// The stanzas sent and not acknowledged, oldest first (to re-send on resumption).
    pub fn unacked(&self) -> impl Iterator<Item = &T> {
        self.unacked.iter()
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Takes every unacknowledged stanza (the session ends: they go where undelivered
    /// stanzas go).
    pub fn take_unacked(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.unacked)
    }

    /// How many of our stanzas the client has acknowledged (the last `h` it reported).
    pub fn acked_count(&self) -> u32 {
        self.acked_out
    }

    /// The state of a stream that was kept elsewhere (a session moved from another
    /// node): its two counters and what the client has not acknowledged, oldest first.
    /// Nothing is outstanding, as after [`StreamManagement::resumed`].
    pub fn restore(policy: AckPolicy, handled_in: u32, acked_out: u32, unacked: VecDeque<T>) -> StreamManagement<T> {
        StreamManagement { handled_in, acked_out, unacked, policy, since_request: 0, awaiting_ack: false }
    }

    /// After a resumption nothing is outstanding: the old connection's request died with it.
    pub fn resumed(&mut self) {
        self.awaiting_ack = false;
        self.since_request = 0;
    }
}

/// The secret part of a resumption id: unguessable, so only the client that was given
/// the id can take its session over (it must also authenticate as the same user).
pub fn new_resume_token() -> String {
    crate::negotiation::random_token(24)
}

/// Parses the `h` attribute of `<a/>` or `<resume/>`.
pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

/// `<r/>`: asks the client for its count.
pub fn request() -> Element {
    Element::new("r", NS)
}

/// `<a h='…'/>`: this side's count.
pub fn answer(h: u32) -> Element {
    Element::new("a", NS).with_attr("h", h.to_string())
}

/// `<enabled/>`, with the resumption id and the seconds it stays valid when resumable.
pub fn enabled(resume: Option<(&str, u64)>) -> Element {
    let mut el = Element::new("enabled", NS);
    if let Some((id, max_secs)) = resume {
        el.set_attr("id", id);
        el.set_attr("resume", "true");
        el.set_attr("max", max_secs.to_string());
    }
    el
}

/// `<failed/>` with a stanza error condition and, when known, this side's count.
pub fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut el = Element::new("failed", NS).with_child(Element::new(condition, ns::STANZA_ERRORS));
    if let Some(h) = h {
        el.set_attr("h", h.to_string());
    }
    el
}

/// `<resumed/>` answering a successful `<resume/>`.
pub fn resumed(previd: &str, h: u32) -> Element {
    Element::new("resumed", NS).with_attr("previd", previd).with_attr("h", h.to_string())
}

/// The stream error for an `h` higher than what was sent (XEP-0198 §4).
pub fn handled_count_too_high(h: u32, sent: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<stream:error>");
    Element::new("undefined-condition", ns::STREAM_ERRORS).write_to(&mut out, ns::CLIENT);
    Element::new("handled-count-too-high", NS)
        .with_attr("h", h.to_string())
        .with_attr("send-count", sent.to_string())
        .write_to(&mut out, ns::CLIENT);
    out.extend_from_slice(b"</stream:error></stream:stream>");
    out
}

/// The seconds a resumable session waits for its client: what the client asked for
/// (`max` on `<enable/>`), never more than the server allows.
pub fn resume_timeout(requested: Option<&str>, server_max_secs: u64) -> u64 {
    match requested.and_then(|m| m.parse::<u64>().ok()) {
        Some(asked) if asked > 0 => asked.min(server_max_secs),
        _ => server_max_secs,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sm(every: u32, max: usize) -> StreamManagement<u32> {
        StreamManagement::new(AckPolicy { every_stanzas: every, max_unacked: max })
    }

    #[test]
    fn acks_release_the_oldest_stanzas_in_order() {
        let mut s = sm(0, 100);
        for i in 1..=5 {
            s.sent(i).unwrap();
        }
        assert_eq!(s.sent_count(), 5);
        assert_eq!(s.ack(2), Ok(2));
        assert_eq!(s.unacked().copied().collect::<Vec<_>>(), [3, 4, 5]);
        // A repeated (or stale) h releases nothing.
        assert_eq!(s.ack(2), Ok(0));
        assert_eq!(s.ack(5), Ok(3));
        assert_eq!(s.unacked_len(), 0);
        assert_eq!(s.sent_count(), 5);
    }

    #[test]
    fn an_h_above_what_was_sent_is_refused_and_changes_nothing() {
        let mut s = sm(0, 100);
        s.sent(1).unwrap();
        s.sent(2).unwrap();
        assert_eq!(s.ack(3), Err(SmError::HandledCountTooHigh { h: 3, sent: 2 }));
        assert_eq!(s.unacked_len(), 2);
        assert_eq!(s.ack(1), Ok(1));
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut s = sm(0, 100);
        s.acked_out = u32::MAX - 1;
        s.handled_in = u32::MAX;
        s.handled();
        assert_eq!(s.handled_count(), 0);
        for i in 0..4 {
            s.sent(i).unwrap();
        }
        assert_eq!(s.sent_count(), 2, "u32::MAX - 1 + 4 wraps to 2");
        assert_eq!(s.ack(u32::MAX), Ok(1));
        assert_eq!(s.ack(1), Ok(2), "the h after the wrap acknowledges across it");
        assert_eq!(s.unacked().copied().collect::<Vec<_>>(), [3]);
        assert!(matches!(s.ack(3), Err(SmError::HandledCountTooHigh { .. })));
    }

    #[test]
    fn the_queue_is_bounded_and_keeps_the_stanza_that_overflowed_it() {
        let mut s = sm(0, 2);
        s.sent(1).unwrap();
        s.sent(2).unwrap();
        assert_eq!(s.sent(3), Err(SmError::QueueFull(2)));
        assert_eq!(s.take_unacked().into_iter().collect::<Vec<_>>(), [1, 2, 3], "nothing sent is forgotten");
        let mut s = sm(0, 2);
        s.sent(1).unwrap();
        s.sent(2).unwrap();
        s.ack(1).unwrap();
        s.sent(3).unwrap();
    }

    #[test]
    fn requests_go_out_every_n_stanzas_one_at_a_time() {
        let mut s = sm(3, 100);
        let asks: Vec<bool> = (0..9).map(|i| s.sent(i).unwrap()).collect();
        // The third stanza asks; no second request while the first is unanswered.
        assert_eq!(asks, [false, false, true, false, false, false, false, false, false]);
        s.ack(4).unwrap();
        // Counting restarted at the request: six stanzas since, so the next one asks.
        assert!(s.sent(9).unwrap());
        assert!(!s.request_if_waiting(), "already asked");
        s.ack(10).unwrap();
        assert!(!s.request_if_waiting(), "nothing waiting");
        s.sent(10).unwrap();
        assert!(s.request_if_waiting());
    }

    #[test]
    fn take_unacked_empties_the_queue() {
        let mut s = sm(0, 10);
        s.sent(7).unwrap();
        s.sent(8).unwrap();
        assert_eq!(s.take_unacked().into_iter().collect::<Vec<_>>(), [7, 8]);
        assert_eq!(s.unacked_len(), 0);
    }

    #[test]
    fn nonzas_carry_their_attributes() {
        assert_eq!(parse_h(&answer(42)), Some(42));
        assert_eq!(parse_h(&Element::new("a", NS).with_attr("h", "-1")), None);
        let e = enabled(Some(("abc", 300)));
        assert_eq!((e.attr("id"), e.attr("resume"), e.attr("max")), (Some("abc"), Some("true"), Some("300")));
        assert_eq!(enabled(None).attr("resume"), None);
        let f = failed("item-not-found", Some(5));
        assert!(f.has_child("item-not-found", ns::STANZA_ERRORS));
        assert_eq!(f.attr("h"), Some("5"));
        let text = String::from_utf8(handled_count_too_high(9, 4)).unwrap();
        assert!(text.contains("undefined-condition") && text.contains("handled-count-too-high"), "{text}");
        assert_eq!(resume_timeout(Some("60"), 300), 60);
        assert_eq!(resume_timeout(Some("6000"), 300), 300);
        assert_eq!(resume_timeout(Some("x"), 300), 300);
        assert_eq!(resume_timeout(None, 300), 300);
    }

    #[test]
    fn a_restored_stream_continues_the_counts_of_the_one_it_came_from() {
        let policy = AckPolicy { every_stanzas: 0, max_unacked: 10 };
        let mut kept: StreamManagement<u32> = StreamManagement::new(policy);
        for stanza in 1..=5 {
            assert_eq!(kept.sent(stanza), Ok(false));
        }
        kept.handled();
        kept.handled();
        assert_eq!(kept.ack(2), Ok(2));
        let mut moved =
            StreamManagement::restore(policy, kept.handled_count(), kept.acked_count(), kept.take_unacked());
        assert_eq!((moved.handled_count(), moved.acked_count(), moved.sent_count()), (2, 2, 5));
        assert_eq!(moved.unacked().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(moved.ack(4), Ok(2));
        assert_eq!(moved.unacked().copied().collect::<Vec<_>>(), [5]);
        assert!(matches!(moved.ack(9), Err(SmError::HandledCountTooHigh { h: 9, sent: 5 })));
    }
}
