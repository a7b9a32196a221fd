//! The netns backend: every node is a network namespace on this host, plugged into the
//! cluster's underlay bridge by a veth whose bridge end is `p<N>`. Agents reach the manager
//! over TCP across that underlay (the manager listens inside the underlay namespace), so that
//! cutting a node's port cuts its control channel as it would on a real network.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use netcore::link::Links;
use netcore::netns::NetNs;

use super::supervise::{self, Spec};
use super::{Fault, NodeBackend, Result, TestbedError, procs};
use crate::lifecycle::ClusterInfo;
use crate::paths::ClusterPaths;

pub struct Netns;

pub(crate) const UNDERLAY_BRIDGE: &str = "br0";
/// The manager's address on the underlay (nodes are .11 and up).
pub const MANAGER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const MANAGER_PORT: u16 = 2377;
/// Set on the manager: bind the agents' TCP listener inside the cluster's underlay namespace.
pub const ENV_UNDERLAY_LISTEN: &str = "SWARMKIT_MANAGER_UNDERLAY";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Underlay address of the `i`th node (1-based).
pub fn node_addr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 10 + i as u8), 24).expect("valid /24")
}

/// The bridge end of the `i`th node's underlay veth (1-based).
fn port(i: usize) -> String {
    format!("p{i}")
}

fn index_of(info: &ClusterInfo, node: &str) -> usize {
    info.nodes
        .iter()
        .position(|n| n == node)
        .map_or(0, |i| i + 1)
}

/// The switch, with the manager's underlay address on it.
pub async fn create_switch(underlay: &NetNs) -> Result<()> {
    netcore::underlay::create_switch(underlay, UNDERLAY_BRIDGE).await?;
    let links = Links::new(underlay)?;
    let br = links.require(UNDERLAY_BRIDGE).await?;
    let addr = Ipv4Net::new(MANAGER_ADDR, 24).expect("valid /24");
    match links.add_addr(br, addr).await {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        r => Ok(r?),
    }
}

/// The manager's listener for agents: bound on a thread that entered the underlay namespace,
/// then served from the manager's own (root) namespace.
pub fn underlay_listener(paths: &ClusterPaths) -> Result<std::net::TcpListener> {
    let ns = NetNs::open(&paths.underlay_ns())?;
    let addr = std::net::SocketAddr::from((MANAGER_ADDR, MANAGER_PORT));
    ns.run(move || std::net::TcpListener::bind(addr))?
        .map_err(super::io(format!(
            "binding {addr} in {}",
            paths.underlay_ns()
        )))
}

/// How the `i`th node's agent is started: inside its namespace, dialling the manager across
/// the underlay.
pub fn agent_spec(
    i: usize,
    hostname: &str,
    lb: Option<netcore::lb::Driver>,
    paths: &ClusterPaths,
) -> Spec {
    let mut env = vec![
        (
            crate::agent::ENV_NODE_ADDR.to_string(),
            node_addr(i).addr().to_string(),
        ),
        (
            crate::client::ENV_MANAGER_TCP.to_string(),
            format!("{MANAGER_ADDR}:{MANAGER_PORT}"),
        ),
    ];
    if let Some(lb) = lb {
        env.push((crate::agent::ENV_LB.to_string(), lb.to_string()));
    }
    Spec {
        name: hostname.to_string(),
        args: vec!["__agent".into(), "--node".into(), hostname.to_string()],
        env,
        node_ns: Some(paths.node_ns(hostname)),
        hostname: Some(hostname.to_string()),
    }
}

async fn set_port(paths: &ClusterPaths, i: usize, up: bool) -> Result<()> {
    let links = Links::new(&NetNs::open(&paths.underlay_ns())?)?;
    if up {
        links.set_up_by_name(&port(i)).await?;
    } else {
        links.set_down_by_name(&port(i)).await?;
    }
    Ok(())
}

impl NodeBackend for Netns {
    async fn fault(
        &self,
        paths: &ClusterPaths,
        info: &ClusterInfo,
        node: &str,
        fault: Fault,
    ) -> Result<()> {
        let i = index_of(info, node);
        match fault {
            Fault::Kill => {
                // The link first: nothing the node still sends escapes after the "crash".
                set_port(paths, i, false).await?;
                std::fs::write(supervise::killed_marker(paths, node), b"")
                    .map_err(super::io("marking the node killed"))?;
                let spec = agent_spec(i, node, info.lb, paths);
                if let Some(pid) = supervise::running(paths, &spec)
                    && !procs::kill_tree(pid)
                {
                    return Err(TestbedError::Remote {
                        node: node.to_string(),
                        message: "its agent or a task did not die within 5s of SIGKILL".into(),
                    });
                }
                Ok(())
            }
            Fault::Start => {
                set_port(paths, i, true).await?;
                let spec = agent_spec(i, node, info.lb, paths);
                if supervise::running(paths, &spec).is_some() {
                    return Ok(());
                }
                let since = chrono::Utc::now();
                // Once unmarked, the supervisor may start the agent first; either way once.
                let _ = std::fs::remove_file(supervise::killed_marker(paths, node));
                supervise::ensure(paths, &spec)?;
                super::wait_restarted(paths, node, since, START_TIMEOUT, paths.log_file(node)).await
            }
            Fault::Isolate => set_port(paths, i, false).await,
            Fault::Heal => set_port(paths, i, true).await,
        }
    }
}
