//! What the agent is told by the environment its backend starts it with, read and checked once
//! before anything is changed on the node. Every variable the agent reads is named here; the
//! backends write them with these names (and `NodeNs::as_env`).

use std::net::Ipv4Addr;

use netcore::ingress::MeshLayout;
use netcore::lb::Driver;

/// The node's underlay address (its VXLAN tunnel endpoint).
pub const ENV_NODE_ADDR: &str = "SWARMKIT_NODE_ADDR";
/// The load-balancer driver (`ipvs` or `nftables`); unset, the kernel is asked.
pub const ENV_LB: &str = "SWARMKIT_LB";
/// Where the node's network namespace is: see [`NodeNs`].
pub const ENV_NODE_NS: &str = "SWARMKIT_NODE_NS";
/// Where the routing mesh balances: "node" where the node's namespace is the project's alone
/// (QEMU guests), else "sandbox" (the default).
pub const ENV_MESH: &str = "SWARMKIT_MESH";
/// A TCP endpoint (`host:port`) to reach the manager at, instead of the cluster's unix socket.
pub const ENV_MANAGER_TCP: &str = "SWARMKIT_MANAGER_TCP";
/// The resolv.conf whose nameservers are the node's resolvers, where the tasks' embedded DNS
/// forwards names it does not own; unset, `/etc/resolv.conf`. The netns backend points it at
/// the cluster's underlay, never at the host's own resolvers.
pub const ENV_RESOLV_CONF: &str = "SWARMKIT_RESOLV_CONF";

/// What the node is, as far as its network namespace goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeNs {
    /// A namespace of the cluster's own, named after the node (the netns backend): it goes
    /// with the cluster. The default.
    #[default]
    Named,
    /// The machine itself, a VM guest the project made.
    Guest,
    /// Someone's host (the ssh backend): its namespace also holds its owner's state and other
    /// clusters'.
    Host,
}

impl NodeNs {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeNs::Named => "netns",
            NodeNs::Guest => "self",
            NodeNs::Host => "host",
        }
    }

    /// The variable and value that tell an agent this.
    pub fn as_env(self) -> (&'static str, String) {
        (ENV_NODE_NS, self.as_str().to_string())
    }

    /// Whether the node's namespace is a whole machine's, which outlives the cluster: what the
    /// agent changes there is journaled, for `cluster down` to undo.
    pub fn is_machine(self) -> bool {
        self != NodeNs::Named
    }
}

impl std::str::FromStr for NodeNs {
    type Err = String;
    fn from_str(s: &str) -> Result<NodeNs, String> {
        [NodeNs::Named, NodeNs::Guest, NodeNs::Host]
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                "expected netns (a namespace named after the node), self (a guest) or host (an ssh host)"
                    .to_string()
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0} is not set: the backend that starts the agent sets it (was it started by hand?)")]
    MissingEnv(&'static str),
    #[error("{var}={value:?} is invalid: {why}")]
    BadEnv {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "this kernel does not pass bridged packets to conntrack (no /proc/sys/net/bridge): \
         IPVS balances VIPs in each network's sandbox, which then needs br_netfilter; load it \
         with `modprobe br_netfilter`, or balance with nftables (--lb nftables)"
    )]
    NoBridgeNetfilter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The node's underlay address: its VXLAN tunnel endpoint.
    pub vtep: Ipv4Addr,
    pub driver: Driver,
    pub mesh: MeshLayout,
    pub node_ns: NodeNs,
    /// Where to reach the manager over TCP (None: the cluster's unix socket).
    pub manager_tcp: Option<String>,
    /// Where the node's resolvers are listed.
    pub resolv_conf: std::path::PathBuf,
}

impl Config {
    pub fn from_env() -> Result<Config, AgentError> {
        parse(
            |k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            netcore::lb::probe,
        )
    }
}

/// The configuration from `get` (an unset or empty variable is None); `probe` asks the
/// kernel for a load balancer when none is given.
fn parse(
    get: impl Fn(&'static str) -> Option<String>,
    probe: impl FnOnce() -> Driver,
) -> Result<Config, AgentError> {
    let bad = |var, value: String, why: String| AgentError::BadEnv { var, value, why };
    let addr = get(ENV_NODE_ADDR).ok_or(AgentError::MissingEnv(ENV_NODE_ADDR))?;
    let vtep = addr
        .parse()
        .map_err(|_| bad(ENV_NODE_ADDR, addr.clone(), "not an IPv4 address".into()))?;
    let driver = match get(ENV_LB) {
        Some(d) => d
            .parse()
            .map_err(|e| bad(ENV_LB, d.clone(), format!("{e}")))?,
        None => probe(),
    };
    let mesh = match get(ENV_MESH) {
        Some(m) => m.parse().map_err(|e: String| bad(ENV_MESH, m.clone(), e))?,
        None => MeshLayout::Sandbox,
    };
    // Balancing in the node is what makes `ipvsadm -Ln` on the node show the mesh; with the
    // nftables driver nothing is gained by leaving Docker's layout.
    let mesh = if driver == Driver::Ipvs {
        mesh
    } else {
        MeshLayout::Sandbox
    };
    let node_ns = match get(ENV_NODE_NS) {
        Some(n) => n
            .parse()
            .map_err(|e: String| bad(ENV_NODE_NS, n.clone(), e))?,
        None => NodeNs::Named,
    };
    Ok(Config {
        vtep,
        driver,
        mesh,
        node_ns,
        manager_tcp: get(ENV_MANAGER_TCP),
        resolv_conf: get(ENV_RESOLV_CONF)
            .unwrap_or_else(|| netcore::dns::HOST_RESOLV_CONF.to_string())
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&'static str, &str)]) -> Result<Config, AgentError> {
        let vars: Vec<(&'static str, String)> =
            vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        parse(
            |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
            || Driver::Nftables,
        )
    }

    #[test]
    fn each_bad_variable_is_named() {
        assert!(matches!(
            from(&[]),
            Err(AgentError::MissingEnv(ENV_NODE_ADDR))
        ));
        assert!(matches!(
            from(&[(ENV_NODE_ADDR, "node1")]),
            Err(AgentError::BadEnv {
                var: ENV_NODE_ADDR,
                ..
            })
        ));
        assert!(matches!(
            from(&[(ENV_NODE_ADDR, "192.168.0.11"), (ENV_LB, "iptables")]),
            Err(AgentError::BadEnv { var: ENV_LB, .. })
        ));
        assert!(matches!(
            from(&[(ENV_NODE_ADDR, "192.168.0.11"), (ENV_MESH, "host")]),
            Err(AgentError::BadEnv { var: ENV_MESH, .. })
        ));
        assert!(matches!(
            from(&[(ENV_NODE_ADDR, "192.168.0.11"), (ENV_NODE_NS, "guest")]),
            Err(AgentError::BadEnv {
                var: ENV_NODE_NS,
                ..
            })
        ));
    }

    #[test]
    fn the_node_namespace_reads_back_what_a_backend_writes() {
        let addr = (ENV_NODE_ADDR, "192.168.0.11");
        assert_eq!(from(&[addr]).unwrap().node_ns, NodeNs::Named);
        for ns in [NodeNs::Named, NodeNs::Guest, NodeNs::Host] {
            let (var, value) = ns.as_env();
            assert_eq!(from(&[addr, (var, &value)]).unwrap().node_ns, ns);
        }
        assert!(!NodeNs::Named.is_machine());
        assert!(NodeNs::Guest.is_machine() && NodeNs::Host.is_machine());
    }

    #[test]
    fn the_node_layout_needs_ipvs_and_the_kernel_decides_when_unset() {
        let ipvs_node = from(&[
            (ENV_NODE_ADDR, "192.168.0.11"),
            (ENV_LB, "ipvs"),
            (ENV_MESH, "node"),
        ])
        .unwrap();
        assert_eq!(ipvs_node.mesh, MeshLayout::Node);
        let probed = from(&[(ENV_NODE_ADDR, "192.168.0.11"), (ENV_MESH, "node")]).unwrap();
        assert_eq!(probed.driver, Driver::Nftables);
        assert_eq!(probed.mesh, MeshLayout::Sandbox);
        assert_eq!(probed.vtep, Ipv4Addr::new(192, 168, 0, 11));
    }
}
