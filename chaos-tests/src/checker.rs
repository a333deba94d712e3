//! The invariants, as pure functions over what the run observed: what was sent and
//! acknowledged, what every reader found in the archives, what every client received
//! live, what the nodes logged about room ownership, and the final cluster views. The
//! harness gathers the observations; nothing here talks to a server.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Where a message went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Room(String),
    Chat(String),
}

/// One message the workload sent.
#[derive(Clone, Debug, Serialize)]
pub struct Sent {
    pub id: String,
    pub sender: String,
    pub target: Target,
    pub sent_ms: u64,
    /// When it was acknowledged (room: the reflection came back; chat: an `<a h>`
    /// covered it), if it was.
    pub acked_ms: Option<u64>,
    /// The stanza-id the server assigned (the sender's reflection or ack path).
    pub stanza_id: Option<String>,
    /// The server answered it with an error (e.g. `recipient-unavailable` when it could
    /// not be made durable): whatever `<a h>` said about its receipt, the server did not
    /// accept it, and the sender knows to send it again.
    #[serde(default)]
    pub refused: bool,
}

impl Sent {
    /// Acknowledged and not refused: what the server promised to keep.
    pub fn acknowledged(&self) -> bool {
        self.acked_ms.is_some() && !self.refused
    }
}

/// One entry of an archive page: the server's id and the workload's message id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub stanza_id: String,
    pub msg_id: String,
}

/// Everything one reader found in one archive (all pages).
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveRead {
    pub reader: String,
    /// The node the reader was connected to.
    pub node: u64,
    pub entries: Vec<Entry>,
    /// The archive said the last page was complete (`false`: the read was cut short,
    /// by an error or the page bound, and `error` says why).
    pub complete: bool,
    pub error: Option<String>,
}

/// A line of `<data_dir>/ownership.jsonl`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct OwnershipEvent {
    pub node: u64,
    pub kind: String,
    pub key: String,
    pub epoch: u64,
    pub event: String,
    #[serde(default)]
    pub at_ms: u64,
}

/// What one node answered to `GET /v1/cluster` at the end.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub node: u64,
    pub members: Vec<u64>,
    pub all_up: bool,
    pub leader: Option<u64>,
    pub epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pass,
    Fail,
    NotChecked,
}

/// The outcome of one invariant.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: &'static str,
    pub status: Status,
    /// How many things were checked (messages, rooms, nodes...).
    pub checked: u64,
    pub violation_count: u64,
    /// The first violations, described (the count has them all).
    pub violations: Vec<String>,
    pub note: Option<String>,
}

/// Violations kept in full per invariant; the rest are only counted.
const KEEP: usize = 20;

impl Verdict {
    fn new(name: &'static str) -> Verdict {
        Verdict { name, status: Status::Pass, checked: 0, violation_count: 0, violations: Vec::new(), note: None }
    }

    fn not_checked(name: &'static str, why: &str) -> Verdict {
        Verdict { status: Status::NotChecked, note: Some(why.to_owned()), ..Verdict::new(name) }
    }

    fn violation(&mut self, what: String) {
        self.status = Status::Fail;
        self.violation_count += 1;
        if self.violations.len() < KEEP {
            self.violations.push(what);
        }
    }
}

/// A check of the run itself: every fault applied and healed, the cluster converged
/// after each; `problems` are what went wrong.
pub fn harness(problems: &[String]) -> Verdict {
    let mut v = Verdict::new("faults_applied_healed_and_converged");
    v.checked = 1;
    for p in problems {
        v.violation(p.clone());
    }
    v
}

/// Acknowledged messages missing from an archive, or present more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub lost: BTreeSet<String>,
    pub duplicated: BTreeSet<String>,
}

fn occurrences(entries: &[Entry]) -> BTreeMap<&str, u64> {
    let mut counts = BTreeMap::new();
    for e in entries {
        *counts.entry(e.msg_id.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Every acknowledged room message is exactly once in its room's archive, as every
/// reader of that room saw it. A room nobody could read counts all its messages lost.
pub fn room_archives(sent: &[Sent], reads: &BTreeMap<String, Vec<ArchiveRead>>, damage: &mut Damage) -> Verdict {
    let mut v = Verdict::new("room_archive_exactly_once");
    type Counted<'a> = Vec<(&'a ArchiveRead, BTreeMap<&'a str, u64>)>;
    let counted: BTreeMap<&str, Counted<'_>> = reads
        .iter()
        .map(|(room, rs)| (room.as_str(), rs.iter().map(|r| (r, occurrences(&r.entries))).collect()))
        .collect();
    for m in sent.iter().filter(|m| m.acknowledged()) {
        let Target::Room(room) = &m.target else { continue };
        v.checked += 1;
        let Some(readers) = counted.get(room.as_str()).filter(|r| !r.is_empty()) else {
            damage.lost.insert(m.id.clone());
            v.violation(format!("{}: acknowledged in {room}, whose archive nobody could read", m.id));
            continue;
        };
        for (read, counts) in readers {
            match counts.get(m.id.as_str()).copied().unwrap_or(0) {
                1 => {}
                0 => {
                    damage.lost.insert(m.id.clone());
                    v.violation(format!(
                        "{}: acknowledged in {room}, missing from its archive as {} read it on node {}",
                        m.id, read.reader, read.node
                    ));
                }
                n => {
                    damage.duplicated.insert(m.id.clone());
                    v.violation(format!(
                        "{}: {n} times in {room}'s archive as {} read it on node {}",
                        m.id, read.reader, read.node
                    ));
                }
            }
        }
    }
    v
}

/// Every acknowledged 1:1 message is exactly once in the sender's and in the
/// recipient's archive.
pub fn chat_archives(sent: &[Sent], reads: &BTreeMap<String, ArchiveRead>, damage: &mut Damage) -> Verdict {
    let mut v = Verdict::new("chat_archive_exactly_once");
    let counted: BTreeMap<&str, BTreeMap<&str, u64>> =
        reads.iter().map(|(user, r)| (user.as_str(), occurrences(&r.entries))).collect();
    for m in sent.iter().filter(|m| m.acknowledged()) {
        let Target::Chat(to) = &m.target else { continue };
        v.checked += 1;
        for owner in [&m.sender, to] {
            let Some(counts) = counted.get(owner.as_str()) else {
                damage.lost.insert(m.id.clone());
                v.violation(format!("{}: {owner}'s archive could not be read", m.id));
                continue;
            };
            match counts.get(m.id.as_str()).copied().unwrap_or(0) {
                1 => {}
                0 => {
                    damage.lost.insert(m.id.clone());
                    v.violation(format!("{}: acknowledged {} → {to}, missing from {owner}'s archive", m.id, m.sender));
                }
                n => {
                    damage.duplicated.insert(m.id.clone());
                    v.violation(format!("{}: {n} times in {owner}'s archive", m.id));
                }
            }
        }
    }
    v
}

/// Every reader of a room saw its archive in the same order. Rooms read by one
/// reader only are counted but say nothing; the note says how many.
pub fn archive_order(reads: &BTreeMap<String, Vec<ArchiveRead>>) -> Verdict {
    let mut v = Verdict::new("room_archive_same_order_for_every_reader");
    let mut single = 0;
    for (room, rs) in reads {
        let complete: Vec<&ArchiveRead> = rs.iter().filter(|r| r.complete).collect();
        let Some((first, rest)) = complete.split_first() else { continue };
        v.checked += 1;
        if rest.is_empty() {
            single += 1;
        }
        let want: Vec<&str> = first.entries.iter().map(|e| e.msg_id.as_str()).collect();
        for other in rest {
            let got: Vec<&str> = other.entries.iter().map(|e| e.msg_id.as_str()).collect();
            if got == want {
                continue;
            }
            let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
            v.violation(format!(
                "{room}: {} (node {}) and {} (node {}) differ at position {at}: {:?} vs {:?} ({} vs {} entries)",
                first.reader,
                first.node,
                other.reader,
                other.node,
                want.get(at),
                got.get(at),
                want.len(),
                got.len()
            ));
        }
    }
    let distinct_nodes =
        reads.values().filter(|rs| rs.iter().map(|r| r.node).collect::<BTreeSet<_>>().len() > 1).count();
    v.note = Some(format!("{distinct_nodes} rooms read from more than one node; {single} rooms with a single reader"));
    v
}

/// No two nodes served one room at one ownership epoch.
pub fn ownership(events: Option<&[OwnershipEvent]>) -> Verdict {
    const NAME: &str = "one_server_per_room_and_epoch";
    let Some(events) = events else {
        return Verdict::not_checked(NAME, "no node wrote <data_dir>/ownership.jsonl");
    };
    let mut v = Verdict::new(NAME);
    let mut servers: BTreeMap<(&str, &str, u64), BTreeSet<u64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "serve") {
        servers.entry((e.kind.as_str(), e.key.as_str(), e.epoch)).or_default().insert(e.node);
    }
    for ((kind, key, epoch), nodes) in &servers {
        v.checked += 1;
        if nodes.len() > 1 {
            v.violation(format!("{kind} {key} served at epoch {epoch} by nodes {nodes:?}"));
        }
    }
    v
}

/// Every client caught up: each acknowledged message of its rooms and chats reached
/// it live or is in what it read from the archives at the end. `rooms`: the rooms each
/// user was in; `live`: the message ids each user received live.
pub fn caught_up(
    sent: &[Sent],
    rooms: &BTreeMap<String, Vec<String>>,
    live: &BTreeMap<String, BTreeSet<String>>,
    room_reads: &BTreeMap<String, Vec<ArchiveRead>>,
    chat_reads: &BTreeMap<String, ArchiveRead>,
) -> Verdict {
    let mut v = Verdict::new("every_client_caught_up");
    let empty = BTreeSet::new();
    for (user, user_rooms) in rooms {
        let got_live = live.get(user).unwrap_or(&empty);
        let read_room = |room: &str| -> BTreeSet<&str> {
            room_reads
                .get(room)
                .into_iter()
                .flatten()
                .filter(|r| &r.reader == user)
                .flat_map(|r| r.entries.iter().map(|e| e.msg_id.as_str()))
                .collect()
        };
        let from_rooms: BTreeMap<&str, BTreeSet<&str>> =
            user_rooms.iter().map(|r| (r.as_str(), read_room(r))).collect();
        let own: BTreeSet<&str> =
            chat_reads.get(user).into_iter().flat_map(|r| r.entries.iter().map(|e| e.msg_id.as_str())).collect();
        for m in sent.iter().filter(|m| m.acknowledged()) {
            let found = match &m.target {
                Target::Room(room) => match from_rooms.get(room.as_str()) {
                    Some(read) => got_live.contains(&m.id) || read.contains(m.id.as_str()),
                    None => continue,
                },
                Target::Chat(to) if to == user => got_live.contains(&m.id) || own.contains(m.id.as_str()),
                Target::Chat(_) => continue,
            };
            v.checked += 1;
            if !found {
                v.violation(format!("{user} never got {} ({:?}), neither live nor from the archive", m.id, m.target));
            }
        }
    }
    v
}

/// Every node reports the same members (all up), one leader and one ring epoch, and
/// the members are the ones expected.
pub fn membership(views: &[View], expected: &BTreeSet<u64>) -> Verdict {
    let mut v = Verdict::new("membership_converged");
    v.checked = views.len() as u64;
    if views.is_empty() {
        v.violation("no node answered GET /v1/cluster".to_owned());
        return v;
    }
    for view in views {
        let members: BTreeSet<u64> = view.members.iter().copied().collect();
        if &members != expected {
            v.violation(format!("node {} sees members {members:?}, expected {expected:?}", view.node));
        }
        if !view.all_up {
            v.violation(format!("node {} sees a member that is not up", view.node));
        }
        if view.leader.is_none() {
            v.violation(format!("node {} knows no leader", view.node));
        }
    }
    let leaders: BTreeSet<Option<u64>> = views.iter().map(|w| w.leader).collect();
    let epochs: BTreeSet<u64> = views.iter().map(|w| w.epoch).collect();
    if leaders.len() > 1 {
        v.violation(format!("nodes disagree on the leader: {leaders:?}"));
    }
    if epochs.len() > 1 {
        v.violation(format!("nodes disagree on the ring epoch: {epochs:?}"));
    }
    v
}

/// A permission revoked during the run is denied on every node (`answers`: per node,
/// the `allowed` it answered, or the error).
pub fn revoked_permission(answers: Option<&[(u64, Result<bool, String>)]>) -> Verdict {
    const NAME: &str = "revoked_permission_denied_everywhere";
    let Some(answers) = answers else {
        return Verdict::not_checked(NAME, "the permission was not revoked during the run");
    };
    let mut v = Verdict::new(NAME);
    for (node, answer) in answers {
        v.checked += 1;
        match answer {
            Ok(false) => {}
            Ok(true) => v.violation(format!("node {node} still allows the removed member")),
            Err(e) => v.violation(format!("node {node} did not answer the check: {e}")),
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room_msg(id: &str, room: &str, acked: bool) -> Sent {
        Sent {
            id: id.to_owned(),
            sender: "u0".to_owned(),
            target: Target::Room(room.to_owned()),
            sent_ms: 1,
            acked_ms: acked.then_some(2),
            stanza_id: None,
            refused: false,
        }
    }

    fn chat_msg(id: &str, from: &str, to: &str) -> Sent {
        Sent {
            id: id.to_owned(),
            sender: from.to_owned(),
            target: Target::Chat(to.to_owned()),
            sent_ms: 1,
            acked_ms: Some(2),
            stanza_id: None,
            refused: false,
        }
    }

    fn read(reader: &str, node: u64, ids: &[&str]) -> ArchiveRead {
        ArchiveRead {
            reader: reader.to_owned(),
            node,
            entries: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Entry { stanza_id: format!("s{i}"), msg_id: (*id).to_owned() })
                .collect(),
            complete: true,
            error: None,
        }
    }

    fn reads(room: &str, rs: Vec<ArchiveRead>) -> BTreeMap<String, Vec<ArchiveRead>> {
        BTreeMap::from([(room.to_owned(), rs)])
    }

    #[test]
    fn clean_data_passes() {
        let sent = vec![room_msg("a", "r", true), room_msg("b", "r", true), chat_msg("c", "u0", "u1")];
        let rr = reads("r", vec![read("u0", 1, &["a", "b"]), read("u1", 2, &["a", "b"])]);
        let cr = BTreeMap::from([("u0".to_owned(), read("u0", 1, &["c"])), ("u1".to_owned(), read("u1", 2, &["c"]))]);
        let mut damage = Damage::default();
        assert_eq!(room_archives(&sent, &rr, &mut damage).status, Status::Pass);
        assert_eq!(chat_archives(&sent, &cr, &mut damage).status, Status::Pass);
        assert_eq!(archive_order(&rr).status, Status::Pass);
        assert_eq!(damage, Damage::default());
        let rooms = BTreeMap::from([("u0".to_owned(), vec!["r".to_owned()]), ("u1".to_owned(), vec!["r".to_owned()])]);
        let live = BTreeMap::from([("u1".to_owned(), BTreeSet::from(["c".to_owned()]))]);
        let v = caught_up(&sent, &rooms, &live, &rr, &cr);
        assert_eq!(v.status, Status::Pass, "{:?}", v.violations);
        assert_eq!(v.checked, 5);
        let events = [
            OwnershipEvent { node: 1, kind: "room".into(), key: "r".into(), epoch: 1, event: "serve".into(), at_ms: 1 },
            OwnershipEvent { node: 1, kind: "room".into(), key: "r".into(), epoch: 1, event: "stop".into(), at_ms: 2 },
            OwnershipEvent { node: 2, kind: "room".into(), key: "r".into(), epoch: 2, event: "serve".into(), at_ms: 3 },
        ];
        assert_eq!(ownership(Some(&events)).status, Status::Pass);
        let views = [1, 2].map(|n| View { node: n, members: vec![1, 2], all_up: true, leader: Some(1), epoch: 4 });
        assert_eq!(membership(&views, &BTreeSet::from([1, 2])).status, Status::Pass);
        assert_eq!(revoked_permission(Some(&[(1, Ok(false)), (2, Ok(false))])).status, Status::Pass);
    }

    #[test]
    fn a_lost_acknowledged_message_is_reported() {
        // "c" was never acknowledged: its absence is not a loss.
        let sent = vec![room_msg("a", "r", true), room_msg("b", "r", true), room_msg("c", "r", false)];
        let rr = reads("r", vec![read("u0", 1, &["a"])]);
        let mut damage = Damage::default();
        let v = room_archives(&sent, &rr, &mut damage);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.violation_count, 1);
        assert_eq!(damage.lost, BTreeSet::from(["b".to_owned()]));

        let chat = vec![chat_msg("m", "u0", "u1")];
        let cr = BTreeMap::from([("u0".to_owned(), read("u0", 1, &["m"])), ("u1".to_owned(), read("u1", 2, &[]))]);
        let mut damage = Damage::default();
        assert_eq!(chat_archives(&chat, &cr, &mut damage).status, Status::Fail);
        assert!(damage.lost.contains("m"));

        // A room nobody could read loses everything acknowledged in it.
        let mut damage = Damage::default();
        assert_eq!(room_archives(&sent, &BTreeMap::new(), &mut damage).violation_count, 2);
        // And a client that got it neither live nor from the archive did not catch up.
        let rooms = BTreeMap::from([("u1".to_owned(), vec!["r".to_owned()])]);
        let v = caught_up(&sent, &rooms, &BTreeMap::new(), &reads("r", vec![read("u1", 2, &["a"])]), &BTreeMap::new());
        assert_eq!(v.violation_count, 1);
    }

    #[test]
    fn a_duplicate_is_reported() {
        let sent = vec![room_msg("a", "r", true)];
        let rr = reads("r", vec![read("u0", 1, &["a"]), read("u1", 2, &["a", "a"])]);
        let mut damage = Damage::default();
        let v = room_archives(&sent, &rr, &mut damage);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(damage.duplicated, BTreeSet::from(["a".to_owned()]));
        assert!(damage.lost.is_empty());
    }

    #[test]
    fn differing_order_between_readers_is_reported() {
        let rr = reads("r", vec![read("u0", 1, &["a", "b", "c"]), read("u1", 2, &["a", "c", "b"])]);
        let v = archive_order(&rr);
        assert_eq!(v.status, Status::Fail);
        assert!(v.violations[0].contains("position 1"), "{:?}", v.violations);
        // A reader whose read was cut short is not compared.
        let mut short = read("u2", 3, &["a"]);
        short.complete = false;
        let rr = reads("r", vec![read("u0", 1, &["a", "b"]), short]);
        assert_eq!(archive_order(&rr).status, Status::Pass);
    }

    #[test]
    fn two_servers_at_one_epoch_are_reported() {
        let serve = |node| OwnershipEvent {
            node,
            kind: "room".into(),
            key: "r@muc.localhost".into(),
            epoch: 5,
            event: "serve".into(),
            at_ms: 0,
        };
        let v = ownership(Some(&[serve(1), serve(2)]));
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.violation_count, 1);
        assert_eq!(ownership(None).status, Status::NotChecked);
    }

    #[test]
    fn divergent_membership_and_a_surviving_permission_are_reported() {
        let a = View { node: 1, members: vec![1, 2, 3], all_up: true, leader: Some(1), epoch: 4 };
        let b = View { node: 2, members: vec![1, 2], all_up: false, leader: Some(2), epoch: 5 };
        let v = membership(&[a, b], &BTreeSet::from([1, 2, 3]));
        assert_eq!(v.status, Status::Fail);
        assert!(v.violation_count >= 4, "{:?}", v.violations);
        let v = revoked_permission(Some(&[(1, Ok(false)), (2, Ok(true)), (3, Err("timeout".into()))]));
        assert_eq!(v.violation_count, 2);
        assert_eq!(revoked_permission(None).status, Status::NotChecked);
    }

    #[test]
    fn a_message_the_server_refused_is_not_required_in_any_archive() {
        let mut refused = chat_msg("u0-m1", "u0", "u1");
        refused.refused = true;
        assert!(!refused.acknowledged());
        assert!(chat_msg("u0-m2", "u0", "u1").acknowledged());
        assert!(!room_msg("u0-m3", "r@muc", false).acknowledged());
    }
}
