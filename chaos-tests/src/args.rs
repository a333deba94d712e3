//! The command line.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::schedule::Profile;

pub const USAGE: &str = "\
waddle-chaos: fault injection against real waddle nodes, then a check of what the cluster promised

usage: waddle-chaos [options]

  --profile ci|soak    ci: 3 nodes, one kill -9, one SIGSTOP, one partition, one join and
                       one leave under load (~2-3 min); soak: faults every few seconds for
                       --duration (default ci)
  --faults none        no faults: the baseline (load for --duration, default 30 s)
  --expect-loss        one node killed, its data dir wiped and removed, with replication
                       off (--replicas 1); succeeds only if the checker reports the lost
                       acknowledged messages
  --nodes N            starting cluster size (ci: 3, soak: 5)
  --duration SECS      soak length, or the baseline's load time
  --seed N             the schedule's and the workload's seed (default: from the clock;
                       printed, so a run can be repeated)
  --users N            XMPP clients (default 12)
  --rooms N            MUC rooms (default 4); every user is in two
  --rate R             messages per second per client (default 1)
  --run-dir DIR        where logs, data dirs and the report go (default
                       target/chaos/<profile>-<unix time>)
  --waddle-bin PATH    server binary (default target/debug/waddle)
  --config PATH        base config file (default config/waddle.toml); every node's own
                       settings are WADDLE_* overrides on top
  --prefix NAME        namespace/link name prefix (default wch); leftovers of an earlier
                       run with the same prefix are removed at start
  --loopback           loopback mode even when network namespaces are available
  --replicas N         pass WADDLE_CLUSTER_REPLICAS=N
  --heartbeat-ms N     pass WADDLE_CLUSTER_HEARTBEAT_MS=N
  --down-after-ms N    pass WADDLE_CLUSTER_DOWN_AFTER_MS=N
                       (a server that does not know one of these refuses to start naming
                       it; the harness then leaves them out and says so in the report)

exit code: 0 when every invariant holds (with --expect-loss: when the loss was caught),
1 on a violation, 2 on a usage error, 3 when the harness itself failed.
";

#[derive(Clone, Debug)]
pub struct Args {
    pub profile: Profile,
    pub nodes: usize,
    pub duration_secs: u64,
    pub seed: u64,
    pub users: usize,
    pub rooms: usize,
    pub rate: f64,
    pub run_dir: PathBuf,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub prefix: String,
    pub loopback: bool,
    pub optional_env: Vec<(String, String)>,
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> anyhow::Result<T> {
    let value = value.with_context(|| format!("{flag} needs a value"))?;
    value.parse().map_err(|_| anyhow::anyhow!("{flag}: not a valid number: {value}"))
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut profile = None;
        let mut none = false;
        let mut expect_loss = false;
        let (mut nodes, mut duration, mut seed) = (None, None, None);
        let (mut users, mut rooms, mut rate) = (12usize, 4usize, 1.0f64);
        let (mut run_dir, mut bin, mut config) =
            (None, PathBuf::from("target/debug/waddle"), PathBuf::from("config/waddle.toml"));
        let mut prefix = "wch".to_owned();
        let mut loopback = false;
        let mut optional_env = Vec::new();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--profile" => {
                    profile = Some(match it.next().as_deref() {
                        Some("ci") => Profile::Ci,
                        Some("soak") => Profile::Soak,
                        other => bail!("--profile ci|soak, not {other:?}"),
                    })
                }
                "--faults" => match it.next().as_deref() {
                    Some("none") => none = true,
                    other => bail!("--faults none, not {other:?}"),
                },
                "--expect-loss" => expect_loss = true,
                "--nodes" => nodes = Some(number::<usize>(&flag, it.next())?),
                "--duration" => duration = Some(number::<u64>(&flag, it.next())?),
                "--seed" => seed = Some(number::<u64>(&flag, it.next())?),
                "--users" => users = number(&flag, it.next())?,
                "--rooms" => rooms = number(&flag, it.next())?,
                "--rate" => rate = number(&flag, it.next())?,
                "--run-dir" => run_dir = Some(PathBuf::from(it.next().context("--run-dir needs a value")?)),
                "--waddle-bin" => bin = PathBuf::from(it.next().context("--waddle-bin needs a value")?),
                "--config" => config = PathBuf::from(it.next().context("--config needs a value")?),
                "--prefix" => prefix = it.next().context("--prefix needs a value")?,
                "--loopback" => loopback = true,
                "--replicas" | "--heartbeat-ms" | "--down-after-ms" => {
                    let n: u64 = number(&flag, it.next())?;
                    let field = flag.trim_start_matches("--").replace('-', "_").to_uppercase();
                    optional_env.push((format!("WADDLE_CLUSTER_{field}"), n.to_string()));
                }
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        let profile = match (none, expect_loss, profile) {
            (true, false, None | Some(Profile::Ci)) => Profile::None,
            (false, true, None) => Profile::ExpectLoss,
            (false, false, p) => p.unwrap_or(Profile::Ci),
            _ => bail!("--faults none, --expect-loss and --profile soak exclude each other"),
        };
        if profile == Profile::ExpectLoss && !optional_env.iter().any(|(k, _)| k == "WADDLE_CLUSTER_REPLICAS") {
            optional_env.push(("WADDLE_CLUSTER_REPLICAS".to_owned(), "1".to_owned()));
        }
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            bail!("--prefix: 1 to 8 lowercase letters or digits (interface names are short)");
        }
        if !((2..=200).contains(&users) && (1..=50).contains(&rooms) && rate > 0.0 && rate <= 20.0) {
            bail!("bounds: 2..=200 users, 1..=50 rooms, a rate in (0, 20] messages/s per client");
        }
        let nodes = nodes.unwrap_or(if profile == Profile::Soak { 5 } else { 3 });
        if !(2..=9).contains(&nodes) {
            bail!("--nodes: 2 to 9");
        }
        let duration_secs = duration.unwrap_or(match profile {
            Profile::Soak => 600,
            _ => 30,
        });
        let seed = seed.unwrap_or_else(|| crate::cluster::unix_ms() % 1_000_000);
        let name = match profile {
            Profile::Ci => "ci",
            Profile::Soak => "soak",
            Profile::None => "baseline",
            Profile::ExpectLoss => "expect-loss",
        };
        let run_dir = run_dir
            .unwrap_or_else(|| PathBuf::from(format!("target/chaos/{name}-{}", crate::cluster::unix_ms() / 1000)));
        Ok(Args {
            profile,
            nodes,
            duration_secs,
            seed,
            users,
            rooms,
            rate,
            run_dir,
            bin,
            config,
            prefix,
            loopback,
            optional_env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Args> {
        Args::parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn profiles_and_optional_settings() {
        let a = parse("--seed 5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.profile, a.nodes, a.seed), (Profile::Ci, 3, 5));
        assert!(a.optional_env.is_empty());
        let a = parse("--profile soak --nodes 5 --duration 600").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.profile, a.nodes, a.duration_secs), (Profile::Soak, 5, 600));
        let a = parse("--faults none").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.profile, Profile::None);
        let a = parse("--expect-loss --heartbeat-ms 200").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.profile, Profile::ExpectLoss);
        assert!(a.optional_env.contains(&("WADDLE_CLUSTER_REPLICAS".to_owned(), "1".to_owned())));
        assert!(a.optional_env.contains(&("WADDLE_CLUSTER_HEARTBEAT_MS".to_owned(), "200".to_owned())));
        assert!(parse("--faults none --expect-loss").is_err());
        assert!(parse("--users 0").is_err());
        assert!(parse("--prefix Bad-Name").is_err());
        assert!(parse("--bogus").is_err());
    }
}
