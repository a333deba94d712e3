//! The shell around `waddle_c2s::Negotiator` for one client connection: socket reads,
//! TLS upgrade, credential checks against storage, then hand-over to the session task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use waddle_api::Accounts as _;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use waddle_c2s::{Action, AuthOutcome, CredentialsUnavailable, NegotiationConfig, Negotiator, RegisterOutcome};
use waddle_jid::FullJid;
use waddle_sasl::{LoginDecision, ScramCredentials, ScramHash};
use waddle_storage::{StoredScram, TokenKind};
use waddle_xml::StreamParser;

use crate::ctx::{unix_now, Ctx};
use crate::io::ClientIo;
use crate::session;

pub async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(ctx.config.c2s.negotiation_timeout_secs);
    let io = if direct_tls {
        match tokio::time::timeout_at(deadline, crate::tls_stream::accept(Arc::clone(&ctx.tls), tcp)).await {
            Ok(Ok(tls)) => ClientIo::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        ClientIo::Plain(tcp)
    };
    let transport = Transport { secure: direct_tls, starttls_available: !direct_tls };
    if let Some((io, parser, jid)) = negotiate(&ctx, io, peer, transport, deadline).await {
        session::start(ctx, io, parser, jid).await;
    }
}

/// An upgraded XMPP-over-WebSocket connection: the same negotiation (with the same
/// deadline) and session as TCP. `secure` says whether it counts as encrypted (`wss://`,
/// or `http.websocket_secure`); STARTTLS does not exist over WebSocket (RFC 7395 §3.7).
pub async fn serve_websocket(ctx: Arc<Ctx>, io: ClientIo, peer: SocketAddr, secure: bool) {
    let deadline = Instant::now() + Duration::from_secs(ctx.config.c2s.negotiation_timeout_secs);
    let transport = Transport { secure, starttls_available: false };
    if let Some((io, parser, jid)) = negotiate(&ctx, io, peer, transport, deadline).await {
        session::start(ctx, io, parser, jid).await;
    }
}

/// What the connection offers before negotiation starts.
#[derive(Clone, Copy)]
struct Transport {
    /// Encrypted already (direct TLS, wss://, or a WebSocket declared secure).
    secure: bool,
    starttls_available: bool,
}

async fn negotiate(
    ctx: &Arc<Ctx>,
    mut io: ClientIo,
    peer: SocketAddr,
    transport: Transport,
    deadline: Instant,
) -> Option<(ClientIo, StreamParser, FullJid)> {
    let peer_ip = peer.ip().to_string();
    let mut parser = StreamParser::new(ctx.xml_limits());
    let mut negotiator = Negotiator::new(
        NegotiationConfig {
            domain: ctx.domain.clone(),
            require_tls: ctx.config.c2s.require_tls,
            starttls_available: transport.starttls_available,
            // Closed registration closes every way in, not only the HTTP one.
            in_band_registration: ctx.config.auth.in_band_registration && ctx.config.auth.open_registration,
            stream_management: ctx.config.c2s.stream_management,
            max_auth_attempts: 3,
        },
        transport.secure,
    );
    let mut buf = vec![0u8; 4096];
    let mut pending: VecDeque<Action> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    let mut bound: Option<FullJid> = None;
    loop {
        // Pull events one at a time and run their actions before the next: a restart
        // (TLS, SASL success) must reset the parser before the bytes behind it are parsed.
        if pending.is_empty() && !negotiator.is_established() {
            match parser.next_event() {
                Ok(Some(event)) => pending.extend(negotiator.on_event(event)),
                Ok(None) => {}
                Err(e) => pending.extend(negotiator.on_parse_error(e.stream_condition())),
            }
        }
        let progressed = !pending.is_empty();
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Send(bytes) => out.extend_from_slice(&bytes),
                Action::StartTls => {
                    flush(&mut io, &mut out).await.ok()?;
                    let ClientIo::Plain(tcp) = io else { return None };
                    let tls = tokio::time::timeout_at(deadline, crate::tls_stream::accept(Arc::clone(&ctx.tls), tcp))
                        .await
                        .ok()?
                        .ok()?;
                    io = ClientIo::Tls(Box::new(tls));
                    // Plaintext pipelined after <starttls/> must not leak into the TLS stream.
                    parser.reset_discarding();
                    negotiator.tls_established();
                }
                Action::ResetParser => parser.reset(),
                Action::LookupScram { username, hash } => {
                    // SCRAM tells right from wrong only at the end of the exchange, so the
                    // decision must not depend on this attempt: a clean address is at most
                    // delayed (see `LoginLimiter`).
                    let result = if wait_for_login(ctx, &peer_ip, &username, deadline).await {
                        scram_credentials(ctx, &username, hash)
                            .await
                            .map_err(|Unreadable| CredentialsUnavailable::Temporarily)
                    } else {
                        Err(CredentialsUnavailable::Blocked)
                    };
                    pending.extend(negotiator.scram_credentials(result));
                }
                Action::VerifyPlain { username, secret } => {
                    let outcome = if wait_for_login(ctx, &peer_ip, &username, deadline).await {
                        match verify_plain(ctx, &username, secret).await {
                            Plain::Verdict(outcome) => outcome,
                            Plain::WrongPasswordUnreadableToken => {
                                // Told to try again (it may have been a valid token), but
                                // counted: a secret shaped like a token for a partition in
                                // a takeover must not make guesses free.
                                ctx.auth_failed(&peer_ip, Some(&username));
                                AuthOutcome::Unavailable
                            }
                        }
                    } else {
                        AuthOutcome::Blocked
                    };
                    pending.extend(negotiator.plain_verdict(outcome));
                }
                Action::Register { username, password } => {
                    let outcome = register(ctx, &peer_ip, &username, &password).await;
                    pending.extend(negotiator.register_result(outcome));
                }
                Action::Bind { username, resource } => {
                    ctx.auth_succeeded(&peer_ip, &username);
                    let jid = FullJid::new(&format!("{username}@{}/{resource}", ctx.domain)).ok()?;
                    pending.extend(negotiator.bound(jid.as_str()));
                    bound = Some(jid);
                }
                Action::Resume { username, previd, h } => {
                    flush(&mut io, &mut out).await.ok()?;
                    match crate::resume::hand_over(ctx, &username, &previd, h, io, parser).await {
                        // The session owns the connection now.
                        Ok(()) => return None,
                        Err((back, back_parser)) => {
                            io = back;
                            parser = back_parser;
                            negotiator.resume_failed().into_iter().for_each(|a| pending.push_back(a));
                            // Bytes the session never saw stay parsed in order: nothing
                            // is read past the <resume/> before this answer.
                        }
                    }
                }
                Action::AuthFailed { username } => {
                    tracing::info!(%peer, user = username.as_deref().unwrap_or("-"), "authentication failed");
                    ctx.auth_failed(&peer_ip, username.as_deref());
                }
                Action::Close => {
                    let _ = flush(&mut io, &mut out).await;
                    let _ = io.shutdown().await;
                    return None;
                }
            }
        }
        if negotiator.is_established() {
            flush(&mut io, &mut out).await.ok()?;
            return bound.map(|jid| (io, parser, jid));
        }
        if progressed {
            continue;
        }
        flush(&mut io, &mut out).await.ok()?;
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => {
                pending.extend(negotiator.on_parse_error("connection-timeout"));
                continue;
            }
            Ok(Ok(0)) => return None,
            Ok(Err(e)) => match crate::ws::frame_error(&e) {
                Some(refused) => {
                    pending.extend(negotiator.on_transport_error(refused.stream_condition(), &refused.to_string()))
                }
                None => return None,
            },
            Ok(Ok(n)) => {
                if let Err(e) = parser.feed(&buf[..n]) {
                    pending.extend(negotiator.on_parse_error(e.stream_condition()));
                }
            }
        }
    }
}

/// Applies the login limiter: `false` when the attempt is refused; a delay is served
/// here (never past the negotiation deadline).
async fn wait_for_login(ctx: &Ctx, peer_ip: &str, username: &str, deadline: Instant) -> bool {
    match ctx.auth_check(peer_ip, username) {
        LoginDecision::Allow => true,
        LoginDecision::Delay(d) => {
            tokio::time::sleep_until((Instant::now() + d).min(deadline)).await;
            true
        }
        LoginDecision::Block(_) => false,
    }
}

async fn flush(io: &mut ClientIo, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        io.flush().await?;
        out.clear();
    }
    Ok(())
}

fn to_credentials(hash: ScramHash, s: StoredScram) -> ScramCredentials {
    ScramCredentials {
        hash,
        salt: s.salt,
        iterations: s.iterations,
        stored_key: s.stored_key,
        server_key: s.server_key,
    }
}

/// The account could not be read (its partition is between owners, or its owner did
/// not answer) even after one retry: the client is told to try again later.
struct Unreadable;

/// How long a login waits before reading an account a second time: a partition's new
/// owner is usually serving within a heartbeat or two of a ring change.
const ACCOUNT_RETRY: Duration = Duration::from_millis(500);

async fn scram_credentials(ctx: &Ctx, username: &str, hash: ScramHash) -> Result<Option<ScramCredentials>, Unreadable> {
    let mut retried = false;
    let account = loop {
        match ctx.accounts().account(username).await {
            Ok(account) => break account,
            Err(e) if !retried => {
                tracing::warn!(error = %e, user = %username, "credential lookup failed; retrying once");
                retried = true;
                tokio::time::sleep(ACCOUNT_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, user = %username, "credential lookup failed: temporary-auth-failure");
                return Err(Unreadable);
            }
        }
    };
    Ok(account.map(|account| match hash {
        ScramHash::Sha1 => to_credentials(hash, account.scram_sha1),
        ScramHash::Sha256 => to_credentials(hash, account.scram_sha256),
    }))
}

/// What a PLAIN secret turned out to be.
enum Plain {
    Verdict(AuthOutcome),
    /// Not the password, and the token it may be could not be checked.
    WrongPasswordUnreadableToken,
}

/// PLAIN carries either a session token from `POST /auth/xmpp-token` or the password.
async fn verify_plain(ctx: &Ctx, username: &str, secret: String) -> Plain {
    let token_unreadable = match ctx.accounts().lookup_token(TokenKind::Xmpp, &secret, unix_now()).await {
        Ok(Some(record)) if record.username == username => return Plain::Verdict(AuthOutcome::Success),
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, user = %username, "token lookup failed");
            true
        }
    };
    let creds = match scram_credentials(ctx, username, ScramHash::Sha256).await {
        Ok(Some(creds)) => creds,
        Ok(None) => return Plain::Verdict(AuthOutcome::Failure),
        Err(Unreadable) => return Plain::Verdict(AuthOutcome::Unavailable),
    };
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || creds.verify_password(&secret)).await.unwrap_or(false);
    match (ok, token_unreadable) {
        (true, _) => Plain::Verdict(AuthOutcome::Success),
        (false, true) => Plain::WrongPasswordUnreadableToken,
        (false, false) => Plain::Verdict(AuthOutcome::Failure),
    }
}

async fn register(ctx: &Ctx, peer_ip: &str, username: &str, password: &str) -> RegisterOutcome {
    if registration_limited(ctx, peer_ip) {
        tracing::info!(peer = %peer_ip, "in-band registration refused: too many accounts from this address");
        return RegisterOutcome::RateLimited;
    }
    if password.len() < ctx.config.auth.min_password_len {
        return RegisterOutcome::NotAcceptable(format!(
            "password must be at least {} characters",
            ctx.config.auth.min_password_len
        ));
    }
    match waddle_api::create_account(&ctx.accounts(), username, password, ctx.config.auth.scram_iterations).await {
        Ok(()) => {
            ctx.registration_limiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_failure(peer_ip, std::time::Instant::now());
            tracing::info!(user = %username, "account registered in-band");
            RegisterOutcome::Created
        }
        Err(e) => register_error(e),
    }
}

/// Whether `peer_ip` has created as many accounts as the window allows.
fn registration_limited(ctx: &Ctx, peer_ip: &str) -> bool {
    let mut limiter = ctx.registration_limiter.lock().unwrap_or_else(|e| e.into_inner());
    limiter.check(peer_ip, std::time::Instant::now()).is_err()
}

fn register_error(e: waddle_api::ApiError) -> RegisterOutcome {
    match e.code() {
        "account_exists" => RegisterOutcome::Conflict,
        "invalid_username" | "weak_password" => RegisterOutcome::NotAcceptable(e.to_string()),
        _ => {
            tracing::error!(error = %e, "in-band registration failed");
            RegisterOutcome::InternalError
        }
    }
}
