//! What the agent is told by the environment its backend starts it with, read and checked once
//! before anything is changed on the node.

use std::net::Ipv4Addr;

use netcore::ingress::MeshLayout;
use netcore::lb::Driver;

use super::{ENV_LB, ENV_MESH, ENV_NODE_ADDR};

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
         VIPs are balanced in each network's sandbox, which needs br_netfilter; load it with \
         `modprobe br_netfilter`"
    )]
    NoBridgeNetfilter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The node's underlay address: its VXLAN tunnel endpoint.
    pub vtep: Ipv4Addr,
    pub driver: Driver,
    pub mesh: MeshLayout,
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
    Ok(Config { vtep, driver, mesh })
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
