//! Swarm's per-network overlay sandbox, reconciled over netlink.
//!
//! Per node and network there is one sandbox namespace holding a bridge (the gateway address
//! lives on it) and a vxlan device enslaved to it. The vxlan device is created in the node
//! namespace and then moved in, so its UDP socket stays in the node namespace where the
//! underlay address is, exactly as Docker does. Remote endpoints are programmed statically
//! (permanent ARP entry plus FDB entry to the remote VTEP) and reconciled: entries for peers
//! that went away are deleted, so stale ARP/FDB state never lingers (moby#50232).
//!
//! The sandbox also balances the network's service VIPs, once per node and network where
//! Docker programs every VIP into every task's namespace (what makes thousands of services
//! slow, moby#30820): each VIP is a /32 on the bridge, so a task's ARP for it is answered by
//! the sandbox, whose load balancer rewrites the destination to a backend. The backend's
//! reply crosses the bridge on its way back to the task, and is lifted off it into the
//! sandbox's conntrack, which restores the VIP as its source (`lb::lift`; br_netfilter,
//! which would run every bridged packet through conntrack, is left off, except under
//! IPVS). The client's own address reaches the backend unchanged. A task balanced onto itself is
//! masqueraded by the load balancer and sent back through its bridge port (hairpin).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::lb::{Driver, lift};
use crate::link::{LinkError, Links};
use crate::netns::{NetNs, NetNsError};

/// IANA VXLAN port, the one Swarm uses by default.
pub const VXLAN_PORT: u16 = 4789;
const IFNAMSIZ_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Namespace(#[from] NetNsError),
    #[error("overlay network {network}: {problem}")]
    InvalidSpec { network: String, problem: String },
    #[error(
        "bridged packets cannot reach conntrack in the network sandbox ({0}): VIP load balancing needs br_netfilter (modprobe br_netfilter)"
    )]
    NoBridgeNetfilter(String),
    #[error("lifting VIP replies into the network sandbox: {0}")]
    Lift(#[from] crate::lb::LbError),
    #[error("endpoint {ifname}: {problem}")]
    InvalidEndpoint { ifname: String, problem: String },
}

/// A remote endpoint on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    pub network_id: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// UDP port of the VXLAN traffic (VXLAN_PORT unless the cluster moved it).
    pub port: u16,
    pub peers: Vec<Peer>,
}

/// One interface of a task (or ingress sandbox) on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ifname: String,
    pub addr: Ipv4Net,
    pub mac: [u8; 6],
}

/// Swarm convention: 02:42 followed by the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

fn short_id(network_id: &str) -> String {
    network_id.chars().take(5).collect()
}

/// `ov-<vni %06x>-<first 5 chars of the network id>`
pub fn bridge_name(spec: &OverlaySpec) -> String {
    format!("ov-{:06x}-{}", spec.vni, short_id(&spec.network_id))
}

/// `vx-<vni %06x>-<first 5 chars of the network id>`
pub fn vxlan_name(spec: &OverlaySpec) -> String {
    format!("vx-{:06x}-{}", spec.vni, short_id(&spec.network_id))
}

/// Name of the sandbox end of an endpoint's veth: stable for a (target, ifname) pair so that
/// re-applying finds it, and short enough for IFNAMSIZ.
pub fn sandbox_veth_name(target: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in target.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("ve{h:08x}")
}

fn validate(spec: &OverlaySpec) -> Result<(), OverlayError> {
    let invalid = |problem: String| OverlayError::InvalidSpec {
        network: spec.network_id.clone(),
        problem,
    };
    let id = short_id(&spec.network_id);
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(
            "network id must start with 1-5 ASCII letters or digits (used in device names)".into(),
        ));
    }
    if spec.vni == 0 || spec.vni > 0xff_ffff {
        return Err(invalid(format!("VNI {} is outside 1..=16777215", spec.vni)));
    }
    if !spec.subnet.contains(&spec.gateway)
        || spec.gateway == spec.subnet.network()
        || spec.gateway == spec.subnet.broadcast()
    {
        return Err(invalid(format!(
            "gateway {} is not a host address of {}",
            spec.gateway, spec.subnet
        )));
    }
    if !(68..=65535).contains(&spec.mtu) {
        return Err(invalid(format!("MTU {} is outside 68..=65535", spec.mtu)));
    }
    Ok(())
}

/// Reconciles the sandbox namespace `sandbox_name` for this network on this node and returns
/// it open, ready for `driver` to balance its VIPs. See the module documentation for what it
/// contains.
pub async fn ensure(
    node: &NetNs,
    sandbox_name: &str,
    local_vtep: Ipv4Addr,
    spec: &OverlaySpec,
    driver: Driver,
) -> Result<NetNs, OverlayError> {
    validate(spec)?;
    let sandbox = NetNs::create(sandbox_name)?;
    let sb = Links::new(&sandbox)?;
    sb.set_up_by_name("lo").await?;

    let mac = lift::bridge_mac(sandbox_name);
    let bridge = ensure_bridge(&sb, spec, mac).await?;
    balance_in(&sandbox, &bridge_name(spec), driver, mac)?;
    let vx = ensure_vxlan(node, &sandbox, &sb, local_vtep, spec).await?;
    sb.set_mtu(vx, spec.mtu).await?;
    sb.set_master(vx, bridge).await?;
    sb.set_up(vx).await?;
    reconcile_peers(&sb, vx, &spec.peers).await?;
    Ok(sandbox)
}

/// What the sandbox needs to balance VIPs: forwarding, the replies' way back to the VIP
/// through conntrack (lifted, or all bridged packets under IPVS), no ICMP redirects for the
/// hairpin, and conntrack that soon forgets entries without a connection (see
/// `lb::CONNTRACK_TIMEOUTS`).
fn balance_in(
    sandbox: &NetNs,
    bridge: &str,
    driver: Driver,
    bridge_mac: [u8; 6],
) -> Result<(), OverlayError> {
    crate::lb::forget_unanswered_quickly(sandbox)?;
    let sysctls = [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/send_redirects", "0"),
        (
            &format!("net/ipv4/conf/{bridge}/send_redirects") as &str,
            "0",
        ),
    ];
    for (key, value) in sysctls {
        sandbox.set_sysctl(key, value)?;
    }
    match driver {
        Driver::Nftables => lift::install(sandbox, bridge_mac)?,
        Driver::Ipvs => sandbox
            .set_sysctl("net/bridge/bridge-nf-call-iptables", "1")
            .map_err(|e| OverlayError::NoBridgeNetfilter(e.to_string()))?,
    }
    Ok(())
}

/// Makes the bridge's service addresses (its /32s) exactly `vips`. `known` is what an
/// earlier call left there; without it the bridge is read. Only differences are written.
pub async fn reconcile_vips(
    sandbox: &NetNs,
    spec: &OverlaySpec,
    known: Option<&BTreeSet<Ipv4Addr>>,
    vips: &BTreeSet<Ipv4Addr>,
) -> Result<(), OverlayError> {
    if known == Some(vips) {
        return Ok(());
    }
    let sb = Links::new(sandbox)?;
    let bridge = sb.require(&bridge_name(spec)).await?;
    let listed;
    let present = match known {
        Some(k) => k,
        None => {
            listed = sb
                .addresses(bridge)
                .await?
                .into_iter()
                .filter(|a| a.prefix_len() == 32)
                .map(|a| a.addr())
                .collect::<BTreeSet<_>>();
            &listed
        }
    };
    for gone in present.difference(vips) {
        sb.del_addr(bridge, Ipv4Net::from(*gone)).await?;
    }
    for new in vips.difference(present) {
        sb.add_addr(bridge, Ipv4Net::from(*new)).await?;
    }
    Ok(())
}

async fn ensure_bridge(sb: &Links, spec: &OverlaySpec, mac: [u8; 6]) -> Result<u32, OverlayError> {
    let name = bridge_name(spec);
    let index = match sb.index_of(&name).await? {
        Some(index) => {
            sb.set_mtu(index, spec.mtu).await?;
            sb.set_up(index).await?;
            index
        }
        None => {
            sb.create_bridge(&name, spec.mtu).await?;
            sb.require(&name).await?
        }
    };
    sb.set_address(index, mac).await?;
    let gateway = Ipv4Net::new(spec.gateway, spec.subnet.prefix_len()).map_err(|e| {
        OverlayError::InvalidSpec {
            network: spec.network_id.clone(),
            problem: e.to_string(),
        }
    })?;
    sb.add_addr(index, gateway).await?;
    Ok(index)
}

/// Finds the vxlan device in the sandbox, or creates it in the node namespace and moves it
/// in. A device left in the node namespace by an interrupted earlier run is moved, not
/// recreated (a second one with the same VNI and port could not be created anyway); one
/// whose local VTEP differs from `local_vtep` is replaced.
async fn ensure_vxlan(
    node: &NetNs,
    sandbox: &NetNs,
    sb: &Links,
    local_vtep: Ipv4Addr,
    spec: &OverlaySpec,
) -> Result<u32, OverlayError> {
    let name = vxlan_name(spec);
    if let Some(index) = sb.index_of(&name).await? {
        if sb.vxlan_local(&name).await? == Some(local_vtep) {
            return Ok(index);
        }
        // The node's underlay address changed: the tunnel must be rebuilt to source from it.
        sb.delete_link(index).await?;
    }
    let host = Links::new(node)?;
    let index = match host.index_of(&name).await? {
        Some(index) => index,
        None => {
            host.create_vxlan(&name, spec.vni, local_vtep, spec.port, spec.mtu)
                .await?;
            host.require(&name).await?
        }
    };
    host.move_to_ns(index, sandbox).await?;
    Ok(sb.require(&name).await?)
}

/// Makes the vxlan device's permanent ARP and FDB entries exactly match `peers`, writing only
/// the differences so that re-applying an unchanged spec touches nothing.
async fn reconcile_peers(sb: &Links, vx: u32, peers: &[Peer]) -> Result<(), OverlayError> {
    let neighbours = sb.neighbours(vx).await?;
    let fdb = sb.fdb(vx).await?;

    for n in &neighbours {
        if !peers.iter().any(|p| p.ip == n.ip) {
            sb.del_neigh(vx, n.ip).await?;
        }
    }
    for f in &fdb {
        if !peers.iter().any(|p| p.mac == f.mac) {
            sb.del_fdb(vx, f.mac).await?;
        }
    }
    for p in peers {
        if !neighbours.iter().any(|n| n.ip == p.ip && n.mac == p.mac) {
            sb.add_neigh_permanent(vx, p.ip, p.mac).await?;
        }
        if !fdb.iter().any(|f| f.mac == p.mac && f.dst == Some(p.vtep)) {
            sb.add_fdb_self(vx, p.mac, p.vtep).await?;
        }
    }
    Ok(())
}

/// Moves an existing sandbox from `old` to `new`, which differ only in their peers, writing
/// only the entries of peers that left, came or moved: a task starting elsewhere on the
/// network costs one entry here, not a listing of every endpoint.
pub async fn update_peers(
    sandbox: &NetNs,
    old: &OverlaySpec,
    new: &OverlaySpec,
) -> Result<(), OverlayError> {
    let sb = Links::new(sandbox)?;
    let vx = sb.require(&vxlan_name(new)).await?;
    let before: std::collections::HashMap<Ipv4Addr, &Peer> =
        old.peers.iter().map(|p| (p.ip, p)).collect();
    let after: std::collections::HashMap<Ipv4Addr, &Peer> =
        new.peers.iter().map(|p| (p.ip, p)).collect();
    for (ip, p) in &before {
        if !after.contains_key(ip) {
            sb.del_neigh(vx, *ip).await?;
            sb.del_fdb(vx, p.mac).await?;
        }
    }
    for (ip, p) in &after {
        if before.get(ip) != Some(p) {
            sb.add_neigh_permanent(vx, p.ip, p.mac).await?;
            sb.add_fdb_self(vx, p.mac, p.vtep).await?;
        }
    }
    Ok(())
}

impl OverlaySpec {
    /// Whether `other` is this spec with other peers (see `update_peers`).
    pub fn differs_only_in_peers(&self, other: &OverlaySpec) -> bool {
        // Named field by field (no `..`), so a field added later is not silently ignored;
        // and no copy of the peers, which can number thousands.
        let OverlaySpec {
            network_id,
            vni,
            subnet,
            gateway,
            mtu,
            port,
            peers: _,
        } = self;
        *network_id == other.network_id
            && *vni == other.vni
            && *subnet == other.subnet
            && *gateway == other.gateway
            && *mtu == other.mtu
            && *port == other.port
    }
}

/// Deletes the sandbox. Its devices are deleted explicitly first: a namespace only dies when
/// its last reference goes, and until then its vxlan device would keep the VNI's UDP binding
/// in the node namespace and block re-creating the network. Idempotent.
pub async fn remove(sandbox_name: &str) -> Result<(), OverlayError> {
    let sandbox = match NetNs::open(sandbox_name) {
        Ok(ns) => ns,
        Err(NetNsError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let sb = Links::new(&sandbox)?;
    for (index, name) in sb.names().await? {
        if name != "lo" {
            sb.delete_link(index).await?;
        }
    }
    drop(sb);
    NetNs::delete(sandbox_name)?;
    Ok(())
}

/// Connects `target` to the network's bridge in `sandbox` with a veth: inside `target` it is
/// `ep.ifname` with `ep.mac`, `ep.addr` and the network MTU, up; the sandbox end is named by
/// `sandbox_veth_name`, enslaved to the bridge and up. lo comes up in `target`. Idempotent.
pub async fn attach(
    sandbox: &NetNs,
    spec: &OverlaySpec,
    target: &NetNs,
    ep: &Endpoint,
) -> Result<(), OverlayError> {
    validate(spec)?;
    if ep.ifname.is_empty() || ep.ifname.len() > IFNAMSIZ_MAX || ep.ifname.contains('/') {
        return Err(OverlayError::InvalidEndpoint {
            ifname: ep.ifname.clone(),
            problem: "not a valid interface name (1-15 bytes, no '/')".into(),
        });
    }
    let sb = Links::new(sandbox)?;
    let inside = Links::new(target)?;
    let outer = sandbox_veth_name(target.name(), &ep.ifname);
    inside.set_up_by_name("lo").await?;

    if inside.index_of(&ep.ifname).await?.is_none() {
        // A leftover sandbox end without its peer cannot be reused; make room for the pair.
        if let Some(stale) = sb.index_of(&outer).await? {
            sb.delete_link(stale).await?;
        }
        sb.create_veth(&outer, &ep.ifname, Some(target), spec.mtu, Some(ep.mac))
            .await?;
    }

    let bridge = sb.require(&bridge_name(spec)).await?;
    let outer_index = sb.require(&outer).await?;
    sb.set_master(outer_index, bridge).await?;
    sb.set_hairpin(outer_index).await?;
    sb.set_up(outer_index).await?;

    let index = inside.require(&ep.ifname).await?;
    inside.set_mtu(index, spec.mtu).await?;
    inside.add_addr(index, ep.addr).await?;
    inside.set_up_without_ipv6(index).await?;
    Ok(())
}

/// Removes an endpoint's veth; deleting one end deletes the pair. Idempotent.
pub async fn detach(target: &NetNs, ifname: &str) -> Result<(), OverlayError> {
    let inside = Links::new(target)?;
    if let Some(index) = inside.index_of(ifname).await? {
        inside.delete_link(index).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> OverlaySpec {
        OverlaySpec {
            network_id: "abcdef0123".into(),
            vni: 4097,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1450,
            port: VXLAN_PORT,
            peers: vec![],
        }
    }

    #[test]
    fn names_follow_swarm() {
        let s = spec();
        assert_eq!(bridge_name(&s), "ov-001001-abcde");
        assert_eq!(vxlan_name(&s), "vx-001001-abcde");
        assert_eq!(mac_for(Ipv4Addr::new(10, 0, 0, 3)), [2, 0x42, 10, 0, 0, 3]);
        let v = sandbox_veth_name("sk1-task-web.1", "eth0");
        assert_eq!(v.len(), 10);
        assert_eq!(v, sandbox_veth_name("sk1-task-web.1", "eth0"));
        assert_ne!(v, sandbox_veth_name("sk1-task-web.1", "eth1"));
    }

    #[test]
    fn validation_rejects_bad_specs() {
        let mut s = spec();
        s.gateway = Ipv4Addr::new(10, 0, 1, 1);
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.vni = 1 << 24;
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.network_id = "a/b".into();
        assert!(validate(&s).is_err());
        assert!(validate(&spec()).is_ok());
    }
}
