//! Expression and statement shorthands for the rules of an [`NftBatch`](super::NftBatch),
//! shared by the load-balancer drivers and the routing-mesh tables.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Verdict};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};

pub fn s(v: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

pub fn ip(a: Ipv4Addr) -> Expression<'static> {
    s(&a.to_string())
}

pub fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(field.to_string()),
        },
    )))
}

pub fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

/// `proto . port` (`proto` as nft names it: `tcp`, `udp`), the key of the published-port
/// maps and sets.
pub fn proto_port(proto: &str, port: u16) -> Expression<'static> {
    concat(vec![s(proto), num(port.into())])
}

/// `meta l4proto . th dport`, the packet side of `proto_port`.
pub fn pkt_proto_port() -> Expression<'static> {
    concat(vec![meta(MetaKey::L4proto), payload("th", "dport")])
}

/// `fib daddr type`: compare with `s("local")` for "addressed to this namespace".
pub fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(nftables::expr::NamedExpression::Fib(nftables::expr::Fib {
        result: nftables::expr::FibResult::Type,
        flags: [nftables::expr::FibFlag::Daddr].into_iter().collect(),
    }))
}

/// `dnat to addr`, keeping the port.
pub fn dnat_to(addr: Ipv4Addr) -> Statement<'static> {
    Statement::DNAT(Some(to_addr(addr)))
}

/// `snat to addr`, keeping the port.
pub fn snat_to(addr: Ipv4Addr) -> Statement<'static> {
    Statement::SNAT(Some(to_addr(addr)))
}

fn to_addr(addr: Ipv4Addr) -> nftables::stmt::NAT<'static> {
    nftables::stmt::NAT {
        addr: Some(ip(addr)),
        family: None,
        port: None,
        flags: None,
    }
}

pub fn set_ref(name: &str) -> Expression<'static> {
    s(&format!("@{name}"))
}

/// A map element `key : value`.
pub fn mapping(key: Expression<'static>, value: Expression<'static>) -> Expression<'static> {
    Expression::List(vec![key, value])
}

pub fn goto(chain: &str) -> Expression<'static> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    }))
}

pub fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}
