//! `report.json` and `report.md`: the verdicts, the message counts, the fault timeline,
//! failover and reconnect times.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::args::Args;
use crate::checker::{self, Damage, Sent, Status, Verdict, View};
use crate::cluster::Mode;
use crate::run::{room_of, Step, Timeline};
use crate::schedule::{Fault, FaultKind};
use crate::workload::{Reconnect, Record};

pub struct Inputs<'a> {
    pub args: &'a Args,
    pub mode: Mode,
    pub mode_reason: &'a str,
    pub nft: bool,
    pub netem: Option<bool>,
    pub nfqueue_delay: Option<bool>,
    pub optional_env: &'a [(String, String)],
    pub optional_refused: &'a [String],
    pub faults: &'a [Fault],
    pub timeline: &'a Timeline,
    pub record: &'a Record,
    pub sent: &'a [Sent],
    pub damage: &'a Damage,
    pub verdicts: Vec<Verdict>,
    pub views: &'a [View],
    pub final_converged: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub acked: u64,
    pub room_sent: u64,
    pub room_acked: u64,
    pub chat_sent: u64,
    pub chat_acked: u64,
    /// Acknowledged, then missing from an archive that should hold it.
    pub lost: u64,
    pub duplicated: u64,
    pub lost_ids: Vec<String>,
    /// The first lost messages whole (target, when sent and acknowledged, in ms of the
    /// run), to line them up with the fault timeline and the nodes' logs.
    pub lost_details: Vec<Sent>,
    /// Lost messages per room, and `1:1` for chats.
    pub lost_by_target: BTreeMap<String, u64>,
    pub duplicated_ids: Vec<String>,
    pub delivered_live: u64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Latency {
    fn of(mut values: Vec<u64>) -> Latency {
        values.sort_unstable();
        let at = |q: f64| -> Option<u64> {
            let n = values.len();
            (n > 0).then(|| values[(((n as f64) * q).ceil() as usize).clamp(1, n) - 1])
        };
        Latency { count: values.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: values.last().copied() }
    }
}

#[derive(Debug, Serialize)]
pub struct Failover {
    pub fault: usize,
    pub kind: FaultKind,
    pub node: Option<u64>,
    pub start_ms: u64,
    pub rooms: Vec<String>,
    /// From the fault's start until every affected room had acknowledged a message
    /// sent after the start; `None`: some room never did.
    pub failover_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub profile: String,
    pub seed: u64,
    pub mode: Mode,
    pub mode_reason: String,
    pub nftables: bool,
    pub netem: Option<bool>,
    /// Without netem: whether packets were delayed through NFQUEUE (`None`: not tried).
    pub nfqueue_delay: Option<bool>,
    pub optional_settings: Vec<(String, String)>,
    pub optional_settings_refused: Vec<String>,
    pub users: usize,
    pub rooms: usize,
    pub rate_per_client: f64,
    pub duration_ms: u64,
    pub verdicts: Vec<Verdict>,
    pub messages: Messages,
    pub reconnect: Latency,
    pub reconnects: Vec<Reconnect>,
    pub failovers: Vec<Failover>,
    pub schedule: Vec<Fault>,
    pub timeline: Vec<Step>,
    pub client_events: BTreeMap<String, u64>,
    pub final_views: Vec<View>,
    pub final_converged: bool,
}

impl Report {
    pub fn build(i: Inputs<'_>) -> Report {
        let mut verdicts = vec![checker::harness(&i.timeline.problems)];
        verdicts.extend(i.verdicts);
        let is_room = |m: &&Sent| room_of(m).is_some();
        let messages = Messages {
            sent: i.sent.len() as u64,
            acked: i.sent.iter().filter(|m| m.acknowledged()).count() as u64,
            room_sent: i.sent.iter().filter(is_room).count() as u64,
            room_acked: i.sent.iter().filter(is_room).filter(|m| m.acknowledged()).count() as u64,
            chat_sent: i.sent.iter().filter(|m| !is_room(m)).count() as u64,
            chat_acked: i.sent.iter().filter(|m| !is_room(m)).filter(|m| m.acknowledged()).count() as u64,
            lost: i.damage.lost.len() as u64,
            duplicated: i.damage.duplicated.len() as u64,
            lost_ids: i.damage.lost.iter().take(50).cloned().collect(),
            lost_details: i.sent.iter().filter(|m| i.damage.lost.contains(&m.id)).take(50).cloned().collect(),
            lost_by_target: lost_by_target(i.sent, i.damage),
            duplicated_ids: i.damage.duplicated.iter().take(50).cloned().collect(),
            delivered_live: i.record.live.values().map(|s| s.len() as u64).sum(),
        };
        let reconnect =
            Latency::of(i.record.reconnects.iter().map(|r| r.ready_ms.saturating_sub(r.broke_ms)).collect());
        Report {
            profile: format!("{:?}", i.args.profile),
            seed: i.args.seed,
            mode: i.mode,
            mode_reason: i.mode_reason.to_owned(),
            nftables: i.nft,
            netem: i.netem,
            nfqueue_delay: i.nfqueue_delay,
            optional_settings: i.optional_env.to_vec(),
            optional_settings_refused: i.optional_refused.to_vec(),
            users: i.args.users,
            rooms: i.args.rooms,
            rate_per_client: i.args.rate,
            duration_ms: i.duration_ms,
            verdicts,
            messages,
            reconnect,
            reconnects: i.record.reconnects.clone(),
            failovers: failovers(&i.timeline.steps, i.sent),
            schedule: i.faults.to_vec(),
            timeline: i.timeline.steps.clone(),
            client_events: i.record.events.clone(),
            final_views: i.views.to_vec(),
            final_converged: i.final_converged,
        }
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== waddle-chaos {} seed {} ({:?} mode)", self.profile, self.seed, self.mode);
        for v in &self.verdicts {
            let status = match v.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::NotChecked => "not checked",
            };
            let _ = writeln!(s, "{status:>11}  {} ({} checked, {} violations)", v.name, v.checked, v.violation_count);
        }
        let m = &self.messages;
        let _ = writeln!(
            s,
            "messages: {} sent, {} acked ({} room / {} chat), {} lost, {} duplicated, {} live deliveries",
            m.sent, m.acked, m.room_acked, m.chat_acked, m.lost, m.duplicated, m.delivered_live
        );
        if !m.lost_by_target.is_empty() {
            let _ = writeln!(s, "lost by room: {:?}", m.lost_by_target);
        }
        let _ = writeln!(
            s,
            "reconnects: {} (p50 {} ms, p99 {} ms, max {} ms)",
            self.reconnect.count,
            opt(self.reconnect.p50_ms),
            opt(self.reconnect.p99_ms),
            opt(self.reconnect.max_ms)
        );
        for f in &self.failovers {
            let _ = writeln!(
                s,
                "failover after fault {} ({:?} on node {}): {} ({} rooms)",
                f.fault,
                f.kind,
                opt(f.node),
                f.failover_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "never".to_owned()),
                f.rooms.len()
            );
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# waddle-chaos report\n");
        let _ = writeln!(
            s,
            "- profile **{}**, seed **{}** (repeat with `--seed {}`)\n- mode **{:?}**: {}\n- nftables: {}, netem: {}\n\
             - optional settings passed: {:?}; refused by the server (left out): {:?}\n\
             - {} clients, {} rooms, {} msg/s per client, {:.1} s\n",
            self.profile,
            self.seed,
            self.seed,
            self.mode,
            self.mode_reason,
            if self.nftables { "used for partitions" } else { "not installed (partitions take the link down)" },
            match (self.netem, self.nftables) {
                (Some(true), _) => "works",
                (Some(false), true) if self.nfqueue_delay == Some(true) => {
                    "not available: loss by nftables (20% each way) and a 150 ms delay out by NFQUEUE instead"
                }
                (Some(false), true) => "not available: loss by nftables instead (20% each way, no delay)",
                (Some(false), false) => "not available (faults skipped)",
                (None, _) => "not used",
            },
            self.optional_settings,
            self.optional_settings_refused,
            self.users,
            self.rooms,
            self.rate_per_client,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(s, "## Invariants\n\n| invariant | result | checked | violations |\n|---|---|---|---|");
        for v in &self.verdicts {
            let status = match v.status {
                Status::Pass => "PASS",
                Status::Fail => "**FAIL**",
                Status::NotChecked => "not checked",
            };
            let _ = writeln!(s, "| {} | {status} | {} | {} |", v.name, v.checked, v.violation_count);
        }
        for v in &self.verdicts {
            if v.violations.is_empty() && v.note.is_none() {
                continue;
            }
            let _ = writeln!(s, "\n### {}\n", v.name);
            if let Some(note) = &v.note {
                let _ = writeln!(s, "{note}\n");
            }
            for line in &v.violations {
                let _ = writeln!(s, "- {line}");
            }
            if v.violation_count > v.violations.len() as u64 {
                let _ = writeln!(s, "- … and {} more", v.violation_count - v.violations.len() as u64);
            }
        }
        let m = &self.messages;
        let _ = writeln!(
            s,
            "\n## Messages\n\n| | sent | acknowledged |\n|---|---|---|\n| groupchat | {} | {} |\n| 1:1 | {} | {} |\n| total | {} | {} |\n\n\
             Lost (acknowledged, missing from an archive): **{}**; duplicated: **{}**; live deliveries: {}.\n",
            m.room_sent, m.room_acked, m.chat_sent, m.chat_acked, m.sent, m.acked, m.lost, m.duplicated, m.delivered_live
        );
        if !m.lost_ids.is_empty() {
            let by: Vec<String> = m.lost_by_target.iter().map(|(t, n)| format!("{t}: {n}")).collect();
            let _ = writeln!(s, "Lost by room: {}.\n\nFirst lost: {}\n", by.join(", "), m.lost_ids.join(", "));
            for lost in m.lost_details.iter().take(10) {
                let to = match &lost.target {
                    crate::checker::Target::Room(room) => room.clone(),
                    crate::checker::Target::Chat(user) => format!("1:1 to {user}"),
                };
                let acked = lost.acked_ms.map_or_else(|| "-".to_owned(), |t| format!("{:.1} s", t as f64 / 1000.0));
                let _ = writeln!(
                    s,
                    "- {} ({to}): sent at {:.1} s, acknowledged at {acked}",
                    lost.id,
                    lost.sent_ms as f64 / 1000.0
                );
            }
            if !m.lost_details.is_empty() {
                let _ = writeln!(s);
            }
        }
        let _ = writeln!(s, "## Fault timeline\n\n| t (s) | fault | kind | node | what |\n|---|---|---|---|---|");
        for step in &self.timeline {
            let fault = if step.fault == usize::MAX { "end".to_owned() } else { step.fault.to_string() };
            let _ = writeln!(
                s,
                "| {:.1} | {fault} | {:?} | {} | {}{} |",
                step.at_ms as f64 / 1000.0,
                step.kind,
                opt(step.node),
                step.what,
                if step.rooms.is_empty() {
                    String::new()
                } else {
                    format!(" (rooms owned: {})", step.rooms.join(", "))
                }
            );
        }
        let _ = writeln!(s, "\n## Failover\n\nFault start → every room owned by the target acknowledged a message sent after the start.\n");
        if self.failovers.is_empty() {
            let _ = writeln!(s, "No fault hit a node owning a room.");
        }
        for f in &self.failovers {
            let _ = writeln!(
                s,
                "- fault {} ({:?}, node {}), {} rooms: {}",
                f.fault,
                f.kind,
                opt(f.node),
                f.rooms.len(),
                f.failover_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "never served again".to_owned())
            );
        }
        let r = &self.reconnect;
        let _ = writeln!(
            s,
            "\n## Reconnects\n\n{} reconnects (break detected → logged in on another node): p50 {} ms, p99 {} ms, max {} ms.\n",
            r.count,
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.max_ms)
        );
        if !self.client_events.is_empty() {
            let _ = writeln!(s, "## Client events\n");
            for (what, n) in &self.client_events {
                let _ = writeln!(s, "- {what}: {n}");
            }
        }
        s
    }
}

fn lost_by_target(sent: &[Sent], damage: &Damage) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for m in sent.iter().filter(|m| damage.lost.contains(&m.id)) {
        *by.entry(room_of(m).unwrap_or("1:1").to_owned()).or_insert(0) += 1;
    }
    by
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

/// Failover per fault that hit a node owning rooms.
fn failovers(steps: &[Step], sent: &[Sent]) -> Vec<Failover> {
    let mut first_ack_after: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for m in sent {
        if let (Some(room), Some(acked)) = (room_of(m), m.acked_ms) {
            first_ack_after.entry(room).or_default().push((m.sent_ms, acked));
        }
    }
    steps
        .iter()
        .filter(|s| !s.rooms.is_empty())
        .map(|s| {
            let per_room: Vec<Option<u64>> = s
                .rooms
                .iter()
                .map(|room| {
                    first_ack_after
                        .get(room.as_str())
                        .and_then(|acks| acks.iter().filter(|(sent, _)| *sent >= s.at_ms).map(|(_, a)| *a).min())
                        .map(|a| a - s.at_ms)
                })
                .collect();
            let failover_ms = per_room.iter().copied().collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().max());
            Failover {
                fault: s.fault,
                kind: s.kind,
                node: s.node,
                start_ms: s.at_ms,
                rooms: s.rooms.clone(),
                failover_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Target;

    #[test]
    fn failover_waits_for_every_affected_room() {
        let msg = |room: &str, sent, acked| Sent {
            id: format!("{room}{sent}"),
            sender: "u".into(),
            target: Target::Room(room.into()),
            sent_ms: sent,
            acked_ms: acked,
            stanza_id: None,
            refused: false,
        };
        let sent =
            [msg("a", 900, Some(950)), msg("a", 1100, Some(1400)), msg("b", 1200, Some(2500)), msg("c", 1500, None)];
        let step = |rooms: &[&str]| Step {
            at_ms: 1000,
            fault: 0,
            kind: FaultKind::Kill,
            node: Some(1),
            what: String::new(),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        };
        assert_eq!(failovers(&[step(&["a", "b"])], &sent)[0].failover_ms, Some(1500));
        assert_eq!(failovers(&[step(&["a", "c"])], &sent)[0].failover_ms, None);
        assert!(failovers(&[step(&[])], &sent).is_empty());
        let l = Latency::of(vec![5, 1, 3, 100]);
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (Some(3), Some(100), Some(100)));
    }
}
