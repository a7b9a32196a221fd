//! The cluster's record (`cluster.json` in its state directory): what `cluster up` was asked
//! for and what it built. Its backend is the one source of truth for which [`NodeBackend`]
//! drives the cluster afterwards; nothing re-derives it from other files.
//!
//! [`NodeBackend`]: crate::backend::NodeBackend

use std::time::Duration;

use netcore::lb::Driver;
use serde::{Deserialize, Serialize};

use crate::{Backend, Result, io};
use cluster::paths::{ClusterPaths, write_atomically};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub backend: Backend,
    pub nodes: Vec<String>,
    /// The load balancer asked for at `cluster up`; None: each agent probes its kernel.
    #[serde(default)]
    pub lb: Option<Driver>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Whether the manager answers right now.
    #[serde(default)]
    pub running: bool,
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub backend: Backend,
    /// None means each agent probes its kernel.
    pub lb: Option<Driver>,
    /// Hosts of the ssh backend (see crate::vm::inventory).
    pub inventory: Option<std::path::PathBuf>,
    /// UDP port of every network's VXLAN traffic (docker's `--data-path-port`); None: 4789.
    pub data_path_port: Option<u16>,
    /// How often encrypted networks get a new key; None: every 12 hours.
    pub key_rotation: Option<Duration>,
    /// Agents' heartbeat period (docker's `--dispatcher-heartbeat`); None: 500 ms.
    pub heartbeat: Option<Duration>,
    /// Heartbeats a node may miss before it is down; None: 3.
    pub heartbeat_misses: Option<u32>,
    /// Node certificates' lifetime (docker's `--cert-expiry`); None: 90 days.
    pub cert_expiry: Option<Duration>,
}

impl UpOptions {
    /// The environment carrying the data-path settings to a new cluster's manager.
    pub(crate) fn manager_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(p) = self.data_path_port {
            env.push((cluster::manager::ENV_DATA_PATH_PORT, p.to_string()));
        }
        if let Some(d) = self.key_rotation {
            env.push((
                cluster::manager::ENV_KEY_ROTATION_SECS,
                d.as_secs().to_string(),
            ));
        }
        if let Some(d) = self.cert_expiry {
            env.push((
                cluster::manager::ENV_CERT_EXPIRY_SECS,
                d.as_secs().to_string(),
            ));
        }
        if let Some(d) = self.heartbeat {
            env.push((
                cluster::manager::ENV_HEARTBEAT_MS,
                d.as_millis().to_string(),
            ));
        }
        if let Some(n) = self
            .heartbeat_misses
            .or(self.backend.default_heartbeat_misses())
        {
            env.push((cluster::manager::ENV_HEARTBEAT_MISSES, n.to_string()));
        }
        env
    }
}

/// The record, once `cluster up` has finished.
pub fn read_info(paths: &ClusterPaths) -> Option<ClusterInfo> {
    serde_json::from_slice(&std::fs::read(paths.info_file()).ok()?).ok()
}

/// Writes the record `cluster ls` reads, once every node of a new cluster is up.
pub(crate) fn record_up(
    opts: &UpOptions,
    paths: &ClusterPaths,
    nodes: Vec<String>,
) -> Result<ClusterInfo> {
    let info = ClusterInfo {
        name: opts.name.clone(),
        backend: opts.backend,
        nodes,
        lb: opts.lb,
        created: chrono::Utc::now(),
        running: true,
    };
    let bytes = serde_json::to_vec_pretty(&info).expect("the record serializes");
    write_atomically(&paths.info_file(), &bytes)
        .map_err(io(format!("writing {}", paths.info_file().display())))?;
    Ok(info)
}

/// Where the backend of a cluster whose `cluster up` has begun is noted before anything of it
/// exists, so that tearing down a half-built cluster reaches the backend that built it.
fn backend_file(paths: &ClusterPaths) -> std::path::PathBuf {
    paths.state_dir().join("backend")
}

pub(crate) fn note_backend(paths: &ClusterPaths, backend: Backend) -> Result<()> {
    write_atomically(&backend_file(paths), backend.to_string().as_bytes())
        .map_err(io("noting the cluster's backend"))
}

/// The backend of a cluster: from its record, else from the note `cluster up` began with.
/// None: nothing says (no cluster, or one older than the note), so only what every backend
/// leaves on this host (processes, namespaces, directories) can be found.
pub fn backend_of(paths: &ClusterPaths) -> Option<Backend> {
    read_info(paths).map(|i| i.backend).or_else(|| {
        std::fs::read_to_string(backend_file(paths))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}
