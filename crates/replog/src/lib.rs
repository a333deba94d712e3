//! waddle's per-partition replicated log.

pub mod api;
pub mod engine;
mod replicator;
pub mod store;
pub mod types;

pub use api::*;
pub use replicator::Replicator;
pub use store::{LogStore, MetaUpdate, PartitionMeta, StoreError};
pub use types::*;
