//! Host-mode published ports: a port on one node that goes straight to the task running
//! there, keeping the client's source address (the routing mesh cannot; see moby#25526).
//! One small table per node, named by the caller (the node's namespace may be shared),
//! rewritten as a whole in one atomic batch whenever the set changes (a node has few
//! host-mode ports).

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::journal::Journal;
use crate::lb::{LbError, Protocol};
use crate::netns::NetNs;
use crate::nft::apply_nft;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub proto: Protocol,
    pub port: u16,
    /// The task's address on its link to the node, and the port it listens on.
    pub addr: Ipv4Addr,
    pub target: u16,
}

pub struct HostPorts {
    node: NetNs,
    table: String,
    /// Where the table is noted, in a namespace not ours.
    journal: Option<Arc<Journal>>,
    applied: Option<Vec<HostPort>>,
}

/// The whole table for `ports`: DNAT for traffic arriving at or generated on the node for one
/// of its own addresses (127.0.0.1 included), and masquerade only for loopback sources, which
/// cannot leave the node; everything else keeps its source address. The loopback traffic
/// needs route_localnet on the task's link (the agent sets it there, never on `all`), and
/// the table drops packets for 127.0.0.0/8 arriving from anywhere but `lo`.
pub fn ruleset(table: &str, ports: &[HostPort]) -> String {
    let mut rules = String::new();
    for p in ports {
        let _ = writeln!(
            rules,
            "    fib daddr type local {} dport {} dnat to {}:{}",
            p.proto.as_str(),
            p.port,
            p.addr,
            p.target
        );
    }
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  \
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  \
         chain output {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr 127.0.0.0/8 ct status dnat masquerade\n  }}\n  {guard}\n}}\n",
        guard = crate::ingress::LOOPBACK_GUARD,
    )
}

impl HostPorts {
    pub fn new(node: NetNs, table: &str, journal: Option<Arc<Journal>>) -> Self {
        HostPorts {
            node,
            table: table.to_string(),
            journal,
            applied: None,
        }
    }

    pub fn apply(&mut self, ports: &[HostPort]) -> Result<(), LbError> {
        let mut ports = ports.to_vec();
        ports.sort();
        if self.applied.as_ref() == Some(&ports) {
            return Ok(());
        }
        if ports.is_empty() && self.applied.is_none() {
            self.applied = Some(ports);
            return Ok(());
        }
        if let Some(j) = &self.journal {
            j.table(&self.table)?;
        }
        apply_nft(&self.node, &ruleset(&self.table, &ports))?;
        self.applied = Some(ports);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_one_dnat_per_port_in_both_hooks() {
        let r = ruleset(
            "swarmkit_c_hostports",
            &[HostPort {
                proto: Protocol::Tcp,
                port: 8080,
                addr: "172.19.0.2".parse().unwrap(),
                target: 80,
            }],
        );
        assert_eq!(r.matches("tcp dport 8080 dnat to 172.19.0.2:80").count(), 2);
        assert!(r.contains("delete table ip swarmkit_c_hostports"));
        assert!(
            r.contains("iifname != \"lo\" ip daddr 127.0.0.0/8 drop"),
            "{r}"
        );
    }
}
