//! [`Authz`]: the in-memory tuple index and the checker.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::schema::{Allowed, MemberKind, Term, TypeDef};
use crate::{AuthzError, ObjectRef, Schema, Subject, Tuple};

/// Default recursion limit of a check.
pub const DEFAULT_MAX_DEPTH: u32 = 16;

/// Upper bound on the relation/permission evaluations of one check, whatever the depth:
/// a fan-out of usersets under a deep chain cannot make a check take exponential time.
/// Exhausting it reports [`AuthzError::DepthExceeded`].
pub const MAX_CHECK_STEPS: u32 = 100_000;

/// Which tuples [`Authz::list`] returns: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleFilter {
    /// Only tuples on this object.
    pub object: Option<ObjectRef>,
    /// Only tuples of this relation.
    pub relation: Option<String>,
    /// Only tuples granting to exactly this subject.
    pub subject: Option<Subject>,
}

impl TupleFilter {
    fn matches(&self, t: &Tuple) -> bool {
        self.object.as_ref().is_none_or(|o| *o == t.object)
            && self.relation.as_ref().is_none_or(|r| *r == t.relation)
            && self.subject.as_ref().is_none_or(|s| *s == t.subject)
    }
}

/// The subjects of one relation of one object.
#[derive(Clone, Debug, Default)]
struct RelationEntry {
    users: HashSet<String>,
    objects: BTreeSet<ObjectRef>,
    usersets: BTreeSet<(ObjectRef, String)>,
}

impl RelationEntry {
    fn subjects(&self) -> impl Iterator<Item = Subject> + '_ {
        let mut users: Vec<&String> = self.users.iter().collect();
        users.sort_unstable();
        users
            .into_iter()
            .map(|u| Subject::User(u.clone()))
            .chain(self.objects.iter().map(|o| Subject::Object(o.clone())))
            .chain(self.usersets.iter().map(|(o, r)| Subject::userset(o.clone(), r.clone())))
    }
}

/// Every tuple on one object, by member index of its type.
#[derive(Clone, Debug)]
struct ObjectEntry {
    relations: Vec<RelationEntry>,
    count: usize,
}

/// A Zanzibar-style checker: a [`Schema`] plus an in-memory index of relation tuples.
///
/// The forward index maps `object → relation → subjects` (users in a hash set, so a direct
/// grant is one lookup); the reverse index maps users and referenced objects to the tuples
/// that name them (for [`Authz::list`] by subject, [`Authz::delete_object`] and
/// [`Authz::lookup_objects`]). There is no cache: every write and delete is visible to the
/// very next check. A check allocates nothing.
#[derive(Clone, Debug)]
pub struct Authz {
    schema: Schema,
    max_depth: u32,
    objects: HashMap<ObjectRef, ObjectEntry>,
    by_kind: HashMap<String, BTreeSet<String>>,
    users_rev: HashMap<String, BTreeSet<(ObjectRef, String)>>,
    objects_rev: HashMap<ObjectRef, BTreeSet<Tuple>>,
    len: usize,
}

impl Authz {
    /// An empty index over `schema`; checks recurse at most `max_depth` levels
    /// ([`DEFAULT_MAX_DEPTH`] is the usual choice).
    pub fn new(schema: Schema, max_depth: u32) -> Authz {
        Authz {
            schema,
            max_depth,
            objects: HashMap::new(),
            by_kind: HashMap::new(),
            users_rev: HashMap::new(),
            objects_rev: HashMap::new(),
            len: 0,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The recursion limit.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// How many tuples are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no tuple is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds every tuple (duplicates are fine); stops at the first invalid one, keeping
    /// those before it.
    pub fn load(&mut self, tuples: impl IntoIterator<Item = Tuple>) -> Result<(), AuthzError> {
        for tuple in tuples {
            self.write(tuple)?;
        }
        Ok(())
    }

    /// Checks `tuple` against the schema without storing it: valid syntax, a known object
    /// type, a directly assignable relation ([`AuthzError::UnknownRelation`] for unknown
    /// names and for computed permissions) and a subject type the relation allows.
    pub fn validate(&self, tuple: &Tuple) -> Result<(), AuthzError> {
        self.resolve_relation(tuple).map(|_| ())
    }

    fn resolve_relation(&self, tuple: &Tuple) -> Result<(&TypeDef, usize), AuthzError> {
        tuple.validate()?;
        let kind = &tuple.object.kind;
        let t = self.schema.types.get(kind).ok_or_else(|| AuthzError::UnknownType(kind.clone()))?;
        let unknown = || AuthzError::UnknownRelation { kind: kind.clone(), relation: tuple.relation.clone() };
        let index = t.member(&tuple.relation).ok_or_else(unknown)?;
        let MemberKind::Relation { allowed } = &t.members[index].kind else {
            return Err(unknown());
        };
        let ok = allowed.iter().any(|a| match (a, &tuple.subject) {
            (Allowed::User, Subject::User(_)) => true,
            (Allowed::Object(k), Subject::Object(o)) => *k == o.kind,
            (Allowed::Userset { kind, relation }, Subject::Userset { object, relation: r }) => {
                *kind == object.kind && relation == r
            }
            _ => false,
        });
        if !ok {
            return Err(AuthzError::SubjectNotAllowed {
                kind: kind.clone(),
                relation: tuple.relation.clone(),
                subject: tuple.subject.to_string(),
            });
        }
        Ok((t, index))
    }

    /// Validates ([`Authz::validate`]) and stores `tuple`; `Ok(true)` if it was not
    /// already present.
    pub fn write(&mut self, tuple: Tuple) -> Result<bool, AuthzError> {
        let (t, index) = self.resolve_relation(&tuple)?;
        let size = t.members.len();
        let entry = self
            .objects
            .entry(tuple.object.clone())
            .or_insert_with(|| ObjectEntry { relations: vec![RelationEntry::default(); size], count: 0 });
        let Some(rel) = entry.relations.get_mut(index) else {
            return Err(AuthzError::UnknownRelation { kind: tuple.object.kind, relation: tuple.relation });
        };
        let added = match &tuple.subject {
            Subject::User(u) => rel.users.insert(u.clone()),
            Subject::Object(o) => rel.objects.insert(o.clone()),
            Subject::Userset { object, relation } => rel.usersets.insert((object.clone(), relation.clone())),
        };
        if !added {
            return Ok(false);
        }
        entry.count += 1;
        self.len += 1;
        self.by_kind.entry(tuple.object.kind.clone()).or_default().insert(tuple.object.id.clone());
        match &tuple.subject {
            Subject::User(u) => {
                self.users_rev.entry(u.clone()).or_default().insert((tuple.object.clone(), tuple.relation.clone()));
            }
            Subject::Object(o) | Subject::Userset { object: o, .. } => {
                self.objects_rev.entry(o.clone()).or_default().insert(tuple);
            }
        }
        Ok(true)
    }

    /// Removes `tuple`; `true` if it was present.
    pub fn delete(&mut self, tuple: &Tuple) -> bool {
        let Some(t) = self.schema.types.get(&tuple.object.kind) else { return false };
        let Some(index) = t.member(&tuple.relation) else { return false };
        let Some(entry) = self.objects.get_mut(&tuple.object) else { return false };
        let Some(rel) = entry.relations.get_mut(index) else { return false };
        let removed = match &tuple.subject {
            Subject::User(u) => rel.users.remove(u),
            Subject::Object(o) => rel.objects.remove(o),
            Subject::Userset { object, relation } => rel.usersets.remove(&(object.clone(), relation.clone())),
        };
        if !removed {
            return false;
        }
        self.len -= 1;
        entry.count -= 1;
        if entry.count == 0 {
            self.objects.remove(&tuple.object);
            if let Some(ids) = self.by_kind.get_mut(&tuple.object.kind) {
                ids.remove(&tuple.object.id);
                if ids.is_empty() {
                    self.by_kind.remove(&tuple.object.kind);
                }
            }
        }
        match &tuple.subject {
            Subject::User(u) => {
                if let Some(set) = self.users_rev.get_mut(u) {
                    set.remove(&(tuple.object.clone(), tuple.relation.clone()));
                    if set.is_empty() {
                        self.users_rev.remove(u);
                    }
                }
            }
            Subject::Object(o) | Subject::Userset { object: o, .. } => {
                if let Some(set) = self.objects_rev.get_mut(o) {
                    set.remove(tuple);
                    if set.is_empty() {
                        self.objects_rev.remove(o);
                    }
                }
            }
        }
        true
    }

    /// The tuples [`Authz::delete_object`] would remove, sorted.
    pub fn tuples_of_object(&self, object: &ObjectRef) -> Vec<Tuple> {
        let mut out = self.list(&TupleFilter { object: Some(object.clone()), ..TupleFilter::default() });
        if let Some(referencing) = self.objects_rev.get(object) {
            out.extend(referencing.iter().cloned());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Removes every tuple on `object` and every tuple whose subject is `object` itself
    /// (`channel:c1#parent@waddle:w1`) or a userset of it (`...@waddle:w1#member`);
    /// returns them, sorted.
    pub fn delete_object(&mut self, object: &ObjectRef) -> Vec<Tuple> {
        let tuples = self.tuples_of_object(object);
        for tuple in &tuples {
            self.delete(tuple);
        }
        tuples
    }

    /// The stored tuples matching `filter`, sorted.
    pub fn list(&self, filter: &TupleFilter) -> Vec<Tuple> {
        let mut out = Vec::new();
        if let Some(object) = &filter.object {
            if let Some(entry) = self.objects.get(object) {
                self.push_object_tuples(object, entry, filter, &mut out);
            }
        } else if let Some(subject) = &filter.subject {
            match subject {
                Subject::User(u) => {
                    for (object, relation) in self.users_rev.get(u).into_iter().flatten() {
                        let t = Tuple::new(object.clone(), relation.clone(), subject.clone());
                        if filter.matches(&t) {
                            out.push(t);
                        }
                    }
                }
                Subject::Object(o) | Subject::Userset { object: o, .. } => {
                    out.extend(self.objects_rev.get(o).into_iter().flatten().filter(|t| filter.matches(t)).cloned());
                }
            }
        } else {
            for (object, entry) in &self.objects {
                self.push_object_tuples(object, entry, filter, &mut out);
            }
        }
        out.sort_unstable();
        out
    }

    fn push_object_tuples(&self, object: &ObjectRef, entry: &ObjectEntry, filter: &TupleFilter, out: &mut Vec<Tuple>) {
        let Some(t) = self.schema.types.get(&object.kind) else { return };
        for (member, rel) in t.members.iter().zip(&entry.relations) {
            if filter.relation.as_ref().is_some_and(|r| *r != member.name) {
                continue;
            }
            for subject in rel.subjects() {
                let tuple = Tuple::new(object.clone(), member.name.clone(), subject);
                if filter.matches(&tuple) {
                    out.push(tuple);
                }
            }
        }
    }

    /// Whether `user` has `permission` (a relation or a computed permission) on `object`.
    ///
    /// Unknown types and names are errors; a userset chain deeper than the depth limit
    /// (such as a cycle that does not grant) is [`AuthzError::DepthExceeded`]. A union is
    /// true as soon as one of its terms is, even if another term failed.
    pub fn check(&self, object: &ObjectRef, permission: &str, user: &str) -> Result<bool, AuthzError> {
        let (t, index) = self.resolve_permission(&object.kind, permission)?;
        Walk { authz: self, user, steps: 0 }.member(t, object, index, 0)
    }

    fn resolve_permission(&self, kind: &str, permission: &str) -> Result<(&TypeDef, usize), AuthzError> {
        let t = self.schema.types.get(kind).ok_or_else(|| AuthzError::UnknownType(kind.to_owned()))?;
        let index = t.member(permission).ok_or_else(|| AuthzError::UnknownPermission {
            kind: kind.to_owned(),
            permission: permission.to_owned(),
        })?;
        Ok((t, index))
    }

    /// The ids (sorted) of the objects of `kind` on which `user` has `permission`.
    ///
    /// Candidates are the objects reachable from the user's own tuples by following the
    /// reverse index (usersets and object links), so the cost follows the user's footprint,
    /// not the number of objects. Objects whose check fails (depth limit) are left out.
    pub fn lookup_objects(&self, kind: &str, permission: &str, user: &str) -> Result<Vec<String>, AuthzError> {
        let (t, index) = self.resolve_permission(kind, permission)?;
        let mut seen: HashSet<&ObjectRef> = HashSet::new();
        let mut frontier: Vec<&ObjectRef> = Vec::new();
        for (object, _) in self.users_rev.get(user).into_iter().flatten() {
            if seen.insert(object) {
                frontier.push(object);
            }
        }
        // Breadth-first over "object X is referenced by a tuple on object Y".
        let mut level = 0;
        while !frontier.is_empty() && level <= self.max_depth {
            let mut next = Vec::new();
            for object in frontier {
                for tuple in self.objects_rev.get(object).into_iter().flatten() {
                    if seen.insert(&tuple.object) {
                        next.push(&tuple.object);
                    }
                }
            }
            frontier = next;
            level += 1;
        }
        let mut ids: Vec<String> = Vec::new();
        for object in seen {
            if object.kind != kind {
                continue;
            }
            if let Ok(true) = (Walk { authz: self, user, steps: 0 }).member(t, object, index, 0) {
                ids.push(object.id.clone());
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// One check's traversal state.
struct Walk<'a> {
    authz: &'a Authz,
    user: &'a str,
    steps: u32,
}

impl<'a> Walk<'a> {
    /// Evaluates member `index` of type `t` on `object`, at recursion depth `depth`.
    fn member(&mut self, t: &'a TypeDef, object: &ObjectRef, index: usize, depth: u32) -> Result<bool, AuthzError> {
        let authz = self.authz;
        if depth > authz.max_depth || self.steps >= MAX_CHECK_STEPS {
            return Err(AuthzError::DepthExceeded(authz.max_depth));
        }
        self.steps += 1;
        let Some(member) = t.members.get(index) else {
            return Ok(false);
        };
        let entry = authz.objects.get(object);
        let mut failure = None;
        match &member.kind {
            MemberKind::Relation { .. } => {
                let Some(rel) = entry.and_then(|e| e.relations.get(index)) else {
                    return Ok(false);
                };
                if rel.users.contains(self.user) {
                    return Ok(true);
                }
                for (target, relation) in &rel.usersets {
                    match self.named(target, relation, depth + 1) {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(e) => failure = failure.or(Some(e)),
                    }
                }
            }
            MemberKind::Permission { terms } => {
                for term in terms {
                    let outcome = match term {
                        Term::Local(i) => self.member(t, object, *i, depth + 1),
                        Term::Arrow { via, permission } => self.arrow(entry, *via, permission, depth),
                        Term::Unresolved(name) => {
                            Err(AuthzError::UnknownPermission { kind: object.kind.clone(), permission: name.clone() })
                        }
                    };
                    match outcome {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(e) => failure = failure.or(Some(e)),
                    }
                }
            }
        }
        failure.map_or(Ok(false), Err)
    }

    /// `via->permission` from an object whose tuples are `entry`.
    fn arrow(
        &mut self,
        entry: Option<&'a ObjectEntry>,
        via: usize,
        permission: &str,
        depth: u32,
    ) -> Result<bool, AuthzError> {
        let Some(rel) = entry.and_then(|e| e.relations.get(via)) else {
            return Ok(false);
        };
        let mut failure = None;
        for target in &rel.objects {
            match self.named(target, permission, depth + 1) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        failure.map_or(Ok(false), Err)
    }

    /// Evaluates the member called `name` on `object`.
    fn named(&mut self, object: &ObjectRef, name: &str, depth: u32) -> Result<bool, AuthzError> {
        let (t, index) = self.authz.resolve_permission(&object.kind, name)?;
        self.member(t, object, index, depth)
    }
}
