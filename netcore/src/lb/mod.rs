//! Service load balancing inside one network namespace, behind one trait with two drivers:
//! IPVS (what Docker Swarm uses, keyed by firewall mark) and nftables (`numgen inc` round
//! robin, for kernels without IPVS such as the development host).
//!
//! Both drivers are declarative and incremental: `apply` takes the full desired set, diffs it
//! against what this instance applied last, and sends only the difference, so the cost of an
//! update grows with the number of changes rather than the number of services (Swarm with
//! iptables needs ~1.3 s per change at 1k services; see swarm-reference.md).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::netns::{NetNs, NetNsError};

mod genl;
pub mod ipvs;
pub mod ipvs_msg;
pub mod libnft;
pub mod nft;
pub mod nftbatch;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name nft and /etc/protocols use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// On the wire and in records by its name (`ipvs`, `nftables`); records written before that
/// spelled it capitalised, which is still read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[serde(alias = "Ipvs")]
    Ipvs,
    #[serde(alias = "Nftables")]
    Nftables,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Ipvs => "ipvs",
            Driver::Nftables => "nftables",
        })
    }
}

impl FromStr for Driver {
    type Err = LbError;
    fn from_str(s: &str) -> Result<Self, LbError> {
        match s {
            "ipvs" => Ok(Driver::Ipvs),
            "nftables" => Ok(Driver::Nftables),
            other => Err(LbError::UnknownDriver(other.to_string())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// Task -> VIP: TCP/UDP traffic to the VIP, made in this namespace (OUTPUT) or arriving
    /// in it (PREROUTING: a network sandbox that answers for the VIP on its bridge), DNAT to
    /// a backend keeping the port. A backend that is the client itself is masqueraded
    /// (hairpin).
    Vip(Ipv4Addr),
    /// Routing mesh inside an ingress sandbox: traffic arriving (PREROUTING) on proto/port goes
    /// to backend:target, and is SNATed (masquerade) to the sandbox's own address on the way
    /// out so replies come back through it. The drivers turn on ip_forward in the namespace
    /// when at least one such frontend exists.
    Port {
        proto: Protocol,
        port: u16,
        target: u16,
    },
}

impl Frontend {
    /// Two services may not share a key: the dispatch maps are keyed by it.
    fn key(&self) -> FrontendKey {
        match *self {
            Frontend::Vip(ip) => FrontendKey::Vip(ip),
            Frontend::Port { proto, port, .. } => FrontendKey::Port(proto, port),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum FrontendKey {
    Vip(Ipv4Addr),
    Port(Protocol, u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    /// Unique per namespace, >= 256; IPVS keys its virtual services by it and the nftables
    /// driver names the service's chain after it.
    pub fwmark: u32,
    pub frontend: Frontend,
    /// Order = round-robin order.
    pub backends: Vec<Ipv4Addr>,
}

/// Firewall marks below this are left to other users of the mark (Swarm counts from 256 too).
pub const MIN_FWMARK: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("unknown load-balancer driver {0:?} (expected \"ipvs\" or \"nftables\")")]
    UnknownDriver(String),
    #[error("service fwmark {0} is below the reserved minimum {MIN_FWMARK}")]
    FwmarkTooLow(u32),
    #[error("two services share fwmark {0}")]
    DuplicateFwmark(u32),
    #[error("services {0} and {1} share the same frontend")]
    DuplicateFrontend(u32, u32),
    #[error("service {0} lists backend {1} twice")]
    DuplicateBackend(u32, Ipv4Addr),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error(transparent)]
    Undo(Box<crate::undo::UndoError>),
    #[error("running nft in namespace {ns}: {source}")]
    NftSpawn {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the batch in namespace {ns}: {stderr}")]
    NftFailed { ns: String, stderr: String },
    #[error("encoding nft JSON: {0}")]
    NftEncode(#[from] serde_json::Error),
    #[error("generic netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("generic netlink family {0:?} is not available in this kernel")]
    FamilyMissing(&'static str),
    #[error("malformed generic netlink reply: {0}")]
    BadReply(&'static str),
}

pub trait LoadBalancer: Send {
    fn driver(&self) -> Driver;
    /// Make the namespace's load balancing equal `desired` (full desired set). Idempotent. Only
    /// the difference from what this instance last applied is sent to the kernel, in ONE atomic
    /// batch, so cost grows with the number of changes, not the number of services.
    fn apply(&mut self, desired: &[VirtualService]) -> Result<(), LbError>;
    /// Brings the services `changes` names (by fwmark; None: gone) to what it gives, and
    /// leaves every other as the last apply left it, so a change costs what it touches, not
    /// the namespace's size. `full` gives the whole desired set, for a balancer that has to
    /// rebuild (nothing applied yet, or a failed batch) or cannot apply a part.
    fn apply_changes(
        &mut self,
        changes: &[(u32, Option<VirtualService>)],
        full: &dyn Fn() -> Vec<VirtualService>,
    ) -> Result<(), LbError> {
        let _ = changes;
        self.apply(&full())
    }
    /// Remove everything this driver created in the namespace.
    fn teardown(&mut self) -> Result<(), LbError>;
    /// How many kernel commands the last `apply` sent (0 when nothing changed, so no batch).
    fn last_apply_commands(&self) -> usize;
}

/// Turns on connection tracking in a task's namespace, which the kernel only does for a
/// namespace whose rules use it. Nothing is filtered: the entries are what `swarmkit trace`
/// reads to show where a connection began and which task accepted it.
pub fn track_connections(ns: &NetNs) -> Result<(), LbError> {
    nftbatch::apply_nft_once(
        ns,
        "table ip swarmkit-conntrack {\n\
         \tchain track {\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tct state established,related accept\n\
         \t}\n\
         }\n",
    )
}

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

/// Rejects a desired set the kernel state could not represent, before anything is sent.
pub(crate) fn validate(desired: &[VirtualService]) -> Result<(), LbError> {
    let mut marks = std::collections::HashMap::new();
    let mut keys = std::collections::HashMap::new();
    for svc in desired {
        if svc.fwmark < MIN_FWMARK {
            return Err(LbError::FwmarkTooLow(svc.fwmark));
        }
        if marks.insert(svc.fwmark, ()).is_some() {
            return Err(LbError::DuplicateFwmark(svc.fwmark));
        }
        if let Some(other) = keys.insert(svc.frontend.key(), svc.fwmark) {
            return Err(LbError::DuplicateFrontend(other, svc.fwmark));
        }
        let mut seen = std::collections::HashSet::new();
        for b in &svc.backends {
            if !seen.insert(*b) {
                return Err(LbError::DuplicateBackend(svc.fwmark, *b));
            }
        }
    }
    Ok(())
}

/// Conntrack timeouts for a namespace of the project's own that balances (a network
/// sandbox, the ingress sandbox; never a host's). An entry that binds a client's source port
/// to a backend without a connection, a SYN never answered or a reset, sends that port's
/// next connection to the same backend, even one that has left the load balancer: NAT is
/// decided once per entry. The kernel keeps such entries 120 s (SYN_SENT) and 10 s (CLOSE),
/// and a client opening thousands of connections a second is back on a port within seconds.
/// A client still retransmitting to a dead backend gets a fresh entry, and so a live
/// backend, once its retransmissions are further apart than this.
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

/// Desired services keyed by fwmark, the identity both drivers diff on.
pub(crate) type ServiceMap = std::collections::BTreeMap<u32, VirtualService>;

pub(crate) fn by_mark(desired: &[VirtualService]) -> ServiceMap {
    desired.iter().map(|s| (s.fwmark, s.clone())).collect()
}

/// A VIP balanced in a network sandbox may pick the very task that connected. The packet
/// must then go back out the task's own bridge port (hairpin) with another source, or the
/// task would see a SYN from itself and drop it. Both drivers keep the set of VIP backends
/// as `source . destination` pairs and masquerade a packet that matches one.
pub(crate) mod hairpin {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use nftables::schema::{SetType, SetTypeValue};
    use nftables::stmt::Statement;

    use super::nftbatch::{NftBatch, concat, eq, ip, payload, set_ref};
    use super::{Frontend, ServiceMap};

    const SET: &str = "hairpin";

    /// The set, and its rule in the table's `postrouting` nat chain (which must exist).
    pub fn skeleton(b: &mut NftBatch) {
        b.add_set(
            SET,
            SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Ipv4Addr].into()),
        );
        b.add_rule(
            "postrouting",
            vec![
                eq(
                    concat(vec![payload("ip", "saddr"), payload("ip", "daddr")]),
                    set_ref(SET),
                ),
                Statement::Masquerade(None),
            ],
        );
    }

    fn backends(services: &ServiceMap) -> BTreeSet<Ipv4Addr> {
        services
            .values()
            .filter(|s| matches!(s.frontend, Frontend::Vip(_)))
            .flat_map(|s| s.backends.iter().copied())
            .collect()
    }

    fn pair(addr: Ipv4Addr) -> nftables::expr::Expression<'static> {
        concat(vec![ip(addr), ip(addr)])
    }

    /// Elements for backends that left first, then for those that came.
    pub fn diff(b: &mut NftBatch, old: &ServiceMap, new: &ServiceMap) {
        let (before, after) = (backends(old), backends(new));
        removed(b, &before, &after);
        added(b, &before, &after);
    }

    /// How many VIP services list each backend: a backend's pair stays while any does.
    pub type Refs = std::collections::HashMap<Ipv4Addr, u32>;
    /// What a partial change does to `Refs`.
    pub type RefChanges = std::collections::BTreeMap<Ipv4Addr, i64>;

    pub fn refs(services: &ServiceMap) -> Refs {
        let mut refs = Refs::new();
        for s in services
            .values()
            .filter(|s| matches!(s.frontend, Frontend::Vip(_)))
        {
            for b in &s.backends {
                *refs.entry(*b).or_insert(0) += 1;
            }
        }
        refs
    }

    /// Counts `svc`'s backends in (`by` 1) or out (`by` -1).
    pub fn count(changes: &mut RefChanges, svc: &super::VirtualService, by: i64) {
        if matches!(svc.frontend, Frontend::Vip(_)) {
            for b in &svc.backends {
                *changes.entry(*b).or_insert(0) += by;
            }
        }
    }

    /// For a partial change: elements for backends no service listed before (into
    /// `added_to`) and that none lists after (into `removed_to`).
    pub fn split_counted(
        added_to: &mut NftBatch,
        removed_to: &mut NftBatch,
        refs: &Refs,
        changes: &RefChanges,
    ) {
        for (addr, by) in changes {
            let before = i64::from(refs.get(addr).copied().unwrap_or(0));
            match (before > 0, before + by > 0) {
                (false, true) => added_to.add_element(SET, pair(*addr)),
                (true, false) => removed_to.delete_element(SET, pair(*addr)),
                _ => {}
            }
        }
    }

    /// `refs` once `changes` are applied.
    pub fn settle(refs: &mut Refs, changes: &RefChanges) {
        for (addr, by) in changes {
            let n = i64::from(refs.get(addr).copied().unwrap_or(0)) + by;
            if n > 0 {
                refs.insert(*addr, n as u32);
            } else {
                refs.remove(addr);
            }
        }
    }

    /// Elements for backends that came (into `added`) and that left (into `removed`).
    pub fn split(
        added_to: &mut NftBatch,
        removed_to: &mut NftBatch,
        old: &ServiceMap,
        new: &ServiceMap,
    ) {
        let (before, after) = (backends(old), backends(new));
        added(added_to, &before, &after);
        removed(removed_to, &before, &after);
    }

    fn added(b: &mut NftBatch, before: &BTreeSet<Ipv4Addr>, after: &BTreeSet<Ipv4Addr>) {
        for came in after.difference(before) {
            b.add_element(SET, pair(*came));
        }
    }

    fn removed(b: &mut NftBatch, before: &BTreeSet<Ipv4Addr>, after: &BTreeSet<Ipv4Addr>) {
        for gone in before.difference(after) {
            b.delete_element(SET, pair(*gone));
        }
    }
}

pub(crate) fn has_port_frontend(desired: &[VirtualService]) -> bool {
    desired
        .iter()
        .any(|s| matches!(s.frontend, Frontend::Port { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(mark: u32, ip: [u8; 4]) -> VirtualService {
        VirtualService {
            fwmark: mark,
            frontend: Frontend::Vip(ip.into()),
            backends: vec![],
        }
    }

    #[test]
    fn driver_names_round_trip() {
        for d in [Driver::Ipvs, Driver::Nftables] {
            assert_eq!(d.to_string().parse::<Driver>().unwrap(), d);
        }
        assert!("iptables".parse::<Driver>().is_err());
    }

    #[test]
    fn validation_catches_conflicts() {
        assert!(validate(&[vip(256, [10, 0, 0, 1]), vip(257, [10, 0, 0, 2])]).is_ok());
        assert!(matches!(
            validate(&[vip(255, [10, 0, 0, 1])]),
            Err(LbError::FwmarkTooLow(255))
        ));
        assert!(matches!(
            validate(&[vip(256, [10, 0, 0, 1]), vip(256, [10, 0, 0, 2])]),
            Err(LbError::DuplicateFwmark(256))
        ));
        assert!(matches!(
            validate(&[vip(256, [10, 0, 0, 1]), vip(257, [10, 0, 0, 1])]),
            Err(LbError::DuplicateFrontend(256, 257))
        ));
        let mut dup = vip(300, [10, 0, 0, 1]);
        dup.backends = vec![[1, 1, 1, 1].into(), [1, 1, 1, 1].into()];
        assert!(matches!(
            validate(&[dup]),
            Err(LbError::DuplicateBackend(300, _))
        ));
    }

    #[test]
    fn probe_falls_back_to_nftables_without_ipvs() {
        // The development host's kernel is built without CONFIG_IP_VS (platform.md).
        if std::path::Path::new("/proc/net/ip_vs").exists() {
            eprintln!("skipped: this kernel has IPVS");
            return;
        }
        assert_eq!(probe(), Driver::Nftables);
    }
}
