//! [`Permissions`]: the node's permission checker, an in-memory [`Authz`] index kept in
//! step with the tuples of the [`ControlStore`].

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{watch, Mutex as AsyncMutex};
use waddle_authz::{Authz, AuthzError, ObjectRef, Schema, Subject, Tuple, TupleFilter, DEFAULT_MAX_DEPTH};
use waddle_storage::Store;

use crate::control::{Commit, ControlStore};
use crate::ApiError;

/// How long a replicated change may take to reach memory by default (see
/// [`Permissions::with_replication_timeout`]).
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The product schema over the tuples of the control store.
///
/// Checks read the in-memory index only (no I/O, no allocation in the common case).
/// Every mutation is validated against the schema and made durable in the control store
/// before memory changes, so memory is never ahead of it:
/// - with a local store ([`Commit::Applied`]) the mutation then applies itself to memory;
///   mutations are serialised, so memory and disk apply them in the same order;
/// - with a replicated store ([`Commit::Replicated`]) the node's replication feed applies
///   every committed change in log order ([`Permissions::apply_replicated`]) and the
///   mutation returns once memory has reached its log index.
///
/// There is no check cache: a change made through this node is visible to its very next
/// check (other nodes see it when their feed applies it).
pub struct Permissions {
    authz: RwLock<Authz>,
    control: Arc<dyn ControlStore>,
    /// Serialises mutations (held across the storage write, never during a check, never
    /// by the replication feed).
    writes: AsyncMutex<()>,
    /// The last log index applied to memory by the replication feed (0 with a local store).
    applied: watch::Sender<u64>,
    replication_timeout: Duration,
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permissions")
            .field("tuples", &self.read().len())
            .field("applied", &self.applied_index())
            .finish_non_exhaustive()
    }
}

/// Builds the index from tuple texts, skipping (with a warning) those that no longer parse
/// or fit the schema: tuples only grant, so skipping one can only deny.
fn build_index<I: IntoIterator<Item = String>>(texts: I) -> Authz {
    let mut authz = Authz::new(Schema::waddle(), DEFAULT_MAX_DEPTH);
    let mut skipped = 0usize;
    for text in texts {
        if let Err(e) = text.parse::<Tuple>().and_then(|tuple| authz.write(tuple)) {
            skipped += 1;
            tracing::warn!(tuple = %text, error = %e, "permissions: skipping an invalid stored tuple");
        }
    }
    tracing::info!(tuples = authz.len(), skipped, "permissions loaded");
    authz
}

fn texts(tuples: &[Tuple]) -> Vec<String> {
    tuples.iter().map(ToString::to_string).collect()
}

impl Permissions {
    /// [`Permissions::load_from`] the node's own database.
    pub async fn load(store: Store) -> Result<Permissions, ApiError> {
        Self::load_from(Arc::new(store)).await
    }

    /// Loads every tuple of `control` into `Authz::new(Schema::waddle(), 16)`. Tuples that
    /// no longer parse or fit the schema are skipped with a warning (tuples only grant, so
    /// skipping one can only deny). The applied index starts at 0.
    pub async fn load_from(control: Arc<dyn ControlStore>) -> Result<Permissions, ApiError> {
        let tuples = control.tuples_all().await?;
        Ok(Self::from_tuples(control, tuples, 0))
    }

    /// The index built from `tuples` (text form, invalid ones skipped with a warning), as
    /// of log index `applied`: for a replicated store whose state was read at that index.
    pub fn from_tuples<I: IntoIterator<Item = String>>(
        control: Arc<dyn ControlStore>,
        tuples: I,
        applied: u64,
    ) -> Permissions {
        Permissions {
            authz: RwLock::new(build_index(tuples)),
            control,
            writes: AsyncMutex::new(()),
            applied: watch::channel(applied).0,
            replication_timeout: DEFAULT_REPLICATION_TIMEOUT,
        }
    }

    /// How long a [`Commit::Replicated`] mutation waits for the feed to apply its index
    /// before failing with an internal error (the change itself is committed and will
    /// still apply).
    pub fn with_replication_timeout(mut self, timeout: Duration) -> Permissions {
        self.replication_timeout = timeout;
        self
    }

    /// The last log index the replication feed applied to memory (0 with a local store).
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Applies one committed change of the replicated store, at log `index`: deletes
    /// `delete`, then writes `write` (tuple texts; invalid ones are skipped with a warning;
    /// a removal by pattern comes as the explicit list of what it removed). The feed calls
    /// this for every applied entry in log order; an entry that changes no tuple may come
    /// with empty lists, which just advances the applied index. An index at or below the
    /// applied one was already applied (a rebuild covered it) and is ignored.
    pub fn apply_replicated(&self, index: u64, write: &[String], delete: &[String]) {
        if write.is_empty() && delete.is_empty() {
            self.applied.send_if_modified(|applied| {
                let newer = index > *applied;
                if newer {
                    *applied = index;
                }
                newer
            });
            return;
        }
        // The index is read and moved under the index's write lock, so a concurrent reset
        // cannot slip in between.
        let mut authz = self.write_guard();
        let current = self.applied_index();
        if index <= current {
            tracing::debug!(index, applied = current, "permissions: replicated change already applied");
            return;
        }
        for text in delete {
            match text.parse::<Tuple>() {
                Ok(tuple) => {
                    authz.delete(&tuple);
                }
                Err(e) => {
                    tracing::warn!(index, tuple = %text, error = %e, "permissions: skipping an invalid replicated delete")
                }
            }
        }
        for text in write {
            if let Err(e) = text.parse::<Tuple>().and_then(|tuple| authz.write(tuple)) {
                tracing::warn!(index, tuple = %text, error = %e, "permissions: skipping an invalid replicated tuple");
            }
        }
        self.applied.send_modify(|applied| *applied = (*applied).max(index));
    }

    /// Replaces the whole index with `tuples` as of log `index` (the replication feed fell
    /// behind, or a snapshot replaced the replicated state). Never moves the applied index
    /// back.
    pub fn reset_replicated<I: IntoIterator<Item = String>>(&self, index: u64, tuples: I) {
        let rebuilt = build_index(tuples);
        let mut authz = self.write_guard();
        *authz = rebuilt;
        self.applied.send_modify(|applied| *applied = (*applied).max(index));
    }

    /// Waits until the replication feed has applied log index `index` to memory (at most
    /// the replication timeout).
    pub async fn wait_replicated(&self, index: u64) -> Result<(), ApiError> {
        let mut rx = self.applied.subscribe();
        let waited = tokio::time::timeout(self.replication_timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            // The sender lives in `self`: it cannot be dropped while we borrow it.
            Ok(false) => Err(ApiError::Internal("the permission index is gone".into())),
            Err(_) => Err(ApiError::Internal(format!(
                "a permission change committed at index {index} did not reach memory within {:?} (applied: {})",
                self.replication_timeout,
                self.applied_index()
            ))),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Authz> {
        self.authz.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, Authz> {
        self.authz.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `user` (a local username) has `permission` on `object`. Any error (unknown
    /// type or permission, depth limit) denies, with a warning.
    pub fn check(&self, object: &ObjectRef, permission: &str, user: &str) -> bool {
        match self.read().check(object, permission, user) {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(%object, permission, user, error = %e, "permission check failed: denying");
                false
            }
        }
    }

    /// Like [`Permissions::check`], but reports errors (for callers that must tell an
    /// unknown permission from a denial).
    pub fn try_check(&self, object: &ObjectRef, permission: &str, user: &str) -> Result<bool, AuthzError> {
        self.read().check(object, permission, user)
    }

    /// Validates `tuple` against the schema, persists it, then applies it in memory.
    /// Writing an existing tuple is fine.
    pub async fn write(&self, tuple: Tuple) -> Result<(), ApiError> {
        self.write_all(vec![tuple]).await
    }

    /// Writes several tuples: all are validated first (nothing is written if one is
    /// invalid), persisted at once, then applied in memory.
    pub async fn write_all(&self, tuples: Vec<Tuple>) -> Result<(), ApiError> {
        let _serial = self.writes.lock().await;
        {
            let authz = self.read();
            for tuple in &tuples {
                authz.validate(tuple)?;
            }
        }
        match self.control.change_tuples(texts(&tuples), Vec::new()).await? {
            Commit::Applied => {
                let mut authz = self.write_guard();
                for tuple in tuples {
                    authz.write(tuple)?;
                }
                Ok(())
            }
            Commit::Replicated(index) => self.wait_replicated(index).await,
        }
    }

    /// Removes `tuple` from storage, then from memory (absent tuples are fine).
    pub async fn delete(&self, tuple: &Tuple) -> Result<(), ApiError> {
        self.delete_all(std::slice::from_ref(tuple)).await
    }

    /// Removes several tuples: from storage at once, then from memory.
    pub async fn delete_all(&self, tuples: &[Tuple]) -> Result<(), ApiError> {
        if tuples.is_empty() {
            return Ok(());
        }
        let _serial = self.writes.lock().await;
        match self.control.change_tuples(Vec::new(), texts(tuples)).await? {
            Commit::Applied => {
                let mut authz = self.write_guard();
                for tuple in tuples {
                    authz.delete(tuple);
                }
                Ok(())
            }
            Commit::Replicated(index) => self.wait_replicated(index).await,
        }
    }

    /// Removes every tuple on `object` and every tuple naming it (or a userset of it) as
    /// subject: from storage at once, then from memory. A replicated store removes what
    /// its state holds when the removal applies, including tuples written through other
    /// nodes that this one has not seen yet.
    pub async fn delete_object(&self, object: &ObjectRef) -> Result<(), ApiError> {
        let _serial = self.writes.lock().await;
        let known = self.read().tuples_of_object(object);
        match self.control.delete_object(object.to_string(), texts(&known)).await? {
            (Commit::Applied, _) => {
                self.write_guard().delete_object(object);
                Ok(())
            }
            (Commit::Replicated(index), _) => self.wait_replicated(index).await,
        }
    }

    /// Removes every tuple that grants something directly to `username` (`…@user:<name>`),
    /// from storage then memory, and returns them. Call it when an account is deleted, so
    /// that a later account of the same name inherits nothing. Waddles the user owned keep
    /// their record (with `owner` set) but lose their owner role: deal with those first.
    pub async fn remove_user(&self, username: &str) -> Result<Vec<Tuple>, ApiError> {
        let filter = TupleFilter { subject: Some(Subject::user(username)), ..TupleFilter::default() };
        let _serial = self.writes.lock().await;
        let known = self.read().list(&filter);
        match self.control.remove_user(username.to_owned(), texts(&known)).await? {
            (Commit::Applied, _) => {
                let mut authz = self.write_guard();
                for tuple in &known {
                    authz.delete(tuple);
                }
                Ok(known)
            }
            (Commit::Replicated(index), removed) => {
                self.wait_replicated(index).await?;
                let mut removed: Vec<Tuple> = removed.iter().filter_map(|text| text.parse().ok()).collect();
                removed.sort();
                Ok(removed)
            }
        }
    }

    /// The tuples matching `filter`, sorted.
    pub fn list(&self, filter: &TupleFilter) -> Vec<Tuple> {
        self.read().list(filter)
    }

    /// The ids (sorted) of objects of `kind` on which `user` has `permission`. Errors
    /// (unknown type or permission) give an empty list, with a warning.
    pub fn lookup_objects(&self, kind: &str, permission: &str, user: &str) -> Vec<String> {
        match self.read().lookup_objects(kind, permission, user) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(kind, permission, user, error = %e, "permission lookup failed");
                Vec::new()
            }
        }
    }

    /// Whether the schema defines `permission` (a relation or a permission) on `kind`.
    pub fn has_permission(&self, kind: &str, permission: &str) -> bool {
        self.read().schema().has_permission(kind, permission)
    }
}
