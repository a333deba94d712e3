//! `waddle`: a clustered XMPP server. This binary wires configuration, storage, TLS,
//! the XMPP listeners and the HTTP API together; protocol logic lives in the crates.

/// glibc's allocator consolidates its free lists whenever a request of 1 KiB or more
/// meets freed small chunks, which a boxed stanza future does on every client stanza.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

use waddle::config::Config;

const USAGE: &str = "usage: waddle [--config PATH]\n       waddle cluster <status|locate|join|leave|remove> ... (see waddle cluster --help)\n\nStarts a waddle XMPP node. Every config field can be overridden with\nWADDLE_<SECTION>_<FIELD> environment variables (see README).";

fn parse_args() -> Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    let mut config = std::env::var_os("WADDLE_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(args.next().context("--config needs a path")?));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("cluster") {
        let (command, path) = waddle::cli::parse(&args[1..])?;
        let path = path.or_else(|| std::env::var_os("WADDLE_CONFIG").map(PathBuf::from));
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let config = Config::load(path.as_deref(), &env)?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(waddle::cli::run(command, &config));
    }
    let config_path = parse_args()?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = Config::load(config_path.as_deref(), &env)?;
    init_logging(&config);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(waddle::run(config))
}
