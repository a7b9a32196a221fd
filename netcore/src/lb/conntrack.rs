//! Forgets the conntrack entries that would send a client to a backend that has left.
//!
//! NAT is decided once per conntrack entry, so an entry that binds a client's source port to
//! a backend without a connection (a SYN never answered, a reset) sends that port's next
//! connection to the same backend, even once it has left the rotation. The nftables driver
//! deletes such entries over ctnetlink, on a socket opened inside the balancing namespace,
//! after each apply that takes a backend out.
//!
//! A TCP connection the backend accepted and that is not closing is kept: a task leaving a
//! service is taken out of the balancers before it is stopped, and drains what is under way
//! during its grace period. Deleting its entry would make the connection's next packet meet a
//! fresh NAT decision, so another backend, which resets it. UDP has no connection to drain.
//!
//! The entries are dumped with a kernel-side filter on the reply's source, the backend
//! (CTA_FILTER, kernels since 5.8), so a namespace holding many entries of live backends
//! costs little; where the kernel refuses the filter, the whole table is dumped. Each entry
//! is matched here and deleted by its original tuple and id, so an entry made since the dump
//! is never hit.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlaBuffer,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::api::{Frontend, LbError, Protocol, ServiceMap};
use crate::netns::NetNs;

/// A backend that left the service behind `frontend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Departure {
    pub backend: Ipv4Addr,
    pub frontend: Frontend,
}

/// The backends each service in `old` no longer has in `new` (all of them when the service
/// is gone or answers on another frontend).
pub(crate) fn departures(old: &ServiceMap, new: &ServiceMap) -> Vec<Departure> {
    let mut out = Vec::new();
    for (mark, o) in old {
        let kept: &[Ipv4Addr] = match new.get(mark) {
            Some(n) if n.frontend == o.frontend => &n.backends,
            _ => &[],
        };
        for b in o.backends.iter().filter(|b| !kept.contains(b)) {
            out.push(Departure {
                backend: *b,
                frontend: o.frontend.clone(),
            });
        }
    }
    out
}

/// Deletes the entries `departed` leaves stale in `ns`. Never fails the apply that called
/// it: the entries expire by themselves within `lb::CONNTRACK_TIMEOUTS` in any case.
pub(crate) fn forget(ns: &NetNs, departed: &[Departure]) {
    if departed.is_empty() {
        return;
    }
    match forget_all(ns, departed) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(
            namespace = ns.name(),
            entries = n,
            "forgot departed backends' conntrack entries"
        ),
        Err(e) => tracing::warn!(
            namespace = ns.name(),
            error = %e,
            "could not forget departed backends' conntrack entries"
        ),
    }
}

fn forget_all(ns: &NetNs, departed: &[Departure]) -> Result<usize, LbError> {
    let mut sock = ns.run(CtSocket::open)??;
    let stale = |entries: Vec<Entry>, departed: &[&Departure]| {
        entries
            .into_iter()
            .filter(|e| departed.iter().any(|d| e.is_stale_for(d)))
            .map(|e| e.key)
            .collect::<Vec<_>>()
    };
    let backends: BTreeSet<Ipv4Addr> = departed.iter().map(|d| d.backend).collect();
    let mut keys = Vec::new();
    for b in backends {
        // Matched against b's departures only: a kernel that ignores the filter lists
        // every entry for every backend, and none may be deleted twice.
        let of_b: Vec<&Departure> = departed.iter().filter(|d| d.backend == b).collect();
        match sock.dump(Some(b)) {
            Ok(entries) => keys.extend(stale(entries, &of_b)),
            Err(LbError::Conntrack { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
            {
                let all: Vec<&Departure> = departed.iter().collect();
                keys = stale(sock.dump(None)?, &all);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    sock.delete_all(&keys)
}

fn ct_err(op: &'static str) -> impl FnOnce(std::io::Error) -> LbError {
    move |source| LbError::Conntrack { op, source }
}

/// struct nlmsghdr, then struct nfgenmsg.
const NLMSG_AND_NFGENMSG_LEN: usize = 16 + 4;
const CTA_ID: u16 = 12;
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_CTA_IP_SRC: u32 = 1;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// `enum tcp_conntrack` states of a connection the backend answered that is not closing:
/// SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK.
const TCP_OPEN_STATES: std::ops::RangeInclusive<u8> = 2..=6;

/// One conntrack entry, as much of it as the match needs.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    proto: u8,
    orig_dst: Option<Ipv4Addr>,
    orig_dport: Option<u16>,
    reply_src: Option<Ipv4Addr>,
    reply_sport: Option<u16>,
    tcp_state: Option<u8>,
    /// The original tuple and id, as dumped: what a delete names it by.
    key: Vec<ConntrackAttribute>,
}

impl Entry {
    fn parse(attrs: Vec<ConntrackAttribute>) -> Entry {
        let mut e = Entry::default();
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(ref t) => {
                    let orig = ends(t);
                    (e.orig_dst, e.orig_dport) = (orig.dst, orig.dport);
                    e.proto = orig.proto.unwrap_or(0);
                    e.key.push(a);
                }
                ConntrackAttribute::CtaTupleReply(t) => {
                    let reply = ends(&t);
                    (e.reply_src, e.reply_sport) = (reply.src, reply.sport);
                }
                ConntrackAttribute::CtaProtoInfo(infos) => {
                    e.tcp_state = infos.iter().find_map(|i| match i {
                        ProtoInfo::TCP(tcp) => tcp.iter().find_map(|t| match t {
                            ProtoInfoTCP::State(s) => Some(*s),
                            _ => None,
                        }),
                        _ => None,
                    });
                }
                ConntrackAttribute::Other(ref nla)
                    if netlink_packet_core::Nla::kind(nla) == CTA_ID =>
                {
                    e.key.push(a)
                }
                _ => {}
            }
        }
        e
    }

    /// Whether this entry sends its client to `d`'s backend through `d`'s frontend and holds
    /// no connection that may still drain.
    fn is_stale_for(&self, d: &Departure) -> bool {
        if self.reply_src != Some(d.backend) {
            return false;
        }
        let through = match d.frontend {
            Frontend::Vip(vip) => self.orig_dst == Some(vip),
            Frontend::Port {
                proto,
                port,
                target,
            } => {
                let num = match proto {
                    Protocol::Tcp => IPPROTO_TCP,
                    Protocol::Udp => IPPROTO_UDP,
                };
                self.proto == num
                    && self.orig_dport == Some(port)
                    && self.reply_sport == Some(target)
            }
        };
        let draining = self.proto == IPPROTO_TCP
            && self.tcp_state.is_some_and(|s| TCP_OPEN_STATES.contains(&s));
        through && !draining
    }
}

/// The addresses and ports of a CTA_TUPLE_*.
#[derive(Default)]
struct Ends {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn ends(t: &[Tuple]) -> Ends {
    let v4 = |a: &IpAddr| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    };
    let mut e = Ends::default();
    for part in t {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => e.src = v4(a),
                        IPTuple::DestinationAddress(a) => e.dst = v4(a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => e.proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => e.sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => e.dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    e
}

/// Requests sent in one write: their acks (with an error's copy of the request) must fit
/// the socket's receive buffer.
const DELETES_PER_WRITE: usize = 64;

/// A blocking ctnetlink socket whose kernel side lives in the namespace it was opened in.
struct CtSocket {
    sock: Socket,
    seq: u32,
}

fn request(flags: u16, seq: u32, msg: ConntrackMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            msg,
        )),
    );
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The attributes of a dump asking only for entries whose reply comes from `backend`.
fn reply_source_filter(backend: Ipv4Addr) -> Vec<ConntrackAttribute> {
    let flags = [
        DefaultNla::new(CTA_FILTER_ORIG_FLAGS, 0u32.to_ne_bytes().to_vec()),
        DefaultNla::new(
            CTA_FILTER_REPLY_FLAGS,
            CTA_FILTER_F_CTA_IP_SRC.to_ne_bytes().to_vec(),
        ),
    ];
    let mut nested = vec![0; flags.as_slice().buffer_len()];
    flags.as_slice().emit(&mut nested);
    vec![
        ConntrackAttribute::CtaTupleReply(vec![Tuple::Ip(vec![IPTuple::SourceAddress(
            backend.into(),
        )])]),
        ConntrackAttribute::Other(DefaultNla::new(CTA_FILTER, nested)),
    ]
}

/// A dump of the IPv4 entries, only those whose reply comes from `reply_src` if given.
fn dump_request(seq: u32, reply_src: Option<Ipv4Addr>) -> Vec<u8> {
    let attrs = reply_src.map(reply_source_filter).unwrap_or_default();
    let mut buf = request(
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        ConntrackMessage::Get(attrs),
    );
    // The kernel parses CTA_FILTER strictly, so it must carry NLA_F_NESTED, which
    // netlink-packet-netfilter 0.4 leaves off an attribute it has no type for.
    let mut at = NLMSG_AND_NFGENMSG_LEN;
    while let Ok(mut nla) = NlaBuffer::new_checked(&mut buf[at..]) {
        let len = usize::from(nla.length());
        if nla.kind() == CTA_FILTER {
            nla.set_nested_flag();
        }
        at += (len + 3) & !3;
        if len == 0 || at >= buf.len() {
            break;
        }
    }
    buf
}

/// The messages of one read.
fn messages(buf: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, LbError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = NetlinkBuffer::new_checked(&buf[at..])
            .map_err(|_| LbError::BadReply("message length out of bounds"))?
            .length() as usize;
        out.push(
            NetlinkMessage::deserialize(&buf[at..at + len])
                .map_err(|_| LbError::BadReply("undecodable ctnetlink message"))?,
        );
        at += (len + 3) & !3;
    }
    Ok(out)
}

impl CtSocket {
    /// A socket in the calling thread's namespace.
    fn open() -> Result<Self, LbError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ct_err("socket"))?;
        sock.bind_auto().map_err(ct_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(ct_err("connect"))?;
        Ok(CtSocket { sock, seq: 0 })
    }

    fn recv(&self) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, LbError> {
        let (buf, _) = self.sock.recv_from_full().map_err(ct_err("recv"))?;
        messages(&buf)
    }

    /// The IPv4 entries, only those whose reply comes from `reply_src` if given (the caller
    /// still matches each: an older kernel may ignore the filter).
    fn dump(&mut self, reply_src: Option<Ipv4Addr>) -> Result<Vec<Entry>, LbError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&dump_request(seq, reply_src), 0)
            .map_err(ct_err("send dump"))?;
        let mut out = Vec::new();
        loop {
            for m in self.recv()? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(ct_err("dump")(e.to_io()));
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => out.push(Entry::parse(attrs)),
                    _ => {}
                }
            }
        }
    }

    /// Deletes each entry `keys` names; one already gone counts as deleted. Returns how
    /// many were, or the first other error once every request was answered.
    fn delete_all(&mut self, keys: &[Vec<ConntrackAttribute>]) -> Result<usize, LbError> {
        let mut first_err = None;
        for chunk in keys.chunks(DELETES_PER_WRITE) {
            let first = self.seq.wrapping_add(1);
            let wire: Vec<u8> = chunk
                .iter()
                .enumerate()
                .flat_map(|(i, key)| {
                    request(
                        NLM_F_REQUEST | NLM_F_ACK,
                        first.wrapping_add(i as u32),
                        ConntrackMessage::Delete(key.clone()),
                    )
                })
                .collect();
            self.seq = first.wrapping_add(chunk.len() as u32 - 1);
            self.sock.send(&wire, 0).map_err(ct_err("send delete"))?;
            let mut pending = chunk.len();
            while pending > 0 {
                for m in self.recv()? {
                    let NetlinkPayload::Error(e) = m.payload else {
                        continue;
                    };
                    if m.header.sequence_number.wrapping_sub(first) >= chunk.len() as u32 {
                        continue;
                    }
                    pending -= 1;
                    if e.code.is_some() && e.raw_code() != -libc::ENOENT && first_err.is_none() {
                        first_err = Some(e.to_io());
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(ct_err("delete")(e)),
            None => Ok(keys.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::api::{VirtualService, by_mark};
    use netlink_packet_core::NLA_F_NESTED;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const GONE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const STAYS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    fn tuple(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.into()),
                IPTuple::DestinationAddress(dst.into()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto.into()),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// A client's connection to `dst:dport`, NATed to `backend:bport`, in TCP `state`.
    fn entry(dst: Ipv4Addr, dport: u16, backend: Ipv4Addr, bport: u16, state: u8) -> Entry {
        let client = Ipv4Addr::new(10, 0, 0, 9);
        Entry::parse(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(client, dst, IPPROTO_TCP, 40000, dport)),
            ConntrackAttribute::CtaTupleReply(tuple(backend, client, IPPROTO_TCP, bport, 40000)),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(
                state,
            )])]),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 7u32.to_be_bytes().to_vec())),
        ])
    }

    const SYN_SENT: u8 = 1;
    const ESTABLISHED: u8 = 3;
    const TIME_WAIT: u8 = 7;
    const CLOSE: u8 = 8;

    #[test]
    fn an_entry_is_named_by_its_original_tuple_and_id() {
        let e = entry(VIP, 80, GONE, 80, SYN_SENT);
        assert_eq!(e.key.len(), 2);
        assert!(matches!(e.key[0], ConntrackAttribute::CtaTupleOrig(_)));
        assert_eq!(
            (e.orig_dst, e.orig_dport, e.reply_src, e.reply_sport),
            (Some(VIP), Some(80), Some(GONE), Some(80))
        );
    }

    #[test]
    fn only_the_departed_backends_unfinished_entries_are_stale() {
        let gone = Departure {
            backend: GONE,
            frontend: Frontend::Vip(VIP),
        };
        for state in [SYN_SENT, TIME_WAIT, CLOSE] {
            assert!(
                entry(VIP, 80, GONE, 80, state).is_stale_for(&gone),
                "{state}"
            );
        }
        assert!(
            !entry(VIP, 80, GONE, 80, ESTABLISHED).is_stale_for(&gone),
            "a connection it accepted drains"
        );
        assert!(!entry(VIP, 80, STAYS, 80, SYN_SENT).is_stale_for(&gone));
        let other_vip = Ipv4Addr::new(10, 1, 0, 2);
        assert!(
            !entry(other_vip, 80, GONE, 80, SYN_SENT).is_stale_for(&gone),
            "the backend may still serve another service"
        );

        let port = Departure {
            backend: GONE,
            frontend: Frontend::Port {
                proto: Protocol::Tcp,
                port: 8000,
                target: 8080,
            },
        };
        assert!(entry(STAYS, 8000, GONE, 8080, SYN_SENT).is_stale_for(&port));
        assert!(!entry(STAYS, 8001, GONE, 8080, SYN_SENT).is_stale_for(&port));
        assert!(!entry(STAYS, 8000, GONE, 9090, SYN_SENT).is_stale_for(&port));
    }

    #[test]
    fn departures_are_the_backends_a_service_lost() {
        let svc = |mark: u32, vip: Ipv4Addr, backends: &[Ipv4Addr]| VirtualService {
            fwmark: mark,
            frontend: Frontend::Vip(vip),
            backends: backends.to_vec(),
        };
        let gone = |b, vip| Departure {
            backend: b,
            frontend: Frontend::Vip(vip),
        };
        let old = by_mark(&[svc(256, VIP, &[GONE, STAYS])]);
        assert_eq!(
            departures(&old, &by_mark(&[svc(256, VIP, &[STAYS])])),
            [gone(GONE, VIP)]
        );
        assert!(departures(&old, &old).is_empty());
        assert_eq!(
            departures(&old, &by_mark(&[])),
            [gone(GONE, VIP), gone(STAYS, VIP)]
        );
        let moved = Ipv4Addr::new(10, 1, 0, 2);
        assert_eq!(
            departures(&old, &by_mark(&[svc(256, moved, &[GONE, STAYS])])),
            [gone(GONE, VIP), gone(STAYS, VIP)],
            "a service that answers elsewhere leaves its old address"
        );
    }

    #[test]
    fn the_dump_filter_asks_for_the_reply_source() {
        let m = dump_request(1, Some(GONE));
        // nlmsghdr (16), nfgenmsg (4), CTA_TUPLE_REPLY { CTA_TUPLE_IP { CTA_IP_V4_SRC } } (16),
        // CTA_FILTER { ORIG_FLAGS, REPLY_FLAGS } (20).
        assert_eq!(m.len(), 56);
        assert_eq!(&m[4..6], &0x0101u16.to_ne_bytes(), "ctnetlink GET");
        assert_eq!(&m[32..36], &GONE.octets());
        assert_eq!(
            &m[38..40],
            &(CTA_FILTER | NLA_F_NESTED).to_ne_bytes(),
            "nested"
        );
        assert_eq!(&m[52..56], &CTA_FILTER_F_CTA_IP_SRC.to_ne_bytes());
    }
}
