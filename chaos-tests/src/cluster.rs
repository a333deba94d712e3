//! Real `waddle` processes and the network around them.
//!
//! netns mode (root, `ip netns` works): every node runs in its own network namespace
//! with one veth into a bridge in the harness's namespace, which is how the harness
//! and the clients reach it; partitions and netem act on that veth, so faults are real
//! network faults. loopback mode: every node on its own 127.0.0.x address with probed
//! free ports; only process faults.
//!
//! Everything created is recorded in a [`Registry`] before it exists, so that the
//! guard's `Drop` (normal end, error, panic) and the Ctrl-C path can remove it all, and
//! a later run with the same prefix removes what a crashed run left.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use crate::checker::View;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Netns,
    Loopback,
}

/// Runs a command to completion; its output goes to the error when it fails.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    run("kill", &[&format!("-{sig}"), &pid.to_string()]).map(drop)
}

/// What has been created, for cleanup.
#[derive(Debug, Default)]
pub struct Registry {
    prefix: String,
    namespaces: Vec<String>,
    links: Vec<String>,
    pids: BTreeSet<u32>,
    pidfile: PathBuf,
}

impl Registry {
    fn save_pids(&self) {
        let list: String = self.pids.iter().map(|p| format!("{p}\n")).collect();
        let _ = std::fs::write(&self.pidfile, list);
    }

    fn add_pid(&mut self, pid: u32) {
        self.pids.insert(pid);
        self.save_pids();
    }

    fn forget_pid(&mut self, pid: u32) {
        self.pids.remove(&pid);
        self.save_pids();
    }

    /// Kills every process and removes every namespace and link; safe to repeat.
    pub fn cleanup(&mut self) {
        for pid in std::mem::take(&mut self.pids) {
            let _ = signal(pid, "CONT");
            let _ = signal(pid, "KILL");
        }
        for ns in std::mem::take(&mut self.namespaces) {
            kill_namespace_pids(&ns);
            let _ = run("ip", &["netns", "del", &ns]);
        }
        for link in std::mem::take(&mut self.links) {
            let _ = run("ip", &["link", "del", &link]);
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// Removes what an earlier run with this prefix left behind.
    fn remove_leftovers(&self) -> Vec<String> {
        let mut removed = Vec::new();
        if let Ok(list) = std::fs::read_to_string(&self.pidfile) {
            for pid in list.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("waddle") {
                    let _ = signal(pid, "KILL");
                    removed.push(format!("process {pid}"));
                }
            }
            let _ = std::fs::remove_file(&self.pidfile);
        }
        let ns_prefix = format!("{}-n", self.prefix);
        for line in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            if name.starts_with(&ns_prefix) {
                kill_namespace_pids(name);
                let _ = run("ip", &["netns", "del", name]);
                removed.push(format!("netns {name}"));
            }
        }
        for line in run("ip", &["-o", "link", "show"]).unwrap_or_default().lines() {
            // "12: wchv1@if3: <...>": the name is the second field, up to '@' or ':'.
            let Some(name) = line.split_whitespace().nth(1) else { continue };
            let name = name.trim_end_matches(':').split('@').next().unwrap_or_default();
            if name.starts_with(&self.prefix) && !name.is_empty() {
                let _ = run("ip", &["link", "del", name]);
                removed.push(format!("link {name}"));
            }
        }
        removed
    }
}

fn kill_namespace_pids(ns: &str) {
    for pid in run("ip", &["netns", "pids", ns]).unwrap_or_default().split_whitespace() {
        let _ = run("kill", &["-CONT", pid]);
        let _ = run("kill", &["-KILL", pid]);
    }
}

/// Cleans up when dropped: at the end of the run, on an error and on a panic.
pub struct Guard(pub Arc<Mutex<Registry>>);

impl Drop for Guard {
    fn drop(&mut self) {
        match self.0.lock() {
            Ok(mut r) => r.cleanup(),
            Err(poisoned) => poisoned.into_inner().cleanup(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Running,
    Stopped,
    Down,
    Left,
}

#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub ip: String,
    pub ns: Option<String>,
    pub veth: Option<String>,
    pub c2s_port: u16,
    pub direct_port: u16,
    pub http_port: u16,
    pub cluster_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub seeds: String,
    pub child: Option<Child>,
    pub state: NodeState,
    pub partitioned: bool,
    pub netem: bool,
    /// The packet-delay helper running in the node's namespace (`delay.rs`), while a
    /// loss fault without `sch_netem` is on.
    pub delayer: Option<Child>,
}

impl Node {
    pub fn http_base(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }

    pub fn c2s(&self) -> String {
        format!("{}:{}", self.ip, self.c2s_port)
    }

    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.ip, self.cluster_port)
    }

    /// A member the clients may use and the harness may ask.
    pub fn serving(&self) -> bool {
        self.state == NodeState::Running && !self.partitioned
    }
}

/// Where clients may connect: every node's address and whether it is healthy as far
/// as the harness knows (a load balancer's health check, in a real deployment).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: u64,
    pub c2s: String,
    pub healthy: bool,
}

pub type Directory = Arc<RwLock<Vec<Endpoint>>>;

pub struct Options {
    pub prefix: String,
    pub run_dir: PathBuf,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub force_loopback: bool,
    /// Settings only newer servers know (`WADDLE_CLUSTER_REPLICAS`...), passed when
    /// the server accepts them.
    pub optional_env: Vec<(String, String)>,
}

/// The netfilter queue a node's delay helper reads, in the node's own namespace.
const DELAY_QUEUE: &str = "1";
/// The iptables rule (chain and match) that queues a node's outgoing packets to its
/// delay helper; `--queue-bypass` lets them pass when no helper listens.
const DELAY_RULE: [&str; 8] = ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", DELAY_QUEUE, "--queue-bypass"];

pub const ADMIN: &str = "chaos-admin-token-0123456789";
const SECRET: &str = "chaos-cluster-secret-0123456789";
const SUBNET: &str = "10.77.0";

pub struct Cluster {
    pub mode: Mode,
    pub mode_reason: String,
    pub nft: bool,
    /// netem works on a node's link (checked on first use).
    pub netem: Option<bool>,
    /// Without netem: packets are delayed through NFQUEUE (checked on first use).
    pub nfqueue_delay: Option<bool>,
    pub nodes: Vec<Node>,
    pub directory: Directory,
    pub optional_env: Vec<(String, String)>,
    /// Optional settings the server refused (and that were then left out).
    pub optional_refused: Vec<String>,
    pub leftovers_removed: Vec<String>,
    opts: Options,
    registry: Arc<Mutex<Registry>>,
    bridge: Option<String>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn netns_usable() -> Result<(), String> {
    let uid = run("id", &["-u"]).map_err(|e| e.to_string())?;
    if uid.trim() != "0" {
        return Err("not root".to_owned());
    }
    if !have("ip") {
        return Err("no `ip` command (iproute2)".to_owned());
    }
    run("ip", &["netns", "list"]).map(drop).map_err(|e| format!("`ip netns` does not work: {e}"))
}

impl Cluster {
    pub fn new(opts: Options) -> anyhow::Result<(Cluster, Guard)> {
        std::fs::create_dir_all(&opts.run_dir)?;
        let registry = Arc::new(Mutex::new(Registry {
            prefix: opts.prefix.clone(),
            pidfile: std::env::temp_dir().join(format!("waddle-chaos-{}.pids", opts.prefix)),
            ..Registry::default()
        }));
        let guard = Guard(Arc::clone(&registry));
        let leftovers_removed = registry.lock().map_err(|_| anyhow!("registry poisoned"))?.remove_leftovers();
        let (mode, mode_reason) = match (opts.force_loopback, netns_usable()) {
            (true, _) => (Mode::Loopback, "loopback asked for (--loopback)".to_owned()),
            (false, Ok(())) => (Mode::Netns, "root and `ip netns` works".to_owned()),
            (false, Err(why)) => (Mode::Loopback, format!("{why}: process faults only, no partitions or netem")),
        };
        let mut cluster = Cluster {
            mode,
            mode_reason,
            nft: mode == Mode::Netns && have("nft"),
            netem: None,
            nfqueue_delay: None,
            nodes: Vec::new(),
            directory: Arc::new(RwLock::new(Vec::new())),
            optional_env: opts.optional_env.clone(),
            optional_refused: Vec::new(),
            leftovers_removed,
            opts,
            registry,
            bridge: None,
        };
        if mode == Mode::Netns {
            let bridge = format!("{}br", cluster.opts.prefix);
            cluster.reg(|r| r.links.push(bridge.clone()))?;
            run("ip", &["link", "add", &bridge, "type", "bridge"])?;
            run("ip", &["addr", "add", &format!("{SUBNET}.1/24"), "dev", &bridge])?;
            run("ip", &["link", "set", &bridge, "up"])?;
            cluster.bridge = Some(bridge);
        }
        Ok((cluster, guard))
    }

    fn reg<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> anyhow::Result<T> {
        let mut r = self.registry.lock().map_err(|_| anyhow!("registry poisoned"))?;
        Ok(f(&mut r))
    }

    /// Publishes which nodes clients may use.
    pub fn publish(&self) {
        let endpoints = self
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Left)
            .map(|n| Endpoint { id: n.id, c2s: n.c2s(), healthy: n.serving() })
            .collect();
        if let Ok(mut d) = self.directory.write() {
            *d = endpoints;
        }
    }

    /// Creates node `id`'s network and directories (not started). `seeds`: the
    /// cluster addresses it joins through (empty for the first node).
    pub fn add_node(&mut self, seeds: String) -> anyhow::Result<usize> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let prefix = self.opts.prefix.clone();
        let dir = self.opts.run_dir.join(format!("node{id}"));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let (ip, ns, veth, ports) = match self.mode {
            Mode::Netns => {
                let ns = format!("{prefix}-n{id}");
                let veth = format!("{prefix}v{id}");
                self.reg(|r| {
                    r.namespaces.push(ns.clone());
                    r.links.push(veth.clone());
                })?;
                let ip = format!("{SUBNET}.{}", 10 + id);
                let bridge = self.bridge.clone().unwrap_or_default();
                run("ip", &["netns", "add", &ns])?;
                run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
                run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
                run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
                run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
                (ip, Some(ns), Some(veth), [5222, 5223, 5280, 7401])
            }
            Mode::Loopback => {
                (format!("127.0.0.{}", 10 + id), None, None, [free_port()?, free_port()?, free_port()?, free_port()?])
            }
        };
        self.nodes.push(Node {
            id,
            ip,
            ns,
            veth,
            c2s_port: ports[0],
            direct_port: ports[1],
            http_port: ports[2],
            cluster_port: ports[3],
            data_dir,
            log: dir.join("waddle.log"),
            seeds,
            child: None,
            state: NodeState::Down,
            partitioned: false,
            netem: false,
            delayer: None,
        });
        Ok(self.nodes.len() - 1)
    }

    fn env(&self, n: &Node, optional: bool) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("WADDLE_SERVER_DOMAIN".into(), "localhost".into()),
            ("WADDLE_SERVER_DATA_DIR".into(), n.data_dir.display().to_string()),
            ("WADDLE_SERVER_BIND_ADDRESS".into(), n.ip.clone()),
            ("WADDLE_SERVER_NODE_ID".into(), n.id.to_string()),
            ("WADDLE_C2S_STARTTLS_PORT".into(), n.c2s_port.to_string()),
            ("WADDLE_C2S_DIRECT_TLS_PORT".into(), n.direct_port.to_string()),
            ("WADDLE_HTTP_PORT".into(), n.http_port.to_string()),
            ("WADDLE_CLUSTER_LISTEN".into(), n.cluster_addr()),
            ("WADDLE_CLUSTER_SEEDS".into(), n.seeds.clone()),
            ("WADDLE_CLUSTER_SECRET".into(), SECRET.into()),
            ("WADDLE_AUTH_ADMIN_TOKEN".into(), ADMIN.into()),
            ("WADDLE_AUTH_OPEN_REGISTRATION".into(), "true".into()),
            ("WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS".into(), "1000000".into()),
            // The workload's rate is bounded by the harness; the server's per-session
            // limits would turn a reconnect storm into refused joins.
            ("WADDLE_RATE_LIMITS_ENABLED".into(), "false".into()),
            // Every client comes from the harness's address: a client whose account a
            // fault destroyed must not get the others' logins (and the owner's check at
            // the end) refused as a password-guessing address.
            ("WADDLE_AUTH_MAX_AUTH_FAILURES".into(), "1000000".into()),
            ("WADDLE_AUTH_ACCOUNT_FAILURE_CEILING".into(), "1000000".into()),
            ("WADDLE_LOG_LEVEL".into(), "info".into()),
        ];
        if optional {
            env.extend(self.optional_env.iter().cloned());
        }
        env
    }

    /// Starts node `i` and waits until `GET /ready` answers 200 (at most `timeout`).
    pub async fn start(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let result = self.start_once(i, timeout, !self.optional_env.is_empty()).await;
        let Err(e) = result else { return Ok(()) };
        // A server that does not know an optional setting refuses to start naming it:
        // leave the optional settings out from then on and say so in the report.
        let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let refused: Vec<String> =
            self.optional_env.iter().filter(|(k, _)| log.contains(k.as_str())).map(|(k, _)| k.clone()).collect();
        if refused.is_empty() {
            return Err(e);
        }
        self.optional_refused.extend(refused);
        self.optional_env.clear();
        self.start_once(i, timeout, false).await
    }

    async fn start_once(&mut self, i: usize, timeout: Duration, optional: bool) -> anyhow::Result<()> {
        let env = self.env(&self.nodes[i], optional);
        let n = &self.nodes[i];
        let mut log = OpenOptions::new().create(true).append(true).open(&n.log)?;
        let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(log, "# chaos: start node {} ({}): {}", n.id, unix_ms(), shown.join(" "))?;
        let mut cmd = match &n.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.opts.bin);
                c
            }
            None => Command::new(&self.opts.bin),
        };
        cmd.arg("--config").arg(&self.opts.config);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WADDLE_") || k == "RUST_LOG") {
            cmd.env_remove(k);
        }
        cmd.envs(env).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("spawn {}", self.opts.bin.display()))?;
        // `ip netns exec` execs the server: the child's pid is the server's.
        let pid = child.id();
        self.reg(|r| r.add_pid(pid))?;
        let base = n.http_base();
        let id = n.id;
        self.nodes[i].child = Some(child);
        self.nodes[i].state = NodeState::Running;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.nodes[i].child = None;
                    self.nodes[i].state = NodeState::Down;
                    self.reg(|r| r.forget_pid(pid))?;
                    bail!("node {id} exited during startup ({status}); see {}", self.nodes[i].log.display());
                }
            }
            if let Ok((200, _)) = get(&base, "/ready", None).await {
                self.publish();
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} not ready within {timeout:?}; see {}", self.nodes[i].log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        self.nodes[i].child.as_ref().map(Child::id).ok_or_else(|| anyhow!("node {} is not running", self.nodes[i].id))
    }

    /// SIGKILL (after SIGCONT, in case it was stopped).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.pid(i)?;
        let _ = signal(pid, "CONT");
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reg(|r| r.forget_pid(pid))?;
        self.nodes[i].state = NodeState::Down;
        self.publish();
        Ok(())
    }

    /// SIGTERM and a wait for the exit (SIGKILL after 15 s).
    pub async fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.pid(i)?;
        let _ = signal(pid, "CONT");
        signal(pid, "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Some(child) = self.nodes[i].child.as_mut() {
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(i)
    }

    pub fn pause(&mut self, i: usize, stop: bool) -> anyhow::Result<()> {
        signal(self.pid(i)?, if stop { "STOP" } else { "CONT" })?;
        self.nodes[i].state = if stop { NodeState::Stopped } else { NodeState::Running };
        self.publish();
        Ok(())
    }

    /// Cuts node `i` off from the other nodes (or heals it). With nftables, drops in
    /// the node's namespace to and from the other nodes only, so that the harness can
    /// still watch it; without, its link goes down (cut from everyone).
    pub fn partition(&mut self, i: usize, on: bool) -> anyhow::Result<&'static str> {
        let (Some(ns), Some(veth)) = (self.nodes[i].ns.clone(), self.nodes[i].veth.clone()) else {
            bail!("partitions need netns mode");
        };
        let how = if self.nft {
            let table = "waddle_chaos";
            if on {
                let others: Vec<String> =
                    self.nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| n.ip.clone()).collect();
                let set = others.join(", ");
                let rules = format!(
                    "table inet {table} {{\n chain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n \
                     chain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n}}\n"
                );
                let file = self.opts.run_dir.join(format!("partition-node{}.nft", self.nodes[i].id));
                std::fs::write(&file, rules)?;
                run("ip", &["netns", "exec", &ns, "nft", "-f", &file.display().to_string()])?;
            } else {
                run("ip", &["netns", "exec", &ns, "nft", "delete", "table", "inet", table])?;
            }
            "nftables drops between the node and the other nodes"
        } else {
            run("ip", &["link", "set", &veth, if on { "down" } else { "up" }])?;
            "the node's veth link down (cut from everyone)"
        };
        self.nodes[i].partitioned = on;
        self.publish();
        Ok(how)
    }

    /// Loss and delay on node `i`'s link, or their removal: `tc netem` (20% loss, 150±50 ms
    /// delay) where the kernel has `sch_netem`, else nftables dropping 20% of the link's
    /// packets at random each way and, where iptables' NFQUEUE works, every packet the node
    /// sends held 150 ms by a helper in its namespace ([`crate::delay`]). What was
    /// applied; `None` when none of it is available.
    pub fn netem(&mut self, i: usize, on: bool) -> anyhow::Result<Option<&'static str>> {
        let Some(ns) = self.nodes[i].ns.clone() else { return Ok(None) };
        if self.netem != Some(false) {
            let result = if on {
                run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "20%",
                        "delay", "150ms", "50ms",
                    ],
                )
            } else {
                run("ip", &["netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root"])
            };
            match result {
                Ok(_) => {
                    self.netem = Some(true);
                    self.nodes[i].netem = on;
                    return Ok(Some("netem loss 20% delay 150±50 ms"));
                }
                Err(_) if on && self.netem.is_none() => self.netem = Some(false),
                Err(e) => return Err(e),
            }
        }
        if !self.nft {
            return Ok(None);
        }
        let table = "waddle_chaos_loss";
        if on {
            let rules = format!(
                "table inet {table} {{\n chain input {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < 20 drop; }}\n \
                 chain output {{ type filter hook output priority 0; oifname \"eth0\" numgen random mod 100 < 20 drop; }}\n}}\n"
            );
            let file = self.opts.run_dir.join(format!("loss-node{}.nft", self.nodes[i].id));
            std::fs::write(&file, rules)?;
            run("ip", &["netns", "exec", &ns, "nft", "-f", &file.display().to_string()])?;
            self.nodes[i].netem = true;
            if self.nfqueue_delay != Some(false) {
                let delaying = self.start_delay(i, &ns);
                if self.nfqueue_delay.is_none() {
                    self.nfqueue_delay = Some(delaying.is_ok());
                }
                match delaying {
                    Ok(()) => return Ok(Some("nftables loss 20% each way, 150 ms delay out (NFQUEUE; no sch_netem)")),
                    Err(e) => eprintln!("waddle-chaos: no packet delay: {e:#}"),
                }
            }
            Ok(Some("nftables loss 20% each way, no delay (no sch_netem, no NFQUEUE)"))
        } else {
            self.stop_delay(i, &ns);
            run("ip", &["netns", "exec", &ns, "nft", "delete", "table", "inet", table])?;
            self.nodes[i].netem = false;
            Ok(Some("nftables loss 20% each way, no delay (no sch_netem, no NFQUEUE)"))
        }
    }

    /// Starts the delay helper in namespace `ns` and, once it listens, queues every packet
    /// the node sends on its link to it (`--queue-bypass`: with no helper they pass).
    fn start_delay(&mut self, i: usize, ns: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("the harness's own path")?;
        let exe = exe.display().to_string();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                &exe,
                "--delay-packets",
                "--queue",
                DELAY_QUEUE,
                "--delay-ms",
                "150",
                "--secs",
                "300",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the delay helper")?;
        let Some(stdout) = child.stdout.take() else { bail!("the delay helper has no stdout") };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end: the helper's last words ("released N") must find the pipe open.
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
            lines.for_each(drop);
        });
        let bound = rx.recv_timeout(Duration::from_secs(3)).is_ok_and(|l| l.trim() == "bound");
        let added = if bound {
            let mut args = vec!["netns", "exec", ns, "iptables", "-A"];
            args.extend(DELAY_RULE);
            run("ip", &args).map(drop)
        } else {
            Err(anyhow::anyhow!("the delay helper did not bind its queue (see its error above)"))
        };
        if let Err(e) = added {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.nodes[i].delayer = Some(child);
        Ok(())
    }

    /// Removes the queueing rule, then lets the helper release what it holds and exit.
    fn stop_delay(&mut self, i: usize, ns: &str) {
        let Some(mut child) = self.nodes[i].delayer.take() else { return };
        let mut args = vec!["netns", "exec", ns, "iptables", "-D"];
        args.extend(DELAY_RULE);
        let _ = run("ip", &args);
        drop(child.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Marks a node gone for good (left or removed): not a member any more.
    pub fn retire(&mut self, i: usize) {
        self.nodes[i].state = NodeState::Left;
        self.publish();
    }

    /// The members the cluster should have: every node that has not left.
    pub fn expected_members(&self) -> BTreeSet<u64> {
        self.nodes.iter().filter(|n| n.state != NodeState::Left).map(|n| n.id).collect()
    }

    pub fn serving(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].serving()).collect()
    }

    /// Every serving node's view (nodes that do not answer are left out).
    pub async fn views(&self) -> Vec<View> {
        let mut views = Vec::new();
        for i in self.serving() {
            if let Ok(v) = self.status(i).await {
                views.push(v);
            }
        }
        views
    }

    pub async fn status(&self, i: usize) -> anyhow::Result<View> {
        let n = &self.nodes[i];
        let (code, body) = get(&n.http_base(), "/v1/cluster", Some(ADMIN)).await?;
        if code != 200 {
            bail!("GET /v1/cluster on node {}: {code} {body}", n.id);
        }
        Ok(parse_view(n.id, &body))
    }

    /// Waits until every serving node agrees on the expected members, all up, one
    /// leader and one epoch; the last views on failure.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<Vec<View>, (String, Vec<View>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let expected = self.expected_members();
            let views = self.views().await;
            let verdict = crate::checker::membership(&views, &expected);
            if views.len() == self.serving().len() && verdict.violation_count == 0 {
                return Ok(views);
            }
            if Instant::now() > deadline {
                let why = if views.len() < self.serving().len() {
                    format!("{} of {} serving nodes answered", views.len(), self.serving().len())
                } else {
                    verdict.violations.join("; ")
                };
                return Err((why, views));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The ownership audit lines of every node that ever ran; `None` when no node
    /// wrote the file.
    pub fn ownership_events(&self) -> (Option<Vec<crate::checker::OwnershipEvent>>, u64) {
        let mut any = false;
        let mut events = Vec::new();
        let mut unreadable = 0;
        for n in &self.nodes {
            let Ok(text) = std::fs::read_to_string(n.data_dir.join("ownership.jsonl")) else { continue };
            any = true;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str(line) {
                    Ok(e) => events.push(e),
                    Err(_) => unreadable += 1,
                }
            }
        }
        (any.then_some(events), unreadable)
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }
}

pub fn parse_view(node: u64, body: &Value) -> View {
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    View {
        node,
        members: nodes.iter().filter_map(|n| n["id"].as_u64()).collect(),
        all_up: nodes.iter().all(|n| n["state"].as_str() == Some("up")),
        leader: body["leader"].as_u64(),
        epoch: body["ring_epoch"].as_u64().unwrap_or(0),
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An HTTP call bounded in time (a paused or cut-off node never answers).
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    call_within(Duration::from_secs(3), base, method, path, bearer, body).await
}

/// [`call`] with its own bound: a drain (`POST /v1/cluster/leave`) answers only once the
/// node's partitions have moved away, which takes longer than a status read.
pub async fn call_within(
    limit: Duration,
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    tokio::time::timeout(limit, waddle_bench::http::request(base, method, path, bearer, body))
        .await
        .map_err(|_| anyhow!("{method} {base}{path}: no answer in {limit:?}"))?
}

pub async fn get(base: &str, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, Value)> {
    call(base, "GET", path, bearer, None).await
}
