//! /nodes: what `node ls` and `node inspect` read, and `node update` / `node rm` change.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bollard::models::{
    EngineDescription, ManagerStatus, Node as ApiNode, NodeDescription, NodeSpec,
    NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState as ApiNodeState, NodeStatus,
    ObjectVersion, Platform, Reachability, ResourceObject,
};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use super::lookup::{Field, Filters, ListQuery, find};
use super::shared::Shared;
use super::system::ENGINE_VERSION;
use crate::model::{Availability, Node, NodeState};
use crate::orchestrator;

/// Engine label naming the load-balancer driver the node's agent uses.
pub const LB_DRIVER_LABEL: &str = "swarmkit.lb-driver";
/// Engine label naming where the node's routing mesh balances: `sandbox` (in ingress_sbox, as
/// Docker does) or `node` (the node's own IPVS).
pub const MESH_LABEL: &str = "swarmkit.mesh";
/// Engine label saying whether the node's agent has applied a plan since it registered
/// (`ready`) or not yet (`pending`): `cluster up` returns once every node's is ready.
pub const DATAPLANE_LABEL: &str = "swarmkit.dataplane";

/// `manager`: whether the node is a manager, and then whether it leads and is reachable.
pub fn to_api(
    n: &Node,
    applied: u64,
    trust: Option<&crate::pki::trust::Trust>,
    manager: Option<(bool, crate::raft::Reachability)>,
) -> ApiNode {
    ApiNode {
        id: Some(n.id.clone()),
        version: Some(ObjectVersion {
            index: Some(n.version),
        }),
        created_at: Some(n.created),
        updated_at: Some(n.updated),
        spec: Some(NodeSpec {
            name: None,
            labels: Some(n.labels.clone().into_iter().collect()),
            // What the node should be: a promoted node is a manager before it has joined.
            role: Some(if n.leader {
                NodeSpecRoleEnum::MANAGER
            } else {
                NodeSpecRoleEnum::WORKER
            }),
            availability: Some(match n.availability {
                Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
                Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
                Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
            }),
        }),
        description: Some(NodeDescription {
            hostname: Some(n.hostname.clone()),
            platform: Some(Platform {
                architecture: Some(std::env::consts::ARCH.into()),
                os: Some("linux".into()),
            }),
            engine: Some(EngineDescription {
                engine_version: Some(ENGINE_VERSION.into()),
                labels: Some(HashMap::from([
                    (LB_DRIVER_LABEL.to_string(), n.lb_driver.clone()),
                    (MESH_LABEL.to_string(), n.mesh.clone()),
                    (
                        DATAPLANE_LABEL.to_string(),
                        if applied > 0 { "ready" } else { "pending" }.to_string(),
                    ),
                    ("swarmkit.kernel".to_string(), n.kernel.clone()),
                    (
                        "swarmkit.ingress-address".to_string(),
                        n.ingress_addr.to_string(),
                    ),
                ])),
                plugins: None,
            }),
            tls_info: super::trust::node_tls_info(trust, &n.cert_root),
            resources: Some(ResourceObject {
                nano_cpus: Some(n.resources.nano_cpus as i64),
                memory_bytes: Some(n.resources.memory_bytes as i64),
                generic_resources: None,
            }),
        }),
        status: Some(NodeStatus {
            state: Some(match n.state {
                NodeState::Ready => ApiNodeState::READY,
                NodeState::Down => ApiNodeState::DOWN,
            }),
            message: None,
            addr: Some(n.addr.to_string()),
        }),
        manager_status: manager.map(|(leads, reach)| ManagerStatus {
            leader: Some(leads),
            reachability: Some(match reach {
                crate::raft::Reachability::Unreachable => Reachability::UNREACHABLE,
                _ => Reachability::REACHABLE,
            }),
            addr: Some(format!("{}:{}", n.addr, crate::raft::MANAGER_PORT)),
        }),
    }
}

/// What `docker node ls --filter` accepts (docker's keys, and `availability` besides).
const NODE_FILTERS: &[&str] = &[
    "id",
    "name",
    "label",
    "node.label",
    "role",
    "membership",
    "availability",
];

fn matches(n: &ApiNode, filters: &Filters) -> bool {
    let spec = n.spec.as_ref();
    let hostname = n.description.as_ref().and_then(|d| d.hostname.as_deref());
    filters.matches(|k| match k {
        "id" => Field::Prefix(n.id.as_deref().unwrap_or_default().into()),
        "name" => Field::Prefix(hostname.unwrap_or_default().into()),
        // docker: `label` is the engine's labels, `node.label` the ones `node update` sets.
        "label" => Field::Labels(
            n.description
                .as_ref()
                .and_then(|d| d.engine.as_ref())
                .and_then(|e| e.labels.as_ref()),
        ),
        "node.label" => Field::Labels(spec.and_then(|s| s.labels.as_ref())),
        "role" => Field::Keyword(match spec.and_then(|s| s.role) {
            Some(NodeSpecRoleEnum::MANAGER) => "manager",
            _ => "worker",
        }),
        // Every node of a swarmkit cluster joined with the cluster: none waits for acceptance.
        "membership" => Field::Keyword("accepted"),
        "availability" => Field::Keyword(match spec.and_then(|s| s.availability) {
            Some(NodeSpecAvailabilityEnum::PAUSE) => "pause",
            Some(NodeSpecAvailabilityEnum::DRAIN) => "drain",
            _ => "active",
        }),
        _ => Field::Any,
    })
}

/// `GET /nodes?filters=...`: what `node ls` shows.
pub async fn list(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ApiNode>>> {
    let filters = Filters::parse(q.filters.as_deref(), NODE_FILTERS)?;
    filters.check_values("role", &["manager", "worker"])?;
    filters.check_values("membership", &["accepted", "pending"])?;
    filters.check_values("availability", &["active", "pause", "drain"])?;
    let s = m.store.snapshot();
    let managers = m.managers(&s);
    Ok(Json(
        s.nodes
            .values()
            .map(|n| {
                let manager = managers.get(&n.id).copied();
                to_api(n, m.ack_of(&n.id), s.meta.trust.as_ref(), manager)
            })
            .filter(|n| matches(n, &filters))
            .collect(),
    ))
}

pub async fn inspect(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<ApiNode>> {
    let s = m.store.snapshot();
    let n = find(&s.nodes, &id, |n| &n.hostname, "node")?;
    let manager = m.managers(&s).get(&n.id).copied();
    Ok(Json(to_api(
        n,
        m.ack_of(&n.id),
        s.meta.trust.as_ref(),
        manager,
    )))
}

#[derive(Deserialize)]
pub struct UpdateQuery {
    version: Option<u64>,
}

/// `POST /nodes/{id}/update?version=N` with a NodeSpec: availability and labels (what `docker
/// node update` sends, the whole spec read back with its changes). Draining moves the node's
/// tasks elsewhere, each successor routed everywhere before its predecessor leaves.
pub async fn update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<UpdateQuery>,
    Json(spec): Json<NodeSpec>,
) -> ApiResult<StatusCode> {
    m.update(|s| {
        let mut node = find(&s.nodes, &id, |n| &n.hostname, "node")?.clone();
        let Some(version) = q.version else {
            return Err(ApiError::BadRequest(
                "node update needs ?version=N (the node's Version.Index)".into(),
            ));
        };
        if version != node.version {
            return Err(ApiError::Conflict(format!(
                "update out of sequence: node {} changed since version {version} (now {}); inspect it again and retry",
                node.hostname, node.version
            )));
        }
        let manager = match spec.role {
            Some(NodeSpecRoleEnum::MANAGER) => Some(true),
            Some(NodeSpecRoleEnum::WORKER) => Some(false),
            _ => None,
        };
        if let Some(manager) = manager.filter(|want| *want != node.leader) {
            super::promotion::check_role_change(&m, s, &node, manager)?;
        }
        if let Some(name) = spec.name.as_deref().filter(|n| !n.is_empty()) {
            return Err(ApiError::BadRequest(format!(
                "node names cannot be set (got {name:?}): swarmkit names nodes by hostname"
            )));
        }
        if let Some((k, _)) = spec
            .labels
            .iter()
            .flatten()
            .find(|(k, _)| k.is_empty() || k.contains(char::is_whitespace))
        {
            return Err(ApiError::BadRequest(format!(
                "invalid node label key {k:?}: use a non-empty key without spaces, e.g. --label-add zone=east"
            )));
        }
        let availability = match spec.availability {
            Some(NodeSpecAvailabilityEnum::PAUSE) => Availability::Pause,
            Some(NodeSpecAvailabilityEnum::DRAIN) => Availability::Drain,
            Some(NodeSpecAvailabilityEnum::ACTIVE) => Availability::Active,
            _ => node.availability,
        };
        let labels = spec
            .labels
            .map(|l| l.into_iter().collect())
            .unwrap_or_else(|| node.labels.clone());
        let leader = manager.unwrap_or(node.leader);
        if availability == node.availability && labels == node.labels && leader == node.leader {
            return Ok(());
        }
        if leader != node.leader {
            tracing::info!(node = node.hostname, manager = leader, "role changed");
        }
        node.availability = availability;
        node.labels = labels;
        node.leader = leader;
        node.updated = chrono::Utc::now();
        s.put_node(node);
        // Draining, or labels a constraint no longer admits: tasks move where they can;
        // a task with nowhere to go keeps serving where it is.
        let services: Vec<String> = s.services.keys().cloned().collect();
        let min_ack = m.min_ack(s);
        for svc in services {
            orchestrator::reconcile_or_keep(s, &svc, min_ack, chrono::Utc::now());
        }
        Ok(())
    })?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub struct RemoveQuery {
    force: Option<bool>,
}

/// `DELETE /nodes/{id}`: forgets a node that is down (or any worker with `force`); its tasks
/// are replaced elsewhere.
pub async fn remove(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    m.update(|s| {
        let node = find(&s.nodes, &id, |n| &n.hostname, "node")?.clone();
        if node.leader {
            return Err(ApiError::BadRequest(format!(
                "node {} is a cluster manager: demote it to a worker before removing it (docker node demote {})",
                node.hostname, node.hostname
            )));
        }
        if node.state != NodeState::Down && !q.force.unwrap_or(false) {
            return Err(ApiError::BadRequest(format!(
                "node {} is not down and can't be removed: stop it first, or use --force",
                node.hostname
            )));
        }
        let mut services = Vec::new();
        let tasks: Vec<_> = s
            .tasks
            .values()
            .filter(|t| t.node_id == node.id)
            .cloned()
            .collect();
        for t in tasks {
            services.push(t.service_id.clone());
            s.remove_task(&t.id);
        }
        s.remove_node(&node.id);
        services.sort();
        services.dedup();
        let min_ack = m.min_ack(s);
        for svc in services {
            orchestrator::reconcile_or_keep(s, &svc, min_ack, chrono::Utc::now());
        }
        Ok(())
    })?;
    Ok(StatusCode::OK)
}
