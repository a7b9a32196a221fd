//! The manager <-> agent channel: JSON over HTTP in mutual TLS, on the manager's agent
//! listeners (the underlay's TCP port, `agents.sock` where SSH forwards end). A node joins
//! once with a token and a signing request and gets its certificate; from then on it is who
//! its certificate says: it registers, long-polls what changed in its plan since the version
//! it has, reports what it observed and renews its certificate, never naming itself in a
//! URL. The poll is also the heartbeat: the manager holds it at most one heartbeat period,
//! and a node that has not polled for `misses` periods is down.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::TaskState;
use crate::plan::PlanDelta;

pub const JOIN: &str = "/swarmkit/v1/agent/join";
pub const REGISTER: &str = "/swarmkit/v1/agent/register";
pub const RENEW: &str = "/swarmkit/v1/agent/renew";
pub const PLAN: &str = "/swarmkit/v1/agent/plan";
pub const REPORT: &str = "/swarmkit/v1/agent/report";
pub const LOGS: &str = "/swarmkit/v1/agent/logs";
/// Asked by the agent of a node promoted to manager: what its manager starts from.
pub const MANAGER_JOIN: &str = "/swarmkit/v1/agent/manager";
/// Long-polled by each agent: the `docker exec` sessions started on its node's socket.
pub const EXECS: &str = "/swarmkit/v1/agent/execs";
/// How long the manager holds an agent's poll for exec sessions when there are none.
pub const EXECS_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// An exec session for the agent: the task to run `argv` in, and whether the client sends
/// stdin. The agent attaches to `EXECS/{session}` (an HTTP upgrade to a raw stream) and
/// runs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub session: String,
    pub task_id: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub stdin: bool,
}

/// On an exec session's agent end, after the upgrade: the client's stdin raw towards the
/// agent; towards the manager, docker's multiplexed frames (stream type, three zero bytes,
/// length as u32 big-endian, then the bytes) for stdout (1) and stderr (2), and last a frame
/// of this type carrying the process's exit status (i32 big-endian).
pub const EXEC_EXIT_FRAME: u8 = 0xFF;

/// A frame of the exec stream's format.
pub fn exec_frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A node's first words: the token that lets it join, a signing request for the key it made
/// (which never leaves it), and what it registers as.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub csr_pem: String,
    pub node: RegisterRequest,
}

/// A certificate the manager issued to a node (on joining or renewing), and the root it
/// chains to, which the node trusts from then on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Issued {
    pub node_id: String,
    pub cert_pem: String,
    pub root_pem: String,
    /// `Trust::root_id` of that root: a plan answer naming another one means the CA was
    /// rotated and the node should renew.
    pub root_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub hostname: String,
    pub addr: Ipv4Addr,
    pub lb_driver: netcore::lb::Driver,
    /// Where the routing mesh balances on this node.
    #[serde(default)]
    pub mesh: netcore::ingress::MeshLayout,
    pub kernel: String,
    /// What the node's kernel lacks for encrypted overlays (empty: nothing), from a real
    /// attempt (netcore::xfrm::probe).
    #[serde(default)]
    pub ipsec_missing: Option<Vec<String>>,
    /// Its CPUs and memory, which reservations are placed against (absent from older agents:
    /// nothing can be reserved on the node).
    #[serde(default)]
    pub resources: crate::model::NodeResources,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanResponse {
    /// The plan version the agent has once it applied `delta`: pass it back as `?since=`.
    pub version: u64,
    /// None: nothing changed (the answer to a heartbeat).
    pub delta: Option<PlanDelta>,
    /// How often the manager expects a poll, in milliseconds.
    pub heartbeat_ms: u64,
    /// The cluster's current root (`Trust::root_id`).
    #[serde(default)]
    pub root_id: String,
    /// Where managers replicate: whether this node runs one (docker's promote and demote
    /// set it; a demoted node keeps its manager until the others have let it go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<bool>,
    /// Where managers replicate: every manager's address, for the agent to ask in turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
}

/// What the manager of a node promoted to manager starts from: its Raft ID and address, the
/// store's sealing key (rows replicate sealed) and the store as the leader had it, applied
/// log position included, so that it serves with the cluster's identity from its first start
/// and catches up from there through the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManagerJoin {
    pub id: u64,
    pub member: crate::raft::Member,
    /// The sealing key file's bytes, base64.
    pub key: String,
    pub image: crate::raft::Image,
    /// What the store records as applied (`Store::applied`), base64.
    pub applied: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// The plan version now fully applied on the node.
    pub applied_version: Option<u64>,
    /// The digest of the plan applied (`PlanState::digest`): the manager compares it with
    /// the plan it holds for the node.
    #[serde(default)]
    pub plan_digest: Option<u64>,
    pub tasks: Vec<TaskReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskReport {
    pub id: String,
    pub state: TaskState,
    pub message: String,
    pub err: Option<String>,
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
}
