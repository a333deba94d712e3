//! `waddle cluster ...`: the operator's commands, a thin client of a node's HTTP admin
//! API (`/v1/cluster...`, admin token). Plain HTTP/1.1 on one connection per command:
//! the admin API is meant for loopback or a private network (a node serving its HTTP
//! listener over TLS is not reachable by this client yet).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

pub const USAGE: &str =
    "usage: waddle cluster <command> [--json] [--http HOST:PORT] [--admin-token TOKEN] [--config PATH]

commands:
  status            nodes, their state and Raft role, the leader, term, ring epoch,
                    and partitions/rooms/sessions per node
  locate <jid>      where a user's or room's data and actor live
  join <addr>       ask the cluster at <addr> (a member's cluster.listen) to add this node
  leave             this node leaves the cluster gracefully
  remove <node-id>  remove a node (dead or alive) from the cluster

--http and --admin-token default to the config file's http.port (on 127.0.0.1) and
auth.admin_token.";

/// What to ask and how.
#[derive(Debug)]
pub struct ClusterCommand {
    pub action: Action,
    pub json: bool,
    pub http: Option<String>,
    pub admin_token: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Status,
    Locate(String),
    Join(String),
    Leave,
    Remove(u64),
}

/// Parses the arguments after `cluster`; the config path (if given) is returned apart.
pub fn parse(args: &[String]) -> Result<(ClusterCommand, Option<std::path::PathBuf>)> {
    let mut json = false;
    let mut http = None;
    let mut admin_token = None;
    let mut config = None;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--http" => http = Some(it.next().context("--http needs HOST:PORT")?.clone()),
            "--admin-token" => admin_token = Some(it.next().context("--admin-token needs a token")?.clone()),
            "--config" | "-c" => config = Some(std::path::PathBuf::from(it.next().context("--config needs a path")?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with("--") => bail!("unknown option {other:?}\n{USAGE}"),
            other => positional.push(other.to_owned()),
        }
    }
    let action = match positional.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["status"] => Action::Status,
        ["locate", jid] => Action::Locate((*jid).to_owned()),
        ["join", addr] => Action::Join((*addr).to_owned()),
        ["leave"] => Action::Leave,
        ["remove", id] => Action::Remove(id.parse().context("remove needs a numeric node id")?),
        _ => bail!("{USAGE}"),
    };
    Ok((ClusterCommand { action, json, http, admin_token }, config))
}

/// Runs the command against the node's admin API and prints the answer.
pub async fn run(cmd: ClusterCommand, config: &Config) -> Result<()> {
    let http = cmd.http.clone().unwrap_or_else(|| format!("127.0.0.1:{}", config.http.port));
    let token = cmd.admin_token.clone().unwrap_or_else(|| config.auth.admin_token.clone());
    if token.is_empty() {
        bail!("no admin token: pass --admin-token or set auth.admin_token");
    }
    let (method, path, body) = match &cmd.action {
        Action::Status => ("GET", "/v1/cluster".to_owned(), None),
        Action::Locate(jid) => ("GET", format!("/v1/cluster/locate?jid={}", percent_encode(jid)), None),
        Action::Join(addr) => ("POST", "/v1/cluster/join".to_owned(), Some(serde_json::json!({ "seed": addr }))),
        Action::Leave => ("POST", "/v1/cluster/leave".to_owned(), None),
        Action::Remove(id) => ("POST", "/v1/cluster/remove".to_owned(), Some(serde_json::json!({ "node": id }))),
    };
    let (status, answer) = request(&http, method, &path, &token, body.as_ref()).await?;
    if !(200..300).contains(&status) {
        bail!("{method} {path} on {http}: HTTP {status}: {}", answer.trim());
    }
    let value: serde_json::Value = serde_json::from_str(&answer).context("the node's answer is not JSON")?;
    if cmd.json || cmd.action != Action::Status {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", status_table(&value));
    }
    Ok(())
}

/// The human form of `GET /v1/cluster`.
pub fn status_table(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let field = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "leader {}  term {}  ring epoch {}  asked node {}",
        field(v, "leader"),
        field(v, "term"),
        field(v, "ring_epoch"),
        field(v, "node")
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<8} {:<9} {:<6} {:<22} {:<22} {:>10} {:>6} {:>8}",
        "id", "state", "role", "voter", "cluster", "http", "partitions", "rooms", "sessions"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:>5}  {:<8} {:<9} {:<6} {:<22} {:<22} {:>10} {:>6} {:>8}",
            field(n, "id"),
            field(n, "state"),
            field(n, "role"),
            field(n, "voter"),
            field(n, "cluster_addr"),
            field(n, "http_addr"),
            field(n, "partitions"),
            field(n, "rooms"),
            field(n, "sessions"),
        );
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok::<_, anyhow::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange).await.context("the node did not answer")??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Ok((status, if chunked { dechunk(rest) } else { rest.to_owned() }))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_parse() {
        let (c, path) = parse(&args("status --json --http 127.0.0.1:5280 --admin-token t --config x.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.action, Action::Status);
        assert!(c.json);
        assert_eq!(c.http.as_deref(), Some("127.0.0.1:5280"));
        assert_eq!(c.admin_token.as_deref(), Some("t"));
        assert_eq!(path, Some(std::path::PathBuf::from("x.toml")));
        let locate = parse(&args("locate alice@example.org")).map(|(c, _)| c.action).ok();
        assert_eq!(locate, Some(Action::Locate("alice@example.org".into())));
        assert_eq!(parse(&args("remove 3")).map(|(c, _)| c.action).ok(), Some(Action::Remove(3)));
        assert!(parse(&args("remove three")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn jids_are_encoded_for_the_query() {
        assert_eq!(percent_encode("room@muc.x/a b"), "room@muc.x%2Fa%20b");
    }

    #[test]
    fn the_table_has_a_row_per_node() {
        let v = serde_json::json!({
            "node": 1, "leader": 1, "term": 2, "ring_epoch": 3,
            "nodes": [{"id": 1, "state": "up", "role": "leader"}, {"id": 2, "state": "joining"}]
        });
        let table = status_table(&v);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("joining"));
    }
}
