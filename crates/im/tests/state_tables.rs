//! Every row of RFC 6121 Appendix A (A.2.1, A.2.2, A.3.1–A.3.4), written out
//! literally, checked against both the bare transition tables and the full
//! `outbound`/`inbound` outcomes.

use waddle_im::{
    inbound, outbound, InboundOutcome, OutboundOutcome, RosterItem, SubscriptionAction as A, SubscriptionState as S,
};

const CONTACT: &str = "juliet@example.com";

/// A visible roster item in `state`, not pre-approved.
fn item(state: S) -> RosterItem {
    let mut item =
        RosterItem { name: Some("Juliet".into()), groups: vec!["Friends".into()], ..RosterItem::new(CONTACT) };
    state.apply(&mut item);
    item
}

fn with_state(base: &RosterItem, state: S) -> RosterItem {
    let mut item = base.clone();
    state.apply(&mut item);
    item
}

/// `Some(new)` if `new` differs from `old`, as the outcomes report it.
fn changed(old: &RosterItem, new: RosterItem) -> Option<RosterItem> {
    (new != *old).then_some(new)
}

/// One row of an Appendix A table: existing state, route/deliver, new state.
type Row = (S, bool, S);

const YES: bool = true;
const NO: bool = false;

// ---------------------------------------------------------------- A.2.1

const OUT_SUBSCRIBE: [Row; 9] = [
    (S::None, YES, S::NonePendingOut),
    (S::NonePendingOut, YES, S::NonePendingOut), // no state change
    (S::NonePendingIn, YES, S::NonePendingOutIn),
    (S::NonePendingOutIn, YES, S::NonePendingOutIn), // no state change
    (S::To, YES, S::To),                             // no state change
    (S::ToPendingIn, YES, S::ToPendingIn),           // no state change
    (S::From, YES, S::FromPendingOut),
    (S::FromPendingOut, YES, S::FromPendingOut), // no state change
    (S::Both, YES, S::Both),                     // no state change
];

const OUT_UNSUBSCRIBE: [Row; 9] = [
    (S::None, YES, S::None), // no state change
    (S::NonePendingOut, YES, S::None),
    (S::NonePendingIn, YES, S::NonePendingIn), // no state change
    (S::NonePendingOutIn, YES, S::NonePendingIn),
    (S::To, YES, S::None),
    (S::ToPendingIn, YES, S::NonePendingIn),
    (S::From, YES, S::From), // no state change
    (S::FromPendingOut, YES, S::From),
    (S::Both, YES, S::From),
];

// ---------------------------------------------------------------- A.2.2

const OUT_SUBSCRIBED: [Row; 9] = [
    (S::None, NO, S::None),                     // no state change
    (S::NonePendingOut, NO, S::NonePendingOut), // no state change
    (S::NonePendingIn, YES, S::From),
    (S::NonePendingOutIn, YES, S::FromPendingOut),
    (S::To, NO, S::To), // no state change
    (S::ToPendingIn, YES, S::Both),
    (S::From, NO, S::From),                     // no state change
    (S::FromPendingOut, NO, S::FromPendingOut), // no state change
    (S::Both, NO, S::Both),                     // no state change
];

const OUT_UNSUBSCRIBED: [Row; 9] = [
    (S::None, NO, S::None),                     // no state change
    (S::NonePendingOut, NO, S::NonePendingOut), // no state change
    (S::NonePendingIn, YES, S::None),
    (S::NonePendingOutIn, YES, S::NonePendingOut),
    (S::To, NO, S::To), // no state change
    (S::ToPendingIn, YES, S::To),
    (S::From, YES, S::None),
    (S::FromPendingOut, YES, S::NonePendingOut),
    (S::Both, YES, S::To),
];

// ---------------------------------------------------------------- A.3.1–A.3.4

const IN_SUBSCRIBE: [Row; 9] = [
    (S::None, YES, S::NonePendingIn),
    (S::NonePendingOut, YES, S::NonePendingOutIn),
    (S::NonePendingIn, NO, S::NonePendingIn),       // no state change
    (S::NonePendingOutIn, NO, S::NonePendingOutIn), // no state change
    (S::To, YES, S::ToPendingIn),
    (S::ToPendingIn, NO, S::ToPendingIn),       // no state change
    (S::From, NO, S::From),                     // no state change (auto-reply)
    (S::FromPendingOut, NO, S::FromPendingOut), // no state change (auto-reply)
    (S::Both, NO, S::Both),                     // no state change (auto-reply)
];

const IN_UNSUBSCRIBE: [Row; 9] = [
    (S::None, NO, S::None),                     // no state change
    (S::NonePendingOut, NO, S::NonePendingOut), // no state change
    (S::NonePendingIn, YES, S::None),
    (S::NonePendingOutIn, YES, S::NonePendingOut),
    (S::To, NO, S::To), // no state change
    (S::ToPendingIn, YES, S::To),
    (S::From, YES, S::None),
    (S::FromPendingOut, YES, S::NonePendingOut),
    (S::Both, YES, S::To),
];

const IN_SUBSCRIBED: [Row; 9] = [
    (S::None, NO, S::None), // no state change
    (S::NonePendingOut, YES, S::To),
    (S::NonePendingIn, NO, S::NonePendingIn), // no state change
    (S::NonePendingOutIn, YES, S::ToPendingIn),
    (S::To, NO, S::To),                   // no state change
    (S::ToPendingIn, NO, S::ToPendingIn), // no state change
    (S::From, NO, S::From),               // no state change
    (S::FromPendingOut, YES, S::Both),
    (S::Both, NO, S::Both), // no state change
];

const IN_UNSUBSCRIBED: [Row; 9] = [
    (S::None, NO, S::None), // no state change
    (S::NonePendingOut, YES, S::None),
    (S::NonePendingIn, NO, S::NonePendingIn), // no state change
    (S::NonePendingOutIn, YES, S::NonePendingIn),
    (S::To, YES, S::None),
    (S::ToPendingIn, YES, S::NonePendingIn),
    (S::From, NO, S::From), // no state change
    (S::FromPendingOut, YES, S::From),
    (S::Both, YES, S::From),
];

fn assert_covers_all_states(rows: &[Row]) {
    let states: Vec<S> = rows.iter().map(|r| r.0).collect();
    assert_eq!(states, S::ALL.to_vec());
}

#[test]
fn bare_outbound_tables_match_appendix_a2() {
    for (action, rows) in [
        (A::Subscribe, &OUT_SUBSCRIBE),
        (A::Unsubscribe, &OUT_UNSUBSCRIBE),
        (A::Subscribed, &OUT_SUBSCRIBED),
        (A::Unsubscribed, &OUT_UNSUBSCRIBED),
    ] {
        assert_covers_all_states(rows);
        for &(before, route, after) in rows {
            assert_eq!(before.after_outbound(action), (after, route), "outbound {action} in {before}");
        }
    }
}

#[test]
fn bare_inbound_tables_match_appendix_a3() {
    for (action, rows) in [
        (A::Subscribe, &IN_SUBSCRIBE),
        (A::Unsubscribe, &IN_UNSUBSCRIBE),
        (A::Subscribed, &IN_SUBSCRIBED),
        (A::Unsubscribed, &IN_UNSUBSCRIBED),
    ] {
        assert_covers_all_states(rows);
        for &(before, deliver, after) in rows {
            assert_eq!(before.after_inbound(action), (after, deliver), "inbound {action} in {before}");
        }
    }
}

/// Roster push expected when `subscription` or `ask` changed (pending-in is
/// not visible to clients).
fn visible_change(before: S, after: S) -> bool {
    before.subscription() != after.subscription() || before.pending_out() != after.pending_out()
}

#[test]
fn outbound_subscribe_rows() {
    for (before, route, after) in OUT_SUBSCRIBE {
        let cur = item(before);
        let out = outbound(Some(&cur), CONTACT, A::Subscribe);
        assert_eq!(
            out,
            OutboundOutcome {
                item: changed(&cur, with_state(&cur, after)),
                roster_push: before != after,
                forward: route,
                send_current_presence: false,
                send_unavailable: false,
            },
            "outbound subscribe in {before}"
        );
    }
}

#[test]
fn outbound_unsubscribe_rows() {
    for (before, route, after) in OUT_UNSUBSCRIBE {
        let cur = item(before);
        let out = outbound(Some(&cur), CONTACT, A::Unsubscribe);
        assert_eq!(
            out,
            OutboundOutcome {
                item: changed(&cur, with_state(&cur, after)),
                roster_push: visible_change(before, after),
                forward: route,
                send_current_presence: false,
                send_unavailable: false,
            },
            "outbound unsubscribe in {before}"
        );
    }
}

#[test]
fn outbound_subscribed_rows() {
    for (before, route, after) in OUT_SUBSCRIBED {
        let cur = item(before);
        let out = outbound(Some(&cur), CONTACT, A::Subscribed);
        // §3.4.2: in "None", "None + Pending Out" and "To" (nothing to approve
        // yet) the stanza is a pre-approval: flag set and pushed, not routed.
        let pre_approval = matches!(before, S::None | S::NonePendingOut | S::To);
        let mut expected = with_state(&cur, after);
        expected.approved = pre_approval;
        assert_eq!(
            out,
            OutboundOutcome {
                item: changed(&cur, expected),
                roster_push: route || pre_approval,
                forward: route,
                send_current_presence: route,
                send_unavailable: false,
            },
            "outbound subscribed in {before}"
        );
    }
}

#[test]
fn outbound_unsubscribed_rows() {
    for (before, route, after) in OUT_UNSUBSCRIBED {
        let cur = item(before);
        let out = outbound(Some(&cur), CONTACT, A::Unsubscribed);
        assert_eq!(
            out,
            OutboundOutcome {
                item: changed(&cur, with_state(&cur, after)),
                roster_push: visible_change(before, after),
                forward: route,
                send_current_presence: false,
                send_unavailable: before.subscription().has_from(),
            },
            "outbound unsubscribed in {before}"
        );
    }
}

#[test]
fn inbound_subscribe_rows() {
    for (before, deliver, after) in IN_SUBSCRIBE {
        let cur = item(before);
        let out = inbound(Some(&cur), CONTACT, A::Subscribe);
        // §3.1.3: the contact already receives the user's presence → the
        // server confirms on the user's behalf instead of delivering.
        let already = before.subscription().has_from();
        assert_eq!(
            out,
            InboundOutcome {
                item: changed(&cur, with_state(&cur, after)),
                roster_push: false, // pending-in is not visible
                deliver,
                auto_reply: already.then_some(A::Subscribed),
                send_current_presence: already,
                send_unavailable: false,
            },
            "inbound subscribe in {before}"
        );
    }
}

#[test]
fn inbound_unsubscribe_rows() {
    for (before, deliver, after) in IN_UNSUBSCRIBE {
        let cur = item(before);
        let out = inbound(Some(&cur), CONTACT, A::Unsubscribe);
        assert_eq!(
            out,
            InboundOutcome {
                item: changed(&cur, with_state(&cur, after)),
                roster_push: visible_change(before, after),
                deliver,
                auto_reply: None,
                send_current_presence: false,
                send_unavailable: before.subscription().has_from(),
            },
            "inbound unsubscribe in {before}"
        );
    }
}

#[test]
fn inbound_subscribed_and_unsubscribed_rows() {
    for (action, rows) in [(A::Subscribed, &IN_SUBSCRIBED), (A::Unsubscribed, &IN_UNSUBSCRIBED)] {
        for &(before, deliver, after) in rows {
            let cur = item(before);
            let out = inbound(Some(&cur), CONTACT, action);
            assert_eq!(
                out,
                InboundOutcome {
                    item: changed(&cur, with_state(&cur, after)),
                    roster_push: visible_change(before, after),
                    deliver,
                    auto_reply: None,
                    send_current_presence: false,
                    send_unavailable: false,
                },
                "inbound {action} in {before}"
            );
        }
    }
}

// ------------------------------------------------------------ no roster row

#[test]
fn outbound_without_item() {
    let out = outbound(None, CONTACT, A::Subscribe);
    assert_eq!(
        out,
        OutboundOutcome {
            item: Some(RosterItem { ask_out: true, ..RosterItem::new(CONTACT) }),
            roster_push: true,
            forward: true,
            send_current_presence: false,
            send_unavailable: false,
        }
    );

    // "None" row: routed anyway, nothing to store.
    let out = outbound(None, CONTACT, A::Unsubscribe);
    assert_eq!(
        out,
        OutboundOutcome {
            item: None,
            roster_push: false,
            forward: true,
            send_current_presence: false,
            send_unavailable: false,
        }
    );

    // Nothing to deny or cancel: ignored.
    let out = outbound(None, CONTACT, A::Unsubscribed);
    assert_eq!(
        out,
        OutboundOutcome {
            item: None,
            roster_push: false,
            forward: false,
            send_current_presence: false,
            send_unavailable: false,
        }
    );
}

#[test]
fn inbound_without_item() {
    // §3.1.3: remember the request without adding the contact to the roster.
    let out = inbound(None, CONTACT, A::Subscribe);
    assert_eq!(
        out,
        InboundOutcome {
            item: Some(RosterItem { jid: CONTACT.into(), pending_in: true, in_roster: false, ..RosterItem::default() }),
            roster_push: false,
            deliver: true,
            auto_reply: None,
            send_current_presence: false,
            send_unavailable: false,
        }
    );
    for action in [A::Subscribed, A::Unsubscribe, A::Unsubscribed] {
        let out = inbound(None, CONTACT, action);
        assert_eq!(
            out,
            InboundOutcome {
                item: None,
                roster_push: false,
                deliver: false,
                auto_reply: None,
                send_current_presence: false,
                send_unavailable: false,
            },
            "inbound {action} without item"
        );
    }
}

// ------------------------------------------------ hidden pending-inbound rows

fn hidden_request() -> RosterItem {
    RosterItem { jid: CONTACT.into(), pending_in: true, in_roster: false, ..RosterItem::default() }
}

#[test]
fn repeated_inbound_subscribe_is_not_redelivered() {
    let out = inbound(Some(&hidden_request()), CONTACT, A::Subscribe);
    assert_eq!(out.item, None);
    assert!(!out.deliver && !out.roster_push && out.auto_reply.is_none());
}

#[test]
fn approving_a_hidden_request_adds_the_contact_to_the_roster() {
    let out = outbound(Some(&hidden_request()), CONTACT, A::Subscribed);
    assert_eq!(
        out,
        OutboundOutcome {
            item: Some(RosterItem { subscription: waddle_im::Subscription::From, ..RosterItem::new(CONTACT) }),
            roster_push: true,
            forward: true,
            send_current_presence: true,
            send_unavailable: false,
        }
    );
}

#[test]
fn subscribing_back_to_a_hidden_requester_adds_it_to_the_roster() {
    let out = outbound(Some(&hidden_request()), CONTACT, A::Subscribe);
    let item = out.item.clone().unwrap_or_default();
    assert_eq!(item.state(), S::NonePendingOutIn);
    assert!(item.in_roster);
    assert!(out.roster_push && out.forward);
}

#[test]
fn denying_a_hidden_request_leaves_a_vacant_row() {
    let out = outbound(Some(&hidden_request()), CONTACT, A::Unsubscribed);
    assert!(out.forward, "the requester must learn about the denial");
    assert!(!out.roster_push && !out.send_unavailable);
    let item = out.item.unwrap_or_default();
    assert_eq!(item.jid, CONTACT);
    assert!(item.is_vacant(), "{item:?}");
}

#[test]
fn withdrawn_hidden_request_leaves_a_vacant_row() {
    let out = inbound(Some(&hidden_request()), CONTACT, A::Unsubscribe);
    assert!(out.deliver && !out.roster_push && !out.send_unavailable);
    let item = out.item.unwrap_or_default();
    assert_eq!(item.jid, CONTACT);
    assert!(item.is_vacant(), "{item:?}");
}

// ------------------------------------------------------------ pre-approval

fn approved(state: S) -> RosterItem {
    RosterItem { approved: true, ..item(state) }
}

#[test]
fn pre_approval_without_item_creates_one() {
    // §3.4.2: not in the roster → create a "None" item with approved='true'.
    let out = outbound(None, CONTACT, A::Subscribed);
    assert_eq!(
        out,
        OutboundOutcome {
            item: Some(RosterItem { approved: true, ..RosterItem::new(CONTACT) }),
            roster_push: true,
            forward: false,
            send_current_presence: false,
            send_unavailable: false,
        }
    );
}

#[test]
fn repeated_pre_approval_changes_nothing() {
    for state in [S::None, S::NonePendingOut, S::To] {
        let out = outbound(Some(&approved(state)), CONTACT, A::Subscribed);
        assert_eq!(out.item, None, "{state}");
        assert!(!out.roster_push && !out.forward, "{state}");
    }
}

#[test]
fn pre_approved_inbound_subscribe_is_auto_approved() {
    for (before, after) in [(S::None, S::From), (S::NonePendingOut, S::FromPendingOut), (S::To, S::Both)] {
        let cur = approved(before);
        let out = inbound(Some(&cur), CONTACT, A::Subscribe);
        let mut expected = with_state(&cur, after);
        expected.approved = false; // consumed
        assert_eq!(
            out,
            InboundOutcome {
                item: Some(expected),
                roster_push: true,
                deliver: false,
                auto_reply: Some(A::Subscribed),
                send_current_presence: true,
                send_unavailable: false,
            },
            "pre-approved inbound subscribe in {before}"
        );
    }
}

#[test]
fn approving_a_request_clears_a_stale_pre_approval() {
    // Inconsistent row (approved and pending in): treated as a normal approval.
    let cur = approved(S::NonePendingIn);
    let out = outbound(Some(&cur), CONTACT, A::Subscribed);
    let item = out.item.unwrap_or_default();
    assert_eq!(item.state(), S::From);
    assert!(!item.approved);
    assert!(out.forward && out.send_current_presence);
}

#[test]
fn unsubscribed_cancels_a_pre_approval_without_routing() {
    for state in [S::None, S::NonePendingOut, S::To] {
        let cur = approved(state);
        let out = outbound(Some(&cur), CONTACT, A::Unsubscribed);
        assert_eq!(
            out,
            OutboundOutcome {
                item: Some(item(state)),
                roster_push: true,
                forward: false,
                send_current_presence: false,
                send_unavailable: false,
            },
            "cancel pre-approval in {state}"
        );
    }
}

#[test]
fn pre_approval_survives_unrelated_stanzas() {
    let cur = approved(S::None);
    // The user subscribing to the contact keeps the pre-approval.
    let out = outbound(Some(&cur), CONTACT, A::Subscribe);
    assert!(out.item.is_some_and(|i| i.approved && i.ask_out));
    // An unsubscribe from the contact changes nothing.
    let out = inbound(Some(&cur), CONTACT, A::Unsubscribe);
    assert_eq!(out.item, None);
    assert!(!out.deliver);
}

#[test]
fn outcomes_never_carry_undefined_states() {
    for action in [A::Subscribe, A::Subscribed, A::Unsubscribe, A::Unsubscribed] {
        for state in S::ALL {
            for pre in [false, true] {
                let cur = RosterItem { approved: pre, ..item(state) };
                for new in [outbound(Some(&cur), CONTACT, action).item, inbound(Some(&cur), CONTACT, action).item]
                    .into_iter()
                    .flatten()
                {
                    let norm = with_state(&new, new.state());
                    assert_eq!(new, norm, "{action} in {state} (approved={pre})");
                    assert!(
                        !(new.approved && new.subscription.has_from()),
                        "pre-approval kept next to from/both: {new:?}"
                    );
                    assert_eq!(new.jid, CONTACT);
                    assert_eq!(new.name.as_deref(), Some("Juliet"));
                }
            }
        }
    }
}
