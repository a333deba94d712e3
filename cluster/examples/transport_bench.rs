//! Micro-benchmark of the ractor_cluster transport between two processes on loopback.
//!
//! ```text
//! cargo run --release -p waddle-cluster --features ractor-transport --example transport_bench [calls] [casts]
//! ```
//!
//! Starts node 1 here and node 2 as a child process (this binary re-executed), then
//! measures: the round-trip latency of sequential calls (16-byte payload), calls/second
//! with 64 in flight, and one-way casts/second (8-byte payload) until the receiver has
//! counted them all, with the average batch size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use waddle_cluster::transport::ractor::RactorConfig;
use waddle_cluster::transport::{cast_msg, request, PeerEvent, Transport, TransportConfig, TransportError};

const SECRET: &str = "bench-secret";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if std::env::var("WADDLE_PEER_ID").is_ok() {
        rt.block_on(run_peer());
        return;
    }
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let calls = args.first().copied().unwrap_or(20_000);
    let casts = args.get(1).copied().unwrap_or(1_000_000);
    rt.block_on(bench(calls, casts));
}

async fn bench(calls: u64, casts: u64) {
    init_tracing();
    let (pa, pb) = (free_port(), free_port());
    let mut cfg = RactorConfig::new(1, ([127, 0, 0, 1], pa).into(), SECRET);
    cfg.transport = TransportConfig::default();
    let (t, _rec) = start_node(cfg).await;
    let mut events = t.peer_events();
    let exe = std::env::current_exe().unwrap();
    let mut peer = PeerProcess::spawn_with(&exe, &[], 2, pb, SECRET, &[(1, pa)], &[("WADDLE_PEER_BENCH", "1")]);
    peer.wait_line("READY", Duration::from_secs(30)).await;
    t.set_peers(vec![(1, format!("127.0.0.1:{pa}")), (2, format!("127.0.0.1:{pb}"))]);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
        if ev == PeerEvent::Up(2) {
            break;
        }
    }

    // Sequential calls.
    let payload = Bytes::from_static(b"0123456789abcdef");
    for _ in 0..1000 {
        request(&*t, 2, &Echo(payload.clone()), Duration::from_secs(5)).await.unwrap();
    }
    let mut lat = Vec::with_capacity(calls as usize);
    let started = Instant::now();
    for _ in 0..calls {
        let t0 = Instant::now();
        request(&*t, 2, &Echo(payload.clone()), Duration::from_secs(5)).await.unwrap();
        lat.push(t0.elapsed());
    }
    let total = started.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "call round trip ({calls} sequential, 16 B): mean {:?}  p50 {:?}  p99 {:?}  max {:?}  ({:.0} calls/s)",
        total / calls as u32,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        calls as f64 / total.as_secs_f64()
    );

    // Concurrent calls.
    let concurrent = 64u64;
    let per_task = (calls / concurrent).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrent {
        let t = t.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                request(&*t, 2, &Echo(payload.clone()), Duration::from_secs(10)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = started.elapsed();
    println!(
        "calls with {concurrent} in flight: {:.0} calls/s ({} calls in {total:?})",
        (concurrent * per_task) as f64 / total.as_secs_f64(),
        concurrent * per_task
    );

    // Casts, as fast as the queue takes them.
    let before = t.stats();
    let mut backpressure = 0u64;
    let started = Instant::now();
    let mut i = 0;
    while i < casts {
        match cast_msg(&*t, 2, &Seq(i)) {
            Ok(()) => i += 1,
            Err(TransportError::Backpressure(_)) => {
                backpressure += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("cast failed: {e}"),
        }
    }
    let queued = started.elapsed();
    let counted = request(&*t, 2, &Report, Duration::from_secs(120)).await.unwrap();
    let total = started.elapsed();
    assert_eq!(counted, Counted { count: casts, in_order: true });
    let after = t.stats();
    let frames = after.frames_sent - before.frames_sent;
    let envelopes = after.envelopes_sent - before.envelopes_sent;
    println!(
        "casts ({casts}, 8 B, counted in order by the receiver): {:.0} casts/s  (queued in {queued:?}, all received in {total:?}; \
         {frames} frames, {:.1} envelopes/frame; {backpressure} backpressure retries)",
        casts as f64 / total.as_secs_f64(),
        envelopes as f64 / frames.max(1) as f64
    );
    drop(peer);
    t.shutdown().await;
}
