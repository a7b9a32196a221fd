//! Address management: /24 overlay subnets carved from 10.0.0.0/8, VNIs from 4096, and
//! addresses inside a network. Everything is derived from the current state, so nothing can
//! leak: an address is in use exactly while some record holds it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::store::State;

pub const DEFAULT_POOL: &str = "10.0.0.0/8";
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";
pub const INGRESS_VNI: u32 = 4096;
pub const FIRST_VNI: u32 = 4096;
pub const MAX_VNI: u32 = (1 << 24) - 1;
pub const OVERLAY_MTU: u32 = 1450;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("the address pool {DEFAULT_POOL} has no free /24 left; remove unused networks")]
    PoolExhausted,
    #[error("no free VNI left")]
    VniExhausted,
    #[error("network {network} has no free address left in {subnet}; use a larger --subnet")]
    SubnetFull { network: String, subnet: Ipv4Net },
    #[error(
        "invalid subnet {0:?}: give an IPv4 network in CIDR form with a prefix of /8 to /29, such as 10.1.2.0/24"
    )]
    BadSubnet(String),
    #[error(
        "subnet {subnet} overlaps network {other} ({other_subnet}); choose a subnet that does not"
    )]
    Overlap {
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    #[error("invalid gateway {gateway:?}: it must be a host address inside {subnet}")]
    BadGateway { gateway: String, subnet: Ipv4Net },
}

pub fn parse_subnet(s: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = s.parse().map_err(|_| IpamError::BadSubnet(s.to_string()))?;
    if net.network() != net.addr() || !(8..=29).contains(&net.prefix_len()) {
        return Err(IpamError::BadSubnet(s.to_string()));
    }
    Ok(net)
}

pub fn parse_gateway(s: &str, subnet: Ipv4Net) -> Result<Ipv4Addr, IpamError> {
    let bad = || IpamError::BadGateway {
        gateway: s.to_string(),
        subnet,
    };
    let gw: Ipv4Addr = s.parse().map_err(|_| bad())?;
    if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
        return Err(bad());
    }
    Ok(gw)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub fn check_overlap(state: &State, subnet: Ipv4Net) -> Result<(), IpamError> {
    for n in state.networks.values() {
        if overlaps(n.subnet, subnet) {
            return Err(IpamError::Overlap {
                subnet,
                other: n.name.clone(),
                other_subnet: n.subnet,
            });
        }
    }
    Ok(())
}

/// The lowest free /24 of the default pool.
pub fn allocate_subnet(state: &State) -> Result<Ipv4Net, IpamError> {
    let pool: Ipv4Net = DEFAULT_POOL.parse().expect("constant pool");
    let taken: Vec<Ipv4Net> = state.networks.values().map(|n| n.subnet).collect();
    pool.subnets(24)
        .map_err(|_| IpamError::PoolExhausted)?
        .find(|c| !taken.iter().any(|t| overlaps(*t, *c)))
        .ok_or(IpamError::PoolExhausted)
}

pub fn allocate_vni(state: &State) -> Result<u32, IpamError> {
    let used: BTreeSet<u32> = state.networks.values().map(|n| n.vni).collect();
    (FIRST_VNI..=MAX_VNI)
        .find(|v| !used.contains(v))
        .ok_or(IpamError::VniExhausted)
}

/// The lowest free host address in the network, with the network's prefix length.
pub fn allocate_address(state: &State, network_id: &str) -> Result<Ipv4Net, IpamError> {
    let net = state
        .networks
        .get(network_id)
        .expect("caller checked the network exists");
    // Nodes' ingress addresses are few; the services' and tasks' are indexed.
    let nodes: BTreeSet<Ipv4Addr> = if net.ingress {
        state
            .nodes
            .values()
            .map(|n| n.ingress_addr.addr())
            .collect()
    } else {
        BTreeSet::new()
    };
    net.subnet
        .hosts()
        .find(|a| *a != net.gateway && !nodes.contains(a) && !state.holds(network_id, *a))
        .map(|a| Ipv4Net::new(a, net.subnet.prefix_len()).expect("prefix from a valid net"))
        .ok_or(IpamError::SubnetFull {
            network: net.name.clone(),
            subnet: net.subnet,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Network;

    fn net(id: &str, subnet: &str, vni: u32) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network {
            id: id.into(),
            name: id.into(),
            created: chrono::Utc::now(),
            version: 0,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            vni,
            attachable: false,
            internal: false,
            ingress: false,
            labels: Default::default(),
            options: Default::default(),
            keyring: None,
        }
    }

    #[test]
    fn subnets_vnis_and_addresses_are_lowest_free() {
        let mut s = State::default();
        s.networks.insert("a".into(), net("a", "10.0.0.0/24", 4096));
        s.networks
            .insert("i".into(), net("i", "10.255.0.0/16", 4097));
        assert_eq!(allocate_subnet(&s).unwrap().to_string(), "10.0.1.0/24");
        assert_eq!(allocate_vni(&s).unwrap(), 4098);
        assert_eq!(
            allocate_address(&s, "a").unwrap().to_string(),
            "10.0.0.2/24"
        );
    }

    #[test]
    fn bad_and_overlapping_subnets_are_refused() {
        let mut s = State::default();
        s.networks.insert("a".into(), net("a", "10.0.0.0/24", 4096));
        assert!(parse_subnet("10.0.0.1/24").is_err());
        assert!(parse_subnet("banana").is_err());
        assert!(parse_subnet("10.0.0.0/30").is_err());
        let sub = parse_subnet("10.0.0.0/16").unwrap();
        assert!(matches!(
            check_overlap(&s, sub),
            Err(IpamError::Overlap { .. })
        ));
        assert!(check_overlap(&s, parse_subnet("10.9.0.0/24").unwrap()).is_ok());
        assert!(parse_gateway("10.9.1.1", sub).is_err());
        assert!(parse_gateway("10.0.0.0", sub).is_err());
    }
}
