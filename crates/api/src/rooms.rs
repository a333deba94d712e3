//! [`RoomControl`]: how the REST API tells the XMPP side that channels (and therefore MUC
//! rooms) appear, change and disappear. The node implements it; [`NoRooms`] is the
//! I/O-free stand-in for tests and tools.

use std::future::Future;
use std::pin::Pin;

use waddle_storage::{ChannelRecord, WaddleRecord};

/// A boxed, sendable future (what [`RoomControl`] methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The MUC side of channel lifecycle events.
pub trait RoomControl: Send + Sync + 'static {
    /// A channel was created: create and configure its MUC room (persistent, members-only;
    /// announcement → moderated). Returns the room JID. On `Err` the API rolls the channel
    /// back and answers 500.
    fn channel_created(&self, waddle: &WaddleRecord, channel: &ChannelRecord) -> BoxFuture<'_, Result<String, String>>;

    /// A channel was deleted: destroy its room (occupants get the destroy notice, status
    /// 332 per the node).
    fn channel_deleted(&self, channel: &ChannelRecord, reason: &str) -> BoxFuture<'_, ()>;

    /// The room JID of a channel (no I/O).
    fn room_jid(&self, channel: &ChannelRecord) -> String;

    /// A channel's name, kind or topic changed (`PATCH /v1/channels/{id}`): update the
    /// room's configuration or subject. Default: nothing.
    fn channel_updated(&self, channel: &ChannelRecord) -> BoxFuture<'_, ()> {
        let _ = channel;
        Box::pin(async {})
    }

    /// Roles in a waddle changed (a member was added, promoted or removed): the rooms of
    /// these channels should re-evaluate their occupants' access (kick users who lost
    /// `view`, update affiliations and roles). Called after the change is durable and
    /// visible to checks. Default: nothing.
    fn access_changed(&self, waddle: &WaddleRecord, channels: &[ChannelRecord]) -> BoxFuture<'_, ()> {
        let _ = (waddle, channels);
        Box::pin(async {})
    }
}

/// A [`RoomControl`] without rooms: creation always succeeds, deletion does nothing, room
/// JIDs are `{channel_id}@muc.{domain}`.
#[derive(Clone, Debug)]
pub struct NoRooms {
    /// The XMPP domain (rooms live on `muc.<domain>`).
    pub domain: String,
}

impl NoRooms {
    /// Rooms on `muc.<domain>`.
    pub fn new(domain: impl Into<String>) -> NoRooms {
        NoRooms { domain: domain.into() }
    }
}

impl RoomControl for NoRooms {
    fn channel_created(
        &self,
        _waddle: &WaddleRecord,
        channel: &ChannelRecord,
    ) -> BoxFuture<'_, Result<String, String>> {
        let jid = self.room_jid(channel);
        Box::pin(async move { Ok(jid) })
    }

    fn channel_deleted(&self, _channel: &ChannelRecord, _reason: &str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn room_jid(&self, channel: &ChannelRecord) -> String {
        format!("{}@muc.{}", channel.id, self.domain)
    }
}
