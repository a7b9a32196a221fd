//! The agents' side of the manager: registration, plan long-polls (which are also the
//! heartbeats), observed-state reports, and what happens to a node that stops polling.

use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::shared::Shared;
use super::trust::Caller;
use crate::model::{Node, NodeState, TaskState};
use crate::orchestrator;
use crate::protocol::{PlanResponse, RegisterRequest, RegisterResponse, Report};

/// `POST /swarmkit/v1/agent/register`: an agent (re)starting with its certificate says what
/// its node is now (its VTEP, drivers, kernel). It may speak only for the node its certificate
/// names, under that node's name.
pub async fn register(
    State(m): State<Shared>,
    Caller(node): Caller,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    if req.hostname != node.hostname {
        return Err(ApiError::Forbidden(format!(
            "the certificate is node {}'s ({}), which cannot register as {:?}",
            node.hostname, node.id, req.hostname
        )));
    }
    let node_id = node.id.clone();
    m.update(|s| {
        let Some(mut n) = s.nodes.get(&node_id).cloned() else {
            return Err(ApiError::Unauthorized(format!(
                "node {node_id} was removed meanwhile: join again with a token"
            )));
        };
        apply_registration(&mut n, &req);
        s.put_node(n);
        Ok(())
    })?;
    // A (re)started agent has applied nothing yet.
    m.set_ack(&node_id, 0, None);
    m.touch(&node_id);
    Ok(Json(RegisterResponse { node_id }))
}

/// What a registration (or a join) says of the node now.
pub(super) fn apply_registration(n: &mut Node, req: &RegisterRequest) {
    n.addr = req.addr;
    n.state = NodeState::Ready;
    n.lb_driver = req.lb_driver.to_string();
    n.mesh = req.mesh.to_string();
    n.kernel = req.kernel.clone();
    n.ipsec_missing = req.ipsec_missing.clone();
    n.resources = req.resources;
    n.updated = Utc::now();
}

#[derive(Deserialize)]
pub struct PlanQuery {
    /// The plan version the agent has (absent: it has nothing).
    since: Option<u64>,
}

/// Answers with what changed for the node since `since`, as soon as something does, or
/// with nothing after one heartbeat period.
pub async fn plan(
    State(m): State<Shared>,
    Caller(node): Caller,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Response> {
    let id = node.id.clone();
    let not_found = || ApiError::NotFound(format!("node {id} is not registered: register first"));
    m.touch(&id);
    if node.state == NodeState::Down {
        // It was only slow or cut off: it is back.
        m.update(|s| {
            if let Some(mut n) = s.nodes.get(&id).cloned() {
                n.state = NodeState::Ready;
                n.updated = Utc::now();
                s.put_node(n);
            }
            Ok(())
        })?;
    }
    let deadline = tokio::time::Instant::now() + m.heartbeat.period;
    let root_id = m.tls.root_id();
    loop {
        let (delivery, mut woken) = {
            let mut d = m.dispatch();
            let mut rx = d.subscribe(&id).ok_or_else(not_found)?;
            rx.borrow_and_update();
            (d.take(&id, q.since).ok_or_else(not_found)?, rx)
        };
        if delivery.delta.is_some() || tokio::time::Instant::now() >= deadline {
            m.touch(&id);
            let carried = delivery.delta.is_some();
            let body = serde_json::to_vec(&PlanResponse {
                version: delivery.version,
                delta: delivery.delta,
                heartbeat_ms: m.heartbeat.period.as_millis() as u64,
                root_id: root_id.to_string(),
                manager: super::promotion::runs_manager(&m, &id, &node.hostname),
                managers: super::promotion::addresses(&m),
            })
            // Plain structs and string-keyed maps: encoding cannot fail.
            .expect("plan responses encode");
            if carried {
                m.dispatch().count_bytes(&id, body.len());
            }
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        let _ = tokio::time::timeout_at(deadline, woken.changed()).await;
    }
}

/// `POST /swarmkit/v1/agent/report`: what the node's tasks did; a node reports only tasks
/// placed on it.
pub async fn report(
    State(m): State<Shared>,
    Caller(node): Caller,
    Json(report): Json<Report>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = node.id;
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
                if t.desired != TaskState::Running
                    && t.status.state.is_terminal()
                    && !r.state.is_terminal()
                {
                    // Ended here already (its node was down): a late word from a node
                    // coming back must not revive it.
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
        m.set_ack(&id, v, report.plan_digest);
    }
    Ok(Json(serde_json::json!({})))
}

/// Each node's channel: what was sent, what is pending, whether its agent holds exactly the
/// manager's plan.
pub async fn status(State(m): State<Shared>) -> Json<Vec<crate::dispatch::FeedStatus>> {
    Json(m.dispatch().status())
}

/// Marks nodes down when they stop heartbeating. It sleeps until the earliest moment a
/// node could be overdue, so an idle cluster costs one wake-up per heartbeat period.
pub async fn watch_liveness(m: Shared) {
    let hb = m.heartbeat;
    // Writes the store refused in a row: each is retried after a longer pause, not at once
    // in a loop that would spin on a full disk and write a warning per turn.
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        let s = m.store.snapshot();
        let mut next = now + hb.timeout();
        let mut stale = Vec::new();
        for n in s.nodes.values().filter(|n| n.state == NodeState::Ready) {
            // A node this manager has not heard from yet gets the reconnect grace.
            let due = match m.last_seen(&n.id) {
                Some(seen) => seen + hb.timeout(),
                None => m.lead_since() + hb.grace.max(hb.timeout()),
            };
            if due <= now {
                stale.push(n.id.clone());
            } else {
                next = next.min(due);
            }
        }
        if !stale.is_empty() {
            let r = m.update(|s| {
                for id in &stale {
                    // Heard from since the snapshot: not down.
                    if m.last_seen(id).is_some_and(|t| t.elapsed() < hb.timeout()) {
                        continue;
                    }
                    tracing::warn!(node = id, "missed {} heartbeats: node down", hb.misses);
                    orchestrator::node_down(s, id);
                }
                Ok(())
            });
            match r {
                Ok(()) if failures > 0 => {
                    tracing::info!("marking nodes down: the store takes writes again");
                    failures = 0;
                }
                Ok(()) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = store_retry(failures, hb.timeout());
                    tracing::warn!(
                        "marking nodes down failed {failures} times in a row: {e}; again in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
            continue;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

/// The pause before the liveness loop writes again after `failures` refused writes: 100 ms,
/// doubling, at most `cap` (the heartbeat timeout, past which a retry is overdue anyway).
fn store_retry(failures: u32, cap: std::time::Duration) -> std::time::Duration {
    let first = std::time::Duration::from_millis(100);
    let doublings = failures.saturating_sub(1).min(16);
    (first * 2u32.pow(doublings)).min(cap)
}

#[cfg(test)]
mod liveness_tests {
    use std::time::Duration;

    use super::store_retry;

    #[test]
    fn store_retries_back_off_to_the_cap() {
        let cap = Duration::from_secs(3);
        let ms = |n| store_retry(n, cap).as_millis();
        assert_eq!(
            (1..=7).map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 3000, 3000]
        );
        assert_eq!(ms(u32::MAX), 3000);
        assert_eq!(store_retry(1, Duration::from_millis(50)).as_millis(), 50);
    }
}
