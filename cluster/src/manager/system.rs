//! /_ping, /version, /info and /swarm: what clients ask before anything else.

use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use bollard::models::{
    ClusterInfo, LocalNodeState, ObjectVersion, PeerNode, SwarmInfo, SwarmSpec, SwarmSpecCaConfig,
    SwarmSpecDispatcher, SwarmSpecOrchestration, SwarmSpecRaft, SystemInfo, SystemVersion,
    SystemVersionPlatform,
};

use super::shared::Shared;
use crate::model::NodeState;

/// Docker API version we speak (the 28.x CLI's).
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";
pub const ENGINE_VERSION: &str = concat!("swarmkit-", env!("CARGO_PKG_VERSION"));

pub async fn ping() -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert("API-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("OSType", HeaderValue::from_static("linux"));
    h.insert("Swarm", HeaderValue::from_static("active/manager"));
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    (h, "OK")
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub async fn version() -> Json<SystemVersion> {
    Json(SystemVersion {
        platform: Some(SystemVersionPlatform {
            name: "swarmkit".into(),
        }),
        version: Some(ENGINE_VERSION.into()),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(env!("CARGO_PKG_VERSION").into()),
        go_version: Some("n/a (Rust)".into()),
        os: Some("linux".into()),
        arch: Some(std::env::consts::ARCH.replace("x86_64", "amd64")),
        kernel_version: Some(kernel()),
        ..Default::default()
    })
}

/// The cluster's settings as docker reports them. swarmkit has one manager and no raft;
/// the figures are the ones it actually uses (task history per slot, the agents' liveness
/// timeout) or Swarm's defaults where it has no equivalent.
fn swarm_spec(meta: &crate::model::Meta, heartbeat: std::time::Duration) -> SwarmSpec {
    SwarmSpec {
        name: Some(meta.cluster_name.clone()),
        labels: Some(Default::default()),
        orchestration: Some(SwarmSpecOrchestration {
            task_history_retention_limit: Some(crate::orchestrator::HISTORY_PER_SLOT as i64),
        }),
        raft: Some(SwarmSpecRaft {
            snapshot_interval: Some(10000),
            keep_old_snapshots: Some(0),
            log_entries_for_slow_followers: Some(500),
            election_tick: Some(10),
            heartbeat_tick: Some(1),
        }),
        dispatcher: Some(SwarmSpecDispatcher {
            heartbeat_period: Some(heartbeat.as_nanos() as i64),
        }),
        ca_config: Some(SwarmSpecCaConfig {
            node_cert_expiry: Some(meta.cert_expiry().as_nanos() as i64),
            force_rotate: Some(meta.ca_force_rotate),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn info(State(m): State<Shared>) -> Json<SystemInfo> {
    let s = m.store.snapshot();
    let managers = m.managers(&s);
    let leader = managers
        .iter()
        .find(|(_, (leads, _))| *leads)
        .and_then(|(id, _)| s.nodes.get(id));
    let nodes = s.nodes.len() as i64;
    let running = s
        .tasks
        .values()
        .filter(|t| t.status.state == crate::model::TaskState::Running)
        .count() as i64;
    Json(SystemInfo {
        id: Some(s.meta.cluster_id.clone()),
        name: leader.map(|n| n.hostname.clone()),
        server_version: Some(ENGINE_VERSION.into()),
        operating_system: Some("swarmkit netns node".into()),
        os_type: Some("linux".into()),
        architecture: Some(std::env::consts::ARCH.into()),
        kernel_version: Some(kernel()),
        ncpu: Some(
            std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
        ),
        // Tasks are the containers here; the ones running are all that run.
        containers: Some(running),
        containers_running: Some(running),
        driver: Some("swarmkit".into()),
        docker_root_dir: Some(crate::paths::STATE_ROOT.into()),
        swarm: Some(SwarmInfo {
            node_id: leader.map(|n| n.id.clone()),
            node_addr: leader.map(|n| n.addr.to_string()),
            local_node_state: Some(LocalNodeState::ACTIVE),
            control_available: Some(true),
            error: Some(String::new()),
            remote_managers: Some(
                managers
                    .keys()
                    .filter_map(|id| s.nodes.get(id))
                    .map(|n| PeerNode {
                        node_id: Some(n.id.clone()),
                        addr: Some(format!("{}:{}", n.addr, crate::raft::MANAGER_PORT)),
                    })
                    .collect(),
            ),
            nodes: Some(nodes),
            managers: Some(managers.len().max(1) as i64),
            cluster: Some(ClusterInfo {
                id: Some(s.meta.cluster_id.clone()),
                version: Some(ObjectVersion {
                    index: Some(s.meta.swarm_version + 1),
                }),
                created_at: s.meta.created,
                updated_at: s.meta.created,
                spec: Some(swarm_spec(&s.meta, m.heartbeat.period)),
                tls_info: s
                    .meta
                    .trust
                    .as_ref()
                    .map(|t| super::trust::cluster_tls_info(&t.root.cert_pem)),
                root_rotation_in_progress: s.meta.trust.as_ref().map(|t| t.previous.is_some()),
                data_path_port: Some(u32::from(s.meta.data_port())),
                default_addr_pool: Some(vec![crate::ipam::DEFAULT_POOL.into()]),
                subnet_size: Some(24),
            }),
        }),
        ..Default::default()
    })
}

pub async fn swarm(State(m): State<Shared>) -> Json<serde_json::Value> {
    let s = m.store.snapshot();
    let ready = s
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .count();
    let mut swarm = serde_json::json!({
        "ID": s.meta.cluster_id,
        "Version": { "Index": s.meta.swarm_version + 1 },
        "CreatedAt": s.meta.created,
        "UpdatedAt": s.meta.created,
        "Spec": swarm_spec(&s.meta, m.heartbeat.period),
        "DataPathPort": s.meta.data_port(),
        "DefaultAddrPool": [crate::ipam::DEFAULT_POOL],
        "SubnetSize": 24,
        "ReadyNodes": ready,
    });
    if let (Some(swarm), serde_json::Value::Object(trust)) =
        (swarm.as_object_mut(), super::trust::swarm_fields(&s.meta))
    {
        swarm.extend(trust);
    }
    Json(swarm)
}

pub async fn page_not_found() -> ApiError {
    ApiError::NotFound("page not found".into())
}
