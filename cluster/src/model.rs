//! The manager's records: desired state written by the API, observed state reported by agents.
//! Bollard's models are the wire shapes; these are what the store keeps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bollard::models::ServiceSpec;
use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub type Time = DateTime<Utc>;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub created: Time,
    pub version: u64,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vni: u32,
    pub attachable: bool,
    pub ingress: bool,
    /// `--internal`: its tasks get no leg on the node's gateway bridge, so nothing outside
    /// the cluster's overlays (unless another of their networks is not internal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// Data-path keys of an encrypted network (`--opt encrypted`); stays in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<crate::keys::Keyring>,
}

impl Network {
    pub fn encrypted(&self) -> bool {
        self.options.contains_key(ENCRYPTED_OPTION)
    }
}

/// A secret or a config: a named payload, immutable but for its labels. The store keeps its
/// data sealed (see `sealed`); in memory and on the wire to the nodes that need it, it is
/// plain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Payload {
    pub id: String,
    pub name: String,
    pub created: Time,
    pub updated: Time,
    pub version: u64,
    pub labels: BTreeMap<String, String>,
    /// Never written as is: the store writes it sealed, beside these fields.
    #[serde(skip)]
    pub data: std::sync::Arc<Vec<u8>>,
}

/// docker's network option asking for IPsec on the data path.
pub const ENCRYPTED_OPTION: &str = "encrypted";

/// The dataplane's protocol type is the one the records keep.
pub use netcore::lb::Protocol;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    Ingress,
    Host,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub protocol: Protocol,
    pub target: u16,
    pub published: u16,
    pub mode: PublishMode,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vip {
    pub network_id: String,
    pub addr: Ipv4Net,
    /// Firewall mark keying this VIP's virtual service in IPVS; stable for the VIP's life.
    pub fwmark: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub created: Time,
    pub updated: Time,
    pub version: u64,
    /// Exactly what the client sent (docker reads it back on update).
    pub spec: ServiceSpec,
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped when a change to the spec requires replacing tasks. A job's tasks run again
    /// after every update, so for a job this is bumped by each one: its iteration (Swarm's
    /// `JobStatus.JobIteration`).
    pub spec_generation: u64,
    pub endpoint_mode: EndpointMode,
    pub ports: Vec<Port>,
    /// Networks the tasks join, by ID: ingress first when publishing, then the spec's order.
    pub networks: Vec<String>,
    /// One per network in VIP mode; none in dnsrr mode.
    pub vips: Vec<Vip>,
    /// Progress of the rolling update (or rollback) to the current spec, as docker shows it.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// The last reconcile stopped at its bound of new tasks: slots still wait for theirs,
    /// and the updater passes again (see `orchestrator::TASKS_PER_PASS`).
    #[serde(default)]
    pub filling: bool,
    /// Never written as is: the store writes it sealed, beside these fields.
    #[serde(skip)]
    pub registry_auth: RegistryAuth,
}

/// The registry credentials sent with a service (docker's `--with-registry-auth`), as the
/// client sent them (`X-Registry-Auth`): for the nodes that pull its image, in the plans of
/// its tasks only. Never in the API's answers, as docker strips them too.
#[derive(Clone, Default, PartialEq)]
pub struct RegistryAuth {
    /// What its current spec is pulled with.
    pub current: Option<String>,
    /// What its previous spec was, which a rollback takes back.
    pub previous: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |a: &Option<String>| if a.is_some() { "Some(..)" } else { "None" };
        write!(
            f,
            "RegistryAuth {{ current: {}, previous: {} }}",
            shown(&self.current),
            shown(&self.previous)
        )
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Completed,
    RollbackStarted,
    RollbackCompleted,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started: Time,
    pub completed: Option<Time>,
    pub message: String,
    /// When a slot last finished updating: the next batch waits `UpdateConfig.Delay` from here.
    pub last_slot_done: Option<Time>,
    /// Slots being replaced now (at most `UpdateConfig.Parallelism` of them).
    #[serde(default)]
    pub slots: std::collections::BTreeSet<u64>,
}

/// How a service turns into tasks (docker's `--mode`), with the API's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceMode {
    /// `replicas` tasks kept running, spread over the eligible nodes.
    Replicated { replicas: u64 },
    /// One task kept running on every eligible node.
    Global,
    /// `total` tasks run to completion, at most `max_concurrent` at a time.
    ReplicatedJob { max_concurrent: u64, total: u64 },
    /// One task run to completion on every eligible node.
    GlobalJob,
}

impl ServiceMode {
    /// One task per eligible node rather than numbered replicas.
    pub fn is_global(self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }

    /// Tasks run to completion and a completed one is not replaced.
    pub fn is_job(self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }

    /// The mode as `docker service ls` names it (and its `mode` filter matches).
    pub fn name(self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// Reads a spec's mode as the daemon does: no mode is one replica; a replicated job
    /// without `MaxConcurrent` runs one at a time, and without `TotalCompletions` runs
    /// `MaxConcurrent` tasks in all.
    pub fn of(spec: &ServiceSpec) -> ServiceMode {
        let mode = spec.mode.clone().unwrap_or_default();
        let count = |v: Option<i64>| v.map(|v| v.max(0) as u64);
        if mode.global.is_some() {
            ServiceMode::Global
        } else if mode.global_job.is_some() {
            ServiceMode::GlobalJob
        } else if let Some(job) = mode.replicated_job {
            let max_concurrent = count(job.max_concurrent).unwrap_or(1);
            ServiceMode::ReplicatedJob {
                max_concurrent,
                total: count(job.total_completions).unwrap_or(max_concurrent),
            }
        } else {
            ServiceMode::Replicated {
                replicas: count(mode.replicated.and_then(|r| r.replicas)).unwrap_or(1),
            }
        }
    }
}

impl Service {
    pub fn mode(&self) -> ServiceMode {
        ServiceMode::of(&self.spec)
    }

    pub fn image(&self) -> String {
        self.spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    }

    /// Networks the service's tasks join, by ID, in spec order (ingress first when publishing).
    pub fn network_ids(&self) -> Vec<String> {
        self.networks.clone()
    }

    /// The slot Swarm shows for one of its tasks: a replica's number; 0 in a global mode,
    /// whose tasks docker names by node (the store's slot there stands for the node, see
    /// `orchestrator::homes`); and a replicated job's counted from 0, as Swarm's are and
    /// docker's job progress reads them.
    pub fn docker_slot(&self, t: &Task) -> u64 {
        match self.mode() {
            mode if mode.is_global() => 0,
            ServiceMode::ReplicatedJob { .. } => t.slot.saturating_sub(1),
            _ => t.slot,
        }
    }

    /// docker's name for one of its tasks: `service.slot`, or `service.node-id` for slot 0
    /// (a global mode's, and a replicated job's first, as docker names them).
    pub fn docker_task_name(&self, t: &Task) -> String {
        match self.docker_slot(t) {
            0 => format!("{}.{}", self.name, t.node_id),
            slot => format!("{}.{slot}", self.name),
        }
    }

    /// docker's name for the container of one of its tasks: `service.slot.task-id`.
    pub fn container_name(&self, t: &Task) -> String {
        format!("{}.{}", self.docker_task_name(t), t.id)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Orphaned,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub state: TaskState,
    pub timestamp: Time,
    pub message: String,
    pub err: Option<String>,
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub network_id: String,
    pub addr: Ipv4Net,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    /// Which of the service's places the task fills: a replica's number, or in a global mode
    /// a number standing for one node (`orchestrator::homes`); the API shows docker's 0 there.
    pub slot: u64,
    pub node_id: String,
    pub created: Time,
    pub updated: Time,
    pub version: u64,
    /// `Running` while the task should run; `Shutdown` once it should stop.
    pub desired: TaskState,
    pub status: TaskStatus,
    pub attachments: Vec<Attachment>,
    pub spec_generation: u64,
    /// Restart back-off: the agent starts the task no earlier than this.
    pub start_after: Option<Time>,
    /// Store version at which the task was taken out of every load balancer. The task keeps
    /// running until every node has applied that version, so no new connection lands on it
    /// while it dies.
    pub drain_version: Option<u64>,
    /// Store version at which the agent reported it running; it counts as running for clients
    /// once every node has applied that version (it is then reachable through the LB).
    pub running_version: Option<u64>,
    /// Restarts of this slot under the current spec that led to this task (the restart
    /// policy's attempt count).
    #[serde(default)]
    pub restarts: u64,
}

impl Task {
    /// What clients see: a task the agent runs counts as running only once every node has
    /// applied the plan that routes traffic to it (`min_ack`), so "converged" means reachable
    /// through the LB.
    pub fn visible_state(&self, min_ack: u64) -> TaskState {
        match (self.status.state, self.running_version) {
            (TaskState::Running, Some(v)) if v > min_ack => TaskState::Starting,
            (state, _) => state,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Down,
}

/// docker's node availability: where the scheduler may place tasks.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere, and it takes no new ones.
    Drain,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub addr: Ipv4Addr,
    pub created: Time,
    pub updated: Time,
    pub version: u64,
    pub state: NodeState,
    pub leader: bool,
    pub lb_driver: String,
    /// Where the routing mesh balances on this node: "sandbox" or "node".
    #[serde(default)]
    pub mesh: String,
    pub kernel: String,
    /// This node's address on the ingress network (its ingress sandbox).
    pub ingress_addr: Ipv4Net,
    #[serde(default)]
    pub availability: Availability,
    /// `node update --label-add`: what `--constraint node.labels.K==V` matches.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the node's kernel lacks for encrypted overlays, as its agent probed it (empty: it
    /// can encrypt; None: not probed).
    #[serde(default)]
    pub ipsec_missing: Option<Vec<String>>,
    /// The serial of the one certificate this node may connect with (lowercase hex): a
    /// renewal replaces it, `node rm` takes it with the node, so an older one is refused.
    #[serde(default)]
    pub cert_serial: String,
    /// What the node joined as (docker's node role).
    #[serde(default = "worker")]
    pub role: crate::pki::Role,
    /// Which root issued its certificate (`Trust::root_id`): a CA rotation is done when every
    /// node's is the new root's.
    #[serde(default)]
    pub cert_root: String,
    /// What the node has to run tasks on, as its agent reported it when it registered; what
    /// `--reserve-cpu` and `--reserve-memory` are placed against.
    #[serde(default)]
    pub resources: NodeResources,
}

/// A node's capacity, in docker's units (`Description.Resources`). Zero: not reported, so
/// nothing can be reserved there.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeResources {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

impl NodeResources {
    /// This machine's: the CPUs this process may run on and the memory the kernel manages.
    pub fn of_this_machine() -> NodeResources {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        NodeResources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: memory_kib * 1024,
        }
    }
}

fn worker() -> crate::pki::Role {
    crate::pki::Role::Worker
}

/// Cluster-wide facts fixed at creation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub cluster_id: String,
    pub cluster_name: String,
    pub created: Option<Time>,
    /// IDs of docker's local default networks (bridge, docker_gwbridge, host, none).
    pub local_networks: BTreeMap<String, String>,
    pub next_fwmark: u32,
    /// UDP port of every network's VXLAN traffic (`cluster up --data-path-port`); 0: 4789.
    #[serde(default)]
    pub data_path_port: u16,
    /// How often encrypted networks get a new key (`cluster up --key-rotation`); 0: 12 h.
    #[serde(default)]
    pub key_rotation_secs: u64,
    /// Agents' heartbeat period in ms (`cluster up --heartbeat-period`); 0: the default.
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// Heartbeats missed before a node is down (`cluster up --heartbeat-misses`); 0: default.
    #[serde(default)]
    pub heartbeat_misses: u64,
    /// The root CA and join tokens, made when the manager first starts.
    #[serde(default)]
    pub trust: Option<crate::pki::trust::Trust>,
    /// Node certificates' lifetime in seconds (`cluster up --cert-expiry`); 0: 90 days.
    #[serde(default)]
    pub cert_expiry_secs: u64,
    /// The loopback port of the manager's TLS listener for remote clients (`cluster env
    /// --tls`), chosen when it first starts and kept so that printed settings stay right.
    #[serde(default)]
    pub client_port: u16,
    /// docker's `Spec.CAConfig.ForceRotate`: a larger value in `swarm update` rotates the root.
    #[serde(default)]
    pub ca_force_rotate: u64,
    /// The swarm object's own version (docker's `Version.Index` of `GET /swarm`), bumped by
    /// each `swarm update`: not the store's, which every task report moves.
    #[serde(default)]
    pub swarm_version: u64,
    /// Hostnames of the nodes whose managers replicate the store (`cluster up --managers`);
    /// empty: one manager, and the first node to register stands for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manager_nodes: Vec<String>,
    /// The highest Raft ID a manager was ever given. A new one gets the next (never a
    /// departed one's), and one at or below it that is no longer a member has left: what it
    /// still sends is refused, so it cannot disturb the managers of now.
    #[serde(default)]
    pub last_manager_id: u64,
}

impl Meta {
    pub fn data_port(&self) -> u16 {
        if self.data_path_port == 0 {
            netcore::overlay::VXLAN_PORT
        } else {
            self.data_path_port
        }
    }

    pub fn cert_expiry(&self) -> std::time::Duration {
        if self.cert_expiry_secs == 0 {
            crate::pki::ca::DEFAULT_CERT_EXPIRY
        } else {
            std::time::Duration::from_secs(self.cert_expiry_secs)
        }
    }

    pub fn key_rotation(&self) -> std::time::Duration {
        if self.key_rotation_secs == 0 {
            crate::keys::DEFAULT_ROTATION
        } else {
            std::time::Duration::from_secs(self.key_rotation_secs)
        }
    }
}
