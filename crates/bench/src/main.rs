//! `waddle-bench`: an XMPP load generator for waddle and any other XMPP server.
//!
//! It speaks plain XMPP over TCP or TLS, measures latency end to end on one clock (the
//! send time travels in the message body), and reads the server's CPU time and memory
//! from /proc, so that runs against different servers compare per unit of work. The
//! output is a table for people and one JSON line for scripts (the last line).

use anyhow::Context as _;
use waddle_bench::args::{self, Args, Scenario};
use waddle_bench::scenarios::Bench;
use waddle_bench::sm;

fn main() -> anyhow::Result<()> {
    if matches!(std::env::args().nth(1).as_deref(), Some("-h" | "--help" | "help")) {
        print!("{}", args::USAGE);
        return Ok(());
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let result = runtime.block_on(async {
        let bench = Bench::new(args.clone())?;
        match args.scenario {
            Scenario::Register => bench.register().await,
            Scenario::Login => bench.login().await,
            Scenario::Chat => bench.chat().await,
            Scenario::Muc => bench.muc().await,
            Scenario::Idle => bench.idle().await,
        }
    });
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("waddle-bench: {e:#}");
            // 3: --sm against a server that does not offer it (bench-smoke.sh skips its
            // --sm runs on that code, and on no other).
            std::process::exit(if e.downcast_ref::<sm::SmNotOffered>().is_some() { 3 } else { 1 });
        }
    };
    print!("{}", report.human());
    println!("{}", report.json());
    Ok(())
}
