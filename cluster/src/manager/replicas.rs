//! What managers say to each other, on the agents' listener and only to a manager
//! certificate of this cluster (an agent or a client gets 403 whatever it sends): the Raft
//! routes (`raft::net::ROUTE`), and a follower's Engine API requests forwarded to the leader,
//! which replays them through its own API as if they had come to it. Also the middlewares a
//! follower's listeners run: the Engine API proxied to the leader, agents sent on to it.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::error;
use super::extract;
use super::listen::Peer;
use super::shared::Shared;
use crate::client::ManagerClient;
use crate::pki::Role;
use crate::raft::net::{ROUTE, SnapshotRequest};
use crate::raft::{Managers, Replica};

#[derive(Clone)]
struct Replicas {
    replica: Arc<Replica>,
    store: Arc<crate::store::Store>,
    cluster_id: Arc<str>,
}

impl Replicas {
    /// A refusal when `vote` is a manager that left (given an ID once, a member no more): it
    /// would otherwise make a follower of whoever it reaches with a higher term.
    fn refuse_departed(&self, vote: &openraft::Vote<u64>) -> Option<Response> {
        let sender = vote.leader_id().node_id;
        // A manager not made a member of anything yet (a new cluster's, before its first
        // entry) knows no one to refuse.
        let members = self.replica.members();
        let departed = !members.is_empty()
            && sender <= self.store.snapshot().meta.last_manager_id
            && !members.contains_key(&sender);
        departed.then(|| {
            (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({
                    "message": format!("manager {sender} was removed from the swarm's managers")
                })),
            )
                .into_response()
        })
    }
}

/// A request whose connection proved a manager certificate of this cluster. Checked from
/// the request's head, before its body is read: a stranger's body is never parsed.
struct FromManager;

/// The cluster whose managers a route serves.
trait OfCluster {
    fn cluster_id(&self) -> &str;
}

impl OfCluster for Replicas {
    fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
}

impl<S: OfCluster + Sync> FromRequestParts<S> for FromManager {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, r: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Peer>() {
            Some(Peer::Tls(Some(id)))
                if id.role == Role::Manager && id.cluster_id == r.cluster_id() =>
            {
                Ok(FromManager)
            }
            _ => Err((
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({
                    "message": "only a manager of this swarm may take part in its Raft"
                })),
            )
                .into_response()),
        }
    }
}

/// A snapshot is the whole store in one body, and a catching-up follower's batch of entries
/// can be large too: far above axum's default limit for a swarm of thousands of services.
/// Only managers get as far as a body.
const BODY_LIMIT: usize = 1 << 30;

/// The three routes, for `replica` (over `store`) of cluster `cluster_id`.
pub fn routes(replica: Arc<Replica>, store: Arc<crate::store::Store>, cluster_id: &str) -> Router {
    Router::new()
        .route(&format!("{ROUTE}/append"), post(append))
        .route(&format!("{ROUTE}/vote"), post(vote))
        .route(&format!("{ROUTE}/snapshot"), post(snapshot))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Replicas {
            replica,
            store,
            cluster_id: cluster_id.into(),
        })
}

async fn append(
    State(r): State<Replicas>,
    _: FromManager,
    Json(rpc): Json<AppendEntriesRequest<Managers>>,
) -> Response {
    if let Some(refused) = r.refuse_departed(&rpc.vote) {
        return refused;
    }
    Json(r.replica.raft().append_entries(rpc).await).into_response()
}

async fn vote(
    State(r): State<Replicas>,
    _: FromManager,
    Json(rpc): Json<VoteRequest<u64>>,
) -> Response {
    if let Some(refused) = r.refuse_departed(&rpc.vote) {
        return refused;
    }
    Json(r.replica.raft().vote(rpc).await).into_response()
}

async fn snapshot(
    State(r): State<Replicas>,
    _: FromManager,
    Json(request): Json<SnapshotRequest>,
) -> Response {
    if let Some(refused) = r.refuse_departed(&request.vote) {
        return refused;
    }
    let snapshot = Snapshot {
        meta: request.meta,
        snapshot: Box::new(request.image),
    };
    Json(
        r.replica
            .raft()
            .install_full_snapshot(request.vote, snapshot)
            .await,
    )
    .into_response()
}

/// Where a manager says how its own replica stands: never handed to the leader.
pub const REPLICA_STATUS: &str = "/swarmkit/v1/replica";

/// `GET /swarmkit/v1/replica/leads`: `{"leads": true}` when this manager leads with a quorum
/// that answered it lately (a leader cut off says false long before it hears of a
/// successor); answered by the manager asked, cheaply, for clients choosing whom to ask.
pub const LEADS: &str = "/swarmkit/v1/replica/leads";

pub async fn leads(State(m): State<Shared>) -> Json<serde_json::Value> {
    let leads = m.replica.as_ref().is_none_or(|r| r.leads());
    Json(serde_json::json!({ "leads": leads }))
}

/// `GET /swarmkit/v1/replica`: this manager's own replica (its Raft ID, whether it leads,
/// the last entry its store applied, and a digest of the store's rows), for comparing the
/// managers with each other: replicas that applied the same entries hold the same bytes.
pub async fn replica_status(
    State(m): State<Shared>,
) -> super::error::ApiResult<Json<serde_json::Value>> {
    let store = m.store.clone();
    let (rows, applied) = tokio::task::spawn_blocking(move || store.export())
        .await
        .map_err(|e| super::error::ApiError::Internal(e.to_string()))??;
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for (key, bytes) in &rows {
        digest.update((key.len() as u64).to_be_bytes());
        digest.update(key.as_bytes());
        let bytes = bytes.as_deref().unwrap_or_default();
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    }
    let applied: Option<serde_json::Value> = applied.and_then(|a| serde_json::from_slice(&a).ok());
    Ok(Json(serde_json::json!({
        "id": m.replica.as_ref().map(|r| r.id()),
        "leader": m.leads(),
        "applied": applied.as_ref().and_then(|a| a["last"]["index"].as_u64()),
        "rows": rows.len(),
        "digest": hex::encode(digest.finalize()),
    })))
}

/// Where a follower sends the leader a write it was asked.
pub const FORWARD: &str = "/swarmkit/v1/raft/forward";
/// Where a follower sends a request whose answer streams (a followed log): the leader's
/// answer comes back as it is written, status and headers first.
pub const FORWARD_STREAM: &str = "/swarmkit/v1/raft/forward-stream";

/// An Engine API request as a follower received it (after its caller was authorised there).
#[derive(Serialize, Deserialize)]
struct Forwarded {
    method: String,
    uri: String,
    content_type: Option<String>,
    /// base64
    body: String,
}

/// The leader's answer to it, as its API gave it.
#[derive(Serialize, Deserialize)]
struct Replayed {
    status: u16,
    content_type: Option<String>,
    /// base64
    body: String,
}

#[derive(Clone)]
struct Forwarding {
    api: Router,
    cluster_id: Arc<str>,
}

impl OfCluster for Forwarding {
    fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
}

/// The leader's end: replays forwarded writes through `api` (its Engine API).
pub fn forwarded(api: Router, cluster_id: &str) -> Router {
    Router::new()
        .route(FORWARD, post(replay))
        .route(FORWARD_STREAM, post(replay_streaming))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Forwarding {
            api,
            cluster_id: cluster_id.into(),
        })
}

/// The request a follower forwarded, as the leader's own API takes it (else what is wrong
/// with it).
fn rebuilt(request: &Forwarded) -> Result<Request, String> {
    let body = STANDARD
        .decode(&request.body)
        .map_err(|e| format!("a forwarded body: {e}"))?;
    let mut builder = axum::http::Request::builder()
        .method(request.method.as_str())
        .uri(&request.uri);
    if let Some(ct) = &request.content_type {
        builder = builder.header(axum::http::header::CONTENT_TYPE, ct);
    }
    let mut req = builder
        .body(axum::body::Body::from(body))
        .map_err(|e| format!("a forwarded request: {e}"))?;
    // The follower authorised its caller; here the request is the cluster's own.
    req.extensions_mut().insert(Peer::Local);
    Ok(req)
}

/// A forwarded request whose answer streams: the API's answer is this one, as it is written.
async fn replay_streaming(
    State(f): State<Forwarding>,
    _: FromManager,
    Json(request): Json<Forwarded>,
) -> Response {
    match rebuilt(&request) {
        Ok(req) => match f.api.oneshot(req).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        },
        Err(e) => error::body(StatusCode::BAD_REQUEST, &e),
    }
}

async fn replay(
    State(f): State<Forwarding>,
    _: FromManager,
    Json(request): Json<Forwarded>,
) -> Response {
    let req = match rebuilt(&request) {
        Ok(r) => r,
        Err(e) => return error::body(StatusCode::BAD_REQUEST, &e),
    };
    let answer = match f.api.oneshot(req).await {
        Ok(a) => a,
        Err(never) => match never {},
    };
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(answer.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    Json(Replayed {
        status,
        content_type,
        body: STANDARD.encode(&body),
    })
    .into_response()
}

/// The follower's end, a middleware on its Engine API. Every request goes to the leader, as
/// docker's followers proxy theirs, and the leader's answer is this one's: what agents have
/// acknowledged (a task's visible state, a node's) lives on the leader alone. With no leader
/// reachable a read is answered from this manager's replica, and a write gets docker's 503.
/// Tasks' output is the leader's too (agents push it there); a followed log, which streams,
/// is streamed through from the leader (`follow_at_leader`).
pub async fn to_leader(State(m): State<Shared>, req: Request, next: Next) -> Response {
    let Some(replica) = m.replica.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    // Removed from the managers (demoted, its agent about to stop it): it knows no leader
    // any more and its state stops moving, so it serves nothing but its own status, and
    // clients that try managers in turn (ping first) pass it by.
    let members = replica.members();
    if !members.is_empty()
        && !members.contains_key(&replica.id())
        && path != REPLICA_STATUS
        && path != LEADS
    {
        return error::body(
            StatusCode::SERVICE_UNAVAILABLE,
            "this manager has left the swarm's managers (demoted): ask another manager",
        );
    }
    let following = path.ends_with("/logs")
        && req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "follow=1" || kv == "follow=true")
        });
    let local = path == "/_ping" || path == "/version" || path == REPLICA_STATUS || path == LEADS;
    if local || replica.is_leader() {
        return next.run(req).await;
    }
    if following {
        return follow_at_leader(&m, &replica, req, next).await;
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, extract::BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error::body(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let forwarded = Forwarded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        content_type: parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: STANDARD.encode(&body),
    };
    let local = |parts, body| next.run(Request::from_parts(parts, axum::body::Body::from(body)));
    // A read waits little for the leader (this manager's replica answers it otherwise); a
    // write waits through an election, and follows the leadership wherever it moves.
    let deadline = tokio::time::Instant::now()
        + if read {
            READ_PATIENCE
        } else {
            crate::raft::timing().write_deadline
        };
    loop {
        if replica.is_leader() {
            return local(parts, body).await;
        }
        let Some((leader_id, leader)) = replica.leader_with_id() else {
            if read {
                return local(parts, body).await;
            }
            // No leader it knows as a member: none yet, or one that has just left (a demoted
            // leader steps down once its removal commits). Wait for the next, whichever
            // this one is.
            if tokio::time::timeout_at(deadline, replica.leader_changes_from(replica.leader()))
                .await
                .is_err()
            {
                return error::body(StatusCode::SERVICE_UNAVAILABLE, crate::raft::NO_LEADER);
            }
            continue;
        };
        let tls = (**m.tls.managers().borrow()).clone();
        let client = ManagerClient::tcp(&leader.addr).with_tls(tls);
        tokio::select! {
            answered = client.post::<_, Replayed>(FORWARD, &forwarded) => match answered {
                Ok(r) => return replayed(r),
                Err(e) if read => {
                    tracing::debug!("the leader at {} did not answer a read: {e}", leader.addr);
                    return local(parts, body).await;
                }
                Err(e) => {
                    tracing::warn!("forwarding a write to the leader at {}: {e}", leader.addr);
                    return error::body(StatusCode::SERVICE_UNAVAILABLE, crate::raft::NO_LEADER);
                }
            },
            // The leader it went to lost the leadership: the write goes to the new one. Should
            // the old one still commit it, nothing applies twice: a create sent again meets
            // its own name, an update its own version, a removal finds nothing.
            () = replica.leader_changes_from(Some(leader_id)) => continue,
            () = tokio::time::sleep_until(deadline) => {
                return if read {
                    local(parts, body).await
                } else {
                    error::body(StatusCode::SERVICE_UNAVAILABLE, crate::raft::NO_LEADER)
                };
            }
        }
    }
}

/// A followed log asked of a follower: the tasks' output is on the leader (agents push it
/// there), so the leader's answer is streamed through as it is written. With no leader
/// reachable, this manager answers with what it holds.
async fn follow_at_leader(m: &Shared, replica: &Replica, req: Request, next: Next) -> Response {
    let Some(leader) = replica.leader_member() else {
        return next.run(req).await;
    };
    let uri = req.uri().to_string();
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let forwarded = Forwarded {
        method: req.method().to_string(),
        uri,
        content_type,
        // A log request carries its options in its query.
        body: String::new(),
    };
    let tls = (**m.tls.managers().borrow()).clone();
    let client = ManagerClient::tcp(&leader.addr).with_tls(tls);
    match client.post_streaming(FORWARD_STREAM, &forwarded).await {
        Ok(answer) => {
            let (parts, body) = answer.into_parts();
            Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(e) => {
            tracing::debug!(
                "the leader at {} did not stream a followed log: {e}",
                leader.addr
            );
            next.run(req).await
        }
    }
}

/// How long a follower waits for the leader's answer to a read before giving its own.
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

fn replayed(r: Replayed) -> Response {
    let mut answer = axum::response::Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY));
    if let Some(ct) = r.content_type {
        answer = answer.header(axum::http::header::CONTENT_TYPE, ct);
    }
    answer
        .body(axum::body::Body::from(
            STANDARD.decode(r.body).unwrap_or_default(),
        ))
        .unwrap_or_else(|e| error::body(StatusCode::BAD_GATEWAY, &e.to_string()))
}

/// On a follower, the agents' channel answers 503: agents ask the next manager they know
/// until they find the leader, whose dispatcher holds their plans.
pub async fn agents_to_leader(State(m): State<Shared>, req: Request, next: Next) -> Response {
    if m.leads() {
        return next.run(req).await;
    }
    let leader = m
        .replica
        .as_ref()
        .and_then(|r| r.leader_member())
        .map(|l| format!("{} at {}", l.node, l.addr))
        .unwrap_or_else(|| "none yet".into());
    error::body(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("this manager does not lead the swarm (the leader: {leader}): ask another"),
    )
}
