//! The control plane's error type.

use crate::network::TransportFailure;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane configuration: {0}")]
    Config(String),
    #[error("control plane storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The command cannot be proposed (it holds an undecodable command).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// A forwarded request may or may not have been applied: the transport lost the answer.
    #[error("transport: {0}")]
    Transport(#[from] TransportFailure),
    /// Another node answered with an error.
    #[error("remote node: {0}")]
    Remote(String),
    /// Another node answered something that does not fit the request.
    #[error("protocol: {0}")]
    Protocol(String),
    /// This node is not the leader (an internal signal that callers normally never see:
    /// requests are forwarded or retried).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the control plane is shut down")]
    Shutdown,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::db::DbError> for ControlError {
    fn from(e: crate::db::DbError) -> Self {
        ControlError::Storage(e.to_string())
    }
}

impl From<openraft::error::Fatal<u64>> for ControlError {
    fn from(e: openraft::error::Fatal<u64>) -> Self {
        match e {
            openraft::error::Fatal::Stopped => ControlError::Shutdown,
            other => ControlError::Raft(other.to_string()),
        }
    }
}
