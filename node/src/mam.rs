//! XEP-0313 glue: answering archive queries (rooms and personal archives) and archiving
//! 1:1 chat messages with a XEP-0359 stanza id. Query parsing, paging and formatting
//! live in `waddle_mam`.

use std::sync::Arc;

use waddle_c2s::ns;
use waddle_c2s::stanza::error_reply;
use waddle_mam::{ArchiveLocation, MamError};
use waddle_xml::Element;

use crate::ctx::Ctx;

pub const NS_SID: &str = "urn:xmpp:sid:0";

/// Answers one MAM IQ (form request or query) against `archive` and delivers the result
/// messages and the final IQ to the requester.
pub async fn answer_query(ctx: &Arc<Ctx>, location: ArchiveLocation, archive: &str, archive_jid: &str, iq: Element) {
    let Some(requester) = iq.attr("from").map(str::to_owned) else { return };
    if iq.attr("type") == Some("get") {
        ctx.emit(waddle_mam::query::form_response(&iq)).await;
        return;
    }
    let query = match waddle_mam::query::parse_query(&iq) {
        Ok(q) => q,
        Err(e) => {
            reply_error(ctx, &iq, &e).await;
            return;
        }
    };
    match ctx.archive.query(location, archive, &query).await {
        Ok(page) => {
            for row in &page.rows {
                let msg = waddle_mam::query::result_message(&requester, archive_jid, query.query_id.as_deref(), row);
                ctx.emit(msg).await;
            }
            ctx.emit(waddle_mam::query::fin(&iq, &page)).await;
        }
        Err(e) => reply_error(ctx, &iq, &e).await,
    }
}

async fn reply_error(ctx: &Ctx, iq: &Element, e: &MamError) {
    if let Some(err) = error_reply(iq, e.condition(), Some(&e.to_string())) {
        ctx.emit(err).await;
    }
}

/// Whether a 1:1 message is worth archiving (XEP-0313 §5.1.1: messages with a body, and
/// the markup that changes one: reactions, corrections, retractions).
fn archivable(msg: &Element) -> bool {
    matches!(msg.attr("type"), Some("chat") | Some("normal") | None)
        && (msg.has_child("body", ns::CLIENT)
            || msg.children().any(|c| {
                matches!(c.ns(), "urn:xmpp:reactions:0" | "urn:xmpp:message-retract:1" | "urn:xmpp:message-correct:0")
            }))
}

/// Archives a 1:1 message between two local accounts (one stored copy indexed in both
/// archives) and stamps the recipient's copy with a stanza id. Called on the routing
/// path before delivery; the write itself is batched off that path.
pub async fn archive_chat(ctx: &Ctx, msg: &mut Element, from_bare: &str, to_bare: &str) {
    if !ctx.config.archive.enabled || !archivable(msg) {
        return;
    }
    let stanza_id = crate::muc::new_stanza_id();
    // Only we may assert stanza ids by our users' JIDs (XEP-0359 §4).
    msg.nodes_mut().retain(|n| match n {
        waddle_xml::Node::Element(e) => !(e.is("stanza-id", NS_SID) && e.attr("by") == Some(to_bare)),
        waddle_xml::Node::Text(_) => true,
    });
    // The stored copy is the message as received: serialized before our stanza id is
    // added (the archive's result wrapper carries the id), with no clone of the message.
    let payload = String::from_utf8(msg.to_bytes(ns::CLIENT))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    msg.append_child(Element::new("stanza-id", NS_SID).with_attr("id", stanza_id.as_str()).with_attr("by", to_bare));
    let micros = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    let body = msg.get_child("body", ns::CLIENT).map(Element::text);
    let retracts = msg.get_child("retract", "urn:xmpp:message-retract:1").and_then(|r| r.attr("id")).map(str::to_owned);
    // Awaiting the queue (not the commit) is the archive's back-pressure: a sender that
    // outpaces the archive waits here, and its session stops reading from the socket.
    if let Err(e) = ctx.archive.append_chat_queued(from_bare, to_bare, &stanza_id, micros, payload, body).await {
        tracing::error!(error = %e, "chat archive write failed");
    }
    if let Some(target) = retracts {
        let archive = ctx.archive.clone();
        let (from_bare, to_bare) = (from_bare.to_owned(), to_bare.to_owned());
        // Queued after the insert above, so it sees it.
        tokio::spawn(async move {
            for owner in [&from_bare, &to_bare] {
                let _ = archive.retract(ArchiveLocation::Users, owner, &target).await;
            }
        });
    }
}
