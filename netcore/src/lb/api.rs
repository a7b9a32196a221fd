//! What a load balancer is asked to hold: virtual services, each a frontend (a VIP, or a
//! published port in an ingress sandbox) and its backends in round-robin order; the
//! [`LoadBalancer`] trait both drivers implement, and their error. Pure: the drivers and the
//! factory build on it, and it names neither.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::journal::JournalError;
use crate::netns::NetNsError;
use crate::nft::NftError;

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
    Journal(Box<JournalError>),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("generic netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ctnetlink {op}: {source}")]
    Conntrack {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("generic netlink family {0:?} is not available in this kernel")]
    FamilyMissing(&'static str),
    #[error("malformed generic netlink reply: {0}")]
    BadReply(&'static str),
}

impl From<JournalError> for LbError {
    fn from(e: JournalError) -> Self {
        LbError::Journal(Box::new(e))
    }
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

/// Desired services keyed by fwmark, the identity both drivers diff on.
pub(crate) type ServiceMap = std::collections::BTreeMap<u32, VirtualService>;

pub(crate) fn by_mark(desired: &[VirtualService]) -> ServiceMap {
    desired.iter().map(|s| (s.fwmark, s.clone())).collect()
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
}
