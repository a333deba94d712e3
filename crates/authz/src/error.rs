//! [`AuthzError`]: why a schema, a tuple or a check was refused.

/// A permission-model failure.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// The object type is not defined by the schema.
    #[error("unknown object type {0:?}")]
    UnknownType(String),
    /// The type has no relation (directly assignable) of that name.
    #[error("type {kind:?} has no relation {relation:?}")]
    UnknownRelation {
        /// Object type.
        kind: String,
        /// Relation asked for.
        relation: String,
    },
    /// The type has neither a relation nor a permission of that name.
    #[error("type {kind:?} has no relation or permission {permission:?}")]
    UnknownPermission {
        /// Object type.
        kind: String,
        /// Permission asked for.
        permission: String,
    },
    /// The schema does not allow this kind of subject on the relation.
    #[error("subject {subject} is not allowed on {kind}#{relation}")]
    SubjectNotAllowed {
        /// Object type.
        kind: String,
        /// Relation written to.
        relation: String,
        /// The refused subject, in text form.
        subject: String,
    },
    /// The check recursed deeper than the configured limit (a cyclic or pathologically
    /// deep userset chain), or exhausted its work budget.
    #[error("permission check exceeded the depth limit of {0}")]
    DepthExceeded(u32),
    /// Malformed text (object, subject, tuple, name or schema expression).
    #[error("parse error: {0}")]
    Parse(String),
}
