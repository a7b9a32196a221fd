//! Turning services into tasks: the replicated orchestrator, the spread scheduler, the
//! restart policy and rolling updates. These run inside store transactions, so a service and
//! its tasks always change together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;

use crate::ids::new_id;
use crate::ipam::{self, IpamError};
use crate::model::{
    Attachment, Availability, NodeState, Service, Task, TaskState, TaskStatus, Time, UpdateState,
    UpdateStatus,
};
use crate::policy::{self, Order, RestartCondition};
use crate::store::State;

/// Tasks kept per slot, current one included (Swarm's task history retention limit).
pub const HISTORY_PER_SLOT: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "no node is ready and active to run tasks: is the cluster up, and is a node's availability active? (swarmkit node ls)"
    )]
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

/// A placement constraint as docker writes it: `node.hostname==node1`, `node.id!=...`,
/// `node.role==manager`, `node.labels.zone==east`.
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
        let label = field.strip_prefix("node.labels.");
        if label == Some("") {
            return Err(format!(
                "invalid constraint {s:?}: name the label, e.g. node.labels.zone==east"
            ));
        }
        if label.is_none() && !matches!(field, "node.hostname" | "node.id" | "node.role") {
            return Err(format!(
                "unsupported constraint field {field:?} in {s:?}: use node.hostname, node.id, node.role or node.labels.NAME"
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
            "node.hostname" => Some(n.hostname.clone()),
            "node.id" => Some(n.id.clone()),
            "node.role" => Some(if n.leader { "manager" } else { "worker" }.to_string()),
            // A node without the label fails `==` and passes `!=`, as in Swarm.
            f => f
                .strip_prefix("node.labels.")
                .and_then(|k| n.labels.get(k).cloned()),
        };
        (actual.as_deref() == Some(self.value.as_str())) == self.equal
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

/// Spread like Swarm: the node with the fewest tasks of this service, then the fewest tasks
/// overall, then by hostname so placement is reproducible. Only ready, active nodes take
/// new tasks.
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
        .filter(|n| n.state == NodeState::Ready && n.availability == Availability::Active)
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

/// Back-off for a slot whose tasks keep failing, whatever the policy's delay: 0 for the first
/// failure, then doubling up to 5 s, so a task that cannot start never spins.
fn failure_backoff(state: &State, service_id: &str, slot: u64) -> chrono::Duration {
    let recent_failures = state
        .tasks
        .values()
        .filter(|t| t.service_id == service_id && t.slot == slot)
        .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
        .filter(|t| Utc::now() - t.status.timestamp < chrono::Duration::seconds(30))
        .count() as u32;
    match recent_failures {
        0 | 1 => chrono::Duration::zero(),
        n => chrono::Duration::milliseconds((100i64 << (n - 2).min(6)).min(5000)),
    }
}

/// When (and whether) a slot with no task gets a new one, from the slot's last task and the
/// service's restart policy: `Some((restarts, start_after))`, or `None` to leave it empty.
fn refill(state: &State, service: &Service, slot: u64, now: Time) -> Option<(u64, Option<Time>)> {
    let last = state
        .tasks
        .values()
        .filter(|t| t.service_id == service.id && t.slot == slot)
        .max_by_key(|t| t.created);
    let Some(last) = last else {
        return Some((0, None));
    };
    // Ended on its own (not shut down by us, nor lost with its node): the policy decides.
    let exited = last.drain_version.is_none()
        && matches!(
            last.status.state,
            TaskState::Complete | TaskState::Failed | TaskState::Rejected
        );
    if !exited || last.spec_generation != service.spec_generation {
        return Some((0, None));
    }
    let p = policy::restart_policy(&service.spec);
    let wanted = match p.condition {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => last.status.state != TaskState::Complete,
        RestartCondition::None => false,
    };
    if !wanted || (p.max_attempts > 0 && attempts(state, service, last, &p, now) >= p.max_attempts)
    {
        return None;
    }
    let delay = chrono::Duration::from_std(p.delay)
        .unwrap_or(chrono::Duration::MAX)
        .max(failure_backoff(state, &service.id, slot));
    let at = (delay > chrono::Duration::zero()).then(|| now + delay);
    Some((last.restarts + 1, at))
}

/// Restarts of the slot that count against the policy's maximum: all of them under the
/// current spec, or with a window, those made within it.
fn attempts(
    state: &State,
    service: &Service,
    last: &Task,
    p: &policy::RestartPolicy,
    now: Time,
) -> u64 {
    if p.window.is_zero() {
        return last.restarts;
    }
    let since = chrono::Duration::from_std(p.window)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .unwrap_or(Time::MIN_UTC);
    state
        .tasks
        .values()
        .filter(|t| {
            t.service_id == service.id
                && t.slot == last.slot
                && t.spec_generation == service.spec_generation
                && t.restarts > 0
                && t.created > since
        })
        .count() as u64
}

fn new_task(
    state: &mut State,
    service: &Service,
    slot: u64,
    restarts: u64,
    start_after: Option<Time>,
) -> Result<Task, ScheduleError> {
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
        start_after,
        drain_version: None,
        running_version: None,
        restarts,
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

/// Starts the rolling update (or rollback) of a service whose tasks must be replaced.
pub fn begin_update(service: &mut Service, rollback: bool) {
    let (state, message) = if rollback {
        (UpdateState::RollbackStarted, "manually requested rollback")
    } else {
        (UpdateState::Updating, "update in progress")
    };
    service.update_status = Some(UpdateStatus {
        state,
        started: Utc::now(),
        completed: None,
        message: message.to_string(),
        last_slot_done: None,
        slots: BTreeSet::new(),
    });
}

fn updating(service: &Service) -> bool {
    service.update_status.as_ref().is_some_and(|u| {
        matches!(
            u.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        )
    })
}

/// Makes the service's tasks match its spec, with what the API knows: no task counts as
/// routed everywhere yet, so replacements that wait for one are left to `reconcile_at`.
pub fn reconcile(state: &mut State, service_id: &str) -> Result<(), ScheduleError> {
    reconcile_at(state, service_id, 0, Utc::now()).map(|_| ())
}

/// Like `reconcile`, but a failure to place a task leaves the state as it was (the caller's
/// other changes stand).
pub fn reconcile_or_keep(
    state: &mut State,
    service_id: &str,
    min_ack: u64,
    now: Time,
) -> Option<Time> {
    let before = state.clone();
    match reconcile_at(state, service_id, min_ack, now) {
        Ok(wake) => wake,
        Err(e) => {
            tracing::warn!("reconciling service {service_id}: {e}");
            *state = before;
            None
        }
    }
}

/// Whether a task is reachable through every node's load balancers: running, and every ready
/// node has applied the version that added it.
fn routed(t: &Task, min_ack: u64) -> bool {
    t.status.state == TaskState::Running && t.running_version.is_some_and(|v| v <= min_ack)
}

/// Makes the service's tasks match its spec: one running task per slot 1..=replicas, extra
/// slots shut down, exited tasks replaced under the restart policy, tasks of an older spec
/// replaced under the update policy, tasks on draining nodes moved. A task that serves is
/// replaced start-first (its successor routed everywhere before it leaves) unless the update
/// order is stop-first. `min_ack` is the plan version every ready node has applied. Returns
/// when it must run again on its own (an update delay ending), if ever. Idempotent: a second
/// run with nothing changed writes nothing.
pub fn reconcile_at(
    state: &mut State,
    service_id: &str,
    min_ack: u64,
    now: Time,
) -> Result<Option<Time>, ScheduleError> {
    let Some(mut service) = state.services.get(service_id).cloned() else {
        return Ok(None);
    };
    let replicas = service.replicas();
    let rollback = service
        .update_status
        .as_ref()
        .is_some_and(|u| u.state == UpdateState::RollbackStarted);
    let update = policy::update_policy(&service.spec, rollback);
    let mut status = service.update_status.clone();
    let mut by_slot: BTreeMap<u64, Vec<Task>> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| t.service_id == service_id) {
        by_slot.entry(t.slot).or_default().push(t.clone());
    }
    let drained = |state: &State, node: &str| {
        state
            .nodes
            .get(node)
            .is_some_and(|n| n.availability == Availability::Drain)
    };

    for t in by_slot.range(replicas + 1..).flat_map(|(_, ts)| ts) {
        shut_down(state, t.clone());
    }
    // Slots whose tasks are all stale and that wait for their turn in the rolling update.
    let mut waiting = Vec::new();
    let mut stale_left = false;
    for slot in 1..=replicas {
        let mut tasks = by_slot.remove(&slot).unwrap_or_default();
        tasks.sort_by_key(|t| t.created);
        let active: Vec<&Task> = tasks.iter().filter(|t| is_active(t)).collect();
        let keep = active
            .iter()
            .rev()
            .find(|t| t.spec_generation == service.spec_generation && !drained(state, &t.node_id))
            .copied();
        let stale: Vec<&Task> = active
            .iter()
            .filter(|t| Some(t.id.as_str()) != keep.map(|k| k.id.as_str()))
            .copied()
            .collect();
        let outdated = stale
            .iter()
            .any(|t| t.spec_generation != service.spec_generation);
        stale_left |= outdated;
        match (keep, stale.is_empty()) {
            (Some(k), true) => {
                if routed(k, min_ack)
                    && let Some(u) = status.as_mut()
                    && u.slots.remove(&slot)
                {
                    u.last_slot_done = Some(now);
                }
            }
            (Some(k), false) => {
                // Start-first: the old task leaves once its successor is routed everywhere
                // (or at once, if it serves nobody anyway).
                let old_serves = stale.iter().any(|t| t.status.state == TaskState::Running);
                if routed(k, min_ack) || !old_serves {
                    for t in stale {
                        shut_down(state, t.clone());
                    }
                }
            }
            (None, false) if outdated => {
                waiting.push((slot, stale.into_iter().cloned().collect::<Vec<Task>>()))
            }
            (None, false) => {
                // Only its node is draining: a successor elsewhere first, whatever the order.
                let t = new_task(state, &service, slot, 0, None)?;
                state.put_task(t);
            }
            (None, true) => {
                let held = update.order == Order::StopFirst
                    && status.as_ref().is_some_and(|u| u.slots.contains(&slot))
                    && tasks.iter().any(|t| {
                        t.spec_generation != service.spec_generation
                            && !t.status.state.is_terminal()
                            && t.status.state >= TaskState::Starting
                            && state
                                .nodes
                                .get(&t.node_id)
                                .is_some_and(|n| n.state == NodeState::Ready)
                    });
                if held {
                    // Stop-first: the successor starts once its predecessor has stopped.
                    continue;
                }
                if let Some((restarts, at)) = refill(state, &service, slot, now) {
                    let t = new_task(state, &service, slot, restarts, at)?;
                    state.put_task(t);
                }
            }
        }
    }

    let mut wake = None;
    if let Some(u) = status.as_mut().filter(|_| updating(&service)) {
        u.slots.retain(|s| *s <= replicas);
        let room = match update.parallelism {
            0 => usize::MAX,
            p => (p as usize).saturating_sub(u.slots.len()),
        };
        let due = u
            .last_slot_done
            .map(|t| t + chrono::Duration::from_std(update.delay).unwrap_or(chrono::Duration::MAX));
        if due.is_some_and(|d| d > now) {
            wake = due.filter(|_| !waiting.is_empty());
        } else {
            let mut room = room;
            for (slot, stale) in waiting {
                // A slot already in flight whose successor exited goes again, under the
                // restart policy; a new slot needs room.
                let again = u.slots.contains(&slot);
                if !again && room == 0 {
                    continue;
                }
                if !again {
                    room -= 1;
                    u.slots.insert(slot);
                }
                match update.order {
                    Order::StartFirst => {
                        let (restarts, at) = if again {
                            match refill(state, &service, slot, now) {
                                Some(r) => r,
                                None => continue,
                            }
                        } else {
                            (0, None)
                        };
                        let t = new_task(state, &service, slot, restarts, at)?;
                        state.put_task(t);
                    }
                    Order::StopFirst => {
                        for t in stale {
                            shut_down(state, t);
                        }
                    }
                }
            }
        }
        if !stale_left && u.slots.is_empty() {
            let rolled_back = u.state == UpdateState::RollbackStarted;
            u.state = if rolled_back {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            u.completed = Some(now);
            u.message = if rolled_back {
                "rollback completed"
            } else {
                "update completed"
            }
            .to_string();
        }
    } else {
        // Not updating (say, the update finished and a stale task was left on a node that
        // came back): replace them all at once.
        for (slot, stale) in waiting {
            let _ = stale;
            let t = new_task(state, &service, slot, 0, None)?;
            state.put_task(t);
        }
    }
    if status != service.update_status {
        service.update_status = status;
        state.put_service(service);
    }
    prune_history(state, service_id);
    Ok(wake)
}

/// Services whose tasks are being replaced or moved, which `reconcile_at` must see again as
/// tasks become routed and acks move: one pass over the tasks.
pub fn in_transition(state: &State) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = state
        .services
        .values()
        .filter(|s| updating(s))
        .map(|s| s.id.clone())
        .collect();
    let mut seen: HashMap<(&str, u64), usize> = HashMap::new();
    for t in state.tasks.values().filter(|t| is_active(t)) {
        let n = seen.entry((t.service_id.as_str(), t.slot)).or_default();
        *n += 1;
        let drained = state
            .nodes
            .get(&t.node_id)
            .is_some_and(|n| n.availability == Availability::Drain);
        if *n > 1 || drained {
            out.insert(t.service_id.clone());
        }
    }
    out
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

/// A node is down: its tasks end (Orphaned, as Swarm shows tasks of a lost node), which
/// takes their backends and overlay entries off every other node at once, and their
/// services get replacements on live nodes.
pub fn node_down(s: &mut State, id: &str) {
    let Some(mut node) = s.nodes.get(id).cloned() else {
        return;
    };
    if node.state == NodeState::Down {
        return;
    }
    let now = Utc::now();
    node.state = NodeState::Down;
    node.updated = now;
    let hostname = node.hostname.clone();
    s.put_node(node);
    let lost: Vec<_> = s
        .tasks
        .values()
        .filter(|t| t.node_id == id && !t.status.state.is_terminal())
        .cloned()
        .collect();
    let mut services = BTreeSet::new();
    for mut t in lost {
        if t.desired == TaskState::Running {
            services.insert(t.service_id.clone());
        }
        t.desired = TaskState::Shutdown;
        t.status = TaskStatus {
            state: TaskState::Orphaned,
            timestamp: now,
            message: "node is down".into(),
            err: Some(format!("node {hostname} is down")),
            pid: t.status.pid,
            exit_code: None,
        };
        t.updated = now;
        s.put_task(t);
    }
    for svc in services {
        // No live node left to place on is no reason to keep the dead node Ready.
        if let Err(e) = reconcile(s, &svc) {
            tracing::warn!("replacing the tasks of service {svc} lost with node {hostname}: {e}");
        }
    }
}
