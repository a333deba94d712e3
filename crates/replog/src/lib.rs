//! waddle's per-partition replicated log.

pub mod engine;
pub mod store;
pub mod types;

pub use store::{LogStore, MetaUpdate, PartitionMeta, StoreError};
pub use types::*;
