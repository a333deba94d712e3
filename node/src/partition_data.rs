//! A partition's user data as the unit that moves between nodes: the accounts (and
//! everything keyed by them: tokens, rosters, offline messages, vCards) whose bare JIDs
//! hash to the partition, written to and read from one libSQL file
//! (`Store::export_users` / `import_users`). Rooms' archives are files per waddle
//! already; the control plane's records are on every node.

use std::path::Path;

use waddle_cluster::{partition_of, PartitionId};
use waddle_storage::StorageError;

use crate::ctx::Ctx;

/// The usernames of the accounts held here whose bare JIDs hash to `partition`.
pub async fn users_of(ctx: &Ctx, partition: PartitionId) -> Result<Vec<String>, StorageError> {
    let all = ctx.store.usernames().await?;
    Ok(all.into_iter().filter(|u| partition_of(&ctx.bare_jid(u)) == partition).collect())
}

/// Writes `partition`'s user data held here to a new file at `path`; how many accounts.
pub async fn export(ctx: &Ctx, partition: PartitionId, path: &Path) -> Result<u64, StorageError> {
    let users = users_of(ctx, partition).await?;
    ctx.store.export_users(users, path).await
}

/// Merges a partition file into this node's database; how many accounts.
pub async fn import(ctx: &Ctx, path: &Path) -> Result<u64, StorageError> {
    ctx.store.import_users(path).await
}

/// Drops `partition`'s user data here (it lives on another node now).
pub async fn forget(ctx: &Ctx, partition: PartitionId) -> Result<(), StorageError> {
    let users = users_of(ctx, partition).await?;
    ctx.store.delete_users(users).await
}
