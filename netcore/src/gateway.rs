//! The node's `docker_gwbridge`, as Docker builds it: a bridge in the node's namespace
//! (172.18.0.1/16) where every task on a non-internal overlay has a leg with its default
//! route, masqueraded when it leaves the node, so a task reaches what the node reaches. The
//! ingress sandbox has its leg there too (172.18.0.2), and host-mode published ports go to a
//! task's leg. As on Docker's gwbridge (`enable_icc=false`), legs do not talk to each other
//! across the bridge (isolated bridge ports: frames between legs are dropped in the bridge,
//! while the node's own and routed traffic, the mesh's hairpin included, pass): tasks meet on
//! their overlays.
//!
//! The masquerade lives in a table named by the caller (the node's namespace may be shared),
//! written whole; the bridge is noted in the journal where the namespace is not ours, for
//! `cluster down` to remove.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::Ipv4Net;

use crate::journal::{Journal, JournalError};
use crate::link::{LinkError, Links};
use crate::netns::{NetNs, NetNsError};
use crate::nft::{NftError, apply_nft};

pub const BRIDGE: &str = "docker_gwbridge";
/// Legs per bridge: a Linux bridge takes at most 1024 ports (BR_MAX_PORTS), which would cap
/// a node at about a thousand tasks, as it does Docker's. The legs' addresses are split into
/// blocks of this size (a /23); the first block's legs hang off [`BRIDGE`], block k's off
/// `docker_gwb<k>`, made when its first leg comes (see [`bridge_of`]).
const BLOCK: u32 = 512;
const BLOCK_PREFIX_LEN: u8 = 23;
/// The bridge's own address: every leg's default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const PREFIX_LEN: u8 = 16;
const MTU: u32 = crate::underlay::UNDERLAY_MTU;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error(
        "the node already has a {BRIDGE} that swarmkit did not make (Docker's own?); a \
         cluster's tasks cannot share it. Remove it (ip link del {BRIDGE}) or use a host \
         without Docker"
    )]
    NotOurs,
}

/// The gateway subnet, 172.18.0.0/16.
pub fn subnet() -> Ipv4Net {
    Ipv4Net::new(GATEWAY, PREFIX_LEN).expect("a /16").trunc()
}

/// The bridge the leg with address `host` hangs off.
pub fn bridge_of(host: Ipv4Addr) -> String {
    match block_of(host) {
        0 => BRIDGE.to_string(),
        k => format!("docker_gwb{k}"),
    }
}

fn block_of(host: Ipv4Addr) -> u32 {
    (u32::from(host) - u32::from(subnet().network())) / BLOCK
}

/// The address `host` of the gateway subnet with its prefix, for a leg.
pub fn leg_addr(host: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(host, PREFIX_LEN).expect("a /16")
}

pub struct Gateway {
    node: NetNs,
    table: String,
    /// Where the bridge and the table are noted, in a namespace not ours.
    journal: Option<Arc<Journal>>,
    /// Keep bridged frames out of the IP hooks in the node's namespace (see
    /// [`Gateway::without_bridge_netfilter`]).
    no_bridge_netfilter: bool,
    ready: AtomicBool,
    /// The blocks past the first whose bridge is made (see [`BLOCK`]).
    blocks: tokio::sync::Mutex<std::collections::BTreeSet<u32>>,
}

/// The table: masquerade for the subnet's traffic that leaves by any other interface.
pub fn ruleset(table: &str) -> String {
    let subnet = subnet();
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr {subnet} oifname != \"docker_gwb*\" masquerade\n  }}\n}}\n"
    )
}

impl Gateway {
    pub fn new(node: NetNs, table: &str, journal: Option<Arc<Journal>>) -> Self {
        Gateway {
            node,
            table: table.to_string(),
            journal,
            no_bridge_netfilter: false,
            ready: AtomicBool::new(false),
            blocks: Default::default(),
        }
    }

    /// Turns bridge netfilter off in the node's namespace (a namespace of the project's
    /// alone: the setting is the namespace's, not the bridge's). Where the node's own IPVS
    /// balances the mesh through the ingress sandbox's leg, replies entering the bridge would
    /// otherwise meet the IP hooks twice, once as bridged frames, and the hairpinned
    /// connections of the node's own clients stall. The bridge needs none of it: its legs are
    /// kept apart by isolated ports, not by rules.
    pub fn without_bridge_netfilter(mut self, yes: bool) -> Self {
        self.no_bridge_netfilter = yes;
        self
    }

    /// Makes the bridge with its address, forwarding on, and the table; a no-op once done.
    /// What a restarted agent finds already right is left as it is.
    pub async fn ensure(&self) -> Result<(), GatewayError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let links = Links::new(&self.node)?;
        let index = match links.index_of(BRIDGE).await? {
            Some(index) => {
                if self.journal.as_ref().is_some_and(|j| !j.has_link(BRIDGE)) {
                    return Err(GatewayError::NotOurs);
                }
                index
            }
            None => {
                if let Some(j) = &self.journal {
                    j.link(BRIDGE)?;
                }
                links.create_bridge(BRIDGE, MTU).await?;
                links.require(BRIDGE).await?
            }
        };
        links.add_addr(index, leg_addr(GATEWAY)).await?;
        links.set_up(index).await?;
        let mut sysctls = vec![("net/ipv4/ip_forward", "1")];
        if self.no_bridge_netfilter {
            sysctls.push(("net/bridge/bridge-nf-call-iptables", "0"));
        }
        for (key, value) in sysctls {
            match &self.journal {
                Some(j) => j.set_sysctl(&self.node, key, value)?,
                None => self.node.set_sysctl(key, value)?,
            }
        }
        if let Some(j) = &self.journal {
            j.table(&self.table)?;
        }
        apply_nft(&self.node, &ruleset(&self.table))?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes the bridge of `host`'s block past the first: the gateway's address as a /32 (it
    /// answers its legs' ARP for their default gateway) and the block's route, more specific
    /// than the subnet's on [`BRIDGE`]. Legs on different bridges are as apart as isolated
    /// ports on one.
    async fn ensure_block(&self, host: Ipv4Addr) -> Result<(), GatewayError> {
        let block = block_of(host);
        let mut made = self.blocks.lock().await;
        if made.contains(&block) {
            return Ok(());
        }
        let name = bridge_of(host);
        let links = Links::new(&self.node)?;
        let index = match links.index_of(&name).await? {
            Some(index) => index,
            None => {
                if let Some(j) = &self.journal {
                    j.link(&name)?;
                }
                links.create_bridge(&name, MTU).await?;
                links.require(&name).await?
            }
        };
        links.add_addr(index, Ipv4Net::from(GATEWAY)).await?;
        links.set_up(index).await?;
        let first = u32::from(subnet().network()) + block * BLOCK;
        let range = Ipv4Net::new(Ipv4Addr::from(first), BLOCK_PREFIX_LEN).expect("a /23");
        links.add_route_dev(range, index).await?;
        made.insert(block);
        Ok(())
    }

    /// Gives `ns` a leg named `ifname` with `addr` (of the gateway subnet), its bridge port
    /// named `port` in the node; with `default_route`, the namespace's default route goes
    /// through the gateway. Present already is fine.
    pub async fn plug(
        &self,
        ns: &NetNs,
        port: &str,
        ifname: &str,
        addr: Ipv4Addr,
        default_route: bool,
    ) -> Result<(), GatewayError> {
        self.ensure().await?;
        let bridge = bridge_of(addr);
        if block_of(addr) > 0 {
            self.ensure_block(addr).await?;
        }
        crate::underlay::plug(&self.node, &bridge, port, ns, ifname, leg_addr(addr)).await?;
        let links = Links::new(&self.node)?;
        links.set_isolated(links.require(port).await?).await?;
        if default_route {
            Links::new(ns)?.add_default_route(GATEWAY).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_the_subnet_leaving() {
        let r = ruleset("swarmkit_c_gateway");
        assert!(r.contains("delete table ip swarmkit_c_gateway"), "{r}");
        assert!(
            r.contains("ip saddr 172.18.0.0/16 oifname != \"docker_gwb*\" masquerade"),
            "{r}"
        );
    }

    /// In a scratch namespace: the bridge, its address, forwarding and the table appear; a
    /// leg gets its address and default route; a second `ensure` by a fresh Gateway (a
    /// restarted agent) changes nothing and fails nothing.
    #[tokio::test]
    async fn legs_hang_off_the_bridge_with_their_default_route() {
        testkit::require_root!();
        let nss = testkit::netns::Namespaces::new("gateway");
        let node = NetNs::create(&nss.name("node")).unwrap();
        let task = NetNs::create(&nss.name("task")).unwrap();
        let gw = Gateway::new(node.clone(), "sktest_gw", None);
        gw.plug(&task, "gwtest0", "eth1", Ipv4Addr::new(172, 18, 0, 3), true)
            .await
            .unwrap();
        Gateway::new(node.clone(), "sktest_gw", None)
            .ensure()
            .await
            .unwrap();
        let links = Links::new(&node).unwrap();
        let bridge = links.require(BRIDGE).await.unwrap();
        assert_eq!(links.addresses(bridge).await.unwrap(), [leg_addr(GATEWAY)]);
        assert_eq!(node.sysctl("net/ipv4/ip_forward").unwrap(), "1");
        let tables = crate::nft::run_nft(&node, &["list", "tables"], None).unwrap();
        assert!(tables.contains("sktest_gw"), "{tables}");
        let t = Links::new(&task).unwrap();
        let leg = t.require("eth1").await.unwrap();
        assert_eq!(
            t.addresses(leg).await.unwrap(),
            [leg_addr(Ipv4Addr::new(172, 18, 0, 3))]
        );
        let routes = task
            .run(|| {
                std::process::Command::new("ip")
                    .args(["-4", "route"])
                    .output()
            })
            .unwrap()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(
            routes.contains("default via 172.18.0.1 dev eth1"),
            "{routes}"
        );

        // A second leg reaches the gateway but not the first leg (isolated ports).
        let other = NetNs::create(&nss.name("other")).unwrap();
        gw.plug(
            &other,
            "gwtest1",
            "eth1",
            Ipv4Addr::new(172, 18, 0, 4),
            true,
        )
        .await
        .unwrap();
        let listen = |ns: &NetNs, addr: &str| {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            ns.run(move || std::net::TcpListener::bind(addr).unwrap())
                .unwrap()
        };
        let _gateway = listen(&node, "172.18.0.1:7000");
        let _first = listen(&task, "172.18.0.3:7000");
        let reaches = |to: &str| {
            let to: std::net::SocketAddr = to.parse().unwrap();
            other
                .run(move || {
                    std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1))
                        .is_ok()
                })
                .unwrap()
        };
        assert!(reaches("172.18.0.1:7000"), "the gateway");
        assert!(
            !reaches("172.18.0.3:7000"),
            "another leg, across the bridge"
        );
    }

    /// A leg past the first block hangs off a bridge of its own (one bridge cannot take more
    /// than 1024 ports) and still reaches the gateway and the node reaches it back; a leg
    /// on the first bridge does not reach it.
    #[tokio::test]
    async fn legs_past_the_first_block_get_a_bridge_of_their_own() {
        testkit::require_root!();
        let nss = testkit::netns::Namespaces::new("gwblock");
        let node = NetNs::create(&nss.name("node")).unwrap();
        let first = NetNs::create(&nss.name("first")).unwrap();
        let far = NetNs::create(&nss.name("far")).unwrap();
        let gw = Gateway::new(node.clone(), "sktest_gwb", None);
        let far_addr = Ipv4Addr::new(172, 18, 2, 9);
        assert_eq!(bridge_of(Ipv4Addr::new(172, 18, 1, 255)), BRIDGE);
        assert_eq!(bridge_of(far_addr), "docker_gwb1");
        assert_eq!(bridge_of(Ipv4Addr::new(172, 18, 255, 253)), "docker_gwb127");
        gw.plug(&first, "gwb0", "eth1", Ipv4Addr::new(172, 18, 0, 3), true)
            .await
            .unwrap();
        gw.plug(&far, "gwb1", "eth1", far_addr, true).await.unwrap();
        // Made once: a second leg in the block finds it.
        let again = NetNs::create(&nss.name("again")).unwrap();
        gw.plug(&again, "gwb2", "eth1", Ipv4Addr::new(172, 18, 3, 1), true)
            .await
            .unwrap();
        let links = Links::new(&node).unwrap();
        let bridge = links.require("docker_gwb1").await.unwrap();
        assert_eq!(
            links.addresses(bridge).await.unwrap(),
            [Ipv4Net::from(GATEWAY)]
        );
        let listen = |ns: &NetNs, addr: std::net::SocketAddr| {
            ns.run(move || std::net::TcpListener::bind(addr).unwrap())
                .unwrap()
        };
        let connects = |from: &NetNs, to: std::net::SocketAddr| {
            from.run(move || {
                std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1)).is_ok()
            })
            .unwrap()
        };
        let _gateway = listen(&node, "172.18.0.1:7000".parse().unwrap());
        let far_port = std::net::SocketAddr::from((far_addr, 7000));
        let _far = listen(&far, far_port);
        assert!(
            connects(&far, "172.18.0.1:7000".parse().unwrap()),
            "the gateway"
        );
        assert!(connects(&node, far_port), "the node reaches the leg");
        assert!(!connects(&first, far_port), "a leg on another bridge");
    }
}
