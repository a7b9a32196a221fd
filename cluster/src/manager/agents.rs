//! The agents' side of the manager: registration, plan long-polls and observed-state reports.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use serde::Deserialize;

use super::{ApiError, ApiResult, Shared};
use crate::model::{Node, NodeState, TaskState};
use crate::orchestrator;
use crate::plan;
use crate::protocol::{PlanResponse, RegisterRequest, RegisterResponse, Report};

const LONG_POLL: Duration = Duration::from_secs(5);
/// A node that has not polled for this long is marked down.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn register(
    State(m): State<Shared>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    let node_id = m.update(|s| {
        let existing = s
            .nodes
            .values()
            .find(|n| n.hostname == req.hostname)
            .cloned();
        let now = Utc::now();
        let node = match existing {
            Some(mut n) => {
                n.addr = req.addr;
                n.state = NodeState::Ready;
                n.lb_driver = req.lb_driver.clone();
                n.mesh = req.mesh.clone();
                n.kernel = req.kernel.clone();
                n.ipsec_missing = req.ipsec_missing.clone();
                n.updated = now;
                n
            }
            None => {
                let ingress = s
                    .networks
                    .values()
                    .find(|n| n.ingress)
                    .map(|n| n.id.clone())
                    .ok_or_else(|| ApiError::Conflict("no ingress network".into()))?;
                Node {
                    id: crate::ids::new_id(),
                    hostname: req.hostname.clone(),
                    addr: req.addr,
                    created: now,
                    updated: now,
                    version: 0,
                    state: NodeState::Ready,
                    leader: !s.nodes.values().any(|n| n.leader),
                    lb_driver: req.lb_driver.clone(),
                    mesh: req.mesh.clone(),
                    kernel: req.kernel.clone(),
                    ipsec_missing: req.ipsec_missing.clone(),
                    ingress_addr: crate::ipam::allocate_address(s, &ingress)?,
                    availability: Default::default(),
                    labels: Default::default(),
                }
            }
        };
        let id = node.id.clone();
        s.put_node(node);
        Ok(id)
    })?;
    m.set_ack(&node_id, 0);
    m.touch(&node_id);
    Ok(Json(RegisterResponse { node_id }))
}

#[derive(Deserialize)]
pub struct PlanQuery {
    after: Option<u64>,
}

pub async fn plan(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Json<PlanResponse>> {
    let Some(node) = m.store.snapshot().nodes.get(&id).cloned() else {
        return Err(ApiError::NotFound(format!(
            "node {id} is not registered: register first"
        )));
    };
    m.touch(&id);
    if node.state == NodeState::Down {
        // It was only slow (a loaded machine): it is back.
        m.update(|s| {
            if let Some(mut n) = s.nodes.get(&id).cloned() {
                n.state = NodeState::Ready;
                n.updated = Utc::now();
                s.put_node(n);
            }
            Ok(())
        })?;
    }
    let mut rx = m.epoch.subscribe();
    if let Some(after) = q.after {
        let _ = tokio::time::timeout(LONG_POLL, rx.wait_for(|e| *e > after)).await;
    }
    m.touch(&id);
    let epoch = *rx.borrow();
    let s = m.store.snapshot();
    let min_ack = m.min_ack(&s);
    Ok(Json(PlanResponse {
        epoch,
        plan: plan::compute(&s, &id, min_ack),
    }))
}

pub async fn report(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Json(report): Json<Report>,
) -> ApiResult<Json<serde_json::Value>> {
    m.touch(&id);
    if !report.tasks.is_empty() {
        m.update(|s| {
            let mut touched_services = Vec::new();
            for r in &report.tasks {
                let Some(mut t) = s.tasks.get(&r.id).cloned() else {
                    continue;
                };
                if t.node_id != id {
                    continue;
                }
                let changed =
                    t.status.state != r.state || t.status.pid != r.pid || t.status.err != r.err;
                if !changed {
                    continue;
                }
                if r.state == TaskState::Running && t.status.state != TaskState::Running {
                    t.running_version = Some(s.version);
                }
                t.status = crate::model::TaskStatus {
                    state: r.state,
                    timestamp: Utc::now(),
                    message: r.message.clone(),
                    err: r.err.clone(),
                    pid: r.pid,
                    exit_code: r.exit_code,
                };
                t.updated = Utc::now();
                let exited_unasked = r.state.is_terminal() && t.desired == TaskState::Running;
                if exited_unasked {
                    // The slot needs a replacement; this one stays as history.
                    t.desired = TaskState::Shutdown;
                    touched_services.push(t.service_id.clone());
                }
                s.put_task(t);
            }
            for svc in touched_services {
                // An unplaceable replacement must not cost us the observed states above.
                if let Err(e) = orchestrator::reconcile(s, &svc) {
                    tracing::warn!("replacing a task of service {svc}: {e}");
                }
            }
            Ok(())
        })?;
    }
    if let Some(v) = report.applied_version {
        m.set_ack(&id, v);
    }
    Ok(Json(serde_json::json!({})))
}

/// Marks nodes down when they stop polling.
pub async fn watch_liveness(m: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = m.store.snapshot();
        let stale: Vec<String> = s
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready && m.silent_for(&n.id) > NODE_TIMEOUT)
            .map(|n| n.id.clone())
            .collect();
        if stale.is_empty() {
            continue;
        }
        let r = m.update(|s| {
            for id in &stale {
                if let Some(mut n) = s.nodes.get(id).cloned() {
                    n.state = NodeState::Down;
                    n.updated = Utc::now();
                    s.put_node(n);
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!("marking nodes down: {e}");
        }
    }
}
