//! Objects, subjects and relation tuples, with their text forms.
//!
//! - object: `kind:id` (`waddle:w1`);
//! - subject: `user:alice`, an object `waddle:w1` (for relations such as `parent`), or a
//!   userset `waddle:w1#member` ("whoever has `member` on `waddle:w1`");
//! - tuple: `object#relation@subject` (`channel:c1#viewer@waddle:w1#member`).
//!
//! Type and relation names are `[a-z][a-z0-9_]{0,63}`; ids are `[A-Za-z0-9._-]{1,128}`.
//! None of `:`, `#` and `@` can occur inside a name or an id, so the text forms are
//! unambiguous and `Display` / `FromStr` round-trip exactly.

use std::fmt;
use std::str::FromStr;

use crate::AuthzError;

/// The subject type of end users; `user:<id>` is always [`Subject::User`].
pub const USER_TYPE: &str = "user";

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Longest type or relation name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `id` is a valid object or user id: `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Whether `name` is a valid type, relation or permission name: `[a-z][a-z0-9_]{0,63}`.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(crate) fn check_id(id: &str) -> Result<(), AuthzError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AuthzError::Parse(format!("invalid id {id:?} (expected 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ -)")))
    }
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), AuthzError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(AuthzError::Parse(format!("invalid {what} name {name:?} (expected [a-z][a-z0-9_]{{0,63}})")))
    }
}

/// An object: `kind:id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Object type (`waddle`, `channel`, ...).
    pub kind: String,
    /// Object id.
    pub id: String,
}

impl ObjectRef {
    /// `kind:id` (not validated; see [`ObjectRef::validate`]).
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> ObjectRef {
        ObjectRef { kind: kind.into(), id: id.into() }
    }

    /// Checks the syntax of the type name and the id.
    pub fn validate(&self) -> Result<(), AuthzError> {
        check_name("type", &self.kind)?;
        check_id(&self.id)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

impl FromStr for ObjectRef {
    type Err = AuthzError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, id) = s.split_once(':').ok_or_else(|| AuthzError::Parse(format!("expected kind:id, got {s:?}")))?;
        let object = ObjectRef::new(kind, id);
        object.validate()?;
        Ok(object)
    }
}

/// Who a tuple grants a relation to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// One user, by local username: `user:alice`.
    User(String),
    /// Everyone who has `relation` (a relation or a permission) on `object`:
    /// `waddle:w1#member`.
    Userset {
        /// The object whose relation grants.
        object: ObjectRef,
        /// Relation or permission name on that object.
        relation: String,
    },
    /// An object itself, for relations that link objects (`channel:c1#parent@waddle:w1`);
    /// permissions follow such links with arrows (`parent->administer`).
    Object(ObjectRef),
}

impl Subject {
    /// `user:<username>`.
    pub fn user(username: impl Into<String>) -> Subject {
        Subject::User(username.into())
    }

    /// `<object>#<relation>`.
    pub fn userset(object: ObjectRef, relation: impl Into<String>) -> Subject {
        Subject::Userset { object, relation: relation.into() }
    }

    /// Checks the syntax of every name and id in the subject.
    pub fn validate(&self) -> Result<(), AuthzError> {
        match self {
            Subject::User(id) => check_id(id),
            Subject::Userset { object, relation } => {
                object.validate()?;
                if object.kind == USER_TYPE {
                    return Err(AuthzError::Parse("a user subject has no relation".into()));
                }
                check_name("relation", relation)
            }
            Subject::Object(object) => {
                object.validate()?;
                if object.kind == USER_TYPE {
                    return Err(AuthzError::Parse("users are Subject::User, not Subject::Object".into()));
                }
                Ok(())
            }
        }
    }

    /// The object this subject refers to (`None` for a user).
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            Subject::User(_) => None,
            Subject::Userset { object, .. } | Subject::Object(object) => Some(object),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(id) => write!(f, "{USER_TYPE}:{id}"),
            Subject::Userset { object, relation } => write!(f, "{object}#{relation}"),
            Subject::Object(object) => write!(f, "{object}"),
        }
    }
}

impl FromStr for Subject {
    type Err = AuthzError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let subject = match s.split_once('#') {
            Some((object, relation)) => Subject::userset(object.parse()?, relation),
            None => {
                let object: ObjectRef = s.parse()?;
                if object.kind == USER_TYPE {
                    Subject::User(object.id)
                } else {
                    Subject::Object(object)
                }
            }
        };
        subject.validate()?;
        Ok(subject)
    }
}

/// A relation tuple: `object#relation@subject`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// The object the relation is on.
    pub object: ObjectRef,
    /// The relation (never a computed permission).
    pub relation: String,
    /// Who gets the relation.
    pub subject: Subject,
}

impl Tuple {
    /// `object#relation@subject` (not validated; see [`Tuple::validate`]).
    pub fn new(object: ObjectRef, relation: impl Into<String>, subject: Subject) -> Tuple {
        Tuple { object, relation: relation.into(), subject }
    }

    /// Checks the syntax of every name and id in the tuple (not the schema).
    pub fn validate(&self) -> Result<(), AuthzError> {
        self.object.validate()?;
        check_name("relation", &self.relation)?;
        self.subject.validate()
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.object, self.relation, self.subject)
    }
}

impl FromStr for Tuple {
    type Err = AuthzError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (left, subject) = s
            .split_once('@')
            .ok_or_else(|| AuthzError::Parse(format!("expected object#relation@subject, got {s:?}")))?;
        let (object, relation) = left
            .split_once('#')
            .ok_or_else(|| AuthzError::Parse(format!("expected object#relation@subject, got {s:?}")))?;
        let tuple = Tuple::new(object.parse()?, relation, subject.parse()?);
        tuple.validate()?;
        Ok(tuple)
    }
}
