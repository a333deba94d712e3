//! `waddle-authz`: a Zanzibar-style permission checker, free of I/O.
//!
//! This crate owns:
//! - the relation-tuple model ([`ObjectRef`], [`Subject`], [`Tuple`]) and its text form
//!   (`channel:c1#viewer@waddle:w1#member`), which is also the storage and wire form;
//! - the permission [`Schema`]: object types with directly assignable relations (and the
//!   subject types each allows) and computed permissions (unions of relations,
//!   permissions and `rel->perm` arrows); [`Schema::waddle`] is the product's;
//! - [`Authz`]: schema validation of writes, an in-memory forward and reverse tuple index,
//!   depth-limited checks ([`Authz::check`]) and reverse lookups
//!   ([`Authz::lookup_objects`]).
//!
//! It must never: do I/O (persisting tuples and replicating them is the caller's job,
//! which must apply a write here only after it is durable); cache check results (a write
//! or delete is visible to the very next check); or loop forever on cyclic usersets (every
//! check is bounded by a depth limit and a step budget).

mod error;
mod index;
mod model;
mod schema;

#[cfg(test)]
mod tests;

pub use error::AuthzError;
pub use index::{Authz, TupleFilter, DEFAULT_MAX_DEPTH, MAX_CHECK_STEPS};
pub use model::{is_valid_id, is_valid_name, ObjectRef, Subject, Tuple, MAX_ID_LEN, MAX_NAME_LEN, USER_TYPE};
pub use schema::{Schema, SchemaBuilder};
