//! The control plane's wire frames: what one node sends another through [`RaftTransport`].
//!
//! A frame is JSON `{"v": 1, "rpc": ...}` (request) or `{"v": 1, "reply": ...}` (reply). The
//! version is checked before anything else: a frame from a node speaking another version, or
//! bytes that are not a frame at all, are logged at error level and answered with
//! [`ControlReply::BadFrame`], never dropped, so the sender sees why instead of timing out.
//!
//! [`RaftTransport`]: crate::RaftTransport

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, Entry, NodeRecord};
use crate::TypeConfig;

/// The frame format this build speaks.
pub const RPC_VERSION: u16 = 1;

/// A request from one control-plane node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwarding a proposal to the leader.
    ClientWrite(Entry),
    /// A node asking to be added to the cluster. `forwarded` is set when a non-leader relays
    /// it to the leader, so it is relayed at most once.
    Join {
        node: NodeRecord,
        forwarded: bool,
    },
    /// Remove a node from the cluster (sent to the leader; relayed at most once likewise).
    Remove {
        id: u64,
        forwarded: bool,
    },
}

/// The answer to a [`ControlRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlReply {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// A forwarded proposal was committed and applied on the leader at `index`.
    Written {
        index: u64,
        result: CommandResult,
    },
    /// The node is in the cluster; its `Up` record was committed at `index`.
    Joined {
        index: u64,
        voter: bool,
    },
    /// The node is out of the cluster; its removal was committed at `index`.
    Removed {
        index: u64,
    },
    /// This node is not the leader (and did not relay); try the leader if known.
    NotLeader {
        leader: Option<u64>,
        leader_addr: Option<String>,
    },
    /// Understood but failed (shutting down, a Raft error, a timeout...).
    Failed(String),
    /// The request was not a frame this node can read.
    BadFrame(String),
}

#[derive(Serialize)]
struct RequestOut<'a> {
    v: u16,
    rpc: &'a ControlRpc,
}

#[derive(Deserialize)]
struct RequestIn {
    rpc: ControlRpc,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    v: u16,
    reply: &'a ControlReply,
}

#[derive(Deserialize)]
struct ReplyIn {
    reply: ControlReply,
}

/// Only the version, read first so a newer frame's body is never misread.
#[derive(Deserialize)]
struct VersionOnly {
    v: u16,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    #[error("frame version {0} (this node speaks {RPC_VERSION})")]
    Version(u16),
}

fn check_version(bytes: &[u8]) -> Result<(), FrameError> {
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| FrameError::Undecodable(e.to_string()))?;
    if v.v != RPC_VERSION {
        return Err(FrameError::Version(v.v));
    }
    Ok(())
}

/// Serializes a request frame. Serializing these types cannot fail (no maps with non-string
/// keys, no failing `Serialize` impls); an empty frame would be answered with `BadFrame`.
pub fn encode_request(rpc: &ControlRpc) -> Vec<u8> {
    serde_json::to_vec(&RequestOut { v: RPC_VERSION, rpc }).unwrap_or_default()
}

pub fn decode_request(bytes: &[u8]) -> Result<ControlRpc, FrameError> {
    check_version(bytes)?;
    serde_json::from_slice::<RequestIn>(bytes).map(|r| r.rpc).map_err(|e| FrameError::Undecodable(e.to_string()))
}

pub fn encode_reply(reply: &ControlReply) -> Vec<u8> {
    serde_json::to_vec(&ReplyOut { v: RPC_VERSION, reply }).unwrap_or_default()
}

pub fn decode_reply(bytes: &[u8]) -> Result<ControlReply, FrameError> {
    check_version(bytes)?;
    serde_json::from_slice::<ReplyIn>(bytes).map(|r| r.reply).map_err(|e| FrameError::Undecodable(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_carry_their_version() -> Result<(), FrameError> {
        let bytes = encode_request(&ControlRpc::Remove { id: 4, forwarded: false });
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with(r#"{"v":1,"#), "{text}");
        assert!(matches!(decode_request(&bytes)?, ControlRpc::Remove { id: 4, forwarded: false }));

        let bytes = encode_reply(&ControlReply::Joined { index: 9, voter: true });
        assert!(matches!(decode_reply(&bytes)?, ControlReply::Joined { index: 9, voter: true }));
        Ok(())
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        assert!(matches!(
            decode_request(br#"{"v":2,"rpc":{"Remove":{"id":1,"forwarded":false}}}"#),
            Err(FrameError::Version(2))
        ));
        assert!(matches!(decode_request(b"\x00\x01garbage"), Err(FrameError::Undecodable(_))));
        assert!(matches!(decode_request(br#"{"v":1,"rpc":{"Nope":1}}"#), Err(FrameError::Undecodable(_))));
        assert!(matches!(decode_reply(br#"{"reply":{"Removed":{"index":1}}}"#), Err(FrameError::Undecodable(_))));
    }
}
