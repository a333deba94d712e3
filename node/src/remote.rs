//! What one node asks of another: the typed operations behind the routing seam when a
//! destination, or the sending user's account, is owned by another node.
//!
//! The rule is "account work runs at the account's owner": a stanza for a user is
//! routed on the node that owns the user's partition (where the registry shard, roster
//! and offline store are), and a session running elsewhere sends its account's work
//! (binding, presence, subscriptions, the offline queue) there. At most two hops: the
//! ingress node to the owner, the owner to the node the recipient's session runs on.
//!
//! Operations travel through a [`ClusterLink`] (the inter-node transport); a node that
//! has none (a cluster of one) never asks, because it owns every partition.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use waddle_api::accounts::{AccountFuture, Accounts};
use waddle_cluster::{Peers, Place, SessionAddr, SessionEntry, SessionMsg};
use waddle_jid::{FullJid, Jid};
use waddle_storage::{AccountRecord, StorageError, TokenKind, TokenRecord};
use waddle_xml::{Element, Unaddressed};

use crate::ctx::Ctx;
use crate::im;
use crate::router::Origin;

/// A routed stanza may be forwarded this many times: the ingress node to the owner, and
/// once more if the ring moved on the way.
const MAX_HOPS: u8 = 2;

/// The version of [`NodeOp`]'s encoding; a peer sending another is refused loudly.
pub const NODE_OP_VERSION: u16 = 6;

/// A one-way operation for another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeOp {
    /// Route a stanza on the node that owns its destination (or its sender's account):
    /// `from` and `conn_id` are the origin, `stanza` its XML.
    Route { from: String, conn_id: Option<u64>, stanza: String, hops: u8 },
    /// Write a stanza to sessions running on the receiving node.
    Deliver { conn_ids: Vec<u64>, stanza: String },
    /// Write one fan-out stanza (shared bytes and where `to` goes) to sessions running
    /// on the receiving node, each with its own full JID.
    DeliverShared { conn_ids: Vec<u64>, bytes: Vec<u8>, attrs_end: usize },
    /// Close sessions running on the receiving node (a stream error condition, or a
    /// replacement by a newer session of the same full JID).
    Close { conn_ids: Vec<u64>, condition: Option<String>, replaced: bool },
    /// Deliver a fan-out stanza to these full JIDs, whose users the receiver owns.
    DeliverToJids { jids: Vec<String>, bytes: Vec<u8>, attrs_end: usize },
    /// Account work of the session `jid`/`addr`, for the node that owns its user.
    Account { jid: String, addr: SessionAddr, action: AccountAction },
    /// Whether `bare` (owned by the sender) has a session with carbons enabled: the
    /// nodes its sessions run on ask the owner for sent carbons only then.
    CarbonsHint { bare: String, enabled: bool },
    /// The copy of a 1:1 message for the archive of its sender, whose user the receiver
    /// owns (the sender's node archived it for the recipient).
    ArchiveChat { from: String, to: String, stanza_id: String, micros: i64, payload: String, body: Option<String> },
    /// The sender retracted one of its 1:1 messages: tombstone the receiver's copy.
    RetractChat { sender: String, target: String },
    /// A channel's room changed through the REST API of the sending node, whose
    /// permission index was at `applied` (the receiver waits to be there too).
    Rooms { event: crate::muc::RoomEvent, applied: u64 },
    /// A session of the sending node that was in a room before the room moved: take it
    /// back in from its join presence (`crate::muc::rejoin`).
    RoomRejoin { presence: String, conn_id: u64, hops: u8 },
}

/// What a session asks of its account's owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountAction {
    Bind,
    /// The session again, after the ring moved or the owner was unreachable: bound
    /// unless another session holds its full JID now, with its presence.
    Rebind {
        available: bool,
        priority: i8,
        presence: Option<String>,
        roster_interested: bool,
        carbons: bool,
    },
    /// The session moved here from the session `from_conn_id` (a resumption on
    /// another node): it takes that session's entry, unless a newer session of the same
    /// full JID holds it.
    Moved {
        from_conn_id: u64,
        available: bool,
        priority: i8,
        presence: Option<String>,
        roster_interested: bool,
        carbons: bool,
    },
    Unbind,
    /// The session's availability and presence changed.
    Presence {
        available: bool,
        priority: i8,
        presence: Option<String>,
    },
    /// Broadcast the session's presence to the roster (and its directed targets).
    Broadcast {
        presence: String,
        directed: Vec<String>,
    },
    OutboundSubscription {
        presence: String,
    },
    /// The session's first available presence: probes, and the offline queue sent to
    /// the session (as `Deliver`s, in order) when `take_offline`.
    InitialPresence {
        take_offline: bool,
    },
    RestoreOffline {
        stored: Vec<String>,
    },
    SentCarbons {
        to: Option<String>,
        message: String,
    },
}

/// A request to another node that has an answer ([`NodeReply`]): durable data of a
/// partition that node owns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeCall {
    Account {
        username: String,
    },
    AccountExists {
        username: String,
    },
    CreateAccount {
        record: AccountRecord,
    },
    DeleteAccount {
        username: String,
    },
    InsertToken {
        kind: TokenKind,
        hash: Vec<u8>,
        username: String,
        expires_at: i64,
    },
    LookupToken {
        kind: TokenKind,
        hash: Vec<u8>,
        now: i64,
        /// The token's partition (its prefix): the owner answers once it serves it.
        #[serde(default)]
        partition: Option<u32>,
    },
    /// What runs on the node: for `waddle cluster status`.
    Stats,
    /// Make `op` durable in `partition`'s replicated log, which the receiver owns; the
    /// reply comes once a majority of the partition's replicas hold it.
    Durable {
        partition: u32,
        op: crate::replication::DurableOp,
    },
    /// Route a stanza on the node that owns its destination, and answer once that is
    /// done: a 1:1 message from a session, whose acknowledgement (XEP-0198) must wait
    /// until the message is durable there.
    Route {
        from: String,
        conn_id: Option<u64>,
        stanza: String,
        hops: u8,
    },
    /// Where the session of `bare`/`resource` runs, from the registry shard the
    /// receiver owns: a client resuming it on another node asks.
    SessionAt {
        bare: String,
        resource: String,
    },
    /// The receiver's session `conn_id` moves to `to` (its client resumed there): its
    /// state if `previd` is its resumption id and `h` a possible count.
    TakeSession {
        conn_id: u64,
        previd: String,
        h: u32,
        to: SessionAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeReply {
    Done,
    Account(Option<Box<AccountRecord>>),
    Exists(bool),
    Token(Option<TokenRecord>),
    Stats {
        sessions: usize,
        rooms: usize,
    },
    /// The owner's storage refused or failed.
    Failed(RemoteFailure),
    /// A routed stanza was refused with this stanza error condition: the caller bounces it
    /// to its session (see [`crate::router::RoutedFor`]).
    Refused(String),
    SessionAt(Option<SessionAddr>),
    Session(Option<Box<crate::resume::MovedSession>>),
}

/// A storage failure as it crosses nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RemoteFailure {
    AlreadyExists,
    NotFound,
    Other(String),
}

impl From<StorageError> for RemoteFailure {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::AlreadyExists => RemoteFailure::AlreadyExists,
            StorageError::NotFound => RemoteFailure::NotFound,
            other => RemoteFailure::Other(other.to_string()),
        }
    }
}

impl From<RemoteFailure> for StorageError {
    fn from(e: RemoteFailure) -> Self {
        match e {
            RemoteFailure::AlreadyExists => StorageError::AlreadyExists,
            RemoteFailure::NotFound => StorageError::NotFound,
            RemoteFailure::Other(why) => StorageError::Database(format!("at the owner: {why}")),
        }
    }
}

/// Why a call to another node got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("node {0} is not reachable")]
    Unreachable(u64),
    #[error("node {0} did not answer in time")]
    Timeout(u64),
    #[error("node {node} could not handle the request: {why}")]
    Remote { node: u64, why: String },
}

/// How this node reaches the others: the inter-node transport, typed.
pub trait ClusterLink: Send + Sync + 'static {
    /// Queues `op` for `node` (ordered per pair of nodes, batched); `false` when the
    /// node is unknown or unreachable.
    fn send(&self, node: u64, op: NodeOp) -> bool;

    /// Asks `node` and waits for its answer.
    fn call(&self, node: u64, call: NodeCall) -> BoxFuture<'static, Result<NodeReply, LinkError>>;

    /// The transport's counters, for `/metrics`.
    fn transport_stats(&self) -> Option<waddle_cluster::transport::TransportStats> {
        None
    }
}

/// Answers a call from another node.
pub async fn answer(ctx: &Ctx, call: NodeCall) -> NodeReply {
    let store = ctx.users();
    let result = match call {
        NodeCall::Account { username } => store.account(&username).await.map(|a| NodeReply::Account(a.map(Box::new))),
        NodeCall::AccountExists { username } => store.account_exists(&username).await.map(NodeReply::Exists),
        NodeCall::CreateAccount { record } => store.create_account(record).await.map(|()| NodeReply::Done),
        NodeCall::DeleteAccount { username } => store.delete_account(&username).await.map(|()| NodeReply::Done),
        NodeCall::InsertToken { kind, hash, username, expires_at } => match <[u8; 32]>::try_from(hash.as_slice()) {
            Ok(hash) => store.insert_token(kind, hash, &username, expires_at).await.map(|()| NodeReply::Done),
            Err(_) => Err(StorageError::Invalid("token hash of the wrong length".into())),
        },
        NodeCall::Stats => {
            Ok(NodeReply::Stats { sessions: ctx.cluster.local_sessions(), rooms: ctx.muc.running_count() })
        }
        NodeCall::Durable { partition, op } => {
            if !matches!(ctx.cluster.place(partition), Place::Local(())) {
                return NodeReply::Failed(RemoteFailure::Other(format!("partition {partition} is not owned here")));
            }
            let Some(replication) = ctx.replication() else {
                return NodeReply::Failed(RemoteFailure::Other("this node does not replicate".into()));
            };
            return match replication.write(partition, &op).await {
                Ok(()) => NodeReply::Done,
                Err(e) => NodeReply::Failed(RemoteFailure::Other(e.to_string())),
            };
        }
        NodeCall::Route { from, conn_id, stanza, hops } => {
            let (Ok(jid), Some(stanza)) = (Jid::new(&from), parse(&stanza)) else {
                return NodeReply::Failed(RemoteFailure::Other("undecodable routed stanza".into()));
            };
            // Boxed: routing leads back into calls like this one.
            let origin = Origin { jid, conn_id };
            let routing = Box::pin(ctx.route_hop(&origin, stanza, hops));
            let Some(conn_id) = conn_id else {
                routing.await;
                return NodeReply::Done;
            };
            return match crate::router::RoutedFor::collect(conn_id, routing).await {
                Some(refusal) => NodeReply::Refused(refusal.condition),
                None => NodeReply::Done,
            };
        }
        NodeCall::SessionAt { bare, resource } => {
            let addr = match ctx.cluster.user(&bare) {
                Place::Local(shard) => shard.addr(&resource),
                Place::Remote(_) => None,
            };
            return NodeReply::SessionAt(addr);
        }
        NodeCall::TakeSession { conn_id, previd, h, to } => {
            let moved = crate::resume::give_away(ctx, conn_id, previd, h, to).await;
            return NodeReply::Session(moved.map(Box::new));
        }
        NodeCall::LookupToken { kind, hash, now, partition } => match <[u8; 32]>::try_from(hash.as_slice()) {
            Ok(hash) => store.lookup_token(partition, kind, hash, now).await.map(NodeReply::Token),
            Err(_) => Ok(NodeReply::Token(None)),
        },
    };
    result.unwrap_or_else(|e| NodeReply::Failed(e.into()))
}

/// Accounts and tokens where their user's partition is owned: this node's store, or
/// the owner's through the link. A token names its user's partition before a `.`
/// (base64url has no dot), so a bearer token is found without knowing whose it is.
pub struct ClusterAccounts {
    pub ctx: std::sync::Weak<Ctx>,
}

impl ClusterAccounts {
    /// Where `username`'s account lives: `None` here, else the owner and the link.
    fn owner(&self, username: &str) -> Result<(Arc<Ctx>, Option<u64>), StorageError> {
        let ctx = self.ctx.upgrade().ok_or(StorageError::Closed)?;
        let partition = waddle_cluster::partition_of(&ctx.bare_jid(username));
        let node = match ctx.cluster.place(partition) {
            Place::Local(()) => None,
            Place::Remote(node) => Some(node),
        };
        Ok((ctx, node))
    }

    fn ask(ctx: &Ctx, node: u64, call: NodeCall) -> BoxFuture<'static, Result<NodeReply, StorageError>> {
        let Some(link) = ctx.link().cloned() else {
            return Box::pin(async move { Err(StorageError::Database(format!("node {node} is not reachable"))) });
        };
        Box::pin(async move {
            match link.call(node, call).await {
                Ok(NodeReply::Failed(failure)) => Err(failure.into()),
                Ok(reply) => Ok(reply),
                Err(e) => Err(StorageError::Database(e.to_string())),
            }
        })
    }
}

fn unexpected<T>(reply: NodeReply) -> Result<T, StorageError> {
    Err(StorageError::Database(format!("unexpected answer from the owner: {reply:?}")))
}

impl Accounts for ClusterAccounts {
    fn account(&self, username: &str) -> AccountFuture<Option<AccountRecord>> {
        let username = username.to_owned();
        let located = self.owner(&username);
        Box::pin(async move {
            match located? {
                (ctx, None) => ctx.users().account(&username).await,
                (ctx, Some(node)) => match ClusterAccounts::ask(&ctx, node, NodeCall::Account { username }).await? {
                    NodeReply::Account(account) => Ok(account.map(|a| *a)),
                    other => unexpected(other),
                },
            }
        })
    }

    fn account_exists(&self, username: &str) -> AccountFuture<bool> {
        let username = username.to_owned();
        let located = self.owner(&username);
        Box::pin(async move {
            match located? {
                (ctx, None) => ctx.users().account_exists(&username).await,
                (ctx, Some(node)) => {
                    match ClusterAccounts::ask(&ctx, node, NodeCall::AccountExists { username }).await? {
                        NodeReply::Exists(exists) => Ok(exists),
                        other => unexpected(other),
                    }
                }
            }
        })
    }

    fn create_account(&self, record: AccountRecord) -> AccountFuture<()> {
        let located = self.owner(&record.username);
        Box::pin(async move {
            match located? {
                (ctx, None) => ctx.users().create_account(record).await,
                (ctx, Some(node)) => {
                    ClusterAccounts::ask(&ctx, node, NodeCall::CreateAccount { record }).await.map(|_| ())
                }
            }
        })
    }

    fn delete_account(&self, username: &str) -> AccountFuture<()> {
        let username = username.to_owned();
        let located = self.owner(&username);
        Box::pin(async move {
            match located? {
                (ctx, None) => ctx.users().delete_account(&username).await,
                (ctx, Some(node)) => {
                    ClusterAccounts::ask(&ctx, node, NodeCall::DeleteAccount { username }).await.map(|_| ())
                }
            }
        })
    }

    fn issue_token(&self, kind: TokenKind, username: &str, expires_at: i64) -> AccountFuture<String> {
        let username = username.to_owned();
        let located = self.owner(&username);
        Box::pin(async move {
            let (ctx, owner) = located?;
            let partition = waddle_cluster::partition_of(&ctx.bare_jid(&username));
            let token = format!("{partition}.{}", waddle_api::tokens::new_token());
            let hash = waddle_api::tokens::hash_token(&token);
            match owner {
                None => ctx.users().insert_token(kind, hash, &username, expires_at).await?,
                Some(node) => {
                    let call = NodeCall::InsertToken { kind, hash: hash.to_vec(), username, expires_at };
                    ClusterAccounts::ask(&ctx, node, call).await?;
                }
            }
            Ok(token)
        })
    }

    fn lookup_token(&self, kind: TokenKind, presented: &str, now: i64) -> AccountFuture<Option<TokenRecord>> {
        let hash = waddle_api::tokens::hash_token(presented);
        let partition = presented.split_once('.').and_then(|(p, _)| p.parse::<u32>().ok());
        let ctx = self.ctx.upgrade();
        Box::pin(async move {
            let ctx = ctx.ok_or(StorageError::Closed)?;
            let owner = match partition.filter(|p| *p < waddle_cluster::PARTITIONS).map(|p| ctx.cluster.place(p)) {
                Some(Place::Remote(node)) => Some(node),
                _ => None,
            };
            match owner {
                None => ctx.users().lookup_token(partition, kind, hash, now).await,
                Some(node) => {
                    let call = NodeCall::LookupToken { kind, hash: hash.to_vec(), now, partition };
                    match ClusterAccounts::ask(&ctx, node, call).await? {
                        NodeReply::Token(token) => Ok(token),
                        other => unexpected(other),
                    }
                }
            }
        })
    }
}

/// Sessions on other nodes are reached through the link.
pub struct LinkPeers(pub Arc<dyn ClusterLink>);

impl Peers for LinkPeers {
    fn deliver(&self, node: u64, conn_ids: Vec<u64>, msg: &SessionMsg) -> bool {
        let op = match msg {
            SessionMsg::Deliver(stanza) => NodeOp::Deliver { conn_ids, stanza: stanza.to_string() },
            SessionMsg::DeliverUnaddressed(shared) => {
                let (bytes, attrs_end) = shared.parts();
                NodeOp::DeliverShared { conn_ids, bytes: bytes.to_vec(), attrs_end }
            }
            SessionMsg::Close(condition) => {
                NodeOp::Close { conn_ids, condition: condition.map(str::to_owned), replaced: false }
            }
            SessionMsg::Replaced => NodeOp::Close { conn_ids, condition: None, replaced: true },
            // Ticks and resumption hand-overs are node-local.
            SessionMsg::Tick | SessionMsg::Reannounce | SessionMsg::Attach(_) => return false,
        };
        self.0.send(node, op)
    }
}

impl Ctx {
    /// Sends `op` to `node`; says so in the log when it cannot.
    pub fn to_node(&self, node: u64, op: NodeOp) -> bool {
        let sent = self.link().is_some_and(|link| link.send(node, op));
        if !sent {
            tracing::warn!(node, "cluster: node unreachable, operation dropped");
        }
        sent
    }

    /// Routes `stanza` on `node`, which owns where it goes (or its sender's account).
    pub fn forward(&self, node: u64, origin: &Origin, stanza: &Element, hops: u8) -> bool {
        if hops >= MAX_HOPS {
            tracing::error!(node, "cluster: a stanza was forwarded too often (the ring is moving); dropped");
            return false;
        }
        let op = NodeOp::Route {
            from: origin.jid.as_str().to_owned(),
            conn_id: origin.conn_id,
            stanza: stanza.to_string(),
            hops: hops + 1,
        };
        self.to_node(node, op)
    }

    /// [`Ctx::forward`], waiting until the owner has routed the stanza: a session's 1:1
    /// message is then durable (or refused) before the session handles its next stanza,
    /// so the XEP-0198 count it acknowledges never covers a message that could be lost.
    pub async fn forward_and_wait(&self, node: u64, origin: &Origin, stanza: Element, hops: u8) {
        if hops >= MAX_HOPS {
            tracing::warn!(node, "cluster: a stanza was forwarded too often (the ring is moving); bounced");
            self.bounce_to(origin, &stanza, "recipient-unavailable").await;
            return;
        }
        let Some(link) = self.link() else { return };
        let call = NodeCall::Route {
            from: origin.jid.as_str().to_owned(),
            conn_id: origin.conn_id,
            stanza: stanza.to_string(),
            hops: hops + 1,
        };
        match link.call(node, call).await {
            Ok(NodeReply::Done) => {}
            // Bounced here, within the session's `RoutedFor`, which writes it before the
            // session handles its next stanza (XEP-0198): a refusal sent back on its own
            // could arrive after the acknowledgement, or not at all if the session closes
            // meanwhile.
            Ok(NodeReply::Refused(condition)) => self.bounce_to(origin, &stanza, &condition).await,
            Ok(other) => {
                tracing::warn!(node, reply = ?other, "cluster: routing at the owner failed");
                self.bounce_to(origin, &stanza, "recipient-unavailable").await;
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "cluster: the owner did not route the message");
                self.bounce_to(origin, &stanza, "recipient-unavailable").await;
            }
        }
    }

    /// Account work for the session `origin`, at its user's owner: here when this node
    /// owns the user, otherwise sent there. `false` when it could not be sent.
    pub async fn account_action(&self, origin: &Origin, action: AccountAction) -> bool {
        let (Some(full), Some(conn_id)) = (origin.full(), origin.conn_id) else { return false };
        let bare = full.to_bare();
        let addr = SessionAddr { node: conn_node(conn_id), conn_id };
        match self.cluster.user(bare.as_str()) {
            Place::Local(_) => {
                run_account_action(self, full, addr, action).await;
                true
            }
            Place::Remote(node) => self.to_node(node, NodeOp::Account { jid: full.as_str().to_owned(), addr, action }),
        }
    }
}

impl Ctx {
    /// On the owner of `bare`: tells the other nodes its sessions run on whether any of
    /// them has carbons enabled (they skip asking for sent carbons otherwise). With
    /// `only_if_enabled` (a session bound), nothing is sent while none has: a node never
    /// told `true` needs no `false`.
    pub fn hint_carbons(&self, bare: &str, shard: &waddle_cluster::UserShard<'_>, only_if_enabled: bool) {
        if self.cluster.alone() {
            return;
        }
        let sessions = shard.sessions();
        let enabled = sessions.iter().any(|s| s.carbons);
        if only_if_enabled && !enabled {
            return;
        }
        let mut nodes: Vec<u64> = sessions.iter().map(|s| s.addr.node).filter(|n| *n != self.cluster.me()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.to_node(node, NodeOp::CarbonsHint { bare: bare.to_owned(), enabled });
        }
    }
}

/// The node a connection id was handed out by (see `Locality::connect`).
pub fn conn_node(conn_id: u64) -> u64 {
    conn_id >> 40
}

/// Carries out an operation another node sent.
pub fn handle(ctx: Arc<Ctx>, from_node: u64, op: NodeOp) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        match op {
            NodeOp::Route { from, conn_id, stanza, hops } => {
                let (Ok(jid), Some(stanza)) = (Jid::new(&from), parse(&stanza)) else {
                    tracing::error!(from_node, "cluster: undecodable routed stanza");
                    return;
                };
                ctx.route_hop(&Origin { jid, conn_id }, stanza, hops).await;
            }
            NodeOp::Deliver { conn_ids, stanza } => {
                let Some(stanza) = parse(&stanza) else {
                    tracing::error!(from_node, "cluster: undecodable stanza for delivery");
                    return;
                };
                let stanza = Arc::new(stanza);
                ctx.cluster.deliver_local(&conn_ids, || SessionMsg::Deliver(Arc::clone(&stanza)));
            }
            NodeOp::DeliverShared { conn_ids, bytes, attrs_end } => {
                let Some(shared) = Unaddressed::from_parts(bytes, attrs_end) else {
                    tracing::error!(from_node, "cluster: malformed fan-out stanza");
                    return;
                };
                let shared = Arc::new(shared);
                ctx.cluster.deliver_local(&conn_ids, || SessionMsg::DeliverUnaddressed(Arc::clone(&shared)));
            }
            NodeOp::Close { conn_ids, condition, replaced } => {
                let condition = condition.as_deref().map(static_condition);
                ctx.cluster.deliver_local(&conn_ids, || {
                    if replaced {
                        SessionMsg::Replaced
                    } else {
                        SessionMsg::Close(condition)
                    }
                });
            }
            NodeOp::DeliverToJids { jids, bytes, attrs_end } => {
                let Some(shared) = Unaddressed::from_parts(bytes, attrs_end) else {
                    tracing::error!(from_node, "cluster: malformed fan-out stanza");
                    return;
                };
                ctx.deliver_shared_to_jids(&jids, Arc::new(shared), 1);
            }
            NodeOp::CarbonsHint { bare, enabled } => ctx.set_carbons_hint(&bare, enabled),
            NodeOp::ArchiveChat { from, to, stanza_id, micros, payload, body } => {
                if let Err(e) = ctx.archive.append_chat_side_queued(&from, &to, &stanza_id, micros, payload, body).await
                {
                    tracing::error!(error = %e, "chat archive write (sender's copy) failed");
                }
            }
            NodeOp::RetractChat { sender, target } => {
                if let Err(e) = ctx.archive.retract(waddle_mam::ArchiveLocation::Users, &sender, &target).await {
                    tracing::error!(error = %e, "chat archive retraction (sender's copy) failed");
                }
            }
            NodeOp::Rooms { event, applied } => {
                // Bounded: a node that cannot catch up within this applies it anyway.
                let caught_up =
                    tokio::time::timeout(std::time::Duration::from_secs(2), ctx.permissions.wait_replicated(applied));
                if !matches!(caught_up.await, Ok(Ok(()))) {
                    tracing::warn!(from_node, applied, "cluster: room change applied before the permissions caught up");
                }
                crate::muc::apply_room_event(&ctx, event, false).await;
            }
            NodeOp::RoomRejoin { presence, conn_id, hops } => {
                let Some(presence) = parse(&presence) else {
                    tracing::error!(from_node, "cluster: undecodable room rejoin");
                    return;
                };
                crate::muc::rejoin(&ctx, presence, conn_id, hops).await;
            }
            NodeOp::Account { jid, addr, action } => {
                let Ok(full) = FullJid::new(&jid) else {
                    tracing::error!(from_node, "cluster: account operation for a malformed JID");
                    return;
                };
                run_account_action(&ctx, &full, addr, action).await;
            }
        }
    })
}

/// Binds `entry`, a session that moved from the session `from_conn_id` (or announces
/// itself again: `from_conn_id` is its own), in its place; `false` (nothing changed)
/// when another session of the same full JID holds it.
pub fn take_entry(shard: &waddle_cluster::UserShard<'_>, entry: SessionEntry, from_conn_id: u64) -> bool {
    if shard.addr(&entry.resource).is_some_and(|held| held.conn_id != from_conn_id && held != entry.addr) {
        return false;
    }
    // The replaced entry is the moved session's old self, which is told nothing.
    let _ = shard.bind(entry);
    true
}

/// A stream error condition named by a peer, as the session's static string; an
/// unknown one closes with `internal-server-error`.
fn static_condition(name: &str) -> &'static str {
    match name {
        "system-shutdown" => "system-shutdown",
        "not-authorized" => "not-authorized",
        "conflict" => "conflict",
        "policy-violation" => "policy-violation",
        _ => "internal-server-error",
    }
}

fn parse(xml: &str) -> Option<Element> {
    Element::from_bytes(xml.as_bytes(), waddle_c2s::ns::CLIENT).ok()
}

/// Account work of the session `full` at `addr`, on the node that owns its user.
async fn run_account_action(ctx: &Ctx, full: &FullJid, addr: SessionAddr, action: AccountAction) {
    let bare = full.to_bare();
    let shard = match ctx.cluster.user(bare.as_str()) {
        Place::Local(shard) => shard,
        Place::Remote(node) => {
            // The ring moved between the sender's decision and now: pass it on.
            ctx.to_node(node, NodeOp::Account { jid: full.as_str().to_owned(), addr, action });
            return;
        }
    };
    let resource = full.resource().as_str();
    let origin = Origin { jid: Jid::from(full.clone()), conn_id: Some(addr.conn_id) };
    let moved_entry = |available, priority, presence: Option<String>, roster_interested, carbons| SessionEntry {
        resource: resource.to_owned(),
        addr,
        priority,
        available,
        presence: presence.as_deref().and_then(parse).map(Arc::new),
        roster_interested,
        carbons,
    };
    match action {
        AccountAction::Bind => {
            let entry = SessionEntry {
                resource: resource.to_owned(),
                addr,
                priority: 0,
                available: false,
                presence: None,
                roster_interested: false,
                carbons: false,
            };
            if let Some(old) = shard.bind(entry) {
                let _ = ctx.cluster.deliver(old.addr, SessionMsg::Replaced);
            }
            ctx.hint_carbons(bare.as_str(), &shard, true);
        }
        // Announcing itself again, a session takes its own entry or an empty place: a
        // move from itself (connection ids are unique in the cluster).
        AccountAction::Rebind { available, priority, presence, roster_interested, carbons } => {
            let entry = moved_entry(available, priority, presence, roster_interested, carbons);
            if take_entry(&shard, entry, addr.conn_id) {
                ctx.hint_carbons(bare.as_str(), &shard, true);
            }
        }
        AccountAction::Moved { from_conn_id, available, priority, presence, roster_interested, carbons } => {
            let entry = moved_entry(available, priority, presence, roster_interested, carbons);
            if take_entry(&shard, entry, from_conn_id) {
                ctx.hint_carbons(bare.as_str(), &shard, true);
            }
        }
        AccountAction::Unbind => {
            // Only a session with carbons leaving can turn the account's answer to false.
            let had_carbons = shard.carbons_resources().iter().any(|r| r == resource);
            if shard.unbind(resource, addr.conn_id) && had_carbons {
                ctx.hint_carbons(bare.as_str(), &shard, false);
            }
        }
        AccountAction::Presence { available, priority, presence } => {
            let presence = presence.as_deref().and_then(parse).map(Arc::new);
            shard.update(resource, addr.conn_id, |e| {
                e.available = available;
                e.priority = priority;
                e.presence = presence;
            });
        }
        AccountAction::Broadcast { presence, directed } => {
            if let Some(presence) = parse(&presence) {
                im::broadcast(ctx, &origin, &presence, &directed.into_iter().collect()).await;
            }
        }
        AccountAction::OutboundSubscription { presence } => {
            if let Some(presence) = parse(&presence) {
                Box::pin(im::outbound_subscription(ctx, &origin, presence)).await;
            }
        }
        AccountAction::InitialPresence { take_offline } => {
            let offline = Box::pin(im::after_initial_presence(ctx, &origin, take_offline)).await;
            // In order, through the same path as any delivery to that session; what the
            // session cannot take it stores back itself.
            for xml in offline {
                if let Some(mut message) = im::parse_stored_stanza(&xml) {
                    message.set_attr("to", full.as_str());
                    let _ = ctx.cluster.deliver(addr, SessionMsg::Deliver(Arc::new(message)));
                }
            }
        }
        AccountAction::RestoreOffline { stored } => {
            if let Some(username) = full.node() {
                im::restore_offline(ctx, username.as_str(), stored).await;
            }
        }
        AccountAction::SentCarbons { to, message } => {
            if let Some(message) = parse(&message) {
                let to = to.and_then(|t| Jid::new(&t).ok());
                ctx.send_sent_carbons(&origin, to.as_ref(), &message);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_through_their_encoding() {
        let ops = vec![
            NodeOp::Route { from: "a@x/r".into(), conn_id: Some(7), stanza: "<message/>".into(), hops: 1 },
            NodeOp::DeliverShared { conn_ids: vec![1, 2], bytes: b"<message><body/></message>".to_vec(), attrs_end: 8 },
            NodeOp::Account {
                jid: "a@x/r".into(),
                addr: SessionAddr { node: 2, conn_id: (2 << 40) | 5 },
                action: AccountAction::Presence { available: true, priority: -3, presence: None },
            },
        ];
        for op in ops {
            let bytes = serde_json::to_vec(&op).unwrap();
            assert_eq!(serde_json::from_slice::<NodeOp>(&bytes).unwrap(), op);
        }
    }

    #[test]
    fn connection_ids_name_their_node() {
        assert_eq!(conn_node((3 << 40) | 12345), 3);
    }

    #[test]
    fn unknown_close_conditions_are_internal_errors() {
        assert_eq!(static_condition("system-shutdown"), "system-shutdown");
        assert_eq!(static_condition("made-up"), "internal-server-error");
    }
}

/// The encoding of [`NodeOp`] on the wire ([`NODE_OP_VERSION`]): the operations of every
/// routed stanza (route, deliver, fan-out, the sender's archive copy) in a compact binary
/// form that carries XML as raw bytes (JSON would escape every quote of it); the rest
/// as JSON behind tag 0.
pub mod wire {
    use super::NodeOp;

    const JSON: u8 = 0;
    const ROUTE: u8 = 1;
    const DELIVER: u8 = 2;
    const DELIVER_SHARED: u8 = 3;
    const ARCHIVE_CHAT: u8 = 4;

    /// Why bytes from a peer are not a [`NodeOp`].
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum OpDecodeError {
        #[error("empty frame")]
        Empty,
        #[error("unknown operation tag {0}")]
        UnknownTag(u8),
        #[error("truncated operation")]
        Truncated,
        #[error("text that is not UTF-8")]
        NotUtf8,
        #[error("JSON operation: {0}")]
        Json(String),
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }

    pub fn encode(op: &NodeOp) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match op {
            NodeOp::Route { from, conn_id, stanza, hops } => {
                out.push(ROUTE);
                put_str(&mut out, from);
                out.push(u8::from(conn_id.is_some()));
                out.extend_from_slice(&conn_id.unwrap_or(0).to_be_bytes());
                out.push(*hops);
                out.extend_from_slice(stanza.as_bytes());
            }
            NodeOp::Deliver { conn_ids, stanza } => {
                out.push(DELIVER);
                put_ids(&mut out, conn_ids);
                out.extend_from_slice(stanza.as_bytes());
            }
            NodeOp::DeliverShared { conn_ids, bytes, attrs_end } => {
                out.push(DELIVER_SHARED);
                put_ids(&mut out, conn_ids);
                out.extend_from_slice(&(*attrs_end as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            NodeOp::ArchiveChat { from, to, stanza_id, micros, payload, body } => {
                out.push(ARCHIVE_CHAT);
                put_str(&mut out, from);
                put_str(&mut out, to);
                put_str(&mut out, stanza_id);
                out.extend_from_slice(&micros.to_be_bytes());
                out.push(u8::from(body.is_some()));
                put_str(&mut out, body.as_deref().unwrap_or(""));
                out.extend_from_slice(payload.as_bytes());
            }
            other => {
                out.push(JSON);
                // Plain enums of strings and numbers: serializing cannot fail.
                out.extend_from_slice(&serde_json::to_vec(other).unwrap_or_default());
            }
        }
        out
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], OpDecodeError> {
            if self.0.len() < n {
                return Err(OpDecodeError::Truncated);
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }

        fn u8(&mut self) -> Result<u8, OpDecodeError> {
            Ok(self.take(1)?[0])
        }

        fn u32(&mut self) -> Result<u32, OpDecodeError> {
            let b = self.take(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn u64(&mut self) -> Result<u64, OpDecodeError> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_be_bytes(a))
        }

        fn string(&mut self) -> Result<String, OpDecodeError> {
            let n = self.u32()? as usize;
            text(self.take(n)?)
        }

        fn ids(&mut self) -> Result<Vec<u64>, OpDecodeError> {
            let n = self.u32()? as usize;
            // Bounded by the frame: each id is 8 bytes that must be there.
            if self.0.len() / 8 < n {
                return Err(OpDecodeError::Truncated);
            }
            (0..n).map(|_| self.u64()).collect()
        }

        fn rest(&mut self) -> &'a [u8] {
            std::mem::take(&mut self.0)
        }
    }

    fn text(bytes: &[u8]) -> Result<String, OpDecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| OpDecodeError::NotUtf8)
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeOp, OpDecodeError> {
        let mut r = Reader(bytes);
        let tag = r.u8().map_err(|_| OpDecodeError::Empty)?;
        Ok(match tag {
            ROUTE => {
                let from = r.string()?;
                let has_conn = r.u8()? != 0;
                let conn = r.u64()?;
                let hops = r.u8()?;
                NodeOp::Route { from, conn_id: has_conn.then_some(conn), hops, stanza: text(r.rest())? }
            }
            DELIVER => {
                let conn_ids = r.ids()?;
                NodeOp::Deliver { conn_ids, stanza: text(r.rest())? }
            }
            DELIVER_SHARED => {
                let conn_ids = r.ids()?;
                let attrs_end = r.u32()? as usize;
                NodeOp::DeliverShared { conn_ids, attrs_end, bytes: r.rest().to_vec() }
            }
            ARCHIVE_CHAT => {
                let from = r.string()?;
                let to = r.string()?;
                let stanza_id = r.string()?;
                let micros = r.u64()? as i64;
                let has_body = r.u8()? != 0;
                let body = r.string()?;
                NodeOp::ArchiveChat {
                    from,
                    to,
                    stanza_id,
                    micros,
                    body: has_body.then_some(body),
                    payload: text(r.rest())?,
                }
            }
            JSON => serde_json::from_slice(r.rest()).map_err(|e| OpDecodeError::Json(e.to_string()))?,
            other => return Err(OpDecodeError::UnknownTag(other)),
        })
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;
        use crate::remote::{AccountAction, SessionAddr};

        #[test]
        fn every_form_round_trips() {
            let ops = vec![
                NodeOp::Route {
                    from: "a@x/r".into(),
                    conn_id: Some(7),
                    stanza: "<message to='b@x'>\"'</message>".into(),
                    hops: 1,
                },
                NodeOp::Route { from: "x".into(), conn_id: None, stanza: String::new(), hops: 0 },
                NodeOp::Deliver { conn_ids: vec![1, u64::MAX], stanza: "<iq/>".into() },
                NodeOp::DeliverShared { conn_ids: vec![], bytes: b"<message><body/></message>".to_vec(), attrs_end: 8 },
                NodeOp::ArchiveChat {
                    from: "a@x".into(),
                    to: "b@x".into(),
                    stanza_id: "id".into(),
                    micros: -5,
                    payload: "<message/>".into(),
                    body: Some("hé".into()),
                },
                NodeOp::ArchiveChat {
                    from: "a@x".into(),
                    to: "b@x".into(),
                    stanza_id: "id".into(),
                    micros: 5,
                    payload: String::new(),
                    body: None,
                },
                NodeOp::Account {
                    jid: "a@x/r".into(),
                    addr: SessionAddr { node: 2, conn_id: 9 },
                    action: AccountAction::Unbind,
                },
            ];
            for op in ops {
                assert_eq!(decode(&encode(&op)).unwrap(), op);
            }
        }

        #[test]
        fn garbage_is_refused_not_guessed() {
            assert_eq!(decode(&[]), Err(OpDecodeError::Empty));
            assert_eq!(decode(&[99]), Err(OpDecodeError::UnknownTag(99)));
            let full = encode(&NodeOp::Deliver { conn_ids: vec![1, 2, 3], stanza: "<x/>".into() });
            assert_eq!(decode(&full[..6]), Err(OpDecodeError::Truncated));
            // A count far beyond the frame is refused before anything is allocated.
            assert_eq!(decode(&[DELIVER, 0xff, 0xff, 0xff, 0xff]), Err(OpDecodeError::Truncated));
            assert!(matches!(decode(&[JSON, b'{']), Err(OpDecodeError::Json(_))));
            let mut bad_utf8 = encode(&NodeOp::Deliver { conn_ids: vec![], stanza: String::new() });
            bad_utf8.push(0xff);
            assert_eq!(decode(&bad_utf8), Err(OpDecodeError::NotUtf8));
        }
    }
}
