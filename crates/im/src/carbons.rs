//! XEP-0280 Message Carbons (version 1.0.1): which messages are copied to a user's
//! other resources, and which resources get the copies.
//!
//! The rules are the recommended ones of XEP-0280 §6.1, decided on facts the caller
//! extracts from the stanza ([`MessageFacts`]); no XML is touched here.

use crate::MessageType;

/// What the eligibility rules need to know about one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageFacts {
    /// The message `type`.
    pub msg_type: MessageType,
    /// It has a `<body/>`.
    pub has_body: bool,
    /// It has `<private xmlns='urn:xmpp:carbons:2'/>` (XEP-0280 §9).
    pub private: bool,
    /// It has the XEP-0334 hint `<no-copy xmlns='urn:xmpp:hints'/>`.
    pub no_copy: bool,
    /// It carries a payload typically used in IM: a XEP-0184 receipt, a XEP-0085 chat
    /// state or a XEP-0333 chat marker.
    pub im_payload: bool,
    /// It is MUC-related: it has `<x xmlns='http://jabber.org/protocol/muc#user'/>`, or
    /// it comes from or goes to a MUC service.
    pub muc: bool,
    /// It carries a XEP-0249 direct invitation or a XEP-0045 mediated invitation.
    pub muc_invite: bool,
    /// It already is a carbon copy (has a `<sent/>` or `<received/>` of
    /// `urn:xmpp:carbons:2`).
    pub carbon: bool,
    /// For `type='error'` only: the error answers a message that was itself eligible.
    /// Servers can only know this for errors they correlate with the original; the
    /// caller sets it for the bounces it generates itself.
    pub answers_eligible: bool,
}

/// Which side of the user the message passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// One of the user's resources sent it: `sent` copies.
    Sent,
    /// It is addressed to the user: `received` copies. `from_full_jid` tells whether the
    /// sender's address has a resource (a MUC private message comes from
    /// `room@service/nick`).
    Received {
        /// The `from` of the message is a full JID.
        from_full_jid: bool,
    },
}

/// Whether a message is eligible for carbons delivery (XEP-0280 §6.1), in this order:
///
/// 1. Never a message that already is a carbon copy (no copies of copies), nor one with
///    `<private/>` (§9) or the XEP-0334 `<no-copy/>` hint (whose meaning is exactly this).
/// 2. Never `groupchat` (§6.1: "SHOULD NOT be carbon-copied"; the room reflects it to
///    every joined resource).
/// 3. `error`: only when it answers a message that was itself eligible.
/// 4. Never a received MUC private message (MUC-related and from a full JID): the room
///    already sends it to every session joined under the nick.
/// 5. A XEP-0249 or mediated XEP-0045 invitation is copied.
/// 6. `chat` is copied; `normal` with a `<body/>` is copied; anything carrying receipts,
///    chat states or chat markers is copied (so sent MUC private messages, which are
///    `chat`, are copied).
/// 7. Nothing else.
pub fn eligible(facts: &MessageFacts, direction: Direction) -> bool {
    if facts.carbon || facts.private || facts.no_copy {
        return false;
    }
    match facts.msg_type {
        MessageType::Groupchat => return false,
        MessageType::Error => return facts.answers_eligible,
        MessageType::Chat | MessageType::Normal | MessageType::Headline => {}
    }
    if facts.muc && !facts.muc_invite && direction == (Direction::Received { from_full_jid: true }) {
        return false;
    }
    facts.muc_invite
        || facts.msg_type == MessageType::Chat
        || (facts.msg_type == MessageType::Normal && facts.has_body)
        || facts.im_payload
}

/// The resources that get a `sent` copy of an eligible message the user's resource
/// `sender` sent: every other carbons-enabled resource (XEP-0280 §8: whether the sender
/// enabled carbons does not matter).
///
/// None when the message is addressed to the user's own account: its delivery there
/// makes `received` copies ([`received_copies`]) for the resources that do not get it,
/// and a resource must not get the message twice.
pub fn sent_copies<'a, R: AsRef<str>>(carbons_enabled: &'a [R], sender: &str, to_own_account: bool) -> Vec<&'a str> {
    if to_own_account {
        return Vec::new();
    }
    carbons_enabled.iter().map(AsRef::as_ref).filter(|r| *r != sender).collect()
}

/// The resources that get a `received` copy of an eligible message delivered to the
/// user's resources `delivered_to` (XEP-0280 §7): every carbons-enabled resource that
/// did not get the original (it "MUST NOT" get both), and not `own_sender`, the
/// resource that sent it when the user wrote to their own account.
pub fn received_copies<'a, R: AsRef<str>, D: AsRef<str>>(
    carbons_enabled: &'a [R],
    delivered_to: &[D],
    own_sender: Option<&str>,
) -> Vec<&'a str> {
    carbons_enabled
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| !delivered_to.iter().any(|d| d.as_ref() == *r) && Some(*r) != own_sender)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED_FROM_FULL: Direction = Direction::Received { from_full_jid: true };
    const RECEIVED_FROM_BARE: Direction = Direction::Received { from_full_jid: false };

    fn msg(msg_type: MessageType) -> MessageFacts {
        MessageFacts { msg_type, ..MessageFacts::default() }
    }

    fn with_body(msg_type: MessageType) -> MessageFacts {
        MessageFacts { has_body: true, ..msg(msg_type) }
    }

    /// Every row of the rules, in each direction it applies to.
    #[test]
    fn eligibility_table() {
        use MessageType::*;
        let all = [Direction::Sent, RECEIVED_FROM_FULL, RECEIVED_FROM_BARE];
        let rows: Vec<(&str, MessageFacts, &[Direction], bool)> = vec![
            // The IM types.
            ("chat with a body", with_body(Chat), &all, true),
            ("chat without a body (e.g. a bare chat state)", msg(Chat), &all, true),
            ("normal with a body", with_body(Normal), &all, true),
            ("normal without a body", msg(Normal), &all, false),
            ("normal with a receipt", MessageFacts { im_payload: true, ..msg(Normal) }, &all, true),
            ("headline with a body", with_body(Headline), &all, false),
            ("headline with a chat marker", MessageFacts { im_payload: true, ..msg(Headline) }, &all, true),
            // Opting out of copies.
            ("private chat", MessageFacts { private: true, ..with_body(Chat) }, &all, false),
            ("no-copy chat", MessageFacts { no_copy: true, ..with_body(Chat) }, &all, false),
            (
                "private normal with a receipt",
                MessageFacts { private: true, im_payload: true, ..with_body(Normal) },
                &all,
                false,
            ),
            ("private invitation", MessageFacts { private: true, muc_invite: true, ..msg(Normal) }, &all, false),
            ("a carbon copy itself", MessageFacts { carbon: true, ..with_body(Chat) }, &all, false),
            // MUC.
            ("groupchat", with_body(Groupchat), &all, false),
            ("groupchat with a chat state", MessageFacts { im_payload: true, ..msg(Groupchat) }, &all, false),
            (
                "groupchat carrying an invitation",
                MessageFacts { muc: true, muc_invite: true, ..with_body(Groupchat) },
                &all,
                false,
            ),
            ("private message to an occupant", MessageFacts { muc: true, ..with_body(Chat) }, &[Direction::Sent], true),
            (
                "private message from an occupant",
                MessageFacts { muc: true, ..with_body(Chat) },
                &[RECEIVED_FROM_FULL],
                false,
            ),
            (
                "chat state from an occupant",
                MessageFacts { muc: true, im_payload: true, ..msg(Chat) },
                &[RECEIVED_FROM_FULL],
                false,
            ),
            (
                "normal message with a body from a room's own JID",
                MessageFacts { muc: true, ..with_body(Normal) },
                &[RECEIVED_FROM_BARE],
                true,
            ),
            (
                "mediated invitation from a room",
                MessageFacts { muc: true, muc_invite: true, ..msg(Normal) },
                &all,
                true,
            ),
            ("direct invitation", MessageFacts { muc_invite: true, ..msg(Normal) }, &all, true),
            // Errors.
            ("error answering an eligible message", MessageFacts { answers_eligible: true, ..msg(Error) }, &all, true),
            ("error answering anything else", with_body(Error), &all, false),
            (
                "private error answering an eligible message",
                MessageFacts { answers_eligible: true, private: true, ..msg(Error) },
                &all,
                false,
            ),
            (
                "error echoing an invitation it does not answer",
                MessageFacts { muc_invite: true, ..msg(Error) },
                &all,
                false,
            ),
        ];
        for (what, facts, directions, expected) in rows {
            for &direction in directions {
                assert_eq!(eligible(&facts, direction), expected, "{what} ({direction:?})");
            }
        }
    }

    #[test]
    fn sent_copies_go_to_every_other_carbons_resource() {
        let enabled = ["phone", "laptop", "tablet"];
        assert_eq!(sent_copies(&enabled, "laptop", false), ["phone", "tablet"]);
        // The sender need not have enabled carbons itself.
        assert_eq!(sent_copies(&enabled, "desktop", false), ["phone", "laptop", "tablet"]);
        assert!(sent_copies(&["laptop"], "laptop", false).is_empty());
        assert!(sent_copies::<&str>(&[], "laptop", false).is_empty());
        // Writing to one's own account: the delivery makes `received` copies instead.
        assert!(sent_copies(&enabled, "laptop", true).is_empty());
    }

    #[test]
    fn received_copies_skip_the_resources_that_got_the_original() {
        let enabled = vec!["phone".to_owned(), "laptop".to_owned(), "tablet".to_owned()];
        // To a full JID.
        assert_eq!(received_copies(&enabled, &["laptop"], None), ["phone", "tablet"]);
        // To the bare JID, delivered to the two most available resources.
        assert_eq!(received_copies(&enabled, &["phone", "desktop", "tablet"], None), ["laptop"]);
        // Delivered to all of them: nobody gets the message twice.
        assert!(received_copies(&enabled, &["tablet", "laptop", "phone"], None).is_empty());
        // Delivered to a resource without carbons only.
        assert_eq!(received_copies(&enabled, &["desktop"], None), ["phone", "laptop", "tablet"]);
        // Written by the user's own laptop to the phone: the laptop knows what it sent.
        assert_eq!(received_copies(&enabled, &["phone"], Some("laptop")), ["tablet"]);
        assert!(received_copies::<String, &str>(&[], &["phone"], None).is_empty());
    }
}
