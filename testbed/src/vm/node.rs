//! The record of a whole-machine node (a QEMU guest, or a host from an inventory): how to reach
//! it over SSH and, for a guest, how to boot it again, kept in the run directory as
//! `vm/<node>.json`; and the progress the `__vmhost` daemon notes beside it
//! (`vm/<node>.session`).

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use cluster::paths::ClusterPaths;

/// How to reach one whole-machine node; kept in the run directory as `vm/<node>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmNode {
    pub name: String,
    /// Underlay address (the VTEP) with its prefix.
    pub addr: Ipv4Net,
    /// host:port of its SSH server as seen from the host.
    pub ssh: String,
    pub user: String,
    /// The pinned host key, OpenSSH public-key line.
    pub host_key: String,
    /// Client key to log in with (per cluster, or given by an inventory).
    pub key_file: PathBuf,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub lb: Option<String>,
    /// Where its agent balances published ports; None: the agent's default. A guest's
    /// namespace is the project's alone, a host's (ssh backend) is its owner's.
    #[serde(default)]
    pub mesh: Option<netcore::ingress::MeshLayout>,
    /// Path of the swarmkit binary on the node; None: upload this one.
    #[serde(default)]
    pub binary: Option<String>,
    /// How to boot it again; None for hosts (the ssh backend).
    #[serde(default)]
    pub launch: Option<Launch>,
}

/// How a guest was started, kept so that `node start` boots the same guest again (same host
/// key, SSH port, MAC and addresses) after `node kill`; [`crate::vm::qemu::spawn`] starts it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launch {
    /// QEMU's command line; its underlay NIC is the inherited fd 3.
    pub argv: Vec<String>,
    /// The tap on the cluster's bridge, opened anew for every launch.
    pub tap: String,
}

pub fn vm_dir(paths: &ClusterPaths) -> PathBuf {
    paths.run_dir().join("vm")
}

pub fn client_key_file(paths: &ClusterPaths) -> PathBuf {
    paths.state_dir().join("ssh").join("id_ed25519")
}

pub fn save_node(paths: &ClusterPaths, node: &VmNode) -> std::io::Result<()> {
    let dir = vm_dir(paths);
    std::fs::create_dir_all(&dir)?;
    let bytes = serde_json::to_vec_pretty(node).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{}.json", node.name)), bytes)
}

pub fn load_node(paths: &ClusterPaths, name: &str) -> std::io::Result<VmNode> {
    let bytes = std::fs::read(vm_dir(paths).join(format!("{name}.json")))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

pub fn load_nodes(paths: &ClusterPaths) -> Vec<VmNode> {
    let mut out: Vec<VmNode> = std::fs::read_dir(vm_dir(paths))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by_key(|n: &VmNode| natural(&n.name));
    out
}

/// Orders "node2" before "node10".
fn natural(s: &str) -> (String, u64) {
    let digits: String = s.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    let n = digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    (s[..s.len() - digits.len()].to_string(), n)
}

fn session_file(paths: &ClusterPaths, node: &str) -> PathBuf {
    vm_dir(paths).join(format!("{node}.session"))
}

/// Progress the `__vmhost` daemon records per node: "ssh" once logged in, "agent" once the
/// agent was started. `cluster up` shows these instead of opening connections of its own.
pub fn session_state(paths: &ClusterPaths, node: &str) -> Option<String> {
    std::fs::read_to_string(session_file(paths, node)).ok()
}

pub fn set_session_state(paths: &ClusterPaths, node: &str, state: &str) {
    let _ = std::fs::write(session_file(paths, node), state);
}

/// Forgets the session of a guest that died: the daemon notes the new guest's anew.
pub fn clear_session_state(paths: &ClusterPaths, node: &str) {
    let _ = std::fs::remove_file(session_file(paths, node));
}
