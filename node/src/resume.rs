//! XEP-0198 resumption between the connection shell and a session: the resumption id,
//! the hand-over of a new connection to the session it names, and where a session's
//! unacknowledged stanzas go when it ends.
//!
//! The resumable state (counters, unacknowledged stanzas) has one owner: the session
//! task, which keeps running while its client is away. A new connection reaches it
//! through the session registry (the id names the full JID), so nothing here holds
//! session state of its own.
//!
//! A client may resume on another node than the one its session runs on (its node is
//! alive, but the client reconnected elsewhere). The session cannot follow the socket,
//! so the state follows the client, as ejabberd does: the new node asks the old one
//! ([`NodeCall::TakeSession`](crate::remote::NodeCall)), the old session answers with a
//! [`MovedSession`] (its counters, unacknowledged stanzas, presence, rooms) and stops
//! without telling anyone it left, and a session starts here from that state. The old
//! session forwards what still reaches it for a moment, while the registry learns
//! where the session is now.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use waddle_cluster::{SessionAddr, SessionMsg};
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

/// Another node asks for this session, to resume it there (see the module docs).
pub struct Migrate {
    pub previd: String,
    /// The client's count of the stanzas it handled.
    pub h: u32,
    /// Where the session runs from now on: what still reaches the old one goes there.
    pub to: SessionAddr,
    /// `None`: not this session's id, or the client's count is impossible.
    pub reply: oneshot::Sender<Option<MovedSession>>,
}

/// Everything of a session that a client resuming on another node takes with it.
/// Crosses nodes inside [`NodeReply::Session`](crate::remote::NodeReply), so it is
/// versioned with the node protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSession {
    pub jid: String,
    pub previd: String,
    pub resume_secs: u64,
    /// XEP-0198 counters: stanzas handled from the client, ours the client acknowledged
    /// (the `h` of its `<resume/>` already applied).
    pub handled_in: u32,
    pub acked_out: u32,
    /// Sent and not acknowledged, oldest first, each addressed to `jid` (what an
    /// inactive client was spared, XEP-0352, is among them).
    pub unacked: Vec<String>,
    pub available: bool,
    pub initial_presence_sent: bool,
    pub presence: Option<(i8, String)>,
    pub directed: Vec<String>,
    pub roster_interested: bool,
    pub carbons: bool,
    /// Room occupant JID and the join presence sent to it.
    pub rooms: Vec<(String, String)>,
}

/// The id a resumable session gives its client: its secret token and its full JID, so
/// the registry finds the session without an index of its own.
pub fn resumption_id(token: &str, jid: &FullJid) -> String {
    format!("{token}:{jid}")
}

/// How long the shell waits for a session to take a connection over; a live session
/// answers at once, so this only bounds a session stuck handling something else.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session on this node has to hand its state to another node: shorter than
/// the inter-node call's own timeout, so that the asking node is still waiting when it
/// comes (a late answer would move a session nobody takes).
const MOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Hands the connection to the session `previd` names, if it is `username`'s and still
/// there: the session takes the connection if it runs here, otherwise its state comes
/// here and a session starts from it. `Err` gives the connection back: the client gets
/// `<failed/>` and may bind.
pub async fn hand_over(
    ctx: &Arc<Ctx>,
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
    let addr = if own { session_addr(ctx, &jid).await } else { None };
    let Some(addr) = addr else {
        return Err((io, parser));
    };
    if addr.node != ctx.cluster.me() {
        return crate::session::resume_moved(Arc::clone(ctx), addr, previd, h, io, parser).await;
    }
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

/// Where the session `jid` runs, from its user's registry shard (here or at the owner).
async fn session_addr(ctx: &Ctx, jid: &FullJid) -> Option<SessionAddr> {
    let bare = jid.to_bare();
    let resource = jid.resource().as_str().to_owned();
    match ctx.cluster.user(bare.as_str()) {
        waddle_cluster::Place::Local(shard) => shard.addr(&resource),
        waddle_cluster::Place::Remote(node) => {
            let link = ctx.link()?;
            let call = crate::remote::NodeCall::SessionAt { bare: bare.as_str().to_owned(), resource };
            match link.call(node, call).await {
                Ok(crate::remote::NodeReply::SessionAt(addr)) => addr,
                other => {
                    tracing::info!(node, answer = ?other, "the owner did not say where a resuming session runs");
                    None
                }
            }
        }
    }
}

/// Asks the local session `conn_id` to move to `to` (another node's
/// [`NodeCall::TakeSession`](crate::remote::NodeCall)); `None` when it is not there or
/// refuses (another id, an impossible count).
pub async fn give_away(ctx: &Ctx, conn_id: u64, previd: String, h: u32, to: SessionAddr) -> Option<MovedSession> {
    let (reply, answer) = oneshot::channel();
    let migrate = Migrate { previd, h, to, reply };
    let here = SessionAddr { node: ctx.cluster.me(), conn_id };
    ctx.cluster.deliver(here, SessionMsg::Attach(Box::new(migrate))).ok()?;
    tokio::time::timeout(MOVE_TIMEOUT, answer).await.ok()?.ok()?
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

    #[test]
    fn a_moved_session_crosses_nodes_whole() {
        let moved = MovedSession {
            jid: "alice@example.org/phone".into(),
            previd: "tok:alice@example.org/phone".into(),
            resume_secs: 300,
            handled_in: 7,
            acked_out: u32::MAX,
            unacked: vec!["<message to='alice@example.org/phone' type='chat'><body>\"&amp;</body></message>".into()],
            available: true,
            initial_presence_sent: true,
            presence: Some((-1, "<presence><show>away</show></presence>".into())),
            directed: vec!["room@muc.example.org/alice".into()],
            roster_interested: true,
            carbons: false,
            rooms: vec![("room@muc.example.org/alice".into(), "<presence to='room@muc.example.org/alice'/>".into())],
        };
        let reply = crate::remote::NodeReply::Session(Some(Box::new(moved)));
        let bytes = serde_json::to_vec(&reply).unwrap_or_else(|e| panic!("{e}"));
        let back: crate::remote::NodeReply = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, reply);
        let crate::remote::NodeReply::Session(Some(back)) = back else { panic!("not a session") };
        let again = crate::im::parse_stored_stanza(&back.unacked[0]).unwrap_or_else(|| panic!("unparsable"));
        assert_eq!(again.attr("to"), Some("alice@example.org/phone"));
    }
}
