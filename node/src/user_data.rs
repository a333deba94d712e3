//! Users' data at their owner: accounts, tokens, rosters, offline messages, vCards.
//!
//! Every read and write of a user's data on the node that owns the user goes through
//! [`UserData`] (`Ctx::users`). Without replication it is the node's database. With
//! replication a write is a [`DurableOp`] in the user's partition log, applied to the
//! database of every replica: it returns once a majority of the replicas hold it and
//! this node has applied it (so the caller's next read sees it). Checks whose answer
//! the caller needs (an account that exists already, an offline store that is full) are
//! made against this node's database first, under the user's lock, so two writes for
//! one user never race between the check and the log. A read waits until this node
//! serves the user's partition with everything committed applied: right after a
//! failover the new owner answers only once it recovered the partition.

use std::time::Duration;

use waddle_storage::{AccountRecord, RosterRow, StorageError, TokenKind, TokenRecord};

use crate::ctx::Ctx;
use crate::replication::{DurableOp, Replication};

/// How long a read or write waits for a partition this node just took over.
const READY_WAIT: Duration = Duration::from_secs(10);

pub struct UserData<'a> {
    ctx: &'a Ctx,
}

impl Ctx {
    /// The data of users this node owns.
    pub fn users(&self) -> UserData<'_> {
        UserData { ctx: self }
    }
}

fn not_ready() -> StorageError {
    StorageError::Unavailable("the user's partition is not ready on this node".into())
}

impl UserData<'_> {
    fn replication(&self) -> Option<&Replication> {
        self.ctx.replication().map(|r| r.as_ref())
    }

    fn partition(&self, username: &str) -> waddle_cluster::PartitionId {
        waddle_cluster::partition_of(&self.ctx.bare_jid(username))
    }

    async fn ready(&self, partition: waddle_cluster::PartitionId) -> Result<(), StorageError> {
        match self.replication() {
            Some(replication) if !replication.ready(partition, READY_WAIT).await => Err(not_ready()),
            _ => Ok(()),
        }
    }

    /// Makes `op` durable in `username`'s partition and applies it here.
    async fn write(&self, replication: &Replication, username: &str, op: DurableOp) -> Result<(), StorageError> {
        let partition = self.partition(username);
        replication.write(partition, &op).await.map_err(|e| StorageError::Unavailable(format!("not durable: {e}")))?;
        replication.caught_up(partition).await;
        Ok(())
    }

    // ------------------------------------------------------------------ reads

    pub async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StorageError> {
        self.ready(self.partition(username)).await?;
        self.ctx.store.account(username).await
    }

    pub async fn account_exists(&self, username: &str) -> Result<bool, StorageError> {
        self.ready(self.partition(username)).await?;
        self.ctx.store.account_exists(username).await
    }

    /// A token of the partition `partition` (its prefix).
    pub async fn lookup_token(
        &self,
        partition: Option<waddle_cluster::PartitionId>,
        kind: TokenKind,
        hash: [u8; 32],
        now: i64,
    ) -> Result<Option<TokenRecord>, StorageError> {
        if let Some(partition) = partition {
            self.ready(partition).await?;
        }
        self.ctx.store.lookup_token(kind, hash, now).await
    }

    pub async fn roster(&self, username: &str) -> Result<(u64, Vec<RosterRow>), StorageError> {
        self.ready(self.partition(username)).await?;
        self.ctx.store.roster(username).await
    }

    pub async fn roster_item(&self, username: &str, contact: &str) -> Result<Option<RosterRow>, StorageError> {
        self.ready(self.partition(username)).await?;
        self.ctx.store.roster_item(username, contact).await
    }

    pub async fn vcard_get(&self, username: &str) -> Result<Option<String>, StorageError> {
        self.ready(self.partition(username)).await?;
        self.ctx.store.vcard_get(username).await
    }

    // ----------------------------------------------------------------- writes

    pub async fn create_account(&self, record: AccountRecord) -> Result<(), StorageError> {
        let Some(replication) = self.replication() else { return self.ctx.store.create_account(record).await };
        if record.username.is_empty() {
            return Err(StorageError::Invalid("empty username".into()));
        }
        let username = record.username.clone();
        let _user = self.ctx.user_lock(&username).await;
        if self.account_exists(&username).await? {
            return Err(StorageError::AlreadyExists);
        }
        self.write(replication, &username, DurableOp::CreateAccount { record }).await
    }

    pub async fn delete_account(&self, username: &str) -> Result<(), StorageError> {
        let Some(replication) = self.replication() else { return self.ctx.store.delete_account(username).await };
        let _user = self.ctx.user_lock(username).await;
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        self.write(replication, username, DurableOp::DeleteAccount { username: username.to_owned() }).await
    }

    pub async fn insert_token(
        &self,
        kind: TokenKind,
        hash: [u8; 32],
        username: &str,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        let Some(replication) = self.replication() else {
            return self.ctx.store.insert_token(kind, hash, username, expires_at).await;
        };
        let _user = self.ctx.user_lock(username).await;
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        let op = DurableOp::InsertToken { kind, hash: hash.to_vec(), username: username.to_owned(), expires_at };
        self.write(replication, username, op).await
    }

    /// Returns the roster's new version. Callers serialise a user's roster changes
    /// (`Ctx::roster_lock`).
    pub async fn roster_upsert(&self, username: &str, row: &RosterRow) -> Result<u64, StorageError> {
        let Some(replication) = self.replication() else { return self.ctx.store.roster_upsert(username, row).await };
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        let op = DurableOp::RosterUpsert { username: username.to_owned(), row: row.clone() };
        self.write(replication, username, op).await?;
        Ok(self.ctx.store.roster(username).await?.0)
    }

    pub async fn roster_remove(&self, username: &str, contact: &str) -> Result<u64, StorageError> {
        let Some(replication) = self.replication() else {
            return self.ctx.store.roster_remove(username, contact).await;
        };
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        let op = DurableOp::RosterRemove { username: username.to_owned(), contact: contact.to_owned() };
        self.write(replication, username, op).await?;
        Ok(self.ctx.store.roster(username).await?.0)
    }

    /// `Ok(false)` when the user's offline store is full.
    pub async fn offline_push(
        &self,
        username: &str,
        stanza_xml: &str,
        max_per_user: u32,
    ) -> Result<bool, StorageError> {
        let Some(replication) = self.replication() else {
            return self.ctx.store.offline_push(username, stanza_xml, max_per_user).await;
        };
        let _user = self.ctx.user_lock(username).await;
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        if self.ctx.store.offline_count(username).await? >= u64::from(max_per_user) {
            return Ok(false);
        }
        let op = DurableOp::OfflinePush {
            username: username.to_owned(),
            stanza: stanza_xml.to_owned(),
            max: max_per_user,
            op_id: Some(crate::muc::new_stanza_id()),
        };
        self.write(replication, username, op).await?;
        Ok(true)
    }

    /// Every offline message of `username`, oldest first, removed from the store.
    pub async fn offline_take(&self, username: &str) -> Result<Vec<String>, StorageError> {
        let Some(replication) = self.replication() else { return self.ctx.store.offline_take(username).await };
        let _user = self.ctx.user_lock(username).await;
        self.ready(self.partition(username)).await?;
        let queued = self.ctx.store.offline_peek_ops(username).await?;
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let op_ids: Vec<String> = queued.iter().filter_map(|(id, _)| id.clone()).collect();
        let count = u64::try_from(queued.len() - op_ids.len()).unwrap_or(u64::MAX);
        self.write(replication, username, DurableOp::OfflineDrop { username: username.to_owned(), count, op_ids })
            .await?;
        Ok(queued.into_iter().map(|(_, stanza)| stanza).collect())
    }

    pub async fn vcard_set(&self, username: &str, xml: &str) -> Result<(), StorageError> {
        let Some(replication) = self.replication() else { return self.ctx.store.vcard_set(username, xml).await };
        let _user = self.ctx.user_lock(username).await;
        if !self.account_exists(username).await? {
            return Err(StorageError::NotFound);
        }
        self.write(replication, username, DurableOp::VCardSet { username: username.to_owned(), xml: xml.to_owned() })
            .await
    }
}
