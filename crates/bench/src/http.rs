//! Just enough HTTP/1.1 for the waddle API: XMPP tokens (`--auth token`), and the
//! accounts, waddles and cluster calls of the chaos harness.

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `POST path` with a JSON body; returns the status and the parsed JSON answer.
pub async fn post_json(
    base: &str,
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    request(base, "POST", path, bearer, Some(body)).await
}

/// One request (`body`: JSON, or none); returns the status and the parsed JSON answer
/// (`Null` when the answer is empty or not JSON).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let Some(authority) = base.strip_prefix("http://") else {
        bail!("--api must be an http:// URL (the API is measured on loopback)");
    };
    let authority = authority.trim_end_matches('/');
    let mut tcp = TcpStream::connect(authority).await.with_context(|| format!("connect {authority}"))?;
    let body = body.map(serde_json::Value::to_string);
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = match &body {
        Some(body) => format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
        None => String::new(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{content}{auth}Connection: close\r\n\r\n{}",
        body.unwrap_or_default()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// An XMPP token for `username`: password → HTTP session → token.
pub async fn xmpp_token(api: &str, username: &str, password: &str) -> anyhow::Result<String> {
    let creds = serde_json::json!({ "username": username, "password": password });
    let (status, session) = post_json(api, "/auth/session", None, &creds).await?;
    let Some(bearer) = session["token"].as_str().filter(|_| status == 200) else {
        bail!("POST /auth/session for {username}: {status} {session}");
    };
    let (status, token) = post_json(api, "/auth/xmpp-token", Some(bearer), &serde_json::json!({})).await?;
    match token["token"].as_str() {
        Some(t) if status == 200 => Ok(t.to_owned()),
        _ => bail!("POST /auth/xmpp-token for {username}: {status} {token}"),
    }
}
