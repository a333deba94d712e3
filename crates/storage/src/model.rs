//! Plain records exchanged with the store.

/// One SCRAM credential set (RFC 5802): never the password itself.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredScram {
    /// Hash name: `"SHA-1"` or `"SHA-256"`.
    pub hash: String,
    /// Per-account random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for StoredScram {
    // Keys are password-equivalent for SCRAM impersonation of the server: keep them out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredScram")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A local account.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountRecord {
    /// The JID localpart (already normalized by the caller).
    pub username: String,
    /// SCRAM-SHA-1 credentials.
    pub scram_sha1: StoredScram,
    /// SCRAM-SHA-256 credentials.
    pub scram_sha256: StoredScram,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// What a stored token may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TokenKind {
    /// Bearer token of the HTTP API (`POST /auth/session`).
    HttpSession,
    /// Short-lived token usable as the password of SASL PLAIN on the XMPP side.
    Xmpp,
}

impl TokenKind {
    pub(crate) fn code(self) -> i64 {
        match self {
            TokenKind::HttpSession => 1,
            TokenKind::Xmpp => 2,
        }
    }
}

/// The account a valid token belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// Owner of the token.
    pub username: String,
    /// Expiry, unix seconds (the token is valid while `now < expires_at`).
    pub expires_at: i64,
}

/// One roster row (RFC 6121 §2), including rows that only carry subscription state
/// (`in_roster == false`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RosterRow {
    /// Bare JID of the contact.
    pub contact: String,
    /// Handle the user gave the contact.
    pub name: Option<String>,
    /// Roster groups, in the order given.
    pub groups: Vec<String>,
    /// `none`, `to`, `from` or `both`.
    pub subscription: String,
    /// An outbound subscription request is pending (`ask="subscribe"`).
    pub ask_out: bool,
    /// An inbound subscription request is pending.
    pub pending_in: bool,
    /// The user pre-approved the contact's subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// The item is visible in the roster (as opposed to subscription state only).
    pub in_roster: bool,
}

pub(crate) const SUBSCRIPTIONS: [&str; 4] = ["none", "to", "from", "both"];

/// A waddle (a community: members, roles and channels).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaddleRecord {
    /// Opaque id (the HTTP API uses 12 characters of `a-z2-7`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Username of the owner.
    pub owner: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// A channel of a waddle (backed by a MUC room).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelRecord {
    /// Opaque id (also the MUC room's localpart).
    pub id: String,
    /// The waddle it belongs to.
    pub waddle_id: String,
    /// Name, unique within the waddle.
    pub name: String,
    /// `"text"` or `"announcement"`.
    pub kind: String,
    /// Topic (room subject).
    pub topic: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// The channel kinds a [`ChannelRecord`] may have.
pub const CHANNEL_KINDS: [&str; 2] = ["text", "announcement"];

impl WaddleRecord {
    /// Refuses a record with an empty id, name or owner (every store checks this before
    /// writing one).
    pub fn validate(&self) -> Result<(), crate::StorageError> {
        for (what, value) in [("waddle id", &self.id), ("waddle name", &self.name), ("waddle owner", &self.owner)] {
            if value.is_empty() {
                return Err(crate::StorageError::Invalid(format!("empty {what}")));
            }
        }
        Ok(())
    }
}

impl ChannelRecord {
    /// Refuses a record with an empty id, waddle or name, or an unknown kind.
    pub fn validate(&self) -> Result<(), crate::StorageError> {
        for (what, value) in
            [("channel id", &self.id), ("channel waddle id", &self.waddle_id), ("channel name", &self.name)]
        {
            if value.is_empty() {
                return Err(crate::StorageError::Invalid(format!("empty {what}")));
            }
        }
        if !CHANNEL_KINDS.contains(&self.kind.as_str()) {
            return Err(crate::StorageError::Invalid(format!("channel kind {:?}", self.kind)));
        }
        Ok(())
    }
}
