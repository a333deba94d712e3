//! The room state machine: state, dispatch, occupancy (join, presence updates, nickname
//! changes, departures) and the rendering of occupant presences.
//!
//! Messages live in `message.rs`, `muc#admin` in `admin.rs`, `muc#owner` and service
//! discovery in `owner.rs`.

mod admin;
mod message;
mod owner;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use waddle_c2s::stanza;
use waddle_xml::{Element, Node};

use crate::stamp;
use crate::{nick, ns};
use crate::{
    AccessOracle, Affiliation, ChannelAccess, HistoryEntry, MucError, Outbound, Policy, Role, RoomConfig, Whois,
};

const SNAPSHOT_VERSION: u32 = 1;

/// One XEP-0045 room. See the crate documentation.
///
/// Occupants are keyed by nickname. Several sessions of the same bare JID may share a
/// nickname (multi-session nick sharing, as ejabberd does): they are one occupant, every
/// stanza for the occupant goes to all of them, the most recently updated session's
/// presence is the one shown, and the occupant leaves with its last session.
#[derive(Clone, Debug)]
pub struct Room {
    /// Normalized bare room JID.
    jid: String,
    config: RoomConfig,
    /// Stored affiliations other than `none`, by normalized bare JID.
    affiliations: BTreeMap<String, AffEntry>,
    subject: Subject,
    /// Created by a client join and not configured yet (XEP-0045 §10.1).
    locked: bool,
    destroyed: bool,
    /// Occupants by nickname.
    occupants: BTreeMap<String, Occupant>,
    /// Real full JID of every joined session → nickname.
    sessions: HashMap<String, String>,
    history: VecDeque<HistoryEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AffEntry {
    affiliation: Affiliation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Subject {
    text: String,
    /// Nickname of who set it; empty when set by the room itself.
    nick: String,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    config: RoomConfig,
    #[serde(default)]
    affiliations: Vec<SnapshotAffiliation>,
    #[serde(default)]
    subject: Subject,
}

#[derive(Serialize, Deserialize)]
struct SnapshotAffiliation {
    jid: String,
    affiliation: Affiliation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// An occupant: one nickname, one bare JID, one or more sessions (multi-session nick
/// sharing: every stanza for the occupant goes to all its sessions).
#[derive(Clone, Debug)]
struct Occupant {
    nick: String,
    /// [`nick::key`] and [`nick::skeleton`] of `nick`, which decide collisions.
    nick_key: String,
    nick_skeleton: String,
    bare: String,
    affiliation: Affiliation,
    role: Role,
    /// The role the rules gave at the last evaluation; a re-evaluation only overrides a
    /// moderator's explicit role change when this changes.
    base_role: Role,
    /// Most recently updated last.
    sessions: Vec<Session>,
}

#[derive(Clone, Debug)]
struct Session {
    full: String,
    /// The session's presence payload (show, status, caps, ...) without MUC elements.
    presence: Vec<Element>,
}

impl Occupant {
    fn set_nick(&mut self, nick: &str) {
        nick.clone_into(&mut self.nick);
        self.nick_key = nick::key(nick);
        self.nick_skeleton = nick::skeleton(nick);
    }

    fn real(&self) -> &str {
        self.sessions.last().map_or(self.bare.as_str(), |s| s.full.as_str())
    }

    fn shown(&self) -> Shown<'_> {
        Shown {
            nick: &self.nick,
            real: self.real(),
            affiliation: self.affiliation,
            role: self.role,
            children: self.sessions.last().map_or(&[], |s| s.presence.as_slice()),
            unavailable: false,
        }
    }

    fn set_base_role(&mut self, base: Role) {
        if self.base_role != base {
            self.base_role = base;
            self.role = base;
        }
    }
}

/// An occupant presence as it is about to be rendered.
struct Shown<'a> {
    nick: &'a str,
    real: &'a str,
    affiliation: Affiliation,
    role: Role,
    children: &'a [Element],
    unavailable: bool,
}

/// What a presence notifies beyond the occupant's state.
#[derive(Default)]
struct Notice<'a> {
    /// Status codes for every receiver.
    statuses: Vec<u16>,
    /// Extra status codes for the occupant's own sessions (110 is always added there).
    self_statuses: Vec<u16>,
    new_nick: Option<&'a str>,
    actor: Option<&'a str>,
    reason: Option<&'a str>,
    destroy: Option<Element>,
    /// The `id` to echo in the self-presence.
    id: Option<&'a str>,
}

/// The sender of a stanza.
pub(crate) struct Sender {
    /// Normalized real JID as stamped by the server (full for client sessions).
    full: String,
    bare: String,
}

/// The privileges of a sender, from the oracle and the room state.
struct Actor {
    /// `false` when a channel policy says the sender may not view the room.
    can_view: bool,
    affiliation: Affiliation,
    channel: bool,
    nick: Option<String>,
    moderator: bool,
}

/// Bare JID, normalized when it parses.
fn normalize_bare(s: &str) -> String {
    waddle_jid::BareJid::new(s).map(|j| j.to_string()).unwrap_or_else(|_| s.to_owned())
}

/// Any JID, normalized when it parses.
fn normalize_full(s: &str) -> String {
    waddle_jid::Jid::new(s).map(|j| j.to_string()).unwrap_or_else(|_| s.to_owned())
}

fn push_error(out: &mut Vec<Outbound>, original: &Element, condition: &str, text: Option<&str>) {
    if let Some(reply) = stanza::error_reply(original, condition, text) {
        out.push(Outbound::Stanza(reply));
    }
}

fn status(code: u16) -> Element {
    Element::new("status", ns::MUC_USER).with_attr("code", code.to_string())
}

/// The presence payload kept for an occupant: everything but MUC elements.
fn presence_payload(presence: &Element) -> Vec<Element> {
    presence.children().filter(|c| c.ns() != ns::MUC && c.ns() != ns::MUC_USER).cloned().collect()
}

impl Room {
    /// A new room; `creator` (a bare JID) becomes owner. Rooms created by a client join
    /// (`instant == false`) are locked until the owner submits the configuration form or
    /// accepts the instant room (XEP-0045 §10.1); the owner's join gets status 201.
    /// Rooms created by the REST API for channels pass `instant = true`. A locked room
    /// without a creator admits nobody until an owner appears (a channel policy can make
    /// one).
    pub fn new(jid: &str, config: RoomConfig, creator: Option<&str>, instant: bool) -> Room {
        let mut room = Room::empty(normalize_bare(jid), config);
        if let Some(creator) = creator {
            room.affiliations
                .insert(normalize_bare(creator), AffEntry { affiliation: Affiliation::Owner, reason: None });
        }
        room.locked = !instant;
        room
    }

    fn empty(jid: String, config: RoomConfig) -> Room {
        Room {
            jid,
            config,
            affiliations: BTreeMap::new(),
            subject: Subject::default(),
            locked: false,
            destroyed: false,
            occupants: BTreeMap::new(),
            sessions: HashMap::new(),
            history: VecDeque::new(),
        }
    }

    /// Configuration, affiliations and subject as JSON, for persistent rooms.
    pub fn snapshot(&self) -> String {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            config: self.config.clone(),
            affiliations: self
                .affiliations
                .iter()
                .map(|(jid, e)| SnapshotAffiliation {
                    jid: jid.clone(),
                    affiliation: e.affiliation,
                    reason: e.reason.clone(),
                })
                .collect(),
            subject: self.subject.clone(),
        };
        // Serializing plain structs of strings, numbers and enums cannot fail.
        serde_json::to_string(&snapshot).unwrap_or_default()
    }

    /// A room from [`Room::snapshot`]; unlocked, without occupants or history.
    pub fn restore(jid: &str, snapshot: &str) -> Result<Room, MucError> {
        let bare = waddle_jid::BareJid::new(jid).map_err(|_| MucError::InvalidJid(jid.to_owned()))?;
        let s: Snapshot = serde_json::from_str(snapshot)?;
        if s.version != SNAPSHOT_VERSION {
            return Err(MucError::SnapshotVersion(s.version));
        }
        let mut room = Room::empty(bare.to_string(), s.config);
        room.subject = s.subject;
        for a in s.affiliations {
            if a.affiliation != Affiliation::None {
                room.affiliations
                    .insert(normalize_bare(&a.jid), AffEntry { affiliation: a.affiliation, reason: a.reason });
            }
        }
        Ok(room)
    }

    /// Replace the discussion history (loaded from the archive after a restart, oldest
    /// first); only the newest `history_max` entries are kept.
    pub fn set_history(&mut self, entries: Vec<HistoryEntry>) {
        self.history = entries.into();
        self.trim_history();
    }

    fn trim_history(&mut self) {
        let max = usize::try_from(self.config.history_max).unwrap_or(usize::MAX);
        while self.history.len() > max {
            self.history.pop_front();
        }
    }

    pub fn jid(&self) -> &str {
        &self.jid
    }

    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// Number of occupants (distinct nicknames).
    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// Created by a client and not configured yet.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    pub fn is_destroyed(&self) -> bool {
        self.destroyed
    }

    pub fn subject(&self) -> &str {
        &self.subject.text
    }

    /// The stored affiliation of a bare JID (`None` when unlisted).
    pub fn affiliation(&self, bare_jid: &str) -> Affiliation {
        self.stored_affiliation(&normalize_bare(bare_jid))
    }

    /// The in-memory discussion history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter()
    }

    /// Nicknames of the occupants, sorted.
    pub fn nicks(&self) -> impl Iterator<Item = &str> {
        self.occupants.keys().map(String::as_str)
    }

    /// The nickname of a joined session.
    pub fn nick_of(&self, real_full_jid: &str) -> Option<&str> {
        self.sessions.get(&normalize_full(real_full_jid)).map(String::as_str)
    }

    /// Is this session (real full JID) joined?
    pub fn is_occupant(&self, real_full_jid: &str) -> bool {
        self.sessions.contains_key(&normalize_full(real_full_jid))
    }

    /// May `user_bare_jid` read the room's archive (XEP-0313 queries, which the shell
    /// answers)? Channels: `can_view`. Ad-hoc rooms: not banned, and a member (or
    /// better) of a members-only room.
    pub fn may_read_archive(&self, user_bare_jid: &str, oracle: &dyn AccessOracle) -> bool {
        let bare = normalize_bare(user_bare_jid);
        match oracle.access(&bare) {
            Policy::Channel(a) => a.can_view,
            Policy::Standard => {
                let aff = self.stored_affiliation(&bare);
                aff != Affiliation::Outcast && (!self.config.members_only || aff.at_least(Affiliation::Member))
            }
        }
    }

    fn stored_affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations.get(bare).map_or(Affiliation::None, |e| e.affiliation)
    }

    /// The affiliation that counts for `bare` under `policy`, and the channel access if
    /// the room is a channel for this user.
    fn effective<'p>(&self, bare: &str, policy: &'p Policy) -> (Affiliation, Option<&'p ChannelAccess>) {
        match policy {
            Policy::Standard => (self.stored_affiliation(bare), None),
            Policy::Channel(a) => (a.affiliation, Some(a)),
        }
    }

    /// The role XEP-0045 §5.1 (and the channel policy) gives on entry.
    fn default_role(&self, affiliation: Affiliation, channel: Option<&ChannelAccess>) -> Role {
        if channel.is_some_and(|c| c.moderator) {
            return Role::Moderator;
        }
        let role = match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        };
        if role == Role::Participant && channel.is_some_and(|c| !c.can_send) {
            Role::Visitor
        } else {
            role
        }
    }

    fn actor(&self, sender: &Sender, oracle: &dyn AccessOracle) -> Actor {
        let policy = oracle.access(&sender.bare);
        let nick = self.sessions.get(&sender.full).cloned();
        let role = nick.as_deref().and_then(|n| self.occupants.get(n)).map_or(Role::None, |o| o.role);
        match policy {
            Policy::Channel(a) if !a.can_view => {
                Actor { can_view: false, affiliation: Affiliation::None, channel: true, nick, moderator: false }
            }
            Policy::Channel(a) => Actor {
                can_view: true,
                affiliation: a.affiliation,
                channel: true,
                nick,
                moderator: role == Role::Moderator || a.moderator || a.affiliation.at_least(Affiliation::Admin),
            },
            Policy::Standard => {
                let affiliation = self.stored_affiliation(&sender.bare);
                Actor {
                    can_view: true,
                    affiliation,
                    channel: false,
                    nick,
                    moderator: role == Role::Moderator || affiliation.at_least(Affiliation::Admin),
                }
            }
        }
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// Every joined session with its occupant.
    fn receivers(&self) -> impl Iterator<Item = (&Occupant, &Session)> {
        self.occupants.values().flat_map(|o| o.sessions.iter().map(move |s| (o, s)))
    }

    /// Feed one stanza addressed to the room (`to` = room) or to an occupant
    /// (`to` = room/nick). `from` must be the sender's real JID, stamped by the server.
    /// `now_stamp` is the current XEP-0082 UTC time; `new_stanza_id` makes XEP-0359 ids.
    pub fn handle(
        &mut self,
        stanza: &Element,
        oracle: &dyn AccessOracle,
        now_stamp: &str,
        new_stanza_id: &mut dyn FnMut() -> String,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(sender) = stanza.attr("from").and_then(|f| waddle_jid::Jid::new(f).ok()) else {
            return out;
        };
        let sender = Sender { full: sender.to_string(), bare: sender.to_bare().to_string() };
        if self.destroyed {
            push_error(&mut out, stanza, "item-not-found", Some("This room has been destroyed"));
            return out;
        }
        let nick = match stanza.attr("to").map(waddle_jid::Jid::new) {
            None => None,
            Some(Ok(to)) => to.resource().map(|r| r.as_str().to_owned()),
            Some(Err(_)) => {
                push_error(&mut out, stanza, "jid-malformed", Some("Invalid nickname"));
                return out;
            }
        };
        let before = self.occupants.len();
        match stanza.name() {
            "presence" => self.on_presence(stanza, &sender, nick.as_deref(), oracle, now_stamp, &mut out),
            "message" => self.on_message(stanza, &sender, nick.as_deref(), oracle, now_stamp, new_stanza_id, &mut out),
            "iq" => self.on_iq(stanza, &sender, nick.as_deref(), oracle, &mut out),
            _ => {}
        }
        self.finish(before, &mut out);
        out
    }

    /// A temporary room that just lost its last occupant ceases to exist.
    fn finish(&mut self, before: usize, out: &mut Vec<Outbound>) {
        if before > 0 && self.occupants.is_empty() && !self.config.persistent && !self.destroyed {
            self.destroyed = true;
            self.history.clear();
            out.push(Outbound::Destroyed);
        }
    }

    /// The session `real_full_jid` vanished: the other occupants see it leave.
    pub fn occupant_left(&mut self, real_full_jid: &str) -> Vec<Outbound> {
        let mut out = Vec::new();
        let full = normalize_full(real_full_jid);
        let before = self.occupants.len();
        self.remove_session(&full, &[], false, &[], &mut out);
        self.finish(before, &mut out);
        out
    }

    /// Destroy the room (XEP-0045 §10.9): every occupant session gets its unavailable
    /// self-presence (affiliation and role `none`, `<destroy/>` with the optional
    /// alternate venue and reason, status 110); then [`Outbound::Destroyed`].
    pub fn destroy(&mut self, reason: Option<&str>, alternate: Option<&str>) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.destroyed {
            return out;
        }
        let mut destroy = Element::new("destroy", ns::MUC_USER);
        if let Some(alt) = alternate {
            destroy.set_attr("jid", alt);
        }
        if let Some(reason) = reason {
            destroy.append_child(Element::new("reason", ns::MUC_USER).with_text(reason));
        }
        let notice = Notice { destroy: Some(destroy), ..Notice::default() };
        for (occ, session) in self.receivers() {
            let shown = Shown {
                affiliation: Affiliation::None,
                role: Role::None,
                children: &[],
                unavailable: true,
                ..occ.shown()
            };
            out.push(Outbound::Stanza(self.render(&shown, &session.full, true, true, &notice)));
        }
        self.occupants.clear();
        self.sessions.clear();
        self.history.clear();
        self.destroyed = true;
        out.push(Outbound::Destroyed);
        out
    }

    /// Re-evaluate every occupant against the oracle (after a permission change):
    /// occupants who may no longer view the room (or are now banned, or no longer
    /// members of a members-only room) are removed with status 321 (301 for a ban);
    /// changed affiliations and roles are broadcast.
    pub fn apply_policy_change(&mut self, oracle: &dyn AccessOracle) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.destroyed {
            return out;
        }
        let before = self.occupants.len();
        // Decide for everyone first; removals go out before updates, so the removed
        // never hear of the others' changes.
        let mut removals = Vec::new();
        let mut updates = Vec::new();
        for occ in self.occupants.values() {
            let policy = oracle.access(&occ.bare);
            let (aff, channel) = self.effective(&occ.bare, &policy);
            if channel.is_some_and(|c| !c.can_view) {
                removals.push((occ.nick.clone(), Affiliation::None, 321));
            } else if aff == Affiliation::Outcast {
                removals.push((occ.nick.clone(), aff, 301));
            } else if channel.is_none() && self.config.members_only && !aff.at_least(Affiliation::Member) {
                removals.push((occ.nick.clone(), aff, 321));
            } else {
                updates.push((occ.nick.clone(), aff, self.default_role(aff, channel)));
            }
        }
        for (nick, aff, code) in removals {
            self.remove_occupant(&nick, aff, &Notice { statuses: vec![code], ..Notice::default() }, &mut out);
        }
        for (nick, aff, base) in updates {
            let Some(occ) = self.occupants.get_mut(&nick) else { continue };
            let (old_aff, old_role) = (occ.affiliation, occ.role);
            occ.affiliation = aff;
            occ.set_base_role(base);
            if (occ.affiliation, occ.role) != (old_aff, old_role) {
                self.broadcast_presence(&nick, &Notice::default(), None, &mut out);
            }
        }
        self.finish(before, &mut out);
        out
    }

    // ----- rendering -----

    /// The presence of an occupant for one receiving session. `own`: the receiver is a
    /// session of that occupant (status 110, real JID always shown); `viewer_moderator`:
    /// the receiver may see real JIDs of semi-anonymous rooms.
    fn render(&self, shown: &Shown<'_>, to: &str, own: bool, viewer_moderator: bool, notice: &Notice<'_>) -> Element {
        let mut p =
            Element::new("presence", ns::CLIENT).with_attr("from", self.occupant_jid(shown.nick)).with_attr("to", to);
        if shown.unavailable {
            p.set_attr("type", "unavailable");
        }
        if own {
            if let Some(id) = notice.id {
                p.set_attr("id", id);
            }
        }
        for c in shown.children {
            p.append_child(c.clone());
        }
        let mut item = Element::new("item", ns::MUC_USER)
            .with_attr("affiliation", shown.affiliation.as_str())
            .with_attr("role", shown.role.as_str());
        if own || viewer_moderator || self.config.whois == Whois::Anyone {
            item.set_attr("jid", shown.real);
        }
        if let Some(new_nick) = notice.new_nick {
            item.set_attr("nick", new_nick);
        }
        if let Some(actor) = notice.actor {
            item.append_child(Element::new("actor", ns::MUC_USER).with_attr("nick", actor));
        }
        if let Some(reason) = notice.reason {
            item.append_child(Element::new("reason", ns::MUC_USER).with_text(reason));
        }
        let mut x = Element::new("x", ns::MUC_USER).with_child(item);
        let mut codes = notice.statuses.clone();
        if own {
            codes.extend_from_slice(&notice.self_statuses);
            codes.push(110);
        }
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            x.append_child(status(code));
        }
        if let Some(destroy) = &notice.destroy {
            x.append_child(destroy.clone());
        }
        p.with_child(x)
    }

    /// The current presence of occupant `nick` to every session (except `skip`).
    fn broadcast_presence(&self, nick: &str, notice: &Notice<'_>, skip: Option<&str>, out: &mut Vec<Outbound>) {
        let Some(occ) = self.occupants.get(nick) else { return };
        let shown = occ.shown();
        for (receiver, session) in self.receivers() {
            if Some(session.full.as_str()) == skip {
                continue;
            }
            let own = receiver.nick == nick;
            out.push(Outbound::Stanza(self.render(
                &shown,
                &session.full,
                own,
                receiver.role == Role::Moderator,
                notice,
            )));
        }
    }

    /// Remove a whole occupant (all sessions): its sessions get their unavailable
    /// self-presence, then everyone else gets the unavailable presence.
    fn remove_occupant(
        &mut self,
        nick: &str,
        shown_affiliation: Affiliation,
        notice: &Notice<'_>,
        out: &mut Vec<Outbound>,
    ) -> Option<Occupant> {
        let occ = self.occupants.remove(nick)?;
        for s in &occ.sessions {
            self.sessions.remove(&s.full);
        }
        self.notify_removed(&occ, shown_affiliation, &[], true, notice, out);
        Some(occ)
    }

    fn notify_removed(
        &self,
        occ: &Occupant,
        shown_affiliation: Affiliation,
        children: &[Element],
        notify_self: bool,
        notice: &Notice<'_>,
        out: &mut Vec<Outbound>,
    ) {
        let shown =
            Shown { affiliation: shown_affiliation, role: Role::None, children, unavailable: true, ..occ.shown() };
        if notify_self {
            for s in &occ.sessions {
                out.push(Outbound::Stanza(self.render(&shown, &s.full, true, occ.role == Role::Moderator, notice)));
            }
        }
        for (receiver, session) in self.receivers() {
            out.push(Outbound::Stanza(self.render(
                &shown,
                &session.full,
                false,
                receiver.role == Role::Moderator,
                notice,
            )));
        }
    }

    /// Remove one session. The last session of an occupant takes the occupant with it;
    /// otherwise the others keep the nickname (and the room sees the remaining session's
    /// presence if the departed one was the displayed one).
    fn remove_session(
        &mut self,
        full: &str,
        children: &[Element],
        notify_self: bool,
        statuses: &[u16],
        out: &mut Vec<Outbound>,
    ) {
        let Some(nick) = self.sessions.remove(full) else { return };
        let Some(occ) = self.occupants.get_mut(&nick) else { return };
        let Some(idx) = occ.sessions.iter().position(|s| s.full == full) else { return };
        let was_displayed = idx + 1 == occ.sessions.len();
        let removed = occ.sessions.remove(idx);
        let notice = Notice { statuses: statuses.to_vec(), ..Notice::default() };
        if !occ.sessions.is_empty() {
            if let (true, Some(occ)) = (notify_self, self.occupants.get(&nick)) {
                let shown = Shown { real: &removed.full, role: Role::None, children, unavailable: true, ..occ.shown() };
                out.push(Outbound::Stanza(self.render(
                    &shown,
                    &removed.full,
                    true,
                    occ.role == Role::Moderator,
                    &notice,
                )));
            }
            if was_displayed {
                self.broadcast_presence(&nick, &Notice::default(), None, out);
            }
            return;
        }
        let Some(mut occ) = self.occupants.remove(&nick) else { return };
        occ.sessions.push(removed);
        let affiliation = occ.affiliation;
        self.notify_removed(&occ, affiliation, children, notify_self, &notice, out);
    }

    // ----- presence -----

    fn on_presence(
        &mut self,
        st: &Element,
        sender: &Sender,
        nick: Option<&str>,
        oracle: &dyn AccessOracle,
        now: &str,
        out: &mut Vec<Outbound>,
    ) {
        match st.attr("type") {
            None => {}
            Some("unavailable") => {
                if self.sessions.contains_key(&sender.full) {
                    let status: Vec<Element> = st.children().filter(|c| c.is("status", ns::CLIENT)).cloned().collect();
                    self.remove_session(&sender.full, &status, true, &[], out);
                }
                return;
            }
            Some("error") => {
                // The occupant's client bounced a presence: it is gone (status 333).
                self.remove_session(&sender.full, &[], false, &[333], out);
                return;
            }
            Some(_) => return,
        }
        let Some(nick) = nick else {
            push_error(out, st, "jid-malformed", Some("A nickname is required to enter a room"));
            return;
        };
        match self.sessions.get(&sender.full).cloned() {
            Some(current) if current == nick => self.presence_update(st, sender, nick, now, out),
            Some(current) => self.change_nick(st, sender, &current, nick, oracle, out),
            None => self.join(st, sender, nick, oracle, now, out),
        }
    }

    fn join(
        &mut self,
        st: &Element,
        sender: &Sender,
        nick: &str,
        oracle: &dyn AccessOracle,
        now: &str,
        out: &mut Vec<Outbound>,
    ) {
        match self.seat(st, sender, nick, oracle, false) {
            Ok(nick) => {
                let created = self.locked;
                self.send_join_state(st, &nick, &sender.full, created, now, out);
            }
            Err((condition, text)) => push_error(out, st, condition, Some(text)),
        }
    }

    /// Puts a session that was an occupant of this room before it moved to this node
    /// (its previous node failed, or the room was handed over) back in, from the join
    /// presence its session kept: the same admission checks as a join (bans, members-only,
    /// password, nickname conflicts, a channel's view permission), but nothing is sent to
    /// anyone, since every occupant already saw that presence and its self-presence and
    /// history were delivered when it first joined. A locked room does not stop it: the
    /// room's lock was its creator's business on the node that held it. `Err` is the
    /// condition that refused it; the session's node then tells its client it left.
    pub fn rejoin(&mut self, presence: &Element, oracle: &dyn AccessOracle) -> Result<(), &'static str> {
        let Some(sender) = presence.attr("from").and_then(|f| waddle_jid::Jid::new(f).ok()) else {
            return Err("jid-malformed");
        };
        let sender = Sender { full: sender.to_string(), bare: sender.to_bare().to_string() };
        if self.destroyed {
            return Err("item-not-found");
        }
        if self.sessions.contains_key(&sender.full) {
            return Ok(());
        }
        let nick = presence
            .attr("to")
            .and_then(|t| waddle_jid::Jid::new(t).ok())
            .and_then(|to| to.resource().map(|r| r.as_str().to_owned()))
            .ok_or("jid-malformed")?;
        self.seat(presence, &sender, &nick, oracle, true).map(|_| ()).map_err(|(condition, _)| condition)
    }

    /// Admits `sender` under `nick` and seats it: the nickname it got, or the condition
    /// and text that refused it. `rejoining` skips the lock (see [`Room::rejoin`]).
    fn seat(
        &mut self,
        st: &Element,
        sender: &Sender,
        nick: &str,
        oracle: &dyn AccessOracle,
        rejoining: bool,
    ) -> Result<String, (&'static str, &'static str)> {
        let policy = oracle.access(&sender.bare);
        let (aff, channel) = self.effective(&sender.bare, &policy);
        if channel.is_some_and(|c| !c.can_view) {
            return Err(("forbidden", "You may not enter this channel"));
        }
        if self.locked && aff != Affiliation::Owner && !rejoining {
            return Err(("item-not-found", "This room is locked until its owner configures it"));
        }
        if aff == Affiliation::Outcast {
            return Err(("forbidden", "You have been banned from this room"));
        }
        if channel.is_none() && self.config.members_only && !aff.at_least(Affiliation::Member) {
            return Err(("registration-required", "This room is members-only"));
        }
        // Owners know the password they set (as ejabberd does it).
        if let Some(password) = self.config.password_required().filter(|_| aff != Affiliation::Owner) {
            let given = st.get_child("x", ns::MUC).and_then(|x| x.get_child("password", ns::MUC)).map(Element::text);
            if given.as_deref() != Some(password) {
                return Err(("not-authorized", "A password is required to enter this room"));
            }
        }
        let nick = self.claim_nick(nick, &sender.bare, None, oracle).map_err(|text| ("conflict", text))?;
        let existing = self.occupants.get(nick.as_str());
        let max = usize::try_from(self.config.max_users).unwrap_or(usize::MAX);
        if existing.is_none() && max > 0 && self.occupants.len() >= max && !aff.at_least(Affiliation::Admin) {
            return Err(("service-unavailable", "This room is full"));
        }
        let role = self.default_role(aff, channel);
        let session = Session { full: sender.full.clone(), presence: presence_payload(st) };
        match self.occupants.get_mut(nick.as_str()) {
            Some(occ) => {
                occ.affiliation = aff;
                occ.set_base_role(role);
                occ.sessions.push(session);
            }
            None => {
                let occ = Occupant {
                    nick: nick.clone(),
                    nick_key: nick::key(&nick),
                    nick_skeleton: nick::skeleton(&nick),
                    bare: sender.bare.clone(),
                    affiliation: aff,
                    role,
                    base_role: role,
                    sessions: vec![session],
                };
                self.occupants.insert(nick.clone(), occ);
            }
        }
        self.sessions.insert(sender.full.clone(), nick.clone());
        Ok(nick)
    }

    /// The nickname `bare` gets for requesting `requested`, or why not (`conflict`).
    ///
    /// Two occupants never hold nicknames that [`nick::collide`] (equal under the RFC 8266
    /// comparison, or look-alikes by the homoglyph table). A colliding nickname of the
    /// requester's own occupant is fine: for a nickname change (`current`) it is a change
    /// of spelling; for a join it makes the new session share that occupant, under the
    /// occupant's spelling (status 210 tells the client). A nickname the oracle reserves
    /// for someone else is refused (XEP-0045 §7.2.9), even while they are away.
    fn claim_nick(
        &self,
        requested: &str,
        bare: &str,
        current: Option<&str>,
        oracle: &dyn AccessOracle,
    ) -> Result<String, &'static str> {
        let key = nick::key(requested);
        let skeleton = nick::skeleton(requested);
        let holder = self
            .occupants
            .get(requested)
            .or_else(|| self.occupants.values().find(|o| o.nick_key == key || o.nick_skeleton == skeleton));
        let mut claimed = requested.to_owned();
        if let Some(holder) = holder {
            match current {
                Some(current) if current == holder.nick => {}
                None if holder.bare == bare => holder.nick.clone_into(&mut claimed),
                _ => return Err("That nickname is already in use"),
            }
        }
        let reserved = oracle.nick_reserved_for(&key).or_else(|| {
            if skeleton == key {
                None
            } else {
                oracle.nick_reserved_for(&skeleton)
            }
        });
        if reserved.is_some_and(|owner| normalize_bare(&owner) != bare) {
            return Err("That nickname is reserved for another member");
        }
        Ok(claimed)
    }

    /// What a (re)joining session receives, in XEP-0045 §7.2 order: the other occupants'
    /// presences, its presence to everyone else, its self-presence, history, subject.
    fn send_join_state(
        &self,
        st: &Element,
        nick: &str,
        session: &str,
        created: bool,
        now: &str,
        out: &mut Vec<Outbound>,
    ) {
        let Some(me) = self.occupants.get(nick) else { return };
        let viewer_moderator = me.role == Role::Moderator;
        let plain = Notice::default();
        for other in self.occupants.values().filter(|o| o.nick != nick) {
            out.push(Outbound::Stanza(self.render(&other.shown(), session, false, viewer_moderator, &plain)));
        }
        let shown = me.shown();
        for (receiver, s) in self.receivers() {
            if s.full != session {
                out.push(Outbound::Stanza(self.render(
                    &shown,
                    &s.full,
                    receiver.nick == nick,
                    receiver.role == Role::Moderator,
                    &plain,
                )));
            }
        }
        let mut self_statuses = Vec::new();
        if self.config.whois == Whois::Anyone {
            self_statuses.push(100);
        }
        if self.config.logged {
            self_statuses.push(170);
        }
        if created {
            self_statuses.push(201);
        }
        // The service normalized the requested nickname (resourceprep).
        if st.attr("to").and_then(|t| t.split_once('/')).is_some_and(|(_, raw)| raw != nick) {
            self_statuses.push(210);
        }
        let notice = Notice { self_statuses, id: st.attr("id"), ..Notice::default() };
        out.push(Outbound::Stanza(self.render(&shown, session, true, viewer_moderator, &notice)));
        let spec = st.get_child("x", ns::MUC).and_then(|x| x.get_child("history", ns::MUC));
        self.send_history(spec, session, now, out);
        out.push(Outbound::Stanza(self.subject_message(session)));
    }

    /// Discussion history for a joiner, limited by `<history/>` (XEP-0045 §7.2.15):
    /// maxstanzas, maxchars (of the delivered stanzas), seconds, since.
    fn send_history(&self, spec: Option<&Element>, to: &str, now: &str, out: &mut Vec<Outbound>) {
        let attr = |name: &str| spec.and_then(|h| h.attr(name));
        let max_stanzas = attr("maxstanzas").and_then(|v| v.trim().parse::<usize>().ok());
        let max_chars = attr("maxchars").and_then(|v| v.trim().parse::<usize>().ok());
        let cutoff = attr("seconds")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(|s| stamp::parse_millis(now).map(|n| n.saturating_sub(s.saturating_mul(1_000))));
        let since = attr("since").and_then(stamp::parse_millis);
        let mut selected = Vec::new();
        let mut chars = 0usize;
        for entry in self.history.iter().rev() {
            if max_stanzas.is_some_and(|m| selected.len() >= m) {
                break;
            }
            let at = stamp::parse_millis(&entry.stamp);
            if let (Some(at), Some(cutoff)) = (at, cutoff) {
                if at < cutoff {
                    break;
                }
            }
            if let (Some(at), Some(since)) = (at, since) {
                if at <= since {
                    break;
                }
            }
            let mut msg = entry.message.clone();
            msg.set_attr("to", to);
            msg.append_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("stamp", entry.stamp.as_str()),
            );
            if let Some(max) = max_chars {
                chars += msg.to_bytes(ns::CLIENT).len();
                if chars > max {
                    break;
                }
            }
            selected.push(msg);
        }
        for msg in selected.into_iter().rev() {
            out.push(Outbound::Stanza(msg));
        }
    }

    /// The subject message (XEP-0045 §7.2.15), sent even when there is no subject.
    fn subject_message(&self, to: &str) -> Element {
        let from = if self.subject.nick.is_empty() { self.jid.clone() } else { self.occupant_jid(&self.subject.nick) };
        let mut subject = Element::new("subject", ns::CLIENT);
        subject.append_text(self.subject.text.as_str());
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", from)
            .with_attr("to", to)
            .with_child(subject)
    }

    /// Available presence from a joined session to its own nickname: a presence update
    /// broadcast to everyone, or with `<x xmlns='…muc'/>` a rejoin (the session gets the
    /// whole join state again).
    fn presence_update(&mut self, st: &Element, sender: &Sender, nick: &str, now: &str, out: &mut Vec<Outbound>) {
        let Some(occ) = self.occupants.get_mut(nick) else { return };
        if let Some(idx) = occ.sessions.iter().position(|s| s.full == sender.full) {
            let mut session = occ.sessions.remove(idx);
            session.presence = presence_payload(st);
            occ.sessions.push(session);
        }
        if st.has_child("x", ns::MUC) {
            self.send_join_state(st, nick, &sender.full, false, now, out);
        } else {
            self.broadcast_presence(nick, &Notice { id: st.attr("id"), ..Notice::default() }, None, out);
        }
    }

    /// Nickname change (XEP-0045 §7.6): unavailable from the old nickname with status 303
    /// and the new nickname, then available from the new one.
    fn change_nick(
        &mut self,
        st: &Element,
        sender: &Sender,
        old: &str,
        new: &str,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        if let Err(text) = self.claim_nick(new, &sender.bare, Some(old), oracle) {
            push_error(out, st, "conflict", Some(text));
            return;
        }
        let Some(occ) = self.occupants.get(old) else { return };
        if occ.sessions.len() > 1 {
            push_error(out, st, "not-acceptable", Some("Cannot change the nickname while joined from several clients"));
            return;
        }
        let notice = Notice { statuses: vec![303], new_nick: Some(new), ..Notice::default() };
        let shown = Shown { unavailable: true, children: &[], ..occ.shown() };
        for (receiver, session) in self.receivers() {
            out.push(Outbound::Stanza(self.render(
                &shown,
                &session.full,
                receiver.nick == old,
                receiver.role == Role::Moderator,
                &notice,
            )));
        }
        let Some(mut occ) = self.occupants.remove(old) else { return };
        occ.set_nick(new);
        for s in &mut occ.sessions {
            s.presence = presence_payload(st);
        }
        self.occupants.insert(new.to_owned(), occ);
        self.sessions.insert(sender.full.clone(), new.to_owned());
        if self.subject.nick == old {
            self.subject.nick = new.to_owned();
        }
        self.broadcast_presence(new, &Notice { id: st.attr("id"), ..Notice::default() }, None, out);
    }
}

/// Remove children matching `pred` from `el`.
fn retain_children(el: &mut Element, mut keep: impl FnMut(&Element) -> bool) {
    el.nodes_mut().retain(|n| match n {
        Node::Element(e) => keep(e),
        Node::Text(_) => true,
    });
}
