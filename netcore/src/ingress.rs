//! The node half of the routing mesh: every published port answers on the node's own
//! addresses and on localhost by DNATing to the ingress sandbox, where the load balancer's
//! `Frontend::Port` picks a task. Always nftables, table `ip swarmkit-ingress` in the node
//! namespace.
//!
//! ```text
//! set published { inet_proto . inet_service }
//! chain prerouting  nat/prerouting  fib daddr type local meta l4proto . th dport @published dnat to SANDBOX
//! chain output      nat/output      fib daddr type local meta l4proto . th dport @published dnat to SANDBOX
//! chain postrouting nat/postrouting ip saddr 127.0.0.0/8 oifname GW masquerade
//! ```
//!
//! Localhost works without Docker's userland proxy: route_localnet lets a 127.0.0.1-sourced
//! packet be routed out after DNAT, and the masquerade gives it an address the sandbox can
//! answer.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression, Prefix};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{NAT, Statement};
use nftables::types::{NfChainType, NfHook};

use crate::lb::nftbatch::{
    NftBatch, PRIO_DSTNAT, PRIO_SRCNAT, eq, ip, meta, payload, pkt_proto_port, proto_port, s,
    set_ref,
};
use crate::lb::{LbError, Protocol};
use crate::netns::NetNs;

pub const TABLE: &str = "swarmkit-ingress";
const PUBLISHED: &str = "published";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedPort {
    pub proto: Protocol,
    pub port: u16,
}

/// Every published port answers on the node's own addresses and on localhost: PREROUTING
/// `fib daddr type local` + OUTPUT (locally generated, including to 127.0.0.1) DNAT
/// proto/port -> sandbox_addr:port; POSTROUTING masquerade when the source is 127.0.0.0/8 and
/// the packet leaves via gw_ifname. Sets route_localnet=1 and ip_forward=1 in the node
/// namespace. Delta-applied like the load balancer.
pub struct NodeIngress {
    node: NetNs,
    sandbox_addr: Ipv4Addr,
    gw_ifname: String,
    applied: Option<BTreeSet<PublishedPort>>,
    last_commands: usize,
}

impl NodeIngress {
    pub fn new(node: NetNs, sandbox_addr: Ipv4Addr, gw_ifname: &str) -> Self {
        NodeIngress {
            node,
            sandbox_addr,
            gw_ifname: gw_ifname.to_string(),
            applied: None,
            last_commands: 0,
        }
    }

    /// The batch that takes the node from what was applied last to `ports`.
    pub fn plan(&self, ports: &[PublishedPort]) -> NftBatch {
        let want: BTreeSet<PublishedPort> = ports.iter().copied().collect();
        let mut b = NftBatch::new(TABLE);
        let empty = BTreeSet::new();
        let have = match &self.applied {
            Some(have) => have,
            None => {
                self.create_skeleton(&mut b);
                &empty
            }
        };
        for p in have.difference(&want) {
            b.delete_element(PUBLISHED, proto_port(p.proto, p.port));
        }
        for p in want.difference(have) {
            b.add_element(PUBLISHED, proto_port(p.proto, p.port));
        }
        b
    }

    fn create_skeleton(&self, b: &mut NftBatch) {
        b.recreate_table();
        b.add_set(
            PUBLISHED,
            SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
        );
        let local = Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        }));
        let to_sandbox = || {
            vec![
                eq(local.clone(), s("local")),
                eq(pkt_proto_port(), set_ref(PUBLISHED)),
                Statement::DNAT(Some(NAT {
                    addr: Some(ip(self.sandbox_addr)),
                    family: None,
                    port: None,
                    flags: None,
                })),
            ]
        };
        b.add_base_chain(
            "prerouting",
            NfChainType::NAT,
            NfHook::Prerouting,
            PRIO_DSTNAT,
        );
        b.add_rule("prerouting", to_sandbox());
        b.add_base_chain("output", NfChainType::NAT, NfHook::Output, PRIO_DSTNAT);
        b.add_rule("output", to_sandbox());
        b.add_base_chain(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
        );
        let loopback = Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(ip(Ipv4Addr::new(127, 0, 0, 0))),
            len: 8,
        }));
        b.add_rule(
            "postrouting",
            vec![
                eq(payload("ip", "saddr"), loopback),
                eq(meta(MetaKey::Oifname), s(&self.gw_ifname)),
                Statement::Masquerade(None),
            ],
        );
    }

    pub fn apply(&mut self, ports: &[PublishedPort]) -> Result<(), LbError> {
        let batch = self.plan(ports);
        if self.applied.is_none() {
            self.node
                .set_sysctl("net/ipv4/conf/all/route_localnet", "1")?;
            self.node.set_sysctl("net/ipv4/ip_forward", "1")?;
        }
        if let Err(e) = batch.run(&self.node) {
            // Rebuild the whole (atomic) table next time rather than retry a stale delta.
            self.applied = None;
            return Err(e);
        }
        self.last_commands = batch.len();
        self.applied = Some(ports.iter().copied().collect());
        Ok(())
    }

    pub fn teardown(&mut self) -> Result<(), LbError> {
        let mut b = NftBatch::new(TABLE);
        b.delete_table();
        b.run(&self.node)?;
        self.applied = None;
        self.last_commands = b.len();
        Ok(())
    }

    /// How many nft commands the last `apply` sent (0: nothing changed, no batch).
    pub fn last_apply_commands(&self) -> usize {
        self.last_commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_only_touches_changed_ports() {
        let mut ing = NodeIngress::new(
            NetNs::of_pid(std::process::id()).unwrap(),
            Ipv4Addr::new(172, 18, 0, 2),
            "gw0",
        );
        let first = ing.plan(&[PublishedPort {
            proto: Protocol::Tcp,
            port: 80,
        }]);
        let json = first.to_json().unwrap();
        assert!(
            json.contains(r#""fib":{"flags":["daddr"],"result":"type"}"#),
            "{json}"
        );
        assert!(json.contains(r#""dnat":{"addr":"172.18.0.2"}"#), "{json}");

        ing.applied = Some(
            [PublishedPort {
                proto: Protocol::Tcp,
                port: 80,
            }]
            .into(),
        );
        assert!(
            ing.plan(&[PublishedPort {
                proto: Protocol::Tcp,
                port: 80
            }])
            .is_empty()
        );
        let swap = ing.plan(&[PublishedPort {
            proto: Protocol::Udp,
            port: 80,
        }]);
        assert_eq!(swap.len(), 2);
    }
}
