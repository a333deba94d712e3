//! What the control plane replicates: the log entry envelope, its commands and their results,
//! and the records those commands write.
//!
//! Everything here crosses the wire and sits in the on-disk log, so it is plain serde data.
//! The envelope carries a version (`v`) so that a node running older code, handed an entry
//! written by newer code, refuses it loudly instead of misreading it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The entry format this build writes and understands.
pub const ENTRY_VERSION: u16 = 1;

/// A member of the cluster as the control plane records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    /// Where the cluster transport reaches this node (also the address openraft keeps in its
    /// membership, so replication can find the node before the record itself is applied).
    pub cluster_addr: String,
    /// The node's HTTP API, for redirects and tooling.
    pub http_addr: String,
    pub state: NodeState,
    /// Whether the node votes in the control plane's Raft group; the others are learners that
    /// still receive every entry.
    pub voter: bool,
    /// The log index that last wrote this record (set when applied; ignored in proposals).
    #[serde(default)]
    pub version: u64,
}

/// A node's lifecycle as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Added as a learner, still catching up.
    Joining,
    /// Caught up and serving.
    Up,
    /// Being drained before removal.
    Leaving,
    /// Known but not serving (declared dead by an operator or the leader).
    Down,
}

/// The partition ring: which nodes hold each partition. Computed by the leader elsewhere and
/// proposed whole; the control plane only orders the tables by epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    pub epoch: u64,
    /// `replicas[p]` lists the node ids holding partition `p`, preferred first.
    pub replicas: Vec<Vec<u64>>,
    /// `learners[p]` lists the nodes being sent partition `p`'s log before they hold it
    /// (empty: none anywhere).
    #[serde(default)]
    pub learners: Vec<Vec<u64>>,
}

/// A permission tuple in Zanzibar form: `object#relation@subject`, e.g. `waddle:w1`, `member`,
/// `user:alice` or the userset `waddle:w1#member`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tuple {
    pub object: String,
    pub relation: String,
    pub subject: String,
}

impl Tuple {
    pub fn new(object: impl Into<String>, relation: impl Into<String>, subject: impl Into<String>) -> Self {
        Self { object: object.into(), relation: relation.into(), subject: subject.into() }
    }
}

/// A small replicated document (a waddle, a channel, a room's configuration...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub body: serde_json::Value,
    /// The log index that last wrote this record; the compare-and-set token.
    pub version: u64,
}

/// A change to the control state. Commands that remove by pattern (`DeleteObject`,
/// `RemoveUser`) exist because a client's read-then-delete races with writes made through
/// other nodes; the state machine evaluates the pattern at apply time instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Add a node or replace its record (idempotent: a restarted node re-joining is fine).
    AddNode(NodeRecord),
    /// Refused if the node is unknown.
    SetNodeState { id: u64, state: NodeState },
    /// Forget a node (no-op if unknown).
    RemoveNode { id: u64 },
    /// Refused unless `epoch` is greater than the current table's.
    SetPartitionMap(PartitionTable),
    /// Deletes then writes, atomically.
    WriteTuples { write: Vec<Tuple>, delete: Vec<Tuple> },
    /// Every tuple whose object is `object`, and every tuple whose subject is `object` or a
    /// userset of it (`object#...`). The result lists what was removed.
    DeleteObject { object: String },
    /// Every tuple whose subject is `user:<user>` (`user` is the bare name). The result lists
    /// what was removed.
    RemoveUser { user: String },
    /// Compare-and-set write: `expected_version` `Some(0)` means "must not exist",
    /// `Some(v)` "must be at version v", `None` writes unconditionally.
    PutRecord { kind: String, id: String, body: serde_json::Value, expected_version: Option<u64> },
    /// Delete a record (no-op if absent).
    DeleteRecord { kind: String, id: String },
    /// All or nothing: if any command is refused or conflicts, none takes effect.
    Batch(Vec<Command>),
    /// An entry this build could not decode (a newer entry version, or a command it does not
    /// know). Never proposed by this code; applying it is refused loudly. Holds the raw JSON so
    /// that a node relaying or storing the entry keeps it byte-for-byte meaningful.
    #[serde(skip)]
    Undecodable(serde_json::Value),
}

impl Command {
    /// Whether this is, or a batch holds, an [`Command::Undecodable`]: such a command can be
    /// relayed as received but never proposed (a nested one cannot even be serialized).
    pub fn has_undecodable(&self) -> bool {
        match self {
            Command::Undecodable(_) => true,
            Command::Batch(cmds) => cmds.iter().any(Command::has_undecodable),
            _ => false,
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied at this log index.
    Ok { index: u64 },
    /// A compare-and-set failed; `current_version` is 0 if the record does not exist.
    Conflict { current_version: u64 },
    /// Applied; these tuples were removed (from `DeleteObject`, `RemoveUser`, or a batch
    /// holding them).
    Removed(Vec<Tuple>),
    /// Not applied, and why.
    Refused(String),
}

impl CommandResult {
    /// Whether the command took effect.
    pub fn is_applied(&self) -> bool {
        matches!(self, CommandResult::Ok { .. } | CommandResult::Removed(_))
    }
}

/// The log entry payload: a versioned envelope around a command.
///
/// Decoding never fails on an unknown version or an unknown command: the payload is kept as
/// [`Command::Undecodable`], so the log stays readable and the state machine can refuse that
/// one entry (loudly) rather than the whole node failing to load its log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub v: u16,
    pub cmd: Command,
}

impl Entry {
    /// Wraps a command in the current entry version.
    pub fn new(cmd: Command) -> Self {
        Self { v: ENTRY_VERSION, cmd }
    }
}

#[derive(Serialize)]
struct EntryOut<'a, T: Serialize> {
    v: u16,
    cmd: &'a T,
}

#[derive(Deserialize)]
struct EntryIn {
    v: u16,
    cmd: serde_json::Value,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.cmd {
            Command::Undecodable(raw) => EntryOut { v: self.v, cmd: raw }.serialize(serializer),
            cmd => EntryOut { v: self.v, cmd }.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = EntryIn::deserialize(deserializer)?;
        let cmd = if raw.v == ENTRY_VERSION {
            match serde_json::from_value::<Command>(raw.cmd.clone()) {
                Ok(cmd) => cmd,
                Err(_) => Command::Undecodable(raw.cmd),
            }
        } else {
            Command::Undecodable(raw.cmd)
        };
        Ok(Entry { v: raw.v, cmd })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() -> Result<(), serde_json::Error> {
        let e = Entry::new(Command::WriteTuples {
            write: vec![Tuple::new("waddle:w1", "member", "user:a")],
            delete: vec![],
        });
        let bytes = serde_json::to_vec(&e)?;
        assert_eq!(serde_json::from_slice::<Entry>(&bytes)?, e);
        Ok(())
    }

    #[test]
    fn unknown_version_or_command_decodes_as_undecodable_and_reencodes_verbatim() -> Result<(), serde_json::Error> {
        let text = r#"{"v":7,"cmd":{"Frobnicate":{"x":1}}}"#;
        let e: Entry = serde_json::from_str(text)?;
        assert_eq!(e.v, 7);
        assert!(matches!(e.cmd, Command::Undecodable(_)));
        assert_eq!(serde_json::to_value(&e)?, serde_json::from_str::<serde_json::Value>(text)?);

        let e: Entry = serde_json::from_str(r#"{"v":1,"cmd":{"Frobnicate":{}}}"#)?;
        assert!(matches!(e.cmd, Command::Undecodable(_)));
        Ok(())
    }
}
