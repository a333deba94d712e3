//! [`Permissions`]: the node's permission checker, an in-memory [`Authz`] index kept in
//! step with the tuples in storage.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Mutex as AsyncMutex;
use waddle_authz::{Authz, AuthzError, ObjectRef, Schema, Subject, Tuple, TupleFilter, DEFAULT_MAX_DEPTH};
use waddle_storage::Store;

use crate::ApiError;

/// The product schema over the stored tuples.
///
/// Checks read the in-memory index only (no I/O, no allocation in the common case).
/// Every mutation is validated against the schema, made durable in storage, and only then
/// applied in memory, so a crash never leaves memory ahead of disk; mutations are
/// serialised, so memory and disk apply them in the same order. There is no check cache:
/// a committed change is visible to the very next check.
pub struct Permissions {
    authz: RwLock<Authz>,
    store: Store,
    /// Serialises mutations (held across the storage write, never during a check).
    writes: AsyncMutex<()>,
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permissions").field("tuples", &self.read().len()).finish_non_exhaustive()
    }
}

impl Permissions {
    /// Loads every stored tuple into `Authz::new(Schema::waddle(), 16)`. Stored tuples that
    /// no longer parse or fit the schema are skipped with a warning (tuples only grant, so
    /// skipping one can only deny).
    pub async fn load(store: Store) -> Result<Permissions, ApiError> {
        let mut authz = Authz::new(Schema::waddle(), DEFAULT_MAX_DEPTH);
        let mut skipped = 0usize;
        for text in store.tuples_all().await? {
            match text.parse::<Tuple>().and_then(|tuple| authz.write(tuple)) {
                Ok(_) => {}
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(tuple = %text, error = %e, "permissions: skipping an invalid stored tuple");
                }
            }
        }
        tracing::info!(tuples = authz.len(), skipped, "permissions loaded");
        Ok(Permissions { authz: RwLock::new(authz), store, writes: AsyncMutex::new(()) })
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
    /// invalid), persisted in one transaction, then applied in memory.
    pub async fn write_all(&self, tuples: Vec<Tuple>) -> Result<(), ApiError> {
        let _serial = self.writes.lock().await;
        {
            let authz = self.read();
            for tuple in &tuples {
                authz.validate(tuple)?;
            }
        }
        let texts: Vec<String> = tuples.iter().map(ToString::to_string).collect();
        self.store.tuples_write_batch(&texts).await?;
        let mut authz = self.write_guard();
        for tuple in tuples {
            authz.write(tuple)?;
        }
        Ok(())
    }

    /// Removes `tuple` from storage, then from memory (absent tuples are fine).
    pub async fn delete(&self, tuple: &Tuple) -> Result<(), ApiError> {
        self.delete_all(std::slice::from_ref(tuple)).await
    }

    /// Removes several tuples: from storage in one transaction, then from memory.
    pub async fn delete_all(&self, tuples: &[Tuple]) -> Result<(), ApiError> {
        if tuples.is_empty() {
            return Ok(());
        }
        let _serial = self.writes.lock().await;
        let texts: Vec<String> = tuples.iter().map(ToString::to_string).collect();
        self.store.tuples_delete_batch(&texts).await?;
        let mut authz = self.write_guard();
        for tuple in tuples {
            authz.delete(tuple);
        }
        Ok(())
    }

    /// Removes every tuple on `object` and every tuple naming it (or a userset of it) as
    /// subject: from storage in one transaction, then from memory.
    pub async fn delete_object(&self, object: &ObjectRef) -> Result<(), ApiError> {
        let _serial = self.writes.lock().await;
        let tuples = self.read().tuples_of_object(object);
        if tuples.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = tuples.iter().map(ToString::to_string).collect();
        self.store.tuples_delete_batch(&texts).await?;
        self.write_guard().delete_object(object);
        Ok(())
    }

    /// Removes every tuple that grants something directly to `username` (`…@user:<name>`),
    /// from storage then memory, and returns them. Call it when an account is deleted, so
    /// that a later account of the same name inherits nothing. Waddles the user owned keep
    /// their record (with `owner` set) but lose their owner role: deal with those first.
    pub async fn remove_user(&self, username: &str) -> Result<Vec<Tuple>, ApiError> {
        let filter = TupleFilter { subject: Some(Subject::user(username)), ..TupleFilter::default() };
        let _serial = self.writes.lock().await;
        let tuples = self.read().list(&filter);
        if tuples.is_empty() {
            return Ok(tuples);
        }
        let texts: Vec<String> = tuples.iter().map(ToString::to_string).collect();
        self.store.tuples_delete_batch(&texts).await?;
        let mut authz = self.write_guard();
        for tuple in &tuples {
            authz.delete(tuple);
        }
        Ok(tuples)
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
