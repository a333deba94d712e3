//! XEP-0198 resumption between the connection shell and a session: the resumption id,
//! the hand-over of a new connection to the session it names, and where a session's
//! unacknowledged stanzas go when it ends.
//!
//! The resumable state (counters, unacknowledged stanzas) has one owner: the session
//! task, which keeps running while its client is away. A new connection reaches it
//! through the session registry (the id names the full JID), so nothing here holds
//! session state of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use waddle_cluster::SessionMsg;
use waddle_jid::FullJid;
use waddle_xml::{Element, StreamParser, Unaddressed};

use crate::ctx::Ctx;
use crate::io::ClientIo;

/// A stanza sent to the client and kept until it is acknowledged (a clone shares it).
#[derive(Clone)]
pub enum Sent {
    Stanza(Arc<Element>),
    /// A groupchat fan-out copy (serialized once, addressed on the way out).
    Shared(Arc<Unaddressed>),
}

/// A new connection resuming a session, handed over by the connection shell.
pub struct Attach {
    pub io: ClientIo,
    pub parser: StreamParser,
    pub previd: String,
    /// The client's count of the stanzas it handled.
    pub h: u32,
    /// The session's answer: `Err` gives the connection back (the id did not match).
    pub reply: oneshot::Sender<Result<(), (ClientIo, StreamParser)>>,
}

/// The id a resumable session gives its client: its secret token and its full JID, so
/// the registry finds the session without an index of its own.
pub fn resumption_id(token: &str, jid: &FullJid) -> String {
    format!("{token}:{jid}")
}

/// How long the shell waits for a session to take a connection over; a live session
/// answers at once, so this only bounds a session stuck handling something else.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Hands the connection to the session `previd` names, if it is `username`'s and still
/// there. `Err` gives the connection back: the client gets `<failed/>` and may bind.
pub async fn hand_over(
    ctx: &Ctx,
    username: &str,
    previd: &str,
    h: u32,
    io: ClientIo,
    parser: StreamParser,
) -> Result<(), (ClientIo, StreamParser)> {
    let Some(jid) = previd.split_once(':').and_then(|(_, full)| FullJid::new(full).ok()) else {
        return Err((io, parser));
    };
    let own = jid.node().is_some_and(|n| n.as_str() == username) && jid.domain().as_str() == ctx.domain;
    // A session whose user another node owns is not found here: the client gets
    // `item-not-found` and binds anew.
    let addr =
        if own { ctx.local_shard(jid.to_bare().as_str()).and_then(|s| s.addr(jid.resource().as_str())) } else { None };
    let Some(addr) = addr else {
        return Err((io, parser));
    };
    let (reply, answer) = oneshot::channel();
    let attach = Attach { io, parser, previd: previd.to_owned(), h, reply };
    if let Err(SessionMsg::Attach(back)) = ctx.cluster.deliver(addr, SessionMsg::Attach(Box::new(attach))) {
        return match back.downcast::<Attach>() {
            Ok(attach) => Err((attach.io, attach.parser)),
            // Only an `Attach` was sent, so only one can come back.
            Err(_) => Ok(()),
        };
    }
    match tokio::time::timeout(HAND_OVER_TIMEOUT, answer).await {
        Ok(Ok(Err(back))) => Err(back),
        // Taken over; or the session ended holding the connection, which then closes.
        _ => Ok(()),
    }
}

/// Where a session's unacknowledged stanzas go when it ends without being resumed
/// (XEP-0198 §5: they were not delivered). Messages go back through routing to the
/// user's bare JID: another available resource or offline storage, as ejabberd does.
/// IQ requests are answered with an error, so their senders are not left waiting.
/// Groupchat copies stay in the room's archive; presence is state, and the next
/// session gets it afresh; carbons and archive results are copies of stored messages.
pub async fn reroute_unacked(ctx: &Ctx, bare: &str, unacked: VecDeque<Sent>) {
    let mut skipped = 0usize;
    for sent in unacked {
        let Sent::Stanza(stanza) = sent else {
            skipped += 1;
            continue;
        };
        match stanza.name() {
            "message" if is_redeliverable(&stanza) => {
                let mut message = Arc::unwrap_or_clone(stanza);
                message.set_attr("to", bare);
                ctx.emit(message).await;
            }
            "iq" if matches!(stanza.attr("type"), Some("get" | "set")) => {
                ctx.bounce(&stanza, "service-unavailable").await
            }
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::debug!(jid = bare, skipped, "unacknowledged stanzas not redelivered (groupchat, presence, copies)");
    }
}

fn is_redeliverable(message: &Element) -> bool {
    !matches!(message.attr("type"), Some("groupchat" | "error"))
        && !message.children().any(|c| matches!(c.ns(), "urn:xmpp:carbons:2" | crate::muc::NS_MAM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waddle_c2s::ns;

    #[test]
    fn only_messages_of_the_user_are_redelivered() {
        let chat = Element::new("message", ns::CLIENT).with_attr("type", "chat");
        assert!(is_redeliverable(&chat));
        assert!(is_redeliverable(&Element::new("message", ns::CLIENT)));
        assert!(!is_redeliverable(&chat.clone().with_attr("type", "groupchat")));
        assert!(!is_redeliverable(&chat.clone().with_attr("type", "error")));
        assert!(!is_redeliverable(&chat.clone().with_child(Element::new("received", "urn:xmpp:carbons:2"))));
        assert!(!is_redeliverable(&chat.with_child(Element::new("result", crate::muc::NS_MAM))));
    }
}
