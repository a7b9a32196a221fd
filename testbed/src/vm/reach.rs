//! Waiting until a whole-machine node can be reached: its console saying that its SSH server
//! is about to start, the server greeting, the `__vmhost` daemon's session up. Every wait here
//! is one [`crate::wait::poll_until`] loop that also ends, at once, when the guest's QEMU has
//! died: gone from /proc, or a zombie (as it stays while the `cluster up` that started it,
//! its parent, has not reaped it). Hosts of the ssh backend have no QEMU and no console.

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::node::{VmNode, session_state};
use crate::procs;
use cluster::paths::ClusterPaths;

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("node {node} did not answer SSH within {after:?}; see {console}")]
    SshTimeout {
        node: String,
        after: Duration,
        console: PathBuf,
    },
    #[error("node {node}: QEMU exited during boot; see {log}")]
    Died { node: String, log: PathBuf },
}

/// Waits until the daemon reports the node's SSH session up.
pub async fn wait_ssh(
    paths: &ClusterPaths,
    node: &VmNode,
    deadline: Duration,
) -> Result<(), ReachError> {
    wait_for(paths, node, deadline, || {
        std::future::ready(session_state(paths, &node.name).is_some())
    })
    .await
}

/// Waits until the guest's console says it is ready for SSH (see [`console_ready`]).
pub async fn wait_console(
    paths: &ClusterPaths,
    node: &VmNode,
    deadline: Duration,
) -> Result<(), ReachError> {
    wait_for(paths, node, deadline, || {
        std::future::ready(console_ready(paths, node))
    })
    .await
}

/// Waits until the node's SSH server greets: first its console (from then on a refused
/// connection comes back at once), then the banner, each within `deadline`.
pub async fn wait_sshd(
    paths: &ClusterPaths,
    node: &VmNode,
    deadline: Duration,
) -> Result<(), ReachError> {
    wait_console(paths, node, deadline).await?;
    wait_for(paths, node, deadline, || {
        let addr = node.ssh.clone();
        async move {
            tokio::task::spawn_blocking(move || banner(&addr))
                .await
                .unwrap_or(false)
        }
    })
    .await
}

/// Polls `ready` until it holds; fails at once when the node's QEMU died, and after
/// `deadline` otherwise.
async fn wait_for<F, Fut>(
    paths: &ClusterPaths,
    node: &VmNode,
    deadline: Duration,
    mut ready: F,
) -> Result<(), ReachError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = crate::wait::poll_until(deadline, || {
        let ready = ready();
        async move {
            if ready.await {
                return Ok(true);
            }
            match node.pid {
                Some(pid) if procs::dead(pid as i32) => Err(ReachError::Died {
                    node: node.name.clone(),
                    log: paths.log_file(&format!("{}.qemu", node.name)),
                }),
                _ => Ok(false),
            }
        }
    })
    .await?;
    if !held {
        return Err(ReachError::SshTimeout {
            node: node.name.clone(),
            after: deadline,
            console: paths.log_file(&format!("{}.console", node.name)),
        });
    }
    Ok(())
}

/// Whether the guest's init said it is about to start its SSH server. Until then, connecting
/// is worse than waiting: QEMU's user-mode NIC accepts the connection, loses its SYN to a
/// guest whose network is not up yet, and retries it only seconds later. Machines that are
/// not our guests (the ssh backend's hosts) have no console and count as ready.
pub fn console_ready(paths: &ClusterPaths, node: &VmNode) -> bool {
    if node.pid.is_none() {
        return true;
    }
    std::fs::read(paths.log_file(&format!("{}.console", node.name)))
        .is_ok_and(|bytes| bytes.windows(13).any(|w| w == b"ready for ssh"))
}

/// Whether an SSH server greets on `addr`. The timeout is generous: on a loaded host an
/// emulated guest takes seconds to fork a server process, and giving up early only piles up
/// more connections for it to serve.
pub fn banner(addr: &str) -> bool {
    let Ok(sa) = addr.parse() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pid: u32) -> VmNode {
        VmNode {
            name: "node1".into(),
            addr: "192.168.0.11/24".parse().unwrap(),
            ssh: "127.0.0.1:1".into(),
            user: "root".into(),
            host_key: String::new(),
            key_file: PathBuf::new(),
            pid: Some(pid),
            lb: None,
            mesh: None,
            binary: None,
            launch: None,
        }
    }

    #[tokio::test]
    async fn a_dead_guest_is_noticed_while_waiting_for_its_console() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let paths = ClusterPaths::new("sktest-console-dead");
        let r = wait_console(&paths, &node(pid), Duration::from_secs(60)).await;
        assert!(matches!(r, Err(ReachError::Died { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn the_console_wait_has_a_deadline() {
        let paths = ClusterPaths::new("sktest-console-silent");
        let r = wait_console(
            &paths,
            &node(std::process::id()),
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(r, Err(ReachError::SshTimeout { .. })), "{r:?}");
    }

    /// A guest that exited but was not reaped (its parent, `cluster up`, still runs) is dead
    /// for every wait, the session wait included.
    #[tokio::test]
    async fn a_zombie_guest_counts_as_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        crate::wait::wait_until(
            "the child to exit",
            Duration::from_secs(10),
            std::path::Path::new("/proc"),
            || std::future::ready(procs::dead(pid as i32)),
        )
        .await
        .unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let paths = ClusterPaths::new("sktest-session-zombie");
        let r = wait_ssh(&paths, &node(pid), Duration::from_secs(60)).await;
        assert!(matches!(r, Err(ReachError::Died { .. })), "{r:?}");
        child.wait().unwrap();
    }
}
