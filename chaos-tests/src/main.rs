//! `waddle-chaos`: starts a real waddle cluster, runs a client workload through a seeded
//! fault schedule, then checks the invariants and writes a report (see README.md).

mod args;
mod checker;
mod cluster;
mod delay;
mod prng;
mod report;
mod run;
mod schedule;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| matches!(a.as_str(), "-h" | "--help" | "help")) {
        print!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    }
    // The packet-delay helper the harness starts inside a node's namespace (delay.rs).
    if std::env::args().nth(1).as_deref() == Some("--delay-packets") {
        let result = delay::DelayArgs::parse(std::env::args().skip(2)).and_then(delay::run);
        return match result {
            Ok(released) => {
                delay::say(&format!("released {released}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("waddle-chaos --delay-packets: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("waddle-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("waddle-chaos: tokio runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let code = runtime.block_on(run::main(args));
    // Client tasks still blocked on a dead node must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
