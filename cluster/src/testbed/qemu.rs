//! The qemu backend: every node is a QEMU guest with its own kernel, plugged into the
//! cluster's underlay bridge by a tap, reached over SSH through QEMU's user-mode NIC (see
//! crate::vm). Faults: a kill is QEMU's death (the tap vanishes with it); a start boots the
//! same guest again. Isolation takes the tap down (the data path) and, inside the guest, drops
//! the agent's traffic to the manager's forwarded port (the control path, which otherwise runs
//! over the management NIC and the SSH session that `node exec` also uses).

use std::time::Duration;

use netcore::link::Links;
use netcore::netns::NetNs;

use super::{Fault, NodeBackend, Result, TestbedError, procs};
use crate::lifecycle::ClusterInfo;
use crate::paths::ClusterPaths;
use crate::vm::host::MANAGER_PORT;
use crate::vm::qemu::{VmNode, load_node, save_node};

pub struct Qemu;

/// A rebooted guest is booted, logged into and given its agent by the `__vmhost` daemon.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest-side table that cuts the agent's control channel while the node is isolated.
const ISOLATE_TABLE: &str = "swarmkit-isolate";

fn qemu_pid(paths: &ClusterPaths, node: &VmNode) -> Option<i32> {
    let name = format!("sk-{}-{}", paths.name, node.name);
    procs::verified(node.pid? as i32, &paths.name, &["-name", &name])
}

fn remote(node: &str) -> impl FnOnce(anyhow::Error) -> TestbedError {
    let node = node.to_string();
    move |e| TestbedError::Remote {
        node,
        message: format!("{e:#}"),
    }
}

async fn guest(paths: &ClusterPaths, node: &VmNode, cmd: &str, stdin: &str) -> anyhow::Result<()> {
    let s = crate::vm::host::connect(paths, node, false).await?;
    let out = s.exec_with_stdin(cmd, stdin.as_bytes()).await?;
    if out.code != 0 {
        anyhow::bail!(
            "`{cmd}` failed ({}): {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn set_tap(paths: &ClusterPaths, tap: &str, up: bool) -> Result<()> {
    let links = Links::new(&NetNs::open(&paths.underlay_ns())?)?;
    if up {
        links.set_up_by_name(tap).await?;
    } else {
        links.set_down_by_name(tap).await?;
    }
    Ok(())
}

impl NodeBackend for Qemu {
    async fn fault(
        &self,
        paths: &ClusterPaths,
        _info: &ClusterInfo,
        name: &str,
        fault: Fault,
    ) -> Result<()> {
        let mut node = load_node(paths, name).map_err(|_| TestbedError::NoNode {
            cluster: paths.name.clone(),
            node: name.to_string(),
        })?;
        let Some(launch) = node.launch.clone() else {
            return Err(TestbedError::Unsupported {
                backend: super::Backend::Qemu,
                what: format!("{fault} {name}"),
                why: "the node was booted by an older swarmkit that did not record how",
            });
        };
        match fault {
            Fault::Kill => {
                if let Some(pid) = qemu_pid(paths, &node) {
                    procs::kill_all(&[pid]);
                }
                Ok(())
            }
            Fault::Start => {
                if qemu_pid(paths, &node).is_some() {
                    return set_tap(paths, &launch.tap, true).await;
                }
                let underlay = NetNs::open(&paths.underlay_ns())?;
                // The session marker belongs to the dead guest; the daemon writes it anew.
                let _ = std::fs::remove_file(
                    crate::vm::qemu::vm_dir(paths).join(format!("{name}.session")),
                );
                let since = chrono::Utc::now();
                let pid = launch
                    .spawn(paths, name, &underlay, super::netns::UNDERLAY_BRIDGE)
                    .await?;
                node.pid = Some(pid);
                save_node(paths, &node).map_err(super::io("saving the node's record"))?;
                super::wait_restarted(paths, name, since, START_TIMEOUT, paths.log_file("vmhost"))
                    .await
            }
            Fault::Isolate => {
                set_tap(paths, &launch.tap, false).await?;
                let rules = format!(
                    "table inet {ISOLATE_TABLE} {{\n chain out {{\n  type filter hook output priority raw;\n  \
                     oif lo tcp dport {MANAGER_PORT} drop\n  oif lo tcp sport {MANAGER_PORT} drop\n }}\n}}\n"
                );
                guest(
                    paths,
                    &node,
                    &format!("nft delete table inet {ISOLATE_TABLE} 2>/dev/null; nft -f -"),
                    &rules,
                )
                .await
                .map_err(remote(name))
            }
            Fault::Heal => {
                guest(
                    paths,
                    &node,
                    &format!("nft delete table inet {ISOLATE_TABLE} 2>/dev/null; true"),
                    "",
                )
                .await
                .map_err(remote(name))?;
                set_tap(paths, &launch.tap, true).await
            }
        }
    }
}
