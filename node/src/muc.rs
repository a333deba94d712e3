//! The MUC service (`muc.<domain>`): one ractor actor per room, a thin shell around
//! `waddle_muc::Room`. Rooms of waddle channels take their access rules from the
//! Zanzibar permissions (checked on every join and every message); other rooms follow
//! plain XEP-0045 rules. Reflected groupchat messages are archived (XEP-0313) after
//! fan-out, off the delivery path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use waddle_api::Permissions;
use waddle_authz::ObjectRef;
use waddle_c2s::ns;
use waddle_c2s::stanza::{error_reply, iq_payload, iq_result_with};
use waddle_mam::{ArchiveLocation, ArchivedRow};
use waddle_muc::{AccessOracle, Affiliation, ChannelAccess, ChannelSettings, Outbound, Policy, Room, RoomConfig};
use waddle_storage::{ChannelRecord, WaddleRecord};
use waddle_xml::Element;

use waddle_cluster::{Place, PlacementKey, SessionAddr};

use crate::ctx::Ctx;
use crate::replication::DurableOp;
use crate::router::Origin;
use crate::running::Running;

pub const NS_MAM: &str = "urn:xmpp:mam:2";

/// Which waddle channel a room belongs to, if any.
#[derive(Clone, Debug)]
pub struct ChannelBinding {
    pub waddle_id: String,
    pub channel_id: String,
    /// Announcement channels give a voice only to those with `announce`.
    pub announcement: bool,
}

impl ChannelBinding {
    fn of(channel: &ChannelRecord) -> ChannelBinding {
        ChannelBinding {
            waddle_id: channel.waddle_id.clone(),
            channel_id: channel.id.clone(),
            announcement: channel.kind == "announcement",
        }
    }
}

#[derive(Debug)]
pub enum RoomMsg {
    /// A stanza for the room, with the connection id of the session that sent it (none
    /// for what the server sends on its own).
    Stanza(Element, Option<u64>),
    /// The channel's room is deleted by the REST API.
    Destroy(String),
    /// Permissions of the channel changed: re-evaluate occupants.
    PolicyChanged,
    /// The channel was renamed, re-topiced or changed kind through the REST API.
    ChannelUpdated(ChannelRecord),
    /// A session that was an occupant before the room came to this node, with its join
    /// presence and connection id (see [`rejoin`]).
    Rejoin(Element, u64),
    /// A look at whether the occupants coming back have settled (see `REBUILD_QUIET`).
    RebuildTick,
    /// The rebuild window after the start is over: handle what waited for it.
    EndRebuild,
    /// Stop serving the room here: its partition moved to another node (`forward`: what
    /// reached this room and was not handled yet goes on to the new owner, in order), or
    /// this node is cut off (it is refused with `recipient-unavailable`, to be sent again).
    Release { forward: bool },
}

// Room actors are local: the cluster reaches a room through its node's router, never
// as a remote actor (ractor's `cluster` feature wants every message type declared).
impl ractor::Message for RoomMsg {}

pub struct MucService {
    pub domain: String,
    rooms: Running<ActorRef<RoomMsg>>,
    /// Running rooms that are public and unlocked, by JID, with their listed names. The
    /// room actors keep it current; the service's disco#items reads it (together with the
    /// stored listing of persistent rooms that are not running).
    listed: std::sync::Mutex<BTreeMap<String, String>>,
    /// Which waddle each room belongs to (`None`: an ad-hoc room), for placement. A
    /// room's kind never changes: channel ids are random, so no ad-hoc room can take the
    /// name of a channel created later. Bounded: emptied when it grows past the limit.
    room_waddles: std::sync::RwLock<HashMap<String, Option<String>>>,
    /// Where room actors record the epochs they served at (cluster members only).
    ownership: std::sync::OnceLock<OwnershipLog>,
}

/// An append-only record, one JSON line per event, of the rooms this node started and
/// stopped serving and at which ring epoch: what an operator (or the chaos checker)
/// reads to see that no two nodes served one room at one epoch.
pub struct OwnershipLog {
    node: u64,
    file: std::sync::Mutex<std::fs::File>,
}

impl OwnershipLog {
    pub fn open(path: &std::path::Path, node: u64) -> std::io::Result<OwnershipLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(OwnershipLog { node, file: std::sync::Mutex::new(file) })
    }

    fn record(&self, room: &str, epoch: u64, event: &str) {
        use std::io::Write;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let line = serde_json::json!({
            "node": self.node, "kind": "room", "key": room, "epoch": epoch, "event": event, "at_ms": at_ms,
        });
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!(error = %e, "cannot write the ownership log");
        }
    }
}

const MAX_REMEMBERED_ROOMS: usize = 100_000;

/// Most rooms a disco#items answer of the service lists.
const MAX_LISTED_ROOMS: u32 = 1000;

impl MucService {
    pub fn new(domain: String) -> MucService {
        MucService {
            domain,
            rooms: Running::new(),
            listed: std::sync::Mutex::new(BTreeMap::new()),
            room_waddles: std::sync::RwLock::default(),
            ownership: std::sync::OnceLock::new(),
        }
    }

    pub fn set_ownership_log(&self, log: OwnershipLog) {
        let _ = self.ownership.set(log);
    }

    fn record_ownership(&self, room: &str, epoch: u64, event: &str) {
        if let Some(log) = self.ownership.get() {
            log.record(room, epoch, event);
        }
    }

    /// The JIDs and actors of the rooms running here.
    pub fn running_rooms(&self) -> Vec<(String, ActorRef<RoomMsg>)> {
        self.rooms.entries()
    }

    /// What [`room_partition`] learnt of `room_node`: `Some(waddle)` for a channel's
    /// room, `Some(None)` for an ad-hoc room.
    fn room_waddle(&self, room_node: &str) -> Option<Option<String>> {
        self.room_waddles.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(room_node).cloned()
    }

    fn remember_room(&self, room_node: &str, waddle: Option<&str>) {
        let mut known = self.room_waddles.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() >= MAX_REMEMBERED_ROOMS {
            known.clear();
        }
        known.insert(room_node.to_owned(), waddle.map(str::to_owned));
    }

    fn set_listing(&self, room: &str, listing: Option<&str>) {
        let mut listed = self.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match listing {
            Some(name) => listed.insert(room.to_owned(), name.to_owned()),
            None => listed.remove(room),
        };
    }

    pub fn room_jid(&self, channel_id: &str) -> String {
        format!("{channel_id}@{}", self.domain)
    }

    /// Forgets `room`'s actor if it is still `actor` (not a successor started since).
    fn forget(&self, room: &str, actor: ActorId) {
        self.rooms.remove_if(room, |running| running.get_id() == actor);
    }

    /// Rooms with a running actor on this node.
    pub fn running_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn running(&self, room: &str) -> Option<ActorRef<RoomMsg>> {
        self.rooms.get(room)
    }
}

/// Entry point from the router for every stanza addressed to the MUC domain.
pub async fn route(ctx: &Arc<Ctx>, origin: &Origin, stanza: Element, room_node: Option<String>) {
    let Some(node) = room_node else {
        Box::pin(service_stanza(ctx, &stanza)).await;
        return;
    };
    let room_jid = format!("{node}@{}", ctx.muc.domain);
    let mut stanza = stanza;
    // A temporary room may stop (last occupant left) between lookup and delivery: the
    // message comes back and the lookup runs once more, which re-creates or reloads it.
    for _ in 0..2 {
        match room_for(ctx, &room_jid, &stanza, false).await {
            Ok(actor) => match actor.cast(RoomMsg::Stanza(stanza, origin.conn_id)) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(RoomMsg::Stanza(back, _))) => {
                    ctx.muc.forget(&room_jid, actor.get_id());
                    stanza = back;
                }
                Err(e) => {
                    tracing::debug!(room = %room_jid, error = %e, "room stopped while routing");
                    return;
                }
            },
            Err(condition) => {
                ctx.bounce(&stanza, condition).await;
                return;
            }
        }
    }
    ctx.bounce(&stanza, "service-unavailable").await;
}

/// The running actor of `room_jid`, loading a persisted room or creating an ad-hoc one
/// on a join presence.
async fn room_for(
    ctx: &Arc<Ctx>,
    room_jid: &str,
    stanza: &Element,
    rejoin: bool,
) -> Result<ActorRef<RoomMsg>, &'static str> {
    if let Some(actor) = ctx.muc.running(room_jid) {
        return Ok(actor);
    }
    // Boxed: starting a room awaits the database and the actor spawn, a future of a few
    // KiB that every routed stanza's future would otherwise carry.
    Box::pin(ctx.muc.rooms.get_or_start(room_jid, || start_room(ctx, room_jid, stanza, rejoin))).await
}

/// Takes a session that was in a room before the room moved (its node lost the room's
/// partition, or died) back into the room on its owner: `presence` is the join presence
/// the session kept, with its `from`. Forwarded to the owner when that is another node
/// (at most twice, as a moving ring may need). A room that is not running is started by
/// it, unlocked, since the occupants coming back are already in it.
pub async fn rejoin(ctx: &Arc<Ctx>, presence: Element, conn_id: u64, hops: u8) {
    let Some(room_node) = presence.attr("to").and_then(|t| t.split_once('@')).map(|(node, _)| node.to_owned()) else {
        return;
    };
    if !ctx.cluster.alone() {
        if let Place::Remote(node) = ctx.cluster.place(room_partition(ctx, &room_node).await) {
            if hops >= 2 {
                tracing::warn!(room = %room_node, "cluster: a room rejoin forwarded twice already; dropped");
                return;
            }
            ctx.to_node(
                node,
                crate::remote::NodeOp::RoomRejoin { presence: presence.to_string(), conn_id, hops: hops + 1 },
            );
            return;
        }
    }
    let room_jid = format!("{room_node}@{}", ctx.muc.domain);
    match room_for(ctx, &room_jid, &presence, true).await {
        Ok(actor) => {
            let _ = actor.cast(RoomMsg::Rejoin(presence, conn_id));
        }
        Err(condition) => {
            tracing::info!(room = %room_jid, condition, "a room rejoin found no room");
            removed_from_room(ctx, &presence, conn_id);
        }
    }
}

/// Tells a session that it is no longer in the room it tried to rejoin (XEP-0045 status
/// 333: removed because of a technical problem), so its client knows to join again.
fn removed_from_room(ctx: &Ctx, presence: &Element, conn_id: u64) {
    let (Some(occupant), Some(to)) = (presence.attr("to"), presence.attr("from")) else { return };
    const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
    let status = |code: &str| Element::new("status", MUC_USER).with_attr("code", code);
    let item = Element::new("item", MUC_USER).with_attr("affiliation", "none").with_attr("role", "none");
    let gone = Element::new("presence", ns::CLIENT)
        .with_attr("from", occupant)
        .with_attr("to", to)
        .with_attr("type", "unavailable")
        .with_child(Element::new("x", MUC_USER).with_child(item).with_child(status("110")).with_child(status("333")));
    let addr = SessionAddr { node: crate::remote::conn_node(conn_id), conn_id };
    if ctx.cluster.deliver(addr, waddle_cluster::SessionMsg::Deliver(Arc::new(gone))).is_err() {
        tracing::debug!(conn_id, "the session of a refused rejoin is gone");
    }
}

/// After this node adopted a new ring: every room it runs whose partition it no longer
/// owns stops at once (its occupants' sessions take themselves to the new owner). A
/// room is never served by two nodes at one epoch.
pub async fn release_unowned(ctx: &Arc<Ctx>) {
    for (jid, actor) in ctx.muc.running_rooms() {
        let node = jid.split('@').next().unwrap_or_default();
        if let Place::Remote(owner) = ctx.cluster.place(room_partition(ctx, node).await) {
            tracing::info!(room = %jid, owner, "cluster: room released to its new owner");
            let _ = actor.cast(RoomMsg::Release { forward: true });
        }
    }
}

/// The partition a room lives on: its waddle's for a channel's room (a waddle's rooms
/// and archive stay together on one node), its own JID's for an ad-hoc room.
pub async fn room_partition(ctx: &Ctx, room_node: &str) -> waddle_cluster::PartitionId {
    let waddle = match ctx.muc.room_waddle(room_node) {
        Some(known) => known,
        None => match waddle_api::ControlStore::channel(ctx.control.as_ref(), room_node).await {
            Ok(channel) => {
                let waddle = channel.map(|c| c.waddle_id);
                ctx.muc.remember_room(room_node, waddle.as_deref());
                waddle
            }
            // Not remembered: the next stanza asks again.
            Err(_) => None,
        },
    };
    match waddle {
        Some(waddle) => PlacementKey::Waddle(&waddle).partition(),
        None => PlacementKey::Room(&ctx.muc.room_jid(room_node)).partition(),
    }
}

/// Loads or creates `room_jid` and spawns its actor ([`Running::get_or_start`] makes
/// sure one room never gets two actors).
async fn start_room(
    ctx: &Arc<Ctx>,
    room_jid: &str,
    stanza: &Element,
    rejoin: bool,
) -> Result<ActorRef<RoomMsg>, &'static str> {
    let node = room_jid.split('@').next().unwrap_or_default().to_owned();
    let channel =
        waddle_api::ControlStore::channel(ctx.control.as_ref(), &node).await.map_err(|_| "internal-server-error")?;
    let snapshot = ctx.control.room_get(room_jid).await.map_err(|_| "internal-server-error")?;
    let binding = channel.as_ref().map(ChannelBinding::of);
    let mut room = match (&snapshot, &channel) {
        (Some(s), _) => {
            let mut room = Room::restore(room_jid, s).map_err(|e| {
                tracing::error!(room = %room_jid, error = %e, "cannot restore room");
                "internal-server-error"
            })?;
            if let (Some(c), Some(b)) = (&channel, &binding) {
                // The channel record is the truth; a snapshot may predate its last change
                // (the room was not running then). Nobody is inside yet, so there is
                // nothing to tell; the next persist stores the refreshed config.
                let _ = with_oracle(ctx, Some(b), |o| room.apply_channel_settings(&channel_settings(c), o));
            }
            room
        }
        (None, Some(c)) => Room::new(room_jid, channel_config(c), None, true),
        (None, None) => {
            if ctx.control.room_is_retired(room_jid).await.map_err(|_| "internal-server-error")? {
                // The room of a deleted channel: its JID is never handed to someone else.
                return Err("gone");
            }
            let is_join = stanza.name() == "presence"
                && stanza.attr("type").is_none()
                && stanza.attr("to").is_some_and(|t| t.contains('/'));
            // On a cluster, groupchat for a temporary room that is not running here may
            // come from an occupant whose rejoin is still on its way (the room just came
            // to this node): the room starts empty and holds it for the rebuild window
            // (see `RoomState::waits_for_rejoin`), then refuses it as from a
            // non-occupant, and ends if nobody came back.
            let groupchat_in_rebuild =
                !ctx.cluster.alone() && stanza.name() == "message" && stanza.attr("type") == Some("groupchat");
            if !is_join && !groupchat_in_rebuild {
                return Err("item-not-found");
            }
            if rejoin || groupchat_in_rebuild {
                // A temporary room whose node failed: its affiliations were never stored,
                // so nobody comes back as its owner (taking the first to return as one
                // would hand the room to whoever reconnects first).
                Room::new(room_jid, RoomConfig::default(), None, true)
            } else {
                let creator = stanza.attr("from").map(|f| f.split('/').next().unwrap_or(f).to_owned());
                Room::new(room_jid, RoomConfig::default(), creator.as_deref(), false)
            }
        }
    };
    let location = location_of(binding.as_ref());
    if let Some(replication) = ctx.replication() {
        // The room's history is in its partition's log: the new owner of a partition
        // serves it only once it recovered it, and reads it only once applied.
        let node = room_jid.split('@').next().unwrap_or_default();
        if !replication.ready(room_partition(ctx, node).await, ROOM_START_WAIT).await {
            tracing::warn!(room = %room_jid, "the room's partition is not ready here");
            return Err("recipient-unavailable");
        }
    }
    if let Ok(history) = ctx.archive.recent(location, room_jid, room.config().history_max as usize).await {
        if !history.is_empty() {
            room.set_history(history.iter().filter_map(history_entry).collect());
        }
    }
    spawn_room(ctx, room, binding, snapshot.is_some()).await
}

fn location_of(binding: Option<&ChannelBinding>) -> ArchiveLocation {
    match binding {
        Some(b) => ArchiveLocation::Waddle(b.waddle_id.clone()),
        None => ArchiveLocation::AdHocRooms,
    }
}

/// Configuration of a channel's room: persistent and members-only; announcement
/// channels are moderated (only moderators have voice).
pub fn channel_config(channel: &ChannelRecord) -> RoomConfig {
    let settings = channel_settings(channel);
    RoomConfig {
        name: settings.name,
        description: settings.description,
        persistent: true,
        members_only: true,
        moderated: settings.moderated,
        public: false,
        ..RoomConfig::default()
    }
}

fn channel_settings(channel: &ChannelRecord) -> ChannelSettings {
    ChannelSettings {
        name: channel.name.clone(),
        description: channel.topic.clone().unwrap_or_default(),
        moderated: channel.kind == "announcement",
    }
}

async fn spawn_room(
    ctx: &Arc<Ctx>,
    room: Room,
    binding: Option<ChannelBinding>,
    stored: bool,
) -> Result<ActorRef<RoomMsg>, &'static str> {
    let node = room.jid().split('@').next().unwrap_or_default().to_owned();
    let partition = room_partition(ctx, &node).await;
    let args = RoomArgs { ctx: Arc::clone(ctx), room, binding, partition, stored };
    match Actor::spawn(None, RoomActor, args).await {
        Ok((actor, _)) => Ok(actor),
        Err(e) => {
            tracing::error!(error = %e, "cannot start room actor");
            Err("internal-server-error")
        }
    }
}

/// Creates (or re-creates) the room of a new channel, persisted so it survives restarts.
pub async fn create_channel_room(ctx: &Arc<Ctx>, channel: &ChannelRecord) -> Result<String, String> {
    let room_jid = ctx.muc.room_jid(&channel.id);
    if !ctx.cluster.alone() {
        // The room's node creates it from the channel record (in the control plane)
        // when it first loads; its snapshot is written there.
        return Ok(room_jid);
    }
    let room = Room::new(&room_jid, channel_config(channel), None, true);
    ctx.control.room_put(&room_jid, &room.snapshot(), None).await.map_err(|e| e.to_string())?;
    Ok(room_jid)
}

/// Destroys a deleted channel's room where it runs; `retire` (on the node the deletion
/// was made through) also retires its JID for good.
pub async fn destroy_channel_room(ctx: &Arc<Ctx>, channel: &ChannelRecord, reason: &str, retire: bool) {
    let room_jid = ctx.muc.room_jid(&channel.id);
    if let Some(actor) = ctx.muc.running(&room_jid) {
        let _ = actor.cast(RoomMsg::Destroy(reason.to_owned()));
    }
    if !retire {
        return;
    }
    if let Err(e) = ctx.control.room_retire(&room_jid).await {
        tracing::error!(room = %room_jid, error = %e, "cannot retire room record");
    }
}

/// Stanzas to the service itself (`muc.<domain>`): discovery.
async fn service_stanza(ctx: &Arc<Ctx>, stanza: &Element) {
    if stanza.name() != "iq" || stanza.attr("type") != Some("get") {
        if stanza.name() == "iq" && stanza.attr("type") == Some("set") {
            ctx.bounce(stanza, "service-unavailable").await;
        }
        return;
    }
    let reply = match iq_payload(stanza) {
        Some(q) if q.is("query", ns::DISCO_INFO) => iq_result_with(
            stanza,
            Element::new("query", ns::DISCO_INFO)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", "Channels"),
                )
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO))
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS))
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::MUC))
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS_MAM)),
        ),
        Some(q) if q.is("query", ns::DISCO_ITEMS) => {
            // Public rooms (XEP-0045 §6.3): stored persistent ones, then running ones,
            // whose live state wins. Channel rooms are never public.
            let mut rooms: BTreeMap<String, String> =
                ctx.control.rooms_listed(MAX_LISTED_ROOMS).await.unwrap_or_default().into_iter().collect();
            let running = ctx.muc.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            rooms.extend(running);
            let mut items = Element::new("query", ns::DISCO_ITEMS);
            for (jid, name) in rooms.into_iter().take(MAX_LISTED_ROOMS as usize) {
                items.append_child(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid).with_attr("name", name));
            }
            iq_result_with(stanza, items)
        }
        _ => match error_reply(stanza, "service-unavailable", None) {
            Some(e) => e,
            None => return,
        },
    };
    ctx.emit(reply).await;
}

struct RoomActor;

struct RoomArgs {
    ctx: Arc<Ctx>,
    room: Room,
    binding: Option<ChannelBinding>,
    partition: waddle_cluster::PartitionId,
    /// The room was restored from a stored snapshot.
    stored: bool,
}

struct RoomState {
    ctx: Arc<Ctx>,
    room: Room,
    binding: Option<ChannelBinding>,
    location: ArchiveLocation,
    /// What this room last published to the service's listing.
    listed: Option<String>,
    /// Started on the first write; ends when the room stops, after its last write.
    persister: Option<watch::Sender<RoomWrite>>,
    /// Something of this room is in the store (it was restored from it, or written).
    stored: bool,
    /// Where the sessions that sent presence to the room run (learnt from the origin of
    /// their presence), so that fan-out goes straight to their nodes: one inter-node
    /// message per node, whatever the number of occupants there.
    sessions: HashMap<String, SessionAddr>,
    /// Until [`RoomMsg::EndRebuild`]: the room just came to this node and its occupants'
    /// sessions are still coming back (see [`rejoin`]). Until they have settled (no
    /// rejoin for `REBUILD_QUIET`), all groupchat waits in `parked`, so that nobody
    /// coming back misses a message sent meanwhile; after that, groupchat from someone
    /// not seated yet still waits for that sender's rejoin instead of being refused.
    rebuilding: bool,
    settled: bool,
    last_rejoin: std::time::Instant,
    parked: Vec<(Element, Option<u64>)>,
    /// Set by [`RoomMsg::Release`]: the room no longer serves, and hands on (or refuses)
    /// what is still queued for it until its mailbox is empty.
    released: Option<Release>,
    /// With replication: what the room sends goes out through this queue, in order, each
    /// turn after the durable write it waits for (see [`Publisher`]).
    publisher: Option<tokio::sync::mpsc::Sender<Turn>>,
    /// The room's partition (with replication: the log its messages are written to).
    partition: waddle_cluster::PartitionId,
}

/// What a released room does with a stanza that reached it anyway.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Release {
    /// Route it on: the room's partition is another node's now.
    Forward,
    /// Refuse it (`recipient-unavailable`, type `wait`): this node cannot serve it.
    Refuse,
}

/// What one turn of a room sends, once the write it carries (if any) is durable.
struct Turn {
    durable: Option<futures_util::future::BoxFuture<'static, Result<(), crate::replication::DurableError>>>,
    /// Told when the write failed: the sender's message was not accepted.
    refusal: Option<Element>,
    sends: Vec<Outgoing>,
}

enum Outgoing {
    Emit(Element),
    Local(Element, Vec<String>),
    Fanout { shared: Arc<waddle_xml::Unaddressed>, known: Vec<SessionAddr>, unknown: Vec<String> },
}

/// Most turns a room's publisher holds before the room waits for it.
const PUBLISHER_QUEUE: usize = 4096;

/// Sends a room's turns in order, each after its durable write: a groupchat message is
/// reflected to its sender (XEP-0045's acknowledgement) and reaches the others only
/// once a majority of the room partition's replicas hold it; a turn whose write failed
/// sends nothing but the refusal. Later turns wait behind an earlier one, so nothing
/// the room says overtakes a message it has not acknowledged.
async fn run_publisher(ctx: Arc<Ctx>, room: String, mut turns: tokio::sync::mpsc::Receiver<Turn>) {
    while let Some(turn) = turns.recv().await {
        if let Some(durable) = turn.durable {
            if let Err(e) = durable.await {
                tracing::warn!(room = %room, error = %e, "room message not durable; refused");
                crate::metrics::inc(&ctx.metrics.refused_not_durable);
                if let Some(refusal) = turn.refusal {
                    ctx.emit(refusal).await;
                }
                continue;
            }
        }
        for send in turn.sends {
            match send {
                Outgoing::Emit(el) => ctx.emit(el).await,
                Outgoing::Local(el, to) => ctx.deliver_to_each(&el, &to),
                Outgoing::Fanout { shared, known, unknown } => {
                    if !unknown.is_empty() {
                        ctx.deliver_shared_to_jids(&unknown, Arc::clone(&shared), 0);
                    }
                    ctx.cluster.deliver_each(known, shared);
                }
            }
        }
    }
}

/// What the sender of `entry` is told when its message could not be made durable:
/// a `wait` error (RFC 6120 §8.3.3.15), so it may send it again.
fn refusal_of(room: &str, entry: &waddle_muc::HistoryEntry) -> Option<Element> {
    let mut original = Element::new("message", ns::CLIENT)
        .with_attr("from", entry.from_real.as_str())
        .with_attr("to", room)
        .with_attr("type", "groupchat");
    if let Some(id) = entry.message.attr("id") {
        original.set_attr("id", id);
    }
    error_reply(&original, "recipient-unavailable", Some("The room could not store this message; send it again"))
}

/// How long a room's start waits for its partition's log to be recovered here.
const ROOM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a room that came to this node waits for its occupants to come back before
/// it refuses groupchat from non-occupants again.
const REBUILD_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);
/// The occupants of a room that came to this node have settled once no rejoin came for
/// this long: the rejoins of all nodes leave when each adopts the ring, within moments
/// of each other.
const REBUILD_QUIET: std::time::Duration = std::time::Duration::from_millis(300);
/// Most stanzas a rebuilding room holds; beyond it they are handled (and refused) at once.
const MAX_PARKED: usize = 1024;

/// The name `room` is listed under in the service's disco#items, if it is listed.
fn listing_of(room: &Room) -> Option<&str> {
    if !room.config().public || room.is_locked() || room.is_destroyed() {
        return None;
    }
    let name = room.config().name.as_str();
    Some(if name.is_empty() { room.jid().split('@').next().unwrap_or_default() } else { name })
}

/// A change to a room's stored state.
#[derive(Clone, Debug)]
enum RoomWrite {
    Put { snapshot: String, listed_name: Option<String> },
    Delete,
}

/// Writes a room's latest state whenever it changes; ends when the room actor drops its
/// sender (the last state is still written).
async fn run_persister(ctx: Arc<Ctx>, room: String, mut rx: watch::Receiver<RoomWrite>) {
    while rx.changed().await.is_ok() {
        let write = rx.borrow_and_update().clone();
        let result = match &write {
            RoomWrite::Put { snapshot, listed_name } => {
                ctx.control.room_put(&room, snapshot, listed_name.as_deref()).await
            }
            RoomWrite::Delete => ctx.control.room_delete(&room).await,
        };
        if let Err(e) = result {
            tracing::error!(room = %room, error = %e, "cannot persist room");
        }
    }
}

/// Access decisions for a channel room, from the in-memory permission checker.
struct ChannelOracle<'a> {
    permissions: &'a Permissions,
    domain: &'a str,
    binding: &'a ChannelBinding,
}

impl AccessOracle for ChannelOracle<'_> {
    fn access(&self, user_bare_jid: &str) -> Policy {
        let denied = Policy::Channel(ChannelAccess {
            can_view: false,
            can_send: false,
            affiliation: Affiliation::None,
            moderator: false,
        });
        let Some((user, domain)) = user_bare_jid.split_once('@') else {
            return denied;
        };
        if domain != self.domain {
            return denied;
        }
        let channel = ObjectRef { kind: "channel".into(), id: self.binding.channel_id.clone() };
        let waddle = ObjectRef { kind: "waddle".into(), id: self.binding.waddle_id.clone() };
        let p = self.permissions;
        let affiliation = if p.check(&waddle, "owner", user) {
            Affiliation::Owner
        } else if p.check(&waddle, "administer", user) {
            Affiliation::Admin
        } else if p.check(&channel, "view", user) {
            Affiliation::Member
        } else {
            Affiliation::None
        };
        Policy::Channel(ChannelAccess {
            can_view: p.check(&channel, "view", user),
            can_send: p.check(&channel, if self.binding.announcement { "announce" } else { "send_message" }, user),
            affiliation,
            moderator: p.check(&channel, "moderate", user),
        })
    }

    /// A waddle member's username is their registered nickname in every channel room of
    /// the waddle (XEP-0045 §7.2.9): the nickname whose RFC 8266 comparison key (or
    /// look-alike skeleton) equals the username. Usernames are lowercase ASCII
    /// (`waddle_api::identity::validate_username`), so they are their own key and the
    /// key names the one account to ask about.
    fn nick_reserved_for(&self, nick_key: &str) -> Option<String> {
        let username_like = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_');
        if nick_key.is_empty() || nick_key.len() > 64 || !nick_key.bytes().all(username_like) {
            return None;
        }
        let waddle = ObjectRef { kind: "waddle".into(), id: self.binding.waddle_id.clone() };
        self.permissions.check(&waddle, "view", nick_key).then(|| format!("{nick_key}@{}", self.domain))
    }
}

struct StandardOracle;

impl AccessOracle for StandardOracle {
    fn access(&self, _user_bare_jid: &str) -> Policy {
        Policy::Standard
    }
}

fn with_oracle<R>(ctx: &Ctx, binding: Option<&ChannelBinding>, f: impl FnOnce(&dyn AccessOracle) -> R) -> R {
    match binding {
        Some(binding) => f(&ChannelOracle { permissions: &ctx.permissions, domain: &ctx.domain, binding }),
        None => f(&StandardOracle),
    }
}

/// XEP-0082 timestamp (UTC, microseconds) and the same instant in unix microseconds.
fn now_stamp() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    let micros = i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    let stamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    (stamp, micros)
}

fn stamp_of(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A unique stanza id (XEP-0359) for a message archived now.
pub fn new_stanza_id() -> String {
    use rand::Rng as _;
    let micros = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(0);
    stanza_id_at(micros, rand::thread_rng().gen())
}

/// Base32 digits in ASCII order, so that ids sort like the numbers they encode.
const SORTABLE_BASE32: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";

/// `micros` (12 digits, 60 bits) then 40 random bits (8 digits): unique without
/// coordination between nodes, and increasing with time, so that the archive's
/// per-archive unique index on stanza ids grows at its end instead of dirtying a random
/// page per message (profiled: random ids made index pages the bulk of the WAL).
fn stanza_id_at(micros: u64, random: u64) -> String {
    let digit = |value: u64, shift: u32| char::from(SORTABLE_BASE32[((value >> shift) & 31) as usize]);
    let mut id = String::with_capacity(20);
    id.extend((0..12).rev().map(|i| digit(micros, i * 5)));
    id.extend((0..8).rev().map(|i| digit(random, i * 5)));
    id
}

fn history_entry(row: &ArchivedRow) -> Option<waddle_muc::HistoryEntry> {
    let message = Element::from_bytes(row.payload.as_bytes(), ns::CLIENT).ok()?;
    Some(waddle_muc::HistoryEntry {
        stanza_id: row.stanza_id.clone(),
        from_nick: row.from_nick.clone().unwrap_or_default(),
        from_real: row.with_jid.clone(),
        message,
        stamp: stamp_of(row.stamp_micros),
    })
}

const NS_RETRACT: &str = "urn:xmpp:message-retract:1";

impl RoomState {
    /// Remembers (or forgets) where the session sending a presence to the room runs.
    fn learn_session(&mut self, el: &Element, conn_id: Option<u64>) {
        if el.name() != "presence" {
            return;
        }
        let Some(from) = el.attr("from").filter(|f| f.contains('/')) else { return };
        match (el.attr("type"), conn_id) {
            (None, Some(conn_id)) => {
                let addr = SessionAddr { node: crate::remote::conn_node(conn_id), conn_id };
                self.sessions.insert(from.to_owned(), addr);
            }
            (Some("unavailable"), _) => {
                self.sessions.remove(from);
            }
            _ => {}
        }
    }

    /// One serialization; the sessions whose node is known get it straight from here
    /// (batched per node), the others through their users' registry shards.
    fn broadcast(&self, stanza: &Element, to: &[String]) {
        match self.resolve(stanza, to) {
            Outgoing::Local(el, to) => self.ctx.deliver_to_each(&el, &to),
            Outgoing::Fanout { shared, known, unknown } => {
                if !unknown.is_empty() {
                    self.ctx.deliver_shared_to_jids(&unknown, Arc::clone(&shared), 0);
                }
                self.ctx.cluster.deliver_each(known, shared);
            }
            Outgoing::Emit(_) => {}
        }
    }

    async fn execute(&mut self, outs: Vec<Outbound>, stamp_micros: i64, myself: &ActorRef<RoomMsg>) {
        if self.publisher.is_some() {
            return self.execute_replicated(outs, stamp_micros, myself).await;
        }
        for out in outs {
            match out {
                Outbound::Stanza(el) => {
                    self.ctx.emit(el).await;
                }
                Outbound::Broadcast { stanza, to } => self.broadcast(&stanza, &to),
                Outbound::Archive(entry) => self.archive(entry, stamp_micros).await,
                other => self.execute_state(other, myself),
            }
        }
    }

    /// [`RoomState::execute`] with replication: the turn's archive write is proposed to
    /// the partition's log first, and what the turn sends is handed to the publisher to
    /// go out once that write is durable.
    async fn execute_replicated(&mut self, outs: Vec<Outbound>, stamp_micros: i64, myself: &ActorRef<RoomMsg>) {
        let mut turn = Turn { durable: None, refusal: None, sends: Vec::new() };
        for out in outs {
            match out {
                Outbound::Stanza(el) => turn.sends.push(Outgoing::Emit(el)),
                Outbound::Broadcast { stanza, to } => turn.sends.push(self.resolve(&stanza, &to)),
                Outbound::Archive(entry) => {
                    if self.ctx.config.archive.enabled {
                        turn.refusal = refusal_of(self.room.jid(), &entry);
                        turn.durable = self.propose_archive(entry, stamp_micros);
                    }
                }
                other => self.execute_state(other, myself),
            }
        }
        if turn.durable.is_none() && turn.sends.is_empty() {
            return;
        }
        if let Some(publisher) = &self.publisher {
            if publisher.send(turn).await.is_err() {
                tracing::error!(room = %self.room.jid(), "the room's publisher is gone");
            }
        }
    }

    /// Proposes a room message (and its retraction of an earlier one) to the log.
    fn propose_archive(
        &self,
        entry: waddle_muc::HistoryEntry,
        stamp_micros: i64,
    ) -> Option<futures_util::future::BoxFuture<'static, Result<(), crate::replication::DurableError>>> {
        let replication = self.ctx.replication()?;
        let (row, retracts) = self.archived_row(entry, stamp_micros);
        let room = row.archive.clone();
        let write = DurableOp::RoomMessage { location: self.location.clone(), row };
        let durable = replication.write_started(self.partition, &write);
        let Some(target) = retracts else { return Some(durable) };
        let retract = DurableOp::RoomRetract { location: self.location.clone(), room, target };
        let retracted = replication.write_started(self.partition, &retract);
        Some(Box::pin(async move {
            durable.await?;
            retracted.await
        }))
    }

    /// The room's own state changes of a turn (stored snapshot, end of the room).
    fn execute_state(&mut self, out: Outbound, myself: &ActorRef<RoomMsg>) {
        match out {
            Outbound::Persist => {
                let write = if self.room.config().persistent {
                    RoomWrite::Put {
                        snapshot: self.room.snapshot(),
                        listed_name: listing_of(&self.room).map(str::to_owned),
                    }
                } else if !self.ctx.cluster.alone() {
                    // A temporary room is kept too while it lives (unlisted): if its node
                    // fails, the room its occupants are rebuilt into on the new owner
                    // keeps its configuration and affiliations (a members-only or
                    // password-protected room must not come back open, nor ownerless).
                    RoomWrite::Put { snapshot: self.room.snapshot(), listed_name: None }
                } else {
                    RoomWrite::Delete
                };
                self.persist(write);
            }
            Outbound::Destroyed => {
                tracing::info!(room = %self.room.jid(), "room destroyed");
                // A temporary room that never wrote anything has nothing stored.
                if self.room.config().persistent || self.stored || self.persister.is_some() {
                    self.persist(RoomWrite::Delete);
                }
                myself.stop(None);
            }
            Outbound::Stanza(_) | Outbound::Broadcast { .. } | Outbound::Archive(_) => {}
        }
    }

    /// Where a broadcast goes, decided now (the room's knowledge of its sessions moves
    /// on while the publisher waits).
    fn resolve(&self, stanza: &Element, to: &[String]) -> Outgoing {
        if self.ctx.cluster.alone() {
            return Outgoing::Local(stanza.clone(), to.to_vec());
        }
        let shared = Arc::new(waddle_xml::Unaddressed::new(stanza, ns::CLIENT));
        let mut known = Vec::with_capacity(to.len());
        let mut unknown = Vec::new();
        for jid in to {
            match self.sessions.get(jid) {
                Some(addr) => known.push(*addr),
                None => unknown.push(jid.clone()),
            }
        }
        Outgoing::Fanout { shared, known, unknown }
    }

    /// The archive row of a reflected message, and the stanza id it retracts if any.
    fn archived_row(&self, entry: waddle_muc::HistoryEntry, stamp_micros: i64) -> (ArchivedRow, Option<String>) {
        let room = self.room.jid().to_owned();
        let mut payload_el = entry.message.clone();
        payload_el.remove_attr("to");
        let payload = String::from_utf8_lossy(&payload_el.to_bytes(ns::CLIENT)).into_owned();
        let body = entry.message.get_child("body", ns::CLIENT).map(Element::text);
        let retracts = entry.message.get_child("retract", NS_RETRACT).and_then(|r| r.attr("id")).map(str::to_owned);
        let row = ArchivedRow {
            stanza_id: entry.stanza_id,
            archive: room,
            with_jid: entry.from_real.split('/').next().unwrap_or_default().to_owned(),
            from_nick: Some(entry.from_nick),
            stamp_micros,
            payload,
            body,
            retracted: false,
        };
        (row, retracts)
    }

    /// Archives a reflected message after fan-out. Only the queueing is awaited (the
    /// commit is batched on the writer thread); while the archive's queue is full the
    /// room waits here, which bounds the memory a burst can take.
    async fn archive(&self, entry: waddle_muc::HistoryEntry, stamp_micros: i64) {
        if !self.ctx.config.archive.enabled {
            return;
        }
        let (row, retracts) = self.archived_row(entry, stamp_micros);
        let room = row.archive.clone();
        if let Err(e) = self.ctx.archive.append_queued(self.location.clone(), row).await {
            tracing::error!(room = %room, error = %e, "archive write failed");
        }
        if let Some(target) = retracts {
            let (archive, location) = (self.ctx.archive.clone(), self.location.clone());
            // Queued after the insert above, so it sees it.
            tokio::spawn(async move {
                if let Err(e) = archive.retract(location, &room, &target).await {
                    tracing::error!(room = %room, error = %e, "archive retraction failed");
                }
            });
        }
    }

    /// Runs after every message the room handles: allocates only when the listing changes.
    fn publish_listing(&mut self) {
        let listing = listing_of(&self.room);
        if self.listed.as_deref() != listing {
            let owned = listing.map(str::to_owned);
            self.ctx.muc.set_listing(self.room.jid(), owned.as_deref());
            self.listed = owned;
        }
    }

    /// Hands a write to the room's persister: writes reach the store in order, and a
    /// burst of changes is coalesced into its latest state.
    /// Ends a temporary room (its last occupant left, or nobody came back after it
    /// moved here): what was stored of it goes too, so the next room of that name is a
    /// new one.
    fn end_temporary(&mut self, myself: &ActorRef<RoomMsg>) {
        tracing::info!(room = %self.room.jid(), "temporary room ends: nobody is in it");
        if self.stored || self.persister.is_some() {
            self.persist(RoomWrite::Delete);
        }
        myself.stop(None);
    }

    fn persist(&mut self, write: RoomWrite) {
        let sender = self.persister.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(RoomWrite::Delete);
            tokio::spawn(run_persister(Arc::clone(&self.ctx), self.room.jid().to_owned(), rx));
            tx
        });
        sender.send_replace(write);
    }

    fn may_query_archive(&self, requester_bare: &str) -> bool {
        with_oracle(&self.ctx, self.binding.as_ref(), |o| self.room.may_read_archive(requester_bare, o))
    }

    /// XEP-0313 query on the room archive: answered from a separate task so a long
    /// query never stalls the room.
    async fn mam_query(&self, iq: Element) {
        let from = iq.attr("from").unwrap_or_default().to_owned();
        let bare = from.split('/').next().unwrap_or_default().to_owned();
        if !self.may_query_archive(&bare) {
            if let Some(err) = error_reply(&iq, "forbidden", None) {
                self.ctx.emit(err).await;
            }
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let location = self.location.clone();
        let room = self.room.jid().to_owned();
        let partition = self.partition;
        tokio::spawn(async move {
            if let Some(replication) = ctx.replication() {
                // Every acknowledged message is committed by the partition's leader: the
                // query is answered only by it, once applied (a room still running on a
                // node that lost the partition would answer from a stale copy).
                if !replication.ready(partition, crate::replication::READY_WAIT).await {
                    if let Some(err) = error_reply(&iq, "recipient-unavailable", Some("the room is moving; ask again"))
                    {
                        ctx.emit(err).await;
                    }
                    return;
                }
            }
            crate::mam::answer_query(&ctx, location, &room, &room, iq).await
        });
    }
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let location = location_of(args.binding.as_ref());
        let rebuilding = !args.ctx.cluster.alone();
        args.ctx.muc.record_ownership(args.room.jid(), args.ctx.cluster.epoch(), "serve");
        let mut state = RoomState {
            ctx: args.ctx,
            room: args.room,
            binding: args.binding,
            location,
            listed: None,
            persister: None,
            stored: args.stored,
            sessions: HashMap::new(),
            rebuilding,
            settled: !rebuilding,
            last_rejoin: std::time::Instant::now(),
            parked: Vec::new(),
            released: None,
            publisher: None,
            partition: args.partition,
        };
        if state.ctx.replication().is_some() {
            let (tx, rx) = tokio::sync::mpsc::channel(PUBLISHER_QUEUE);
            tokio::spawn(run_publisher(Arc::clone(&state.ctx), state.room.jid().to_owned(), rx));
            state.publisher = Some(tx);
        }
        if rebuilding {
            myself.send_after(REBUILD_QUIET, || RoomMsg::RebuildTick);
            myself.send_after(REBUILD_WINDOW, || RoomMsg::EndRebuild);
        }
        state.publish_listing();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(release) = state.released {
            match msg {
                RoomMsg::Stanza(el, conn_id) => state.hand_on(release, el, conn_id).await,
                RoomMsg::Rejoin(presence, conn_id) if release == Release::Forward => {
                    Box::pin(rejoin(&state.ctx, presence, conn_id, 1)).await;
                }
                _ => {}
            }
            return Ok(());
        }
        match msg {
            RoomMsg::Stanza(el, conn_id) => {
                if !state.ctx.cluster.alone() && matches!(state.ctx.cluster.place(state.partition), Place::Remote(_)) {
                    // Queued before this node adopted a ring that moved the room: its
                    // release follows; the new owner handles it, in its turn.
                    state.hand_on(Release::Forward, el, conn_id).await;
                    return Ok(());
                }
                if state.waits_for_rejoin(&el) {
                    state.parked.push((el, conn_id));
                    return Ok(());
                }
                handle_stanza(&myself, state, el, conn_id).await;
                return Ok(());
            }
            RoomMsg::Rejoin(presence, conn_id) => {
                let outcome = {
                    let RoomState { ctx, room, binding, .. } = &mut *state;
                    with_oracle(ctx, binding.as_ref(), |oracle| room.rejoin(&presence, oracle))
                };
                state.last_rejoin = std::time::Instant::now();
                match outcome {
                    Ok(()) => state.learn_session(&presence, Some(conn_id)),
                    Err(condition) => {
                        tracing::info!(room = %state.room.jid(), condition, "a rejoin was refused");
                        removed_from_room(&state.ctx, &presence, conn_id);
                    }
                }
                if !state.settled {
                    return Ok(());
                }
                let from = presence.attr("from").unwrap_or_default().to_owned();
                let (theirs, others): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut state.parked).into_iter().partition(|(el, _)| el.attr("from") == Some(&from));
                state.parked = others;
                for (el, conn_id) in theirs {
                    handle_stanza(&myself, state, el, conn_id).await;
                }
                return Ok(());
            }
            RoomMsg::RebuildTick => {
                if state.settled || !state.rebuilding {
                    return Ok(());
                }
                let quiet_for = state.last_rejoin.elapsed();
                if quiet_for < REBUILD_QUIET {
                    myself.send_after(REBUILD_QUIET - quiet_for, || RoomMsg::RebuildTick);
                    return Ok(());
                }
                state.settled = true;
                // In arrival order, what seated occupants sent; the others wait on.
                let (seated, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.parked)
                    .into_iter()
                    .partition(|(el, _)| el.attr("from").is_some_and(|from| state.room.is_occupant(from)));
                state.parked = waiting;
                for (el, conn_id) in seated {
                    handle_stanza(&myself, state, el, conn_id).await;
                }
                return Ok(());
            }
            RoomMsg::EndRebuild => {
                state.rebuilding = false;
                state.settled = true;
                for (el, conn_id) in std::mem::take(&mut state.parked) {
                    handle_stanza(&myself, state, el, conn_id).await;
                }
                if state.room.is_empty() && !state.room.config().persistent {
                    // Nobody came back to this temporary room (XEP-0045 §10.1.3).
                    state.end_temporary(&myself);
                }
                return Ok(());
            }
            RoomMsg::Release { forward } => {
                let release = if forward { Release::Forward } else { Release::Refuse };
                tracing::info!(room = %state.room.jid(), ?release, "room released (not owned here, or cut off)");
                state.released = Some(release);
                // New stanzas for the room start a new actor wherever it is owned; this
                // one hands on what waited for a rejoin, then what is still queued, in
                // order, and stops once its mailbox is empty.
                state.ctx.muc.forget(state.room.jid(), myself.get_id());
                for (el, conn_id) in std::mem::take(&mut state.parked) {
                    state.hand_on(release, el, conn_id).await;
                }
                if myself.drain().is_err() {
                    myself.stop(None);
                }
                return Ok(());
            }
            RoomMsg::Destroy(_) | RoomMsg::PolicyChanged | RoomMsg::ChannelUpdated(_) => {}
        }
        let (_, micros) = now_stamp();
        let outs = match msg {
            RoomMsg::Destroy(reason) => state.room.destroy(Some(&reason), None),
            RoomMsg::PolicyChanged => {
                let RoomState { ctx, room, binding, .. } = state;
                with_oracle(ctx, binding.as_ref(), |oracle| room.apply_policy_change(oracle))
            }
            RoomMsg::ChannelUpdated(channel) => {
                let binding = ChannelBinding::of(&channel);
                let outs = with_oracle(&state.ctx, Some(&binding), |oracle| {
                    state.room.apply_channel_settings(&channel_settings(&channel), oracle)
                });
                state.binding = Some(binding);
                outs
            }
            _ => return Ok(()),
        };
        finish_turn(&myself, state, outs, micros).await;
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<RoomMsg>, state: &mut RoomState) -> Result<(), ActorProcessingErr> {
        state.ctx.muc.record_ownership(state.room.jid(), state.ctx.cluster.epoch(), "stop");
        state.ctx.muc.set_listing(state.room.jid(), None);
        state.ctx.muc.forget(state.room.jid(), myself.get_id());
        Ok(())
    }
}

impl RoomState {
    /// A stanza that reached the room after it was released: routed on to the room's
    /// owner as its sender sent it (one hop spent), or refused.
    async fn hand_on(&self, release: Release, el: Element, conn_id: Option<u64>) {
        let from = el.attr("from").and_then(|f| waddle_jid::Jid::new(f).ok());
        match (release, from) {
            (Release::Forward, Some(jid)) => {
                let origin = Origin { jid, conn_id };
                Box::pin(self.ctx.route_hop(&origin, el, 1)).await;
            }
            _ => self.ctx.bounce(&el, "recipient-unavailable").await,
        }
    }

    /// Whether `el` is groupchat that waits while the room's occupants come back: any
    /// until they settled, then from someone the room does not seat yet.
    fn waits_for_rejoin(&self, el: &Element) -> bool {
        self.rebuilding
            && self.parked.len() < MAX_PARKED
            && el.name() == "message"
            && el.attr("type") == Some("groupchat")
            && (!self.settled || el.attr("from").is_some_and(|from| !self.room.is_occupant(from)))
    }
}

async fn handle_stanza(myself: &ActorRef<RoomMsg>, state: &mut RoomState, el: Element, conn_id: Option<u64>) {
    if !state.ctx.cluster.may_serve() {
        // Cut off from the cluster (or just woken from a pause): another node may own
        // the room by now, so nothing is accepted here; the sender may try again.
        state.ctx.bounce(&el, "recipient-unavailable").await;
        return;
    }
    let (stamp, micros) = now_stamp();
    state.learn_session(&el, conn_id);
    let is_mam = el.name() == "iq"
        && el.attr("to").is_some_and(|t| !t.contains('/'))
        && iq_payload(&el).is_some_and(|p| p.ns() == NS_MAM);
    if is_mam {
        state.mam_query(el).await;
        return;
    }
    let mut next_id = new_stanza_id;
    let outs = {
        let RoomState { ctx, room, binding, .. } = &mut *state;
        with_oracle(ctx, binding.as_ref(), |oracle| room.handle(&el, oracle, &stamp, &mut next_id))
    };
    finish_turn(myself, state, outs, micros).await;
}

async fn finish_turn(myself: &ActorRef<RoomMsg>, state: &mut RoomState, outs: Vec<Outbound>, micros: i64) {
    state.execute(outs, micros, myself).await;
    state.publish_listing();
    // While rebuilding, an empty room is one whose occupants are still on their way.
    if state.room.is_empty() && !state.room.config().persistent && !state.rebuilding {
        // A temporary room ends with its last occupant (XEP-0045 §10.1.3).
        state.end_temporary(myself);
    }
}

/// The node's implementation of the REST API's room hooks.
pub struct NodeRooms {
    pub ctx: std::sync::Weak<Ctx>,
    pub muc_domain: String,
}

impl waddle_api::RoomControl for NodeRooms {
    fn channel_created(
        &self,
        _waddle: &WaddleRecord,
        channel: &ChannelRecord,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>> {
        let channel = channel.clone();
        Box::pin(async move {
            let ctx = self.ctx.upgrade().ok_or_else(|| "node is shutting down".to_owned())?;
            create_channel_room(&ctx, &channel).await
        })
    }

    /// A running room takes the new name, topic and kind at once; a stopped one picks
    /// them up from the channel record when it next loads.
    fn channel_updated(&self, channel: &ChannelRecord) -> waddle_api::BoxFuture<'_, ()> {
        let channel = channel.clone();
        Box::pin(async move {
            let Some(ctx) = self.ctx.upgrade() else { return };
            tell_rooms(&ctx, RoomEvent::Updated(channel)).await;
        })
    }

    fn channel_deleted(
        &self,
        channel: &ChannelRecord,
        reason: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let channel = channel.clone();
        let reason = reason.to_owned();
        Box::pin(async move {
            if let Some(ctx) = self.ctx.upgrade() {
                tell_rooms(&ctx, RoomEvent::Deleted { channel, reason }).await;
            }
        })
    }

    fn room_jid(&self, channel: &ChannelRecord) -> String {
        format!("{}@{}", channel.id, self.muc_domain)
    }

    /// Membership or roles changed in a waddle: running rooms of its channels
    /// re-evaluate their occupants (those who lost access are removed with status 321).
    fn access_changed(&self, _waddle: &WaddleRecord, channels: &[ChannelRecord]) -> waddle_api::BoxFuture<'_, ()> {
        let rooms: Vec<String> = channels.iter().map(|c| self.room_jid(c)).collect();
        Box::pin(async move {
            let Some(ctx) = self.ctx.upgrade() else { return };
            tell_rooms(&ctx, RoomEvent::AccessChanged { rooms }).await;
        })
    }
}

/// A channel's room must learn of a change made through the REST API, on whichever node
/// runs it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RoomEvent {
    Updated(ChannelRecord),
    Deleted {
        channel: ChannelRecord,
        reason: String,
    },
    /// Membership or roles changed: these rooms re-evaluate their occupants.
    AccessChanged {
        rooms: Vec<String>,
    },
}

/// Applies `event` here and, on a cluster member, sends it to every other member with
/// the permission index it was made at (so a room re-evaluates with the change applied).
async fn tell_rooms(ctx: &Arc<Ctx>, event: RoomEvent) {
    if !ctx.cluster.alone() {
        let applied = ctx.permissions.applied_index();
        for node in ctx.cluster.members() {
            if node != ctx.cluster.me() {
                ctx.to_node(node, crate::remote::NodeOp::Rooms { event: event.clone(), applied });
            }
        }
    }
    apply_room_event(ctx, event, true).await;
}

/// What a room event does to the rooms running on this node; `origin`: the change was
/// made through this node (which retires a deleted channel's room JID).
pub async fn apply_room_event(ctx: &Arc<Ctx>, event: RoomEvent, origin: bool) {
    match event {
        RoomEvent::Updated(channel) => {
            if let Some(actor) = ctx.muc.running(&ctx.muc.room_jid(&channel.id)) {
                let _ = actor.cast(RoomMsg::ChannelUpdated(channel));
            }
        }
        RoomEvent::Deleted { channel, reason } => destroy_channel_room(ctx, &channel, &reason, origin).await,
        RoomEvent::AccessChanged { rooms } => {
            for room in rooms {
                if let Some(actor) = ctx.muc.running(&room) {
                    let _ = actor.cast(RoomMsg::PolicyChanged);
                }
            }
        }
    }
}

#[cfg(test)]
mod stanza_id_tests {
    use super::stanza_id_at;

    #[test]
    fn ids_sort_by_time_and_differ_by_randomness() {
        let a = stanza_id_at(1_700_000_000_000_000, 0);
        let b = stanza_id_at(1_700_000_000_000_001, 0);
        let c = stanza_id_at(1_700_000_000_000_001, 1);
        let later = stanza_id_at(1_800_000_000_000_000, u64::MAX);
        assert_eq!(a.len(), 20);
        assert!(a < b && b < c && c < later, "{a} {b} {c} {later}");
        assert!(a.bytes().all(|ch| ch.is_ascii_digit() || ch.is_ascii_lowercase()));
        assert_ne!(stanza_id_at(5, 1), stanza_id_at(5, 2));
    }
}
