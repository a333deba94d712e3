//! Archive write cost, in isolation: appends N 1:1 chat messages (or room messages) as
//! the routing path does and prints the process CPU per archived message.
//!
//! `cargo run --release -p waddle-mam --example archive_bench -- [chat|room] [N]`

use std::time::Instant;

/// The allocator the server runs with (see `node/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use waddle_mam::{Archive, ArchiveLocation, ArchivedRow};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "chat".into());
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("waddle-archive-bench-{}", std::process::id()));
    let archive = Archive::open(&dir).await?;
    let start_cpu = cpu_seconds();
    let start = Instant::now();
    let base = 1_700_000_000_000_000i64;
    for i in 0..count {
        let from = format!("user{}@localhost", i % 50);
        let to = format!("user{}@localhost", (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) % 50);
        let id = format!("{:012}{:08}", i, i % 99_991);
        let body = format!("t={} seq={i} hello from the bench", base + i as i64);
        let payload =
            format!("<message from='{from}/bench' to='{to}/bench' type='chat' id='m{i}'><body>{body}</body></message>");
        let stamp = base + i as i64;
        if kind == "room" {
            let row = ArchivedRow {
                stanza_id: id,
                archive: "room@muc.localhost".into(),
                with_jid: from,
                from_nick: Some(format!("nick{}", i % 50)),
                stamp_micros: stamp,
                payload,
                body: Some(body),
                retracted: false,
            };
            archive.append_queued(ArchiveLocation::AdHocRooms, row).await?;
        } else {
            archive.append_chat_queued(&from, &to, &id, stamp, payload, Some(body)).await?;
        }
    }
    archive.flush().await?;
    let cpu = cpu_seconds() - start_cpu;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{kind}: {count} messages in {wall:.2} s wall ({:.0}/s), {:.2} us CPU per message, {} batches",
        count as f64 / wall,
        cpu * 1e6 / count as f64,
        archive.write_stats().batches
    );
    drop(archive);
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept {}", dir.display());
    }
    Ok(())
}
