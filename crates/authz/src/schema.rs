//! The permission schema: object types, their directly assignable relations and their
//! computed permissions.
//!
//! A permission is a union of terms; a term is either the name of a relation or permission
//! of the same object, or an arrow `rel->perm`: follow the objects in relation `rel` of
//! this object and check `perm` on each.

use std::collections::HashMap;

use crate::model::{check_name, USER_TYPE};
use crate::AuthzError;

/// A compiled schema. Build the product's with [`Schema::waddle`], or your own with
/// [`Schema::builder`].
#[derive(Clone, Debug)]
pub struct Schema {
    pub(crate) types: HashMap<String, TypeDef>,
}

#[derive(Clone, Debug)]
pub(crate) struct TypeDef {
    pub(crate) members: Vec<Member>,
    pub(crate) by_name: HashMap<String, usize>,
}

#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) kind: MemberKind,
}

#[derive(Clone, Debug)]
pub(crate) enum MemberKind {
    /// Directly assignable.
    Relation { allowed: Vec<Allowed> },
    /// Computed: the union of the terms.
    Permission { terms: Vec<Term> },
}

/// A subject type allowed on a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// `user`.
    User,
    /// `kind`: an object of that type.
    Object(String),
    /// `kind#relation`: a userset.
    Userset { kind: String, relation: String },
}

#[derive(Clone, Debug)]
pub(crate) enum Term {
    /// A relation or permission of the same object, by member index.
    Local(usize),
    /// `via->permission`: `via` is a member index (a relation) of this type, `permission`
    /// a name resolved on each target's type.
    Arrow { via: usize, permission: String },
    /// A term that did not resolve (only in a schema built without validation): checking
    /// it fails with [`AuthzError::UnknownPermission`].
    Unresolved(String),
}

impl TypeDef {
    pub(crate) fn member(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

impl Schema {
    /// An empty builder.
    pub fn builder() -> SchemaBuilder {
        SchemaBuilder::default()
    }

    /// The product schema:
    ///
    /// ```text
    /// waddle   owner: user, admin: user, moderator: user, member: user | waddle#member
    ///          administer = owner | admin
    ///          moderate = administer | moderator
    ///          view = moderate | member
    ///          delete = owner
    ///          manage_members = administer
    ///          manage_channels = administer
    /// channel  parent: waddle, manager: user, moderator: user,
    ///          writer: user | waddle#member, viewer: user | waddle#member
    ///          manage = manager | parent->administer
    ///          moderate = moderator | manage | parent->moderate
    ///          send_message = writer | moderate | parent->view
    ///          announce = writer | moderate
    ///          view = viewer | send_message | parent->view
    ///          delete = manage
    /// message  channel: channel, author: user
    ///          delete = author | channel->moderate
    ///          edit = author
    /// dm       participant: user, owner: user
    ///          view = participant | owner
    ///          send = participant
    /// ```
    pub fn waddle() -> Schema {
        // `waddle_definition().build()` is unit-tested to succeed, so nothing is lost by
        // skipping the validation here.
        waddle_definition().compile().0
    }

    /// Whether `kind` is an object type of this schema.
    pub fn has_type(&self, kind: &str) -> bool {
        self.types.contains_key(kind)
    }

    /// Whether `name` is a directly assignable relation of `kind`.
    pub fn is_relation(&self, kind: &str, name: &str) -> bool {
        self.types
            .get(kind)
            .and_then(|t| t.member(name).map(|i| &t.members[i]))
            .is_some_and(|m| matches!(m.kind, MemberKind::Relation { .. }))
    }

    /// Whether `name` is a relation or a permission of `kind` (what `check` accepts).
    pub fn has_permission(&self, kind: &str, name: &str) -> bool {
        self.types.get(kind).is_some_and(|t| t.member(name).is_some())
    }

    /// The names of the relations of `kind`, in definition order (empty if unknown).
    pub fn relations(&self, kind: &str) -> Vec<&str> {
        self.types
            .get(kind)
            .map(|t| {
                t.members
                    .iter()
                    .filter(|m| matches!(m.kind, MemberKind::Relation { .. }))
                    .map(|m| m.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names of the computed permissions of `kind`, in definition order.
    pub fn permissions(&self, kind: &str) -> Vec<&str> {
        self.types
            .get(kind)
            .map(|t| {
                t.members
                    .iter()
                    .filter(|m| matches!(m.kind, MemberKind::Permission { .. }))
                    .map(|m| m.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The product schema's definition (see [`Schema::waddle`]).
pub(crate) fn waddle_definition() -> SchemaBuilder {
    Schema::builder()
        .relation("waddle", "owner", &["user"])
        .relation("waddle", "admin", &["user"])
        .relation("waddle", "moderator", &["user"])
        .relation("waddle", "member", &["user", "waddle#member"])
        .permission("waddle", "administer", "owner | admin")
        .permission("waddle", "moderate", "administer | moderator")
        .permission("waddle", "view", "moderate | member")
        .permission("waddle", "delete", "owner")
        .permission("waddle", "manage_members", "administer")
        .permission("waddle", "manage_channels", "administer")
        .relation("channel", "parent", &["waddle"])
        .relation("channel", "manager", &["user"])
        .relation("channel", "moderator", &["user"])
        .relation("channel", "writer", &["user", "waddle#member"])
        .relation("channel", "viewer", &["user", "waddle#member"])
        .permission("channel", "manage", "manager | parent->administer")
        .permission("channel", "moderate", "moderator | manage | parent->moderate")
        .permission("channel", "send_message", "writer | moderate | parent->view")
        // Posting in an announcement channel: membership alone does not give a voice.
        .permission("channel", "announce", "writer | moderate")
        .permission("channel", "view", "viewer | send_message | parent->view")
        .permission("channel", "delete", "manage")
        .relation("message", "channel", &["channel"])
        .relation("message", "author", &["user"])
        .permission("message", "delete", "author | channel->moderate")
        .permission("message", "edit", "author")
        .relation("dm", "participant", &["user"])
        .relation("dm", "owner", &["user"])
        .permission("dm", "view", "participant | owner")
        .permission("dm", "send", "participant")
}

#[derive(Clone, Debug)]
enum Definition {
    Relation(Vec<String>),
    Permission(String),
}

/// Builds a [`Schema`]; [`SchemaBuilder::build`] checks every name and reference.
#[derive(Clone, Debug, Default)]
pub struct SchemaBuilder {
    /// (type, member, definition), in call order.
    defs: Vec<(String, String, Definition)>,
}

impl SchemaBuilder {
    /// Adds a directly assignable relation `kind#name` whose subjects may be of the
    /// `allowed` types: `"user"`, an object type (`"waddle"`) or a userset
    /// (`"waddle#member"`). Declaring a member defines its type.
    pub fn relation(mut self, kind: &str, name: &str, allowed: &[&str]) -> SchemaBuilder {
        let allowed = allowed.iter().map(|s| (*s).to_owned()).collect();
        self.defs.push((kind.to_owned(), name.to_owned(), Definition::Relation(allowed)));
        self
    }

    /// Adds a computed permission `kind#name = term | term | ...`, a term being a relation
    /// or permission name of the same type or an arrow `rel->perm`.
    pub fn permission(mut self, kind: &str, name: &str, expression: &str) -> SchemaBuilder {
        self.defs.push((kind.to_owned(), name.to_owned(), Definition::Permission(expression.to_owned())));
        self
    }

    /// The schema, or the first problem found: a malformed name or expression
    /// ([`AuthzError::Parse`]), a duplicate member (`Parse`), an unknown subject type
    /// ([`AuthzError::UnknownType`]), a userset or term naming something the type does not
    /// define ([`AuthzError::UnknownPermission`]), an arrow through a name that is not a
    /// relation ([`AuthzError::UnknownRelation`]) or through a relation with no object
    /// subject types (`Parse`).
    pub fn build(self) -> Result<Schema, AuthzError> {
        let (schema, mut problems) = self.compile();
        if problems.is_empty() {
            Ok(schema)
        } else {
            Err(problems.swap_remove(0))
        }
    }

    /// Compiles what can be compiled, collecting every problem.
    pub(crate) fn compile(self) -> (Schema, Vec<AuthzError>) {
        let mut problems = Vec::new();
        let mut types: HashMap<String, TypeDef> = HashMap::new();
        // Pass 1: names, types and member indices.
        for (kind, name, _) in &self.defs {
            if let Err(e) = check_name("type", kind).and_then(|()| check_name("member", name)) {
                problems.push(e);
            }
            if kind == USER_TYPE {
                problems.push(AuthzError::Parse(format!("{USER_TYPE:?} is reserved for user subjects")));
            }
            let t =
                types.entry(kind.clone()).or_insert_with(|| TypeDef { members: Vec::new(), by_name: HashMap::new() });
            if t.by_name.contains_key(name) {
                problems.push(AuthzError::Parse(format!("{kind}#{name} is defined twice")));
                continue;
            }
            t.by_name.insert(name.clone(), t.members.len());
            // Placeholder, filled in by pass 2.
            t.members.push(Member { name: name.clone(), kind: MemberKind::Permission { terms: Vec::new() } });
        }
        // Pass 2: relations' allowed subjects.
        let mut resolved: Vec<(String, usize, MemberKind)> = Vec::new();
        for (kind, name, def) in &self.defs {
            let Some(index) = types.get(kind).and_then(|t| t.member(name)) else { continue };
            if let Definition::Relation(allowed) = def {
                let allowed = allowed.iter().filter_map(|a| resolve_allowed(&types, a, &mut problems)).collect();
                resolved.push((kind.clone(), index, MemberKind::Relation { allowed }));
            }
        }
        apply(&mut types, resolved);
        // Pass 3: permissions' terms (needs the relations' allowed object types).
        let mut resolved = Vec::new();
        for (kind, name, def) in &self.defs {
            let Some(t) = types.get(kind) else { continue };
            let Some(index) = t.member(name) else { continue };
            if let Definition::Permission(expr) = def {
                let terms =
                    expr.split('|').map(|term| resolve_term(&types, kind, t, term.trim(), &mut problems)).collect();
                resolved.push((kind.clone(), index, MemberKind::Permission { terms }));
            }
        }
        apply(&mut types, resolved);
        (Schema { types }, problems)
    }
}

fn apply(types: &mut HashMap<String, TypeDef>, resolved: Vec<(String, usize, MemberKind)>) {
    for (kind, index, member_kind) in resolved {
        if let Some(member) = types.get_mut(&kind).and_then(|t| t.members.get_mut(index)) {
            member.kind = member_kind;
        }
    }
}

fn resolve_allowed(types: &HashMap<String, TypeDef>, text: &str, problems: &mut Vec<AuthzError>) -> Option<Allowed> {
    if text == USER_TYPE {
        return Some(Allowed::User);
    }
    let (kind, relation) = match text.split_once('#') {
        Some((kind, relation)) => (kind, Some(relation)),
        None => (text, None),
    };
    let Some(t) = types.get(kind) else {
        problems.push(AuthzError::UnknownType(kind.to_owned()));
        return None;
    };
    match relation {
        None => Some(Allowed::Object(kind.to_owned())),
        Some(relation) if t.member(relation).is_some() => {
            Some(Allowed::Userset { kind: kind.to_owned(), relation: relation.to_owned() })
        }
        Some(relation) => {
            problems.push(AuthzError::UnknownPermission { kind: kind.to_owned(), permission: relation.to_owned() });
            None
        }
    }
}

fn resolve_term(
    types: &HashMap<String, TypeDef>,
    kind: &str,
    t: &TypeDef,
    term: &str,
    problems: &mut Vec<AuthzError>,
) -> Term {
    let unresolved = |problems: &mut Vec<AuthzError>, e: AuthzError| {
        problems.push(e);
        Term::Unresolved(term.to_owned())
    };
    let Some((via, permission)) = term.split_once("->") else {
        if let Err(e) = check_name("term", term) {
            return unresolved(problems, e);
        }
        return match t.member(term) {
            Some(index) => Term::Local(index),
            None => unresolved(problems, AuthzError::UnknownPermission { kind: kind.into(), permission: term.into() }),
        };
    };
    let (via, permission) = (via.trim(), permission.trim());
    if let Err(e) = check_name("arrow relation", via).and_then(|()| check_name("arrow permission", permission)) {
        return unresolved(problems, e);
    }
    let Some(via_index) = t.member(via) else {
        return unresolved(problems, AuthzError::UnknownRelation { kind: kind.into(), relation: via.into() });
    };
    let MemberKind::Relation { allowed } = &t.members[via_index].kind else {
        return unresolved(problems, AuthzError::UnknownRelation { kind: kind.into(), relation: via.into() });
    };
    let mut targets = allowed.iter().filter_map(|a| match a {
        Allowed::Object(target) => Some(target),
        _ => None,
    });
    let mut any = false;
    for target in targets.by_ref() {
        any = true;
        if types.get(target).and_then(|tt| tt.member(permission)).is_none() {
            return unresolved(
                problems,
                AuthzError::UnknownPermission { kind: target.clone(), permission: permission.into() },
            );
        }
    }
    if !any {
        return unresolved(problems, AuthzError::Parse(format!("{kind}#{via} has no object subject type to follow")));
    }
    Term::Arrow { via: via_index, permission: permission.to_owned() }
}
