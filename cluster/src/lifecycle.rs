//! Bringing clusters up and down. (Stub signatures; implementation lands with the backend.)

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub backend: String,
    pub nodes: Vec<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Whether the manager answers right now.
    #[serde(default)]
    pub running: bool,
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub backend: String,
    /// "ipvs" or "nftables"; None means probe the kernel.
    pub lb: Option<String>,
}

pub async fn up(_opts: &UpOptions) -> anyhow::Result<ClusterInfo> {
    anyhow::bail!("not implemented yet")
}

pub async fn down(_name: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub fn list() -> anyhow::Result<Vec<ClusterInfo>> {
    Ok(Vec::new())
}

/// Runs argv inside a node's namespaces; returns its exit code.
pub async fn node_exec(_cluster: &str, _node: &str, _argv: &[String]) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}

/// Runs argv inside a task's namespaces (net, mnt, uts); `task` is an ID, ID prefix or
/// task name like `search.1`. Returns its exit code.
pub async fn task_exec(_cluster: &str, _task: &str, _argv: &[String]) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}

/// Entry points of the daemons `cluster up` starts (hidden subcommands of the binary).
pub async fn run_manager(_cluster: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
pub async fn run_agent(_cluster: &str, _node: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
