//! Latency percentiles, process CPU and memory from /proc, and the report.

use std::time::{Duration, Instant};

use crate::sm::SmStats;

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`, asked once; 100
/// on every Linux we know of).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(read_clock_ticks)
}

fn read_clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU time of a process so far, in microseconds.
pub fn cpu_micros(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields are counted after its closing paren.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `) `.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1e6 / clock_ticks())
}

/// CPU of all the server's processes together (a cluster's nodes); `None` without any,
/// or if one cannot be read.
pub fn servers_cpu_micros(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_micros(Some(*p))).sum()
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU of the server and of the generator over one measured interval.
pub struct CpuWindow {
    server_pids: Vec<u32>,
    server_start: Option<f64>,
    own_start: Option<f64>,
    started: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// From the start of the load to the end of the drain (not the settling).
    pub wall: Duration,
    /// Server CPU in microseconds, if a PID was given and readable.
    pub server_micros: Option<f64>,
    pub own_micros: Option<f64>,
}

impl CpuWindow {
    pub fn start(server_pids: &[u32]) -> CpuWindow {
        CpuWindow {
            server_pids: server_pids.to_vec(),
            server_start: servers_cpu_micros(server_pids),
            own_start: cpu_micros(None),
            started: Instant::now(),
        }
    }

    /// Waits (at most `limit`) until the server is idle — below 5 % of a core over
    /// 250 ms — so that work it deferred (archive writes queued during the load) is
    /// billed to this run, as it would be on any server. Returns the time waited.
    pub async fn settle(&self, limit: Duration) -> Duration {
        if self.server_pids.is_empty() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let step = Duration::from_millis(250);
        let mut last = servers_cpu_micros(&self.server_pids);
        while started.elapsed() < limit {
            tokio::time::sleep(step).await;
            let now = servers_cpu_micros(&self.server_pids);
            match (last, now) {
                (Some(a), Some(b)) if b - a < 0.05 * step.as_micros() as f64 => break,
                (_, None) => break,
                _ => last = now,
            }
        }
        started.elapsed()
    }

    pub fn stop(&self) -> CpuUse {
        self.stop_with_wall(self.started.elapsed())
    }

    /// Like [`CpuWindow::stop`], with the wall time measured earlier (before settling).
    pub fn stop_with_wall(&self, wall: Duration) -> CpuUse {
        let server_end = servers_cpu_micros(&self.server_pids);
        CpuUse {
            wall,
            server_micros: self.server_start.zip(server_end).map(|(a, b)| b - a),
            own_micros: self.own_start.zip(cpu_micros(None)).map(|(a, b)| b - a),
        }
    }
}

/// Latency samples in microseconds; percentiles by sorting (runs are bounded, so the
/// samples fit in memory: at most a few million `u32`).
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<u32>);

/// Samples kept at most (16 MiB); later samples are dropped from the percentiles
/// (deliveries are still counted).
const MAX_SAMPLES: usize = 4_000_000;

impl Latencies {
    pub fn record(&mut self, micros: u64) {
        if self.0.len() < MAX_SAMPLES {
            self.0.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }

    pub fn merge(&mut self, other: Latencies) {
        let room = MAX_SAMPLES.saturating_sub(self.0.len());
        self.0.extend(other.0.into_iter().take(room));
    }

    #[cfg(test)]
    pub fn samples(&self) -> usize {
        self.0.len()
    }

    /// p50, p99, p99.9 and max, in microseconds (zeros when empty).
    pub fn percentiles(&mut self) -> [u32; 4] {
        if self.0.is_empty() {
            return [0; 4];
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let rank = ((self.0.len() as f64) * q).ceil() as usize;
            self.0[rank.clamp(1, self.0.len()) - 1]
        };
        [at(0.50), at(0.99), at(0.999), self.0[self.0.len() - 1]]
    }
}

/// The result of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub users: usize,
    pub duration_s: f64,
    pub sent: u64,
    /// Chat and MUC: (message, intended recipient) pairs delivered at least once; other
    /// scenarios: their unit of work done (accounts, logins, sessions).
    pub delivered: u64,
    pub expected: u64,
    /// Expected and never delivered (see `tally`).
    pub lost: u64,
    /// Copies beyond the first of a delivered message to the same recipient.
    pub duplicated: u64,
    /// Copies to a session that was not an intended recipient (or of a message never sent).
    pub misrouted: u64,
    pub errors: u64,
    pub latency: [u32; 4],
    pub cpu: CpuUse,
    /// Logins per second (login scenario).
    pub logins_per_s: Option<f64>,
    pub idle_rss_kib_per_session: Option<f64>,
    /// Stream management totals (`--sm`); `None` when it was off.
    pub sm: Option<SmStats>,
    pub notes: Vec<String>,
}

impl Report {
    /// The JSON's `undelivered`, kept for scripts written before `lost`: the same count.
    pub fn undelivered(&self) -> u64 {
        self.lost
    }

    pub fn delivered_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.delivered as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// Server CPU per delivered stanza (or per login), microseconds.
    pub fn server_cpu_per_unit(&self) -> Option<f64> {
        let units = if self.scenario == "login" { self.sent } else { self.delivered };
        self.cpu.server_micros.filter(|_| units > 0).map(|us| us / units as f64)
    }

    pub fn generator_cpu_pct(&self) -> Option<f64> {
        let wall = self.cpu.wall.as_secs_f64();
        self.cpu.own_micros.filter(|_| wall > 0.0).map(|us| us / 1e4 / wall)
    }

    pub fn human(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        let [p50, p99, p999, max] = self.latency;
        let row = |name: &str, value: String| format!("{name:<28} {value}\n");
        let mut out = row("run", format!("{} ({}, {} users)", self.label, self.scenario, self.users));
        out.push_str(&row("measured seconds", format!("{:.1}", self.duration_s)));
        out.push_str(&row(
            "stanzas",
            format!(
                "{} sent, {} delivered of {} expected, {} lost, {} duplicated, {} misrouted, {} errors",
                self.sent, self.delivered, self.expected, self.lost, self.duplicated, self.misrouted, self.errors
            ),
        ));
        out.push_str(&row("delivered/s", format!("{:.0}", self.delivered_per_s())));
        out.push_str(&row("latency us", format!("p50 {p50}  p99 {p99}  p99.9 {p999}  max {max}")));
        let per = if self.scenario == "login" { "server CPU us per login" } else { "server CPU us per delivery" };
        out.push_str(&row(per, opt(self.server_cpu_per_unit(), "")));
        out.push_str(&row("generator CPU", opt(self.generator_cpu_pct(), " %")));
        if let Some(rate) = self.logins_per_s {
            out.push_str(&format!("{:<28} {rate:.1}\n", "logins/s"));
        }
        if let Some(kib) = self.idle_rss_kib_per_session {
            out.push_str(&format!("{:<28} {kib:.1}\n", "server RSS KiB per session"));
        }
        match &self.sm {
            None => out.push_str(&row("stream management", "off".to_owned())),
            Some(sm) => out.push_str(&row(
                "stream management",
                format!(
                    "on, {} sessions: {} stanzas sent, {} acked by the server, {} unacked; {} <r/> sent, {} <a/> \
                     received, {} server <r/> answered; {} protocol errors",
                    sm.sessions,
                    sm.sent,
                    sm.acked,
                    sm.unacked(),
                    sm.requests_sent,
                    sm.acks_received,
                    sm.requests_answered,
                    sm.errors
                ),
            )),
        }
        for note in &self.notes {
            out.push_str(&format!("{:<28} {note}\n", "note"));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let [p50, p99, p999, max] = self.latency;
        serde_json::json!({
            "scenario": self.scenario,
            "label": self.label,
            "users": self.users,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "delivered": self.delivered,
            "expected": self.expected,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "misrouted": self.misrouted,
            "undelivered": self.undelivered(),
            "errors": self.errors,
            "delivered_per_s": self.delivered_per_s(),
            "lat_us": { "p50": p50, "p99": p99, "p999": p999, "max": max },
            "server_cpu_us_per_delivery": self.server_cpu_per_unit(),
            "gen_cpu_pct": self.generator_cpu_pct(),
            "logins_per_s": self.logins_per_s,
            "idle_rss_kib_per_session": self.idle_rss_kib_per_session,
            "sm": self.sm.is_some(),
            "sm_sessions": self.sm.map(|s| s.sessions),
            "sm_sent": self.sm.map(|s| s.sent),
            "sm_acked": self.sm.map(|s| s.acked),
            "sm_unacked": self.sm.map(|s| s.unacked()),
            "sm_requests_sent": self.sm.map(|s| s.requests_sent),
            "sm_acks_received": self.sm.map(|s| s.acks_received),
            "sm_requests_answered": self.sm.map(|s| s.requests_answered),
            "sm_errors": self.sm.map(|s| s.errors),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_rank() {
        let mut l = Latencies::default();
        for v in 1..=1000 {
            l.record(v);
        }
        assert_eq!(l.percentiles(), [500, 990, 999, 1000]);
        let mut empty = Latencies::default();
        assert_eq!(empty.percentiles(), [0; 4]);
        let mut one = Latencies::default();
        one.record(u64::MAX);
        assert_eq!(one.percentiles(), [u32::MAX; 4]);
    }

    #[test]
    fn own_cpu_is_readable_and_grows() {
        let a = cpu_micros(None).unwrap_or_else(|| panic!("no /proc/self/stat"));
        let mut x = 0u64;
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        let b = cpu_micros(None).unwrap_or_else(|| panic!("no /proc/self/stat"));
        assert!(b > a, "{a} -> {b}");
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0.0));
    }

    #[test]
    fn undelivered_and_per_unit_figures() {
        let r = Report {
            scenario: "chat".into(),
            sent: 10,
            delivered: 8,
            expected: 10,
            lost: 2,
            duplicated: 3,
            misrouted: 1,
            duration_s: 2.0,
            cpu: CpuUse { wall: Duration::from_secs(2), server_micros: Some(80.0), own_micros: Some(1e6) },
            ..Report::default()
        };
        assert_eq!(r.undelivered(), 2);
        assert_eq!(r.delivered_per_s(), 4.0);
        assert_eq!(r.server_cpu_per_unit(), Some(10.0));
        assert_eq!(r.generator_cpu_pct(), Some(50.0));
        let j = r.json();
        assert_eq!(
            (j["lost"].clone(), j["duplicated"].clone(), j["misrouted"].clone()),
            (2.into(), 3.into(), 1.into())
        );
        assert_eq!(j["undelivered"], 2, "undelivered stays the count of lost");
        assert!(r.human().contains("8 delivered of 10 expected, 2 lost, 3 duplicated, 1 misrouted"), "{}", r.human());
        assert_eq!(r.json()["sm"], false);
        assert!(r.json()["sm_acked"].is_null());
        let sm = SmStats { sessions: 2, sent: 10, acked: 9, errors: 1, ..SmStats::default() };
        let r = Report { sm: Some(sm), ..r };
        let j = r.json();
        assert_eq!(
            (j["sm"].clone(), j["sm_acked"].clone(), j["sm_unacked"].clone()),
            (true.into(), 9.into(), 1.into())
        );
        assert_eq!(j["sm_errors"], 1);
        assert!(r.human().contains("9 acked by the server, 1 unacked"), "{}", r.human());
    }
}
