//! /nodes: what `node ls` and `node inspect` read.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use bollard::models::{
    EngineDescription, ManagerStatus, Node as ApiNode, NodeDescription, NodeSpec,
    NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState as ApiNodeState, NodeStatus,
    ObjectVersion, Platform, Reachability,
};

use super::lookup::find;
use super::{ApiResult, ENGINE_VERSION, Shared};
use crate::model::{Node, NodeState};

/// Engine label naming the load-balancer driver the node's agent uses.
pub const LB_DRIVER_LABEL: &str = "swarmkit.lb-driver";
/// Engine label naming where the node's routing mesh balances: `sandbox` (in ingress_sbox, as
/// Docker does) or `node` (the node's own IPVS).
pub const MESH_LABEL: &str = "swarmkit.mesh";
/// Engine label saying whether the node's agent has applied a plan since it registered
/// (`ready`) or not yet (`pending`): `cluster up` returns once every node's is ready.
pub const DATAPLANE_LABEL: &str = "swarmkit.dataplane";

pub fn to_api(n: &Node, applied: u64) -> ApiNode {
    ApiNode {
        id: Some(n.id.clone()),
        version: Some(ObjectVersion {
            index: Some(n.version),
        }),
        created_at: Some(n.created),
        updated_at: Some(n.updated),
        spec: Some(NodeSpec {
            name: None,
            labels: Some(HashMap::new()),
            role: Some(if n.leader {
                NodeSpecRoleEnum::MANAGER
            } else {
                NodeSpecRoleEnum::WORKER
            }),
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
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
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: Some(match n.state {
                NodeState::Ready => ApiNodeState::READY,
                NodeState::Down => ApiNodeState::DOWN,
            }),
            message: None,
            addr: Some(n.addr.to_string()),
        }),
        manager_status: n.leader.then(|| ManagerStatus {
            leader: Some(true),
            reachability: Some(Reachability::REACHABLE),
            addr: Some(format!("{}:2377", n.addr)),
        }),
    }
}

pub async fn list(State(m): State<Shared>) -> Json<Vec<ApiNode>> {
    let s = m.store.snapshot();
    Json(
        s.nodes
            .values()
            .map(|n| to_api(n, m.ack_of(&n.id)))
            .collect(),
    )
}

pub async fn inspect(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<ApiNode>> {
    let s = m.store.snapshot();
    let n = find(&s.nodes, &id, |n| &n.hostname, "node")?;
    Ok(Json(to_api(n, m.ack_of(&n.id))))
}
