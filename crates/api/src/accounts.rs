//! Where accounts and their tokens are kept. On a single node that is the node's own
//! [`Store`]; in a cluster an account belongs to the partition of its bare JID and is
//! held by that partition's owner, so the node supplies an implementation that asks the
//! owner. Every account and token access of the HTTP API and of the XMPP login path goes
//! through this trait.

use std::future::Future;
use std::pin::Pin;

use waddle_storage::{AccountRecord, StorageError, Store, TokenKind, TokenRecord};

use crate::tokens;

pub type AccountFuture<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'static>>;

pub trait Accounts: Send + Sync + 'static {
    fn account(&self, username: &str) -> AccountFuture<Option<AccountRecord>>;
    fn account_exists(&self, username: &str) -> AccountFuture<bool>;
    /// Fails with [`StorageError::Conflict`]-like errors exactly as the store does.
    fn create_account(&self, record: AccountRecord) -> AccountFuture<()>;
    fn delete_account(&self, username: &str) -> AccountFuture<()>;
    /// Issues a new token of `kind` for `username`; the token (only its hash is kept).
    fn issue_token(&self, kind: TokenKind, username: &str, expires_at: i64) -> AccountFuture<String>;
    /// The live token `presented`, if there is one.
    fn lookup_token(&self, kind: TokenKind, presented: &str, now: i64) -> AccountFuture<Option<TokenRecord>>;
}

/// Accounts in this node's database.
impl Accounts for Store {
    fn account(&self, username: &str) -> AccountFuture<Option<AccountRecord>> {
        let (store, username) = (self.clone(), username.to_owned());
        Box::pin(async move { store.account(&username).await })
    }

    fn account_exists(&self, username: &str) -> AccountFuture<bool> {
        let (store, username) = (self.clone(), username.to_owned());
        Box::pin(async move { store.account_exists(&username).await })
    }

    fn create_account(&self, record: AccountRecord) -> AccountFuture<()> {
        let store = self.clone();
        Box::pin(async move { store.create_account(record).await })
    }

    fn delete_account(&self, username: &str) -> AccountFuture<()> {
        let (store, username) = (self.clone(), username.to_owned());
        Box::pin(async move { store.delete_account(&username).await })
    }

    fn issue_token(&self, kind: TokenKind, username: &str, expires_at: i64) -> AccountFuture<String> {
        let (store, username) = (self.clone(), username.to_owned());
        Box::pin(async move {
            let token = tokens::new_token();
            store.insert_token(kind, tokens::hash_token(&token), &username, expires_at).await?;
            Ok(token)
        })
    }

    fn lookup_token(&self, kind: TokenKind, presented: &str, now: i64) -> AccountFuture<Option<TokenRecord>> {
        let (store, hash) = (self.clone(), tokens::hash_token(presented));
        Box::pin(async move { store.lookup_token(kind, hash, now).await })
    }
}
