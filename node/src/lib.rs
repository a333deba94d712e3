//! The waddle node as a library: configuration, wiring, listeners and the XMPP runtime
//! (routing seam, sessions, rooms). The `waddle` binary is a thin shell over [`start`];
//! tests drive the same code in-process.

pub mod admin;
pub mod carbons;
pub mod cli;
pub mod clustering;
pub mod config;
pub mod connection;
pub mod control_store;
pub mod ctx;
pub mod http_server;
pub mod im;
pub mod io;
pub mod mam;
pub mod metrics;
pub mod muc;
pub mod outbox;
pub mod partition_data;
pub mod remote;
pub mod replication;
pub mod resume;
pub mod router;
pub mod running;
pub mod server;
pub mod session;
pub mod tls;
pub mod tls_stream;
pub mod user_data;
pub mod ws;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::ctx::Ctx;

/// Opens a node's storage, archives, permissions and certificate under
/// `server.data_dir` and builds its context, without listening anywhere (tests drive
/// several in one process).
pub async fn open_node(config: Config) -> Result<Arc<Ctx>> {
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("server.data_dir: cannot create {}", config.server.data_dir.display()))?;
    let db_path = config.server.data_dir.join("waddle.db");
    let store = waddle_storage::Store::open(&db_path)
        .await
        .with_context(|| format!("opening database {}", db_path.display()))?;
    let tls = tls::server_config_for(&config)?;
    let archive_dir = config.server.data_dir.join("archive");
    let archive = waddle_mam::Archive::open(&archive_dir)
        .await
        .with_context(|| format!("opening archives in {}", archive_dir.display()))?;
    let clustered = config.cluster.enabled();
    let control = Arc::new(control_store::NodeControl::new(store.clone(), clustered));
    let control_dyn: Arc<dyn waddle_api::ControlStore> = control.clone();
    // A cluster member's tuples come from the control plane once it is open
    // (`clustering::start`); a single node's from its database.
    let permissions = if clustered {
        waddle_api::Permissions::from_tuples(control_dyn, Vec::new(), 0)
    } else {
        waddle_api::Permissions::load_from(control_dyn).await.context("loading permissions")?
    };
    let node_id = config.server.node_id;
    Ok(Ctx::new(config, store, tls, archive, Arc::new(permissions), control, node_id))
}

/// Runs a node until SIGINT or SIGTERM, then drains it.
pub async fn run(config: Config) -> Result<()> {
    let ctx = open_node(config).await?;
    let permissions = Arc::clone(&ctx.permissions);
    let bind = ctx.config.server.bind_address.clone();

    let starttls = TcpListener::bind((bind.as_str(), ctx.config.c2s.starttls_port))
        .await
        .with_context(|| format!("c2s.starttls_port: cannot listen on {bind}:{}", ctx.config.c2s.starttls_port))?;
    let direct = TcpListener::bind((bind.as_str(), ctx.config.c2s.direct_tls_port))
        .await
        .with_context(|| format!("c2s.direct_tls_port: cannot listen on {bind}:{}", ctx.config.c2s.direct_tls_port))?;
    let http = TcpListener::bind((bind.as_str(), ctx.config.http.port))
        .await
        .with_context(|| format!("http.port: cannot listen on {bind}:{}", ctx.config.http.port))?;

    let ready = Arc::new(AtomicBool::new(false));
    let clustering: Arc<std::sync::OnceLock<Arc<clustering::Clustering>>> = Arc::default();
    let api_state = waddle_api::ApiState {
        store: ctx.store.clone(),
        control: ctx.control.clone(),
        accounts: Arc::new(ctx.accounts()),
        config: Arc::new(waddle_api::ApiConfig {
            domain: ctx.domain.clone(),
            xmpp_host: ctx.config.public_xmpp_host(),
            xmpp_port: ctx.config.c2s.starttls_port,
            websocket_url: ctx.config.websocket_url(),
            session_ttl_secs: ctx.config.auth.session_ttl_secs,
            xmpp_token_ttl_secs: ctx.config.auth.xmpp_token_ttl_secs,
            scram_iterations: ctx.config.auth.scram_iterations,
            open_registration: ctx.config.auth.open_registration,
            admin_token: Some(ctx.config.auth.admin_token.clone()).filter(|t| !t.is_empty()),
            min_password_len: ctx.config.auth.min_password_len,
            max_channels_per_waddle: ctx.config.limits.max_channels_per_waddle,
        }),
        auth_limiter: Arc::clone(&ctx.auth_limiter),
        registration_limiter: Arc::clone(&ctx.registration_limiter),
        ready: Arc::clone(&ready),
        authz: permissions,
        rooms: Arc::new(muc::NodeRooms { ctx: Arc::downgrade(&ctx), muc_domain: ctx.muc.domain.clone() }),
    };
    let metrics_ctx = Arc::clone(&ctx);
    let app =
        waddle_api::router(api_state)
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let ctx = Arc::clone(&metrics_ctx);
                    async move {
                        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], ctx.metrics.render(&ctx))
                    }
                }),
            )
            .route(config::WEBSOCKET_PATH, ws::route(Arc::clone(&ctx)))
            .merge(admin::routes(admin::AdminState { ctx: Arc::clone(&ctx), clustering: Arc::clone(&clustering) }));
    let limits = http_server::HttpLimits {
        header_timeout: Duration::from_secs(ctx.config.http.header_timeout_secs),
        idle_timeout: Duration::from_secs(ctx.config.http.idle_timeout_secs),
        max_connections: ctx.config.http.max_connections,
        handshake_timeout: Duration::from_secs(ctx.config.c2s.negotiation_timeout_secs),
    };
    let http_tls = ctx.config.http.tls.then(|| Arc::clone(&ctx.tls));
    tokio::spawn(http_server::serve(http, http_tls, app, limits));
    let public = bind.parse::<std::net::IpAddr>().map(|ip| !ip.is_loopback()).unwrap_or(true);
    if ctx.config.http.websocket_secure && !ctx.config.http.tls && public {
        tracing::warn!(
            bind = %bind,
            "http.websocket_secure: plain ws:// logins (PLAIN included) are accepted on a public address; \
             this is only safe behind a TLS-terminating proxy"
        );
    }
    if ctx.config.cluster.enabled() {
        // Members only serve clients once they are in the cluster and know the ring; a
        // signal while joining stops the node cleanly.
        tokio::select! {
            joined = clustering::start(&ctx) => {
                let _ = clustering.set(joined?);
            }
            () = shutdown_signal() => {
                tracing::info!("shutting down before joining the cluster");
                return Ok(());
            }
        }
    }
    tokio::spawn(accept_loop(Arc::clone(&ctx), starttls, false));
    tokio::spawn(accept_loop(Arc::clone(&ctx), direct, true));
    tokio::spawn(purge_tokens(Arc::clone(&ctx)));
    tokio::spawn(session::tick_sessions(Arc::clone(&ctx)));
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(
        domain = %ctx.domain,
        starttls = ctx.config.c2s.starttls_port,
        direct_tls = ctx.config.c2s.direct_tls_port,
        http = ctx.config.http.port,
        http_tls = ctx.config.http.tls,
        websocket = %ctx.config.websocket_url(),
        "waddle node ready"
    );

    tokio::select! {
        () = shutdown_signal() => {}
        () = ctx.stop.notified() => tracing::info!("drained: leaving"),
    }
    tracing::info!("shutting down: closing client streams");
    ready.store(false, std::sync::atomic::Ordering::SeqCst);
    ctx.cluster.for_each_local(|session| {
        let _ = session.cast(waddle_cluster::SessionMsg::Close(Some("system-shutdown")));
    });
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctx.cluster.local_sessions() > 0 && tokio::time::Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Acknowledged archive writes must be on disk before the process exits.
    if let Err(e) = ctx.archive.flush().await {
        tracing::error!(error = %e, "flushing archives failed");
    }
    Ok(())
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, direct_tls: bool) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if !ctx.cluster.may_serve() {
                    // Cut off from the cluster: the client is better served by another
                    // node, and a refused connection makes it try one at once.
                    tracing::debug!(%peer, "refusing a client while cut off from the cluster");
                    drop(tcp);
                    continue;
                }
                tokio::spawn(connection::serve(Arc::clone(&ctx), tcp, peer, direct_tls));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn purge_tokens(ctx: Arc<Ctx>) {
    let mut interval = tokio::time::interval(Duration::from_secs(600));
    loop {
        interval.tick().await;
        if let Err(e) = ctx.store.purge_expired_tokens(ctx::unix_now()).await {
            tracing::warn!(error = %e, "purging expired tokens failed");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
