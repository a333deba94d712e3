//! Roster items, roster set validation and roster remove (RFC 6121 §2).

use std::collections::HashSet;
use std::fmt;

use crate::subscription::SubscriptionState;

/// Largest accepted `name` attribute, in bytes (RFC 6121 §2.3.3 leaves the
/// limit to the server; 1023 bytes matches the JID part limits of RFC 7622).
pub const MAX_NAME_BYTES: usize = 1023;

/// Largest accepted `<group/>` character data, in bytes (RFC 6121 §2.3.3).
pub const MAX_GROUP_BYTES: usize = 1023;

/// The `subscription` attribute of a roster item (RFC 6121 §2.1.2.5).
///
/// The pseudo-value `remove` is not a subscription state; the caller maps a
/// roster set carrying `subscription='remove'` to [`roster_remove`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Subscription {
    /// Neither side receives the other's presence.
    #[default]
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    /// Both directions.
    Both,
}

impl Subscription {
    /// The attribute value: `none`, `to`, `from` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Parses an attribute value (case-sensitive, as in the schema). Returns
    /// `None` for anything else, including `remove`.
    pub fn parse(s: &str) -> Option<Subscription> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }

    /// The user receives the contact's presence (`to` or `both`).
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence (`from` or `both`).
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    /// Builds the value from its two directions.
    pub fn from_flags(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of a user's roster, as RFC 6121 models it, plus the server-side
/// "pending inbound" flag.
///
/// Rows with `in_roster == false` only exist to remember an inbound
/// subscription request from a contact the user never added (RFC 6121 §3.1.3:
/// the server MUST NOT add such a contact to the roster until the user
/// approves). They must not appear in roster results or roster pushes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RosterItem {
    /// Bare JID of the contact (already normalized by the caller).
    pub jid: String,
    /// Optional handle chosen by the user (`name` attribute).
    pub name: Option<String>,
    /// Groups (`<group/>` children), in the order the client sent them.
    pub groups: Vec<String>,
    /// Subscription state (`subscription` attribute).
    pub subscription: Subscription,
    /// `ask='subscribe'`: the user sent a subscription request that the
    /// contact has not answered yet ("Pending Out").
    pub ask_out: bool,
    /// The contact sent a subscription request the user has not answered yet
    /// ("Pending In"); the caller keeps the stored request stanza.
    pub pending_in: bool,
    /// Subscription pre-approval, `approved='true'` (RFC 6121 §3.4).
    pub approved: bool,
    /// The row is part of the user's visible roster.
    pub in_roster: bool,
}

impl RosterItem {
    /// A visible roster item for `jid` with subscription `none` and no flags.
    pub fn new(jid: impl Into<String>) -> RosterItem {
        RosterItem { jid: jid.into(), in_roster: true, ..RosterItem::default() }
    }

    /// The RFC 6121 Appendix A state of this item. Flag combinations that are
    /// not one of the nine defined states are normalized (`ask_out` is ignored
    /// for `to`/`both`, `pending_in` for `from`/`both`).
    pub fn state(&self) -> SubscriptionState {
        SubscriptionState::of(Some(self))
    }

    /// True when the row carries no information at all (not in the roster, no
    /// subscription in either direction, nothing pending, no pre-approval):
    /// the caller should delete it rather than store it. This happens e.g.
    /// when a stored inbound request from a non-roster contact is withdrawn or
    /// denied.
    pub fn is_vacant(&self) -> bool {
        !self.in_roster && self.state() == SubscriptionState::None && !self.approved
    }

    /// The part of the item a client can observe in a roster result or push
    /// (everything except `pending_in`), or `None` if the item is hidden.
    pub(crate) fn visible(&self) -> Option<Visible<'_>> {
        if !self.in_roster {
            return None;
        }
        let state = self.state();
        Some(Visible {
            jid: &self.jid,
            name: self.name.as_deref(),
            groups: &self.groups,
            subscription: state.subscription(),
            ask: state.pending_out(),
            approved: self.approved,
        })
    }
}

/// Client-observable projection of a [`RosterItem`].
#[derive(PartialEq, Eq)]
pub(crate) struct Visible<'a> {
    jid: &'a str,
    name: Option<&'a str>,
    groups: &'a [String],
    subscription: Subscription,
    ask: bool,
    approved: bool,
}

/// A roster request the server must reject, with its stanza error condition
/// (RFC 6121 §2.3.3, §2.5.3; RFC 6120 §8.3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RosterError {
    /// `<not-acceptable/>` (type `modify`): a length limit was exceeded or a
    /// group name is empty.
    NotAcceptable(String),
    /// `<bad-request/>` (type `modify`): malformed request, e.g. duplicate
    /// groups or an empty JID; also used for an invalid presence priority.
    BadRequest(String),
    /// `<item-not-found/>` (type `cancel`): a roster remove names a contact
    /// that is not in the roster (RFC 6121 §2.5.3). Not produced by this crate's
    /// functions; provided so callers report it uniformly.
    ItemNotFound(String),
}

impl RosterError {
    /// The defined stanza error condition element name.
    pub fn condition(&self) -> &'static str {
        match self {
            RosterError::NotAcceptable(_) => "not-acceptable",
            RosterError::BadRequest(_) => "bad-request",
            RosterError::ItemNotFound(_) => "item-not-found",
        }
    }

    /// The stanza error `type` attribute RFC 6120 §8.3.3 associates with the
    /// condition.
    pub fn error_type(&self) -> &'static str {
        match self {
            RosterError::NotAcceptable(_) | RosterError::BadRequest(_) => "modify",
            RosterError::ItemNotFound(_) => "cancel",
        }
    }

    /// Human-readable detail (suitable for the stanza error `<text/>`).
    pub fn text(&self) -> &str {
        match self {
            RosterError::NotAcceptable(t) | RosterError::BadRequest(t) => t,
            RosterError::ItemNotFound(t) => t,
        }
    }
}

impl fmt::Display for RosterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.condition(), self.text())
    }
}

impl std::error::Error for RosterError {}

/// Roster set: the client adds or updates the item for `jid` (RFC 6121 §2.3
/// adding, §2.4 updating).
///
/// Validates the request as RFC 6121 §2.3.3 requires:
///
/// * empty `jid` → `bad-request` (the caller still has to validate the JID
///   syntax itself);
/// * two identical `<group/>` values → `bad-request`;
/// * an empty `<group/>` → `not-acceptable`;
/// * `name` or a group longer than [`MAX_NAME_BYTES`] / [`MAX_GROUP_BYTES`]
///   bytes → `not-acceptable`.
///
/// Because a roster item is atomic (§2.4.1), `name` and `groups` replace the
/// previous values entirely; the subscription state, `ask`, pending-inbound
/// and pre-approval flags of `current` are preserved (the caller ignores any
/// `subscription`/`ask` attributes sent by the client, §2.1.2.5). A hidden row
/// holding only an inbound request becomes a visible roster item. The server
/// then replies with an empty result and pushes the returned item to all
/// interested resources (§2.3.2).
pub fn roster_set(
    current: Option<&RosterItem>,
    jid: &str,
    name: Option<String>,
    groups: Vec<String>,
) -> Result<RosterItem, RosterError> {
    if jid.is_empty() {
        return Err(RosterError::BadRequest("empty jid".to_owned()));
    }
    if let Some(n) = &name {
        if n.len() > MAX_NAME_BYTES {
            return Err(RosterError::NotAcceptable(format!("name longer than {MAX_NAME_BYTES} bytes")));
        }
    }
    let mut seen = HashSet::with_capacity(groups.len());
    for group in &groups {
        if group.is_empty() {
            return Err(RosterError::NotAcceptable("empty group name".to_owned()));
        }
        if group.len() > MAX_GROUP_BYTES {
            return Err(RosterError::NotAcceptable(format!("group name longer than {MAX_GROUP_BYTES} bytes")));
        }
        if !seen.insert(group.as_str()) {
            return Err(RosterError::BadRequest(format!("duplicate group {group:?}")));
        }
    }

    let mut item = match current {
        Some(existing) => {
            let mut item = existing.clone();
            // Normalize the stored flags to the defined state.
            item.state().apply(&mut item);
            item
        }
        None => RosterItem::default(),
    };
    item.jid = jid.to_owned();
    item.name = name;
    item.groups = groups;
    item.in_roster = true;
    Ok(item)
}

/// What a roster remove must send (RFC 6121 §2.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoveOutcome {
    /// Send `unsubscribe` from the user's bare JID to the contact: the user
    /// had a subscription to the contact (`to`/`both`) or a pending outbound
    /// request.
    pub send_unsubscribe: bool,
    /// Send `unsubscribed` from the user's bare JID to the contact: the
    /// contact had a subscription to the user (`from`/`both`) or a pending
    /// inbound request.
    pub send_unsubscribed: bool,
}

/// Roster remove (RFC 6121 §2.5): the item is deleted and the subscriptions
/// in both directions are cancelled.
///
/// The caller deletes the row, pushes `subscription='remove'` to interested
/// resources, and sends the stanzas flagged in the outcome. When
/// `send_unsubscribed` is true and the contact had a subscription
/// (`current.subscription.has_from()`), the contact must also receive
/// `unavailable` presence from the user's available resources, exactly as
/// [`outbound`](crate::outbound) reports for an `unsubscribed` (§3.2.2).
///
/// A row with `in_roster == false` is not in the roster: the caller answers
/// `item-not-found` ([`RosterError::ItemNotFound`], §2.5.3) instead of calling
/// this function.
pub fn roster_remove(current: &RosterItem) -> RemoveOutcome {
    let state = current.state();
    RemoveOutcome {
        send_unsubscribe: state.subscription().has_to() || state.pending_out(),
        send_unsubscribed: state.subscription().has_from() || state.pending_in(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn subscription_strings_round_trip() {
        for (sub, s) in [
            (Subscription::None, "none"),
            (Subscription::To, "to"),
            (Subscription::From, "from"),
            (Subscription::Both, "both"),
        ] {
            assert_eq!(sub.as_str(), s);
            assert_eq!(sub.to_string(), s);
            assert_eq!(Subscription::parse(s), Some(sub));
        }
        assert_eq!(Subscription::parse("remove"), None);
        assert_eq!(Subscription::parse("Both"), None);
        assert_eq!(Subscription::parse(""), None);
        assert_eq!(Subscription::default(), Subscription::None);
    }

    #[test]
    fn subscription_directions() {
        assert!(!Subscription::None.has_to() && !Subscription::None.has_from());
        assert!(Subscription::To.has_to() && !Subscription::To.has_from());
        assert!(!Subscription::From.has_to() && Subscription::From.has_from());
        assert!(Subscription::Both.has_to() && Subscription::Both.has_from());
        for sub in [Subscription::None, Subscription::To, Subscription::From, Subscription::Both] {
            assert_eq!(Subscription::from_flags(sub.has_to(), sub.has_from()), sub);
        }
    }

    #[test]
    fn roster_set_creates_visible_item() {
        let item = roster_set(None, "romeo@example.net", Some("Romeo".into()), groups(&["Friends"]));
        assert_eq!(
            item,
            Ok(RosterItem {
                jid: "romeo@example.net".into(),
                name: Some("Romeo".into()),
                groups: groups(&["Friends"]),
                in_roster: true,
                ..RosterItem::default()
            })
        );
    }

    #[test]
    fn roster_set_replaces_name_and_groups_but_keeps_subscription_flags() {
        let current = RosterItem {
            jid: "romeo@example.net".into(),
            name: Some("Romeo".into()),
            groups: groups(&["Friends", "Lovers"]),
            subscription: Subscription::From,
            ask_out: true,
            pending_in: false,
            approved: false,
            in_roster: true,
        };
        let updated = roster_set(Some(&current), "romeo@example.net", None, vec![]);
        assert_eq!(updated, Ok(RosterItem { name: None, groups: vec![], ..current.clone() }));
    }

    #[test]
    fn roster_set_reveals_hidden_pending_row() {
        let hidden = RosterItem { jid: "juliet@example.com".into(), pending_in: true, ..RosterItem::default() };
        let item = roster_set(Some(&hidden), "juliet@example.com", None, vec![]);
        assert_eq!(item, Ok(RosterItem { in_roster: true, ..hidden.clone() }));
    }

    #[test]
    fn roster_set_keeps_pre_approval() {
        let current = RosterItem { approved: true, ..RosterItem::new("a@b") };
        let item = roster_set(Some(&current), "a@b", Some("A".into()), vec![]);
        assert_eq!(item.map(|i| i.approved), Ok(true));
    }

    #[test]
    fn roster_set_rejects_duplicate_groups_as_bad_request() {
        let err = roster_set(None, "a@b", None, groups(&["Friends", "Work", "Friends"]));
        assert!(matches!(err, Err(RosterError::BadRequest(_))), "{err:?}");
        assert_eq!(err.map_err(|e| e.condition()), Err("bad-request"));
    }

    #[test]
    fn roster_set_groups_are_case_sensitive() {
        assert!(roster_set(None, "a@b", None, groups(&["friends", "Friends"])).is_ok());
    }

    #[test]
    fn roster_set_rejects_empty_group() {
        let err = roster_set(None, "a@b", None, groups(&["Friends", ""]));
        assert!(matches!(err, Err(RosterError::NotAcceptable(_))), "{err:?}");
    }

    #[test]
    fn roster_set_length_limits_are_inclusive() {
        let max = "x".repeat(MAX_NAME_BYTES);
        assert!(roster_set(None, "a@b", Some(max.clone()), groups(&[&max])).is_ok());

        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let err = roster_set(None, "a@b", Some(long.clone()), vec![]);
        assert!(matches!(err, Err(RosterError::NotAcceptable(_))), "{err:?}");
        let err = roster_set(None, "a@b", None, groups(&[&long]));
        assert!(matches!(err, Err(RosterError::NotAcceptable(_))), "{err:?}");
    }

    #[test]
    fn roster_set_limits_count_bytes_not_chars() {
        // 342 × 'é' (2 bytes each) = 684 bytes: fine. 512 × 'é' = 1024 bytes: too long.
        assert!(roster_set(None, "a@b", Some("é".repeat(342)), vec![]).is_ok());
        let err = roster_set(None, "a@b", Some("é".repeat(512)), vec![]);
        assert!(matches!(err, Err(RosterError::NotAcceptable(_))), "{err:?}");
        let err = roster_set(None, "a@b", None, vec!["é".repeat(512)]);
        assert!(matches!(err, Err(RosterError::NotAcceptable(_))), "{err:?}");
    }

    #[test]
    fn roster_set_rejects_empty_jid() {
        let err = roster_set(None, "", None, vec![]);
        assert!(matches!(err, Err(RosterError::BadRequest(_))), "{err:?}");
    }

    #[test]
    fn roster_set_allows_empty_name() {
        let item = roster_set(None, "a@b", Some(String::new()), vec![]);
        assert_eq!(item.map(|i| i.name), Ok(Some(String::new())));
    }

    #[test]
    fn error_conditions_and_types() {
        let cases = [
            (RosterError::NotAcceptable("x".into()), "not-acceptable", "modify"),
            (RosterError::BadRequest("x".into()), "bad-request", "modify"),
            (RosterError::ItemNotFound("x".into()), "item-not-found", "cancel"),
        ];
        for (err, condition, ty) in cases {
            assert_eq!(err.condition(), condition);
            assert_eq!(err.error_type(), ty);
            assert_eq!(err.text(), "x");
            assert_eq!(err.to_string(), format!("{condition}: x"));
        }
    }

    fn item(sub: Subscription, ask_out: bool, pending_in: bool) -> RosterItem {
        RosterItem { subscription: sub, ask_out, pending_in, ..RosterItem::new("c@d") }
    }

    #[test]
    fn roster_remove_outcomes_for_every_defined_state() {
        use Subscription as S;
        // (subscription, ask_out, pending_in) → (unsubscribe, unsubscribed)
        let rows = [
            ((S::None, false, false), (false, false)),
            ((S::None, true, false), (true, false)),
            ((S::None, false, true), (false, true)),
            ((S::None, true, true), (true, true)),
            ((S::To, false, false), (true, false)),
            ((S::To, false, true), (true, true)),
            ((S::From, false, false), (false, true)),
            ((S::From, true, false), (true, true)),
            ((S::Both, false, false), (true, true)),
        ];
        for ((sub, ask, pin), (unsub, unsubd)) in rows {
            let out = roster_remove(&item(sub, ask, pin));
            assert_eq!(
                out,
                RemoveOutcome { send_unsubscribe: unsub, send_unsubscribed: unsubd },
                "state {sub:?} ask={ask} pending_in={pin}"
            );
        }
    }

    #[test]
    fn roster_remove_ignores_pre_approval() {
        let out = roster_remove(&RosterItem { approved: true, ..RosterItem::new("c@d") });
        assert_eq!(out, RemoveOutcome::default());
    }

    #[test]
    fn vacant_rows() {
        assert!(RosterItem::default().is_vacant());
        assert!(!RosterItem::new("a@b").is_vacant());
        assert!(!RosterItem { pending_in: true, ..RosterItem::default() }.is_vacant());
    }
}
