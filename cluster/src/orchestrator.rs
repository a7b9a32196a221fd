//! Turning services into tasks: the replicated orchestrator, the spread scheduler and restart
//! back-off. These run inside store transactions, so a service and its tasks always change
//! together.

use std::collections::HashMap;

use chrono::Utc;

use crate::ids::new_id;
use crate::ipam::{self, IpamError};
use crate::model::{Attachment, NodeState, Service, Task, TaskState, TaskStatus};
use crate::store::State;

/// Tasks kept per slot, current one included (Swarm's task history retention limit).
pub const HISTORY_PER_SLOT: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("no node is ready to run tasks: is the cluster up? (swarmkit node ls)")]
    NoNodes,
    #[error(
        "no ready node satisfies the placement constraints {0}: check them against swarmkit node ls"
    )]
    Unsatisfiable(String),
    #[error(
        "a port published with mode=host allows one replica per node, and every eligible node runs one: add nodes or lower --replicas"
    )]
    HostPortsFull,
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

fn is_active(t: &Task) -> bool {
    t.desired == TaskState::Running
}

/// Spread like Swarm: the node with the fewest tasks of this service, then the fewest tasks
/// overall, then by hostname so placement is reproducible.
/// A placement constraint as docker writes it: `node.hostname==node1`, `node.id!=...`,
/// `node.role==manager`.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    field: String,
    equal: bool,
    value: String,
}

impl std::str::FromStr for Constraint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (field, equal, value) = if let Some((f, v)) = s.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = s.split_once("==") {
            (f, true, v)
        } else {
            return Err(format!(
                "invalid constraint {s:?}: write FIELD==VALUE or FIELD!=VALUE, e.g. node.hostname!=node3"
            ));
        };
        let field = field.trim();
        if !matches!(field, "node.hostname" | "node.id" | "node.role") {
            return Err(format!(
                "unsupported constraint field {field:?} in {s:?}: use node.hostname, node.id or node.role"
            ));
        }
        Ok(Constraint {
            field: field.to_string(),
            equal,
            value: value.trim().to_string(),
        })
    }
}

impl Constraint {
    fn admits(&self, n: &crate::model::Node) -> bool {
        let actual = match self.field.as_str() {
            "node.hostname" => n.hostname.clone(),
            "node.id" => n.id.clone(),
            _ => if n.leader { "manager" } else { "worker" }.to_string(),
        };
        (actual == self.value) == self.equal
    }
}

pub fn constraints_of(spec: &bollard::models::ServiceSpec) -> Result<Vec<Constraint>, String> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| c.parse())
        .collect()
}

pub fn pick_node(state: &State, service_id: &str) -> Result<String, ScheduleError> {
    let constraints = state
        .services
        .get(service_id)
        .map(|s| constraints_of(&s.spec).unwrap_or_default())
        .unwrap_or_default();
    let mut load: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in state.tasks.values().filter(|t| is_active(t)) {
        let e = load.entry(t.node_id.as_str()).or_default();
        e.1 += 1;
        if t.service_id == service_id {
            e.0 += 1;
        }
    }
    let ready: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    // A host-mode port exists once per node: at most one replica of such a service per node.
    let host_mode = state.services.get(service_id).is_some_and(|s| {
        s.ports
            .iter()
            .any(|p| p.mode == crate::model::PublishMode::Host)
    });
    let busy = |node: &str| host_mode && load.get(node).is_some_and(|(mine, _)| *mine > 0);
    if ready.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    ready
        .into_iter()
        .filter(|n| constraints.iter().all(|c| c.admits(n)) && !busy(&n.id))
        .min_by_key(|n| {
            let (mine, all) = load.get(n.id.as_str()).copied().unwrap_or_default();
            (mine, all, n.hostname.clone())
        })
        .map(|n| n.id.clone())
        .ok_or_else(|| {
            if host_mode {
                return ScheduleError::HostPortsFull;
            }
            ScheduleError::Unsatisfiable(
                constraints
                    .iter()
                    .map(|c| {
                        format!(
                            "{}{}{}",
                            c.field,
                            if c.equal { "==" } else { "!=" },
                            c.value
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

fn restart_delay(state: &State, service_id: &str, slot: u64) -> Option<chrono::Duration> {
    // Back off only for tasks that keep failing: 0 for the first failure, then doubling.
    let recent_failures = state
        .tasks
        .values()
        .filter(|t| t.service_id == service_id && t.slot == slot)
        .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
        .filter(|t| Utc::now() - t.status.timestamp < chrono::Duration::seconds(30))
        .count() as u32;
    match recent_failures {
        0 | 1 => None,
        n => Some(chrono::Duration::milliseconds(
            (100i64 << (n - 2).min(6)).min(5000),
        )),
    }
}

fn new_task(state: &mut State, service: &Service, slot: u64) -> Result<Task, ScheduleError> {
    let node_id = pick_node(state, &service.id)?;
    let mut attachments = Vec::new();
    // One attachment per network, so allocations within a task never collide; earlier tasks
    // of this transaction are already in `state`.
    for net in service.network_ids() {
        let addr = ipam::allocate_address(state, &net)?;
        attachments.push(Attachment {
            network_id: net,
            addr,
        });
    }
    let now = Utc::now();
    Ok(Task {
        id: new_id(),
        service_id: service.id.clone(),
        slot,
        node_id,
        created: now,
        updated: now,
        version: 0,
        desired: TaskState::Running,
        status: status(TaskState::Assigned, "scheduler assigned task to node"),
        attachments,
        spec_generation: service.spec_generation,
        start_after: restart_delay(state, &service.id, slot).map(|d| now + d),
        drain_version: None,
        running_version: None,
    })
}

pub fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state,
        timestamp: Utc::now(),
        message: message.to_string(),
        err: None,
        pid: None,
        exit_code: None,
    }
}

/// Takes a task out of service: out of every load balancer now, stopped once every node has
/// applied that (see `Task::drain_version`).
pub fn shut_down(state: &mut State, mut task: Task) {
    if task.desired != TaskState::Running {
        return;
    }
    task.desired = TaskState::Shutdown;
    task.drain_version = Some(state.version);
    task.updated = Utc::now();
    if !task.status.state.is_terminal() && task.status.state < TaskState::Starting {
        // Never started: nothing to drain.
        task.status = status(TaskState::Shutdown, "shutdown before start");
    }
    state.put_task(task);
}

/// Makes the service's tasks match its spec: one running task per slot 1..=replicas, tasks of
/// an older spec generation replaced, extra slots shut down.
pub fn reconcile(state: &mut State, service_id: &str) -> Result<(), ScheduleError> {
    let Some(service) = state.services.get(service_id).cloned() else {
        return Ok(());
    };
    let replicas = service.replicas();
    let active: Vec<Task> = state
        .tasks
        .values()
        .filter(|t| t.service_id == service_id && is_active(t))
        .cloned()
        .collect();
    let mut filled = std::collections::BTreeSet::new();
    for t in active {
        if t.slot > replicas
            || t.spec_generation != service.spec_generation
            || !filled.insert(t.slot)
        {
            shut_down(state, t);
        }
    }
    for slot in 1..=replicas {
        if !filled.contains(&slot) {
            let task = new_task(state, &service, slot)?;
            state.put_task(task);
        }
    }
    prune_history(state, service_id);
    Ok(())
}

/// Deletes the oldest finished tasks beyond the per-slot history limit.
pub fn prune_history(state: &mut State, service_id: &str) {
    let mut by_slot: HashMap<u64, Vec<(chrono::DateTime<Utc>, String, bool)>> = HashMap::new();
    for t in state.tasks.values().filter(|t| t.service_id == service_id) {
        let finished = t.desired != TaskState::Running && t.status.state.is_terminal();
        by_slot
            .entry(t.slot)
            .or_default()
            .push((t.created, t.id.clone(), finished));
    }
    for (_, mut tasks) in by_slot {
        if tasks.len() <= HISTORY_PER_SLOT {
            continue;
        }
        tasks.sort();
        let excess = tasks.len() - HISTORY_PER_SLOT;
        for (_, id, finished) in tasks.into_iter().filter(|t| t.2).take(excess) {
            debug_assert!(finished);
            state.remove_task(&id);
        }
    }
}
