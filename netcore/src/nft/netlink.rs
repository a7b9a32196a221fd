//! Typed ops ([`super::ops`]) sent straight to the kernel as nf_tables netlink messages, in
//! one nfnetlink transaction (NFNL_MSG_BATCH_BEGIN ... BATCH_END), on a socket opened inside
//! the target namespace.
//!
//! Why not libnftables for these too: before each batch that adds a rule or an element it
//! lists every chain of the table to resolve names, and the load balancer's table has a chain
//! per service, so one added service cost ~4-10 ms at 2400 services against ~1 ms at one.
//! The kernel resolves chain and set names itself. What still grows with the table is the
//! kernel's own check at commit: a batch that adds a rule with `nat` or a `goto` element
//! makes it validate every chain the base chains reach, so all the services' chains. At
//! 2400 services (kernel 6.18, this 2-core host) adding a chain costs ~20 µs and a backend
//! element ~50 µs, but a service's rule or dispatch element ~0.6 ms; one service's batch
//! ~0.8 ms against ~2.8 ms through libnftables (`incremental_batch_cost` in
//! `netcore/tests/nft_netlink.rs`).
//!
//! The messages are built with `netlink-packet-netfilter` (already the conntrack code's
//! crate): its `nftables` module has the table, chain, rule, set-element messages and the
//! cmp, immediate, lookup, meta and payload expressions; `numgen`, `ct`, `nat` and `reject`,
//! which it lacks, are written as named expressions of raw attributes (`Expressions::Other`).
//! The expressions are the ones nft itself generates for the same rules (checked with
//! `nft --debug=netlink`), so `nft list` reads them back identically; the test
//! `netcore/tests/nft_netlink.rs` compares the listings of both paths after each step.
//!
//! Every message asks for an ACK and has its own sequence number, so a kernel error names
//! the op that caused it. The kernel answers a batch while it handles the send, all or
//! nothing: a failed message aborts the whole transaction.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate,
    ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, SetElementAttribute, SetElementList, SetElementMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::ops::{Data, Field, Key, KeyPart, Op, Stmt};
use crate::netns::NetNs;

/// Batch begin and end carry the subsystem they open in their header's resource id.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// <linux/netfilter/nf_tables.h>, for the expressions the crate has no type for.
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_INCREMENTAL: u32 = 0;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;
const NFT_CT_MARK: u32 = 3;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

/// How long an answer the kernel has already queued may take to be read: it never waits in
/// practice (the batch is answered during the send); this bounds a kernel that does not.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket buffers above this are sized to the batch: the default (~208 KiB) holds the
/// messages of a few hundred services and the answers of a few hundred messages.
const DEFAULT_BUFFER: usize = 128 * 1024;
/// Room for one answer (an ACK is 36 bytes).
const ANSWER_BUFFER: usize = 8192;
/// Receive buffer counted per answer: an ACK's skb with its overhead.
const BUFFER_PER_ANSWER: usize = 2048;

/// The 32-bit register slot `slot` (0 = the first after the verdict) as nft numbers it: a
/// slot that starts a 128-bit register by that register's number, the others by their own.
/// The kernel treats both names alike; using nft's keeps the rules identical to its own.
fn register(slot: u32) -> Register {
    const NFT_REG_1: u32 = 1;
    const NFT_REG32_00: u32 = 8;
    if slot.is_multiple_of(4) {
        Register::from(NFT_REG_1 + slot / 4)
    } else {
        Register::from(NFT_REG32_00 + slot)
    }
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn raw_expr(name: &str, attrs: Vec<(u16, Vec<u8>)>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes: attrs
            .into_iter()
            .map(|(kind, value)| DefaultNla::new(kind, value))
            .collect(),
    }
    .into()
}

fn load(field: Field, reg: Register) -> ListAttribute<ExpressionAttribute> {
    let payload = |base, offset, len| {
        Expressions::Payload(vec![
            Payload::DestinationRegister(reg),
            Payload::Base(base),
            Payload::Offset(offset),
            Payload::Len(len),
        ])
        .into()
    };
    match field {
        Field::IpDaddr => payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
        Field::ThDport => payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        Field::L4proto => Expressions::Meta(vec![
            Meta::DestinationRegister(reg),
            Meta::Key(MetaKey::L4Proto),
        ])
        .into(),
        Field::CtMark => raw_expr(
            "ct",
            vec![
                (NFTA_CT_DREG, be32(reg.into())),
                (NFTA_CT_KEY, be32(NFT_CT_MARK)),
            ],
        ),
    }
}

fn rule_expressions(stmts: &[Stmt]) -> Vec<ListAttribute<ExpressionAttribute>> {
    let first = register(0);
    let mut out = Vec::new();
    for stmt in stmts {
        match stmt {
            Stmt::L4protoIs(proto) => {
                out.push(load(Field::L4proto, first));
                out.push(
                    Expressions::Cmp(vec![
                        Cmp::SourceRegister(first),
                        Cmp::Op(Operator::Equal),
                        Cmp::Data(DataAttribute::Value(vec![proto.number()])),
                    ])
                    .into(),
                );
            }
            Stmt::RejectTcpReset => out.push(raw_expr(
                "reject",
                vec![(NFTA_REJECT_TYPE, be32(NFT_REJECT_TCP_RST))],
            )),
            Stmt::RejectPortUnreachable => out.push(raw_expr(
                "reject",
                vec![
                    (NFTA_REJECT_TYPE, be32(NFT_REJECT_ICMP_UNREACH)),
                    (NFTA_REJECT_ICMP_CODE, vec![ICMP_PORT_UNREACH]),
                ],
            )),
            Stmt::CtMarkSetNumgen { modulus, offset } => {
                out.push(raw_expr(
                    "numgen",
                    vec![
                        (NFTA_NG_DREG, be32(first.into())),
                        (NFTA_NG_MODULUS, be32(*modulus)),
                        (NFTA_NG_TYPE, be32(NFT_NG_INCREMENTAL)),
                        (NFTA_NG_OFFSET, be32(*offset)),
                    ],
                ));
                out.push(raw_expr(
                    "ct",
                    vec![
                        (NFTA_CT_KEY, be32(NFT_CT_MARK)),
                        (NFTA_CT_SREG, be32(first.into())),
                    ],
                ));
            }
            Stmt::DnatToMap { key, map, port } => {
                // A concatenation takes one 32-bit slot per component (none is longer).
                for (slot, field) in key.iter().enumerate() {
                    out.push(load(*field, register(slot as u32)));
                }
                out.push(
                    Expressions::Lookup(vec![
                        Lookup::Set(map.clone()),
                        Lookup::SourceRegister(first),
                        Lookup::DestinationRegister(first),
                    ])
                    .into(),
                );
                let mut nat = vec![
                    (NFTA_NAT_TYPE, be32(NFT_NAT_DNAT)),
                    (NFTA_NAT_FAMILY, be32(libc::NFPROTO_IPV4 as u32)),
                    (NFTA_NAT_REG_ADDR_MIN, be32(first.into())),
                ];
                if let Some(port) = port {
                    // The next 128-bit register after the key, where nft puts it.
                    let reg = register((key.len() as u32).next_multiple_of(4));
                    out.push(
                        Expressions::Immediate(vec![
                            Immediate::DestinationRegister(reg),
                            Immediate::Data(DataAttribute::Value(port.to_be_bytes().to_vec())),
                        ])
                        .into(),
                    );
                    nat.push((NFTA_NAT_REG_PROTO_MIN, be32(reg.into())));
                    nat.push((NFTA_NAT_FLAGS, be32(NF_NAT_RANGE_PROTO_SPECIFIED)));
                }
                out.push(raw_expr("nat", nat));
            }
        }
    }
    out
}

/// A key as the kernel stores it: addresses and ports in network order, marks in host
/// order, a protocol as one byte; in a concatenation each component padded to 4 bytes.
pub(crate) fn key_bytes(key: &Key) -> Vec<u8> {
    let concatenated = key.0.len() > 1;
    let mut out = Vec::new();
    for part in &key.0 {
        let mut bytes = match part {
            KeyPart::Addr(a) => a.octets().to_vec(),
            KeyPart::Proto(p) => vec![p.number()],
            KeyPart::Service(port) => port.to_be_bytes().to_vec(),
            KeyPart::Mark(m) => m.to_ne_bytes().to_vec(),
        };
        if concatenated {
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        out.extend(bytes);
    }
    out
}

fn data_attr(data: &Data) -> DataAttribute {
    match data {
        Data::Goto(chain) => DataAttribute::Verdict(vec![
            VerdictAttribute::Code(Verdict::Goto),
            VerdictAttribute::Chain(chain.clone()),
        ]),
        Data::Addr(a) => DataAttribute::Value(a.octets().to_vec()),
    }
}

fn elements(table: &str, set: &str, key: &Key, data: Option<&Data>) -> SetElementMessage {
    let mut element = vec![SetElementAttribute::Key(DataAttribute::Value(key_bytes(
        key,
    )))];
    if let Some(data) = data {
        element.push(SetElementAttribute::Data(data_attr(data)));
    }
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
            SetElementList::Elements(vec![ListAttribute::Element(element)]),
        ],
    }
}

/// The message for `op` in `table`, and the flags nft's own `add` gives it (no NLM_F_EXCL:
/// adding what exists is no error, as through libnftables).
fn message(op: &Op, table: &str) -> (NfTablesMessage, u16) {
    let chain = |name: &str| ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(name.to_string()),
        ],
    };
    match op {
        Op::AddChain(name) => (NfTablesMessage::NewChain(chain(name)), NLM_F_CREATE),
        // A rule delete naming only the chain deletes all its rules: nft's `flush chain`.
        Op::FlushChain(name) => (
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.to_string()),
                    RuleAttribute::Chain(name.clone()),
                ],
            }),
            0,
        ),
        Op::DeleteChain(name) => (NfTablesMessage::DeleteChain(chain(name)), 0),
        Op::AddRule { chain, stmts } => (
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.to_string()),
                    RuleAttribute::Chain(chain.clone()),
                    RuleAttribute::Expressions(rule_expressions(stmts)),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
        Op::AddElement { set, key, data } => (
            NfTablesMessage::NewSetElement(elements(table, set, key, data.as_ref())),
            NLM_F_CREATE,
        ),
        Op::DeleteElement { set, key } => (
            NfTablesMessage::DeleteSetElement(elements(table, set, key, None)),
            0,
        ),
    }
}

fn wire<T: Into<netlink_packet_netfilter::NetfilterMessageInner>>(
    out: &mut Vec<u8>,
    header: NetfilterHeader,
    inner: T,
    flags: u16,
    seq: u32,
) {
    let mut nl = NetlinkHeader::default();
    nl.flags = NLM_F_REQUEST | flags;
    nl.sequence_number = seq;
    let mut m = NetlinkMessage::new(
        nl,
        NetlinkPayload::from(NetfilterMessage::new(header, inner)),
    );
    m.finalize();
    let at = out.len();
    out.resize(at + m.buffer_len(), 0);
    m.serialize(&mut out[at..]);
}

/// The transaction that applies `ops` to `table`, its messages numbered from `first_seq`
/// (BATCH_BEGIN), each op `first_seq + 1 + its index`, BATCH_END last.
pub(crate) fn transaction(table: &str, ops: &[&Op], first_seq: u32) -> Vec<u8> {
    let control = || NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
    let ip = || NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
    let mut out = Vec::new();
    wire(
        &mut out,
        control(),
        ControlMessage::BatchBegin,
        0,
        first_seq,
    );
    for (i, op) in ops.iter().enumerate() {
        let (msg, flags) = message(op, table);
        let seq = first_seq.wrapping_add(1 + i as u32);
        wire(&mut out, ip(), msg, flags | NLM_F_ACK, seq);
    }
    let end = first_seq.wrapping_add(1 + ops.len() as u32);
    wire(&mut out, control(), ControlMessage::BatchEnd, 0, end);
    out
}

/// Why a transaction did not apply.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached the kernel: the batch may go another way.
    Unsent(&'static str, io::Error),
    /// The kernel refused the op at this index (the transaction was aborted whole).
    Refused(usize, i32),
    /// The kernel refused the batch itself, or committing it.
    RefusedBatch(i32),
    /// The answers could not be read: whether the batch applied is unknown.
    Unanswered(&'static str, io::Error),
}

/// A namespace's socket, opened on first use (and again after a failed open).
#[derive(Default)]
struct Slot(Option<NfSocket>);

/// Applies `ops` to `table` in `ns` as one transaction, on the namespace's own socket.
pub(crate) fn apply_in(ns: &NetNs, table: &str, ops: &[&Op]) -> Result<(), Failure> {
    ns.attached(|slot: &mut Slot| {
        if slot.0.is_none() {
            let opened = ns
                .run(NfSocket::open)
                .map_err(|e| Failure::Unsent("entering the namespace", io::Error::other(e)))?;
            slot.0 = Some(opened.map_err(|e| Failure::Unsent("opening a socket", e))?);
        }
        let Some(sock) = slot.0.as_mut() else {
            return Err(Failure::Unsent(
                "opening a socket",
                io::Error::other("no socket"),
            ));
        };
        let applied = sock.apply(table, ops);
        if let Err(Failure::Unanswered(..)) = applied {
            // Answers may be left half read: the next batch starts on a fresh socket.
            slot.0 = None;
        }
        applied
    })
}

/// An nfnetlink socket whose kernel side lives in the namespace it was opened in.
pub(crate) struct NfSocket {
    sock: Socket,
    seq: u32,
    sndbuf: usize,
    rcvbuf: usize,
}

fn set_buffer(sock: &Socket, opt: libc::c_int, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: a live socket and an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl NfSocket {
    /// A socket in the calling thread's namespace.
    pub(crate) fn open() -> io::Result<NfSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // An error's answer need not carry a copy of the message: its sequence number names it.
        sock.set_cap_ack(true)?;
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a live socket and a timeval option value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NfSocket {
            sock,
            seq: 0,
            sndbuf: 0,
            rcvbuf: 0,
        })
    }

    /// Applies `ops` to `table` as one transaction.
    pub(crate) fn apply(&mut self, table: &str, ops: &[&Op]) -> Result<(), Failure> {
        let first = self.seq.wrapping_add(1);
        let batch = transaction(table, ops, first);
        self.seq = first.wrapping_add(ops.len() as u32 + 1);
        // One send is one transaction: the buffers are sized for the whole batch and all of
        // its answers (the kernel refuses a send larger than the send buffer, and drops
        // answers that do not fit the receive buffer).
        if batch.len() > DEFAULT_BUFFER.max(self.sndbuf) {
            set_buffer(&self.sock, libc::SO_SNDBUFFORCE, batch.len())
                .map_err(|e| Failure::Unsent("sizing the send buffer", e))?;
            self.sndbuf = batch.len();
        }
        let answers = ops.len() * BUFFER_PER_ANSWER;
        if answers > DEFAULT_BUFFER.max(self.rcvbuf) {
            set_buffer(&self.sock, libc::SO_RCVBUFFORCE, answers)
                .map_err(|e| Failure::Unsent("sizing the receive buffer", e))?;
            self.rcvbuf = answers;
        }
        self.sock
            .send(&batch, 0)
            .map_err(|e| Failure::Unsent("send", e))?;
        self.answers(first, ops.len())
    }

    /// Reads the answers to the batch whose BATCH_BEGIN was `first`: one per op, then the
    /// first refusal if any. Answers to earlier batches (left by a failed read) are skipped.
    fn answers(&mut self, first: u32, ops: usize) -> Result<(), Failure> {
        let mut answered = vec![false; ops];
        let mut left = ops;
        let mut refused = None;
        // An answer is an error code and the header it answers: one read each, never more.
        let mut buf = Vec::with_capacity(ANSWER_BUFFER);
        while left > 0 {
            buf.clear();
            let len = self
                .sock
                .recv(&mut buf, libc::MSG_TRUNC)
                .map_err(|e| Failure::Unanswered("recv", e))?;
            if len > buf.len() {
                return Err(Failure::Unanswered(
                    "recv",
                    io::Error::other(format!("an answer of {len} bytes")),
                ));
            }
            let mut at = 0;
            while at < buf.len() {
                let msg = NetlinkBuffer::new_checked(&buf[at..]).map_err(|_| {
                    Failure::Unanswered("recv", io::Error::other("truncated netlink message"))
                })?;
                let len = msg.length() as usize;
                if msg.message_type() == NLMSG_ERROR {
                    let code = msg
                        .payload()
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EBADMSG);
                    let index = msg.sequence_number().wrapping_sub(first) as usize;
                    match index {
                        // BATCH_BEGIN (the batch refused whole, or its commit failed).
                        0 if code != 0 => return Err(Failure::RefusedBatch(-code)),
                        i if (1..=ops).contains(&i) && !answered[i - 1] => {
                            answered[i - 1] = true;
                            left -= 1;
                            if code != 0 && refused.is_none() {
                                refused = Some(Failure::Refused(i - 1, -code));
                            }
                        }
                        _ => {}
                    }
                }
                at += len.next_multiple_of(4).max(4);
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::ops::Proto;

    #[test]
    fn concatenated_keys_pad_each_part_to_four_bytes_in_its_own_byte_order() {
        let key = Key(vec![
            KeyPart::Proto(Proto::Udp),
            KeyPart::Service(53),
            KeyPart::Mark(65537),
        ]);
        let mut want = vec![17, 0, 0, 0, 0, 53, 0, 0];
        want.extend(65537u32.to_ne_bytes());
        assert_eq!(key_bytes(&key), want);
        assert_eq!(key_bytes(&Key(vec![KeyPart::Service(53)])), [0, 53]);
        assert_eq!(
            key_bytes(&Key(vec![KeyPart::Addr([10, 0, 0, 5].into())])),
            [10, 0, 0, 5]
        );
    }

    #[test]
    fn registers_are_numbered_as_nft_numbers_them() {
        let nums: Vec<u32> = (0..6).map(|s| register(s).into()).collect();
        assert_eq!(nums, [1, 9, 10, 11, 2, 13]);
    }

    /// Begin and end frame the ops; each op asks for an ACK under its own number.
    #[test]
    fn a_transaction_numbers_its_messages_and_asks_an_ack_for_each_op() {
        let op = Op::AddChain("svc-256".into());
        let bytes = transaction("swarmkit", &[&op, &op], 41);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < bytes.len() {
            let m = NetlinkBuffer::new_checked(&bytes[at..]).unwrap();
            seen.push((
                m.message_type(),
                m.sequence_number(),
                m.flags() & NLM_F_ACK != 0,
            ));
            at += (m.length() as usize).next_multiple_of(4);
        }
        let new_chain = (10 << 8) | 3;
        assert_eq!(
            seen,
            [
                (16, 41, false),
                (new_chain, 42, true),
                (new_chain, 43, true),
                (17, 44, false)
            ]
        );
    }
}
