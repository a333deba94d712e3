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

/// Whether a message from `origin` is 1:1 chat that its owner archives (so, with
/// replication, makes durable before delivering it).
pub fn needs_durable_ack(ctx: &Ctx, origin: &crate::router::Origin, msg: &Element) -> bool {
    origin.conn_id.is_some() && ctx.config.archive.enabled && archivable(msg)
}

/// What the router does with a 1:1 message after [`archive_chat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatVerdict {
    /// Deliver it (archived or not).
    Deliver,
    /// A XEP-0424 retraction of a message its sender did not write: bounce `forbidden`,
    /// deliver nothing, archive nothing.
    NotAuthor,
    /// With replication: the message could not be made durable on a majority of its
    /// partitions' replicas. Bounce `recipient-unavailable` (wait), deliver nothing.
    NotDurable,
}

const NS_RETRACT: &str = "urn:xmpp:message-retract:1";

/// Archives a 1:1 message between two local accounts (one stored copy indexed in both
/// archives) and stamps the recipient's copy with a stanza id. Called on the routing
/// path before delivery; the write itself is batched off that path.
///
/// A retraction (`<retract xmlns='urn:xmpp:message-retract:1' id='…'/>` naming a stanza
/// id of the sender's archive) is checked first: only the author of the archived
/// message may retract it (XEP-0424; MongooseIM matches retractions on the same sender
/// too). Someone else's message gives [`ChatVerdict::NotAuthor`] and changes nothing.
/// An id the sender's archive does not hold (an origin id, an unarchived message) is
/// delivered as before and tombstones nothing. XEP-0308 corrections are stored as
/// messages of their own; the archive never applies them, so there is nothing to check.
pub async fn archive_chat(ctx: &Ctx, msg: &mut Element, from_bare: &str, to_bare: &str) -> ChatVerdict {
    if !ctx.config.archive.enabled || !archivable(msg) {
        return ChatVerdict::Deliver;
    }
    if let Some(target) = msg.get_child("retract", NS_RETRACT).and_then(|r| r.attr("id")) {
        // Boxed: a rare branch whose archive round trips would otherwise grow every
        // routed message's future (see docs/ARCHITECTURE.md).
        match Box::pin(apply_retraction(ctx, from_bare, to_bare, target)).await {
            ChatVerdict::Deliver => {}
            refused => return refused,
        }
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
    if let Some(replication) = ctx.replication() {
        let copy = ChatCopy { from: from_bare, to: to_bare, stanza_id: &stanza_id, micros, payload, body };
        // Boxed: the replicated branch's future would otherwise grow every routed message's.
        return Box::pin(archive_chat_durably(ctx, replication, copy)).await;
    }
    // Awaiting the queue (not the commit) is the archive's back-pressure: a sender that
    // outpaces the archive waits here, and its session stops reading from the socket.
    // This node owns the recipient; the sender's archive is at the sender's owner, which
    // keeps a copy of its own (the one copy here is indexed in both archives).
    if let waddle_cluster::Place::Remote(node) = ctx.cluster.place(waddle_cluster::partition_of(from_bare)) {
        let copy = crate::remote::NodeOp::ArchiveChat {
            from: from_bare.to_owned(),
            to: to_bare.to_owned(),
            stanza_id: stanza_id.clone(),
            micros,
            payload: payload.clone(),
            body: body.clone(),
        };
        ctx.to_node(node, copy);
    }
    if let Err(e) = ctx.archive.append_chat_queued(from_bare, to_bare, &stanza_id, micros, payload, body).await {
        tracing::error!(error = %e, "chat archive write failed");
    }
    ChatVerdict::Deliver
}

struct ChatCopy<'a> {
    from: &'a str,
    to: &'a str,
    stanza_id: &'a str,
    micros: i64,
    payload: String,
    body: Option<String>,
}

/// With replication: a 1:1 message is delivered only once it is durable on a majority
/// of the replicas of its recipient's partition (one copy indexed in both archives, as
/// without replication) and of its sender's partition (the sender's own copy; the same
/// operation when both users share a partition). The sender's partition may be owned
/// by another node, which is asked to make its copy durable (`NodeCall::Durable`).
async fn archive_chat_durably(
    ctx: &Ctx,
    replication: &crate::replication::Replication,
    copy: ChatCopy<'_>,
) -> ChatVerdict {
    use crate::replication::DurableOp;
    let (to_partition, from_partition) =
        (waddle_cluster::partition_of(copy.to), waddle_cluster::partition_of(copy.from));
    let both = DurableOp::Chat {
        from: copy.from.to_owned(),
        to: copy.to.to_owned(),
        stanza_id: copy.stanza_id.to_owned(),
        micros: copy.micros,
        payload: copy.payload.clone(),
        body: copy.body.clone(),
    };
    let mut writes = vec![replication.write_started(to_partition, &both)];
    if from_partition != to_partition {
        let side = DurableOp::ChatSide {
            owner: copy.from.to_owned(),
            with: copy.to.to_owned(),
            stanza_id: copy.stanza_id.to_owned(),
            micros: copy.micros,
            payload: copy.payload,
            body: copy.body,
        };
        writes.push(ctx.durable_write(from_partition, side));
    }
    for result in futures_util::future::join_all(writes).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "1:1 message not durable; refused");
            crate::metrics::inc(&ctx.metrics.refused_not_durable);
            return ChatVerdict::NotDurable;
        }
    }
    ChatVerdict::Deliver
}

/// Tombstones `target` if `sender` wrote it. Awaited before delivery (retractions are
/// rare), so the peer's archive no longer shows the message when the retraction reaches
/// them; the single stored copy is tombstoned, which hides it from both archives.
async fn apply_retraction(ctx: &Ctx, sender: &str, recipient: &str, target: &str) -> ChatVerdict {
    match retraction_target(ctx, sender, target).await {
        Target::OwnMessage if ctx.replication().is_some() => {
            use crate::replication::DurableOp;
            // Each archive has its own copy (see `DurableOp::Chat`): both are tombstoned,
            // the recipient's by its partition, the sender's by both partitions' logs
            // (each replica holds the copies of the partitions it replicates).
            let retract =
                |archive: &str| DurableOp::ChatRetract { archive: archive.to_owned(), target: target.to_owned() };
            let (to_partition, from_partition) =
                (waddle_cluster::partition_of(recipient), waddle_cluster::partition_of(sender));
            let mut writes = vec![
                ctx.durable_write(to_partition, retract(recipient)),
                ctx.durable_write(to_partition, retract(sender)),
            ];
            if from_partition != to_partition {
                writes.push(ctx.durable_write(from_partition, retract(sender)));
            }
            for result in futures_util::future::join_all(writes).await {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "1:1 retraction not durable; refused");
                    return ChatVerdict::NotDurable;
                }
            }
            ChatVerdict::Deliver
        }
        Target::OwnMessage => {
            if let Err(e) = ctx.archive.retract(ArchiveLocation::Users, sender, target).await {
                tracing::error!(error = %e, "chat archive retraction failed");
            }
            if let waddle_cluster::Place::Remote(node) = ctx.cluster.place(waddle_cluster::partition_of(sender)) {
                let op = crate::remote::NodeOp::RetractChat { sender: sender.to_owned(), target: target.to_owned() };
                ctx.to_node(node, op);
            }
            ChatVerdict::Deliver
        }
        Target::SomeoneElses => ChatVerdict::NotAuthor,
        Target::Unknown => ChatVerdict::Deliver,
    }
}

/// What a 1:1 retraction names, as seen from its sender's archive.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A live message the sender wrote.
    OwnMessage,
    /// A live message the sender received.
    SomeoneElses,
    /// Not in the sender's archive, or already retracted.
    Unknown,
}

/// Looks `target` up in `sender`'s archive (the read waits for every queued write, so
/// a message just sent is there). An archive failure is `Unknown`: nothing is
/// tombstoned then, and the retraction still reaches the peer.
async fn retraction_target(ctx: &Ctx, sender: &str, target: &str) -> Target {
    let q = waddle_mam::MamQuery { ids: vec![target.to_owned()], max: 1, ..waddle_mam::MamQuery::default() };
    match ctx.archive.query(ArchiveLocation::Users, sender, &q).await {
        Ok(page) => page.rows.first().map_or(Target::Unknown, |row| classify_target(&row.payload, sender)),
        Err(MamError::ItemNotFound(_)) => Target::Unknown,
        Err(e) => {
            tracing::error!(error = %e, "chat archive lookup for a retraction failed");
            Target::Unknown
        }
    }
}

/// The author of an archived 1:1 message is the bare JID of its stored `from`, which
/// the server stamped on the way in (RFC 6120 §8.1.2.1). A payload without a readable
/// `from` counts as someone else's: never tombstone what cannot be attributed.
fn classify_target(payload: &str, sender: &str) -> Target {
    let author = Element::from_bytes(payload.as_bytes(), ns::CLIENT)
        .ok()
        .and_then(|m| m.attr("from").and_then(|f| waddle_jid::Jid::new(f).ok()))
        .map(|j| j.to_bare());
    let sender = waddle_jid::BareJid::new(sender).ok();
    match (author, sender) {
        (Some(a), Some(s)) if a == s => Target::OwnMessage,
        _ => Target::SomeoneElses,
    }
}

#[cfg(test)]
mod tests {
    use super::{classify_target, Target};

    #[test]
    fn only_the_stamped_sender_is_the_author() {
        let msg =
            "<message from='alice@example.test/phone' to='bob@example.test' type='chat'><body>hi</body></message>";
        assert_eq!(classify_target(msg, "alice@example.test"), Target::OwnMessage);
        assert_eq!(classify_target(msg, "Alice@Example.test"), Target::OwnMessage, "JIDs compare normalized");
        assert_eq!(classify_target(msg, "bob@example.test"), Target::SomeoneElses);
        assert_eq!(classify_target(msg, "alice@example.test.evil"), Target::SomeoneElses);
    }

    #[test]
    fn an_unattributable_payload_is_never_the_senders() {
        assert_eq!(classify_target("<message to='bob@example.test'/>", "bob@example.test"), Target::SomeoneElses);
        assert_eq!(classify_target("", "bob@example.test"), Target::SomeoneElses, "a tombstone");
        assert_eq!(classify_target("<message from='@@'/>", "bob@example.test"), Target::SomeoneElses);
    }
}
