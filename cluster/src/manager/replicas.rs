//! The Raft routes between managers (`raft::net::ROUTE`): served on the agents' listener,
//! answered only to a manager certificate of this cluster. An agent or a client that reaches
//! them gets 403 whatever it sends: a vote or a log entry is a manager's to give.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

use super::listen::Peer;
use crate::pki::Role;
use crate::raft::net::{ROUTE, SnapshotRequest};
use crate::raft::{Managers, Replica};

#[derive(Clone)]
struct Replicas {
    replica: Arc<Replica>,
    cluster_id: Arc<str>,
}

/// A request whose connection proved a manager certificate of this cluster. Checked from
/// the request's head, before its body is read: a stranger's body is never parsed.
struct FromManager;

impl FromRequestParts<Replicas> for FromManager {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, r: &Replicas) -> Result<Self, Response> {
        match parts.extensions.get::<Peer>() {
            Some(Peer::Tls(Some(id)))
                if id.role == Role::Manager && *id.cluster_id == *r.cluster_id =>
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

/// The three routes, for `replica` of cluster `cluster_id`.
pub fn routes(replica: Arc<Replica>, cluster_id: &str) -> Router {
    Router::new()
        .route(&format!("{ROUTE}/append"), post(append))
        .route(&format!("{ROUTE}/vote"), post(vote))
        .route(&format!("{ROUTE}/snapshot"), post(snapshot))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Replicas {
            replica,
            cluster_id: cluster_id.into(),
        })
}

async fn append(
    State(r): State<Replicas>,
    _: FromManager,
    Json(rpc): Json<AppendEntriesRequest<Managers>>,
) -> Response {
    Json(r.replica.raft().append_entries(rpc).await).into_response()
}

async fn vote(
    State(r): State<Replicas>,
    _: FromManager,
    Json(rpc): Json<VoteRequest<u64>>,
) -> Response {
    Json(r.replica.raft().vote(rpc).await).into_response()
}

async fn snapshot(
    State(r): State<Replicas>,
    _: FromManager,
    Json(request): Json<SnapshotRequest>,
) -> Response {
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
