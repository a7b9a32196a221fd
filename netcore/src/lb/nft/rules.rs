//! The nftables driver's table, `ip swarmkit` inside the namespace (so it dies with it), and
//! the commands that change it: its skeleton, a service's chain, dispatch and backend
//! elements, and the diff between two sets of services. Pure; the driver (`lb::nft`) keeps
//! what is applied and sends the batches.
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
//! map backends      { ipv4_addr . mark : ipv4_addr }                  VIP . i      -> i-th backend
//! map port_backends { inet_proto . inet_service . mark : ipv4_addr }  tcp . 80 . i -> i-th backend
//! chain svc-<fwmark>  VIP:  ct mark set numgen inc mod N offset O dnat to ip daddr . ct mark map @backends
//!                     port: meta l4proto P ct mark set numgen inc mod N offset O
//!                           dnat to meta l4proto . th dport . ct mark map @port_backends : target
//!                     (no backends: reject with tcp reset / icmp port-unreachable)
//! ```
//!
//! A service is one chain plus one dispatch element (and its backends' elements), so any
//! change touches O(1) objects. Backends live in named maps rather than in an anonymous map
//! per rule: libnftables lists every set before each batch, and a thousand anonymous maps made
//! every change cost milliseconds more per thousand services. The round-robin index passes
//! through the connection's ct mark (the packet's own mark could follow it into the VXLAN
//! encapsulation, where IPsec policies match on marks).

use std::net::Ipv4Addr;

use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{Statement, VerdictMap};
use nftables::types::NfHook;

use crate::lb::api::{Frontend, Protocol, ServiceMap, VirtualService};
use crate::lb::hairpin;
use crate::nft::NftBatch;
use crate::nft::expr::{self, eq, meta, payload, s, set_ref};
use crate::nft::ops::{Data, Field, Key, KeyPart, Proto, Stmt};

pub const TABLE: &str = "swarmkit";
const VIPS: &str = "vips";
const BACKENDS: &str = "backends";
const PORT_BACKENDS: &str = "port_backends";
/// Where the second of a service's two rotations starts (see `lb::nft`'s doc); no service
/// has this many backends.
pub(super) const ROTATION_SPAN: u32 = 1 << 16;
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

pub(super) type Offsets = std::collections::BTreeMap<u32, u32>;

pub(super) fn create_skeleton(b: &mut NftBatch) {
    b.recreate_table();
    b.add_verdict_map(VIPS, SetTypeValue::Single(SetType::Ipv4Addr));
    b.add_map(
        BACKENDS,
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Mark].into()),
        SetType::Ipv4Addr,
    );
    b.add_map(
        PORT_BACKENDS,
        SetTypeValue::Concatenated(
            vec![SetType::InetProto, SetType::InetService, SetType::Mark].into(),
        ),
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
            key: expr::pkt_proto_port(),
            data: set_ref(PORTS),
        })],
    );
    b.add_nat_chain("postrouting", NfHook::Postrouting);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        b.add_rule(
            "postrouting",
            vec![
                expr::matches(
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

/// Fills `make` and `retire` (see `Plan`) and returns where each service's rotation starts
/// afterwards. A service that leaves goes in `make` whole: dispatch element first, then its
/// chain and backends, so no element ever points at a missing chain inside the transaction and
/// a frontend that moves between services never collides with itself.
pub(super) fn diff(
    make: &mut NftBatch,
    retire: &mut NftBatch,
    old: &ServiceMap,
    new: &ServiceMap,
    old_offsets: &Offsets,
) -> Offsets {
    let offset_of = |mark: &u32| old_offsets.get(mark).copied().unwrap_or(0);
    for (mark, o) in old {
        match new.get(mark) {
            None => remove_dispatch(make, o),
            Some(n) if n.frontend != o.frontend => remove_dispatch(make, o),
            Some(_) => {}
        }
    }
    for (mark, o) in old.iter().filter(|(m, _)| !new.contains_key(m)) {
        make.delete_chain(&service_chain(*mark));
        remove_backends(make, o, offset_of(mark));
    }
    let mut offsets = Offsets::new();
    for (mark, n) in new {
        let chain = service_chain(*mark);
        let offset = match old.get(mark) {
            None => {
                make.add_chain(&chain);
                fill_chain(make, n, 0);
                add_dispatch(make, n);
                0
            }
            Some(o) if o == n => offset_of(mark),
            Some(o) => {
                let was = offset_of(mark);
                let now = if was == 0 { ROTATION_SPAN } else { 0 };
                make.flush_chain(&chain);
                fill_chain(make, n, now);
                remove_backends(retire, o, was);
                if o.frontend != n.frontend {
                    add_dispatch(make, n);
                }
                now
            }
        };
        if offset != 0 {
            offsets.insert(*mark, offset);
        }
    }
    offsets
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

fn dispatch_element(svc: &VirtualService) -> (&'static str, Key) {
    match svc.frontend {
        Frontend::Vip(vip) => (VIPS, Key(vec![KeyPart::Addr(vip)])),
        Frontend::Port { proto: p, port, .. } => (
            PORTS,
            Key(vec![KeyPart::Proto(proto(p)), KeyPart::Service(port)]),
        ),
    }
}

fn masq_element(port: u16) -> Key {
    Key(vec![KeyPart::Service(port)])
}

fn add_dispatch(b: &mut NftBatch, svc: &VirtualService) {
    let (map, key) = dispatch_element(svc);
    b.add_element(map, key, Some(Data::Goto(service_chain(svc.fwmark))));
    if let Frontend::Port { proto, port, .. } = svc.frontend {
        b.add_element(masq_set(proto), masq_element(port), None);
    }
}

fn remove_dispatch(b: &mut NftBatch, svc: &VirtualService) {
    let (map, key) = dispatch_element(svc);
    b.delete_element(map, key);
    if let Frontend::Port { proto, port, .. } = svc.frontend {
        b.delete_element(masq_set(proto), masq_element(port));
    }
}

/// The service's backend elements: its map, and each backend keyed by the frontend and its
/// place in the rotation (which starts at `offset`).
fn backend_keys(svc: &VirtualService, offset: u32) -> (&'static str, Vec<(Key, Ipv4Addr)>) {
    let (map, frontend) = match svc.frontend {
        Frontend::Vip(vip) => (BACKENDS, vec![KeyPart::Addr(vip)]),
        Frontend::Port { proto: p, port, .. } => (
            PORT_BACKENDS,
            vec![KeyPart::Proto(proto(p)), KeyPart::Service(port)],
        ),
    };
    let keys = svc
        .backends
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let mut key = frontend.clone();
            key.push(KeyPart::Mark(offset + i as u32));
            (Key(key), *addr)
        })
        .collect();
    (map, keys)
}

fn remove_backends(b: &mut NftBatch, svc: &VirtualService, offset: u32) {
    let (map, keys) = backend_keys(svc, offset);
    for (key, _) in keys {
        b.delete_element(map, key);
    }
}

/// The service's rules: round-robin DNAT over the backends, or an explicit reject so clients
/// fail fast instead of waiting on a blackhole.
fn fill_chain(b: &mut NftBatch, svc: &VirtualService, offset: u32) {
    let chain = service_chain(svc.fwmark);
    if svc.backends.is_empty() {
        b.add_typed_rule(
            &chain,
            vec![Stmt::L4protoIs(Proto::Tcp), Stmt::RejectTcpReset],
        );
        b.add_typed_rule(&chain, vec![Stmt::RejectPortUnreachable]);
        return;
    }
    let (map, keys) = backend_keys(svc, offset);
    for (key, addr) in keys {
        b.add_element(map, key, Some(Data::Addr(addr)));
    }
    let mut rule = Vec::new();
    let (key, port) = match svc.frontend {
        Frontend::Vip(_) => (vec![Field::IpDaddr, Field::CtMark], None),
        Frontend::Port {
            proto: p, target, ..
        } => {
            // nft only accepts a port in DNAT after the transport protocol is pinned down.
            rule.push(Stmt::L4protoIs(proto(p)));
            (
                vec![Field::L4proto, Field::ThDport, Field::CtMark],
                Some(target),
            )
        }
    };
    rule.push(Stmt::CtMarkSetNumgen {
        modulus: svc.backends.len() as u32,
        offset,
    });
    rule.push(Stmt::DnatToMap {
        key,
        map: map.to_string(),
        port,
    });
    b.add_typed_rule(&chain, rule);
}
