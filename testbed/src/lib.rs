//! testbed: the machines a cluster runs on, and a cluster's life on them (`cluster up`,
//! `down`, `ls`, `node exec`, faults). It is a product of its own beside the control plane:
//! `cluster` (manager, agent) knows nothing of it, and it knows the control plane only as a
//! client does (the manager's socket, the environment the daemons read, a node's readiness
//! label).
//!
//! Where things live, from the top down; a module imports only modules below it (no circles,
//! checked with a script that lists every module's `crate::` imports):
//! - [`lifecycle`]: up, resume, down, list, exec, prune and fault injection ([`inject`]), on
//!   any backend, through the one [`with_backend!`] match from a backend's name to its code;
//! - [`backend`]: the [`NodeBackend`](backend::NodeBackend) trait every backend implements,
//!   one file per backend (netns, qemu, ssh), plus [`backend::machine`], what the backends
//!   whose nodes are whole machines reached over SSH share;
//! - [`supervise`]: the cluster's daemons (the manager among them) and the per-cluster
//!   supervisor that restarts them;
//! - [`record`]: a cluster's record (`cluster.json`) and what `cluster up` was asked for;
//! - this file: the vocabulary every layer above shares: [`Backend`] (the typed value kept
//!   in a cluster's record), [`Fault`], [`Inside`], [`TestbedError`], and what a ready node
//!   is ([`node_ready`]); `inject`, `ClusterInfo` and `UpOptions` are re-exported here;
//! - [`docker_lab`]: a real Docker Swarm (docker.io's dockerds in namespaces) beside the
//!   clusters, for comparing swarmkit with and for doctor's walkthrough; it shares nothing
//!   with the layers above but this crate's conventions;
//! - [`vm`]: whole-machine nodes: guest images, QEMU launch, a node's record, waiting until
//!   it answers, inventories, the `__vmhost` SSH daemon; [`ssh`]: the SSH client (pinned host
//!   keys); [`procs`]: finding a cluster's processes through /proc; [`wait`]: the one wait
//!   loop ([`wait::wait_until`]).
//!
//! Adding a fourth backend (say, containers):
//! 1. a new file `backend/containers.rs` with a unit struct implementing
//!    [`NodeBackend`](backend::NodeBackend) (what it cannot do returns
//!    [`TestbedError::Unsupported`]); whole machines reached over SSH can reuse
//!    [`backend::machine`];
//! 2. a variant in [`Backend`] (its name in `as_str` and `ALL`, from which `--backend` takes
//!    its choices), and its line in [`with_backend!`] (in `lifecycle`), whose match the
//!    compiler checks for exhaustiveness.

pub mod backend;
pub mod docker_lab;
pub mod docker_proxy;
pub mod lifecycle;
pub mod managers;
pub mod procs;
pub mod record;
pub mod ssh;
pub mod supervise;
pub mod vm;
pub mod wait;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use cluster::client::ManagerClient;
use cluster::paths::ClusterPaths;
// Re-exported: the CLI names them from the top.
pub use lifecycle::inject;
pub use record::{ClusterInfo, UpOptions};

/// How a cluster's nodes are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Network namespaces on this host, sharing its kernel.
    Netns,
    /// QEMU guests booted from a cached image, each with its own kernel.
    Qemu,
    /// Existing Linux hosts from an inventory, driven over SSH.
    Ssh,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Netns, Backend::Qemu, Backend::Ssh];

    /// Its name, as `--backend` takes it and the record keeps it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Netns => "netns",
            Backend::Qemu => "qemu",
            Backend::Ssh => "ssh",
        }
    }

    /// Heartbeats a node may miss before it is down, when `cluster up` is not told. Emulated
    /// (TCG) guests stall for seconds when their host is busy, and 1.5 s of silence from one
    /// is no sign it died: they get 5 s. Namespaces and real hosts keep the manager's 3.
    pub const fn default_heartbeat_misses(self) -> Option<u32> {
        match self {
            Backend::Qemu => Some(10),
            Backend::Netns | Backend::Ssh => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = TestbedError;
    fn from_str(s: &str) -> Result<Self, TestbedError> {
        Backend::ALL
            .into_iter()
            .find(|b| b.to_string() == s)
            .ok_or_else(|| TestbedError::UnknownBackend(s.to_string()))
    }
}

/// A fault the testbed can inject into one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A crash: the node's agent and tasks die (a guest is killed) and its underlay link goes
    /// down.
    Kill,
    /// The node comes back from a kill: link up, agent started (guest booted).
    Start,
    /// The node's underlay is cut, data and control alike; nothing is killed.
    Isolate,
    /// Undoes `Isolate`.
    Heal,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::Start => "start",
            Fault::Isolate => "isolate",
            Fault::Heal => "heal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("backend {0:?} is not available: use --backend netns, qemu or ssh")]
    UnknownBackend(String),
    #[error("no cluster named {0:?}: see swarmkit cluster ls")]
    NoCluster(String),
    #[error("no node {node:?} in cluster {cluster:?}: see swarmkit --cluster {cluster} node ls")]
    NoNode { cluster: String, node: String },
    #[error("the {backend} backend cannot {what}: {why}")]
    Unsupported {
        backend: Backend,
        what: String,
        why: &'static str,
    },
    #[error("node {node} did not become ready within {after:?}; see {log}")]
    NotReady {
        node: String,
        after: std::time::Duration,
        log: std::path::PathBuf,
    },
    #[error(transparent)]
    Timeout(#[from] crate::wait::Timeout),
    #[error("cannot recover cluster {cluster}: {why}")]
    CannotRecover { cluster: String, why: String },
    #[error("invalid --managers {given}: give 1 to {max} (at most --nodes, and at most 7)")]
    InvalidManagers { given: usize, max: usize },
    #[error("invalid --nodes {given} for the {backend} backend: give 1 to {max}")]
    InvalidNodes {
        backend: Backend,
        given: usize,
        max: usize,
    },
    #[error("this kernel has no {feature}: {hint}")]
    KernelLacks {
        feature: &'static str,
        hint: &'static str,
    },
    #[error(
        "--backend ssh needs --inventory hosts.toml (address, user, key and host_key of each host)"
    )]
    NoInventory,
    #[error("node {node}: key {path} does not exist")]
    NoKey {
        node: String,
        path: std::path::PathBuf,
    },
    #[error(
        "{var} points at no usable image ({source}): give a directory with kernel, initrd and optionally cmdline"
    )]
    ImageDir {
        var: &'static str,
        #[source]
        source: crate::vm::image::GuestImageError,
    },
    #[error("give a command to run after --")]
    NoCommand,
    #[error(
        "{0:?} is not a sandbox name: use ingress_sbox or 1-<network id> (letters, digits, '_', '-', '.')"
    )]
    BadSandboxName(String),
    #[error("node {node} of cluster {cluster} has no sandbox {name:?}; it has: {}", list_or_none(.have))]
    NoSandbox {
        cluster: String,
        node: String,
        name: String,
        have: Vec<String>,
    },
    #[error(transparent)]
    GuestImage(#[from] crate::vm::image::GuestImageError),
    #[error(transparent)]
    Inventory(#[from] crate::vm::inventory::InventoryError),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    #[error("an internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    NetNs(#[from] netcore::netns::NetNsError),
    #[error(transparent)]
    Link(#[from] netcore::link::LinkError),
    #[error(transparent)]
    Qemu(#[from] crate::vm::qemu::QemuError),
    #[error(transparent)]
    Reach(#[from] crate::vm::reach::ReachError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {message}")]
    Remote { node: String, message: String },
    #[error("asking the manager: {0}")]
    Manager(#[from] cluster::client::ClientError),
    #[error("the manager's /swarm carries no worker join token; see its log")]
    NoJoinToken,
}

pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

fn list_or_none(have: &[String]) -> String {
    if have.is_empty() {
        "none yet".to_string()
    } else {
        have.join(", ")
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// Where on a node a command runs.
#[derive(Clone, Copy, Debug)]
pub enum Inside<'a> {
    /// The node's own namespaces.
    Node,
    /// One of its sandboxes, by short name (`ingress_sbox`, `1-<network id>`).
    Sandbox(&'a str),
    /// A task's namespaces (net, uts, mnt), by the task's pid as the node sees it.
    Task(u64),
}

/// The one definition of a ready node, on every backend: registered and Ready in the manager,
/// and its dataplane (ingress sandbox, routing mesh) applied, which the agent reports through
/// [`cluster::manager::DATAPLANE_LABEL`].
pub fn node_ready(n: &bollard::models::Node) -> bool {
    let ready = n.status.as_ref().and_then(|s| s.state) == Some(bollard::models::NodeState::READY);
    let applied = n
        .description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .and_then(|e| e.labels.as_ref())
        .and_then(|l| l.get(cluster::manager::DATAPLANE_LABEL))
        .is_some_and(|v| v == "ready");
    ready && applied
}

/// Whether the node with this hostname is ready (see [`node_ready`]).
pub async fn hostname_ready(client: &ManagerClient, hostname: &str) -> bool {
    hostname_ready_since(client, hostname, None).await
}

/// As [`hostname_ready`], counting only a node whose record changed at or after `since`: a
/// node that comes back registers anew, while the manager may still show the old, stale
/// registration as ready.
pub async fn hostname_ready_since(
    client: &ManagerClient,
    hostname: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> bool {
    client
        .get::<Vec<bollard::models::Node>>("/nodes")
        .await
        .map(|ns| {
            ns.iter().any(|n| {
                n.description.as_ref().and_then(|d| d.hostname.as_deref()) == Some(hostname)
                    && node_ready(n)
                    && since.is_none_or(|t| n.updated_at.is_some_and(|u| u >= t))
            })
        })
        .unwrap_or(false)
}

/// Waits until `node` has registered again since `since` and is ready.
pub(crate) async fn wait_restarted(
    paths: &ClusterPaths,
    node: &str,
    since: chrono::DateTime<chrono::Utc>,
    deadline: std::time::Duration,
    log: std::path::PathBuf,
) -> Result<()> {
    let client = ManagerClient::of_cluster(paths);
    wait::wait_until(&format!("{node} to be ready"), deadline, &log, || {
        hostname_ready_since(&client, node, Some(since))
    })
    .await
    .map_err(|_| TestbedError::NotReady {
        node: node.to_string(),
        after: deadline,
        log,
    })
}

/// Sandbox short names among namespace names: those under a node's `prefix`, sorted.
pub(crate) fn sandbox_names<'a>(prefix: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut short: Vec<String> = names
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect();
    short.sort();
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_unknown_ones_are_refused() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{b}\""));
        }
        assert!(matches!(
            "docker".parse::<Backend>(),
            Err(TestbedError::UnknownBackend(s)) if s == "docker"
        ));
    }
}
