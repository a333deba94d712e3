//! The replicated state machine: pure data and a deterministic `apply`, no I/O.
//!
//! Every node applies the same entries in the same order and must end in the same state, so
//! nothing here reads clocks, randomness or the environment. Each written item remembers the
//! log index that last wrote it (its version), which is what compare-and-set and caches key on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Entry, NodeRecord, PartitionTable, Record, Tuple, ENTRY_VERSION};

/// The version of the snapshot image format ([`ControlState`]'s serde form).
pub const STATE_IMAGE_VERSION: u16 = 1;

/// The applied control state. Cheap to share behind an `Arc`; replaced (copy-on-write) as
/// entries are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlState {
    /// Index of the last applied log entry (including openraft's own blank and membership
    /// entries), 0 before any.
    pub applied: u64,
    /// Cluster members by id.
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// The current partition ring, if one was ever proposed.
    pub partition_map: Option<PartitionTable>,
    /// The log index that last wrote `partition_map` (0 if never).
    pub partition_map_version: u64,
    /// Small records keyed by (kind, id).
    pub records: BTreeMap<(String, String), Record>,
    /// Permission tuples and the index that last wrote each. Ordered by object first, so
    /// "every tuple of this object" is a range scan.
    tuples: BTreeMap<Tuple, u64>,
    /// The same tuples ordered by subject (subject, object, relation), so removing a user or
    /// every userset of an object is a range scan too. Derived from `tuples`, not serialized.
    by_subject: BTreeSet<(String, String, String)>,
}

/// How to put back what a command in progress changed, so a failed `Batch` leaves no trace.
enum Undo {
    Node(u64, Option<NodeRecord>),
    PartitionMap(Option<PartitionTable>, u64),
    Tuple(Tuple, Option<u64>),
    Record((String, String), Option<Record>),
}

impl ControlState {
    /// Applies one log entry at `index`. Never panics: an entry this build does not understand
    /// is refused (and logged at error level) without touching the state.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> CommandResult {
        self.applied = index;
        if entry.v != ENTRY_VERSION {
            tracing::error!(
                index,
                version = entry.v,
                supported = ENTRY_VERSION,
                "control plane: log entry has an unknown version; refused (is a newer node writing?)"
            );
            return CommandResult::Refused(format!(
                "unknown entry version {} (this node reads {ENTRY_VERSION})",
                entry.v
            ));
        }
        let mut undo = Vec::new();
        let result = self.exec(index, &entry.cmd, &mut undo);
        if !result.is_applied() {
            self.rollback(undo);
        }
        result
    }

    /// Records that a blank or membership entry at `index` was applied: they carry no command
    /// but still advance the applied index.
    pub fn apply_marker(&mut self, index: u64) {
        self.applied = index;
    }

    /// Whether this exact tuple exists.
    pub fn has_tuple(&self, tuple: &Tuple) -> bool {
        self.tuples.contains_key(tuple)
    }

    /// The index that last wrote this tuple, if it exists.
    pub fn tuple_version(&self, tuple: &Tuple) -> Option<u64> {
        self.tuples.get(tuple).copied()
    }

    /// Every tuple, ordered by object, relation, subject.
    pub fn tuples(&self) -> impl Iterator<Item = &Tuple> {
        self.tuples.keys()
    }

    /// How many tuples there are.
    pub fn tuple_count(&self) -> usize {
        self.tuples.len()
    }

    /// Every tuple whose object is `object`.
    pub fn tuples_of_object<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a Tuple> + 'a {
        let start = Tuple::new(object, "", "");
        self.tuples.range(start..).map(|(t, _)| t).take_while(move |t| t.object == object)
    }

    /// Every tuple whose subject is exactly `subject`.
    pub fn tuples_with_subject<'a>(&'a self, subject: &'a str) -> impl Iterator<Item = Tuple> + 'a {
        let start = (subject.to_owned(), String::new(), String::new());
        self.by_subject
            .range(start..)
            .take_while(move |(s, _, _)| s == subject)
            .map(|(s, o, r)| Tuple::new(o.clone(), r.clone(), s.clone()))
    }

    /// A record by kind and id.
    pub fn record(&self, kind: &str, id: &str) -> Option<&Record> {
        self.records.get(&(kind.to_owned(), id.to_owned()))
    }

    /// Every record of one kind, by id.
    pub fn records_of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Record)> + 'a {
        let start = (kind.to_owned(), String::new());
        self.records.range(start..).take_while(move |((k, _), _)| k == kind).map(|((_, id), r)| (id.as_str(), r))
    }

    fn exec(&mut self, index: u64, cmd: &Command, undo: &mut Vec<Undo>) -> CommandResult {
        let ok = CommandResult::Ok { index };
        match cmd {
            Command::AddNode(record) => {
                let mut record = record.clone();
                record.version = index;
                self.set_node(record.id, Some(record), undo);
                ok
            }
            Command::SetNodeState { id, state } => match self.nodes.get(id) {
                None => CommandResult::Refused(format!("unknown node {id}")),
                Some(current) => {
                    let mut record = current.clone();
                    record.state = *state;
                    record.version = index;
                    self.set_node(*id, Some(record), undo);
                    ok
                }
            },
            Command::RemoveNode { id } => {
                if self.nodes.contains_key(id) {
                    self.set_node(*id, None, undo);
                }
                ok
            }
            Command::SetPartitionMap(table) => {
                if let Some(current) = &self.partition_map {
                    if table.epoch <= current.epoch {
                        return CommandResult::Refused(format!(
                            "partition map epoch {} is not greater than the current {}",
                            table.epoch, current.epoch
                        ));
                    }
                }
                undo.push(Undo::PartitionMap(self.partition_map.take(), self.partition_map_version));
                self.partition_map = Some(table.clone());
                self.partition_map_version = index;
                ok
            }
            Command::WriteTuples { write, delete } => {
                for t in delete {
                    self.set_tuple(t, None, undo);
                }
                for t in write {
                    self.set_tuple(t, Some(index), undo);
                }
                ok
            }
            Command::DeleteObject { object } => {
                let mut doomed: BTreeSet<Tuple> = self.tuples_of_object(object).cloned().collect();
                doomed.extend(self.tuples_with_subject(object));
                let userset_prefix = format!("{object}#");
                let start = (userset_prefix.clone(), String::new(), String::new());
                doomed.extend(
                    self.by_subject
                        .range(start..)
                        .take_while(|(s, _, _)| s.starts_with(&userset_prefix))
                        .map(|(s, o, r)| Tuple::new(o.clone(), r.clone(), s.clone())),
                );
                self.remove_all(doomed, undo)
            }
            Command::RemoveUser { user } => {
                let subject = format!("user:{user}");
                let doomed: BTreeSet<Tuple> = self.tuples_with_subject(&subject).collect();
                self.remove_all(doomed, undo)
            }
            Command::PutRecord { kind, id, body, expected_version } => {
                let key = (kind.clone(), id.clone());
                let current_version = self.records.get(&key).map_or(0, |r| r.version);
                if let Some(expected) = expected_version {
                    if *expected != current_version {
                        return CommandResult::Conflict { current_version };
                    }
                }
                self.set_record(key, Some(Record { body: body.clone(), version: index }), undo);
                ok
            }
            Command::DeleteRecord { kind, id } => {
                let key = (kind.clone(), id.clone());
                if self.records.contains_key(&key) {
                    self.set_record(key, None, undo);
                }
                ok
            }
            Command::Batch(commands) => {
                let mut removed = Vec::new();
                let mut any_removed = false;
                for c in commands {
                    match self.exec(index, c, undo) {
                        CommandResult::Ok { .. } => {}
                        CommandResult::Removed(list) => {
                            any_removed = true;
                            removed.extend(list);
                        }
                        failed => return failed,
                    }
                }
                if any_removed {
                    CommandResult::Removed(removed)
                } else {
                    ok
                }
            }
            Command::Undecodable(raw) => {
                tracing::error!(index, command = %raw, "control plane: log entry holds a command this node cannot decode; refused");
                CommandResult::Refused("undecodable command".to_owned())
            }
        }
    }

    fn remove_all(&mut self, doomed: BTreeSet<Tuple>, undo: &mut Vec<Undo>) -> CommandResult {
        for t in &doomed {
            self.set_tuple(t, None, undo);
        }
        CommandResult::Removed(doomed.into_iter().collect())
    }

    fn set_node(&mut self, id: u64, record: Option<NodeRecord>, undo: &mut Vec<Undo>) {
        let previous = match record {
            Some(r) => self.nodes.insert(id, r),
            None => self.nodes.remove(&id),
        };
        undo.push(Undo::Node(id, previous));
    }

    fn set_tuple(&mut self, tuple: &Tuple, version: Option<u64>, undo: &mut Vec<Undo>) {
        let previous = self.put_tuple_raw(tuple, version);
        undo.push(Undo::Tuple(tuple.clone(), previous));
    }

    /// Sets or removes a tuple in both orderings; returns what was there.
    fn put_tuple_raw(&mut self, tuple: &Tuple, version: Option<u64>) -> Option<u64> {
        let key = (tuple.subject.clone(), tuple.object.clone(), tuple.relation.clone());
        match version {
            Some(v) => {
                self.by_subject.insert(key);
                self.tuples.insert(tuple.clone(), v)
            }
            None => {
                self.by_subject.remove(&key);
                self.tuples.remove(tuple)
            }
        }
    }

    fn set_record(&mut self, key: (String, String), record: Option<Record>, undo: &mut Vec<Undo>) {
        let previous = match record {
            Some(r) => self.records.insert(key.clone(), r),
            None => self.records.remove(&key),
        };
        undo.push(Undo::Record(key, previous));
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Node(id, Some(r)) => {
                    self.nodes.insert(id, r);
                }
                Undo::Node(id, None) => {
                    self.nodes.remove(&id);
                }
                Undo::PartitionMap(map, version) => {
                    self.partition_map = map;
                    self.partition_map_version = version;
                }
                Undo::Tuple(t, version) => {
                    self.put_tuple_raw(&t, version);
                }
                Undo::Record(key, Some(r)) => {
                    self.records.insert(key, r);
                }
                Undo::Record(key, None) => {
                    self.records.remove(&key);
                }
            }
        }
    }
}

/// The snapshot image of [`ControlState`], borrowed for writing.
#[derive(Serialize)]
struct ImageOut<'a> {
    v: u16,
    applied: u64,
    nodes: Vec<&'a NodeRecord>,
    partition_map: &'a Option<PartitionTable>,
    partition_map_version: u64,
    tuples: Vec<(&'a Tuple, u64)>,
    records: Vec<RecordOut<'a>>,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    kind: &'a str,
    id: &'a str,
    body: &'a serde_json::Value,
    version: u64,
}

/// The snapshot image of [`ControlState`], owned for reading.
#[derive(Deserialize)]
struct ImageIn {
    v: u16,
    applied: u64,
    nodes: Vec<NodeRecord>,
    partition_map: Option<PartitionTable>,
    partition_map_version: u64,
    tuples: Vec<(Tuple, u64)>,
    records: Vec<RecordIn>,
}

#[derive(Deserialize)]
struct RecordIn {
    kind: String,
    id: String,
    body: serde_json::Value,
    version: u64,
}

impl Serialize for ControlState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ImageOut {
            v: STATE_IMAGE_VERSION,
            applied: self.applied,
            nodes: self.nodes.values().collect(),
            partition_map: &self.partition_map,
            partition_map_version: self.partition_map_version,
            tuples: self.tuples.iter().map(|(t, v)| (t, *v)).collect(),
            records: self
                .records
                .iter()
                .map(|((kind, id), r)| RecordOut { kind, id, body: &r.body, version: r.version })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ControlState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let image = ImageIn::deserialize(deserializer)?;
        if image.v != STATE_IMAGE_VERSION {
            return Err(serde::de::Error::custom(format!(
                "unknown control state image version {} (this node reads {STATE_IMAGE_VERSION})",
                image.v
            )));
        }
        let mut state = ControlState {
            applied: image.applied,
            nodes: image.nodes.into_iter().map(|n| (n.id, n)).collect(),
            partition_map: image.partition_map,
            partition_map_version: image.partition_map_version,
            records: image
                .records
                .into_iter()
                .map(|r| ((r.kind, r.id), Record { body: r.body, version: r.version }))
                .collect(),
            ..ControlState::default()
        };
        for (t, v) in &image.tuples {
            state.put_tuple_raw(t, Some(*v));
        }
        Ok(state)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::command::NodeState;

    fn t(o: &str, r: &str, s: &str) -> Tuple {
        Tuple::new(o, r, s)
    }

    fn put(kind: &str, id: &str, body: serde_json::Value, expected: Option<u64>) -> Command {
        Command::PutRecord { kind: kind.into(), id: id.into(), body, expected_version: expected }
    }

    fn node(id: u64) -> NodeRecord {
        NodeRecord {
            id,
            cluster_addr: format!("n{id}:7000"),
            http_addr: format!("n{id}:8080"),
            state: NodeState::Joining,
            voter: false,
            version: 0,
        }
    }

    fn run(state: &mut ControlState, index: u64, cmd: Command) -> CommandResult {
        state.apply(index, &Entry::new(cmd))
    }

    /// Commands that leave something of every kind in the state, for the snapshot tests.
    pub(crate) fn sample_commands() -> Vec<Command> {
        vec![
            Command::AddNode(node(1)),
            Command::SetNodeState { id: 1, state: NodeState::Up },
            Command::AddNode(node(2)),
            Command::SetPartitionMap(PartitionTable {
                epoch: 3,
                replicas: vec![vec![1, 2], vec![2, 1]],
                learners: vec![],
            }),
            Command::WriteTuples {
                write: vec![
                    t("waddle:w1", "member", "user:alice"),
                    t("waddle:w1", "admin", "user:bob"),
                    t("channel:c1", "viewer", "waddle:w1#member"),
                ],
                delete: vec![],
            },
            put("waddle", "w1", json!({"name": "First", "owner": "alice"}), Some(0)),
            put("channel", "c1", json!({"waddle": "w1"}), None),
        ]
    }

    /// [`sample_commands`] applied at indexes 1, 2, ...
    pub(crate) fn sample_state() -> ControlState {
        let mut s = ControlState::default();
        for (i, c) in sample_commands().into_iter().enumerate() {
            let r = run(&mut s, i as u64 + 1, c);
            assert!(r.is_applied(), "{r:?}");
        }
        s
    }

    #[test]
    fn versions_are_the_writing_index() {
        let s = sample_state();
        assert_eq!(s.applied, 7);
        assert_eq!(s.nodes[&1].version, 2);
        assert_eq!(s.nodes[&1].state, NodeState::Up);
        assert_eq!(s.nodes[&2].version, 3);
        assert_eq!(s.partition_map_version, 4);
        assert_eq!(s.tuple_version(&t("waddle:w1", "member", "user:alice")), Some(5));
        assert_eq!(s.record("waddle", "w1").map(|r| r.version), Some(6));
        assert_eq!(s.records_of_kind("channel").count(), 1);
    }

    #[test]
    fn put_record_compare_and_set() {
        let mut s = ControlState::default();
        assert_eq!(run(&mut s, 1, put("room", "r", json!(1), Some(0))), CommandResult::Ok { index: 1 });
        // Must not exist, but does.
        assert_eq!(run(&mut s, 2, put("room", "r", json!(2), Some(0))), CommandResult::Conflict { current_version: 1 });
        // Stale version.
        assert_eq!(run(&mut s, 3, put("room", "r", json!(3), Some(7))), CommandResult::Conflict { current_version: 1 });
        assert_eq!(s.record("room", "r").map(|r| r.body.clone()), Some(json!(1)));
        // Right version.
        assert_eq!(run(&mut s, 4, put("room", "r", json!(4), Some(1))), CommandResult::Ok { index: 4 });
        assert_eq!(s.record("room", "r"), Some(&Record { body: json!(4), version: 4 }));
        // Expecting a version of an absent record.
        assert_eq!(run(&mut s, 5, put("room", "x", json!(0), Some(4))), CommandResult::Conflict { current_version: 0 });
        assert!(s.record("room", "x").is_none());
        // Delete, then "must not exist" holds again.
        assert_eq!(
            run(&mut s, 6, Command::DeleteRecord { kind: "room".into(), id: "r".into() }),
            CommandResult::Ok { index: 6 }
        );
        assert_eq!(run(&mut s, 7, put("room", "r", json!(7), Some(0))), CommandResult::Ok { index: 7 });
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut s = sample_state();
        let before = s.clone();
        let batch = Command::Batch(vec![
            put("room", "a", json!("a"), Some(0)),
            Command::WriteTuples { write: vec![t("room:a", "owner", "user:alice")], delete: vec![] },
            Command::RemoveUser { user: "alice".into() },
            Command::DeleteRecord { kind: "waddle".into(), id: "w1".into() },
            Command::SetPartitionMap(PartitionTable { epoch: 9, replicas: vec![], learners: vec![] }),
            Command::RemoveNode { id: 2 },
            Command::SetNodeState { id: 1, state: NodeState::Leaving },
            // Fails: the record exists at version 7.
            put("channel", "c1", json!("late"), Some(6)),
        ]);
        assert_eq!(run(&mut s, 8, batch), CommandResult::Conflict { current_version: 7 });
        assert_eq!(s.applied, 8);
        s.applied = before.applied;
        assert_eq!(s, before, "a failed batch leaves no trace");

        // A refusal anywhere (stale partition map) also undoes everything before it.
        let batch = Command::Batch(vec![
            put("room", "a", json!("a"), Some(0)),
            Command::SetPartitionMap(PartitionTable { epoch: 2, replicas: vec![], learners: vec![] }),
        ]);
        assert!(matches!(run(&mut s, 9, batch), CommandResult::Refused(_)));
        assert!(s.record("room", "a").is_none());

        // A good batch applies everything at one index; removals are reported.
        let batch = Command::Batch(vec![
            put("room", "a", json!("a"), Some(0)),
            put("room", "a", json!("b"), Some(10)),
            Command::RemoveUser { user: "bob".into() },
            Command::DeleteRecord { kind: "waddle".into(), id: "w1".into() },
        ]);
        assert_eq!(run(&mut s, 10, batch), CommandResult::Removed(vec![t("waddle:w1", "admin", "user:bob")]));
        assert_eq!(s.record("room", "a"), Some(&Record { body: json!("b"), version: 10 }));
        assert!(s.record("waddle", "w1").is_none());
        assert!(!s.has_tuple(&t("waddle:w1", "admin", "user:bob")));
    }

    #[test]
    fn remove_user_removes_exactly_that_subject() {
        let mut s = sample_state();
        run(
            &mut s,
            8,
            Command::WriteTuples {
                write: vec![
                    t("waddle:w2", "member", "user:alice"),
                    t("waddle:w2", "member", "user:alice2"),
                    t("user:alice", "self", "user:carol"),
                ],
                delete: vec![],
            },
        );
        let r = run(&mut s, 9, Command::RemoveUser { user: "alice".into() });
        assert_eq!(
            r,
            CommandResult::Removed(vec![
                t("waddle:w1", "member", "user:alice"),
                t("waddle:w2", "member", "user:alice")
            ])
        );
        assert!(s.has_tuple(&t("waddle:w2", "member", "user:alice2")));
        assert!(s.has_tuple(&t("user:alice", "self", "user:carol")), "the user as an object is not a subject");
        assert_eq!(run(&mut s, 10, Command::RemoveUser { user: "alice".into() }), CommandResult::Removed(vec![]));
    }

    #[test]
    fn delete_object_removes_object_subject_and_usersets() {
        let mut s = sample_state();
        run(
            &mut s,
            8,
            Command::WriteTuples {
                write: vec![
                    t("room:r1", "parent", "waddle:w1"),
                    t("room:r1", "viewer", "waddle:w1#admin"),
                    t("room:r1", "viewer", "waddle:w10#member"),
                    t("room:r2", "parent", "waddle:w10"),
                ],
                delete: vec![],
            },
        );
        let r = run(&mut s, 9, Command::DeleteObject { object: "waddle:w1".into() });
        assert_eq!(
            r,
            CommandResult::Removed(vec![
                t("channel:c1", "viewer", "waddle:w1#member"),
                t("room:r1", "parent", "waddle:w1"),
                t("room:r1", "viewer", "waddle:w1#admin"),
                t("waddle:w1", "admin", "user:bob"),
                t("waddle:w1", "member", "user:alice"),
            ])
        );
        let left: Vec<Tuple> = s.tuples().cloned().collect();
        assert_eq!(left, vec![t("room:r1", "viewer", "waddle:w10#member"), t("room:r2", "parent", "waddle:w10")]);
        assert_eq!(s.tuples_with_subject("waddle:w10").count(), 1, "the subject index follows the deletes");
    }

    #[test]
    fn write_tuples_deletes_then_writes() {
        let mut s = ControlState::default();
        let a = t("o:1", "r", "user:a");
        let b = t("o:1", "r", "user:b");
        run(&mut s, 1, Command::WriteTuples { write: vec![a.clone()], delete: vec![] });
        run(&mut s, 2, Command::WriteTuples { write: vec![b.clone(), a.clone()], delete: vec![a.clone()] });
        assert_eq!(s.tuple_version(&a), Some(2));
        assert_eq!(s.tuple_version(&b), Some(2));
        run(&mut s, 3, Command::WriteTuples { write: vec![], delete: vec![a.clone(), t("o:1", "r", "user:none")] });
        assert!(!s.has_tuple(&a));
        assert_eq!(s.tuple_count(), 1);
    }

    #[test]
    fn membership_commands() {
        let mut s = ControlState::default();
        assert!(matches!(
            run(&mut s, 1, Command::SetNodeState { id: 5, state: NodeState::Up }),
            CommandResult::Refused(_)
        ));
        run(&mut s, 2, Command::AddNode(node(5)));
        let mut again = node(5);
        again.cluster_addr = "moved:7000".into();
        again.voter = true;
        assert_eq!(run(&mut s, 3, Command::AddNode(again)), CommandResult::Ok { index: 3 });
        assert_eq!(s.nodes[&5].cluster_addr, "moved:7000");
        assert!(s.nodes[&5].voter);
        assert_eq!(run(&mut s, 4, Command::RemoveNode { id: 5 }), CommandResult::Ok { index: 4 });
        assert!(s.nodes.is_empty());
        assert_eq!(run(&mut s, 5, Command::RemoveNode { id: 5 }), CommandResult::Ok { index: 5 });
    }

    #[test]
    fn partition_map_epochs_only_grow() {
        let mut s = ControlState::default();
        let table =
            |epoch| Command::SetPartitionMap(PartitionTable { epoch, replicas: vec![vec![epoch]], learners: vec![] });
        assert_eq!(run(&mut s, 1, table(1)), CommandResult::Ok { index: 1 });
        assert!(matches!(run(&mut s, 2, table(1)), CommandResult::Refused(_)));
        assert!(matches!(run(&mut s, 3, table(0)), CommandResult::Refused(_)));
        assert_eq!(run(&mut s, 4, table(5)), CommandResult::Ok { index: 4 });
        assert_eq!(s.partition_map.as_ref().map(|m| m.epoch), Some(5));
        assert_eq!(s.partition_map_version, 4);
    }

    #[test]
    fn unknown_entry_version_is_refused_without_effect() {
        let mut s = sample_state();
        let before = s.clone();
        let entry = Entry { v: 99, cmd: Command::RemoveUser { user: "alice".into() } };
        let r = s.apply(8, &entry);
        assert!(matches!(&r, CommandResult::Refused(why) if why.contains("99")), "{r:?}");
        assert_eq!(s.applied, 8, "the entry is consumed");
        s.applied = before.applied;
        assert_eq!(s, before);

        let decoded: Entry = serde_json::from_value(json!({"v": 1, "cmd": {"NoSuchCommand": {}}})).unwrap();
        assert!(matches!(s.apply(9, &decoded), CommandResult::Refused(_)));
    }

    #[test]
    fn image_round_trip_rebuilds_the_subject_index() -> Result<(), serde_json::Error> {
        let s = sample_state();
        let bytes = serde_json::to_vec(&s)?;
        let mut back: ControlState = serde_json::from_slice(&bytes)?;
        assert_eq!(back, s);
        // The derived index works after loading.
        let r = back.apply(8, &Entry::new(Command::RemoveUser { user: "bob".into() }));
        assert_eq!(r, CommandResult::Removed(vec![t("waddle:w1", "admin", "user:bob")]));
        // A future image version is rejected rather than misread.
        let mut v = serde_json::to_value(&s)?;
        v["v"] = json!(2);
        assert!(serde_json::from_value::<ControlState>(v).is_err());
        Ok(())
    }
}
