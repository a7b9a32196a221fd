//! What the manager is told by its environment: how `cluster up` hands a new cluster's
//! settings (data port, key rotation, heartbeat) to its manager, which records them in the
//! store, and the agents' heartbeat as this manager applies it.

use std::time::Duration;

use crate::model::Meta;

/// Heartbeat defaults: a dead node is noticed within 1.5 s (3 missed 0.5 s periods), so its
/// backends leave every load balancer well inside 3 s, and an idle node costs two small
/// requests a second.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
pub const DEFAULT_MISSES: u32 = 3;
/// After a manager restart, how long agents have to reconnect before their nodes count as
/// down (they retry every 200 ms).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
pub const ENV_HEARTBEAT_MS: &str = "SWARMKIT_HEARTBEAT_MS";
pub const ENV_HEARTBEAT_MISSES: &str = "SWARMKIT_HEARTBEAT_MISSES";
pub const ENV_GRACE_MS: &str = "SWARMKIT_RECONNECT_GRACE_MS";

#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    pub period: Duration,
    pub misses: u32,
    pub grace: Duration,
}

impl Heartbeat {
    /// From the manager's environment, else what the cluster was created with (its Meta), else
    /// the defaults. The environment is how `cluster up` hands its flags to a new manager,
    /// which records them; a restarted manager finds them in the store.
    pub fn of(meta: &Meta) -> anyhow::Result<Heartbeat> {
        let recorded = |v: u64, default: u64| if v == 0 { default } else { v };
        let var = |name: &str, default: u64, min: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => anyhow::bail!(
                        "{name}={v:?} is not a whole number >= {min}: unset it for the default {default}"
                    ),
                },
            }
        };
        Ok(Heartbeat {
            period: Duration::from_millis(var(
                ENV_HEARTBEAT_MS,
                recorded(meta.heartbeat_ms, DEFAULT_HEARTBEAT.as_millis() as u64),
                50,
            )?),
            misses: var(
                ENV_HEARTBEAT_MISSES,
                recorded(meta.heartbeat_misses, u64::from(DEFAULT_MISSES)),
                1,
            )? as u32,
            grace: Duration::from_millis(var(ENV_GRACE_MS, DEFAULT_GRACE.as_millis() as u64, 0)?),
        })
    }

    /// Silence after which a node is down.
    pub fn timeout(&self) -> Duration {
        self.period * self.misses
    }
}

/// Environment `cluster up` passes to a new cluster's manager: its data-path settings,
/// recorded in the store's Meta when the cluster is created (see `settings_from_env`).
pub const ENV_DATA_PATH_PORT: &str = "SWARMKIT_DATA_PATH_PORT";
pub const ENV_KEY_ROTATION_SECS: &str = "SWARMKIT_KEY_ROTATION_SECS";
/// Node certificates' lifetime in seconds (`cluster up --cert-expiry`; at least 10).
pub const ENV_CERT_EXPIRY_SECS: &str = "SWARMKIT_CERT_EXPIRY_SECS";
/// The manager nodes' hostnames, comma-separated (`cluster up --managers`).
pub const ENV_MANAGER_NODES: &str = "SWARMKIT_MANAGER_NODES";

/// The settings a new cluster is created with (0: the default).
pub fn settings_from_env() -> Meta {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let manager_nodes: Vec<String> = std::env::var(ENV_MANAGER_NODES)
        .map(|v| {
            v.split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Meta {
        data_path_port: num(ENV_DATA_PATH_PORT)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        key_rotation_secs: num(ENV_KEY_ROTATION_SECS).unwrap_or(0),
        heartbeat_ms: num(ENV_HEARTBEAT_MS).unwrap_or(0),
        heartbeat_misses: num(ENV_HEARTBEAT_MISSES).unwrap_or(0),
        cert_expiry_secs: num(ENV_CERT_EXPIRY_SECS)
            .map(|s| s.max(crate::pki::ca::MIN_CERT_EXPIRY.as_secs()))
            .unwrap_or(0),
        // The first managers are Raft IDs 1..=N.
        last_manager_id: manager_nodes.len() as u64,
        manager_nodes,
        ..Default::default()
    }
}
