//! XEP-0280 Message Carbons on the routing path: the enable/disable IQs and the `sent`
//! and `received` copies. Which messages are copied and which resources get copies is
//! decided by `waddle_im::carbons`; this module reads the facts those rules need from
//! the stanza, asks the registry which of a user's sessions enabled carbons, and wraps
//! and delivers the copies.
//!
//! Every function here returns at once, without a lock or an allocation, while no
//! session on the node has carbons enabled; a user whose sessions have none costs one
//! registry read.

use waddle_c2s::ns;
use waddle_c2s::stanza::{error_reply, iq_result};
use waddle_cluster::{Place, SessionAddr};
use waddle_im::carbons::{self, Direction, MessageFacts};
use waddle_im::MessageType;
use waddle_jid::{BareJid, Jid};
use waddle_muc::ns as muc_ns;
use waddle_xml::Element;

use crate::ctx::Ctx;
use crate::remote::{AccountAction, NodeOp};
use crate::router::Origin;

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// The rule facts of a message; `muc_domain` is the MUC service hosted here (a message
/// from or to it is MUC-related even without a `muc#user` payload).
pub fn facts(msg: &Element, muc_domain: &str) -> MessageFacts {
    let mut facts = MessageFacts {
        msg_type: MessageType::parse(msg.attr("type")),
        muc: [msg.attr("from"), msg.attr("to")].into_iter().flatten().any(|jid| domain_of(jid) == muc_domain),
        ..MessageFacts::default()
    };
    for child in msg.children() {
        match (child.ns(), child.name()) {
            (ns::CLIENT, "body") => facts.has_body = true,
            (NS_CARBONS, "private") => facts.private = true,
            (NS_CARBONS, "sent" | "received") => facts.carbon = true,
            (muc_ns::HINTS, "no-copy") => facts.no_copy = true,
            (muc_ns::RECEIPTS | muc_ns::CHATSTATES | muc_ns::CHAT_MARKERS, _) => facts.im_payload = true,
            (muc_ns::CONFERENCE, "x") => facts.muc_invite = true,
            (muc_ns::MUC_USER, "x") => {
                facts.muc = true;
                facts.muc_invite |= child.has_child("invite", muc_ns::MUC_USER);
            }
            _ => {}
        }
    }
    facts
}

/// The domainpart of a JID as written in a stanza (no resource, no localpart).
fn domain_of(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(bare, _)| bare);
    bare.rsplit_once('@').map_or(bare, |(_, domain)| domain)
}

/// The carbon of `original` for `user_bare`'s other resources (`sent` or `received`),
/// without a `to`: each copy gets its recipient's full JID when it is written.
fn wrap(kind: &str, user_bare: &str, original: &Element) -> Element {
    let mut carbon = Element::new("message", ns::CLIENT).with_attr("from", user_bare);
    // XEP-0280 §7, §8: the wrapper keeps the original's type.
    if let Some(msg_type) = original.attr("type") {
        carbon.set_attr("type", msg_type);
    }
    carbon.with_child(
        Element::new(kind, NS_CARBONS).with_child(Element::new("forwarded", NS_FORWARD).with_child(original.clone())),
    )
}

/// `<enable/>` or `<disable/>` (XEP-0280 §4, §5) from a session: the flag lives in the
/// session's registry entry, so it ends with the session and a new one starts without.
/// Repeating either is not an error (§10.1).
pub fn set_enabled(ctx: &Ctx, origin: &Origin, iq: &Element, enabled: bool) -> Element {
    let (Some(full), Some(conn_id)) = (origin.full(), origin.conn_id) else {
        return error_reply(iq, "not-allowed", None).unwrap_or_else(|| iq_result(iq));
    };
    let bare = full.to_bare();
    let shard = ctx.local_shard(bare.as_str());
    let set = shard.is_some_and(|s| s.set_carbons(full.resource().as_str(), conn_id, enabled));
    if let Some(shard) = shard.filter(|_| set) {
        ctx.hint_carbons(bare.as_str(), &shard, false);
    }
    if set {
        iq_result(iq)
    } else {
        error_reply(iq, "not-allowed", None).unwrap_or_else(|| iq_result(iq))
    }
}

impl Ctx {
    /// `sent` copies of a message a local session sent to `to`, for the user's other
    /// carbons-enabled resources (XEP-0280 §8). Called before the message is routed, so
    /// a copy never arrives after an error the routing bounces for it.
    pub fn send_sent_carbons(&self, origin: &Origin, to: Option<&Jid>, msg: &Element) {
        if origin.conn_id.is_none() {
            return;
        }
        let Some((bare, resource)) = origin.jid.as_str().split_once('/') else {
            return;
        };
        let shard = match self.cluster.user(bare) {
            Place::Local(shard) => shard,
            Place::Remote(node) => {
                // The sender's registry shard is elsewhere: its owner makes the copies of
                // what is eligible (which sessions have carbons is only known there).
                let eligible =
                    self.carbons_hinted(bare) && carbons::eligible(&facts(msg, &self.muc.domain), Direction::Sent);
                if let Some(conn_id) = origin.conn_id.filter(|_| eligible) {
                    let addr = SessionAddr { node: crate::remote::conn_node(conn_id), conn_id };
                    let action =
                        AccountAction::SentCarbons { to: to.map(|t| t.as_str().to_owned()), message: msg.to_string() };
                    self.to_node(node, NodeOp::Account { jid: origin.jid.as_str().to_owned(), addr, action });
                }
                return;
            }
        };
        let enabled = shard.carbons_resources();
        if enabled.is_empty() {
            return;
        }
        let to_own_account = to.is_some_and(|to| to.to_bare().as_str() == bare);
        let targets = carbons::sent_copies(&enabled, resource, to_own_account);
        if targets.is_empty() || !carbons::eligible(&facts(msg, &self.muc.domain), Direction::Sent) {
            return;
        }
        self.deliver_carbons(&wrap("sent", bare, msg), bare, &targets);
    }

    /// `received` copies of a message delivered to `delivered_to` (resources of the
    /// local account `user`), for the account's carbons-enabled resources that did not
    /// get it (XEP-0280 §7). Call after delivering the original, and only when a session
    /// of `user` has carbons enabled (the routing path already knows).
    pub fn send_received_carbons<D: AsRef<str>>(
        &self,
        origin: &Origin,
        user: &BareJid,
        delivered_to: &[D],
        msg: &Element,
    ) {
        let enabled = self.local_shard(user.as_str()).map(|s| s.carbons_resources()).unwrap_or_default();
        let own_sender = origin.full().filter(|full| full.to_bare() == *user).map(|full| full.resource().as_str());
        let targets = carbons::received_copies(&enabled, delivered_to, own_sender);
        let from_full_jid = msg.attr("from").is_some_and(|from| from.contains('/'));
        if targets.is_empty()
            || !carbons::eligible(&facts(msg, &self.muc.domain), Direction::Received { from_full_jid })
        {
            return;
        }
        self.deliver_carbons(&wrap("received", user.as_str(), msg), user.as_str(), &targets);
    }

    /// The `received` copies of `reply`, an error the server bounces for `original`,
    /// for the recipient's other carbons-enabled resources when `original` was a
    /// message eligible for carbons (those resources got a `sent` copy of it, so they
    /// learn that it failed): the carbon and its recipients, delivered after `reply`.
    /// Only for a reply to a session that is still bound.
    pub fn bounce_carbons(&self, original: &Element, reply: &Element) -> Option<(Element, Vec<String>)> {
        let (bare, resource) = reply.attr("to").and_then(|to| to.split_once('/'))?;
        // The sender's shard is here when the bounce is made by its owner; an error made
        // elsewhere gets no carbons.
        let shard = self.local_shard(bare)?;
        if original.name() != "message" || shard.addr(resource).is_none() {
            return None;
        }
        let enabled = shard.carbons_resources();
        let targets: Vec<String> =
            carbons::received_copies(&enabled, &[resource], None).into_iter().map(|r| format!("{bare}/{r}")).collect();
        let eligible = !targets.is_empty() && {
            let mut error = facts(reply, &self.muc.domain);
            error.answers_eligible = carbons::eligible(&facts(original, &self.muc.domain), Direction::Sent);
            // An error's eligibility rests on `answers_eligible`, whatever its sender.
            carbons::eligible(&error, Direction::Received { from_full_jid: false })
        };
        eligible.then(|| (wrap("received", bare, reply), targets))
    }

    /// Delivers `carbon` to each of `resources` of `bare`: serialized once, each session
    /// writes it with its own full JID as `to`. A copy that cannot be delivered is
    /// dropped, never bounced (XEP-0280 §10.3).
    fn deliver_carbons(&self, carbon: &Element, bare: &str, resources: &[&str]) {
        let recipients: Vec<String> = resources.iter().map(|r| format!("{bare}/{r}")).collect();
        self.deliver_to_each(carbon, &recipients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MUC: &str = "muc.example.org";

    fn parse(xml: &str) -> Element {
        crate::im::parse_stored_stanza(xml).unwrap_or_else(|| panic!("unparsable test stanza {xml}"))
    }

    #[test]
    fn facts_are_read_from_the_payloads() {
        let f = facts(&parse("<message type='chat' to='b@example.org'><body>hi</body></message>"), MUC);
        assert_eq!(f, MessageFacts { msg_type: MessageType::Chat, has_body: true, ..MessageFacts::default() });

        let f = facts(
            &parse(
                "<message to='b@example.org'><body>psst</body><private xmlns='urn:xmpp:carbons:2'/>\
                 <no-copy xmlns='urn:xmpp:hints'/></message>",
            ),
            MUC,
        );
        assert!(f.private && f.no_copy && f.has_body && f.msg_type == MessageType::Normal);

        for payload in [
            "<request xmlns='urn:xmpp:receipts'/>",
            "<received xmlns='urn:xmpp:receipts' id='x'/>",
            "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>",
        ] {
            let f = facts(&parse(&format!("<message to='b@example.org'>{payload}</message>")), MUC);
            assert!(f.im_payload && !f.has_body && !f.carbon, "{payload}");
        }

        let f = facts(&parse("<message><received xmlns='urn:xmpp:carbons:2'/></message>"), MUC);
        assert!(f.carbon && !f.im_payload);
        // A body in another namespace is not the message's body.
        let f = facts(&parse("<message><body xmlns='urn:example'>x</body></message>"), MUC);
        assert!(!f.has_body);
    }

    #[test]
    fn muc_messages_and_invitations_are_recognised() {
        let pm = parse(&format!(
            "<message type='chat' from='room@{MUC}/nick' to='a@example.org/r'><body>hi</body>\
             <x xmlns='http://jabber.org/protocol/muc#user'/></message>"
        ));
        let f = facts(&pm, MUC);
        assert!(f.muc && !f.muc_invite);
        // A PM without the muc#user payload is still from the MUC service.
        let pm = parse(&format!("<message type='chat' from='room@{MUC}/nick'><body>hi</body></message>"));
        assert!(facts(&pm, MUC).muc);
        let sent_pm = parse(&format!("<message type='chat' from='a@example.org/r' to='room@{MUC}/nick'/>"));
        assert!(facts(&sent_pm, MUC).muc);
        // A resource that looks like the MUC domain is not the MUC domain.
        let chat = parse(&format!("<message type='chat' from='b@example.org/{MUC}'/>"));
        assert!(!facts(&chat, MUC).muc);

        let mediated = parse(&format!(
            "<message from='room@{MUC}' to='a@example.org'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite from='b@example.org'/></x></message>"
        ));
        let f = facts(&mediated, MUC);
        assert!(f.muc && f.muc_invite);
        let direct = parse(&format!(
            "<message from='b@example.org/r' to='a@example.org'><x xmlns='jabber:x:conference' jid='room@{MUC}'/></message>"
        ));
        let f = facts(&direct, MUC);
        assert!(f.muc_invite && !f.muc, "it names a room, but it is between two users: {f:?}");
    }

    #[test]
    fn domains_of_written_jids() {
        assert_eq!(domain_of("a@example.org/res/with@signs"), "example.org");
        assert_eq!(domain_of("example.org/res"), "example.org");
        assert_eq!(domain_of("room@muc.example.org"), "muc.example.org");
        assert_eq!(domain_of("example.org"), "example.org");
    }

    /// The wrapper of XEP-0280 §7/§8, with the original in `jabber:client` inside
    /// `forwarded` (and not in the namespace of its parent).
    #[test]
    fn a_carbon_wraps_the_original_unchanged() {
        let original = parse(
            "<message type='chat' from='a@example.org/laptop' to='b@example.org' id='m1'><body>hi</body></message>",
        );
        let carbon = wrap("sent", "a@example.org", &original);
        assert_eq!(carbon.attr("from"), Some("a@example.org"));
        assert_eq!(carbon.attr("type"), Some("chat"));
        assert_eq!(carbon.attr("to"), None);
        let xml = String::from_utf8_lossy(&carbon.to_bytes(ns::CLIENT)).into_owned();
        let reparsed = parse(&xml);
        let inner = reparsed
            .get_child("sent", NS_CARBONS)
            .and_then(|s| s.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT));
        assert_eq!(inner, Some(&original), "{xml}");

        // No type on the original: none on the wrapper either (both are `normal`).
        let carbon = wrap("received", "b@example.org", &parse("<message><body>x</body></message>"));
        assert_eq!(carbon.attr("type"), None);
        assert!(carbon.has_child("received", NS_CARBONS));
    }
}
