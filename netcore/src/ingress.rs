//! The node half of the routing mesh: every published port answers on the node's own
//! addresses and on localhost. Two layouts, chosen per node (`MeshLayout`):
//!
//! **Sandbox** (Docker's): the node DNATs published ports to the ingress sandbox, where the
//! load balancer's `Frontend::Port` picks a task. Table `ip <ingress table>` in the node:
//!
//! ```text
//! set published { inet_proto . inet_service }
//! chain prerouting  nat/prerouting  fib daddr type local meta l4proto . th dport @published dnat to SANDBOX
//! chain output      nat/output      fib daddr type local meta l4proto . th dport @published dnat to SANDBOX
//! chain postrouting nat/postrouting ip saddr 127.0.0.0/8 oifname GW masquerade
//! ```
//!
//! **Node**: the node's own IPVS picks the task (so `ipvsadm -Ln` on the node shows the mesh,
//! and its counters count every connection), and the sandbox is only the router into the
//! ingress network. The node keeps the output and postrouting chains above but not the
//! prerouting one. IPVS refuses to forward a packet whose source is loopback, so locally
//! generated traffic takes a hairpin: DNAT to the sandbox, which sends it straight back to the
//! node from `HAIRPIN`, an address nobody owns that the node routes to the sandbox. Table
//! `ip <mesh table>` in the sandbox (`SandboxRouter`):
//!
//! ```text
//! set published { inet_proto . inet_service }
//! chain prerouting  nat/prerouting  iifname GW ip daddr SANDBOX meta l4proto . th dport @published dnat to NODE
//! chain postrouting nat/postrouting oifname GW ip daddr NODE snat to HAIRPIN
//!                                   iifname GW oifname INGRESS masquerade
//! ```
//!
//! Localhost works without Docker's userland proxy: route_localnet lets a 127.0.0.1-sourced
//! packet be routed out after DNAT, and the masquerade gives it an address the sandbox can
//! answer.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use nftables::expr::{Expression, MetaKey, NamedExpression, Prefix};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::Statement;
use nftables::types::NfHook;

use crate::journal::Journal;
use crate::lb::{LbError, Protocol};
use crate::netns::NetNs;
use crate::nft::NftBatch;
use crate::nft::expr::{
    dnat_to, eq, fib_daddr_type, ip, matches, meta, payload, pkt_proto_port, proto_port, s,
    set_ref, snat_to,
};

const PUBLISHED: &str = "published";

/// The rule route_localnet needs beside it, as text for tables written whole
/// (`hostport`): a packet for 127.0.0.0/8 that did not come from this host's own `lo` is
/// dropped before conntrack sees it (the replies of masqueraded loopback connections still
/// carry the masquerading address there, so they pass).
pub const LOOPBACK_GUARD: &str = "chain loopback_guard {\n    type filter hook prerouting priority raw; policy accept;\n    iifname != \"lo\" ip daddr 127.0.0.0/8 drop\n  }";

/// [`LOOPBACK_GUARD`] in a batch.
fn add_loopback_guard(b: &mut NftBatch) {
    b.add_base_chain(
        "loopback_guard",
        nftables::types::NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_RAW,
    );
    let loopback = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(ip(Ipv4Addr::new(127, 0, 0, 0))),
        len: 8,
    }));
    b.add_rule(
        "loopback_guard",
        vec![
            matches(
                meta(MetaKey::Iifname),
                nftables::stmt::Operator::NEQ,
                s("lo"),
            ),
            eq(payload("ip", "daddr"), loopback),
            Statement::Drop(None),
        ],
    );
}

/// nftables' `raw` priority: before conntrack (-200) and NAT.
const PRIO_RAW: i32 = -300;

/// Where the routing mesh balances a node's published ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshLayout {
    /// In the ingress sandbox, as Docker does. For nodes whose namespace is not the project's
    /// alone: a netns node shares the host's kernel, an ssh node is the user's own host.
    #[default]
    Sandbox,
    /// In the node's own namespace, with IPVS; for nodes the project owns whole (QEMU guests).
    Node,
}

impl std::fmt::Display for MeshLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshLayout::Sandbox => "sandbox",
            MeshLayout::Node => "node",
        })
    }
}

impl std::str::FromStr for MeshLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sandbox" => Ok(MeshLayout::Sandbox),
            "node" => Ok(MeshLayout::Node),
            other => Err(format!(
                "unknown mesh layout {other:?} (expected \"sandbox\" or \"node\")"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedPort {
    pub proto: Protocol,
    pub port: u16,
}

/// An nft table whose only changing part is its `published` set, delta-applied in one
/// namespace: the first apply (or the one after a failure) builds the whole table atomically.
struct PublishedTable {
    ns: NetNs,
    /// The caller's name for it: a namespace may hold tables of several clusters.
    name: String,
    /// Set before the table is first built (and again after a failed apply).
    sysctls: Vec<(String, &'static str)>,
    /// Sysctls of links the caller created: set like `sysctls` but never journaled, since
    /// they go with their link.
    link_sysctls: Vec<(String, &'static str)>,
    /// Where the table and the sysctls' old values are noted, in a namespace not ours.
    journal: Option<Arc<Journal>>,
    applied: Option<BTreeSet<PublishedPort>>,
    last_commands: usize,
}

impl PublishedTable {
    fn new(
        ns: NetNs,
        name: &str,
        sysctls: Vec<(String, &'static str)>,
        link_sysctls: Vec<(String, &'static str)>,
    ) -> Self {
        PublishedTable {
            ns,
            name: name.to_string(),
            sysctls,
            link_sysctls,
            journal: None,
            applied: None,
            last_commands: 0,
        }
    }

    /// The batch that takes the set from what was applied last to `ports`; with nothing
    /// applied yet, `skeleton` adds the table's chains after the set.
    fn plan(&self, ports: &[PublishedPort], skeleton: impl FnOnce(&mut NftBatch)) -> NftBatch {
        let want: BTreeSet<PublishedPort> = ports.iter().copied().collect();
        let mut b = NftBatch::new(&self.name);
        let empty = BTreeSet::new();
        let have = match &self.applied {
            Some(have) => have,
            None => {
                b.recreate_table();
                b.add_set(
                    PUBLISHED,
                    SetTypeValue::Concatenated(
                        vec![SetType::InetProto, SetType::InetService].into(),
                    ),
                );
                skeleton(&mut b);
                &empty
            }
        };
        for p in have.difference(&want) {
            b.delete_element_expr(PUBLISHED, proto_port(p.proto.as_str(), p.port));
        }
        for p in want.difference(have) {
            b.add_element_expr(PUBLISHED, proto_port(p.proto.as_str(), p.port));
        }
        b
    }

    fn commit(&mut self, batch: &NftBatch, ports: &[PublishedPort]) -> Result<(), LbError> {
        if self.applied.is_none() {
            match &self.journal {
                Some(j) => {
                    j.table(&self.name)?;
                    for (key, value) in &self.sysctls {
                        j.set_sysctl(&self.ns, key, value)?;
                    }
                }
                None => {
                    for (key, value) in &self.sysctls {
                        self.ns.set_sysctl(key, value)?;
                    }
                }
            }
            for (key, value) in &self.link_sysctls {
                self.ns.set_sysctl(key, value)?;
            }
        }
        if let Err(e) = batch.run(&self.ns) {
            // Rebuild the whole (atomic) table next time rather than retry a stale delta.
            self.applied = None;
            return Err(e.into());
        }
        self.last_commands = batch.len();
        self.applied = Some(ports.iter().copied().collect());
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), LbError> {
        let mut b = NftBatch::new(&self.name);
        b.delete_table();
        b.run(&self.ns)?;
        self.applied = None;
        self.last_commands = b.len();
        Ok(())
    }
}

/// Every published port answers on the node's own addresses and on localhost: OUTPUT
/// (locally generated, including to 127.0.0.1) and, in the sandbox layout, PREROUTING
/// `fib daddr type local` DNAT proto/port -> sandbox_addr:port; POSTROUTING masquerade when
/// the source is 127.0.0.0/8 and the packet leaves via gw_ifname. Sets ip_forward=1 in the
/// node namespace and route_localnet=1 on gw_ifname only, never on `all`: with it on every
/// interface, a neighbour could reach the node's loopback services by sending to 127.0.0.1
/// (kube-proxy's CVE-2020-8558); a raw-priority rule also drops any packet for 127.0.0.0/8
/// that arrives on an interface other than `lo`. Delta-applied like the load balancer.
pub struct NodeIngress {
    table: PublishedTable,
    sandbox_addr: Ipv4Addr,
    gw_ifname: String,
    layout: MeshLayout,
}

impl NodeIngress {
    /// `table` names the node's table; give a name of the caller's own (the node's namespace
    /// may be shared).
    pub fn new(
        node: NetNs,
        table: &str,
        sandbox_addr: Ipv4Addr,
        gw_ifname: &str,
        layout: MeshLayout,
    ) -> Self {
        NodeIngress {
            table: PublishedTable::new(
                node,
                table,
                vec![("net/ipv4/ip_forward".into(), "1")],
                vec![(format!("net/ipv4/conf/{gw_ifname}/route_localnet"), "1")],
            ),
            sandbox_addr,
            gw_ifname: gw_ifname.to_string(),
            layout,
        }
    }

    /// Notes the table and the sysctls' old values in `journal` before changing them (for a
    /// namespace the project does not own).
    pub fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        self.table.journal = journal;
        self
    }

    /// The batch that takes the node from what was applied last to `ports`.
    pub fn plan(&self, ports: &[PublishedPort]) -> NftBatch {
        self.table.plan(ports, |b| self.create_skeleton(b))
    }

    fn create_skeleton(&self, b: &mut NftBatch) {
        let to_sandbox = || {
            vec![
                eq(fib_daddr_type(), s("local")),
                eq(pkt_proto_port(), set_ref(PUBLISHED)),
                dnat_to(self.sandbox_addr),
            ]
        };
        // In the node layout, traffic from outside stays here for the node's IPVS.
        if self.layout == MeshLayout::Sandbox {
            b.add_nat_chain("prerouting", NfHook::Prerouting);
            b.add_rule("prerouting", to_sandbox());
        }
        b.add_nat_chain("output", NfHook::Output);
        b.add_rule("output", to_sandbox());
        add_loopback_guard(b);
        b.add_nat_chain("postrouting", NfHook::Postrouting);
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
        self.table.commit(&batch, ports)
    }

    pub fn teardown(&mut self) -> Result<(), LbError> {
        self.table.teardown()
    }

    /// How many nft commands the last `apply` sent (0: nothing changed, no batch).
    pub fn last_apply_commands(&self) -> usize {
        self.table.last_commands
    }
}

/// The sandbox's side of the node layout: it routes the node's IPVS traffic into the ingress
/// network (masquerading it, so tasks on any node answer through here) and bounces the
/// node's own published-port traffic back to it from `hairpin`. The node must route the
/// ingress subnet and `hairpin` via the sandbox. Delta-applied like `NodeIngress`.
pub struct SandboxRouter {
    table: PublishedTable,
    addrs: RouterAddrs,
}

/// Addresses and interface names of the link between a node and its ingress sandbox.
#[derive(Clone, Debug)]
pub struct RouterAddrs {
    /// The node's end of the link.
    pub node: Ipv4Addr,
    /// The sandbox's end of the link.
    pub sandbox: Ipv4Addr,
    /// Source of hairpinned traffic: owned by neither end, routed by the node to the sandbox.
    pub hairpin: Ipv4Addr,
    /// The sandbox's interface towards the node.
    pub gw_ifname: String,
    /// The sandbox's interface on the ingress network.
    pub ingress_ifname: String,
}

impl SandboxRouter {
    pub fn new(sandbox: NetNs, table: &str, addrs: RouterAddrs) -> Self {
        SandboxRouter {
            // The hairpin leaves by the interface it came in on; that is intended, not a
            // better route to tell the node about.
            table: PublishedTable::new(
                sandbox,
                table,
                vec![
                    ("net/ipv4/ip_forward".into(), "1"),
                    ("net/ipv4/conf/all/send_redirects".into(), "0"),
                    (
                        format!("net/ipv4/conf/{}/send_redirects", addrs.gw_ifname),
                        "0",
                    ),
                ],
                Vec::new(),
            ),
            addrs,
        }
    }

    pub fn plan(&self, ports: &[PublishedPort]) -> NftBatch {
        self.table.plan(ports, |b| self.create_skeleton(b))
    }

    fn create_skeleton(&self, b: &mut NftBatch) {
        let a = &self.addrs;
        b.add_nat_chain("prerouting", NfHook::Prerouting);
        b.add_rule(
            "prerouting",
            vec![
                eq(meta(MetaKey::Iifname), s(&a.gw_ifname)),
                eq(payload("ip", "daddr"), ip(a.sandbox)),
                eq(pkt_proto_port(), set_ref(PUBLISHED)),
                dnat_to(a.node),
            ],
        );
        b.add_nat_chain("postrouting", NfHook::Postrouting);
        // Only hairpinned connections are new ones going back to the node.
        b.add_rule(
            "postrouting",
            vec![
                eq(meta(MetaKey::Oifname), s(&a.gw_ifname)),
                eq(payload("ip", "daddr"), ip(a.node)),
                snat_to(a.hairpin),
            ],
        );
        b.add_rule(
            "postrouting",
            vec![
                eq(meta(MetaKey::Iifname), s(&a.gw_ifname)),
                eq(meta(MetaKey::Oifname), s(&a.ingress_ifname)),
                Statement::Masquerade(None),
            ],
        );
    }

    pub fn apply(&mut self, ports: &[PublishedPort]) -> Result<(), LbError> {
        let batch = self.plan(ports);
        self.table.commit(&batch, ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_only_touches_changed_ports() {
        let mut ing = NodeIngress::new(
            NetNs::of_pid(std::process::id()).unwrap(),
            "swarmkit_c_ingress",
            Ipv4Addr::new(172, 18, 0, 2),
            "gw0",
            MeshLayout::Sandbox,
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

        ing.table.applied = Some(
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
    fn tcp(port: u16) -> PublishedPort {
        PublishedPort {
            proto: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn node_layout_leaves_traffic_from_outside_to_the_node() {
        let ing = NodeIngress::new(
            NetNs::of_pid(std::process::id()).unwrap(),
            "swarmkit_c_ingress",
            Ipv4Addr::new(172, 18, 0, 2),
            "gw0",
            MeshLayout::Node,
        );
        let json = ing.plan(&[tcp(80)]).to_json().unwrap();
        // No NAT chain on prerouting; only the loopback guard hooks there.
        assert!(!json.contains(r#""name":"prerouting""#), "{json}");
        assert_eq!(json.matches(r#""hook":"prerouting""#).count(), 1, "{json}");
        assert!(json.contains(r#""name":"loopback_guard""#), "{json}");
        assert!(json.contains(r#""hook":"output""#), "{json}");
        assert!(json.contains(r#""dnat":{"addr":"172.18.0.2"}"#), "{json}");
    }

    #[test]
    fn sandbox_router_hairpins_to_the_node_and_masquerades_into_ingress() {
        let mut router = SandboxRouter::new(
            NetNs::of_pid(std::process::id()).unwrap(),
            "swarmkit_c_mesh",
            RouterAddrs {
                node: Ipv4Addr::new(172, 18, 0, 1),
                sandbox: Ipv4Addr::new(172, 18, 0, 2),
                hairpin: Ipv4Addr::new(172, 18, 255, 254),
                gw_ifname: "eth1".into(),
                ingress_ifname: "eth0".into(),
            },
        );
        let json = router.plan(&[tcp(80)]).to_json().unwrap();
        assert!(json.contains(r#""table":"swarmkit_c_mesh""#), "{json}");
        assert!(json.contains(r#""dnat":{"addr":"172.18.0.1"}"#), "{json}");
        assert!(
            json.contains(r#""snat":{"addr":"172.18.255.254"}"#),
            "{json}"
        );
        assert!(json.contains(r#""masquerade""#), "{json}");

        router.table.applied = Some([tcp(80)].into());
        assert!(router.plan(&[tcp(80)]).is_empty());
        assert_eq!(router.plan(&[tcp(80), tcp(81)]).len(), 1);
    }
}
