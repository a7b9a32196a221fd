//! The IPVS driver, Swarm style: nft rules in the namespace put a firewall mark on each
//! service's traffic, and IPVS virtual services keyed by that mark pick a backend (scheduler
//! rr, masquerade forwarding, weight 1).
//!
//! ```text
//! table ip swarmkit
//!   map vip_marks  { ipv4_addr : mark }                  VIP       -> fwmark
//!   map port_marks { inet_proto . inet_service : mark }  tcp . 80  -> fwmark
//!   set masq_marks { mark }                              fwmarks of Port frontends
//!   chain output      route/output      meta l4proto {tcp,udp} meta mark set ip daddr map @vip_marks
//!   set hairpin    { ipv4_addr . ipv4_addr }             VIP backends as b . b
//!   chain prerouting  filter/prerouting meta l4proto {tcp,udp} meta mark set ip daddr map @vip_marks
//!                                       fib daddr type local meta mark set meta l4proto . th dport map @port_marks
//!   chain postrouting nat/postrouting   meta mark @masq_marks masquerade
//!                                       ip saddr . ip daddr @hairpin masquerade
//! ```
//!
//! IPVS has no transactions: the requests of one apply go out in one write and are handled in
//! order. A service with no destinations makes IPVS answer ICMP port unreachable, so an empty
//! service rejects rather than blackholes. The driver owns IPVS in its namespace: the first
//! apply flushes whatever an earlier process left there. Round-robin order follows the order
//! destinations were added; reordering existing backends does not reorder IPVS.

use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{Mangle, Statement};
use nftables::types::{NfChainType, NfHook};

use super::api::{
    Driver, Frontend, LbError, LoadBalancer, ServiceMap, VirtualService, by_mark,
    has_port_frontend, validate,
};
use super::genl::GenlSocket;
use super::hairpin;
use super::ipvs_msg::{Dest, IPVS_GENL_NAME, IpvsRequest};
use crate::netns::NetNs;
use crate::nft::expr::{
    eq, fib_daddr_type, ip, mapping, meta, num, payload, pkt_proto_port, proto_port, s, set_ref,
};
use crate::nft::{NftBatch, PRIO_MANGLE};

pub const TABLE: &str = "swarmkit";
const VIP_MARKS: &str = "vip_marks";
const PORT_MARKS: &str = "port_marks";
const MASQ_MARKS: &str = "masq_marks";

/// Swarm's IPVS settings: no stalls from connection reuse (moby#35082), and connections to a
/// removed backend fail fast instead of hanging.
const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conn_reuse_mode", "0"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    // Makes IPVS connections visible to conntrack so nft can masquerade them.
    ("net/ipv4/vs/conntrack", "1"),
];

pub struct IpvsLb {
    ns: NetNs,
    sock: Option<(GenlSocket, u16)>,
    applied: Option<ServiceMap>,
    forwarding: bool,
    last_commands: usize,
}

/// The IPVS requests and nft commands one apply sends.
pub struct IpvsPlan {
    pub ipvs: Vec<IpvsRequest>,
    pub nft: NftBatch,
}

fn dests(svc: &VirtualService) -> Vec<Dest> {
    let port = match svc.frontend {
        Frontend::Vip(_) => 0,
        Frontend::Port { target, .. } => target,
    };
    svc.backends
        .iter()
        .map(|&addr| Dest { addr, port })
        .collect()
}

impl IpvsLb {
    pub fn new(ns: NetNs) -> Self {
        IpvsLb {
            ns,
            sock: None,
            applied: None,
            forwarding: false,
            last_commands: 0,
        }
    }

    pub fn plan(&self, desired: &[VirtualService]) -> Result<IpvsPlan, LbError> {
        validate(desired)?;
        let new = by_mark(desired);
        let mut ipvs = Vec::new();
        let mut nft = NftBatch::new(TABLE);
        let empty = ServiceMap::new();
        let old = match &self.applied {
            Some(old) => old,
            None => {
                ipvs.push(IpvsRequest::Flush);
                create_skeleton(&mut nft);
                &empty
            }
        };
        for (mark, o) in old {
            match new.get(mark) {
                None => {
                    remove_marks(&mut nft, o);
                    ipvs.push(IpvsRequest::DelService { fwmark: *mark });
                }
                Some(n) if n.frontend != o.frontend => remove_marks(&mut nft, o),
                Some(_) => {}
            }
        }
        for (mark, n) in &new {
            let fwmark = *mark;
            let Some(o) = old.get(mark) else {
                ipvs.push(IpvsRequest::NewService { fwmark });
                for dest in dests(n) {
                    ipvs.push(IpvsRequest::NewDest {
                        fwmark,
                        dest,
                        weight: 1,
                    });
                }
                add_marks(&mut nft, n);
                continue;
            };
            let (before, after) = (dests(o), dests(n));
            for dest in before.iter().filter(|d| !after.contains(d)) {
                // Weight 0 first: even if the delete fails, nothing new is scheduled there.
                let dest = *dest;
                ipvs.push(IpvsRequest::SetDest {
                    fwmark,
                    dest,
                    weight: 0,
                });
                ipvs.push(IpvsRequest::DelDest { fwmark, dest });
            }
            for dest in after.iter().filter(|d| !before.contains(d)) {
                ipvs.push(IpvsRequest::NewDest {
                    fwmark,
                    dest: *dest,
                    weight: 1,
                });
            }
            if n.frontend != o.frontend {
                add_marks(&mut nft, n);
            }
        }
        hairpin::diff(&mut nft, old, &new);
        Ok(IpvsPlan { ipvs, nft })
    }

    fn socket(&mut self) -> Result<&mut (GenlSocket, u16), LbError> {
        if self.sock.is_none() {
            let mut sock = GenlSocket::open_in(&self.ns)?;
            let family = sock.resolve_family(IPVS_GENL_NAME)?;
            for (key, value) in SYSCTLS {
                self.ns.set_sysctl(key, value)?;
            }
            self.sock = Some((sock, family));
        }
        self.sock
            .as_mut()
            .ok_or(LbError::FamilyMissing(IPVS_GENL_NAME))
    }

    fn send(&mut self, reqs: &[IpvsRequest]) -> Result<usize, LbError> {
        let (sock, family) = self.socket()?;
        let family = *family;
        sock.request_all(|seq| {
            reqs.iter()
                .zip(seq..)
                .map(|(r, seq)| r.to_message(family, seq))
                .collect()
        })
    }
}

fn create_skeleton(b: &mut NftBatch) {
    b.recreate_table();
    b.add_map(
        VIP_MARKS,
        SetTypeValue::Single(SetType::Ipv4Addr),
        SetType::Mark,
    );
    b.add_map(
        PORT_MARKS,
        SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
        SetType::Mark,
    );
    b.add_set(MASQ_MARKS, SetTypeValue::Single(SetType::Mark));
    let set_mark = |key| {
        Statement::Mangle(Mangle {
            key: meta(MetaKey::Mark),
            value: key,
        })
    };
    // A route chain, so the kernel re-routes locally generated packets after the mark changes.
    b.add_base_chain("output", NfChainType::Route, NfHook::Output, PRIO_MANGLE);
    let to_vip = || {
        vec![
            eq(
                meta(MetaKey::L4proto),
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(s("tcp")),
                    SetItem::Element(s("udp")),
                ])),
            ),
            set_mark(map_lookup(payload("ip", "daddr"), VIP_MARKS)),
        ]
    };
    b.add_rule("output", to_vip());
    b.add_base_chain(
        "prerouting",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_MANGLE,
    );
    // Tasks' traffic to the VIPs a network sandbox answers for on its bridge.
    b.add_rule("prerouting", to_vip());
    b.add_rule(
        "prerouting",
        // Only traffic addressed to this namespace: a node balancing its own mesh also
        // forwards traffic, and that is not the service's.
        vec![
            eq(fib_daddr_type(), s("local")),
            set_mark(map_lookup(pkt_proto_port(), PORT_MARKS)),
        ],
    );
    b.add_nat_chain("postrouting", NfHook::Postrouting);
    b.add_rule(
        "postrouting",
        vec![
            eq(meta(MetaKey::Mark), set_ref(MASQ_MARKS)),
            Statement::Masquerade(None),
        ],
    );
    hairpin::skeleton(b);
}

fn map_lookup(key: Expression<'static>, map: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
        key,
        data: set_ref(map),
    })))
}

fn add_marks(b: &mut NftBatch, svc: &VirtualService) {
    let mark = num(svc.fwmark);
    match svc.frontend {
        Frontend::Vip(vip) => b.add_element_expr(VIP_MARKS, mapping(ip(vip), mark)),
        Frontend::Port { proto, port, .. } => {
            b.add_element_expr(
                PORT_MARKS,
                mapping(proto_port(proto.as_str(), port), mark.clone()),
            );
            b.add_element_expr(MASQ_MARKS, mark);
        }
    }
}

fn remove_marks(b: &mut NftBatch, svc: &VirtualService) {
    match svc.frontend {
        Frontend::Vip(vip) => b.delete_element_expr(VIP_MARKS, ip(vip)),
        Frontend::Port { proto, port, .. } => {
            b.delete_element_expr(PORT_MARKS, proto_port(proto.as_str(), port));
            b.delete_element_expr(MASQ_MARKS, num(svc.fwmark));
        }
    }
}

impl LoadBalancer for IpvsLb {
    fn driver(&self) -> Driver {
        Driver::Ipvs
    }

    fn apply(&mut self, desired: &[VirtualService]) -> Result<(), LbError> {
        let plan = self.plan(desired)?;
        if has_port_frontend(desired) && !self.forwarding {
            self.ns.set_sysctl("net/ipv4/ip_forward", "1")?;
            self.forwarding = true;
        }
        // Services exist before marks steer traffic to them; on removal the order matters
        // little because an unmarked packet simply is not balanced.
        if let Err(e) = self.send(&plan.ipvs) {
            // IPVS may now hold part of the requests: rebuild from scratch next time.
            self.applied = None;
            return Err(e);
        }
        if let Err(e) = plan.nft.run(&self.ns) {
            self.applied = None;
            return Err(e.into());
        }
        self.last_commands = plan.ipvs.len() + plan.nft.len();
        self.applied = Some(by_mark(desired));
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), LbError> {
        let mut nft = NftBatch::new(TABLE);
        nft.delete_table();
        nft.run(&self.ns)?;
        self.send(&[IpvsRequest::Flush])?;
        self.applied = None;
        self.last_commands = nft.len() + 1;
        Ok(())
    }

    fn last_apply_commands(&self) -> usize {
        self.last_commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lb_with(applied: &[VirtualService]) -> IpvsLb {
        let mut lb = IpvsLb::new(NetNs::of_pid(std::process::id()).unwrap());
        lb.applied = Some(by_mark(applied));
        lb
    }

    fn svc(backends: &[[u8; 4]]) -> VirtualService {
        VirtualService {
            fwmark: 256,
            frontend: Frontend::Vip([10, 0, 1, 1].into()),
            backends: backends.iter().map(|b| Ipv4Addr::from(*b)).collect(),
        }
    }

    #[test]
    fn first_apply_flushes_and_adds() {
        let lb = IpvsLb::new(NetNs::of_pid(std::process::id()).unwrap());
        let plan = lb.plan(&[svc(&[[10, 0, 0, 2]])]).unwrap();
        assert_eq!(plan.ipvs[0], IpvsRequest::Flush);
        assert_eq!(plan.ipvs[1], IpvsRequest::NewService { fwmark: 256 });
        let json = plan.nft.to_json().unwrap();
        assert!(json.contains(r#""elem":[["10.0.1.1",256]]"#), "{json}");
    }

    #[test]
    fn removed_backend_is_drained_then_deleted() {
        let lb = lb_with(&[svc(&[[10, 0, 0, 2], [10, 0, 0, 3]])]);
        let plan = lb.plan(&[svc(&[[10, 0, 0, 3], [10, 0, 0, 4]])]).unwrap();
        let gone = Dest {
            addr: [10, 0, 0, 2].into(),
            port: 0,
        };
        let added = Dest {
            addr: [10, 0, 0, 4].into(),
            port: 0,
        };
        assert_eq!(
            plan.ipvs,
            vec![
                IpvsRequest::SetDest {
                    fwmark: 256,
                    dest: gone,
                    weight: 0
                },
                IpvsRequest::DelDest {
                    fwmark: 256,
                    dest: gone
                },
                IpvsRequest::NewDest {
                    fwmark: 256,
                    dest: added,
                    weight: 1
                },
            ]
        );
        // Marks are untouched; only the hairpin pairs follow the backends.
        assert_eq!(plan.nft.len(), 2);
    }

    #[test]
    fn unchanged_sends_nothing_and_removal_unmarks_first() {
        let s = svc(&[[10, 0, 0, 2]]);
        let lb = lb_with(std::slice::from_ref(&s));
        let same = lb.plan(std::slice::from_ref(&s)).unwrap();
        assert!(same.ipvs.is_empty() && same.nft.is_empty());
        let gone = lb.plan(&[]).unwrap();
        assert_eq!(gone.ipvs, vec![IpvsRequest::DelService { fwmark: 256 }]);
        // The VIP's mark, then its backend's hairpin pair.
        assert_eq!(gone.nft.len(), 2);
    }
}
