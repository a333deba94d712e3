//! Configuration: a TOML file merged over built-in defaults, then `WADDLE_<SECTION>_<FIELD>`
//! environment overrides for every field, then validation with errors naming the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub c2s: C2sConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rate_limits: RateLimitsConfig,
    pub archive: ArchiveConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

/// Clustering. No `listen` and no `seeds`: a single node, a cluster of one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Inter-node address (`host:port`); empty for a single node.
    pub listen: String,
    /// Addresses of existing members to join through (`WADDLE_CLUSTER_SEEDS` is
    /// comma-separated); empty on the first node, which bootstraps the cluster.
    pub seeds: Vec<String>,
    /// Shared secret every node authenticates with; required with `listen` or `seeds`.
    pub secret: String,
    /// How many nodes vote in the control plane's Raft group (1, 3 or 5); later nodes
    /// are non-voters that serve clients and own partitions like any other.
    pub voters: usize,
    /// TLS between nodes, with the node's certificate (`tls.cert_path`, or the
    /// generated one).
    pub tls: bool,
    /// PEM file of the authority every node's certificate chains to; empty: peers must
    /// present this node's own certificate (all nodes configured with one certificate).
    pub tls_ca: String,
    /// How many nodes hold each partition's data (the owner and its followers); an
    /// acknowledged write is durable on a majority of them. Capped by the node count;
    /// `1` turns replication off.
    pub replicas: usize,
    /// Interval of the liveness pings between nodes.
    pub heartbeat_ms: u64,
    /// A node silent for this long is declared down: the transport drops its link, and the
    /// control plane's leader marks it `down` and moves its partitions to survivors.
    pub down_after_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            listen: String::new(),
            seeds: Vec::new(),
            secret: String::new(),
            voters: 3,
            tls: false,
            tls_ca: String::new(),
            replicas: 3,
            heartbeat_ms: 500,
            down_after_ms: 2500,
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a multi-node cluster.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.seeds.is_empty()
    }
}

/// Message archiving (XEP-0313): 1:1 chats per user, rooms per waddle.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `false`: nothing new is archived (queries answer from what is stored; room
    /// history on join is what the running room remembers).
    pub enabled: bool,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig { enabled: true }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The XMPP domain served (the part after `@`).
    pub domain: String,
    /// Where the database, generated certificate and Raft log live.
    pub data_dir: PathBuf,
    /// Address every listener binds to.
    pub bind_address: String,
    /// This node's identity in the cluster: a number, unique among its members
    /// (1 to 16777215).
    pub node_id: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = generate a self-signed one in `data_dir/tls/`.
    pub cert_path: String,
    /// PEM private key; required when `cert_path` is set.
    pub key_path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    pub starttls_port: u16,
    pub direct_tls_port: u16,
    /// Refuse authentication until the stream is encrypted.
    pub require_tls: bool,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    /// Seconds to finish TLS, SASL and bind before the connection is dropped.
    pub negotiation_timeout_secs: u64,
    /// Idle seconds after which the server pings the client (XEP-0199).
    pub ping_interval_secs: u64,
    /// Seconds a ping may stay unanswered before the connection is closed.
    pub ping_timeout_secs: u64,
    /// Stanzas queued towards one client before it is disconnected as too slow: the
    /// limit applies to those waiting in its session's mailbox and, separately, to those
    /// waiting to be written to its socket.
    pub max_outbound_queue: usize,
    /// Offer XEP-0198 Stream Management.
    pub stream_management: bool,
    /// Longest a resumable session waits for its client to come back (a client may ask
    /// for less with `max`).
    pub sm_resume_timeout_secs: u64,
    /// Stanzas allowed to wait unacknowledged; one more closes the stream.
    pub sm_max_unacked: usize,
    /// The server asks for an acknowledgement after this many stanzas (0: not by count).
    pub sm_ack_every_stanzas: u32,
    /// ... and when anything has waited unacknowledged this long (0: not by time).
    pub sm_ack_every_secs: u64,
    /// Bytes allowed to wait for one client (serialized and not yet written, plus
    /// fan-out stanzas waiting in its mailbox) before it is disconnected as too slow. One
    /// stanza is always accepted when nothing waits, whatever its size.
    pub max_outbound_bytes: usize,
    /// Seconds one write to a client may take; longer, and the connection is dropped as
    /// not reading.
    pub write_timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub port: u16,
    /// Serve the HTTP listener (API and XMPP over WebSocket) over TLS with the node's
    /// certificate: `https://` and `wss://`.
    pub tls: bool,
    /// Treat plain `ws://` XMPP connections as secure, so that they may authenticate
    /// (PLAIN included) although `c2s.require_tls` is on: for a TLS-terminating proxy in
    /// front of the node, or loopback during development (Prosody's
    /// `consider_websocket_secure`). Off, plain `ws://` obeys `c2s.require_tls`.
    pub websocket_secure: bool,
    /// Advertised in `POST /auth/xmpp-token`; empty = derived from the public XMPP host,
    /// `http.port` and `http.tls` (`ws://` or `wss://`).
    pub websocket_url: String,
    /// Advertised XMPP host in `POST /auth/xmpp-token`; empty = the domain.
    pub public_xmpp_host: String,
    /// Seconds a client has to send a complete request head, counted from when the
    /// server starts waiting for it (connection accepted, or previous response sent on a
    /// keep-alive connection): bounds trickling ("slowloris") and idle keep-alive
    /// connections.
    pub header_timeout_secs: u64,
    /// Seconds without a byte received or sent after which an HTTP connection is closed
    /// (a stalled request body, a client that stops reading its response). Upgraded
    /// WebSocket connections are exempt: XMPP's own keepalive (`c2s.ping_*`) bounds them.
    pub idle_timeout_secs: u64,
    /// Open connections on the HTTP listener (WebSocket ones included); further ones are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub scram_iterations: u32,
    pub session_ttl_secs: i64,
    pub xmpp_token_ttl_secs: i64,
    /// Whether anyone may create an account: `POST /v1/accounts` (otherwise it needs
    /// `admin_token`) and, with `in_band_registration`, XEP-0077.
    pub open_registration: bool,
    /// XEP-0077 in-band registration on the XMPP port; offered only when
    /// `open_registration` is on too.
    pub in_band_registration: bool,
    /// Bearer token allowing account creation when registration is closed; empty = none.
    pub admin_token: String,
    pub min_password_len: usize,
    /// Failed logins per client address within the window before the address is
    /// blocked (for every account).
    pub max_auth_failures: u32,
    pub auth_failure_window_secs: u64,
    /// Failed logins per account (from all addresses) within the same window from which
    /// addresses that failed for it are refused and other addresses are slowed down
    /// (never refused: the right password from a clean address always gets in).
    pub account_failure_ceiling: u32,
    /// Accounts one client address may create (in-band and `POST /v1/accounts`
    /// together) per `registration_window_secs`; the admin token is exempt.
    pub max_registrations_per_address: u32,
    pub registration_window_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub offline_max_per_user: u32,
    /// Channels one waddle may hold.
    pub max_channels_per_waddle: usize,
}

/// Per-session limits (the seed's table). Exceeding one gets a `policy-violation`
/// stanza error and the stanza is dropped.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    /// Messages to one destination (room or contact) per window.
    pub messages: u32,
    pub messages_window_secs: u64,
    /// Presence updates (broadcast or directed, not subscriptions or unavailable).
    pub presence: u32,
    pub presence_window_secs: u64,
    /// MUC room joins.
    pub joins: u32,
    pub joins_window_secs: u64,
    /// IQ requests (get/set).
    pub iq: u32,
    pub iq_window_secs: u64,
    /// Every stanza, of any type and to any address (the general budget).
    pub stanzas: u32,
    pub stanzas_window_secs: u64,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            enabled: true,
            messages: 10,
            messages_window_secs: 10,
            presence: 5,
            presence_window_secs: 60,
            joins: 10,
            joins_window_secs: 60,
            iq: 20,
            iq_window_secs: 10,
            stanzas: 300,
            stanzas_window_secs: 10,
        }
    }
}

impl RateLimitsConfig {
    pub fn limits(&self) -> waddle_c2s::rate::RateLimits {
        use waddle_c2s::rate::{Rate, RateLimits};
        RateLimits {
            messages: Rate::new(self.messages, self.messages_window_secs),
            presence: Rate::new(self.presence, self.presence_window_secs),
            joins: Rate::new(self.joins, self.joins_window_secs),
            iq: Rate::new(self.iq, self.iq_window_secs),
            stanzas: Rate::new(self.stanzas, self.stanzas_window_secs),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, overridden by `RUST_LOG` when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            bind_address: "127.0.0.1".into(),
            node_id: 1,
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            starttls_port: 5222,
            direct_tls_port: 5223,
            require_tls: true,
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            negotiation_timeout_secs: 30,
            ping_interval_secs: 120,
            ping_timeout_secs: 30,
            max_outbound_queue: 4096,
            stream_management: true,
            sm_resume_timeout_secs: 300,
            sm_max_unacked: 5000,
            sm_ack_every_stanzas: 10,
            sm_ack_every_secs: 30,
            max_outbound_bytes: 1024 * 1024,
            write_timeout_secs: 30,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            port: 5280,
            tls: false,
            websocket_secure: false,
            websocket_url: String::new(),
            public_xmpp_host: String::new(),
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 10_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 4096,
            session_ttl_secs: 24 * 3600,
            xmpp_token_ttl_secs: 3600,
            open_registration: true,
            in_band_registration: true,
            admin_token: String::new(),
            min_password_len: 8,
            max_auth_failures: 5,
            auth_failure_window_secs: 300,
            account_failure_ceiling: 50,
            max_registrations_per_address: 5,
            registration_window_secs: 3600,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { offline_max_per_user: 1000, max_channels_per_waddle: 500 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: expected {expected}, got {value:?}")]
    Env { var: String, expected: &'static str, value: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
}

/// The HTTP path of XMPP over WebSocket (RFC 7395).
pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";

/// Variables that start with `WADDLE_` but are not config fields.
const NON_FIELD_VARS: &[&str] = &["WADDLE_CONFIG", "WADDLE_BIN"];

impl Config {
    /// Loads `path` (if given) over the defaults, applies `env` overrides, validates.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<defaults>"), message: e.to_string() })?;
        if let Some(path) = path {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            let file: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
            merge(&mut value, file);
        }
        apply_env(&mut value, env)?;
        let config: Config = value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.map(Path::to_owned).unwrap_or_default(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, message: &str| Err(ConfigError::Invalid { field, message: message.to_owned() });
        if waddle_jid::BareJid::new(&self.server.domain).map(|j| j.node().is_some()).unwrap_or(true) {
            return invalid("server.domain", "must be a valid domain name such as example.org");
        }
        if self.server.node_id == 0 || self.server.node_id >= 1 << 24 {
            return invalid("server.node_id", "must be between 1 and 16777215");
        }
        if self.cluster.enabled() && self.cluster.secret.len() < 16 {
            return invalid(
                "cluster.secret",
                "is required (at least 16 characters) when cluster.listen or cluster.seeds is set",
            );
        }
        if !self.cluster.seeds.is_empty() && self.cluster.listen.is_empty() {
            return invalid("cluster.listen", "is required when cluster.seeds is set");
        }
        if !self.cluster.listen.is_empty() && self.cluster.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("cluster.listen", "must be an address such as 127.0.0.1:7400");
        }
        if self.cluster.tls && self.cluster.listen.is_empty() {
            return invalid("cluster.tls", "needs cluster.listen");
        }
        if !(1..=7).contains(&self.cluster.replicas) {
            return invalid("cluster.replicas", "must be between 1 and 7 (3 survives the loss of one node)");
        }
        if self.cluster.heartbeat_ms < 10 || self.cluster.down_after_ms < 3 * self.cluster.heartbeat_ms {
            return invalid(
                "cluster.down_after_ms",
                "must be at least three heartbeats (cluster.heartbeat_ms, itself at least 10)",
            );
        }
        if !(1..=5).contains(&self.cluster.voters) {
            return invalid("cluster.voters", "must be between 1 and 5 (3 or 5 tolerate failures)");
        }
        if self.server.bind_address.parse::<std::net::IpAddr>().is_err() {
            return invalid("server.bind_address", "must be an IP address");
        }
        if self.tls.cert_path.is_empty() != self.tls.key_path.is_empty() {
            return invalid("tls.key_path", "cert_path and key_path must be set together");
        }
        if self.c2s.max_stanza_bytes < 4096 || self.c2s.max_stanza_bytes > 64 * 1024 * 1024 {
            return invalid("c2s.max_stanza_bytes", "must be between 4096 and 67108864");
        }
        if self.c2s.max_depth < 4 {
            return invalid("c2s.max_depth", "must be at least 4");
        }
        let ports = [
            ("c2s.starttls_port", self.c2s.starttls_port),
            ("c2s.direct_tls_port", self.c2s.direct_tls_port),
            ("http.port", self.http.port),
        ];
        for (i, (field, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return invalid(field, "must not be 0");
            }
            if ports[..i].iter().any(|(_, p)| p == port) {
                return invalid(field, "must differ from the other ports");
            }
        }
        if self.c2s.ping_interval_secs == 0 || self.c2s.ping_timeout_secs == 0 {
            return invalid("c2s.ping_interval_secs", "ping interval and timeout must be positive");
        }
        if self.c2s.max_outbound_queue == 0 {
            return invalid("c2s.max_outbound_queue", "must be positive");
        }
        if self.c2s.sm_resume_timeout_secs == 0 {
            return invalid("c2s.sm_resume_timeout_secs", "must be positive");
        }
        if self.c2s.sm_max_unacked == 0 {
            return invalid("c2s.sm_max_unacked", "must be positive");
        }
        if self.c2s.max_outbound_bytes < 4096 || self.c2s.max_outbound_bytes > 1024 * 1024 * 1024 {
            return invalid("c2s.max_outbound_bytes", "must be between 4096 and 1073741824");
        }
        if self.c2s.write_timeout_secs == 0 || self.c2s.write_timeout_secs > 3600 {
            return invalid("c2s.write_timeout_secs", "must be between 1 and 3600");
        }
        if !(1..=1_000_000).contains(&self.auth.scram_iterations) || self.auth.scram_iterations < 4096 {
            return invalid("auth.scram_iterations", "must be between 4096 and 1000000");
        }
        if self.auth.session_ttl_secs <= 0 || self.auth.xmpp_token_ttl_secs <= 0 {
            return invalid("auth.session_ttl_secs", "token lifetimes must be positive");
        }
        if self.auth.max_auth_failures == 0 {
            return invalid("auth.max_auth_failures", "must be at least 1");
        }
        if self.auth.account_failure_ceiling < self.auth.max_auth_failures {
            return invalid("auth.account_failure_ceiling", "must be at least auth.max_auth_failures");
        }
        if self.auth.max_registrations_per_address == 0 || self.auth.registration_window_secs == 0 {
            return invalid("auth.max_registrations_per_address", "count and window must be positive");
        }
        if self.http.header_timeout_secs == 0 || self.http.idle_timeout_secs == 0 {
            return invalid("http.header_timeout_secs", "HTTP timeouts must be positive");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be positive");
        }
        let r = &self.rate_limits;
        if [r.messages, r.presence, r.joins, r.iq, r.stanzas].contains(&0)
            || [
                r.messages_window_secs,
                r.presence_window_secs,
                r.joins_window_secs,
                r.iq_window_secs,
                r.stanzas_window_secs,
            ]
            .contains(&0)
        {
            return invalid(
                "rate_limits",
                "counts and windows must be positive (use enabled = false to turn limits off)",
            );
        }
        let url = &self.http.websocket_url;
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            return invalid("http.websocket_url", "must be empty (derived) or a ws:// or wss:// URL");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format", "must be \"text\" or \"json\"");
        }
        Ok(())
    }

    /// Where clients reach XMPP over WebSocket: the configured URL, or this node's
    /// listener with the scheme it actually serves.
    pub fn websocket_url(&self) -> String {
        if self.http.websocket_url.is_empty() {
            let scheme = if self.http.tls { "wss" } else { "ws" };
            format!("{scheme}://{}:{}{}", self.public_xmpp_host(), self.http.port, WEBSOCKET_PATH)
        } else {
            self.http.websocket_url.clone()
        }
    }

    /// Whether XMPP over WebSocket counts as encrypted for authentication.
    pub fn websocket_is_secure(&self) -> bool {
        self.http.tls || self.http.websocket_secure
    }

    pub fn public_xmpp_host(&self) -> String {
        if self.http.public_xmpp_host.is_empty() {
            self.server.domain.clone()
        } else {
            self.http.public_xmpp_host.clone()
        }
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        // Unknown keys are kept so deserialisation rejects them by name.
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn apply_env(value: &mut toml::Value, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let toml::Value::Table(sections) = value else {
        return Ok(());
    };
    let mut known = Vec::new();
    for (section, fields) in sections.iter_mut() {
        let toml::Value::Table(fields) = fields else { continue };
        for (field, current) in fields.iter_mut() {
            let var = format!("WADDLE_{}_{}", section.to_uppercase(), field.to_uppercase());
            if let Some(raw) = env.get(&var) {
                *current = parse_like(current, raw).ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    expected: type_name(current),
                    value: raw.clone(),
                })?;
            }
            known.push(var);
        }
    }
    for var in env.keys() {
        if var.starts_with("WADDLE_") && !known.contains(var) && !NON_FIELD_VARS.contains(&var.as_str()) {
            return Err(ConfigError::Invalid {
                field: "environment",
                message: format!("{var} does not name a config field"),
            });
        }
    }
    Ok(())
}

fn parse_like(current: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match current {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return None,
        }),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        // Lists (cluster.seeds) are comma-separated.
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => return None,
    })
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Boolean(_) => "a boolean (true/false)",
        toml::Value::Float(_) => "a number",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.c2s.starttls_port, 5222);
        assert_eq!(c.c2s.max_stanza_bytes, 262_144);
        assert!(c.archive.enabled);
        let off = Config::load(None, &env(&[("WADDLE_ARCHIVE_ENABLED", "false")])).unwrap_or_else(|e| panic!("{e}"));
        assert!(!off.archive.enabled);
    }

    #[test]
    fn env_overrides_every_kind_of_field() {
        let c = Config::load(
            None,
            &env(&[
                ("WADDLE_SERVER_DOMAIN", "example.org"),
                ("WADDLE_C2S_STARTTLS_PORT", "15222"),
                ("WADDLE_AUTH_OPEN_REGISTRATION", "false"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.domain, "example.org");
        assert_eq!(c.c2s.starttls_port, 15222);
        assert!(!c.auth.open_registration);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = Config::load(None, &env(&[("WADDLE_C2S_STARTTLS_PORT", "lots")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("WADDLE_C2S_STARTTLS_PORT"), "{err}");
    }

    #[test]
    fn unknown_env_var_is_rejected() {
        let err =
            Config::load(None, &env(&[("WADDLE_C2S_PROT", "1")])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("WADDLE_C2S_PROT"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = Config::load(None, &env(&[("WADDLE_SERVER_DOMAIN", "a@b")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("server.domain"), "{err}");
        let err =
            Config::load(None, &env(&[("WADDLE_HTTP_PORT", "5222")])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("http.port"), "{err}");
    }

    #[test]
    fn outbound_bounds_default_and_are_validated() {
        let c = Config::load(None, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.c2s.max_outbound_bytes, c.c2s.write_timeout_secs), (1_048_576, 30));
        for (key, value, field) in [
            ("WADDLE_C2S_MAX_OUTBOUND_BYTES", "100", "c2s.max_outbound_bytes"),
            ("WADDLE_C2S_WRITE_TIMEOUT_SECS", "0", "c2s.write_timeout_secs"),
        ] {
            let err = Config::load(None, &env(&[(key, value)])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("waddle-config-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("a.toml");
        let _ = std::fs::write(&path, "[server]\ndomain = \"chat.example\"\n[c2s]\nrequire_tls = false\n");
        let c = Config::load(Some(&path), &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.domain, "chat.example");
        assert!(!c.c2s.require_tls);
        let _ = std::fs::write(&path, "[server]\ndomian = \"x\"\n");
        let err = Config::load(Some(&path), &env(&[])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("domian"), "{err}");
    }

    #[test]
    fn websocket_url_follows_the_scheme_served() {
        let plain = Config::load(None, &env(&[("WADDLE_HTTP_PORT", "6280")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.websocket_url(), "ws://localhost:6280/xmpp-websocket");
        assert!(!plain.websocket_is_secure());
        let tls =
            Config::load(None, &env(&[("WADDLE_HTTP_TLS", "true"), ("WADDLE_HTTP_PUBLIC_XMPP_HOST", "chat.example")]))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tls.websocket_url(), "wss://chat.example:5280/xmpp-websocket");
        assert!(tls.websocket_is_secure());
        let proxied = Config::load(
            None,
            &env(&[("WADDLE_HTTP_WEBSOCKET_SECURE", "true"), ("WADDLE_HTTP_WEBSOCKET_URL", "wss://x.example/ws")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(proxied.websocket_url(), "wss://x.example/ws");
        assert!(proxied.websocket_is_secure());
        let err = Config::load(None, &env(&[("WADDLE_HTTP_WEBSOCKET_URL", "https://x.example/ws")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("http.websocket_url"), "{err}");
    }

    #[test]
    fn new_limits_are_validated() {
        let c = Config::load(None, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.http.header_timeout_secs, c.http.idle_timeout_secs, c.http.max_connections), (10, 60, 10_000));
        assert_eq!(c.auth.max_registrations_per_address, 5);
        for (var, field) in [
            ("WADDLE_HTTP_HEADER_TIMEOUT_SECS", "http.header_timeout_secs"),
            ("WADDLE_HTTP_IDLE_TIMEOUT_SECS", "http.header_timeout_secs"),
            ("WADDLE_HTTP_MAX_CONNECTIONS", "http.max_connections"),
            ("WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS", "auth.max_registrations_per_address"),
            ("WADDLE_AUTH_REGISTRATION_WINDOW_SECS", "auth.max_registrations_per_address"),
        ] {
            let err = Config::load(None, &env(&[(var, "0")])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(field), "{var}: {err}");
        }
        let err = Config::load(None, &env(&[("WADDLE_AUTH_ACCOUNT_FAILURE_CEILING", "4")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("auth.account_failure_ceiling"), "{err}");
    }

    #[test]
    fn shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("config");
        for name in ["waddle.toml", "production.toml"] {
            Config::load(Some(&root.join(name)), &env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Plain ws:// may authenticate on the development node only.
        let dev = Config::load(Some(&root.join("waddle.toml")), &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert!(dev.http.websocket_secure && !dev.http.tls);
        let prod = Config::load(Some(&root.join("production.toml")), &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert!(!prod.http.websocket_secure && prod.http.tls);
    }
}
