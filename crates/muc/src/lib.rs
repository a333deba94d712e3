//! XEP-0045 Multi-User Chat room semantics, free of I/O.
//!
//! This crate owns what a MUC room *means*: who may enter (nicknames, compared as
//! [`nick`] says, and nicknames the [`AccessOracle`] reserves; passwords,
//! members-only, bans, locking of newly created rooms, occupant limits), the order and
//! content of the presences, history and subject a joiner receives, groupchat reflection
//! with XEP-0359 stanza ids, private messages, mediated invitations, subject changes,
//! retractions (XEP-0424) against the in-memory discussion history, the `muc#admin`
//! (roles and affiliations, with the XEP's privilege rules) and `muc#owner` (configuration
//! form, instant rooms, destruction) protocols, service discovery of the room, and the
//! JSON snapshot of a persistent room.
//!
//! The room actor in the node is a thin shell around [`Room`]: it feeds every stanza
//! addressed to the room or to an occupant into [`Room::handle`] and executes the
//! [`Outbound`]s it gets back (route a stanza, archive a message, persist
//! [`Room::snapshot`], stop the actor).
//!
//! Must never: do I/O, read the clock (the caller passes the timestamp), generate ids
//! (the caller passes a generator), or decide permissions beyond the XEP-0045 rules and
//! what the [`AccessOracle`] says (for waddle channels the oracle's answer is the source
//! of truth; ad-hoc rooms use [`Policy::Standard`]).

mod form;
pub mod nick;
pub mod ns;
mod room;
mod stamp;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use waddle_xml::Element;

pub use room::Room;

/// A long-lived relation between a user (bare JID) and the room (XEP-0045 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Owner,
    Admin,
    Member,
    None,
    Outcast,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        match s {
            "owner" => Some(Affiliation::Owner),
            "admin" => Some(Affiliation::Admin),
            "member" => Some(Affiliation::Member),
            "none" => Some(Affiliation::None),
            "outcast" => Some(Affiliation::Outcast),
            _ => None,
        }
    }

    /// Outcast < none < member < admin < owner.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Affiliation::Outcast => 0,
            Affiliation::None => 1,
            Affiliation::Member => 2,
            Affiliation::Admin => 3,
            Affiliation::Owner => 4,
        }
    }

    pub(crate) fn at_least(self, other: Affiliation) -> bool {
        self.rank() >= other.rank()
    }
}

/// A temporary relation between an occupant and the room, for the visit (XEP-0045 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Moderator,
    Participant,
    Visitor,
    None,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "moderator" => Some(Role::Moderator),
            "participant" => Some(Role::Participant),
            "visitor" => Some(Role::Visitor),
            "none" => Some(Role::None),
            _ => None,
        }
    }
}

/// Who may see occupants' real JIDs: semi-anonymous (`Moderators`) or non-anonymous
/// (`Anyone`) rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    Moderators,
    Anyone,
}

impl Whois {
    pub fn as_str(self) -> &'static str {
        match self {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        }
    }

    pub fn parse(s: &str) -> Option<Whois> {
        match s {
            "moderators" => Some(Whois::Moderators),
            "anyone" => Some(Whois::Anyone),
            _ => None,
        }
    }
}

/// Room configuration (the `muc#roomconfig` form). Missing fields in a persisted
/// snapshot take their default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub members_only: bool,
    pub moderated: bool,
    pub whois: Whois,
    /// Maximum number of occupants (distinct nicknames); 0 means no limit. Admins and
    /// owners may always enter.
    pub max_users: u32,
    /// `Some` (non-empty) makes the room password-protected.
    pub password: Option<String>,
    pub public: bool,
    /// Participants may send mediated invitations (admins and owners always may).
    pub allow_invites: bool,
    /// Participants may change the subject (moderators always may).
    pub change_subject: bool,
    /// Number of groupchat messages kept in memory for joiners.
    pub history_max: u32,
    /// Groupchat messages are archived (the shell acts on [`Outbound::Archive`]);
    /// announced with status 170 and the `urn:xmpp:mam:2` feature.
    pub logged: bool,
}

impl Default for RoomConfig {
    fn default() -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            members_only: false,
            moderated: false,
            whois: Whois::Moderators,
            max_users: 200,
            password: None,
            public: true,
            allow_invites: false,
            change_subject: true,
            history_max: 50,
            logged: true,
        }
    }
}

impl RoomConfig {
    /// The password a joiner must give, if the room is password-protected.
    pub fn password_required(&self) -> Option<&str> {
        self.password.as_deref().filter(|p| !p.is_empty())
    }
}

/// What the permission layer says about a user. Ad-hoc rooms use `Standard` (plain
/// XEP-0045 rules on the room's own affiliation list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Standard,
    Channel(ChannelAccess),
}

/// A user's access to a waddle channel, as the permission layer computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelAccess {
    /// May see the channel: join, read history. `false` refuses entry (`forbidden`)
    /// and removes a present occupant on [`Room::apply_policy_change`] (status 321).
    pub can_view: bool,
    /// May speak (groupchat, private messages, subject); `false` makes the occupant a
    /// visitor.
    pub can_send: bool,
    /// Replaces the room's own affiliation list for this user.
    pub affiliation: Affiliation,
    /// The occupant gets the moderator role.
    pub moderator: bool,
}

impl ChannelAccess {
    /// The mapping from waddle channel roles: owner→owner, admin→admin,
    /// moderator→member with the moderator role, member→member, anything else→none.
    pub fn from_channel_role(role: Option<&str>, can_view: bool, can_send: bool) -> ChannelAccess {
        let (affiliation, moderator) = match role {
            Some("owner") => (Affiliation::Owner, false),
            Some("admin") => (Affiliation::Admin, false),
            Some("moderator") => (Affiliation::Member, true),
            Some("member") => (Affiliation::Member, false),
            _ => (Affiliation::None, false),
        };
        ChannelAccess { can_view, can_send, affiliation, moderator }
    }
}

/// What a waddle channel dictates about its room (see [`Room::apply_channel_settings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSettings {
    pub name: String,
    pub description: String,
    /// Announcement channels are moderated: only those allowed to post have voice.
    pub moderated: bool,
}

/// Computed by the shell per stanza (from an in-memory checker, cheap and synchronous).
pub trait AccessOracle {
    fn access(&self, user_bare_jid: &str) -> Policy;

    /// The user (bare JID) for whom a nickname is reserved, if any: XEP-0045 §7.2.9 and
    /// §9.5 registered nicknames, which nobody else may enter or change to (`conflict`).
    /// `nick_key` is the [`nick::key`] of the requested nickname, or its
    /// [`nick::skeleton`] (the room asks for both). Waddle channels reserve each waddle
    /// member's username; ad-hoc rooms reserve nothing (the default).
    fn nick_reserved_for(&self, nick_key: &str) -> Option<String> {
        let _ = nick_key;
        None
    }
}

/// Any `Fn(&str) -> Policy` is an oracle.
impl<F: Fn(&str) -> Policy> AccessOracle for F {
    fn access(&self, user_bare_jid: &str) -> Policy {
        self(user_bare_jid)
    }
}

/// The oracle of ad-hoc rooms: everyone gets [`Policy::Standard`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StandardOracle;

impl AccessOracle for StandardOracle {
    fn access(&self, _user_bare_jid: &str) -> Policy {
        Policy::Standard
    }
}

/// One groupchat message of the discussion history / archive.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    /// The XEP-0359 id the room assigned.
    pub stanza_id: String,
    pub from_nick: String,
    /// The sender's real full JID.
    pub from_real: String,
    /// The message as reflected: `from` = room/nick, no `to`, with the room's
    /// `<stanza-id/>`.
    pub message: Element,
    /// XEP-0082 UTC timestamp of reflection.
    pub stamp: String,
}

/// What the shell must do after feeding the room.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// Route this stanza; `to` and `from` are set.
    Stanza(Element),
    /// Route one copy of `stanza` (which has `from` but no `to`) to each full JID in
    /// `to`, with that JID as its `to`: a groupchat message reaching every occupant.
    /// The shell serializes it once for all of them.
    Broadcast { stanza: Element, to: Vec<String> },
    /// Archive this groupchat message (MAM). Emitted once per stored message, after its
    /// reflections, when the room is `logged`; messages carrying only transient payloads
    /// (chat states, markers, receipts) or a XEP-0334 no-store hint are not stored.
    /// For a retraction (`<retract xmlns='urn:xmpp:message-retract:1' id='…'/>`) the
    /// archive tombstones the original: the room has already checked that the sender
    /// wrote it (it was in the in-memory history) or is a moderator.
    Archive(HistoryEntry),
    /// The configuration, affiliations or subject changed: store [`Room::snapshot`] if
    /// the room is persistent (and drop any stored snapshot if it no longer is).
    Persist,
    /// The room is gone (destroyed, or a temporary room lost its last occupant): stop
    /// the actor (and delete the stored snapshot).
    Destroyed,
}

#[derive(Debug, thiserror::Error)]
pub enum MucError {
    #[error("invalid room snapshot: {0}")]
    Snapshot(#[from] serde_json::Error),
    #[error("unsupported room snapshot version {0}")]
    SnapshotVersion(u32),
    #[error("invalid room JID {0:?}")]
    InvalidJid(String),
}
