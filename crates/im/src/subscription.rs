//! Presence subscription state machine (RFC 6121 §3 and Appendix A).

use std::fmt;

use crate::roster::{RosterItem, Subscription};

/// A presence subscription stanza type (RFC 6121 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionAction {
    /// `subscribe`: request a subscription to the recipient's presence.
    Subscribe,
    /// `subscribed`: approve a request (or pre-approve one, §3.4).
    Subscribed,
    /// `unsubscribe`: stop receiving the recipient's presence.
    Unsubscribe,
    /// `unsubscribed`: deny a request, cancel a granted subscription or a
    /// pre-approval.
    Unsubscribed,
}

impl SubscriptionAction {
    /// The presence `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionAction::Subscribe => "subscribe",
            SubscriptionAction::Subscribed => "subscribed",
            SubscriptionAction::Unsubscribe => "unsubscribe",
            SubscriptionAction::Unsubscribed => "unsubscribed",
        }
    }

    /// Parses a presence `type` attribute; `None` for non-subscription types.
    pub fn parse(s: &str) -> Option<SubscriptionAction> {
        match s {
            "subscribe" => Some(SubscriptionAction::Subscribe),
            "subscribed" => Some(SubscriptionAction::Subscribed),
            "unsubscribe" => Some(SubscriptionAction::Unsubscribe),
            "unsubscribed" => Some(SubscriptionAction::Unsubscribed),
            _ => None,
        }
    }
}

impl fmt::Display for SubscriptionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The nine defined subscription states of RFC 6121 Appendix A.1, from the
/// point of view of the user whose roster holds the item.
///
/// "Pending Out" is the `ask='subscribe'` flag ([`RosterItem::ask_out`]);
/// "Pending In" is [`RosterItem::pending_in`]. Pre-approval is tracked
/// separately ([`RosterItem::approved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// "None": no subscription, nothing pending (also: no roster row at all).
    None,
    /// "None + Pending Out".
    NonePendingOut,
    /// "None + Pending In".
    NonePendingIn,
    /// "None + Pending Out+In".
    NonePendingOutIn,
    /// "To".
    To,
    /// "To + Pending In".
    ToPendingIn,
    /// "From".
    From,
    /// "From + Pending Out".
    FromPendingOut,
    /// "Both".
    Both,
}

impl SubscriptionState {
    /// All nine states, in the order of the RFC tables.
    pub const ALL: [SubscriptionState; 9] = [
        SubscriptionState::None,
        SubscriptionState::NonePendingOut,
        SubscriptionState::NonePendingIn,
        SubscriptionState::NonePendingOutIn,
        SubscriptionState::To,
        SubscriptionState::ToPendingIn,
        SubscriptionState::From,
        SubscriptionState::FromPendingOut,
        SubscriptionState::Both,
    ];

    /// The state of an optional roster row; a missing row is "None".
    ///
    /// Undefined flag combinations are normalized: `ask_out` is meaningless
    /// once the user already has `to`/`both`, and `pending_in` once the
    /// contact already has `from`/`both`.
    pub fn of(item: Option<&RosterItem>) -> SubscriptionState {
        match item {
            None => SubscriptionState::None,
            Some(i) => SubscriptionState::from_parts(i.subscription, i.ask_out, i.pending_in),
        }
    }

    /// Builds a state from the `subscription` value and the pending flags,
    /// normalizing as [`SubscriptionState::of`] does.
    pub fn from_parts(subscription: Subscription, pending_out: bool, pending_in: bool) -> Self {
        use SubscriptionState as S;
        match (subscription, pending_out, pending_in) {
            (Subscription::None, false, false) => S::None,
            (Subscription::None, true, false) => S::NonePendingOut,
            (Subscription::None, false, true) => S::NonePendingIn,
            (Subscription::None, true, true) => S::NonePendingOutIn,
            (Subscription::To, _, false) => S::To,
            (Subscription::To, _, true) => S::ToPendingIn,
            (Subscription::From, false, _) => S::From,
            (Subscription::From, true, _) => S::FromPendingOut,
            (Subscription::Both, _, _) => S::Both,
        }
    }

    /// The `subscription` attribute for this state.
    pub fn subscription(self) -> Subscription {
        use SubscriptionState as S;
        match self {
            S::None | S::NonePendingOut | S::NonePendingIn | S::NonePendingOutIn => Subscription::None,
            S::To | S::ToPendingIn => Subscription::To,
            S::From | S::FromPendingOut => Subscription::From,
            S::Both => Subscription::Both,
        }
    }

    /// The user has an unanswered outbound request (`ask='subscribe'`).
    pub fn pending_out(self) -> bool {
        use SubscriptionState as S;
        matches!(self, S::NonePendingOut | S::NonePendingOutIn | S::FromPendingOut)
    }

    /// The contact has an unanswered inbound request.
    pub fn pending_in(self) -> bool {
        use SubscriptionState as S;
        matches!(self, S::NonePendingIn | S::NonePendingOutIn | S::ToPendingIn)
    }

    /// Writes the state into `item` (`subscription`, `ask_out`, `pending_in`);
    /// other fields are untouched.
    pub fn apply(self, item: &mut RosterItem) {
        item.subscription = self.subscription();
        item.ask_out = self.pending_out();
        item.pending_in = self.pending_in();
    }

    /// RFC 6121 Appendix A.2 (A.2.1 and A.2.2): the user's server processes an
    /// outbound subscription stanza sent by the user. Returns the new state and
    /// whether the stanza is routed to the contact.
    ///
    /// This is the bare table: the pre-approval handling of §3.4 is layered on
    /// top of it by [`outbound`].
    pub fn after_outbound(self, action: SubscriptionAction) -> (SubscriptionState, bool) {
        use SubscriptionAction as A;
        use SubscriptionState as S;
        match action {
            // A.2.1, outbound "subscribe": always routed.
            A::Subscribe => {
                let next = match self {
                    S::None => S::NonePendingOut,
                    S::NonePendingIn => S::NonePendingOutIn,
                    S::From => S::FromPendingOut,
                    other => other,
                };
                (next, true)
            }
            // A.2.1, outbound "unsubscribe": always routed.
            A::Unsubscribe => {
                let next = match self {
                    S::NonePendingOut | S::To => S::None,
                    S::NonePendingOutIn | S::ToPendingIn => S::NonePendingIn,
                    S::FromPendingOut | S::Both => S::From,
                    other => other,
                };
                (next, true)
            }
            // A.2.2, outbound "subscribed": routed only when answering a
            // pending inbound request.
            A::Subscribed => match self {
                S::NonePendingIn => (S::From, true),
                S::NonePendingOutIn => (S::FromPendingOut, true),
                S::ToPendingIn => (S::Both, true),
                other => (other, false),
            },
            // A.2.2, outbound "unsubscribed": routed only when there is a
            // granted subscription or a pending inbound request to cancel.
            A::Unsubscribed => match self {
                S::NonePendingIn | S::From => (S::None, true),
                S::NonePendingOutIn | S::FromPendingOut => (S::NonePendingOut, true),
                S::ToPendingIn | S::Both => (S::To, true),
                other => (other, false),
            },
        }
    }

    /// RFC 6121 Appendix A.3 (A.3.1 to A.3.4): the user's server processes an
    /// inbound subscription stanza from the contact. Returns the new state and
    /// whether the stanza is delivered to the user.
    ///
    /// This is the bare table: the auto-replies of §3.1.3 (already subscribed,
    /// pre-approved) are layered on top of it by [`inbound`].
    pub fn after_inbound(self, action: SubscriptionAction) -> (SubscriptionState, bool) {
        use SubscriptionAction as A;
        use SubscriptionState as S;
        match action {
            // A.3.1, inbound "subscribe".
            A::Subscribe => match self {
                S::None => (S::NonePendingIn, true),
                S::NonePendingOut => (S::NonePendingOutIn, true),
                S::To => (S::ToPendingIn, true),
                other => (other, false),
            },
            // A.3.2, inbound "unsubscribe".
            A::Unsubscribe => match self {
                S::NonePendingIn | S::From => (S::None, true),
                S::NonePendingOutIn | S::FromPendingOut => (S::NonePendingOut, true),
                S::ToPendingIn | S::Both => (S::To, true),
                other => (other, false),
            },
            // A.3.3, inbound "subscribed".
            A::Subscribed => match self {
                S::NonePendingOut => (S::To, true),
                S::NonePendingOutIn => (S::ToPendingIn, true),
                S::FromPendingOut => (S::Both, true),
                other => (other, false),
            },
            // A.3.4, inbound "unsubscribed".
            A::Unsubscribed => match self {
                S::NonePendingOut | S::To => (S::None, true),
                S::NonePendingOutIn | S::ToPendingIn => (S::NonePendingIn, true),
                S::FromPendingOut | S::Both => (S::From, true),
                other => (other, false),
            },
        }
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SubscriptionState as S;
        f.write_str(match self {
            S::None => "None",
            S::NonePendingOut => "None + Pending Out",
            S::NonePendingIn => "None + Pending In",
            S::NonePendingOutIn => "None + Pending Out+In",
            S::To => "To",
            S::ToPendingIn => "To + Pending In",
            S::From => "From",
            S::FromPendingOut => "From + Pending Out",
            S::Both => "Both",
        })
    }
}

/// Result of the user's server processing an OUTBOUND subscription stanza
/// sent by the user (RFC 6121 §3.1.2, §3.1.5, §3.2.2, §3.3.2, §3.4.2 and
/// Appendix A.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundOutcome {
    /// New state of the user's item for the contact; `None` when nothing
    /// changed (or there is still no item). Store it, or delete the row if it
    /// [is vacant](RosterItem::is_vacant).
    pub item: Option<RosterItem>,
    /// The visible roster item changed: push `item` to the user's interested
    /// resources.
    pub roster_push: bool,
    /// Route the stanza (from the user's bare JID) to the contact.
    pub forward: bool,
    /// After an approving `subscribed`: send the user's current presence from
    /// every available resource to the contact (§3.1.5).
    pub send_current_presence: bool,
    /// After an `unsubscribed` cancelling `from`/`both`: send `unavailable`
    /// from every available resource of the user to the contact, before the
    /// `unsubscribed` itself (§3.2.2).
    pub send_unavailable: bool,
}

/// The user's server processes an outbound `action` the user sent to
/// `contact` (bare JID), given the user's current item for that contact.
///
/// Implements the RFC 6121 Appendix A.2 tables, including the "no state
/// change" rows (for `subscribe`/`unsubscribe` the stanza is still routed, to
/// resynchronize the contact's server), plus:
///
/// * §3.1.2: a `subscribe` for a contact not in the roster adds it to the
///   roster (a hidden pending-inbound row becomes visible);
/// * §3.1.5: an approving `subscribed` adds the contact to the roster and asks
///   for the user's current presence to be sent;
/// * §3.4.2: a `subscribed` with no pending inbound request in state "None",
///   "None + Pending Out" or "To" records a pre-approval (`approved`, pushed,
///   not routed; an item is created if needed); in "From", "From + Pending Out"
///   or "Both" it is silently ignored;
/// * §3.2.2: `unsubscribed` cancelling `from`/`both` asks for `unavailable`
///   presence to be sent first; in a state with nothing to cancel it removes a
///   pre-approval (pushed, not routed) or is ignored.
///
/// The caller stamps the stanza with the user's bare JID and routes it to the
/// contact's bare JID.
pub fn outbound(current: Option<&RosterItem>, contact: &str, action: SubscriptionAction) -> OutboundOutcome {
    let before = SubscriptionState::of(current);
    let (after, forward) = before.after_outbound(action);
    let mut next = start_item(current, contact);
    after.apply(&mut next);

    let mut send_current_presence = false;
    let mut send_unavailable = false;
    match action {
        SubscriptionAction::Subscribe => next.in_roster = true,
        SubscriptionAction::Unsubscribe => {}
        SubscriptionAction::Subscribed => {
            if forward {
                // Normal approval of a pending inbound request.
                next.in_roster = true;
                send_current_presence = true;
            } else if !before.subscription().has_from() {
                // Pre-approval (§3.4.2).
                next.approved = true;
                next.in_roster = true;
            }
        }
        SubscriptionAction::Unsubscribed => {
            // Denying or cancelling also withdraws any pre-approval.
            next.approved = false;
            send_unavailable = before.subscription().has_from();
        }
    }

    let (item, roster_push) = finish(current, next);
    OutboundOutcome { item, roster_push, forward, send_current_presence, send_unavailable }
}

/// Result of the user's server processing an INBOUND subscription stanza
/// from the contact addressed to the user (RFC 6121 §3.1.3, §3.1.6, §3.2.3,
/// §3.3.3, §3.4 and Appendix A.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundOutcome {
    /// New state of the user's item for the contact; `None` when nothing
    /// changed (or there is still no item). Store it, or delete the row if it
    /// [is vacant](RosterItem::is_vacant). A row with `in_roster == false`
    /// holds a request from a contact the user never added.
    pub item: Option<RosterItem>,
    /// The visible roster item changed: push `item` to the user's interested
    /// resources.
    pub roster_push: bool,
    /// Deliver the stanza to the user's available resources. For `subscribe`
    /// the caller keeps the request (the stanza) and re-delivers it whenever
    /// the user becomes available until answered (§3.1.3).
    pub deliver: bool,
    /// The server answers on the user's behalf, from the user's bare JID to
    /// the contact. Do NOT run it through [`outbound`]: its effect on the
    /// user's item is already in `item`.
    pub auto_reply: Option<SubscriptionAction>,
    /// Together with the auto-reply: send the user's current presence from
    /// every available resource to the contact (§3.1.3, §3.1.5).
    pub send_current_presence: bool,
    /// After an `unsubscribe` cancelling the contact's `from`/`both`: send
    /// `unavailable` from every available resource of the user to the contact
    /// (§3.3.3).
    pub send_unavailable: bool,
}

/// The user's server processes an inbound `action` from `contact` (bare JID)
/// addressed to the user, given the user's current item for that contact.
///
/// Implements the RFC 6121 Appendix A.3 tables, including the "no state
/// change" rows (not delivered), plus:
///
/// * §3.1.3: a `subscribe` while the contact already has `from`/`both` is not
///   delivered; the server auto-replies `subscribed` and sends the user's
///   current presence;
/// * §3.4: a `subscribe` from a pre-approved contact is approved at once
///   ("None" → "From", "None + Pending Out" → "From + Pending Out", "To" →
///   "Both"), the pre-approval is consumed, the item pushed, and the server
///   auto-replies `subscribed` plus current presence instead of delivering;
/// * §3.1.3: a `subscribe` from a contact with no roster row creates a hidden
///   row (`in_roster == false`) that only records the pending request;
/// * §3.3.3: an `unsubscribe` cancelling `from`/`both` asks for `unavailable`
///   presence to be sent to the contact.
pub fn inbound(current: Option<&RosterItem>, contact: &str, action: SubscriptionAction) -> InboundOutcome {
    let before = SubscriptionState::of(current);
    let mut next = start_item(current, contact);
    let mut auto_reply = None;
    let mut send_current_presence = false;
    let mut send_unavailable = false;

    let deliver = if action == SubscriptionAction::Subscribe && before.subscription().has_from() {
        // Already subscribed: confirm again, never bother the user.
        auto_reply = Some(SubscriptionAction::Subscribed);
        send_current_presence = true;
        before.apply(&mut next);
        false
    } else if action == SubscriptionAction::Subscribe && next.approved {
        // Pre-approved: receive the request and approve it immediately.
        let (pending, _) = before.after_inbound(SubscriptionAction::Subscribe);
        let (approved, _) = pending.after_outbound(SubscriptionAction::Subscribed);
        approved.apply(&mut next);
        next.approved = false;
        auto_reply = Some(SubscriptionAction::Subscribed);
        send_current_presence = true;
        false
    } else {
        let (after, deliver) = before.after_inbound(action);
        after.apply(&mut next);
        if action == SubscriptionAction::Unsubscribe {
            send_unavailable = before.subscription().has_from();
        }
        deliver
    };

    let (item, roster_push) = finish(current, next);
    InboundOutcome { item, roster_push, deliver, auto_reply, send_current_presence, send_unavailable }
}

/// The row to modify: a copy of the current one, or a hidden empty row.
fn start_item(current: Option<&RosterItem>, contact: &str) -> RosterItem {
    match current {
        Some(item) => item.clone(),
        None => RosterItem { jid: contact.to_owned(), ..RosterItem::default() },
    }
}

/// Drops a meaningless pre-approval, then decides what to report: the new
/// row if it differs from the current one (never a vacant row that did not
/// exist before), and whether the visible roster item changed.
fn finish(current: Option<&RosterItem>, mut next: RosterItem) -> (Option<RosterItem>, bool) {
    if next.subscription.has_from() {
        // A pre-approval has no meaning once the contact is subscribed.
        next.approved = false;
    }
    let roster_push = match next.visible() {
        None => false,
        Some(visible) => current.and_then(RosterItem::visible) != Some(visible),
    };
    let item = match current {
        Some(existing) if *existing == next => None,
        None if next.is_vacant() => None,
        _ => Some(next),
    };
    (item, roster_push)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_strings_round_trip() {
        for action in [
            SubscriptionAction::Subscribe,
            SubscriptionAction::Subscribed,
            SubscriptionAction::Unsubscribe,
            SubscriptionAction::Unsubscribed,
        ] {
            assert_eq!(SubscriptionAction::parse(action.as_str()), Some(action));
            assert_eq!(action.to_string(), action.as_str());
        }
        assert_eq!(SubscriptionAction::parse("unavailable"), None);
        assert_eq!(SubscriptionAction::parse("probe"), None);
        assert_eq!(SubscriptionAction::parse("Subscribe"), None);
    }

    #[test]
    fn state_round_trips_through_item() {
        for state in SubscriptionState::ALL {
            let mut item = RosterItem::new("c@d");
            state.apply(&mut item);
            assert_eq!(item.state(), state);
            assert_eq!(
                SubscriptionState::from_parts(state.subscription(), state.pending_out(), state.pending_in()),
                state
            );
        }
    }

    #[test]
    fn undefined_combinations_are_normalized() {
        use SubscriptionState as S;
        assert_eq!(S::from_parts(Subscription::To, true, false), S::To);
        assert_eq!(S::from_parts(Subscription::To, true, true), S::ToPendingIn);
        assert_eq!(S::from_parts(Subscription::From, false, true), S::From);
        assert_eq!(S::from_parts(Subscription::From, true, true), S::FromPendingOut);
        assert_eq!(S::from_parts(Subscription::Both, true, true), S::Both);
        assert_eq!(S::of(None), S::None);
    }

    #[test]
    fn state_names_match_the_rfc() {
        assert_eq!(SubscriptionState::NonePendingOutIn.to_string(), "None + Pending Out+In");
        assert_eq!(SubscriptionState::FromPendingOut.to_string(), "From + Pending Out");
    }

    #[test]
    fn normalizing_an_undefined_row_is_reported_as_a_change() {
        let weird =
            RosterItem { subscription: Subscription::Both, ask_out: true, pending_in: true, ..RosterItem::new("c@d") };
        let out = outbound(Some(&weird), "c@d", SubscriptionAction::Subscribe);
        let item = out.item.unwrap_or_default();
        assert_eq!(item.state(), SubscriptionState::Both);
        assert!(!item.ask_out && !item.pending_in);
        // The visible projection (both, no ask) did not change.
        assert!(!out.roster_push);
    }
}
