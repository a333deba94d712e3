//! RFC 6121 for local accounts: rosters, subscription handshakes, presence broadcast and
//! probes, offline messages. The state tables are in `waddle_im`; this module reads and
//! writes storage and sends what those tables decide.

use std::collections::HashSet;

use time::format_description::well_known::Rfc3339;
use waddle_c2s::ns;
use waddle_c2s::stanza::{error_reply, iq_result, iq_result_with};
use waddle_im::{RosterItem, Subscription, SubscriptionAction};
use waddle_jid::{BareJid, Jid};
use waddle_storage::RosterRow;
use waddle_xml::{Element, Limits, StreamEvent, StreamParser};

use crate::ctx::Ctx;
use crate::router::Origin;

pub fn subscription_action(stanza: &Element) -> Option<SubscriptionAction> {
    match stanza.attr("type")? {
        "subscribe" => Some(SubscriptionAction::Subscribe),
        "subscribed" => Some(SubscriptionAction::Subscribed),
        "unsubscribe" => Some(SubscriptionAction::Unsubscribe),
        "unsubscribed" => Some(SubscriptionAction::Unsubscribed),
        _ => None,
    }
}

pub fn is_subscription(stanza: &Element) -> bool {
    subscription_action(stanza).is_some()
}

fn action_name(action: SubscriptionAction) -> &'static str {
    match action {
        SubscriptionAction::Subscribe => "subscribe",
        SubscriptionAction::Subscribed => "subscribed",
        SubscriptionAction::Unsubscribe => "unsubscribe",
        SubscriptionAction::Unsubscribed => "unsubscribed",
    }
}

pub fn item_from_row(row: RosterRow) -> RosterItem {
    RosterItem {
        subscription: Subscription::parse(&row.subscription).unwrap_or_default(),
        jid: row.contact,
        name: row.name,
        groups: row.groups,
        ask_out: row.ask_out,
        pending_in: row.pending_in,
        approved: row.approved,
        in_roster: row.in_roster,
    }
}

pub fn row_from_item(item: &RosterItem) -> RosterRow {
    RosterRow {
        contact: item.jid.clone(),
        name: item.name.clone(),
        groups: item.groups.clone(),
        subscription: item.subscription.as_str().to_owned(),
        ask_out: item.ask_out,
        pending_in: item.pending_in,
        approved: item.approved,
        in_roster: item.in_roster,
    }
}

pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        el.set_attr("name", name.as_str());
    }
    if item.ask_out {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.append_child(Element::new("group", ns::ROSTER).with_text(g.as_str()));
    }
    el
}

/// Sends a roster push of `item` to every session of `username` that asked for the
/// roster (RFC 6121 §2.1.6).
pub fn push(ctx: &Ctx, username: &str, item: Element, version: u64) {
    let bare = ctx.bare_jid(username);
    for s in ctx.sessions_of(&bare).into_iter().filter(|s| s.roster_interested) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", ctx.next_id("push"))
            .with_attr("to", format!("{bare}/{}", s.resource))
            .with_child(
                Element::new("query", ns::ROSTER).with_attr("ver", version.to_string()).with_child(item.clone()),
            );
        let _ = ctx.cluster.deliver(s.addr, waddle_cluster::SessionMsg::Deliver(std::sync::Arc::new(iq)));
    }
}

fn local_username<'a>(ctx: &Ctx, bare: &'a BareJid) -> Option<&'a str> {
    (bare.domain().as_str() == ctx.domain).then(|| bare.node().map(|n| n.as_str())).flatten()
}

/// `jabber:iq:roster` get (RFC 6121 §2.1.3, versioning §2.6).
pub async fn roster_get(ctx: &Ctx, origin: &Origin, iq: &Element, query: &Element) -> Element {
    let bare = origin.bare();
    let Some(username) = local_username(ctx, &bare) else {
        return error_or_result(iq, "forbidden");
    };
    if let (Some(full), Some(conn_id)) = (origin.full(), origin.conn_id) {
        if let Some(shard) = ctx.local_shard(bare.as_str()) {
            shard.update(full.resource().as_str(), conn_id, |e| e.roster_interested = true);
        }
    }
    let (version, rows) = match ctx.users().roster(username).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed");
            return error_or_result(iq, "internal-server-error");
        }
    };
    if query.attr("ver") == Some(version.to_string().as_str()) {
        // Unchanged since the client's cached version: empty result (RFC 6121 §2.6.3).
        return iq_result(iq);
    }
    let mut result = Element::new("query", ns::ROSTER).with_attr("ver", version.to_string());
    for row in rows.into_iter().filter(|r| r.in_roster) {
        result.append_child(item_element(&item_from_row(row)));
    }
    iq_result_with(iq, result)
}

fn error_or_result(iq: &Element, condition: &str) -> Element {
    error_reply(iq, condition, None).unwrap_or_else(|| iq_result(iq))
}

/// `jabber:iq:roster` set: add/update (§2.3) or remove (§2.5).
pub async fn roster_set(ctx: &Ctx, origin: &Origin, iq: &Element, query: &Element) -> Element {
    let bare = origin.bare();
    let Some(username) = local_username(ctx, &bare).map(str::to_owned) else {
        return error_or_result(iq, "forbidden");
    };
    let mut items = query.children().filter(|c| c.is("item", ns::ROSTER));
    let (Some(item_el), None) = (items.next(), items.next()) else {
        return error_or_result(iq, "bad-request");
    };
    let Some(contact) = item_el.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
        return error_or_result(iq, "bad-request");
    };
    let contact = contact.as_str().to_owned();
    if item_el.attr("subscription") == Some("remove") {
        return roster_remove(ctx, origin, iq, &username, &contact).await;
    }
    let name = item_el.attr("name").filter(|n| !n.is_empty()).map(str::to_owned);
    let groups: Vec<String> = item_el.children().filter(|g| g.is("group", ns::ROSTER)).map(Element::text).collect();
    let guard = ctx.lock_roster(&username).await;
    let current = match ctx.users().roster_item(&username, &contact).await {
        Ok(r) => r.map(item_from_row),
        Err(e) => {
            tracing::error!(error = %e, "roster read failed");
            return error_or_result(iq, "internal-server-error");
        }
    };
    let item = match waddle_im::roster_set(current.as_ref(), &contact, name, groups) {
        Ok(item) => item,
        Err(e) => return error_or_result(iq, e.condition()),
    };
    let version = match ctx.users().roster_upsert(&username, &row_from_item(&item)).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "roster write failed");
            return error_or_result(iq, "internal-server-error");
        }
    };
    drop(guard);
    push(ctx, &username, item_element(&item), version);
    iq_result(iq)
}

async fn roster_remove(ctx: &Ctx, origin: &Origin, iq: &Element, username: &str, contact: &str) -> Element {
    let guard = ctx.lock_roster(username).await;
    let current = match ctx.users().roster_item(username, contact).await {
        Ok(Some(row)) if row.in_roster || row.subscription != "none" => item_from_row(row),
        Ok(_) => return error_or_result(iq, "item-not-found"),
        Err(e) => {
            tracing::error!(error = %e, "roster read failed");
            return error_or_result(iq, "internal-server-error");
        }
    };
    let outcome = waddle_im::roster_remove(&current);
    let version = match ctx.users().roster_remove(username, contact).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "roster write failed");
            return error_or_result(iq, "internal-server-error");
        }
    };
    drop(guard);
    let removed = Element::new("item", ns::ROSTER).with_attr("jid", contact).with_attr("subscription", "remove");
    push(ctx, username, removed, version);
    let user_bare = ctx.bare_jid(username);
    let from_origin = Origin { jid: origin.bare().into(), conn_id: None };
    if current.subscription.has_from() {
        Box::pin(send_unavailable_from_all(ctx, &origin.bare(), contact)).await;
    }
    for (send, action) in [
        (outcome.send_unsubscribe, SubscriptionAction::Unsubscribe),
        (outcome.send_unsubscribed, SubscriptionAction::Unsubscribed),
    ] {
        if send {
            let p = subscription_presence(&user_bare, contact, action);
            // Boxed: routing can lead back here (server IQ handling is behind the seam).
            Box::pin(ctx.route(&from_origin, p)).await;
        }
    }
    iq_result(iq)
}

fn subscription_presence(from: &str, to: &str, action: SubscriptionAction) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", action_name(action))
}

async fn send_unavailable_from_all(ctx: &Ctx, user: &BareJid, contact: &str) {
    let origin = Origin { jid: user.clone().into(), conn_id: None };
    for s in ctx.sessions_of(user.as_str()).into_iter().filter(|s| s.available) {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("from", format!("{user}/{}", s.resource))
            .with_attr("to", contact)
            .with_attr("type", "unavailable");
        ctx.route(&origin, p).await;
    }
}

/// Sends each available presence of `user` to `to` (after `subscribed`, RFC 6121 §3.1.5).
async fn send_current_presence(ctx: &Ctx, user: &BareJid, to: &str) {
    // Presence carries its full `from`; the origin only matters for replies, which
    // presence never gets.
    let origin = Origin { jid: user.clone().into(), conn_id: None };
    for s in ctx.sessions_of(user.as_str()) {
        if let (true, Some(p)) = (s.available, s.presence.as_deref()) {
            let mut copy = p.clone();
            copy.set_attr("to", to);
            ctx.route(&origin, copy).await;
        }
    }
}

/// A subscription stanza sent by the user (RFC 6121 §3, outbound side).
pub async fn outbound_subscription(ctx: &Ctx, origin: &Origin, mut stanza: Element) {
    let Some(action) = subscription_action(&stanza) else { return };
    let Some(contact) = stanza.attr("to").and_then(|t| Jid::new(t).ok()).map(|j| j.to_bare()) else {
        return;
    };
    let user_bare = origin.bare();
    let Some(username) = local_username(ctx, &user_bare).map(str::to_owned) else {
        return;
    };
    let contact_s = contact.as_str().to_owned();
    let Some(outcome) =
        transition(ctx, &username, &contact_s, |current| waddle_im::outbound(current, &contact_s, action)).await
    else {
        return;
    };
    if outcome.forward {
        // Subscription stanzas are stamped with the bare JID (RFC 6121 §3.1.2).
        stanza.set_attr("from", user_bare.as_str());
        stanza.set_attr("to", contact_s.as_str());
        let bare_origin = Origin { jid: user_bare.clone().into(), conn_id: None };
        ctx.route(&bare_origin, stanza).await;
    }
    if outcome.send_current_presence {
        send_current_presence(ctx, &user_bare, &contact_s).await;
    }
    if outcome.send_unavailable {
        send_unavailable_from_all(ctx, &user_bare, &contact_s).await;
    }
}

/// A presence stanza addressed to a local account's bare JID.
pub async fn presence_to_account(ctx: &Ctx, origin: &Origin, to: &BareJid, stanza: Element) {
    if let Some(action) = subscription_action(&stanza) {
        Box::pin(inbound_subscription(ctx, &origin.bare(), to, action, stanza)).await;
        return;
    }
    match stanza.attr("type") {
        Some("probe") => answer_probe(ctx, origin, to).await,
        // available, unavailable and errors go to every available resource (§4.3, §4.5).
        _ => {
            ctx.deliver_to_available(to.as_str(), stanza);
        }
    }
}

/// The contact's side of a subscription stanza (RFC 6121 §3, inbound side).
async fn inbound_subscription(
    ctx: &Ctx,
    from: &BareJid,
    to: &BareJid,
    action: SubscriptionAction,
    mut stanza: Element,
) {
    let Some(username) = local_username(ctx, to).map(str::to_owned) else {
        return;
    };
    let from_s = from.as_str().to_owned();
    let exists = ctx.users().account_exists(&username).await.unwrap_or(false);
    if !exists {
        // No such account: refuse a subscription request (RFC 6121 §3.1.3 rule 1).
        if action == SubscriptionAction::Subscribe {
            let reply = subscription_presence(to.as_str(), &from_s, SubscriptionAction::Unsubscribed);
            let origin = Origin { jid: to.clone().into(), conn_id: None };
            Box::pin(ctx.route(&origin, reply)).await;
        }
        return;
    }
    let Some(outcome) =
        transition(ctx, &username, &from_s, |current| waddle_im::inbound(current, &from_s, action)).await
    else {
        return;
    };
    if outcome.deliver {
        stanza.set_attr("from", from_s.as_str());
        stanza.set_attr("to", to.as_str());
        // An undelivered 'subscribe' stays stored as pending_in and is re-sent at login.
        ctx.deliver_to_available(to.as_str(), stanza);
    }
    let user_origin = Origin { jid: to.clone().into(), conn_id: None };
    if let Some(reply) = outcome.auto_reply {
        let p = subscription_presence(to.as_str(), &from_s, reply);
        Box::pin(ctx.route(&user_origin, p)).await;
    }
    if outcome.send_current_presence {
        Box::pin(send_current_presence(ctx, to, &from_s)).await;
    }
    if outcome.send_unavailable {
        Box::pin(send_unavailable_from_all(ctx, to, &from_s)).await;
    }
}

/// The roster part of a subscription outcome from `waddle_im`.
trait RowOutcome {
    fn item(&self) -> Option<&RosterItem>;
    fn roster_push(&self) -> bool;
}

impl RowOutcome for waddle_im::OutboundOutcome {
    fn item(&self) -> Option<&RosterItem> {
        self.item.as_ref()
    }
    fn roster_push(&self) -> bool {
        self.roster_push
    }
}

impl RowOutcome for waddle_im::InboundOutcome {
    fn item(&self) -> Option<&RosterItem> {
        self.item.as_ref()
    }
    fn roster_push(&self) -> bool {
        self.roster_push
    }
}

/// Read-modify-write of one roster row under the user's roster lock: `decide` computes
/// the outcome from the current row, the new row is stored (deleted when nothing is left
/// of it) and pushed to interested resources. `None` when storage failed.
async fn transition<O: RowOutcome>(
    ctx: &Ctx,
    username: &str,
    contact: &str,
    decide: impl FnOnce(Option<&RosterItem>) -> O,
) -> Option<O> {
    let guard = ctx.lock_roster(username).await;
    let current = ctx
        .store
        .roster_item(username, contact)
        .await
        .map_err(|e| tracing::error!(error = %e, "roster read failed"))
        .ok()?
        .map(item_from_row);
    let outcome = decide(current.as_ref());
    let Some(item) = outcome.item() else {
        return Some(outcome);
    };
    let stored = if item.is_vacant() {
        ctx.users().roster_remove(username, &item.jid).await
    } else {
        ctx.users().roster_upsert(username, &row_from_item(item)).await
    };
    let version = stored.map_err(|e| tracing::error!(error = %e, "roster write failed")).ok()?;
    drop(guard);
    if outcome.roster_push() && item.in_roster {
        push(ctx, username, item_element(item), version);
    }
    Some(outcome)
}

async fn answer_probe(ctx: &Ctx, prober: &Origin, user: &BareJid) {
    let Some(username) = local_username(ctx, user) else { return };
    let prober_bare = prober.bare();
    let allowed = prober_bare == *user
        || matches!(
            ctx.users().roster_item(username, prober_bare.as_str()).await,
            Ok(Some(row)) if Subscription::parse(&row.subscription).is_some_and(Subscription::has_from)
        );
    if !allowed {
        return;
    }
    let to = prober.jid.as_str().to_owned();
    let mut any = false;
    for s in ctx.sessions_of(user.as_str()) {
        if let (true, Some(p)) = (s.available, s.presence.as_deref()) {
            let mut copy = p.clone();
            copy.set_attr("to", to.as_str());
            any = true;
            ctx.emit(copy).await;
        }
    }
    if !any && prober_bare != *user {
        let unavailable = Element::new("presence", ns::CLIENT)
            .with_attr("from", user.as_str())
            .with_attr("to", to.as_str())
            .with_attr("type", "unavailable");
        ctx.emit(unavailable).await;
    }
}

/// Broadcast of the session's presence (no `to`): to contacts with a `from`
/// subscription, the user's other available resources and, for unavailable, to every JID
/// that got directed presence (RFC 6121 §4.2, §4.4, §4.6).
pub async fn broadcast(ctx: &Ctx, origin: &Origin, presence: &Element, directed: &HashSet<String>) {
    let bare = origin.bare();
    let Some(username) = local_username(ctx, &bare) else { return };
    let rows = match ctx.users().roster(username).await {
        Ok((_, rows)) => rows,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed");
            return;
        }
    };
    let mut sent: HashSet<String> = HashSet::new();
    for row in rows {
        if Subscription::parse(&row.subscription).is_some_and(Subscription::has_from) {
            let mut p = presence.clone();
            p.set_attr("to", row.contact.as_str());
            sent.insert(row.contact.clone());
            // Boxed: the session's stanza future holds this one inline, so an inline
            // routing future would double its size for every stanza (see `session::handle_stanza`).
            Box::pin(ctx.route(origin, p)).await;
        }
    }
    // RFC 6121 §4.2.2, §4.4.2, §4.5.2: every available resource of the user gets it,
    // the one that sent it included (clients wait for their own presence to see
    // themselves online); the sender is no longer marked available once it has sent
    // unavailable, so it is named here. A session that replaced the sender under the
    // same resource is not the sender and gets nothing from it.
    let own_resource = origin.full().map(|f| f.resource().as_str());
    for s in ctx.sessions_of(bare.as_str()) {
        let is_sender = Some(s.resource.as_str()) == own_resource;
        if (is_sender && origin.conn_id == Some(s.addr.conn_id)) || (!is_sender && s.available) {
            let mut p = presence.clone();
            p.set_attr("to", format!("{bare}/{}", s.resource));
            ctx.emit(p).await;
        }
    }
    if presence.attr("type") == Some("unavailable") {
        for target in directed.iter().filter(|t| !sent.contains(*t)) {
            let mut p = presence.clone();
            p.set_attr("to", target.as_str());
            Box::pin(ctx.route(origin, p)).await;
        }
    }
}

/// What a session receives right after its initial presence: contacts' presence (via
/// probes), other own resources, pending subscription requests and offline messages.
///
/// Returns the offline messages it took from storage (when `take_offline`), oldest
/// first, for the session to deliver at the pace its client reads.
pub async fn after_initial_presence(ctx: &Ctx, origin: &Origin, take_offline: bool) -> Vec<String> {
    let bare = origin.bare();
    let Some(username) = local_username(ctx, &bare).map(str::to_owned) else {
        return Vec::new();
    };
    let Some(full) = origin.full().cloned() else { return Vec::new() };
    let rows = ctx.users().roster(&username).await.map(|(_, r)| r).unwrap_or_default();
    for row in &rows {
        if Subscription::parse(&row.subscription).is_some_and(Subscription::has_to) {
            let probe = Element::new("presence", ns::CLIENT)
                .with_attr("type", "probe")
                .with_attr("from", full.as_str())
                .with_attr("to", row.contact.as_str());
            ctx.route(origin, probe).await;
        }
    }
    for s in ctx.sessions_of(bare.as_str()) {
        if s.resource != full.resource().as_str() && s.available {
            if let Some(p) = s.presence.as_deref() {
                let mut copy = p.clone();
                copy.set_attr("to", full.as_str());
                ctx.emit(copy).await;
            }
        }
    }
    for row in rows.iter().filter(|r| r.pending_in) {
        let p = subscription_presence(&row.contact, full.as_str(), SubscriptionAction::Subscribe);
        ctx.emit(p).await;
    }
    if !take_offline {
        return Vec::new();
    }
    match ctx.users().offline_take(&username).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "offline read failed");
            Vec::new()
        }
    }
}

/// Puts offline messages a session could not deliver back into storage, in order.
pub async fn restore_offline(ctx: &Ctx, username: &str, stored: impl IntoIterator<Item = String>) {
    for xml in stored {
        match ctx.users().offline_push(username, &xml, ctx.config.limits.offline_max_per_user).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(user = username, "offline storage full; an undelivered message was dropped"),
            Err(e) => tracing::error!(error = %e, "offline write failed"),
        }
    }
}

/// Stores a message for later delivery (XEP-0160), stamped with XEP-0203 delay.
pub async fn store_offline(ctx: &Ctx, to: &BareJid, mut stanza: Element) {
    let Some(username) = local_username(ctx, to).map(str::to_owned) else {
        return;
    };
    let stamp = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    stanza.append_child(
        Element::new("delay", ns::DELAY).with_attr("from", ctx.domain.as_str()).with_attr("stamp", stamp),
    );
    let xml = String::from_utf8_lossy(&stanza.to_bytes(ns::CLIENT)).into_owned();
    match ctx.users().offline_push(&username, &xml, ctx.config.limits.offline_max_per_user).await {
        Ok(true) => {}
        Ok(false) => ctx.bounce(&stanza, "service-unavailable").await,
        Err(e) => {
            tracing::error!(error = %e, "offline write failed");
            ctx.bounce(&stanza, "internal-server-error").await;
        }
    }
}

/// Parses one stanza serialised by [`store_offline`].
pub fn parse_stored_stanza(xml: &str) -> Option<Element> {
    let mut parser = StreamParser::new(Limits { max_stanza_bytes: xml.len() + 1024, ..Limits::default() });
    parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").ok()?;
    parser.feed(xml.as_bytes()).ok()?;
    match (parser.next_event().ok()?, parser.next_event().ok()?) {
        (Some(StreamEvent::Header(_)), Some(StreamEvent::Stanza(el))) => Some(el),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_stanzas_round_trip() {
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("to", "bob@example.org")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi <there> & bye"))
            .with_child(Element::new("delay", ns::DELAY).with_attr("stamp", "2026-01-01T00:00:00Z"));
        let xml = String::from_utf8_lossy(&msg.to_bytes(ns::CLIENT)).into_owned();
        assert_eq!(parse_stored_stanza(&xml), Some(msg));
    }

    #[test]
    fn roster_item_element_carries_state() {
        let item = RosterItem {
            jid: "bob@example.org".into(),
            name: Some("Bob".into()),
            groups: vec!["Friends".into()],
            subscription: Subscription::To,
            ask_out: true,
            ..RosterItem::default()
        };
        let el = item_element(&item);
        assert_eq!(el.attr("subscription"), Some("to"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Bob"));
        assert_eq!(el.children().map(Element::text).collect::<Vec<_>>(), vec!["Friends"]);
        assert_eq!(item_from_row(row_from_item(&item)), item);
    }
}
