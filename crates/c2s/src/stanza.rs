//! Stanza classification and reply builders (RFC 6120 §8).

use waddle_xml::Element;

use crate::ns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

/// The kind of a top-level element, if it is a stanza of the client namespace.
pub fn kind(el: &Element) -> Option<StanzaKind> {
    if el.ns() != ns::CLIENT {
        return None;
    }
    match el.name() {
        "message" => Some(StanzaKind::Message),
        "presence" => Some(StanzaKind::Presence),
        "iq" => Some(StanzaKind::Iq),
        _ => None,
    }
}

/// Removes from a message a client sent every XEP-0359 `<stanza-id/>` whose `by` is
/// an address under a domain for which `ours` holds (the server itself, its users, its
/// rooms): clients take a stanza id by their server, their own account or a room as
/// that entity's archive id, so only the server may put one there (XEP-0359 §5). The
/// `by` is compared normalized, as a client resolving it would. Returns whether any
/// was removed; a message without stanza ids is not touched.
pub fn strip_stanza_ids_by(msg: &mut Element, ours: impl Fn(&str) -> bool) -> bool {
    let forged = |c: &Element| {
        c.is("stanza-id", ns::SID)
            && c.attr("by").is_some_and(|by| {
                let bare = crate::rate::destination_key(by);
                let domain = bare.rsplit_once('@').map_or(&*bare, |(_, domain)| domain);
                let domain = domain.strip_suffix('.').unwrap_or(domain);
                ours(domain)
            })
    };
    if !msg.children().any(forged) {
        return false;
    }
    msg.nodes_mut().retain(|n| match n {
        waddle_xml::Node::Element(e) => !forged(e),
        waddle_xml::Node::Text(_) => true,
    });
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }

    /// The type RFC 6120 §8.3.3 lists for each defined condition.
    pub fn for_condition(condition: &str) -> ErrorType {
        match condition {
            "bad-request" | "jid-malformed" | "not-acceptable" | "policy-violation" | "redirect" => ErrorType::Modify,
            "forbidden" | "not-authorized" | "registration-required" | "subscription-required" => ErrorType::Auth,
            "recipient-unavailable" | "resource-constraint" | "remote-server-timeout" | "unexpected-request" => {
                ErrorType::Wait
            }
            _ => ErrorType::Cancel,
        }
    }
}

/// An `<error/>` child with the condition and optional text.
pub fn error_element(condition: &str, text: Option<&str>) -> Element {
    let mut err = Element::new("error", ns::CLIENT)
        .with_attr("type", ErrorType::for_condition(condition).as_str())
        .with_child(Element::new(condition, ns::STANZA_ERRORS));
    if let Some(text) = text {
        err.append_child(Element::new("text", ns::STANZA_ERRORS).with_text(text));
    }
    err
}

/// The error reply to `original` (RFC 6120 §8.3.1): addresses swapped, `type='error'`,
/// original payload kept. `None` when the original is itself an error, which must never
/// be answered with another error.
pub fn error_reply(original: &Element, condition: &str, text: Option<&str>) -> Option<Element> {
    if original.attr("type") == Some("error") {
        return None;
    }
    let mut reply = swap_addresses(original);
    reply.set_attr("type", "error");
    for child in original.children() {
        // IQ errors carry the request payload; keeping it for messages is allowed too.
        reply.append_child(child.clone());
    }
    reply.append_child(error_element(condition, text));
    Some(reply)
}

/// An empty IQ result for `request`.
pub fn iq_result(request: &Element) -> Element {
    let mut reply = swap_addresses(request);
    reply.set_attr("type", "result");
    reply
}

/// An IQ result for `request` carrying `payload`.
pub fn iq_result_with(request: &Element, payload: Element) -> Element {
    iq_result(request).with_child(payload)
}

fn swap_addresses(original: &Element) -> Element {
    let mut reply = Element::new(original.name(), ns::CLIENT);
    if let Some(id) = original.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = original.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = original.attr("to") {
        reply.set_attr("from", to);
    }
    reply
}

/// The payload element of an IQ: RFC 6120 §8.2.3 requires exactly one child for
/// get/set.
pub fn iq_payload(iq: &Element) -> Option<&Element> {
    let mut children = iq.children();
    let first = children.next()?;
    if children.next().is_some() {
        return None;
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq() -> Element {
        Element::new("iq", ns::CLIENT)
            .with_attr("id", "q1")
            .with_attr("type", "get")
            .with_attr("from", "alice@example.org/a")
            .with_attr("to", "bob@example.org/b")
            .with_child(Element::new("query", "urn:example"))
    }

    #[test]
    fn error_reply_swaps_and_keeps_payload() {
        let reply = error_reply(&iq(), "service-unavailable", None).unwrap_or_else(|| panic!("no reply"));
        assert_eq!(reply.attr("to"), Some("alice@example.org/a"));
        assert_eq!(reply.attr("from"), Some("bob@example.org/b"));
        assert_eq!(reply.attr("type"), Some("error"));
        assert_eq!(reply.attr("id"), Some("q1"));
        assert!(reply.has_child("query", "urn:example"));
        let err = reply.get_child("error", ns::CLIENT).unwrap_or_else(|| panic!("no error"));
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZA_ERRORS));
    }

    #[test]
    fn errors_are_never_answered_with_errors() {
        let mut e = iq();
        e.set_attr("type", "error");
        assert!(error_reply(&e, "service-unavailable", None).is_none());
    }

    #[test]
    fn condition_types_follow_rfc6120() {
        assert_eq!(ErrorType::for_condition("policy-violation"), ErrorType::Modify);
        assert_eq!(ErrorType::for_condition("forbidden"), ErrorType::Auth);
        assert_eq!(ErrorType::for_condition("item-not-found"), ErrorType::Cancel);
        assert_eq!(ErrorType::for_condition("resource-constraint"), ErrorType::Wait);
    }

    #[test]
    fn iq_payload_requires_exactly_one_child() {
        assert!(iq_payload(&iq()).is_some());
        let two = iq().with_child(Element::new("x", "y"));
        assert!(iq_payload(&two).is_none());
        assert!(iq_payload(&Element::new("iq", ns::CLIENT)).is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&iq()), Some(StanzaKind::Iq));
        assert_eq!(kind(&Element::new("message", "jabber:server")), None);
        assert_eq!(kind(&Element::new("foo", ns::CLIENT)), None);
    }

    #[test]
    fn stanza_ids_by_the_server_its_users_and_rooms_are_stripped() {
        let sid = |by: &str| Element::new("stanza-id", ns::SID).with_attr("id", "forged").with_attr("by", by);
        let mut msg = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT))
            .with_child(sid("localhost"))
            .with_child(sid("LocalHost."))
            .with_child(sid("alice@localhost"))
            .with_child(sid("Bob@LOCALHOST/phone"))
            .with_child(sid("room@muc.localhost"))
            .with_child(sid("elsewhere.example"))
            .with_child(sid("carol@elsewhere.example"))
            .with_child(Element::new("origin-id", ns::SID).with_attr("id", "mine"));
        assert!(strip_stanza_ids_by(&mut msg, |d| ["localhost", "muc.localhost"].contains(&d)));
        let left: Vec<_> = msg.children().filter(|c| c.is("stanza-id", ns::SID)).filter_map(|c| c.attr("by")).collect();
        assert_eq!(left, ["elsewhere.example", "carol@elsewhere.example"]);
        assert!(msg.has_child("origin-id", ns::SID), "the client's own origin id stays");
        assert!(msg.has_child("body", ns::CLIENT));
        assert!(
            !strip_stanza_ids_by(&mut msg, |d| ["localhost", "muc.localhost"].contains(&d)),
            "nothing more to strip"
        );
    }
}
