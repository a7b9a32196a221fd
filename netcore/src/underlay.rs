//! The cluster's "physical" network on one host: a bridge in an underlay namespace acts as the
//! switch, and every node namespace is plugged into it with a veth. Also plain point-to-point
//! veth links between two namespaces (node <-> ingress sandbox, the docker_gwbridge stand-in).
//!
//! Everything is idempotent: an existing port or link is reconfigured, not recreated.

use ipnet::Ipv4Net;

use crate::link::{LinkError, Links};
use crate::netns::NetNs;

/// Ethernet MTU of underlay links; overlays subtract the 50 bytes of VXLAN overhead from it.
pub const UNDERLAY_MTU: u32 = 1500;

/// Creates the switch: bridge `bridge` up in `underlay`, and lo up there.
pub async fn create_switch(underlay: &NetNs, bridge: &str) -> Result<(), LinkError> {
    let links = Links::new(underlay)?;
    links.set_up_by_name("lo").await?;
    match links.index_of(bridge).await? {
        None => links.create_bridge(bridge, UNDERLAY_MTU).await,
        Some(index) => links.set_up(index).await,
    }
}

/// veth `port` (in underlay, enslaved to `bridge`, up) <-> `ifname` (in node, address `addr`,
/// up); also lo up in node.
pub async fn plug(
    underlay: &NetNs,
    bridge: &str,
    port: &str,
    node: &NetNs,
    ifname: &str,
    addr: Ipv4Net,
) -> Result<(), LinkError> {
    let sw = Links::new(underlay)?;
    let port_index = ensure_veth(&sw, port, node, ifname).await?;
    let bridge_index = sw.require(bridge).await?;
    sw.set_master(port_index, bridge_index).await?;
    sw.set_up(port_index).await?;
    configure_end(&Links::new(node)?, ifname, addr).await
}

/// Plain veth pair with addresses, both up (lo up on both sides too).
pub async fn link_pair(
    a: &NetNs,
    a_if: &str,
    a_addr: Ipv4Net,
    b: &NetNs,
    b_if: &str,
    b_addr: Ipv4Net,
) -> Result<(), LinkError> {
    let la = Links::new(a)?;
    ensure_veth(&la, a_if, b, b_if).await?;
    configure_end(&la, a_if, a_addr).await?;
    configure_end(&Links::new(b)?, b_if, b_addr).await
}

/// Creates the pair `name` (here) <-> `peer` (in `peer_ns`) unless `name` exists; returns the
/// index of `name`.
async fn ensure_veth(
    here: &Links,
    name: &str,
    peer_ns: &NetNs,
    peer: &str,
) -> Result<u32, LinkError> {
    if let Some(index) = here.index_of(name).await? {
        return Ok(index);
    }
    here.create_veth(name, peer, Some(peer_ns), UNDERLAY_MTU, None)
        .await?;
    here.require(name).await
}

async fn configure_end(links: &Links, ifname: &str, addr: Ipv4Net) -> Result<(), LinkError> {
    links.set_up_by_name("lo").await?;
    let index = links.require(ifname).await?;
    links.add_addr(index, addr).await?;
    links.set_up_without_ipv6(index).await
}
