//! `waddle-im`: the I/O-free instant-messaging rules of RFC 6121 (XMPP IM).
//!
//! This crate owns the *decisions* a server has to make for:
//!
//! * **Rosters** (RFC 6121 §2): the [`RosterItem`] model, validation of a
//!   roster set ([`roster_set`]) and the subscription side effects of a roster
//!   remove ([`roster_remove`]).
//! * **Presence subscriptions** (RFC 6121 §3 and Appendix A): the nine defined
//!   subscription states ([`SubscriptionState`]), the state machine for
//!   outbound ([`outbound`]) and inbound ([`inbound`]) `subscribe`,
//!   `subscribed`, `unsubscribe` and `unsubscribed` stanzas, including the
//!   "no state change" rows, server auto-replies and subscription
//!   pre-approval (§3.4).
//! * **Presence priority** parsing (RFC 6121 §4.7.2.3, [`parse_priority`]).
//! * **Message delivery** to local users (RFC 6121 §8.5, [`deliver_to_bare`]
//!   and [`deliver_to_missing_full`]).
//! * **Message Carbons** (XEP-0280, [`carbons`]): which messages are copied to a
//!   user's other resources and which resources get the copies.
//!
//! It never performs I/O (no storage, no routing, no clock) and never touches
//! XML: every input and output is a plain enum, boolean or string. The caller
//! (the c2s/s2s layers) translates stanzas into these values, persists the
//! returned [`RosterItem`]s, and performs the sends each outcome asks for.
//!
//! # Perspective
//!
//! Following RFC 6121 terminology, the functions always reason about "the
//! user" (the local account whose roster row is passed in) and "the contact"
//! (the bare JID at the other end). [`outbound`] is run by the *sender's*
//! server on a stanza the user sent; [`inbound`] is run by the *recipient's*
//! server on a stanza addressed to the user.

#![warn(missing_docs)]

pub mod carbons;
mod delivery;
mod presence;
mod roster;
mod subscription;

pub use delivery::{deliver_to_bare, deliver_to_missing_full, MessageDelivery, MessageType, SessionView};
pub use presence::parse_priority;
pub use roster::{
    roster_remove, roster_set, RemoveOutcome, RosterError, RosterItem, Subscription, MAX_GROUP_BYTES, MAX_NAME_BYTES,
};
pub use subscription::{inbound, outbound, InboundOutcome, OutboundOutcome, SubscriptionAction, SubscriptionState};
