//! The testbed: what a node is made of. Each backend (netns, qemu, ssh) lives in a file of its
//! own; the rest of the crate names a backend only through [`Backend`], the typed value kept in
//! the cluster's record, and reaches its code through the one match in [`with_backend!`].
//!
//! Adding a fourth backend: a new file with a unit struct implementing [`NodeBackend`], a
//! variant in [`Backend`] (its name in `Display`/`FromStr`), and one line in `with_backend!`.

pub mod netns;
pub mod procs;
pub mod prune;
pub mod qemu;
pub mod ssh;
pub mod supervise;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::client::ManagerClient;
use crate::paths::ClusterPaths;

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
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Netns => "netns",
            Backend::Qemu => "qemu",
            Backend::Ssh => "ssh",
        })
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

/// Runs `$body` with `$b` bound to the implementation of `$kind`: the one place that maps a
/// backend's name to its code.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, $b:ident => $body:expr) => {
        match $kind {
            $crate::testbed::Backend::Netns => {
                let $b = $crate::testbed::netns::Netns;
                $body
            }
            $crate::testbed::Backend::Qemu => {
                let $b = $crate::testbed::qemu::Qemu;
                $body
            }
            $crate::testbed::Backend::Ssh => {
                let $b = $crate::testbed::ssh::Ssh;
                $body
            }
        }
    };
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
    NetNs(#[from] netcore::netns::NetNsError),
    #[error(transparent)]
    Link(#[from] netcore::link::LinkError),
    #[error(transparent)]
    Qemu(#[from] crate::vm::qemu::QemuError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {message}")]
    Remote { node: String, message: String },
}

pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// What every backend does for the lifecycle and the fault verbs. Methods take the cluster's
/// paths and its record; a backend that cannot do something says so with
/// [`TestbedError::Unsupported`].
pub trait NodeBackend {
    /// Injects `fault` into `node` (one of `info.nodes`).
    fn fault(
        &self,
        paths: &ClusterPaths,
        info: &crate::lifecycle::ClusterInfo,
        node: &str,
        fault: Fault,
    ) -> impl std::future::Future<Output = Result<()>>;
}

/// `swarmkit node kill|start|isolate|heal NODE`.
pub async fn inject(cluster: &str, node: &str, fault: Fault) -> Result<()> {
    let paths = ClusterPaths::new(cluster);
    let info = crate::lifecycle::read_info(&paths)
        .ok_or_else(|| TestbedError::NoCluster(cluster.to_string()))?;
    if !info.nodes.iter().any(|n| n == node) {
        return Err(TestbedError::NoNode {
            cluster: cluster.to_string(),
            node: node.to_string(),
        });
    }
    with_backend!(info.backend, b => b.fault(&paths, &info, node, fault).await)
}

/// The one definition of a ready node, on every backend: registered and Ready in the manager,
/// and its dataplane (ingress sandbox, routing mesh) applied, which the agent reports through
/// [`crate::manager::DATAPLANE_LABEL`].
pub fn node_ready(n: &bollard::models::Node) -> bool {
    let ready = n.status.as_ref().and_then(|s| s.state) == Some(bollard::models::NodeState::READY);
    let applied = n
        .description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .and_then(|e| e.labels.as_ref())
        .and_then(|l| l.get(crate::manager::DATAPLANE_LABEL))
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
    let client = ManagerClient::new(&paths.manager_socket());
    crate::lifecycle::wait_until(&format!("{node} to be ready"), deadline, || {
        hostname_ready_since(&client, node, Some(since))
    })
    .await
    .map_err(|_| TestbedError::NotReady {
        node: node.to_string(),
        after: deadline,
        log,
    })
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
