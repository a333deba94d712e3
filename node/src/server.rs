//! Stanzas addressed to the server itself, and IQs the server answers on behalf of an
//! account (RFC 6121 §8.5.1): service discovery, ping, roster, vCard, registration,
//! XEP-0280 carbons.

use waddle_api::Accounts as _;
use waddle_c2s::ns;
use waddle_c2s::stanza::{error_reply, iq_payload, iq_result, iq_result_with, StanzaKind};
use waddle_cluster::SessionMsg;
use waddle_jid::BareJid;
use waddle_xml::Element;

use crate::ctx::Ctx;
use crate::im;
use crate::router::Origin;

pub async fn handle(ctx: &Ctx, origin: &Origin, kind: StanzaKind, stanza: Element) {
    // Messages and presence addressed to the bare domain have no recipient to reach.
    if kind != StanzaKind::Iq {
        return;
    }
    if let Some(reply) = server_iq(ctx, origin, &stanza).await {
        ctx.emit(reply).await;
    }
}

fn error(iq: &Element, condition: &str) -> Option<Element> {
    error_reply(iq, condition, None)
}

fn error_with_text(iq: &Element, condition: &str, text: &str) -> Option<Element> {
    error_reply(iq, condition, Some(text))
}

async fn server_iq(ctx: &Ctx, origin: &Origin, iq: &Element) -> Option<Element> {
    let iq_type = iq.attr("type").unwrap_or("");
    if !matches!(iq_type, "get" | "set") {
        // Results and errors addressed to the server (e.g. ping answers) end here.
        return None;
    }
    let Some(payload) = iq_payload(iq) else {
        return error(iq, "bad-request");
    };
    let to_own_account = iq.attr("to").and_then(|t| waddle_jid::Jid::new(t).ok()).is_some_and(|j| j.node().is_some());
    match (iq_type, payload.ns(), payload.name()) {
        ("get", ns::DISCO_INFO, "query") if to_own_account => Some(account_info(ctx, iq, payload)),
        ("get", ns::DISCO_INFO, "query") => Some(server_info(ctx, iq, payload)),
        ("get", ns::DISCO_ITEMS, "query") => {
            let mut items = Element::new("query", ns::DISCO_ITEMS).with_attr_opt("node", payload.attr("node"));
            if !to_own_account && payload.attr("node").is_none() {
                // The server's items are its services (XEP-0045 §6.1: clients find the MUC
                // service here).
                items.append_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", ctx.muc.domain.as_str())
                        .with_attr("name", "Channels and chat rooms"),
                );
            }
            Some(iq_result_with(iq, items))
        }
        ("get", ns::PING, "ping") => Some(iq_result(iq)),
        ("set", crate::carbons::NS_CARBONS, "enable") => Some(crate::carbons::set_enabled(ctx, origin, iq, true)),
        ("set", crate::carbons::NS_CARBONS, "disable") => Some(crate::carbons::set_enabled(ctx, origin, iq, false)),
        ("get", ns::ROSTER, "query") => Some(im::roster_get(ctx, origin, iq, payload).await),
        ("set", ns::ROSTER, "query") => Some(im::roster_set(ctx, origin, iq, payload).await),
        ("get", ns::VCARD, "vCard") => Some(vcard_get(ctx, iq, &origin.bare()).await),
        ("set", ns::VCARD, "vCard") => Some(vcard_set(ctx, origin, iq, payload).await),
        ("get", ns::REGISTER, "query") => Some(registration_info(iq, &origin.bare())),
        ("get" | "set", crate::muc::NS_MAM, "query") => {
            // The user's own archive (XEP-0313 §4): answered from a task, results stream back.
            let own = origin.bare().as_str().to_owned();
            if let Some(ctx) = ctx.arc() {
                let iq = iq.clone();
                tokio::spawn(async move {
                    if let Some(replication) = ctx.replication() {
                        // What was acknowledged is committed: read once this node serves
                        // the partition (it may have just taken it over) and applied it.
                        let partition = waddle_cluster::partition_of(&own);
                        if !replication.ready(partition, std::time::Duration::from_secs(10)).await {
                            tracing::warn!(partition, "archive query before the partition is ready here");
                        }
                    }
                    crate::mam::answer_query(&ctx, waddle_mam::ArchiveLocation::Users, &own, &own, iq).await;
                });
            }
            None
        }
        ("set", ns::REGISTER, "query") => registration_set(ctx, origin, iq, payload).await,
        _ => error(iq, "service-unavailable"),
    }
}

/// IQs to another local account's bare JID.
pub async fn iq_on_behalf_of(ctx: &Ctx, origin: &Origin, account: &BareJid, iq: Element) {
    let reply = match (iq.attr("type"), iq_payload(&iq).map(|p| (p.ns(), p.name()))) {
        (Some("get"), Some((ns::DISCO_INFO, "query"))) => iq_payload(&iq).map(|p| account_info(ctx, &iq, p)),
        (Some("get"), Some((ns::VCARD, "vCard"))) => Some(vcard_get(ctx, &iq, account).await),
        (Some("get"), Some((ns::PING, "ping"))) => Some(iq_result(&iq)),
        (Some("get" | "set"), _) => error(&iq, "service-unavailable"),
        _ => None,
    };
    let _ = origin;
    if let Some(reply) = reply {
        ctx.emit(reply).await;
    }
}

trait WithAttrOpt {
    fn with_attr_opt(self, name: &str, value: Option<&str>) -> Self;
}

impl WithAttrOpt for Element {
    fn with_attr_opt(self, name: &str, value: Option<&str>) -> Element {
        match value {
            Some(v) => self.with_attr(name, v),
            None => self,
        }
    }
}

fn server_info(ctx: &Ctx, iq: &Element, query: &Element) -> Element {
    let mut result = Element::new("query", ns::DISCO_INFO).with_attr_opt("node", query.attr("node"));
    result.append_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "waddle"),
    );
    let mut features = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::ROSTER,
        ns::VCARD,
        ns::MSG_OFFLINE,
        ns::DELAY,
        crate::muc::NS_MAM,
        crate::mam::NS_SID,
        crate::carbons::NS_CARBONS,
        "urn:xmpp:features:rosterver",
        "urn:xmpp:features:pre-approval",
    ];
    if ctx.config.auth.in_band_registration {
        features.push(ns::REGISTER);
    }
    for f in features {
        result.append_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
    }
    iq_result_with(iq, result)
}

/// disco#info of an account's bare JID: the account identity, and the user archive
/// (XEP-0313 §6: a server that archives for the user advertises it on the bare JID).
fn account_info(ctx: &Ctx, iq: &Element, query: &Element) -> Element {
    let mut result = Element::new("query", ns::DISCO_INFO)
        .with_attr_opt("node", query.attr("node"))
        .with_child(
            Element::new("identity", ns::DISCO_INFO).with_attr("category", "account").with_attr("type", "registered"),
        )
        .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO));
    if ctx.config.archive.enabled && query.attr("node").is_none() {
        result.append_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", crate::muc::NS_MAM));
    }
    iq_result_with(iq, result)
}

async fn vcard_get(ctx: &Ctx, iq: &Element, account: &BareJid) -> Element {
    let Some(node) = account.node() else {
        return error(iq, "item-not-found").unwrap_or_else(|| iq_result(iq));
    };
    let stored = match ctx.users().vcard_get(node.as_str()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "vcard read failed");
            return error(iq, "internal-server-error").unwrap_or_else(|| iq_result(iq));
        }
    };
    let vcard = stored.as_deref().and_then(im::parse_stored_stanza).unwrap_or_else(|| Element::new("vCard", ns::VCARD));
    iq_result_with(iq, vcard)
}

async fn vcard_set(ctx: &Ctx, origin: &Origin, iq: &Element, vcard: &Element) -> Element {
    if iq.attr("to").is_some_and(|to| to != origin.bare().as_str()) {
        return error(iq, "forbidden").unwrap_or_else(|| iq_result(iq));
    }
    let Some(node) = origin.bare().node().map(|n| n.as_str().to_owned()) else {
        return error(iq, "forbidden").unwrap_or_else(|| iq_result(iq));
    };
    let xml = String::from_utf8_lossy(&vcard.to_bytes(ns::CLIENT)).into_owned();
    match ctx.users().vcard_set(&node, &xml).await {
        Ok(()) => iq_result(iq),
        Err(e) => {
            tracing::error!(error = %e, "vcard write failed");
            error(iq, "internal-server-error").unwrap_or_else(|| iq_result(iq))
        }
    }
}

fn registration_info(iq: &Element, account: &BareJid) -> Element {
    let username = account.node().map(|n| n.as_str()).unwrap_or_default();
    iq_result_with(
        iq,
        Element::new("query", ns::REGISTER)
            .with_child(Element::new("registered", ns::REGISTER))
            .with_child(Element::new("username", ns::REGISTER).with_text(username)),
    )
}

/// XEP-0077 after authentication: `<remove/>` cancels the account. Password changes
/// are not offered here (use the HTTP API), so they are refused as not allowed.
async fn registration_set(ctx: &Ctx, origin: &Origin, iq: &Element, query: &Element) -> Option<Element> {
    if !query.has_child("remove", ns::REGISTER) {
        return error(iq, "not-allowed");
    }
    let bare = origin.bare();
    let username = bare.node()?.as_str().to_owned();
    if !ctx.permissions.lookup_objects("waddle", "owner", &username).is_empty() {
        return error_with_text(iq, "not-allowed", "delete or hand over the waddles you own first");
    }
    // Roles go first: a later account with the same name must not inherit them.
    if let Err(e) = ctx.permissions.remove_user(&username).await {
        tracing::error!(error = %e, "removing the account's permissions failed");
        return error(iq, "internal-server-error");
    }
    if let Err(e) = ctx.accounts().delete_account(&username).await {
        tracing::error!(error = %e, "account removal failed");
        return error(iq, "internal-server-error");
    }
    ctx.emit(iq_result(iq)).await;
    tracing::info!(user = %username, "account removed by its owner");
    for s in ctx.local_shard(bare.as_str()).map(|shard| shard.sessions()).unwrap_or_default() {
        let _ = ctx.cluster.deliver(s.addr, SessionMsg::Close(Some("not-authorized")));
    }
    None
}
