//! The manager <-> agent channel: JSON over HTTP on the manager's socket (forwarded over SSH
//! for remote nodes). Agents register, long-poll what changed in their node's plan since the
//! version they have, and report what they observed. The poll is also the heartbeat: the
//! manager holds it at most one heartbeat period, and a node that has not polled for
//! `misses` periods is down.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::TaskState;
use crate::plan::PlanDelta;

pub const PREFIX: &str = "/swarmkit/v1/agents";

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
