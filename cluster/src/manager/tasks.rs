//! /tasks: what `service ps` and docker's convergence progress read.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use bollard::models::{
    ContainerStatus, ObjectVersion, Task as ApiTask, TaskSpec, TaskState as ApiState, TaskStatus,
};

use super::error::ApiResult;
use super::extract::Query;
use super::lookup::{Field, Filters, ListQuery, find};
use super::shared::Shared;
use crate::model::{Task, TaskState};
use crate::store::State as StoreState;

fn api_state(s: TaskState) -> ApiState {
    match s {
        TaskState::New => ApiState::NEW,
        TaskState::Pending => ApiState::PENDING,
        TaskState::Assigned => ApiState::ASSIGNED,
        TaskState::Accepted => ApiState::ACCEPTED,
        TaskState::Preparing => ApiState::PREPARING,
        TaskState::Starting => ApiState::STARTING,
        TaskState::Running => ApiState::RUNNING,
        TaskState::Complete => ApiState::COMPLETE,
        TaskState::Shutdown => ApiState::SHUTDOWN,
        TaskState::Failed => ApiState::FAILED,
        TaskState::Rejected => ApiState::REJECTED,
        TaskState::Orphaned => ApiState::ORPHANED,
    }
}

pub fn to_api(s: &StoreState, t: &Task, min_ack: u64) -> serde_json::Value {
    // A task runs the spec of its generation: during an update, older tasks still carry
    // the spec before it (the one store kept), so clients can tell them apart.
    let spec: Option<TaskSpec> = s.services.get(&t.service_id).and_then(|svc| {
        if t.spec_generation != svc.spec_generation
            && let Some(prev) = &svc.previous_spec
        {
            prev.task_template.clone()
        } else {
            svc.spec.task_template.clone()
        }
    });
    let mode = s.services.get(&t.service_id).map(|svc| svc.mode());
    let state = t.visible_state(min_ack);
    // A job's task is meant to complete, and Swarm says so in its desired state, also once
    // it did (the store marks every exited task's desired state Shutdown).
    let job = mode.is_some_and(|m| m.is_job());
    let desired = match t.desired {
        TaskState::Running if job => TaskState::Complete,
        _ if job && t.status.state == TaskState::Complete => TaskState::Complete,
        d => d,
    };
    let task = ApiTask {
        id: Some(t.id.clone()),
        version: Some(ObjectVersion {
            index: Some(t.version),
        }),
        created_at: Some(t.created),
        updated_at: Some(t.updated),
        labels: Some(HashMap::new()),
        spec,
        service_id: Some(t.service_id.clone()),
        slot: Some(api_slot(s, t) as i64),
        node_id: Some(t.node_id.clone()),
        status: Some(TaskStatus {
            timestamp: Some(t.status.timestamp),
            state: Some(api_state(state)),
            message: Some(
                if state == TaskState::Starting && t.status.state == TaskState::Running {
                    "joining the load balancers".into()
                } else {
                    t.status.message.clone()
                },
            ),
            err: t.status.err.clone(),
            container_status: Some(ContainerStatus {
                container_id: Some(t.id.clone()),
                pid: t.status.pid.map(|p| p as i64),
                exit_code: t.status.exit_code,
            }),
            port_status: host_ports(s, t, state),
        }),
        desired_state: Some(api_state(desired)),
        job_iteration: mode.filter(|m| m.is_job()).map(|_| ObjectVersion {
            index: Some(t.spec_generation),
        }),
        ..Default::default()
    };
    let mut v = serde_json::to_value(task).unwrap_or_default();
    // Docker's Task has NetworksAttachments; bollard's model lacks it.
    v["NetworksAttachments"] = t
        .attachments
        .iter()
        .map(|a| {
            let net = s.networks.get(&a.network_id);
            serde_json::json!({
                "Network": {
                    "ID": a.network_id,
                    "Spec": { "Name": net.map(|n| n.name.clone()) },
                },
                "Addresses": [a.addr.to_string()],
            })
        })
        .collect();
    v
}

fn api_slot(s: &StoreState, t: &Task) -> u64 {
    s.services
        .get(&t.service_id)
        .map_or(t.slot, |svc| svc.docker_slot(t))
}

/// Ports a running task publishes in host mode, as docker reports them in `service ps`.
fn host_ports(s: &StoreState, t: &Task, state: TaskState) -> Option<bollard::models::PortStatus> {
    let svc = s.services.get(&t.service_id)?;
    let ports: Vec<_> = svc
        .ports
        .iter()
        .filter(|p| p.mode == crate::model::PublishMode::Host)
        .map(super::services::port_to_api)
        .collect();
    (state == TaskState::Running && !ports.is_empty())
        .then_some(bollard::models::PortStatus { ports: Some(ports) })
}

fn matches(s: &StoreState, t: &Task, filters: &Filters) -> bool {
    let svc = s.services.get(&t.service_id);
    filters.matches(|k| match k {
        "id" => Field::Prefix(t.id.as_str().into()),
        "service" => Field::Test(Box::new(move |v| {
            t.service_id == v || svc.is_some_and(|svc| svc.name == v || svc.id.starts_with(v))
        })),
        "node" => Field::Test(Box::new(move |v| {
            t.node_id == v
                || s.nodes
                    .get(&t.node_id)
                    .is_some_and(|n| n.hostname == v || n.id.starts_with(v))
        })),
        "desired-state" => Field::Exact(t.desired.as_str().into()),
        // docker's progress asks for the tasks of the service's current spec.
        "_up-to-date" => {
            let current = svc.is_some_and(|svc| svc.spec_generation == t.spec_generation);
            Field::Test(Box::new(move |v| (v == "true" || v == "1") == current))
        }
        "name" => Field::Prefix(
            svc.map(|svc| svc.docker_task_name(t))
                .unwrap_or_default()
                .into(),
        ),
        "label" => Field::Labels(svc.and_then(|svc| svc.spec.labels.as_ref())),
        _ => Field::Any,
    })
}

/// docker's CLI adds `_up-to-date` while it shows a service converging; it is accepted and
/// not applied (every task is listed, and the CLI counts by desired and observed state).
const TASK_FILTERS: &[&str] = &[
    "id",
    "name",
    "label",
    "service",
    "node",
    "desired-state",
    "_up-to-date",
];

pub async fn list(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let filters = Filters::parse(q.filters.as_deref(), TASK_FILTERS)?;
    let s = m.store.snapshot();
    let min_ack = m.min_ack(&s);
    // Most clients ask for one service's tasks (docker's progress polls them while a service
    // converges, `service ps` lists them): the services are resolved once, so each of the
    // thousands of other tasks costs one set lookup rather than a full match.
    let services = filters.get("service");
    let of_services: Option<Vec<&str>> = (!services.is_empty()).then(|| {
        s.services
            .values()
            .filter(|svc| {
                services
                    .iter()
                    .any(|v| svc.id == *v || svc.name == *v || svc.id.starts_with(v.as_str()))
            })
            .map(|svc| svc.id.as_str())
            // A removed service's tasks still match its exact ID.
            .chain(services.iter().map(String::as_str))
            .collect()
    });
    let tasks: Vec<&crate::model::Task> = match of_services {
        // Through the store's index: a poll for one service costs its tasks, not all.
        Some(mut ids) => {
            ids.sort_unstable();
            ids.dedup();
            let mut tasks: Vec<_> = ids.iter().flat_map(|id| s.tasks_of(id)).collect();
            tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            tasks
        }
        None => s.tasks.values().collect(),
    };
    Ok(Json(
        tasks
            .into_iter()
            .filter(|t| matches(&s, t, &filters))
            .map(|t| to_api(&s, t, min_ack))
            .collect(),
    ))
}

pub async fn inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = m.store.snapshot();
    let t = find(&s.tasks, &id, |_| "", "task")?;
    Ok(Json(to_api(&s, t, m.min_ack(&s))))
}
