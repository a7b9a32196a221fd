//! The manager <-> agent channel: JSON over HTTP on the manager's socket (forwarded over SSH
//! for remote nodes). Agents register, long-poll their plan and report what they observed.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::TaskState;
use crate::plan::NodePlan;

pub const PREFIX: &str = "/swarmkit/v1/agents";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub hostname: String,
    pub addr: Ipv4Addr,
    pub lb_driver: String,
    /// Where the routing mesh balances on this node (netcore::ingress::MeshLayout).
    #[serde(default)]
    pub mesh: String,
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
    /// Pass back as `?after=` to wait for the next change.
    pub epoch: u64,
    pub plan: NodePlan,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// The plan version now fully applied on the node.
    pub applied_version: Option<u64>,
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
