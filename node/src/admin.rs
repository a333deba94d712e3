//! The cluster's admin HTTP API (`/v1/cluster...`, admin bearer token), which
//! `waddle cluster` talks to. A node that is not clustered answers as a cluster of one.

use std::sync::{Arc, OnceLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use waddle_cluster::{partition_of, Place};
use waddle_control::{NodeState, Role};
use waddle_jid::Jid;

use crate::clustering::Clustering;
use crate::ctx::Ctx;
use crate::remote::{NodeCall, NodeReply};

#[derive(Clone)]
pub struct AdminState {
    pub ctx: Arc<Ctx>,
    pub clustering: Arc<OnceLock<Arc<Clustering>>>,
}

pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/locate", get(locate))
        .route("/v1/cluster/join", post(join))
        .route("/v1/cluster/leave", post(leave))
        .route("/v1/cluster/remove", post(remove))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// The admin token, compared in constant time; an unset token closes the API.
fn authorized(ctx: &Ctx, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let expected = ctx.config.auth.admin_token.as_bytes();
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    match presented {
        Some(p) if !expected.is_empty() && bool::from(p.ct_eq(expected)) => Ok(()),
        _ => Err(Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is required"))),
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Up => "up",
        NodeState::Leaving => "leaving",
        NodeState::Down => "down",
    }
}

async fn status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state.ctx, &headers) {
        return *denied;
    }
    Json(cluster_status(&state).await).into_response()
}

/// The answer of `GET /v1/cluster`.
pub async fn cluster_status(state: &AdminState) -> Value {
    let ctx = &state.ctx;
    let me = ctx.cluster.me();
    let owned = |node: u64| (0..waddle_cluster::PARTITIONS).filter(|p| ctx.cluster.owner(*p) == node).count();
    let Some(clustering) = state.clustering.get() else {
        return json!({
            "node": me, "leader": me, "term": 0, "ring_epoch": ctx.cluster.epoch(),
            "nodes": [{
                "id": me, "state": "up", "role": "leader", "voter": true,
                "cluster_addr": null,
                "http_addr": format!("{}:{}", ctx.config.server.bind_address, ctx.config.http.port),
                "partitions": owned(me), "rooms": ctx.muc.running_count(), "sessions": ctx.cluster.local_sessions(),
            }],
        });
    };
    let control = &clustering.control;
    let status = control.status();
    let connected = waddle_cluster::transport::Transport::connected(clustering.transport.as_ref());
    let link = ctx.link().cloned();
    let mut nodes = Vec::new();
    for record in control.state().nodes.values() {
        let id = record.id;
        let role = if status.leader == Some(id) {
            "leader"
        } else if status.voters.contains(&id) {
            "follower"
        } else if status.learners.contains(&id) {
            "learner"
        } else {
            "none"
        };
        let reachable = id == me || connected.contains(&id);
        // A member the control plane still lists as up but that nobody can reach is down.
        let node_state = if record.state == NodeState::Up && !reachable { "down" } else { state_name(record.state) };
        let stats = if id == me {
            Some((ctx.cluster.local_sessions(), ctx.muc.running_count()))
        } else {
            match &link {
                Some(link) if reachable => match link.call(id, NodeCall::Stats).await {
                    Ok(NodeReply::Stats { sessions, rooms }) => Some((sessions, rooms)),
                    _ => None,
                },
                _ => None,
            }
        };
        nodes.push(json!({
            "id": id,
            "state": node_state,
            "role": role,
            "voter": status.voters.contains(&id),
            "cluster_addr": record.cluster_addr,
            "http_addr": record.http_addr,
            "partitions": owned(id),
            "sessions": stats.map(|s| s.0),
            "rooms": stats.map(|s| s.1),
        }));
    }
    json!({
        "node": me,
        "leader": status.leader,
        "term": status.term,
        "role": match status.role { Role::Leader => "leader", Role::Follower => "follower", Role::Learner => "learner", Role::Candidate => "candidate", Role::Shutdown => "shutdown" },
        "ring_epoch": ctx.cluster.epoch(),
        "last_applied": status.last_applied,
        "nodes": nodes,
    })
}

#[derive(Deserialize)]
struct LocateQuery {
    jid: String,
}

async fn locate(State(state): State<AdminState>, headers: HeaderMap, Query(q): Query<LocateQuery>) -> Response {
    if let Err(denied) = authorized(&state.ctx, &headers) {
        return *denied;
    }
    let ctx = &state.ctx;
    let Ok(jid) = Jid::new(&q.jid) else {
        return error(StatusCode::BAD_REQUEST, "invalid_jid", "not a JID");
    };
    let bare = jid.to_bare();
    let partition = match (jid.domain().as_str() == ctx.muc.domain, jid.node()) {
        (true, Some(room)) => crate::muc::room_partition(ctx, room.as_str()).await,
        _ => partition_of(bare.as_str()),
    };
    let owner = ctx.cluster.owner(partition);
    let replicas: Vec<u64> = state
        .clustering
        .get()
        .and_then(|c| {
            c.control.state().partition_map.as_ref().and_then(|m| m.replicas.get(partition as usize).cloned())
        })
        .unwrap_or_else(|| vec![owner]);
    let here = matches!(ctx.cluster.place(partition), Place::Local(()));
    Json(json!({
        "jid": bare.as_str(),
        "partition": partition,
        "owner": owner.to_string(),
        "replicas": replicas.iter().map(u64::to_string).collect::<Vec<_>>(),
        "epoch": ctx.cluster.epoch(),
        "local": here,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct JoinBody {
    seed: String,
}

async fn join(State(state): State<AdminState>, headers: HeaderMap, Json(body): Json<JoinBody>) -> Response {
    if let Err(denied) = authorized(&state.ctx, &headers) {
        return *denied;
    }
    let Some(clustering) = state.clustering.get() else {
        return error(StatusCode::CONFLICT, "not_clustered", "this node has no cluster.listen; restart it with one");
    };
    match clustering.control.join_via(&body.seed).await {
        Ok(()) => Json(json!({ "joined": true, "node": state.ctx.cluster.me() })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, "join_failed", &e.to_string()),
    }
}

/// Drains this node out of the cluster: it is marked `leaving`, so the next ring gives
/// its partitions to the others (their new leaders take the logs over from the replica
/// sets this node was in, while it still answers); once this node has adopted that ring
/// and owns nothing, its clients' streams are closed (they reconnect elsewhere), it
/// leaves the control plane's membership and the process exits.
async fn leave(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&state.ctx, &headers) {
        return *denied;
    }
    let Some(clustering) = state.clustering.get().cloned() else {
        return error(StatusCode::CONFLICT, "not_clustered", "this node is not in a cluster");
    };
    let me = state.ctx.cluster.me();
    let leaving = waddle_control::Command::SetNodeState { id: me, state: waddle_control::NodeState::Leaving };
    if let Err(e) = clustering.control.propose(leaving).await {
        return error(StatusCode::BAD_GATEWAY, "leave_failed", &e.to_string());
    }
    match crate::clustering::drain(&state.ctx, &clustering).await {
        Ok(drained) => {
            let ctx = Arc::clone(&state.ctx);
            // Answer first; the process stops right after.
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                ctx.stop.notify_one();
            });
            Json(json!({ "left": true, "node": me, "ring_epoch": drained })).into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "leave_failed", &format!("{e:#}")),
    }
}

#[derive(Deserialize)]
struct RemoveBody {
    node: u64,
}

async fn remove(State(state): State<AdminState>, headers: HeaderMap, Json(body): Json<RemoveBody>) -> Response {
    if let Err(denied) = authorized(&state.ctx, &headers) {
        return *denied;
    }
    let Some(clustering) = state.clustering.get() else {
        return error(StatusCode::CONFLICT, "not_clustered", "this node is not in a cluster");
    };
    match clustering.control.remove_node(body.node).await {
        Ok(()) => Json(json!({ "removed": body.node })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, "remove_failed", &e.to_string()),
    }
}
