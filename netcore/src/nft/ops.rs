//! Typed commands for the objects a load balancer changes after its table exists: regular
//! chains, elements of its sets and maps, and the few rule shapes its service chains hold.
//! Each renders as the JSON command [`NftBatch`](super::NftBatch) has always sent and, in
//! [`super::netlink`], encodes as the nf_tables message with the same effect, so one plan
//! feeds both paths. Everything else (tables, base chains, set declarations, other rules)
//! stays JSON: libnftables builds it, once per table.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, MetaKey, NamedExpression, NgMode, Numgen};
use nftables::schema::{Chain, Element, FlushObject, NfCmd, NfListObject, Rule};
use nftables::stmt::{NAT, Reject, RejectType, Statement};
use nftables::types::{NfFamily, RejectCode};

use super::expr::{concat, eq, goto, ip, mapping, meta, num, payload, s, set_ref};

/// A transport protocol as sets of type `inet_proto` hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

/// One component of an element's key, by its nft data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// `ipv4_addr`
    Addr(Ipv4Addr),
    /// `inet_proto`
    Proto(Proto),
    /// `inet_service`
    Service(u16),
    /// `mark`
    Mark(u32),
}

/// An element's key: one part, or the parts of a concatenation in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(pub Vec<KeyPart>);

/// What a map element maps its key to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A verdict map's `goto <chain>`.
    Goto(String),
    Addr(Ipv4Addr),
}

/// A packet or connection field a rule loads (into a map lookup's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    IpDaddr,
    L4proto,
    ThDport,
    CtMark,
}

/// A statement of a service chain's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `meta l4proto P`
    L4protoIs(Proto),
    /// `reject with tcp reset`
    RejectTcpReset,
    /// `reject with icmp port-unreachable`
    RejectPortUnreachable,
    /// `ct mark set numgen inc mod M [offset O]`
    CtMarkSetNumgen { modulus: u32, offset: u32 },
    /// `dnat to K1 . K2 ... map @MAP [: PORT]`
    DnatToMap {
        key: Vec<Field>,
        map: String,
        port: Option<u16>,
    },
}

/// A command on one object of the batch's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddChain(String),
    FlushChain(String),
    DeleteChain(String),
    AddRule {
        chain: String,
        stmts: Vec<Stmt>,
    },
    AddElement {
        set: String,
        key: Key,
        data: Option<Data>,
    },
    DeleteElement {
        set: String,
        key: Key,
    },
}

impl KeyPart {
    fn to_expr(self) -> Expression<'static> {
        match self {
            KeyPart::Addr(a) => ip(a),
            KeyPart::Proto(p) => s(p.name()),
            KeyPart::Service(port) => num(port.into()),
            KeyPart::Mark(m) => num(m),
        }
    }
}

impl Key {
    fn to_expr(&self) -> Expression<'static> {
        match self.0.as_slice() {
            [one] => one.to_expr(),
            parts => concat(parts.iter().map(|p| p.to_expr()).collect()),
        }
    }
}

impl Data {
    fn to_expr(&self) -> Expression<'static> {
        match self {
            Data::Goto(chain) => goto(chain),
            Data::Addr(a) => ip(*a),
        }
    }
}

impl Field {
    fn to_expr(self) -> Expression<'static> {
        match self {
            Field::IpDaddr => payload("ip", "daddr"),
            Field::L4proto => meta(MetaKey::L4proto),
            Field::ThDport => payload("th", "dport"),
            Field::CtMark => ct_mark(),
        }
    }
}

fn ct_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(nftables::expr::CT {
        key: "mark".into(),
        family: None,
        dir: None,
    }))
}

impl Stmt {
    fn to_statement(&self) -> Statement<'static> {
        match self {
            Stmt::L4protoIs(p) => eq(meta(MetaKey::L4proto), s(p.name())),
            Stmt::RejectTcpReset => {
                Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
            }
            Stmt::RejectPortUnreachable => Statement::Reject(Some(Reject::new(
                Some(RejectType::ICMP),
                Some(RejectCode::PortUnreach),
            ))),
            Stmt::CtMarkSetNumgen { modulus, offset } => {
                Statement::Mangle(nftables::stmt::Mangle {
                    key: ct_mark(),
                    value: Expression::Named(NamedExpression::Numgen(Numgen {
                        mode: NgMode::Inc,
                        ng_mod: *modulus,
                        offset: (*offset != 0).then_some(*offset),
                    })),
                })
            }
            Stmt::DnatToMap { key, map, port } => {
                let key = match key.as_slice() {
                    [one] => one.to_expr(),
                    parts => concat(parts.iter().map(|f| f.to_expr()).collect()),
                };
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::Named(NamedExpression::Map(Box::new(
                        nftables::expr::Map {
                            key,
                            data: set_ref(map),
                        },
                    )))),
                    family: None,
                    port: port.map(|p| num(p.into())),
                    flags: None,
                }))
            }
        }
    }
}

impl Op {
    /// The JSON command, as nft's schema spells it, for `table` of family ip.
    pub fn to_json(&self, table: &str) -> NfCmd<'static> {
        let table: Cow<'static, str> = Cow::Owned(table.to_string());
        let chain = |name: &str| Chain {
            family: NfFamily::IP,
            table: table.clone(),
            name: Cow::Owned(name.to_string()),
            ..Chain::default()
        };
        let element = |set: &str, elem: Expression<'static>| {
            NfListObject::Element(Element {
                family: NfFamily::IP,
                table: table.clone(),
                name: Cow::Owned(set.to_string()),
                elem: Cow::Owned(vec![elem]),
            })
        };
        match self {
            Op::AddChain(name) => NfCmd::Add(NfListObject::Chain(chain(name))),
            Op::FlushChain(name) => NfCmd::Flush(FlushObject::Chain(chain(name))),
            Op::DeleteChain(name) => NfCmd::Delete(NfListObject::Chain(chain(name))),
            Op::AddRule { chain, stmts } => NfCmd::Add(NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: table.clone(),
                chain: Cow::Owned(chain.clone()),
                expr: Cow::Owned(stmts.iter().map(Stmt::to_statement).collect()),
                handle: None,
                index: None,
                comment: None,
            })),
            Op::AddElement { set, key, data } => {
                let elem = match data {
                    Some(d) => mapping(key.to_expr(), d.to_expr()),
                    None => key.to_expr(),
                };
                NfCmd::Add(element(set, elem))
            }
            Op::DeleteElement { set, key } => NfCmd::Delete(element(set, key.to_expr())),
        }
    }
}

/// As nft prints them: how an error names the object it was about.
impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Addr(a) => write!(f, "{a}"),
            KeyPart::Proto(p) => f.write_str(p.name()),
            KeyPart::Service(port) => write!(f, "{port}"),
            KeyPart::Mark(m) => write!(f, "{m}"),
        }
    }
}

/// Writes `parts` joined as nft joins a concatenation: `a . b . c`.
fn write_dotted<T: fmt::Display>(f: &mut fmt::Formatter<'_>, parts: &[T]) -> fmt::Result {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(" . ")?;
        }
        write!(f, "{part}")?;
    }
    Ok(())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_dotted(f, &self.0)
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Goto(chain) => write!(f, "goto {chain}"),
            Data::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::IpDaddr => "ip daddr",
            Field::L4proto => "meta l4proto",
            Field::ThDport => "th dport",
            Field::CtMark => "ct mark",
        })
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::L4protoIs(p) => write!(f, "meta l4proto {}", p.name()),
            Stmt::RejectTcpReset => f.write_str("reject with tcp reset"),
            Stmt::RejectPortUnreachable => f.write_str("reject with icmp port-unreachable"),
            Stmt::CtMarkSetNumgen { modulus, offset } => {
                write!(f, "ct mark set numgen inc mod {modulus}")?;
                if *offset != 0 {
                    write!(f, " offset {offset}")?;
                }
                Ok(())
            }
            Stmt::DnatToMap { key, map, port } => {
                f.write_str("dnat to ")?;
                write_dotted(f, key)?;
                write!(f, " map @{map}")?;
                if let Some(port) = port {
                    write!(f, " : {port}")?;
                }
                Ok(())
            }
        }
    }
}

/// What the op does, for an error about it: "adding element 10.0.0.5 . 3 : 10.0.1.2 to map
/// backends".
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddChain(name) => write!(f, "adding chain {name}"),
            Op::FlushChain(name) => write!(f, "flushing chain {name}"),
            Op::DeleteChain(name) => write!(f, "deleting chain {name}"),
            Op::AddRule { chain, stmts } => {
                f.write_str("adding rule '")?;
                for (i, stmt) in stmts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{stmt}")?;
                }
                write!(f, "' to chain {chain}")
            }
            Op::AddElement {
                set,
                key,
                data: Some(data),
            } => write!(f, "adding element {key} : {data} to map {set}"),
            Op::AddElement {
                set,
                key,
                data: None,
            } => write!(f, "adding element {key} to set {set}"),
            Op::DeleteElement { set, key } => write!(f, "deleting element {key} from {set}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_name_their_object_as_nft_prints_it() {
        let add = Op::AddElement {
            set: "backends".into(),
            key: Key(vec![KeyPart::Addr([10, 0, 0, 5].into()), KeyPart::Mark(3)]),
            data: Some(Data::Addr([10, 0, 1, 2].into())),
        };
        assert_eq!(
            add.to_string(),
            "adding element 10.0.0.5 . 3 : 10.0.1.2 to map backends"
        );
        let rule = Op::AddRule {
            chain: "svc-300".into(),
            stmts: vec![
                Stmt::L4protoIs(Proto::Udp),
                Stmt::CtMarkSetNumgen {
                    modulus: 2,
                    offset: 65536,
                },
                Stmt::DnatToMap {
                    key: vec![Field::L4proto, Field::ThDport, Field::CtMark],
                    map: "port_backends".into(),
                    port: Some(5353),
                },
            ],
        };
        assert_eq!(
            rule.to_string(),
            "adding rule 'meta l4proto udp ct mark set numgen inc mod 2 offset 65536 dnat to \
             meta l4proto . th dport . ct mark map @port_backends : 5353' to chain svc-300"
        );
    }
}
