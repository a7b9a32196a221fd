//! The manager's side of the cluster's trust: who a request's certificate proves its sender
//! is, and the routes that issue certificates (a node joining with a token or renewing with
//! its certificate, a remote client) and rotate tokens and the root (`tls` holds what the
//! listeners present).
//!
//! A node is its certificate: [`Caller`] takes the node from the certificate the TLS
//! handshake proved, and accepts it only while the store still names that certificate's
//! serial for the node, so `node rm` and a renewal retire a certificate at once.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{self, Query};
use super::listen::Peer;
use super::shared::Shared;
use super::tls::{no_trust, pki_error};
use crate::model::{Node, NodeState};
use crate::pki::Role;
use crate::pki::ca::Subject;
use crate::pki::identity::Identity;
use crate::pki::token::JoinToken;
use crate::pki::trust::Trust;
use crate::protocol::{Issued, JoinRequest, RegisterRequest, RenewRequest};
use crate::store::State as StoreState;

/// Renews the manager's certificate when it is due, and presents the cluster's trust as the
/// store holds it whenever that changes: a root rotation is written once, by the leader, and
/// reaches the other managers through the log, whose listeners and Raft client must follow
/// it (or, once it completes, the leader trusts only the new root and their old certificates
/// are refused). Runs for the manager's life.
pub async fn renew_own(m: Shared) {
    let mut changes = m.store.subscribe();
    let mut presented = m.store.snapshot().meta.trust.clone();
    loop {
        let at = *m.tls.renew_at.lock().unwrap_or_else(|e| e.into_inner());
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        let due = tokio::select! {
            () = tokio::time::sleep(wait.max(Duration::from_secs(1))) => true,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let meta = m.store.snapshot().meta.clone();
        let Some(trust) = &meta.trust else { continue };
        let rotated = presented
            .as_ref()
            .is_none_or(|p| p.trusted() != trust.trusted());
        if !due && !rotated {
            continue;
        }
        match m.tls.refresh(trust, &meta.cluster_id) {
            Ok(()) => presented = Some(trust.clone()),
            Err(e) => tracing::error!("renewing the manager's certificate: {e}"),
        }
    }
}

/// The node a request comes from, as its certificate proves it.
pub struct Caller(pub Node);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Shared) -> Result<Caller, ApiError> {
        let Some(Peer::Tls(Some(id))) = parts.extensions.get::<Peer>() else {
            return Err(ApiError::Unauthorized(
                "this route needs the node's certificate, over mutual TLS: a node joins with a \
                 token first (POST /swarmkit/v1/agent/join)"
                    .into(),
            ));
        };
        node_of(&m.store.snapshot(), id).map(Caller)
    }
}

/// The node `id` proves, if its certificate is still the one the store names for it.
fn node_of(s: &StoreState, id: &Identity) -> ApiResult<Node> {
    if id.cluster_id != s.meta.cluster_id {
        return Err(ApiError::Unauthorized(format!(
            "the certificate is of cluster {}, not this one ({})",
            id.cluster_id, s.meta.cluster_id
        )));
    }
    if !matches!(id.role, Role::Worker | Role::Manager) {
        return Err(ApiError::Forbidden(format!(
            "{} holds a {} certificate, which is not a node's",
            id.name, id.role
        )));
    }
    // A kept connection can outlive the certificate its handshake checked.
    if id.not_after <= Utc::now() {
        return Err(ApiError::Unauthorized(format!(
            "the certificate of node {} expired at {}: agents renew before then; join again with a token",
            id.name, id.not_after
        )));
    }
    let node = s.nodes.get(&id.name).ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "node {} was removed from the cluster (node rm): its certificate is no longer \
             accepted; to bring it back, delete its credentials and join it again with a token",
            id.name
        ))
    })?;
    if node.cert_serial != id.serial {
        return Err(ApiError::Unauthorized(format!(
            "this certificate of node {} ({}) was replaced by a newer one (renewed, or the node \
             joined again): connect with the current one",
            node.hostname, id.name
        )));
    }
    Ok(node.clone())
}

/// Lets through only a peer that may use the control API: a remote client's or a manager
/// node's certificate (a worker is told what docker tells it).
pub async fn api_caller(
    State(m): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let allowed = match req.extensions().get::<Peer>() {
        Some(Peer::Local) => Ok(()),
        Some(Peer::Tls(Some(id))) if id.role == Role::Client => {
            if id.cluster_id == m.store.snapshot().meta.cluster_id {
                Ok(())
            } else {
                Err(ApiError::Unauthorized(format!(
                    "the certificate is of cluster {}, not this one",
                    id.cluster_id
                )))
            }
        }
        Some(Peer::Tls(Some(id))) => {
            node_of(&m.store.snapshot(), id).and_then(|node| match node.role.may_use_api() {
                true => Ok(()),
                false => Err(ApiError::Forbidden(
                    "This node is not a swarm manager. Worker nodes can't be used to view or \
                     modify cluster state. Please run this command on a manager node or promote \
                     the current node to a manager."
                        .into(),
                )),
            })
        }
        _ => Err(ApiError::Unauthorized(
            "the control API needs a client certificate: see swarmkit cluster env --tls".into(),
        )),
    };
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /swarmkit/v1/agent/join`: a node with a token and a signing request becomes a node
/// of the cluster, with a certificate for its ID and the role its token grants. A name an up
/// node holds is refused; a down node's is taken over (a guest rebooted without its
/// credentials), which retires that node's old certificate.
pub async fn join(
    State(m): State<Shared>,
    extract::Json(req): extract::Json<JoinRequest>,
) -> ApiResult<Json<Issued>> {
    let token: JoinToken = req
        .token
        .parse()
        .map_err(|e: crate::pki::token::TokenError| ApiError::Unauthorized(e.to_string()))?;
    crate::names::validate(crate::names::Named::Node, &req.node.hostname)
        .map_err(ApiError::BadRequest)?;
    let issued = m.update(|s| {
        let trust = s.meta.trust.clone().ok_or_else(no_trust)?;
        let role = trust.role_of(&token).ok_or_else(|| {
            ApiError::Unauthorized(
                "the join token is not one of this cluster's current tokens (rotated, or of \
                 another cluster): print the current one with swarmkit cluster join-token worker"
                    .into(),
            )
        })?;
        let existing = s
            .nodes
            .values()
            .find(|n| n.hostname == req.node.hostname)
            .cloned();
        let mut node = match existing {
            Some(n) if n.state != NodeState::Down => {
                return Err(ApiError::Conflict(format!(
                    "node {} is already in the cluster and up: a joining node takes a name no \
                     up node holds (remove that node first with node rm, or pick another name)",
                    n.hostname
                )));
            }
            Some(n) => n,
            None => new_node(s, &req.node)?,
        };
        super::agents::apply_registration(&mut node, &req.node);
        node.role = role;
        let issued = sign(&s.meta, &trust, &mut node, &req.csr_pem)?;
        s.put_node(node);
        Ok(issued)
    })?;
    m.set_ack(&issued.node_id, 0, None);
    m.touch(&issued.node_id);
    tracing::info!(
        node = issued.node_id,
        hostname = req.node.hostname,
        "joined"
    );
    Ok(Json(issued))
}

fn new_node(s: &StoreState, req: &RegisterRequest) -> ApiResult<Node> {
    let ingress = s
        .networks
        .values()
        .find(|n| n.ingress)
        .map(|n| n.id.clone())
        .ok_or_else(|| ApiError::Conflict("no ingress network".into()))?;
    let now = Utc::now();
    Ok(Node {
        id: crate::ids::new_id(),
        hostname: req.hostname.clone(),
        addr: req.addr,
        created: now,
        updated: now,
        version: 0,
        state: NodeState::Ready,
        // A manager node: one of the replicating managers', or the first node to register
        // where there is one manager.
        leader: if s.meta.manager_nodes.is_empty() {
            !s.nodes.values().any(|n| n.leader)
        } else {
            s.meta.manager_nodes.contains(&req.hostname)
        },
        lb_driver: String::new(),
        mesh: String::new(),
        kernel: String::new(),
        ipsec_missing: None,
        ingress_addr: crate::ipam::allocate_address(s, &ingress)?,
        availability: Default::default(),
        labels: Default::default(),
        cert_serial: String::new(),
        role: Role::Worker,
        cert_root: String::new(),
        resources: req.resources,
    })
}

/// A certificate for `node` from its signing request, under the current root; `node` then
/// names it as the only one it may use (the caller stores it).
fn sign(
    meta: &crate::model::Meta,
    trust: &Trust,
    node: &mut Node,
    csr_pem: &str,
) -> ApiResult<Issued> {
    let cert = trust
        .root
        .sign_request(
            csr_pem,
            &Subject {
                name: &node.id,
                role: node.role,
                cluster_id: &meta.cluster_id,
            },
            meta.cert_expiry(),
        )
        .map_err(pki_error)?;
    node.cert_serial = cert.serial;
    node.cert_root = trust.root_id();
    Ok(Issued {
        node_id: node.id.clone(),
        cert_pem: cert.cert_pem,
        root_pem: trust.root.cert_pem.clone(),
        root_id: trust.root_id(),
    })
}

/// `POST /swarmkit/v1/agent/renew`: a node's new certificate for a new key, under the current
/// root. The old certificate is refused from then on. When the last node holding one of the
/// previous root has renewed, a CA rotation is over: the old root is dropped.
pub async fn renew(
    State(m): State<Shared>,
    Caller(node): Caller,
    extract::Json(req): extract::Json<RenewRequest>,
) -> ApiResult<Json<Issued>> {
    let (issued, finished) = m.update(|s| {
        let mut trust = s.meta.trust.clone().ok_or_else(no_trust)?;
        let mut node = s.nodes.get(&node.id).cloned().ok_or_else(|| {
            ApiError::Unauthorized(format!("node {} was removed meanwhile", node.id))
        })?;
        let issued = sign(&s.meta, &trust, &mut node, &req.csr_pem)?;
        s.put_node(node);
        let finished = trust.previous.is_some() && rotation_done(s, &trust);
        if finished {
            trust.previous = None;
            let mut meta = s.meta.clone();
            meta.trust = Some(trust);
            s.put_meta(meta);
        }
        Ok((issued, finished))
    })?;
    if finished {
        refresh_listeners(&m)?;
        tracing::info!("CA rotation done: every node holds a certificate of the new root");
    }
    tracing::info!(node = issued.node_id, "renewed its certificate");
    Ok(Json(issued))
}

/// Whether every node holds a certificate of the current root.
fn rotation_done(s: &StoreState, trust: &Trust) -> bool {
    let id = trust.root_id();
    s.nodes.values().all(|n| n.cert_root == id)
}

fn refresh_listeners(m: &Shared) -> ApiResult<()> {
    let meta = m.store.snapshot().meta.clone();
    let trust = meta.trust.as_ref().ok_or_else(no_trust)?;
    m.tls.refresh(trust, &meta.cluster_id).map_err(pki_error)
}

/// A remote client's signing request (`cluster env --tls`).
#[derive(Deserialize)]
pub struct ClientCertRequest {
    name: String,
    csr_pem: String,
}

/// `POST /swarmkit/v1/client-cert`, on the manager's unix socket only (local root): a client
/// certificate for the control API's TLS listener, and where that listener is.
pub async fn client_cert(
    State(m): State<Shared>,
    axum::Extension(peer): axum::Extension<Peer>,
    extract::Json(req): extract::Json<ClientCertRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    if !matches!(peer, Peer::Local) {
        return Err(ApiError::Forbidden(
            "client certificates are issued only to local root, on the manager's unix socket \
             (swarmkit cluster env --tls on the manager's machine)"
                .into(),
        ));
    }
    crate::names::validate(crate::names::Named::Node, &req.name).map_err(ApiError::BadRequest)?;
    let s = m.store.snapshot();
    let trust = s.meta.trust.as_ref().ok_or_else(no_trust)?;
    let cert = trust
        .root
        .sign_request(
            &req.csr_pem,
            &Subject {
                name: &req.name,
                role: Role::Client,
                cluster_id: &s.meta.cluster_id,
            },
            s.meta.cert_expiry(),
        )
        .map_err(pki_error)?;
    Ok(Json(serde_json::json!({
        "cert_pem": cert.cert_pem,
        "root_pem": trust.root.cert_pem,
        "docker_host": format!("tcp://127.0.0.1:{}", s.meta.client_port),
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwarmUpdateQuery {
    version: Option<String>,
    rotate_worker_token: Option<String>,
    rotate_manager_token: Option<String>,
}

/// `POST /swarm/update`, docker's: rotates join tokens (`rotateWorkerToken`,
/// `rotateManagerToken`) and, when `Spec.CAConfig.ForceRotate` grows, the root CA. Other spec
/// fields are fixed at `cluster up` here and left as they are.
pub async fn swarm_update(
    State(m): State<Shared>,
    Query(q): Query<SwarmUpdateQuery>,
    extract::Json(spec): extract::Json<serde_json::Value>,
) -> ApiResult<()> {
    let flag = |name: &str, v: &Option<String>| -> ApiResult<bool> {
        match v.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid value {other:?} for {name}: use true or false"
            ))),
        }
    };
    let rotate_worker = flag("rotateWorkerToken", &q.rotate_worker_token)?;
    let rotate_manager = flag("rotateManagerToken", &q.rotate_manager_token)?;
    let force_rotate = match &spec["CAConfig"]["ForceRotate"] {
        serde_json::Value::Null => None,
        v => Some(v.as_u64().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Spec.CAConfig.ForceRotate must be a non-negative integer, not {v}"
            ))
        })?),
    };
    let version = q
        .version
        .as_deref()
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid swarm version {v:?}: pass Version.Index from docker swarm inspect"
                ))
            })
        })
        .transpose()?;
    let rotated_root = m.update(|s| {
        let current = s.meta.swarm_version + 1;
        if let Some(v) = version
            && v != current
        {
            return Err(ApiError::Conflict(format!(
                "update out of sequence: the swarm is at version {current}, the update was for \
                 {v}; inspect it again and retry"
            )));
        }
        let mut meta = s.meta.clone();
        meta.swarm_version += 1;
        let trust = meta.trust.as_mut().ok_or_else(no_trust)?;
        if rotate_worker {
            trust.rotate_token(Role::Worker).map_err(pki_error)?;
        }
        if rotate_manager {
            trust.rotate_token(Role::Manager).map_err(pki_error)?;
        }
        let rotate_root = force_rotate.is_some_and(|f| f > meta.ca_force_rotate);
        if rotate_root {
            trust.rotate_root(&meta.cluster_id).map_err(pki_error)?;
            meta.ca_force_rotate = force_rotate.unwrap_or_default();
        }
        s.put_meta(meta);
        Ok(rotate_root)
    })?;
    if rotated_root {
        refresh_listeners(&m)?;
        tracing::info!("CA rotation begun: nodes renew onto the new root");
    }
    Ok(())
}

/// The root a node's certificate chains to, as docker's node inspect shows it (`docker swarm
/// ca --rotate` counts the nodes whose root is the cluster's).
pub fn node_tls_info(trust: Option<&Trust>, cert_root: &str) -> Option<bollard::models::TlsInfo> {
    let trust = trust?;
    let root = if cert_root == trust.root_id() {
        &trust.root
    } else {
        &trust.previous.as_ref()?.root
    };
    Some(cluster_tls_info(&root.cert_pem))
}

/// docker's TLSInfo of a root: its PEM (issuer subject and key are left out: they are the
/// root's own and docker compares them only with each other).
pub fn cluster_tls_info(root_pem: &str) -> bollard::models::TlsInfo {
    bollard::models::TlsInfo {
        trust_root: Some(root_pem.to_string()),
        ..Default::default()
    }
}

/// What `GET /swarm` says of the cluster's trust, in docker's fields.
pub fn swarm_fields(meta: &crate::model::Meta) -> serde_json::Value {
    let Some(trust) = &meta.trust else {
        return serde_json::json!({});
    };
    serde_json::json!({
        "JoinTokens": { "Worker": trust.worker_token, "Manager": trust.manager_token },
        "TLSInfo": { "TrustRoot": trust.root.cert_pem },
        "RootRotationInProgress": trust.previous.is_some(),
    })
}
