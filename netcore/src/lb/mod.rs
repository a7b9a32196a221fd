//! Service load balancing inside one network namespace, behind one trait with two drivers:
//! IPVS (what Docker Swarm uses, keyed by firewall mark) and nftables (`numgen inc` round
//! robin, for kernels without IPVS such as the development host).
//!
//! Both drivers are declarative and incremental: `apply` takes the full desired set, diffs it
//! against what this instance applied last, and sends only the difference, so the cost of an
//! update grows with the number of changes rather than the number of services (Swarm with
//! iptables needs ~1.3 s per change at 1k services; see swarm-reference.md).
//!
//! - [`api`]: virtual services, the [`LoadBalancer`] trait, [`LbError`] (re-exported here);
//! - [`ipvs`] (with [`ipvs_msg`] and `genl`, its generic netlink messages and socket) and
//!   [`nft`]: the two drivers;
//! - `hairpin`: the set of VIP backends both drivers masquerade back to themselves;
//! - `conntrack`: forgetting the conntrack entries that would keep a client on a backend
//!   that left (the nftables driver's; IPVS keeps its own connection table, and Swarm's
//!   `expire_nodest_conn` already expires a removed destination's connections there);
//! - [`lift`]: how the nftables driver's VIP replies reach the sandbox's conntrack without
//!   br_netfilter (which IPVS still needs).
//!
//! This module is the factory ([`new`], [`probe`]) and what a namespace that balances needs
//! beside a driver (conntrack settings). The drivers name `api`, `hairpin` and `conntrack`,
//! never this module, and send their nftables batches through the runner below
//! (`crate::nft`).

use crate::netns::{NetNs, NetNsError};

pub mod api;
mod conntrack;
mod genl;
mod hairpin;
pub mod ipvs;
pub mod ipvs_msg;
pub mod lift;
pub mod nft;

pub use api::{Driver, Frontend, LbError, LoadBalancer, MIN_FWMARK, Protocol, VirtualService};

/// IPVS if the kernel has it (generic netlink family "IPVS" resolves), else Nftables.
pub fn probe() -> Driver {
    match genl::GenlSocket::open().and_then(|mut s| s.resolve_family(ipvs_msg::IPVS_GENL_NAME)) {
        Ok(_) => Driver::Ipvs,
        Err(_) => Driver::Nftables,
    }
}

pub fn new(driver: Driver, ns: NetNs) -> Box<dyn LoadBalancer> {
    match driver {
        Driver::Ipvs => Box::new(ipvs::IpvsLb::new(ns)),
        Driver::Nftables => Box::new(nft::NftLb::new(ns)),
    }
}

/// Conntrack timeouts for a namespace of the project's own that balances (a network
/// sandbox, the ingress sandbox; never a host's). An entry that binds a client's source port
/// to a backend without a connection, a SYN never answered or a reset, sends that port's
/// next connection to the same backend, even one that has left the load balancer: NAT is
/// decided once per entry. The kernel keeps such entries 120 s (SYN_SENT) and 10 s (CLOSE),
/// and a client opening thousands of connections a second is back on a port within seconds.
/// A client still retransmitting to a dead backend gets a fresh entry, and so a live
/// backend, once its retransmissions are further apart than this. The nftables driver also
/// deletes such entries when a backend leaves (`conntrack`); these timeouts bound what a
/// failed delete, or an entry of a backend that stopped answering without leaving, costs.
pub const CONNTRACK_TIMEOUTS: [(&str, &str); 2] = [
    ("net/netfilter/nf_conntrack_tcp_timeout_syn_sent", "3"),
    ("net/netfilter/nf_conntrack_tcp_timeout_close", "1"),
];

/// Sets [`CONNTRACK_TIMEOUTS`] in `ns`.
pub fn forget_unanswered_quickly(ns: &NetNs) -> Result<(), NetNsError> {
    for (key, value) in CONNTRACK_TIMEOUTS {
        ns.set_sysctl(key, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_falls_back_to_nftables_without_ipvs() {
        // The development host's kernel is built without CONFIG_IP_VS (platform.md).
        testkit::skip_unless!(
            std::path::Path::new("/proc/net/ip_vs")
                .exists()
                .then(|| "this kernel has IPVS".to_string())
        );
        assert_eq!(probe(), Driver::Nftables);
    }
}
