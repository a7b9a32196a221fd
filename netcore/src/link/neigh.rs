//! The neighbour (ARP) and bridge FDB messages the overlays program, and what a dump of them
//! says: built and read here, sent by `Links`, which does nothing else with them.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};

/// A permanent IPv4 neighbour (ARP) entry as listed by `Links::neighbours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A bridge FDB entry of a device itself (NTF_SELF), as on a vxlan device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    /// The remote VTEP, for vxlan entries that have one.
    pub dst: Option<Ipv4Addr>,
}

fn neigh_msg(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg
}

/// The permanent ARP entry `ip -> mac` on device `index`.
pub(super) fn permanent_neighbour(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> NeighbourMessage {
    let mut msg = neigh_msg(AddressFamily::Inet, index);
    msg.header.state = NeighbourState::Permanent;
    msg.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    msg
}

/// The ARP entry for `ip` on device `index`, whatever it holds (to delete it).
pub(super) fn neighbour(index: u32, ip: Ipv4Addr) -> NeighbourMessage {
    let mut msg = neigh_msg(AddressFamily::Inet, index);
    msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
    msg
}

/// `bridge fdb ... MAC dev <index> dst DST self permanent`.
pub(super) fn permanent_fdb_self(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut msg = neigh_msg(AddressFamily::Bridge, index);
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)),
    ];
    msg
}

/// A device's own FDB entry for `mac`, all its destinations (to delete it).
pub(super) fn fdb_self(index: u32, mac: [u8; 6]) -> NeighbourMessage {
    let mut msg = neigh_msg(AddressFamily::Bridge, index);
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
    msg
}

/// The request for every entry of `family`.
pub(super) fn dump(family: AddressFamily) -> NeighbourMessage {
    neigh_msg(family, 0)
}

/// The permanent IPv4 neighbour entries of device `index` in a dump.
pub(super) fn permanent_neighbours(all: &[NeighbourMessage], index: u32) -> Vec<Neighbour> {
    all.iter()
        .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
        .filter_map(|n| {
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = as_mac(l),
                    _ => {}
                }
            }
            Some(Neighbour { ip: ip?, mac: mac? })
        })
        .collect()
}

/// The own FDB entries (NTF_SELF) of device `index` in a dump.
pub(super) fn fdb_self_entries(all: &[NeighbourMessage], index: u32) -> Vec<FdbEntry> {
    all.iter()
        .filter(|n| n.header.ifindex == index && n.header.flags.contains(NeighbourFlags::Own))
        .filter_map(|n| {
            let mut mac = None;
            let mut dst = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = as_mac(l),
                    // AF_BRIDGE messages carry the VTEP as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some(*v),
                    _ => {}
                }
            }
            Some(FdbEntry { mac: mac?, dst })
        })
        .collect()
}

fn as_mac(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// `02:42:0a:00:00:02`, as `ip` prints a MAC.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| hex::encode([b])).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_ip_prints_them() {
        assert_eq!(
            fmt_mac(&[0x02, 0x42, 0x0a, 0, 0, 0xff]),
            "02:42:0a:00:00:ff"
        );
    }
}
