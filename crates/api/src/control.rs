//! Where the control data lives: waddles, channels and permission tuples. On a single node
//! that is the node's own [`Store`]; in a cluster it is the Raft-replicated control plane,
//! which the node implements this trait over. Every waddle, channel and tuple access of the
//! HTTP API goes through this trait.
//!
//! Tuple changes report how they reach the in-memory permission index ([`Commit`]): the
//! local store leaves that to the caller ([`Commit::Applied`]), a replicated store applies
//! them through the node's replication feed, in log order, and names the log index the
//! caller must wait for ([`Commit::Replicated`]).

use std::future::Future;
use std::pin::Pin;

use waddle_storage::{ChannelRecord, StorageError, Store, WaddleRecord};

/// A boxed, owned future of a [`ControlStore`] operation.
pub type ControlFuture<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'static>>;

/// How a tuple change reaches the in-memory permission index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The change is durable; the caller applies it to memory itself.
    Applied,
    /// The change was committed at this log index; memory is updated by the replication
    /// feed in log order, and the caller waits until that index has been applied to it.
    Replicated(u64),
}

/// Waddles, channels and permission tuples. Errors are those of the [`Store`] methods of
/// the same names (`AlreadyExists`, `NotFound`, `Invalid`, ...), whatever the
/// implementation.
pub trait ControlStore: Send + Sync + 'static {
    /// Every permission tuple, in text form (`object#relation@subject`), sorted.
    fn tuples_all(&self) -> ControlFuture<Vec<String>>;

    /// Deletes the tuples of `delete`, then writes those of `write`, atomically (absent
    /// deletes and present writes are fine).
    fn change_tuples(&self, write: Vec<String>, delete: Vec<String>) -> ControlFuture<Commit>;

    /// Removes every tuple on `object` (`kind:id`) and every tuple naming it, or a userset
    /// of it, as subject. `known` is what the caller's memory holds of those: a local store
    /// deletes exactly these; a replicated store removes by pattern when the command is
    /// applied. Returns what was removed.
    fn delete_object(&self, object: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)>;

    /// Removes every tuple whose subject is `user:<username>`; `known` as for
    /// [`ControlStore::delete_object`]. Returns what was removed.
    fn remove_user(&self, username: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)>;

    /// The waddle with this id, if any.
    fn waddle(&self, id: &str) -> ControlFuture<Option<WaddleRecord>>;

    /// The waddles among `ids` that exist, oldest first (ties by id); unknown ids are
    /// skipped.
    fn waddles_by_ids(&self, ids: &[String]) -> ControlFuture<Vec<WaddleRecord>>;

    /// Creates a waddle; `AlreadyExists` if the id is taken.
    fn waddle_create(&self, waddle: &WaddleRecord) -> ControlFuture<()>;

    /// Replaces the name, description and owner of the waddle (`created_at` is kept);
    /// `NotFound` if there is no such waddle.
    fn waddle_update(&self, waddle: &WaddleRecord) -> ControlFuture<()>;

    /// Deletes the waddle and its channels at once; returns the deleted channels.
    /// `NotFound` if there is no such waddle (nothing is changed).
    fn waddle_delete(&self, id: &str) -> ControlFuture<Vec<ChannelRecord>>;

    /// The channel with this id, if any.
    fn channel(&self, id: &str) -> ControlFuture<Option<ChannelRecord>>;

    /// The channels of a waddle, by name then id (empty for an unknown waddle).
    fn channels(&self, waddle_id: &str) -> ControlFuture<Vec<ChannelRecord>>;

    /// Creates a channel unless its waddle already has `max` channels (then `Ok(false)` and
    /// nothing is created). `NotFound` if the waddle does not exist, `AlreadyExists` if the
    /// id or the name within the waddle is taken. Concurrent creations cannot exceed the
    /// limit.
    fn channel_create_limited(&self, channel: &ChannelRecord, max: u64) -> ControlFuture<bool>;

    /// Replaces the name, kind and topic of the channel (its waddle and creation time are
    /// kept). `NotFound` if there is no such channel, `AlreadyExists` if another channel of
    /// the waddle has that name.
    fn channel_update(&self, channel: &ChannelRecord) -> ControlFuture<()>;

    /// Deletes a channel; `NotFound` if there is no such channel.
    fn channel_delete(&self, id: &str) -> ControlFuture<()>;
}

/// Control data in this node's database: tuple changes are [`Commit::Applied`].
impl ControlStore for Store {
    fn tuples_all(&self) -> ControlFuture<Vec<String>> {
        let store = self.clone();
        Box::pin(async move { store.tuples_all().await })
    }

    fn change_tuples(&self, write: Vec<String>, delete: Vec<String>) -> ControlFuture<Commit> {
        let store = self.clone();
        Box::pin(async move {
            match (write.is_empty(), delete.is_empty()) {
                (true, true) => {}
                (false, true) => store.tuples_write_batch(&write).await?,
                (true, false) => store.tuples_delete_batch(&delete).await?,
                // Not one transaction on the local store; the API never mixes them.
                (false, false) => {
                    store.tuples_delete_batch(&delete).await?;
                    store.tuples_write_batch(&write).await?;
                }
            }
            Ok(Commit::Applied)
        })
    }

    fn delete_object(&self, _object: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let store = self.clone();
        Box::pin(async move {
            store.tuples_delete_batch(&known).await?;
            Ok((Commit::Applied, known))
        })
    }

    fn remove_user(&self, _username: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let store = self.clone();
        Box::pin(async move {
            store.tuples_delete_batch(&known).await?;
            Ok((Commit::Applied, known))
        })
    }

    fn waddle(&self, id: &str) -> ControlFuture<Option<WaddleRecord>> {
        let (store, id) = (self.clone(), id.to_owned());
        Box::pin(async move { store.waddle(&id).await })
    }

    fn waddles_by_ids(&self, ids: &[String]) -> ControlFuture<Vec<WaddleRecord>> {
        let (store, ids) = (self.clone(), ids.to_vec());
        Box::pin(async move { store.waddles_by_ids(&ids).await })
    }

    fn waddle_create(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        let (store, waddle) = (self.clone(), waddle.clone());
        Box::pin(async move { store.waddle_create(&waddle).await })
    }

    fn waddle_update(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        let (store, waddle) = (self.clone(), waddle.clone());
        Box::pin(async move { store.waddle_update(&waddle).await })
    }

    fn waddle_delete(&self, id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        let (store, id) = (self.clone(), id.to_owned());
        Box::pin(async move { store.waddle_delete(&id).await })
    }

    fn channel(&self, id: &str) -> ControlFuture<Option<ChannelRecord>> {
        let (store, id) = (self.clone(), id.to_owned());
        Box::pin(async move { store.channel(&id).await })
    }

    fn channels(&self, waddle_id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        let (store, waddle_id) = (self.clone(), waddle_id.to_owned());
        Box::pin(async move { store.channels(&waddle_id).await })
    }

    fn channel_create_limited(&self, channel: &ChannelRecord, max: u64) -> ControlFuture<bool> {
        let (store, channel) = (self.clone(), channel.clone());
        Box::pin(async move { store.channel_create_limited(&channel, max).await })
    }

    fn channel_update(&self, channel: &ChannelRecord) -> ControlFuture<()> {
        let (store, channel) = (self.clone(), channel.clone());
        Box::pin(async move { store.channel_update(&channel).await })
    }

    fn channel_delete(&self, id: &str) -> ControlFuture<()> {
        let (store, id) = (self.clone(), id.to_owned());
        Box::pin(async move { store.channel_delete(&id).await })
    }
}
