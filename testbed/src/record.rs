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
    /// How its manager and agents trust registries (`--insecure-registry`, `--registry-certs`).
    #[serde(default, skip_serializing_if = "RegistrySettings::is_empty")]
    pub registry: RegistrySettings,
}

/// How a cluster's manager and agents trust image registries, as dockerd's
/// `--insecure-registry` and `/etc/docker/certs.d` say it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrySettings {
    /// Registries (`HOST:PORT`) reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<String>,
    /// A `certs.d`-shaped directory on this host: `HOST:PORT/ca.crt` for each registry whose
    /// certificate a CA of the user's signed. Nodes on other machines get a copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<std::path::PathBuf>,
}

impl RegistrySettings {
    pub fn is_empty(&self) -> bool {
        self.insecure.is_empty() && self.certs.is_none()
    }

    /// The environment that hands them to a manager or an agent, whose certificates
    /// directory is `certs` (this host's, or the copy on the agent's machine).
    pub fn env(&self, certs: Option<&str>) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if !self.insecure.is_empty() {
            env.push((
                cluster::registry::ENV_INSECURE_REGISTRIES,
                self.insecure.join(","),
            ));
        }
        if let Some(dir) = certs {
            env.push((cluster::registry::ENV_REGISTRY_CERTS, dir.to_string()));
        }
        env
    }

    /// This host's certificates directory, as the environment carries it.
    pub fn local_certs(&self) -> Option<String> {
        self.certs.as_ref().map(|d| d.display().to_string())
    }
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    /// Managers replicating the store, on the first nodes (1: one manager, off the nodes).
    pub managers: usize,
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
    /// How the manager and agents trust registries.
    pub registry: RegistrySettings,
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
        env.extend(self.registry.env(self.registry.local_certs().as_deref()));
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
        registry: opts.registry.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&info).expect("the record serializes");
    write_atomically(&paths.info_file(), &bytes)
        .map_err(io(format!("writing {}", paths.info_file().display())))?;
    Ok(info)
}

/// Where a cluster's registry settings are kept from the start of its `cluster up` (before
/// the record, which is written once every node is up), for every agent started then or later.
fn registry_file(paths: &ClusterPaths) -> std::path::PathBuf {
    paths.state_dir().join("registry.json")
}

pub(crate) fn note_registry(paths: &ClusterPaths, settings: &RegistrySettings) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(settings).expect("the settings serialize");
    write_atomically(&registry_file(paths), &bytes)
        .map_err(io("noting the cluster's registry settings"))
}

/// The registry settings of a cluster (none noted: none given).
pub fn registry_of(paths: &ClusterPaths) -> RegistrySettings {
    std::fs::read(registry_file(paths))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_settings_travel_in_the_environment_and_the_record() {
        let none = RegistrySettings::default();
        assert!(none.env(none.local_certs().as_deref()).is_empty());
        let given = RegistrySettings {
            insecure: vec!["192.168.0.1:5000".into(), "reg.test:443".into()],
            certs: Some("/etc/sk-certs".into()),
        };
        assert_eq!(
            given.env(Some("/run/swarmkit/c/registry-certs")),
            vec![
                (
                    cluster::registry::ENV_INSECURE_REGISTRIES,
                    "192.168.0.1:5000,reg.test:443".to_string()
                ),
                (
                    cluster::registry::ENV_REGISTRY_CERTS,
                    "/run/swarmkit/c/registry-certs".to_string()
                ),
            ]
        );
        // A record from before the settings reads as none; one with them keeps them.
        let old = r#"{"name":"c","backend":"netns","nodes":[],"created":"2026-01-01T00:00:00Z"}"#;
        let info: ClusterInfo = serde_json::from_str(old).unwrap();
        assert!(info.registry.is_empty());
        let info = ClusterInfo {
            registry: given.clone(),
            ..info
        };
        let back: ClusterInfo =
            serde_json::from_str(&serde_json::to_string(&info).unwrap()).unwrap();
        assert_eq!(back.registry, given);
    }
}
