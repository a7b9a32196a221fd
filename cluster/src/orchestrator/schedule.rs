//! Where a new task goes: Swarm's spread over the ready, active nodes that satisfy the
//! service's placement constraints and have its reservations unreserved, one replica per node
//! for host-mode ports; and for a global service, which nodes hold one of its tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ipam::IpamError;
use crate::model::{
    Availability, Node, NodeResources, NodeState, PublishMode, Service, Task, TaskState,
};
use crate::store::State;

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
    /// Nodes admit the task but none has its reservations free: it waits, pending, as in
    /// docker (`service ps` shows this as its error).
    #[error("no suitable node ({})", explain(*.unsatisfied, *.short))]
    InsufficientResources {
        /// Nodes whose constraints refuse it.
        unsatisfied: usize,
        /// Nodes that admit it without room for its reservations.
        short: usize,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// docker's wording of why no node takes a task, filter by filter.
fn explain(unsatisfied: usize, short: usize) -> String {
    let nodes = |n: usize| format!("{n} node{}", if n == 1 { "" } else { "s" });
    let mut why = Vec::new();
    if unsatisfied > 0 {
        why.push(format!(
            "scheduling constraints not satisfied on {}",
            nodes(unsatisfied)
        ));
    }
    if short > 0 {
        why.push(format!("insufficient resources on {}", nodes(short)));
    }
    why.join("; ")
}

/// What each task of a service reserves on its node (`--reserve-cpu`, `--reserve-memory`).
pub fn reservation(spec: &bollard::models::ServiceSpec) -> NodeResources {
    let r = spec
        .task_template
        .as_ref()
        .and_then(|t| t.resources.as_ref())
        .and_then(|r| r.reservations.as_ref());
    let positive = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(0) as u64;
    NodeResources {
        nano_cpus: positive(r.and_then(|r| r.nano_cpus)),
        memory_bytes: positive(r.and_then(|r| r.memory_bytes)),
    }
}

/// What the active tasks on each node reserve. A task counts with its service's current
/// spec: during an update that raises a reservation its predecessors count at the new one.
fn reserved(state: &State) -> HashMap<&str, NodeResources> {
    let mut per_service: HashMap<&str, NodeResources> = HashMap::new();
    let mut out: HashMap<&str, NodeResources> = HashMap::new();
    for t in state.tasks.values().filter(|t| is_active(t)) {
        let r = *per_service.entry(t.service_id.as_str()).or_insert_with(|| {
            state
                .services
                .get(&t.service_id)
                .map(|s| reservation(&s.spec))
                .unwrap_or_default()
        });
        let e = out.entry(t.node_id.as_str()).or_default();
        e.nano_cpus += r.nano_cpus;
        e.memory_bytes += r.memory_bytes;
    }
    out
}

/// Whether `wanted` fits in what `n` has left once `taken` is reserved. A task reserving
/// nothing fits anywhere.
fn fits(n: &Node, taken: NodeResources, wanted: NodeResources) -> bool {
    let room = |capacity: u64, taken: u64, wanted: u64| {
        wanted == 0 || capacity.saturating_sub(taken) >= wanted
    };
    room(n.resources.nano_cpus, taken.nano_cpus, wanted.nano_cpus)
        && room(
            n.resources.memory_bytes,
            taken.memory_bytes,
            wanted.memory_bytes,
        )
}

/// Whether node `n` has room for one more task of `service` (a global service's node).
pub fn has_room(state: &State, n: &Node, service: &Service) -> bool {
    let wanted = reservation(&service.spec);
    if wanted == NodeResources::default() {
        return true;
    }
    let taken = reserved(state)
        .get(n.id.as_str())
        .copied()
        .unwrap_or_default();
    fits(n, taken, wanted)
}

/// Whether a task counts against its node's load (and its slot): it is meant to run.
pub fn is_active(t: &Task) -> bool {
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
    fn admits(&self, n: &Node) -> bool {
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

/// Whether a node takes new tasks of a service with these constraints.
pub fn placeable(n: &Node, constraints: &[Constraint]) -> bool {
    n.availability == Availability::Active && may_keep(n, constraints)
}

/// Whether a node keeps the task a global service runs there: it is ready, not draining (a
/// paused node keeps its tasks and takes no new ones) and still satisfies the constraints.
fn may_keep(n: &Node, constraints: &[Constraint]) -> bool {
    n.state == NodeState::Ready
        && n.availability != Availability::Drain
        && constraints.iter().all(|c| c.admits(n))
}

/// The slots of a global service, each standing for a node that may run one of its tasks:
/// the number its tasks there already have, or the lowest free one for a node new to it.
/// Keying a node by a slot lets restarts, history and rolling updates treat a global
/// service's nodes as they treat replicas; the API shows these tasks with docker's slot 0.
pub fn homes(state: &State, service: &Service) -> BTreeMap<u64, String> {
    let constraints = constraints_of(&service.spec).unwrap_or_default();
    let mut slot_of: HashMap<&str, u64> = HashMap::new();
    for t in state.tasks_of(&service.id) {
        slot_of.insert(t.node_id.as_str(), t.slot);
    }
    let taken: BTreeSet<u64> = slot_of.values().copied().collect();
    let mut free = (1..).filter(|n| !taken.contains(n));
    let mut nodes: Vec<&Node> = state
        .nodes
        .values()
        .filter(|n| may_keep(n, &constraints))
        .collect();
    nodes.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
    nodes
        .into_iter()
        .map(|n| {
            let slot = match slot_of.get(n.id.as_str()) {
                Some(s) => *s,
                None => free.next().unwrap_or(u64::MAX),
            };
            (slot, n.id.clone())
        })
        .collect()
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
/// overall, then by hostname so placement is reproducible. Only ready, active nodes with the
/// service's reservations unreserved take new tasks.
pub fn pick_node(state: &State, service_id: &str) -> Result<String, ScheduleError> {
    let service = state.services.get(service_id);
    let constraints = service
        .map(|s| constraints_of(&s.spec).unwrap_or_default())
        .unwrap_or_default();
    let wanted = service.map(|s| reservation(&s.spec)).unwrap_or_default();
    let load = |node: &str| state.active_on(node, service_id);
    let ready: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready && n.availability == Availability::Active)
        .collect();
    // A host-mode port exists once per node: at most one replica of such a service per node.
    let host_mode = service.is_some_and(|s| s.ports.iter().any(|p| p.mode == PublishMode::Host));
    let busy = |node: &str| host_mode && load(node).0 > 0;
    if ready.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    let admitted: Vec<&Node> = ready
        .iter()
        .copied()
        .filter(|n| constraints.iter().all(|c| c.admits(n)))
        .collect();
    let taken = if wanted == NodeResources::default() {
        HashMap::new()
    } else {
        reserved(state)
    };
    let with_room: Vec<&Node> = admitted
        .iter()
        .copied()
        .filter(|n| {
            fits(
                n,
                taken.get(n.id.as_str()).copied().unwrap_or_default(),
                wanted,
            )
        })
        .collect();
    if !admitted.is_empty() && with_room.is_empty() {
        return Err(ScheduleError::InsufficientResources {
            unsatisfied: ready.len() - admitted.len(),
            short: admitted.len(),
        });
    }
    with_room
        .into_iter()
        .filter(|n| !busy(&n.id))
        .min_by_key(|n| {
            let (mine, all) = load(n.id.as_str());
            (mine, all, n.hostname.clone())
        })
        .map(|n| n.id.clone())
        .ok_or_else(|| {
            if host_mode && !admitted.is_empty() {
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
