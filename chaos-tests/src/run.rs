//! One run: cluster up, accounts and rooms, clients, the fault schedule, healing and
//! convergence, the archive reads, the checker and the report. Ctrl-C (or SIGTERM)
//! ends the run early; the cluster guard removes everything either way.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use waddle_bench::conn::{Connector, TlsMode};
use waddle_bench::sm::SmConfig;

use crate::args::Args;
use crate::checker::{self, Damage, Status, Target, View};
use crate::cluster::{call, call_within, Cluster, Mode, Options, ADMIN};
use crate::prng::Prng;
use crate::report::{self, Report};
use crate::schedule::{schedule, Fault, FaultKind, Profile};
use crate::workload::{Client, Clock, Phase, Record, User, MUC_DOMAIN};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "chaos-password-1";

/// One line of the fault timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub fault: usize,
    pub kind: FaultKind,
    pub node: Option<u64>,
    pub what: String,
    /// Rooms whose owner was the target when the fault started.
    pub rooms: Vec<String>,
}

pub struct Timeline {
    clock: Arc<Clock>,
    pub steps: Vec<Step>,
    pub problems: Vec<String>,
}

impl Timeline {
    fn note(&mut self, fault: usize, kind: FaultKind, node: Option<u64>, what: impl Into<String>, rooms: Vec<String>) {
        let step = Step { at_ms: self.clock.ms(), fault, kind, node, what: what.into(), rooms };
        println!("[{:>7.1}s] {:?} node {:?}: {}", step.at_ms as f64 / 1000.0, kind, node, step.what);
        self.steps.push(step);
    }
}

pub async fn main(args: Args) -> ExitCode {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("waddle-chaos: SIGTERM handler: {e}");
            return ExitCode::from(3);
        }
    };
    let result = tokio::select! {
        r = execute(&args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); everything started was cleaned up")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM); everything started was cleaned up")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("waddle-chaos: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn execute(args: &Args) -> anyhow::Result<ExitCode> {
    let faults = schedule(args.profile, args.seed, args.nodes, args.duration_secs);
    let run_dir = std::path::absolute(&args.run_dir)?;
    let (mut cluster, guard) = Cluster::new(Options {
        prefix: args.prefix.clone(),
        run_dir: run_dir.clone(),
        bin: std::path::absolute(&args.bin)?,
        config: std::path::absolute(&args.config)?,
        force_loopback: args.loopback,
        optional_env: args.optional_env.clone(),
    })?;
    println!(
        "waddle-chaos: profile {:?}, seed {}, mode {:?} ({})",
        args.profile, args.seed, cluster.mode, cluster.mode_reason
    );
    println!("run dir: {}", run_dir.display());
    if !cluster.leftovers_removed.is_empty() {
        println!("removed leftovers of an earlier run: {}", cluster.leftovers_removed.join(", "));
    }
    std::fs::write(run_dir.join("schedule.json"), serde_json::to_vec_pretty(&faults)?)?;

    // The cluster: node 1 bootstraps, the others join through it.
    let first = cluster.add_node(String::new())?;
    cluster.start(first, READY_TIMEOUT).await?;
    let seed_addr = cluster.nodes[first].cluster_addr();
    for _ in 1..args.nodes {
        let i = cluster.add_node(seed_addr.clone())?;
        cluster.start(i, READY_TIMEOUT).await?;
    }
    if let Err((why, _)) = cluster.wait_converged(CONVERGE_TIMEOUT).await {
        bail!("the fresh cluster did not converge: {why}");
    }
    let clock = Arc::new(Clock::new());
    let mut timeline = Timeline { clock: Arc::clone(&clock), steps: Vec::new(), problems: Vec::new() };
    println!("cluster of {} up and converged", args.nodes);

    // Accounts, a waddle with a member whose access is revoked mid-run, and the rooms.
    let users = make_users(&cluster, args).await?;
    let permission = Permission::create(&cluster).await?;
    let rooms: Vec<String> = (0..args.rooms).map(|k| format!("chaos{k}@{MUC_DOMAIN}")).collect();
    let users: Vec<User> = users
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut mine = vec![rooms[i % rooms.len()].clone()];
            if rooms.len() > 1 {
                mine.push(rooms[(i + 1) % rooms.len()].clone());
            }
            User { name, password: PASSWORD.to_owned(), rooms: mine, home: i % args.nodes }
        })
        .collect();

    // The clients.
    let record: Arc<Mutex<Record>> = Arc::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Load);
    let connector = Connector::new("localhost", TlsMode::StartTls, Some(SmConfig { request_every: 1, resume: true }))?;
    let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = Vec::new();
    for (idx, user) in users.iter().enumerate() {
        let client = Client {
            idx,
            user: user.clone(),
            users: names.clone(),
            connector: connector.clone(),
            directory: Arc::clone(&cluster.directory),
            rec: Arc::clone(&record),
            clock: Arc::clone(&clock),
            phase: phase_rx.clone(),
            interval,
            seed: args.seed,
        };
        tasks.push(tokio::spawn(client.run()));
    }
    cluster.publish();

    // The faults, one at a time, with the load running throughout.
    let mut rng = Prng::new(args.seed).fork(0xfa);
    let started = Instant::now();
    let revoke_after = faults.len() / 2;
    let mut revoked = false;
    for (k, fault) in faults.iter().enumerate() {
        if args.profile == Profile::Soak && started.elapsed() > Duration::from_secs(args.duration_secs) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(fault.gap_secs)).await;
        // A soak's list is longer than its duration: its revocation comes halfway in time.
        let halfway = match args.profile {
            Profile::Soak => started.elapsed() >= Duration::from_secs(args.duration_secs / 2),
            _ => k == revoke_after,
        };
        if halfway && !revoked {
            revoked = permission.revoke(&cluster, &mut timeline).await;
        }
        run_fault(&mut cluster, k, fault, &rooms, &mut timeline).await;
        match cluster.wait_converged(CONVERGE_TIMEOUT).await {
            Ok(_) => timeline.note(k, fault.kind, None, "cluster converged", Vec::new()),
            Err((why, _)) => {
                timeline.note(
                    k,
                    fault.kind,
                    None,
                    format!("NOT converged within {CONVERGE_TIMEOUT:?}: {why}"),
                    Vec::new(),
                );
                timeline.problems.push(format!("fault {k} ({:?}): no convergence: {why}", fault.kind));
            }
        }
        let _ = rng.next_u64();
    }
    // The load goes on a while after the last fault (the baseline: for its duration).
    let tail = if faults.is_empty() { args.duration_secs } else { 10 };
    if !revoked {
        tokio::time::sleep(Duration::from_secs(tail / 2)).await;
        revoked = permission.revoke(&cluster, &mut timeline).await;
        tokio::time::sleep(Duration::from_secs(tail - tail / 2)).await;
    } else {
        tokio::time::sleep(Duration::from_secs(tail)).await;
    }

    // Heal whatever is still faulty, converge, stop sending, read the archives.
    heal_all(&mut cluster, &mut timeline).await;
    let final_converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let _ = phase_tx.send(Phase::Drain);
    println!("[{:>7.1}s] load stopped; draining", clock.ms() as f64 / 1000.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = phase_tx.send(Phase::Check);
    println!("[{:>7.1}s] reading archives", clock.ms() as f64 / 1000.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for task in &mut tasks {
        let _ = tokio::time::timeout_at(deadline.into(), task).await;
    }
    let _ = phase_tx.send(Phase::Done);
    for task in &tasks {
        task.abort();
    }

    // The observations, then the verdicts.
    let views: Vec<View> = match &final_converged {
        Ok(views) => views.clone(),
        Err((_, views)) => views.clone(),
    };
    let permission_answers = if revoked { Some(permission.check_everywhere(&cluster).await) } else { None };
    let (ownership, unreadable_lines) = cluster.ownership_events();
    let record = match record.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(_) => bail!("record lock poisoned"),
    };
    let sent: Vec<checker::Sent> = record.sent.values().cloned().collect();
    let mut damage = Damage::default();
    let user_rooms: BTreeMap<String, Vec<String>> = users.iter().map(|u| (u.name.clone(), u.rooms.clone())).collect();
    let mut verdicts = vec![
        checker::room_archives(&sent, &record.room_reads, &mut damage),
        checker::chat_archives(&sent, &record.chat_reads, &mut damage),
        checker::archive_order(&record.room_reads),
        checker::ownership(ownership.as_deref()),
        checker::caught_up(&sent, &user_rooms, &record.live, &record.room_reads, &record.chat_reads),
        checker::membership(&views, &cluster.expected_members()),
        checker::revoked_permission(permission_answers.as_deref()),
    ];
    if unreadable_lines > 0 {
        if let Some(v) = verdicts.iter_mut().find(|v| v.name == "one_server_per_room_and_epoch") {
            v.note = Some(format!("{unreadable_lines} lines of ownership.jsonl were not valid JSON"));
        }
    }
    let readers_missing: Vec<String> =
        users.iter().filter(|u| !record.chat_reads.contains_key(&u.name)).map(|u| u.name.clone()).collect();
    if !readers_missing.is_empty() {
        if let Some(v) = verdicts.iter_mut().find(|v| v.name == "every_client_caught_up") {
            v.note = Some(format!(
                "clients that could not read their archives (no login or no answer by the deadline): {}",
                readers_missing.join(", ")
            ));
        }
    }
    let report = Report::build(report::Inputs {
        args,
        mode: cluster.mode,
        mode_reason: &cluster.mode_reason,
        nft: cluster.nft,
        netem: cluster.netem,
        nfqueue_delay: cluster.nfqueue_delay,
        optional_env: &args.optional_env,
        optional_refused: &cluster.optional_refused,
        faults: &faults,
        timeline: &timeline,
        record: &record,
        sent: &sent,
        damage: &damage,
        verdicts,
        views: &views,
        final_converged: final_converged.is_ok(),
        duration_ms: clock.ms(),
    });
    std::fs::write(run_dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let md = report.markdown();
    std::fs::write(run_dir.join("report.md"), &md)?;
    println!("\n{}", report.summary());
    println!("report: {}", run_dir.join("report.md").display());
    drop(guard);

    let violated = report.verdicts.iter().any(|v| v.status == Status::Fail);
    if args.profile == Profile::ExpectLoss {
        // The loss must come from the one fault, on a cluster that otherwise worked:
        // a run that broke for another reason proves nothing about the checker.
        let sound = report
            .verdicts
            .iter()
            .filter(|v| matches!(v.name, "faults_applied_healed_and_converged" | "membership_converged"))
            .all(|v| v.status == Status::Pass);
        return Ok(if report.messages.lost > 0 && sound {
            println!("expect-loss: the checker caught {} lost acknowledged messages: OK", report.messages.lost);
            ExitCode::SUCCESS
        } else if !sound {
            println!(
                "expect-loss: the run itself failed (see faults_applied_healed_and_converged, membership_converged)"
            );
            ExitCode::from(1)
        } else {
            println!(
                "expect-loss: no loss was reported although a node's only copy was destroyed: the harness is blind"
            );
            ExitCode::from(1)
        });
    }
    Ok(if violated { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

async fn make_users(cluster: &Cluster, args: &Args) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..args.users {
        let name = format!("u{i}");
        create_account(cluster, i, &name).await?;
        names.push(name);
    }
    Ok(names)
}

async fn create_account(cluster: &Cluster, i: usize, name: &str) -> anyhow::Result<()> {
    let serving = cluster.serving();
    let node = &cluster.nodes[serving[i % serving.len()]];
    let body = json!({ "username": name, "password": PASSWORD });
    let (status, answer) = call(&node.http_base(), "POST", "/v1/accounts", Some(ADMIN), Some(&body)).await?;
    if status != 201 && status != 200 {
        bail!("POST /v1/accounts {name} on node {}: {status} {answer}", node.id);
    }
    Ok(())
}

async fn session_token(base: &str, name: &str) -> anyhow::Result<String> {
    let body = json!({ "username": name, "password": PASSWORD });
    let (status, answer) = call(base, "POST", "/auth/session", None, Some(&body)).await?;
    answer["token"]
        .as_str()
        .filter(|_| status == 200 || status == 201)
        .map(str::to_owned)
        .with_context(|| format!("POST /auth/session {name}: {status} {answer}"))
}

/// A waddle whose member is removed mid-run; the removal must then hold on every node.
struct Permission {
    waddle: String,
    owner_token: String,
}

const OWNER: &str = "owner";
const MEMBER: &str = "member";

impl Permission {
    async fn create(cluster: &Cluster) -> anyhow::Result<Permission> {
        create_account(cluster, 0, OWNER).await?;
        create_account(cluster, 1, MEMBER).await?;
        let base = cluster.nodes[cluster.serving()[0]].http_base();
        let owner_token = session_token(&base, OWNER).await?;
        let (status, w) =
            call(&base, "POST", "/v1/waddles", Some(&owner_token), Some(&json!({ "name": "chaos" }))).await?;
        let waddle = w["id"]
            .as_str()
            .filter(|_| status == 201)
            .with_context(|| format!("POST /v1/waddles: {status} {w}"))?
            .to_owned();
        let body = json!({ "user": MEMBER, "role": "member" });
        let (status, answer) =
            call(&base, "POST", &format!("/v1/waddles/{waddle}/members"), Some(&owner_token), Some(&body)).await?;
        if status != 201 {
            bail!("adding the member: {status} {answer}");
        }
        Ok(Permission { waddle, owner_token })
    }

    /// The member's `view` on the waddle as node `base` answers it, asked by the owner
    /// with a session opened on that node now (a token from the start of the run may
    /// not outlive the faults; a session that cannot be opened is itself a failure).
    async fn check(&self, base: &str) -> Result<bool, String> {
        let token = match session_token(base, OWNER).await {
            Ok(t) => t,
            Err(e) => return Err(format!("the owner cannot open a session: {e:#}")),
        };
        let body = json!({ "object": format!("waddle:{}", self.waddle), "permission": "view", "user": MEMBER });
        match call(base, "POST", "/v1/permissions/check", Some(&token), Some(&body)).await {
            Ok((200, answer)) => answer["allowed"].as_bool().ok_or_else(|| format!("no allowed in {answer}")),
            Ok((status, answer)) => Err(format!("{status} {answer}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes the member through the first node that takes it.
    async fn revoke(&self, cluster: &Cluster, timeline: &mut Timeline) -> bool {
        for i in cluster.serving() {
            let base = cluster.nodes[i].http_base();
            let path = format!("/v1/waddles/{}/members/{MEMBER}", self.waddle);
            if let Ok((204, _)) = call(&base, "DELETE", &path, Some(&self.owner_token), None).await {
                let (id, fault) = (cluster.nodes[i].id, timeline.steps.last().map_or(0, |s| s.fault));
                timeline.note(
                    fault,
                    FaultKind::Revoke,
                    Some(id),
                    "permission revoked: waddle member removed",
                    Vec::new(),
                );
                return true;
            }
        }
        timeline.problems.push("the waddle member could not be removed on any node".to_owned());
        false
    }

    async fn check_everywhere(&self, cluster: &Cluster) -> Vec<(u64, Result<bool, String>)> {
        let mut answers = Vec::new();
        for i in cluster.serving() {
            answers.push((cluster.nodes[i].id, self.check(&cluster.nodes[i].http_base()).await));
        }
        answers
    }
}

/// The node owning each room now (`GET /v1/cluster/locate`).
async fn room_owners(cluster: &Cluster, rooms: &[String]) -> BTreeMap<String, u64> {
    let mut owners = BTreeMap::new();
    let Some(&i) = cluster.serving().first() else { return owners };
    for room in rooms {
        let path = format!("/v1/cluster/locate?jid={room}");
        if let Ok((200, answer)) = call(&cluster.nodes[i].http_base(), "GET", &path, Some(ADMIN), None).await {
            if let Some(owner) = answer["owner"].as_str().and_then(|o| o.parse().ok()) {
                owners.insert(room.clone(), owner);
            }
        }
    }
    owners
}

async fn run_fault(cluster: &mut Cluster, k: usize, fault: &Fault, rooms: &[String], tl: &mut Timeline) {
    let serving = cluster.serving();
    if serving.is_empty() {
        tl.problems.push(format!("fault {k}: no serving node"));
        return;
    }
    let owners = room_owners(cluster, rooms).await;
    let mut i = serving[(fault.pick % serving.len() as u64) as usize];
    if fault.kind == FaultKind::KillWipe {
        // The node owning the most rooms: its loss must show in the archives.
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for owner in owners.values() {
            *count.entry(*owner).or_default() += 1;
        }
        if let Some((&id, _)) = count.iter().max_by_key(|(_, c)| **c) {
            i = serving.iter().copied().find(|&j| cluster.nodes[j].id == id).unwrap_or(i);
        }
    }
    let id = cluster.nodes[i].id;
    let map: Vec<String> = owners.iter().map(|(r, o)| format!("{r} on {o}")).collect();
    tl.note(k, fault.kind, None, format!("room owners before the fault: {}", map.join(", ")), Vec::new());
    let affected: Vec<String> = owners.iter().filter(|(_, o)| **o == id).map(|(r, _)| r.clone()).collect();
    let hold = Duration::from_secs(fault.hold_secs);
    let kind = fault.kind;
    let result: anyhow::Result<()> = async {
        match kind {
            FaultKind::Kill => {
                cluster.kill(i)?;
                tl.note(k, kind, Some(id), "SIGKILL", affected.clone());
                tokio::time::sleep(hold).await;
                cluster.start(i, READY_TIMEOUT).await?;
                tl.note(k, kind, Some(id), "restarted on its data dir, ready", Vec::new());
            }
            FaultKind::Stop => {
                cluster.pause(i, true)?;
                tl.note(k, kind, Some(id), format!("SIGSTOP for {hold:?}"), affected.clone());
                tokio::time::sleep(hold).await;
                cluster.pause(i, false)?;
                tl.note(k, kind, Some(id), "SIGCONT", Vec::new());
            }
            FaultKind::Partition | FaultKind::Netem if cluster.mode == Mode::Loopback => {
                tl.note(k, kind, Some(id), "skipped: loopback mode has no network faults", Vec::new());
            }
            FaultKind::Partition => {
                let how = cluster.partition(i, true)?;
                tl.note(k, kind, Some(id), format!("partitioned from the rest for {hold:?} ({how})"), affected.clone());
                tokio::time::sleep(hold).await;
                cluster.partition(i, false)?;
                tl.note(k, kind, Some(id), "partition healed", Vec::new());
            }
            FaultKind::Netem => {
                let Some(how) = cluster.netem(i, true)? else {
                    tl.note(
                        k,
                        kind,
                        Some(id),
                        "skipped: neither tc netem (kernel module sch_netem) nor nftables is available",
                        Vec::new(),
                    );
                    return Ok(());
                };
                tl.note(k, kind, Some(id), format!("{how} for {hold:?}"), affected.clone());
                tokio::time::sleep(hold).await;
                cluster.netem(i, false)?;
                tl.note(k, kind, Some(id), "loss removed", Vec::new());
            }
            FaultKind::RollingRestart => {
                for j in cluster.serving() {
                    let id = cluster.nodes[j].id;
                    cluster.terminate(j).await?;
                    tl.note(k, kind, Some(id), "stopped (SIGTERM) for a rolling restart", Vec::new());
                    cluster.start(j, READY_TIMEOUT).await?;
                    if let Err((why, _)) = cluster.wait_converged(CONVERGE_TIMEOUT).await {
                        bail!("no convergence after restarting node {id}: {why}");
                    }
                    tl.note(k, kind, Some(id), "restarted and converged", Vec::new());
                }
            }
            FaultKind::Join => {
                let seeds: Vec<String> = cluster.serving().iter().map(|&j| cluster.nodes[j].cluster_addr()).collect();
                let j = cluster.add_node(seeds.join(","))?;
                let new_id = cluster.nodes[j].id;
                tl.note(k, kind, Some(new_id), "joining under load", Vec::new());
                cluster.start(j, READY_TIMEOUT).await?;
                tl.note(k, kind, Some(new_id), "joined, ready", Vec::new());
            }
            FaultKind::Leave => {
                let base = cluster.nodes[i].http_base();
                // The server's own drain bound is 60 s.
                let limit = Duration::from_secs(75);
                match call_within(limit, &base, "POST", "/v1/cluster/leave", Some(ADMIN), Some(&json!({}))).await {
                    Ok((200, _)) => {
                        tl.note(k, kind, Some(id), "left (POST /v1/cluster/leave)", affected.clone());
                        // The node exits by itself once drained; `terminate` only makes
                        // sure. Retired after it: stopping marks a node down, not gone.
                        cluster.terminate(i).await?;
                        cluster.retire(i);
                        tl.note(k, kind, Some(id), "stopped after leaving", Vec::new());
                    }
                    other => {
                        tl.note(
                            k,
                            kind,
                            Some(id),
                            format!("leave refused ({other:?}): kill and remove"),
                            affected.clone(),
                        );
                        remove_dead(cluster, i).await?;
                    }
                }
            }
            FaultKind::Revoke => {}
            FaultKind::KillWipe => {
                cluster.kill(i)?;
                let dir = cluster.data_dir(i).to_owned();
                std::fs::remove_dir_all(&dir)?;
                std::fs::create_dir_all(&dir)?;
                tl.note(k, kind, Some(id), "SIGKILL and data dir wiped; never restarted", affected.clone());
                remove_dead(cluster, i).await?;
                tl.note(k, kind, Some(id), "removed from the cluster by a survivor", Vec::new());
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tl.note(k, kind, Some(id), format!("FAILED: {e:#}"), Vec::new());
        tl.problems.push(format!("fault {k} ({kind:?}) on node {id}: {e:#}"));
    }
}

/// Kills node `i` (if running) and has a survivor remove it from the membership.
async fn remove_dead(cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
    if cluster.nodes[i].child.is_some() {
        cluster.kill(i)?;
    }
    let id = cluster.nodes[i].id;
    cluster.retire(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for j in cluster.serving() {
            let base = cluster.nodes[j].http_base();
            if let Ok((200, _)) =
                call(&base, "POST", "/v1/cluster/remove", Some(ADMIN), Some(&json!({ "node": id }))).await
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no survivor removed node {id} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Undoes any fault still in place (a fault that failed half-way).
async fn heal_all(cluster: &mut Cluster, tl: &mut Timeline) {
    for i in 0..cluster.nodes.len() {
        let id = cluster.nodes[i].id;
        let n = &cluster.nodes[i];
        if n.partitioned && cluster.partition(i, false).is_ok() {
            tl.note(usize::MAX, FaultKind::Partition, Some(id), "healed at the end", Vec::new());
        }
        if cluster.nodes[i].netem {
            let _ = cluster.netem(i, false);
        }
        let state = cluster.nodes[i].state;
        match state {
            crate::cluster::NodeState::Stopped => {
                let _ = cluster.pause(i, false);
            }
            crate::cluster::NodeState::Down if cluster.start(i, READY_TIMEOUT).await.is_ok() => {
                tl.note(usize::MAX, FaultKind::Kill, Some(id), "restarted at the end", Vec::new());
            }
            _ => {}
        }
    }
}

/// Which rooms a message went to, for failover times.
pub fn room_of(m: &checker::Sent) -> Option<&str> {
    match &m.target {
        Target::Room(r) => Some(r),
        Target::Chat(_) => None,
    }
}
