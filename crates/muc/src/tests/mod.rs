//! Unit tests, driven purely with elements.

mod admin;
mod join;
mod messages;
mod nicks;
mod owner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use waddle_xml::{Element, NS_CLIENT};

use crate::ns;
use crate::{AccessOracle, Affiliation, ChannelAccess, Outbound, Policy, Room, RoomConfig, StandardOracle};

pub(crate) const ROOM: &str = "room@muc.example.org";
pub(crate) const NOW: &str = "2024-05-06T12:00:00Z";
pub(crate) const OWNER: &str = "owner@example.org/desk";
pub(crate) const ALICE: &str = "alice@example.org/a";
pub(crate) const BOB: &str = "bob@example.org/b";
pub(crate) const CAROL: &str = "carol@example.org/c";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn xml(s: &str) -> Element {
    Element::from_bytes(s.as_bytes(), NS_CLIENT).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// What the room emitted for `s`, with each broadcast spelled out as the per-recipient
/// stanzas the shell delivers (tests look at who gets what; `broadcast_*` tests look at
/// the broadcast itself through [`Room::handle`]).
pub(crate) fn feed_full(room: &mut Room, s: &str, oracle: &dyn AccessOracle, now: &str) -> Vec<Outbound> {
    let out = room.handle(&xml(s), oracle, now, &mut || format!("sid-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    out.into_iter()
        .flat_map(|o| match o {
            Outbound::Broadcast { stanza, to } => to
                .into_iter()
                .map(|to| {
                    let mut copy = stanza.clone();
                    copy.set_attr("to", to);
                    Outbound::Stanza(copy)
                })
                .collect(),
            other => vec![other],
        })
        .collect()
}

pub(crate) fn feed(room: &mut Room, s: &str) -> Vec<Outbound> {
    feed_full(room, s, &StandardOracle, NOW)
}

pub(crate) fn feed_with(room: &mut Room, s: &str, oracle: &dyn AccessOracle) -> Vec<Outbound> {
    feed_full(room, s, oracle, NOW)
}

pub(crate) fn join_xml(full: &str, nick: &str, inner: &str) -> String {
    format!("<presence from='{full}' to='{ROOM}/{nick}' id='j1'><x xmlns='http://jabber.org/protocol/muc'>{inner}</x></presence>")
}

pub(crate) fn join(room: &mut Room, full: &str, nick: &str) -> Vec<Outbound> {
    feed(room, &join_xml(full, nick, ""))
}

pub(crate) fn join_with(room: &mut Room, full: &str, nick: &str, oracle: &dyn AccessOracle) -> Vec<Outbound> {
    feed_with(room, &join_xml(full, nick, ""), oracle)
}

pub(crate) fn groupchat(from: &str, body: &str) -> String {
    format!("<message from='{from}' to='{ROOM}' type='groupchat' id='m-{body}'><body>{body}</body></message>")
}

/// An unlocked room owned by owner@example.org, who is joined as "Owner".
pub(crate) fn room_with(config: RoomConfig) -> Room {
    let mut room = Room::new(ROOM, config, Some("owner@example.org"), true);
    let out = join(&mut room, OWNER, "Owner");
    assert!(error_of(&out).is_none(), "{out:?}");
    room
}

pub(crate) fn new_room() -> Room {
    room_with(RoomConfig::default())
}

/// A room with Owner, alice and bob.
pub(crate) fn room3() -> Room {
    let mut room = new_room();
    join(&mut room, ALICE, "alice");
    join(&mut room, BOB, "bob");
    room
}

pub(crate) fn stanzas(out: &[Outbound]) -> Vec<&Element> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Stanza(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub(crate) fn to(e: &Element) -> &str {
    e.attr("to").unwrap_or("")
}

pub(crate) fn from(e: &Element) -> &str {
    e.attr("from").unwrap_or("")
}

pub(crate) fn occ(nick: &str) -> String {
    format!("{ROOM}/{nick}")
}

/// Stanzas addressed to `full`.
pub(crate) fn for_jid<'a>(out: &'a [Outbound], full: &str) -> Vec<&'a Element> {
    stanzas(out).into_iter().filter(|e| to(e) == full).collect()
}

pub(crate) fn muc_x(e: &Element) -> &Element {
    e.get_child("x", ns::MUC_USER).unwrap_or_else(|| panic!("no muc#user x in {e}"))
}

pub(crate) fn item(e: &Element) -> &Element {
    muc_x(e).get_child("item", ns::MUC_USER).unwrap_or_else(|| panic!("no item in {e}"))
}

pub(crate) fn statuses(e: &Element) -> Vec<u16> {
    e.get_child("x", ns::MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", ns::MUC_USER))
                .filter_map(|c| c.attr("code").and_then(|c| c.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The condition of the first error stanza in `out`.
pub(crate) fn error_of(out: &[Outbound]) -> Option<String> {
    stanzas(out).into_iter().find(|e| e.attr("type") == Some("error")).map(|e| {
        let err = e.get_child("error", NS_CLIENT).unwrap_or_else(|| panic!("no error child in {e}"));
        err.children().find(|c| c.ns() == ns::STANZA_ERRORS).map(|c| c.name().to_owned()).unwrap_or_default()
    })
}

pub(crate) fn is_result(out: &[Outbound], id: &str) -> bool {
    stanzas(out).into_iter().any(|e| e.name() == "iq" && e.attr("type") == Some("result") && e.attr("id") == Some(id))
}

pub(crate) fn archives(out: &[Outbound]) -> Vec<&crate::HistoryEntry> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Archive(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub(crate) fn persists(out: &[Outbound]) -> usize {
    out.iter().filter(|o| matches!(o, Outbound::Persist)).count()
}

pub(crate) fn destroyed(out: &[Outbound]) -> bool {
    out.iter().any(|o| matches!(o, Outbound::Destroyed))
}

pub(crate) fn admin_iq(from: &str, id: &str, kind: &str, items: &str) -> String {
    format!(
        "<iq from='{from}' to='{ROOM}' id='{id}' type='{kind}'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"
    )
}

pub(crate) fn owner_iq(from: &str, id: &str, kind: &str, inner: &str) -> String {
    format!(
        "<iq from='{from}' to='{ROOM}' id='{id}' type='{kind}'><query xmlns='http://jabber.org/protocol/muc#owner'>{inner}</query></iq>"
    )
}

/// A channel oracle: users not listed may not view.
#[derive(Clone, Default)]
pub(crate) struct ChannelOracle(pub HashMap<String, ChannelAccess>);

impl ChannelOracle {
    pub(crate) fn with(mut self, bare: &str, role: Option<&str>, can_view: bool, can_send: bool) -> ChannelOracle {
        self.0.insert(bare.to_owned(), ChannelAccess::from_channel_role(role, can_view, can_send));
        self
    }
}

impl AccessOracle for ChannelOracle {
    fn access(&self, user_bare_jid: &str) -> Policy {
        Policy::Channel(self.0.get(user_bare_jid).cloned().unwrap_or(ChannelAccess {
            can_view: false,
            can_send: false,
            affiliation: Affiliation::None,
            moderator: false,
        }))
    }

    /// As the node's channel oracle: each member's username (the JID's localpart) is
    /// reserved for them.
    fn nick_reserved_for(&self, nick_key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(bare, access)| access.can_view && bare.split('@').next() == Some(nick_key))
            .map(|(bare, _)| bare.clone())
    }
}
