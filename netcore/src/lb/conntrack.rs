//! Forgets the conntrack entries that would send a client to a backend that has left.
//!
//! NAT is decided once per conntrack entry, so an entry that binds a client's source port to
//! a backend that never answered (a SYN to a task that died) sends that port's next
//! connection to the same backend, even once it has left the rotation. The nftables driver
//! deletes such entries over ctnetlink, on a socket opened inside the balancing namespace,
//! after each apply that takes a backend out.
//!
//! Only entries the backend never answered are deleted. One it answered holds a connection
//! that drains during the task's grace period (deleting it would give the connection's next
//! packet a fresh NAT decision, so another backend, which resets it), or a closed one whose
//! port the kernel itself rebalances on the next SYN (TIME_WAIT, CLOSE after a reset).
//! Under load those are most of a namespace's entries: deleting them too made an apply
//! under `changing_backends_under_load_refuses_nothing`'s load cost ~20 ms more.
//!
//! One dump lists the namespace's unanswered entries (the kernel filters on IPS_SEEN_REPLY
//! with CTA_STATUS_MASK, since 5.19; an older kernel lists them all), and each is matched
//! here and deleted by its original tuple and id, so an entry made since the dump is never
//! hit. An entry whose answer arrives between the dump and the delete is still deleted: that
//! takes a backend slower to answer than the time since the rotation that left it out was
//! committed. The dump walks the node's whole conntrack hash (262144 buckets here): ~9 ms,
//! once per apply that takes backends out, however many.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Status, Tuple,
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
    let entries = match sock.dump(Filter::Unanswered) {
        Err(LbError::Conntrack { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
        {
            sock.dump(Filter::None)?
        }
        other => other?,
    };
    sock.delete_all(&stale(entries, departed))
}

/// The keys of the entries any of `departed` leaves stale.
fn stale(entries: Vec<Entry>, departed: &[Departure]) -> Vec<Vec<ConntrackAttribute>> {
    entries
        .into_iter()
        .filter(|e| departed.iter().any(|d| e.is_stale_for(d)))
        .map(|e| e.key)
        .collect()
}

/// What a dump asks the kernel to leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    /// Leaves out the entries that saw a reply: all but the unanswered.
    Unanswered,
    /// Leaves out nothing.
    None,
}

fn ct_err(op: &'static str) -> impl FnOnce(std::io::Error) -> LbError {
    move |source| LbError::Conntrack { op, source }
}

const CTA_ID: u16 = 12;
const CTA_STATUS_MASK: u16 = 26;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One conntrack entry, as much of it as the match needs.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    proto: u8,
    orig_dst: Option<Ipv4Addr>,
    orig_dport: Option<u16>,
    reply_src: Option<Ipv4Addr>,
    reply_sport: Option<u16>,
    answered: bool,
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
                ConntrackAttribute::CtaStatus(status) => {
                    e.answered = status.contains(Status::SeenReply);
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

    /// Whether this entry sends its client to `d`'s backend through `d`'s frontend, which
    /// never answered it.
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
        through && !self.answered
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

/// A dump of the IPv4 entries, filtered as `filter` says.
fn dump_request(seq: u32, filter: Filter) -> Vec<u8> {
    let attrs = match filter {
        Filter::Unanswered => vec![
            ConntrackAttribute::CtaStatus(Status::empty()),
            ConntrackAttribute::Other(DefaultNla::new(
                CTA_STATUS_MASK,
                Status::SeenReply.bits().to_be_bytes().to_vec(),
            )),
        ],
        Filter::None => Vec::new(),
    };
    request(
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        ConntrackMessage::Get(attrs),
    )
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
        super::genl::messages::<NetfilterMessage>(&buf)
    }

    /// The IPv4 entries, less what `filter` lets the kernel leave out (the caller still
    /// matches each: an older kernel may ignore the filter).
    fn dump(&mut self, filter: Filter) -> Result<Vec<Entry>, LbError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&dump_request(seq, filter), 0)
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

    /// A client's connection to `dst:dport`, NATed to `backend:bport`, with `status`.
    fn entry(dst: Ipv4Addr, dport: u16, backend: Ipv4Addr, bport: u16, status: Status) -> Entry {
        let client = Ipv4Addr::new(10, 0, 0, 9);
        Entry::parse(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(client, dst, IPPROTO_TCP, 40000, dport)),
            ConntrackAttribute::CtaTupleReply(tuple(backend, client, IPPROTO_TCP, bport, 40000)),
            ConntrackAttribute::CtaStatus(status),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 7u32.to_be_bytes().to_vec())),
        ])
    }

    const UNANSWERED: Status = Status::Confirmed.union(Status::DstNat);
    const ANSWERED: Status = UNANSWERED.union(Status::SeenReply);

    #[test]
    fn an_entry_is_named_by_its_original_tuple_and_id() {
        let e = entry(VIP, 80, GONE, 80, UNANSWERED);
        assert_eq!(e.key.len(), 2);
        assert!(matches!(e.key[0], ConntrackAttribute::CtaTupleOrig(_)));
        assert_eq!(
            (e.orig_dst, e.orig_dport, e.reply_src, e.reply_sport),
            (Some(VIP), Some(80), Some(GONE), Some(80))
        );
    }

    #[test]
    fn only_what_the_departed_backend_never_answered_is_stale() {
        let gone = Departure {
            backend: GONE,
            frontend: Frontend::Vip(VIP),
        };
        assert!(entry(VIP, 80, GONE, 80, UNANSWERED).is_stale_for(&gone));
        assert!(
            !entry(VIP, 80, GONE, 80, ANSWERED).is_stale_for(&gone),
            "a connection it accepted drains"
        );
        assert!(!entry(VIP, 80, STAYS, 80, UNANSWERED).is_stale_for(&gone));
        let other_vip = Ipv4Addr::new(10, 1, 0, 2);
        assert!(
            !entry(other_vip, 80, GONE, 80, UNANSWERED).is_stale_for(&gone),
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
        assert!(entry(STAYS, 8000, GONE, 8080, UNANSWERED).is_stale_for(&port));
        assert!(!entry(STAYS, 8001, GONE, 8080, UNANSWERED).is_stale_for(&port));
        assert!(!entry(STAYS, 8000, GONE, 9090, UNANSWERED).is_stale_for(&port));
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
    fn the_dump_leaves_answered_entries_to_the_kernel() {
        let m = dump_request(1, Filter::Unanswered);
        // nlmsghdr (16), nfgenmsg (4), CTA_STATUS (8), CTA_STATUS_MASK (8).
        assert_eq!(m.len(), 36);
        assert_eq!(&m[4..6], &0x0101u16.to_ne_bytes(), "ctnetlink GET");
        assert_eq!(&m[24..28], &[0; 4], "status: none of the mask");
        assert_eq!(&m[30..32], &CTA_STATUS_MASK.to_ne_bytes());
        assert_eq!(&m[32..36], &2u32.to_be_bytes(), "mask: IPS_SEEN_REPLY");
        assert_eq!(dump_request(1, Filter::None).len(), 20);
    }
}
