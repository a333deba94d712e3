//! Command-line options (`waddle-bench <scenario> [--option value]...`).

use std::time::Duration;

use crate::conn::{Auth, TlsMode};
use crate::sm::SmConfig;

pub const USAGE: &str = "\
usage: waddle-bench <register|login|chat|muc|idle> [options]

target:
  --host H             server address (default 127.0.0.1)
  --port P             c2s port (default 5222; 5223 is usual for --tls direct)
  --hosts H:P,H:P,...  several nodes of a cluster: clients are spread over them
  --domain D           XMPP domain (default localhost)
  --muc-domain D       MUC service (default muc.<domain>)
  --tls MODE           none | starttls | direct (default starttls)
  --auth MECH          scram-sha-256 | scram-sha-1 | plain | token (default scram-sha-256)
  --api URL            HTTP API for --auth token (default http://127.0.0.1:5280)
users:
  --user-prefix P      users are <P><i>@<domain>, i = 0..users (default bench)
  --password S         their password (default benchpass)
  --users N            how many users (default 50)
load:
  --duration S         seconds of load (default 10)
  --rate R             open loop: R messages/s in all; absent or 0: closed loop
  --window K           closed loop: messages in flight per sender (default 1)
  --concurrency C      parallel connections while logging in (default 16)
  --room NAME          MUC room node (default a fresh name per run)
  --hold S             idle: keep the sessions open S more seconds after measuring
                       (for a profiler attached to the server; default 0)
stream management (XEP-0198; login, chat, muc, idle):
  --sm                 enable it on every session after bind; the run fails if the
                       server does not advertise it (exit code 3) or answers <failed/>.
                       Every server <r/> is answered at once; after the load each
                       session asks for a last ack and waits (5 s) for all to be acked
  --sm-request-every N send <r/> after every N stanzas (default 5; 0: only the last)
  --sm-resume          ask for a resumable session and require it (never resumed)
measurement:
  --server-pid PID     server process: CPU per delivery and RSS from /proc; for a
                       cluster PID,PID,... (CPU summed over the nodes; RSS of the first)
  --label NAME         names the run in the report (default the scenario)
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Register,
    Login,
    Chat,
    Muc,
    Idle,
}

#[derive(Clone, Debug)]
pub struct Args {
    pub scenario: Scenario,
    pub targets: Vec<String>,
    pub domain: String,
    pub muc_domain: String,
    pub tls: TlsMode,
    pub auth: Auth,
    pub api: String,
    pub user_prefix: String,
    pub password: String,
    pub users: usize,
    pub duration: Duration,
    pub rate: f64,
    pub window: usize,
    pub concurrency: usize,
    pub room: Option<String>,
    pub hold: Duration,
    /// The server's processes (a cluster's nodes); the first is the one whose memory
    /// `idle` reads.
    pub server_pids: Vec<u32>,
    pub label: String,
    /// XEP-0198 on every session (`--sm`).
    pub sm: Option<SmConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("{0}\n\n{USAGE}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ArgsError {
    ArgsError::Invalid(msg.into())
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, ArgsError> {
    value.parse().map_err(|_| invalid(format!("{flag}: not a number: {value:?}")))
}

impl Args {
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
        let mut argv = argv.into_iter();
        let scenario = match argv.next().as_deref() {
            Some("register") => Scenario::Register,
            Some("login") => Scenario::Login,
            Some("chat") => Scenario::Chat,
            Some("muc") => Scenario::Muc,
            Some("idle") => Scenario::Idle,
            Some(other) => return Err(invalid(format!("unknown scenario {other:?}"))),
            None => return Err(invalid("no scenario given")),
        };
        let (mut host, mut port, mut hosts) = ("127.0.0.1".to_owned(), 5222u16, None::<String>);
        let mut args = Args {
            scenario,
            targets: Vec::new(),
            domain: "localhost".into(),
            muc_domain: String::new(),
            tls: TlsMode::StartTls,
            auth: Auth::ScramSha256,
            api: "http://127.0.0.1:5280".into(),
            user_prefix: "bench".into(),
            password: "benchpass".into(),
            users: 50,
            duration: Duration::from_secs(10),
            rate: 0.0,
            window: 1,
            concurrency: 16,
            room: None,
            hold: Duration::ZERO,
            server_pids: Vec::new(),
            label: String::new(),
            sm: None,
        };
        let (mut sm, mut sm_resume, mut sm_request_every) = (false, false, None::<u32>);
        while let Some(flag) = argv.next() {
            match flag.as_str() {
                "--sm" => sm = true,
                "--sm-resume" => sm_resume = true,
                _ => {}
            }
            if matches!(flag.as_str(), "--sm" | "--sm-resume") {
                continue;
            }
            let value = argv.next().ok_or_else(|| invalid(format!("{flag} needs a value")))?;
            match flag.as_str() {
                "--host" => host = value,
                "--port" => port = number(&flag, &value)?,
                "--hosts" => hosts = Some(value),
                "--domain" => args.domain = value,
                "--muc-domain" => args.muc_domain = value,
                "--tls" => {
                    args.tls = match value.as_str() {
                        "none" => TlsMode::None,
                        "starttls" => TlsMode::StartTls,
                        "direct" => TlsMode::Direct,
                        _ => return Err(invalid(format!("--tls: none, starttls or direct, not {value:?}"))),
                    }
                }
                "--auth" => {
                    args.auth = match value.as_str() {
                        "scram-sha-256" => Auth::ScramSha256,
                        "scram-sha-1" => Auth::ScramSha1,
                        "plain" => Auth::Plain,
                        "token" => Auth::Token,
                        _ => return Err(invalid(format!("--auth: unknown mechanism {value:?}"))),
                    }
                }
                "--api" => args.api = value,
                "--user-prefix" => args.user_prefix = value,
                "--password" => args.password = value,
                "--users" => args.users = number(&flag, &value)?,
                "--duration" => args.duration = Duration::from_secs_f64(number::<f64>(&flag, &value)?.max(0.1)),
                "--rate" => args.rate = number(&flag, &value)?,
                "--window" => args.window = number::<usize>(&flag, &value)?.max(1),
                "--concurrency" => args.concurrency = number::<usize>(&flag, &value)?.max(1),
                "--room" => args.room = Some(value),
                "--hold" => args.hold = Duration::from_secs_f64(number::<f64>(&flag, &value)?.max(0.0)),
                "--server-pid" => {
                    args.server_pids =
                        value.split(',').map(|pid| number(&flag, pid.trim())).collect::<Result<Vec<u32>, _>>()?;
                }
                "--label" => args.label = value,
                "--sm-request-every" => sm_request_every = Some(number(&flag, &value)?),
                _ => return Err(invalid(format!("unknown option {flag}"))),
            }
        }
        args.targets = match hosts {
            Some(list) => list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            None => vec![format!("{host}:{port}")],
        };
        if args.targets.is_empty() {
            return Err(invalid("--hosts: no address"));
        }
        if args.muc_domain.is_empty() {
            args.muc_domain = format!("muc.{}", args.domain);
        }
        if sm {
            if scenario == Scenario::Register {
                return Err(invalid("--sm: register holds no session"));
            }
            args.sm = Some(SmConfig { request_every: sm_request_every.unwrap_or(5), resume: sm_resume });
        } else if sm_resume || sm_request_every.is_some() {
            return Err(invalid("--sm-resume and --sm-request-every need --sm"));
        }
        if args.label.is_empty() {
            args.label = format!("{scenario:?}").to_lowercase();
            if sm {
                args.label.push_str("-sm");
            }
        }
        let min_users = if matches!(scenario, Scenario::Chat) { 2 } else { 1 };
        if args.users < min_users {
            return Err(invalid(format!("--users must be at least {min_users}")));
        }
        if !(args.rate >= 0.0 && args.rate.is_finite()) {
            return Err(invalid("--rate must be a non-negative number"));
        }
        Ok(args)
    }

    /// The node client `i` connects to.
    pub fn target(&self, i: usize) -> &str {
        &self.targets[i % self.targets.len()]
    }

    pub fn username(&self, i: usize) -> String {
        format!("{}{i}", self.user_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        Args::parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn defaults_and_overrides() {
        let a = parse("chat").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.targets, ["127.0.0.1:5222"]);
        assert_eq!(a.muc_domain, "muc.localhost");
        assert_eq!((a.users, a.window, a.rate), (50, 1, 0.0));
        let a = parse("muc --hosts 127.0.0.1:5222,127.0.0.2:6222 --users 3 --tls none --auth token --rate 100")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.target(0), "127.0.0.1:5222");
        assert_eq!(a.target(1), "127.0.0.2:6222");
        assert_eq!(a.target(2), "127.0.0.1:5222");
        assert_eq!((a.tls, a.auth, a.rate), (TlsMode::None, Auth::Token, 100.0));
        assert_eq!(a.username(7), "bench7");
        assert_eq!(a.hold, Duration::ZERO);
        let a = parse("idle --hold 2.5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.hold, Duration::from_millis(2500));
        assert_eq!(a.sm, None);
    }

    #[test]
    fn stream_management_flags() {
        let a = parse("chat --sm --users 4").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.sm, Some(SmConfig { request_every: 5, resume: false }));
        assert_eq!((a.users, a.label.as_str()), (4, "chat-sm"));
        let a = parse("muc --sm-request-every 0 --sm --sm-resume --label x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.sm, Some(SmConfig { request_every: 0, resume: true }));
        assert_eq!(a.label, "x");
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [
            "",
            "fly",
            "chat --users",
            "chat --users x",
            "chat --users 1",
            "chat --tls maybe",
            "chat --nope 1",
            "idle --hold x",
            "register --sm",
            "chat --sm-resume",
            "chat --sm-request-every 3",
            "chat --sm --sm-request-every",
            "chat --sm --sm-request-every -1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
