//! What the two whole-machine backends (qemu guests, ssh hosts) share: nodes reached over SSH
//! through their records in the run directory (`vm/<node>.json`, see crate::vm::node::VmNode),
//! agents started by the `__vmhost` daemon, commands run through a session.

use std::time::Duration;

use crate::ssh::shell_quote;
use crate::supervise::{self, Spec};
use crate::vm::node::{VmNode, load_node};
use crate::vm::progress::{AGENT_READY, NodeProgress, SSH_UP};
use crate::vm::reach;
use crate::{Inside, Result, TestbedError};
use cluster::client::ManagerClient;
use cluster::paths::ClusterPaths;

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) fn remote(node: &str) -> impl FnOnce(anyhow::Error) -> TestbedError {
    let node = node.to_string();
    move |e| TestbedError::Remote {
        node,
        message: format!("{e:#}"),
    }
}

/// Starts the SSH daemon (which starts each node's agent) and waits until every node's
/// session is up and its agent ready; returns the nodes' names.
pub(crate) async fn start_agents(
    paths: &ClusterPaths,
    nodes: &[VmNode],
    progress: &NodeProgress,
) -> Result<Vec<String>> {
    supervise::ensure(paths, &Spec::host("vmhost", &["__vmhost"], &[]))?;
    if paths.replicated() {
        crate::supervise::wait_manager_within(paths, SSH_TIMEOUT + READY_TIMEOUT).await?;
    } else {
        crate::supervise::wait_manager(paths).await?;
    }
    let client = ManagerClient::of_cluster(paths);
    let see = format!(
        "{} and, inside the node, /run/swarmkit/{}/agent.log",
        paths.log_file("vmhost").display(),
        paths.name
    );
    let waits = nodes.iter().map(|n| {
        let client = client.clone();
        let see = std::path::PathBuf::from(&see);
        async move {
            reach::wait_ssh(paths, n, SSH_TIMEOUT).await?;
            progress.step(&n.name, SSH_UP, "ssh up");
            crate::wait::wait_until(
                &format!("the agent on {} to be ready", n.name),
                READY_TIMEOUT,
                &see,
                || crate::hostname_ready(&client, &n.name),
            )
            .await?;
            progress.step(&n.name, AGENT_READY, "agent ready");
            Ok::<_, TestbedError>(())
        }
    });
    futures::future::try_join_all(waits).await?;
    Ok(nodes.iter().map(|n| n.name.clone()).collect())
}

/// Waits until a booted machine's SSH server answers (without starting an agent).
pub(crate) async fn wait_sshd(paths: &ClusterPaths, n: &VmNode) -> Result<()> {
    Ok(reach::wait_sshd(paths, n, SSH_TIMEOUT).await?)
}

/// `node exec` and `exec TASK` on a machine: the command runs through SSH with its output
/// streamed; returns the remote exit code. A task is entered from inside its node, by the pid
/// the node's kernel gave it.
pub(crate) async fn exec(
    paths: &ClusterPaths,
    node: &str,
    inside: Inside<'_>,
    argv: &[String],
) -> Result<i32> {
    let n = load_node(paths, node).map_err(|_| TestbedError::NoNode {
        cluster: paths.name.clone(),
        node: node.to_string(),
    })?;
    if argv.is_empty() {
        return Err(TestbedError::NoCommand);
    }
    let s = crate::vm::host::connect(&n).await?;
    let command = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let enter = match inside {
        Inside::Node => "exec".to_string(),
        // A registry image's task is its runtime's process: the container is its child.
        Inside::Task(pid) => format!(
            "p={pid}; [ \"$(cat /proc/$p/comm)\" = crun ] && p=$(cut -d' ' -f1 /proc/$p/task/$p/children); exec nsenter -t $p -n -u -m -p --"
        ),
        Inside::Sandbox(name) => {
            // The node's own listing, so a miss names the sandboxes it does have.
            let listing = s
                .exec(&format!("ls {}", netcore::netns::NETNS_RUN_DIR))
                .await?;
            let have = crate::sandbox_names(
                &paths.node_sandbox_ns(node, ""),
                String::from_utf8_lossy(&listing.stdout).lines(),
            );
            if !have.iter().any(|h| h == name) {
                return Err(TestbedError::NoSandbox {
                    cluster: paths.name.clone(),
                    node: node.to_string(),
                    name: name.to_string(),
                    have,
                });
            }
            let file = format!(
                "{}/{}",
                netcore::netns::NETNS_RUN_DIR,
                paths.node_sandbox_ns(node, name)
            );
            format!("exec nsenter --net={}", shell_quote(&file))
        }
    };
    let cmd = format!(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; {enter} {command}"
    );
    Ok(s.exec_streaming(&cmd).await?)
}

/// Entry point of `swarmkit __vmhost`: one SSH session per machine, each starting its agent.
pub async fn run_host(cluster: &str) -> anyhow::Result<()> {
    crate::vm::host::run(cluster).await
}

/// `cluster recover` on a machine: stops the node's agent (its manager dies with it) and
/// rewrites the node's replica there as the only manager.
pub(crate) async fn force_new_cluster(paths: &ClusterPaths, node: &str) -> anyhow::Result<()> {
    let n = load_node(paths, node)?;
    let s = crate::vm::host::connect(&n).await?;
    let bin = crate::vm::host::ensure_binary(&s, &n).await?;
    let run = shell_quote(&paths.run_dir().display().to_string());
    let out = s
        .exec(&format!(
            "a=$(cat {run}/agent.pid 2>/dev/null); \
             if [ -n \"$a\" ]; then kill \"$a\" 2>/dev/null; i=0; \
               while kill -0 \"$a\" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; fi; \
             {bin} --cluster {c} __manager --replica {n} --force-new-cluster",
            bin = shell_quote(&bin),
            c = shell_quote(&paths.name),
            n = shell_quote(node),
        ))
        .await?;
    out.succeeded(format!("rewriting {node}'s replica"))?;
    tracing::info!(node, dropped = %String::from_utf8_lossy(&out.stdout).trim(), "forced a new cluster");
    Ok(())
}

/// Ends the node's relay, so that `__vmhost` reconnects and starts the node's agent again
/// with what this host now knows (the managers' addresses among it).
pub(crate) async fn restart_agent(paths: &ClusterPaths, node: &str) -> anyhow::Result<()> {
    let n = load_node(paths, node)?;
    let s = crate::vm::host::connect(&n).await?;
    let pid = shell_quote(&crate::vm::relay::pid_file(paths).display().to_string());
    s.exec(&format!("kill $(cat {pid}) 2>/dev/null; true"))
        .await?;
    Ok(())
}
