//! Process-wide counters exposed in the Prometheus text format on `GET /metrics`.
//! Plain atomics: the hot path pays one relaxed increment per event.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ctx::Ctx;

#[derive(Default)]
pub struct Metrics {
    pub stanzas_in_message: AtomicU64,
    pub stanzas_in_presence: AtomicU64,
    pub stanzas_in_iq: AtomicU64,
    pub rate_limited_message: AtomicU64,
    pub rate_limited_presence: AtomicU64,
    pub rate_limited_join: AtomicU64,
    pub rate_limited_iq: AtomicU64,
    pub rate_limited_stanza: AtomicU64,
    pub auth_failures: AtomicU64,
    pub stream_errors: AtomicU64,
    /// Writes that were refused because they could not be made durable on a majority
    /// of their partition's replicas (the client was told to try again).
    pub refused_not_durable: AtomicU64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self, ctx: &Ctx) -> String {
        let mut out = String::with_capacity(1024);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP xmpp_connections_active Bound client sessions.");
        let _ = writeln!(out, "# TYPE xmpp_connections_active gauge");
        let _ = writeln!(out, "xmpp_connections_active{{transport=\"tcp\"}} {}", ctx.cluster.local_sessions());
        let _ = writeln!(out, "# HELP xmpp_stanzas_processed_total Stanzas received from clients.");
        let _ = writeln!(out, "# TYPE xmpp_stanzas_processed_total counter");
        for (kind, c) in [
            ("message", &self.stanzas_in_message),
            ("presence", &self.stanzas_in_presence),
            ("iq", &self.stanzas_in_iq),
        ] {
            let _ = writeln!(out, "xmpp_stanzas_processed_total{{type=\"{kind}\",direction=\"in\"}} {}", get(c));
        }
        let _ = writeln!(out, "# HELP xmpp_rate_limited_total Stanzas refused by a per-session rate limit.");
        let _ = writeln!(out, "# TYPE xmpp_rate_limited_total counter");
        for (kind, c) in [
            ("message", &self.rate_limited_message),
            ("presence", &self.rate_limited_presence),
            ("join", &self.rate_limited_join),
            ("iq", &self.rate_limited_iq),
            ("stanza", &self.rate_limited_stanza),
        ] {
            let _ = writeln!(out, "xmpp_rate_limited_total{{limit=\"{kind}\"}} {}", get(c));
        }
        let _ = writeln!(out, "# HELP xmpp_auth_failures_total Failed SASL authentications.");
        let _ = writeln!(out, "# TYPE xmpp_auth_failures_total counter");
        let _ = writeln!(out, "xmpp_auth_failures_total {}", get(&self.auth_failures));
        let _ = writeln!(out, "# HELP xmpp_stream_errors_total Streams closed with a stream error.");
        let _ = writeln!(out, "# TYPE xmpp_stream_errors_total counter");
        let _ = writeln!(out, "xmpp_stream_errors_total {}", get(&self.stream_errors));
        let _ = writeln!(out, "# HELP waddle_refused_not_durable_total Writes refused: not durable on a majority.");
        let _ = writeln!(out, "# TYPE waddle_refused_not_durable_total counter");
        let _ = writeln!(out, "waddle_refused_not_durable_total {}", get(&self.refused_not_durable));
        if let Some(replication) = ctx.replication() {
            let stats = replication.replicator().stats();
            let _ = writeln!(out, "# HELP waddle_replication_proposals_total Durable writes proposed here as leader.");
            let _ = writeln!(out, "# TYPE waddle_replication_proposals_total counter");
            let _ = writeln!(out, "waddle_replication_proposals_total {}", stats.proposals);
            let _ =
                writeln!(out, "# HELP waddle_replication_batches_total Local log appends (group commits) as leader.");
            let _ = writeln!(out, "# TYPE waddle_replication_batches_total counter");
            let _ = writeln!(out, "waddle_replication_batches_total {}", stats.leader_batches);
            let _ = writeln!(
                out,
                "# HELP waddle_replication_recovery_fetched_entries_total Log entries fetched by a new leader before serving."
            );
            let _ = writeln!(out, "# TYPE waddle_replication_recovery_fetched_entries_total counter");
            let _ = writeln!(out, "waddle_replication_recovery_fetched_entries_total {}", stats.recovery_fetched);
        }
        if let Some(stats) = ctx.link().and_then(|link| link.transport_stats()) {
            let _ = writeln!(out, "# HELP waddle_cluster_frames_total Inter-node frames (each a batch of envelopes).");
            let _ = writeln!(out, "# TYPE waddle_cluster_frames_total counter");
            let _ = writeln!(out, "waddle_cluster_frames_total{{direction=\"sent\"}} {}", stats.frames_sent);
            let _ = writeln!(out, "waddle_cluster_frames_total{{direction=\"received\"}} {}", stats.frames_received);
            let _ = writeln!(out, "# HELP waddle_cluster_envelopes_total Inter-node messages (pings included).");
            let _ = writeln!(out, "# TYPE waddle_cluster_envelopes_total counter");
            let _ = writeln!(out, "waddle_cluster_envelopes_total{{direction=\"sent\"}} {}", stats.envelopes_sent);
            let _ =
                writeln!(out, "waddle_cluster_envelopes_total{{direction=\"received\"}} {}", stats.envelopes_received);
            let _ = writeln!(out, "# HELP waddle_cluster_frames_dropped_total Frames lost to a dropped connection.");
            let _ = writeln!(out, "# TYPE waddle_cluster_frames_dropped_total counter");
            let _ = writeln!(out, "waddle_cluster_frames_dropped_total {}", stats.frames_dropped);
            let _ = writeln!(out, "# HELP waddle_cluster_decode_errors_total Inter-node frames that did not decode.");
            let _ = writeln!(out, "# TYPE waddle_cluster_decode_errors_total counter");
            let _ = writeln!(out, "waddle_cluster_decode_errors_total {}", stats.decode_errors);
        }
        out
    }
}
