//! The nftables driver: table `ip swarmkit` inside the namespace (so it dies with it).
//!
//! ```text
//! map vips  { ipv4_addr : verdict }                    VIP        -> goto svc-<fwmark>
//! map ports { inet_proto . inet_service : verdict }    tcp . 80   -> goto svc-<fwmark>
//! set masq_tcp, masq_udp { inet_service }              published ports to masquerade
//! set hairpin { ipv4_addr . ipv4_addr }                VIP backends as b . b
//! chain output      nat/output      meta l4proto {tcp,udp} ip daddr vmap @vips
//! chain prerouting  nat/prerouting  meta l4proto {tcp,udp} ip daddr vmap @vips
//!                                   meta l4proto . th dport vmap @ports
//! chain postrouting nat/postrouting ct status dnat, l4proto P, ct original proto-dst @masq_P: masquerade
//!                                   ip saddr . ip daddr @hairpin masquerade
//! map backends { ipv4_addr . mark : ipv4_addr }        VIP . i    -> i-th backend
//! chain svc-<fwmark>  VIP:  ct mark set numgen inc mod N dnat to ip daddr . ct mark map @backends
//!                     port: dnat to numgen inc mod N map { 0 : b0, 1 : b1, ... } : target
//!                     (no backends: reject with tcp reset / icmp port-unreachable)
//! ```
//!
//! A service is one chain plus one dispatch element (and its backends' elements), so any
//! change touches O(1) objects: a backend change flushes and refills the service's chain
//! (removing a backend from the rotation means no new connection can land on it), a frontend
//! change swaps elements. VIP backends live in one named map rather than in an anonymous map
//! per rule: libnftables lists every set before each batch, and a thousand anonymous maps made
//! every change cost milliseconds more per thousand services. The round-robin index passes
//! through the connection's ct mark (the packet's own mark could follow it into the VXLAN
//! encapsulation, where IPsec policies match on marks).

use std::net::Ipv4Addr;

use nftables::expr::{Expression, MetaKey, NamedExpression, NgMode, Numgen, SetItem};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{NAT, Reject, RejectType, Statement, VerdictMap};
use nftables::types::{NfHook, RejectCode};

use super::nftbatch::{
    self, NftBatch, concat, eq, goto, ip, mapping, meta, num, payload, proto_port, s, set_ref,
};
use super::{
    Driver, Frontend, LbError, LoadBalancer, Protocol, ServiceMap, VirtualService, by_mark,
    hairpin, has_port_frontend, validate,
};
use crate::netns::NetNs;

pub const TABLE: &str = "swarmkit";
const VIPS: &str = "vips";
const BACKENDS: &str = "backends";
const PORTS: &str = "ports";

fn masq_set(proto: Protocol) -> &'static str {
    match proto {
        Protocol::Tcp => "masq_tcp",
        Protocol::Udp => "masq_udp",
    }
}

pub fn service_chain(fwmark: u32) -> String {
    format!("svc-{fwmark}")
}

pub struct NftLb {
    ns: NetNs,
    /// What the kernel holds, as far as this instance knows. `None` until the first apply
    /// (re)creates the table, so a restarted agent never diffs against a stale table.
    applied: Option<ServiceMap>,
    forwarding: bool,
    last_commands: usize,
}

impl NftLb {
    pub fn new(ns: NetNs) -> Self {
        NftLb {
            ns,
            applied: None,
            forwarding: false,
            last_commands: 0,
        }
    }

    /// The batch that takes the kernel from what was last applied to `desired`. Pure, so the
    /// delta logic is testable without a kernel.
    pub fn plan(&self, desired: &[VirtualService]) -> Result<NftBatch, LbError> {
        validate(desired)?;
        let new = by_mark(desired);
        let mut b = NftBatch::new(TABLE);
        let empty = ServiceMap::new();
        let old = match &self.applied {
            Some(old) => old,
            None => {
                create_skeleton(&mut b);
                &empty
            }
        };
        diff(&mut b, old, &new);
        hairpin::diff(&mut b, old, &new);
        Ok(b)
    }
}

fn create_skeleton(b: &mut NftBatch) {
    b.recreate_table();
    b.add_verdict_map(VIPS, SetTypeValue::Single(SetType::Ipv4Addr));
    b.add_map(
        BACKENDS,
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Mark].into()),
        SetType::Ipv4Addr,
    );
    b.add_verdict_map(
        PORTS,
        SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
    );
    for proto in [Protocol::Tcp, Protocol::Udp] {
        b.add_set(masq_set(proto), SetTypeValue::Single(SetType::InetService));
    }
    let to_vip = || {
        vec![
            eq(
                meta(MetaKey::L4proto),
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(s("tcp")),
                    SetItem::Element(s("udp")),
                ])),
            ),
            Statement::VerdictMap(VerdictMap {
                key: payload("ip", "daddr"),
                data: set_ref(VIPS),
            }),
        ]
    };
    b.add_nat_chain("output", NfHook::Output);
    b.add_rule("output", to_vip());
    b.add_nat_chain("prerouting", NfHook::Prerouting);
    b.add_rule("prerouting", to_vip());
    b.add_rule(
        "prerouting",
        vec![Statement::VerdictMap(VerdictMap {
            key: nftbatch::pkt_proto_port(),
            data: set_ref(PORTS),
        })],
    );
    b.add_nat_chain("postrouting", NfHook::Postrouting);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        b.add_rule(
            "postrouting",
            vec![
                nftbatch::matches(
                    Expression::Named(NamedExpression::CT(ct("status", None))),
                    nftables::stmt::Operator::IN,
                    s("dnat"),
                ),
                eq(meta(MetaKey::L4proto), s(proto.as_str())),
                eq(
                    Expression::Named(NamedExpression::CT(ct(
                        "proto-dst",
                        Some(nftables::expr::CTDir::Original),
                    ))),
                    set_ref(masq_set(proto)),
                ),
                Statement::Masquerade(None),
            ],
        );
    }
    hairpin::skeleton(b);
}

fn ct(key: &'static str, dir: Option<nftables::expr::CTDir>) -> nftables::expr::CT<'static> {
    nftables::expr::CT {
        key: key.into(),
        family: None,
        dir,
    }
}

/// Removals first (elements, then the chains they pointed at), then chain contents, then new
/// elements, so a frontend that moves between services never collides with itself and no
/// element ever points at a missing chain inside the transaction.
fn diff(b: &mut NftBatch, old: &ServiceMap, new: &ServiceMap) {
    for (mark, o) in old {
        match new.get(mark) {
            None => remove_dispatch(b, o),
            Some(n) if n.frontend != o.frontend => remove_dispatch(b, o),
            Some(_) => {}
        }
    }
    for (mark, o) in old.iter().filter(|(m, _)| !new.contains_key(m)) {
        b.delete_chain(&service_chain(*mark));
        remove_backends(b, o);
    }
    for (mark, n) in new {
        let chain = service_chain(*mark);
        match old.get(mark) {
            None => {
                b.add_chain(&chain);
                fill_chain(b, n);
                add_dispatch(b, n);
            }
            Some(o) if o == n => {}
            Some(o) => {
                if o.backends != n.backends || o.frontend != n.frontend {
                    b.flush_chain(&chain);
                    remove_backends(b, o);
                    fill_chain(b, n);
                }
                if o.frontend != n.frontend {
                    add_dispatch(b, n);
                }
            }
        }
    }
}

fn target(svc: &VirtualService) -> Option<(Protocol, u16)> {
    match svc.frontend {
        Frontend::Vip(_) => None,
        Frontend::Port { proto, target, .. } => Some((proto, target)),
    }
}

fn dispatch_element(svc: &VirtualService) -> (&'static str, Expression<'static>) {
    match svc.frontend {
        Frontend::Vip(vip) => (VIPS, ip(vip)),
        Frontend::Port { proto, port, .. } => (PORTS, proto_port(proto, port)),
    }
}

fn add_dispatch(b: &mut NftBatch, svc: &VirtualService) {
    let (map, key) = dispatch_element(svc);
    b.add_element(map, mapping(key, goto(&service_chain(svc.fwmark))));
    if let Frontend::Port { proto, port, .. } = svc.frontend {
        b.add_element(masq_set(proto), num(port.into()));
    }
}

fn remove_dispatch(b: &mut NftBatch, svc: &VirtualService) {
    let (map, key) = dispatch_element(svc);
    b.delete_element(map, key);
    if let Frontend::Port { proto, port, .. } = svc.frontend {
        b.delete_element(masq_set(proto), num(port.into()));
    }
}

/// A VIP's `backends` elements, keyed by the VIP and the backend's place in the rotation.
fn backend_keys(svc: &VirtualService) -> Vec<(Expression<'static>, Ipv4Addr)> {
    let Frontend::Vip(vip) = svc.frontend else {
        return Vec::new();
    };
    svc.backends
        .iter()
        .enumerate()
        .map(|(i, addr)| (concat(vec![ip(vip), num(i as u32)]), *addr))
        .collect()
}

fn remove_backends(b: &mut NftBatch, svc: &VirtualService) {
    for (key, _) in backend_keys(svc) {
        b.delete_element(BACKENDS, key);
    }
}

/// The service's rules: round-robin DNAT over the backends, or an explicit reject so clients
/// fail fast instead of waiting on a blackhole.
fn fill_chain(b: &mut NftBatch, svc: &VirtualService) {
    let chain = service_chain(svc.fwmark);
    if svc.backends.is_empty() {
        b.add_rule(
            &chain,
            vec![
                eq(meta(MetaKey::L4proto), s("tcp")),
                Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
            ],
        );
        b.add_rule(
            &chain,
            vec![Statement::Reject(Some(Reject::new(
                Some(RejectType::ICMP),
                Some(RejectCode::PortUnreach),
            )))],
        );
        return;
    }
    let n = svc.backends.len() as u32;
    let numgen = || {
        Expression::Named(NamedExpression::Numgen(Numgen {
            mode: NgMode::Inc,
            ng_mod: n,
            offset: None,
        }))
    };
    if let Frontend::Vip(_) = svc.frontend {
        for (key, addr) in backend_keys(svc) {
            b.add_element(BACKENDS, mapping(key, ip(addr)));
        }
        let ct_mark = || Expression::Named(NamedExpression::CT(ct("mark", None)));
        b.add_rule(
            &chain,
            vec![
                Statement::Mangle(nftables::stmt::Mangle {
                    key: ct_mark(),
                    value: numgen(),
                }),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::Named(NamedExpression::Map(Box::new(
                        nftables::expr::Map {
                            key: concat(vec![payload("ip", "daddr"), ct_mark()]),
                            data: set_ref(BACKENDS),
                        },
                    )))),
                    family: None,
                    port: None,
                    flags: None,
                })),
            ],
        );
        return;
    }
    let table: Vec<SetItem<'static>> = svc
        .backends
        .iter()
        .enumerate()
        .map(|(i, addr)| SetItem::Mapping(num(i as u32), ip(*addr)))
        .collect();
    let addr = Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
        key: numgen(),
        data: Expression::Named(NamedExpression::Set(table)),
    })));
    let mut rule = Vec::new();
    let mut port = None;
    if let Some((proto, target)) = target(svc) {
        // nft only accepts a port in DNAT after the transport protocol is pinned down.
        rule.push(eq(meta(MetaKey::L4proto), s(proto.as_str())));
        port = Some(num(target.into()));
    }
    rule.push(Statement::DNAT(Some(NAT {
        addr: Some(addr),
        family: None,
        port,
        flags: None,
    })));
    b.add_rule(&chain, rule);
}

impl LoadBalancer for NftLb {
    fn driver(&self) -> Driver {
        Driver::Nftables
    }

    fn apply(&mut self, desired: &[VirtualService]) -> Result<(), LbError> {
        let batch = self.plan(desired)?;
        if has_port_frontend(desired) && !self.forwarding {
            // Routing-mesh traffic enters on one interface and leaves to a backend on another.
            self.ns.set_sysctl("net/ipv4/ip_forward", "1")?;
            self.forwarding = true;
        }
        if let Err(e) = batch.run(&self.ns) {
            // The batch is atomic, so the kernel is unchanged; but a failing delta usually means
            // the table was altered behind our back, so the next apply rebuilds it whole.
            self.applied = None;
            return Err(e);
        }
        self.last_commands = batch.len();
        self.applied = Some(by_mark(desired));
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), LbError> {
        let mut b = NftBatch::new(TABLE);
        b.delete_table();
        b.run(&self.ns)?;
        self.applied = None;
        self.last_commands = b.len();
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

    fn dummy_ns() -> NetNs {
        NetNs::of_pid(std::process::id()).expect("own netns handle")
    }

    fn svc(mark: u32, vip: [u8; 4], backends: &[[u8; 4]]) -> VirtualService {
        VirtualService {
            fwmark: mark,
            frontend: Frontend::Vip(vip.into()),
            backends: backends.iter().map(|b| Ipv4Addr::from(*b)).collect(),
        }
    }

    fn ops(b: &NftBatch) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&b.to_json().unwrap()).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                let (kind, _) = body.as_object().unwrap().iter().next().unwrap();
                format!("{verb} {kind}")
            })
            .collect()
    }

    #[test]
    fn first_apply_builds_skeleton_then_services() {
        let lb = NftLb::new(dummy_ns());
        let b = lb
            .plan(&[svc(256, [10, 0, 1, 1], &[[10, 0, 0, 2]])])
            .unwrap();
        let json = b.to_json().unwrap();
        assert!(json.contains(r#""map":"verdict""#), "{json}");
        assert!(
            json.contains(r#""numgen":{"mod":1,"mode":"inc"}"#),
            "{json}"
        );
        assert!(json.contains(r#"{"goto":{"target":"svc-256"}}"#), "{json}");
    }

    #[test]
    fn delta_is_proportional_to_changes() {
        let mut lb = NftLb::new(dummy_ns());
        let base: Vec<_> = (0..100u32)
            .map(|i| {
                svc(
                    256 + i,
                    [10, 1, (i / 250) as u8, (i % 250) as u8],
                    &[[10, 0, 0, 2]],
                )
            })
            .collect();
        lb.applied = Some(by_mark(&base));
        assert!(lb.plan(&base).unwrap().is_empty(), "no change, no batch");

        let mut more = base.clone();
        more.push(svc(1000, [10, 2, 0, 1], &[[10, 0, 0, 3]]));
        assert_eq!(
            ops(&lb.plan(&more).unwrap()),
            // Its backend, rule and dispatch element, and the new backend's hairpin pair.
            [
                "add chain",
                "add element",
                "add rule",
                "add element",
                "add element"
            ]
        );

        let mut scaled = base.clone();
        scaled[5].backends.push([10, 0, 0, 9].into());
        assert_eq!(
            ops(&lb.plan(&scaled).unwrap()),
            // The rotation is rewritten whole: its old element, its two, the rule, and the
            // new backend's hairpin pair.
            [
                "flush chain",
                "delete element",
                "add element",
                "add element",
                "add rule",
                "add element"
            ]
        );

        let fewer = &base[1..];
        assert_eq!(
            ops(&lb.plan(fewer).unwrap()),
            ["delete element", "delete chain", "delete element"]
        );
    }

    #[test]
    fn port_frontend_masquerades_and_maps_target() {
        let mut lb = NftLb::new(dummy_ns());
        lb.applied = Some(ServiceMap::new());
        let port = VirtualService {
            fwmark: 300,
            frontend: Frontend::Port {
                proto: Protocol::Udp,
                port: 53,
                target: 5353,
            },
            backends: vec![[10, 0, 0, 2].into()],
        };
        let b = lb.plan(std::slice::from_ref(&port)).unwrap();
        let json = b.to_json().unwrap();
        assert!(json.contains(r#""port":5353"#), "{json}");
        assert!(
            json.contains(r#""elem":[53],"family":"ip","name":"masq_udp""#),
            "{json}"
        );
        assert!(json.contains(r#"{"concat":["udp",53]}"#), "{json}");
    }

    #[test]
    fn empty_backends_reject() {
        let mut lb = NftLb::new(dummy_ns());
        lb.applied = Some(ServiceMap::new());
        let json = lb
            .plan(&[svc(256, [10, 0, 1, 1], &[])])
            .unwrap()
            .to_json()
            .unwrap();
        assert!(json.contains(r#""type":"tcp reset""#), "{json}");
        assert!(json.contains("port-unreachable"), "{json}");
    }
}
