//! A small typed layer over rtnetlink: one method per kernel operation, every reply checked in
//! one place (`Links::call`). Creation methods are exclusive (the caller decides what an
//! existing object means); everything else is idempotent: adding what exists or deleting what
//! is gone is not an error, so reconcilers can simply re-apply. The neighbour and FDB
//! messages (`neigh`) are built and read apart from sending them.

use std::io;
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, InfoVxlan, LinkAttribute,
    LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    LinkVxlan, RouteMessageBuilder,
};

use crate::netns::{NetNs, NetNsError};

mod neigh;

pub use neigh::{FdbEntry, Neighbour, fmt_mac};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Namespace(#[from] NetNsError),
    #[error("netlink in {ns}: {op} {subject}: {source}")]
    Kernel {
        ns: String,
        op: &'static str,
        subject: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink in {ns}: {op} {subject}: connection to the kernel is closed")]
    Closed {
        ns: String,
        op: &'static str,
        subject: String,
    },
    #[error("no link named {name} in {ns}")]
    NoSuchLink { ns: String, name: String },
}

impl LinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, LinkError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A netlink route socket bound to one namespace.
#[derive(Clone)]
pub struct Links {
    handle: rtnetlink::Handle,
    ns: String,
}

impl Links {
    /// Opens a socket inside `ns`. Needs a running tokio runtime (the connection is spawned
    /// on it).
    pub fn new(ns: &NetNs) -> Result<Links> {
        Ok(Links {
            handle: ns.netlink()?,
            ns: ns.name().to_string(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Sends one request and collects its replies. The only place kernel replies are
    /// checked: an error code becomes `LinkError::Kernel` naming the operation.
    async fn call(
        &self,
        op: &'static str,
        subject: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let closed = || LinkError::Closed {
            ns: self.ns.clone(),
            op,
            subject: subject.to_string(),
        };
        let mut replies = self.handle.clone().request(req).map_err(|_| closed())?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(LinkError::Kernel {
                        ns: self.ns.clone(),
                        op,
                        subject: subject.to_string(),
                        source: e.to_io(),
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A change request whose listed errnos mean "already in the wanted state".
    async fn change(
        &self,
        op: &'static str,
        subject: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        benign: &[i32],
    ) -> Result<()> {
        match self.call(op, subject, msg, NLM_F_ACK | flags).await {
            Ok(_) => Ok(()),
            Err(e) if e.errno().is_some_and(|n| benign.contains(&n)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self
            .call("get link", name, RouteNetlinkMessage::GetLink(msg), 0)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn index_of(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.get_link(name).await?.map(|l| l.header.index))
    }

    /// Like `index_of`, but a missing link is an error.
    pub async fn require(&self, name: &str) -> Result<u32> {
        self.index_of(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchLink {
                ns: self.ns.clone(),
                name: name.to_string(),
            })
    }

    /// All link names in the namespace.
    pub async fn names(&self) -> Result<Vec<(u32, String)>> {
        let msg = LinkMessage::default();
        let replies = self
            .call(
                "list links",
                "",
                RouteNetlinkMessage::GetLink(msg),
                NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let name = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    Some((l.header.index, name))
                }
                _ => None,
            })
            .collect())
    }

    async fn set(&self, op: &'static str, subject: &str, msg: LinkMessage) -> Result<()> {
        self.change(op, subject, RouteNetlinkMessage::SetLink(msg), 0, &[])
            .await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set("set up", &format!("link #{index}"), msg).await
    }

    /// Brings a link up with no IPv6 address of its own (address generation off, set while it
    /// is still down), where its namespace's `disable_ipv6` default was never written: a task
    /// namespace touches no sysctl, because the kernel's lookup of `/proc/sys/net` from a
    /// namespace grows with every namespace that has looked it up before (see
    /// `NetNs::create_untouched`).
    pub async fn set_up_without_ipv6(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        match self
            .set("turn off IPv6 addresses", &format!("link #{index}"), msg)
            .await
        {
            // A kernel without IPv6 has none to turn off.
            Err(e) if e.errno() == Some(libc::EAFNOSUPPORT) => {}
            other => other?,
        }
        self.set_up(index).await
    }

    /// Brings a link up by name, without an index lookup (the kernel resolves IFLA_IFNAME).
    pub async fn set_up_by_name(&self, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.set("set up", name, msg).await
    }

    /// Takes a link down by name (the testbed cuts a node's underlay port this way).
    pub async fn set_down_by_name(&self, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).down().build();
        self.set("set down", name, msg).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set("set mtu", &format!("link #{index} to {mtu}"), msg)
            .await
    }

    /// Gives a link a fixed hardware address; a bridge given one no longer takes the lowest
    /// of its ports' addresses.
    pub async fn set_address(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set("set address", &format!("link #{index}"), msg)
            .await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.set("set master", &format!("link #{index} to #{master}"), msg)
            .await
    }

    /// Moves a link into another namespace; its index there may differ.
    pub async fn move_to_ns(&self, index: u32, target: &NetNs) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(target.raw_fd())
            .build();
        let subject = format!("link #{index} to {}", target.name());
        self.set("move", &subject, msg).await
    }

    /// Deletes a link; a link that is already gone is fine.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).build();
        let subject = format!("link #{index}");
        let gone = [libc::ENODEV, libc::ENOENT];
        self.change(
            "delete",
            &subject,
            RouteNetlinkMessage::DelLink(msg),
            0,
            &gone,
        )
        .await
    }

    async fn add_link(&self, op: &'static str, name: &str, msg: LinkMessage) -> Result<()> {
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.change(op, name, RouteNetlinkMessage::NewLink(msg), flags, &[])
            .await
    }

    /// Creates a bridge with the given MTU, up. Fails with EEXIST if it exists.
    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<()> {
        let msg = LinkBridge::new(name).mtu(mtu).up().build();
        self.add_link("create bridge", name, msg).await
    }

    /// Creates a veth pair. The peer is created directly inside `peer_ns` (when given), with
    /// `peer_mac`, so the pair never appears in this namespace under the peer's name.
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&NetNs>,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu);
        if let Some(ns) = peer_ns {
            peer_msg = peer_msg.setns_by_fd(ns.raw_fd());
        }
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.add_link("create veth", &format!("{name} <-> {peer}"), msg)
            .await
    }

    /// Creates a unicast-only vxlan device in this namespace, Swarm style: no learning (peers
    /// are programmed), proxy ARP answered from the neighbour table, miss notifications on.
    pub async fn create_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
    ) -> Result<()> {
        let msg = LinkVxlan::new(name, vni)
            .local(local)
            .port(port)
            .learning(false)
            .proxy(true)
            .l2miss(true)
            .l3miss(true)
            .mtu(mtu)
            .build();
        self.add_link("create vxlan", name, msg).await
    }

    /// Adds an IPv4 address; present already is fine.
    pub async fn add_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr.addr(), addr.prefix_len())
            .build();
        let subject = format!("{addr} on link #{index}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        let msg = RouteNetlinkMessage::NewAddress(msg);
        self.change("add address", &subject, msg, flags, &[libc::EEXIST])
            .await
    }

    /// Deletes an IPv4 address; absent already is fine.
    pub async fn del_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr.addr(), addr.prefix_len())
            .build();
        let subject = format!("{addr} on link #{index}");
        let msg = RouteNetlinkMessage::DelAddress(msg);
        let gone = [libc::EADDRNOTAVAIL, libc::ENOENT, libc::ENODEV];
        self.change("delete address", &subject, msg, 0, &gone).await
    }

    /// The IPv4 addresses of one device.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self
            .call(
                "list addresses",
                &format!("link #{index}"),
                RouteNetlinkMessage::GetAddress(msg),
                NLM_F_DUMP,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .filter_map(|a| {
                let ip = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip))
                    | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })?;
                Ipv4Net::new(ip, a.header.prefix_len).ok()
            })
            .collect())
    }

    /// Lets a bridge port send a frame back out the port it came in on: what a task needs to
    /// reach its own service's VIP when the load balancer picks the task itself.
    pub async fn set_hairpin(&self, port: u32) -> Result<()> {
        let msg = LinkBridgePort::new(port).hairpin(true).build();
        // Port (slave) settings are only read from RTM_NEWLINK, never from RTM_SETLINK.
        let msg = RouteNetlinkMessage::NewLink(msg);
        self.change("set hairpin", &format!("bridge port #{port}"), msg, 0, &[])
            .await
    }

    /// Keeps a bridge port from talking to the bridge's other isolated ports (the bridge
    /// itself and routed traffic are unaffected): docker's `enable_icc=false`, in the kernel.
    pub async fn set_isolated(&self, port: u32) -> Result<()> {
        let msg = LinkBridgePort::new(port).isolated(true).build();
        let msg = RouteNetlinkMessage::NewLink(msg);
        self.change("set isolated", &format!("bridge port #{port}"), msg, 0, &[])
            .await
    }

    /// Adds (or replaces) a link-scope route `dst dev <index>`.
    pub async fn add_route_dev(&self, dst: Ipv4Net, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        let subject = format!("{dst} dev #{index}");
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        let msg = RouteNetlinkMessage::NewRoute(msg);
        self.change("add route", &subject, msg, flags, &[]).await
    }

    /// Default route via `gateway` (replaces any existing default).
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.add_route_via(Ipv4Net::default(), gateway).await
    }

    /// Adds (or replaces) the route `dst via gateway`.
    pub async fn add_route_via(&self, dst: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(gateway)
            .build();
        let subject = format!("{dst} via {gateway}");
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        let msg = RouteNetlinkMessage::NewRoute(msg);
        self.change("add route", &subject, msg, flags, &[]).await
    }

    /// Permanent ARP entry `ip -> mac` on a device; replaces whatever was there.
    pub async fn add_neigh_permanent(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let msg = neigh::permanent_neighbour(index, ip, mac);
        let subject = format!("{ip} on link #{index}");
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        let msg = RouteNetlinkMessage::NewNeighbour(msg);
        self.change("add neighbour", &subject, msg, flags, &[])
            .await
    }

    pub async fn del_neigh(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let msg = neigh::neighbour(index, ip);
        let subject = format!("{ip} on link #{index}");
        let msg = RouteNetlinkMessage::DelNeighbour(msg);
        self.change("delete neighbour", &subject, msg, 0, &[libc::ENOENT])
            .await
    }

    /// `bridge fdb replace MAC dev <index> dst DST self permanent`.
    pub async fn add_fdb_self(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let msg = neigh::permanent_fdb_self(index, mac, dst);
        let subject = format!("{} dst {dst} on link #{index}", fmt_mac(&mac));
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        let msg = RouteNetlinkMessage::NewNeighbour(msg);
        self.change("add fdb", &subject, msg, flags, &[]).await
    }

    /// Removes a device's own FDB entry for `mac` (all its destinations).
    pub async fn del_fdb(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = neigh::fdb_self(index, mac);
        let subject = format!("{} on link #{index}", fmt_mac(&mac));
        let msg = RouteNetlinkMessage::DelNeighbour(msg);
        self.change("delete fdb", &subject, msg, 0, &[libc::ENOENT])
            .await
    }

    async fn dump_neighbours(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let msg = neigh::dump(family);
        let op = "list neighbours";
        let replies = self
            .call(op, "", RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Permanent IPv4 neighbour entries of one device.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let all = self.dump_neighbours(AddressFamily::Inet).await?;
        Ok(neigh::permanent_neighbours(&all, index))
    }

    /// The device's own FDB entries (NTF_SELF), e.g. a vxlan device's MAC -> VTEP table.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let all = self.dump_neighbours(AddressFamily::Bridge).await?;
        Ok(neigh::fdb_self_entries(&all, index))
    }

    /// The local (source) address of a vxlan device, if it is one and has it set.
    pub async fn vxlan_local(&self, name: &str) -> Result<Option<Ipv4Addr>> {
        let Some(link) = self.get_link(name).await? else {
            return Ok(None);
        };
        let local = link
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .filter_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
                _ => None,
            })
            .flatten()
            .find_map(|d| match d {
                InfoVxlan::Local(addr) => Some(*addr),
                _ => None,
            });
        Ok(local)
    }

    pub async fn stats(&self, name: &str) -> Result<LinkStats> {
        let link = self
            .get_link(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchLink {
                ns: self.ns.clone(),
                name: name.to_string(),
            })?;
        let stats = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(LinkStats {
                rx_packets: s.rx_packets,
                tx_packets: s.tx_packets,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
            }),
            _ => None,
        });
        Ok(stats.unwrap_or_default())
    }
}

pub async fn link_stats(ns: &NetNs, ifname: &str) -> Result<LinkStats> {
    Links::new(ns)?.stats(ifname).await
}

/// Probe: can this kernel create a vxlan device? Creates and deletes a throwaway one in `ns`.
pub async fn probe_vxlan(ns: &NetNs) -> Result<bool> {
    let links = Links::new(ns)?;
    // Random name and VNI so a probe never collides with real devices or another probe.
    let tag = rand::random::<u32>() & 0xff_ffff;
    let name = format!("skprobe{tag:06x}");
    match links
        .create_vxlan(&name, tag.max(1), Ipv4Addr::LOCALHOST, 4789, 1450)
        .await
    {
        Ok(()) => {}
        // Unknown link kinds come back as EOPNOTSUPP when the driver is absent.
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => return Ok(false),
        Err(e) => return Err(e),
    }
    let index = links.require(&name).await?;
    links.delete_link(index).await?;
    Ok(true)
}

pub async fn loopback_up(ns: &NetNs) -> Result<()> {
    Links::new(ns)?.set_up_by_name("lo").await
}
