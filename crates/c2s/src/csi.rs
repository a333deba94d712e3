//! XEP-0352 Client State Indication, free of I/O: while the client says it is inactive,
//! what can wait is held back and coalesced, and what cannot is delivered at once
//! behind everything held before it.

use std::collections::VecDeque;

use waddle_xml::Element;

use crate::ns;

/// The Client State Indication namespace.
pub const NS: &str = "urn:xmpp:csi:0";
/// XEP-0085 chat states.
pub const NS_CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";

/// What an inactive client's session does with one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urgency {
    /// Deliver it now, after flushing whatever is held.
    Now,
    /// Hold it; a newer stanza with the same key replaces it (the newest presence of a
    /// contact, the newest chat state of a conversation).
    Hold(String),
}

/// Presence updates (available and unavailable; subscriptions and errors are not mere
/// updates) and messages that carry only a chat state can wait; the rest cannot.
pub fn urgency(stanza: &Element) -> Urgency {
    let from = || stanza.attr("from").unwrap_or_default().to_owned();
    match stanza.name() {
        "presence" if matches!(stanza.attr("type"), None | Some("unavailable")) => Urgency::Hold(from()),
        "message" if is_chat_state_only(stanza) => Urgency::Hold(format!("{}\u{0}chatstate", from())),
        _ => Urgency::Now,
    }
}

fn is_chat_state_only(message: &Element) -> bool {
    message.attr("type") != Some("error")
        && !message.has_child("body", ns::CLIENT)
        && !message.has_child("subject", ns::CLIENT)
        && message.children().any(|c| c.ns() == NS_CHAT_STATES)
}

/// The stanzas held while the client is inactive, oldest first, at most one per key.
#[derive(Debug)]
pub struct HeldStanzas<T> {
    held: VecDeque<(String, T)>,
    max: usize,
}

/// [`HeldStanzas::hold`] found the queue full: deliver everything held (and this one).
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl<T> HeldStanzas<T> {
    /// A queue that holds at most `max` stanzas (distinct keys).
    pub fn new(max: usize) -> HeldStanzas<T> {
        HeldStanzas { held: VecDeque::new(), max }
    }

    /// Holds `stanza` under `key`, dropping the one it supersedes. `Err(Full)` gives the
    /// stanza back when the queue already holds `max` others.
    pub fn hold(&mut self, key: String, stanza: T) -> Result<(), (Full, T)> {
        if let Some(i) = self.held.iter().position(|(k, _)| *k == key) {
            // The superseded stanza's place goes too: the newer one is delivered in
            // its own turn, after what was held before it.
            self.held.remove(i);
        } else if self.held.len() >= self.max {
            return Err((Full, stanza));
        }
        self.held.push_back((key, stanza));
        Ok(())
    }

    /// Everything held, oldest first.
    pub fn flush(&mut self) -> impl Iterator<Item = T> + '_ {
        self.held.drain(..).map(|(_, s)| s)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn presence(from: &str, ptype: Option<&str>) -> Element {
        let mut p = Element::new("presence", ns::CLIENT).with_attr("from", from);
        if let Some(t) = ptype {
            p.set_attr("type", t);
        }
        p
    }

    fn message(from: &str, child: Element) -> Element {
        Element::new("message", ns::CLIENT).with_attr("from", from).with_attr("type", "chat").with_child(child)
    }

    #[test]
    fn what_waits_and_what_does_not() {
        let composing = Element::new("composing", NS_CHAT_STATES);
        let body = Element::new("body", ns::CLIENT).with_text("hi");
        let cases = [
            (presence("a@x/1", None), true),
            (presence("a@x/1", Some("unavailable")), true),
            (presence("a@x", Some("subscribe")), false),
            (presence("a@x/1", Some("error")), false),
            (message("a@x/1", composing.clone()), true),
            (message("a@x/1", body.clone()), false),
            (message("a@x/1", body).with_child(composing.clone()), false),
            (message("a@x/1", Element::new("subject", ns::CLIENT)).with_child(composing), false),
            (message("a@x/1", Element::new("x", "http://jabber.org/protocol/muc#user")), false),
            (Element::new("iq", ns::CLIENT).with_attr("type", "get"), false),
        ];
        for (stanza, holds) in cases {
            assert_eq!(matches!(urgency(&stanza), Urgency::Hold(_)), holds, "{stanza}");
        }
        // A contact's presence and its chat state are held side by side.
        let Urgency::Hold(p) = urgency(&presence("a@x/1", None)) else { panic!() };
        let Urgency::Hold(c) = urgency(&message("a@x/1", Element::new("active", NS_CHAT_STATES))) else { panic!() };
        assert_ne!(p, c);
    }

    #[test]
    fn the_newest_per_key_wins_and_order_is_kept() {
        let mut held = HeldStanzas::new(10);
        held.hold("a".into(), 1).unwrap();
        held.hold("b".into(), 2).unwrap();
        held.hold("a".into(), 3).unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held.flush().collect::<Vec<_>>(), [2, 3]);
        assert!(held.is_empty());
    }

    #[test]
    fn a_full_queue_gives_the_stanza_back_but_still_coalesces() {
        let mut held = HeldStanzas::new(2);
        held.hold("a".into(), 1).unwrap();
        held.hold("b".into(), 2).unwrap();
        assert_eq!(held.hold("c".into(), 3), Err((Full, 3)));
        held.hold("a".into(), 4).unwrap();
        assert_eq!(held.flush().collect::<Vec<_>>(), [2, 4]);
    }
}
