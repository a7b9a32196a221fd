//! A blocking generic netlink socket: enough to resolve a family and send a run of requests
//! that each want an ACK. Blocking keeps it usable from the synchronous `LoadBalancer` trait
//! without a runtime; the socket is created on a thread inside the target namespace and keeps
//! talking to that namespace from any thread afterwards.

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::api::LbError;
use super::ipvs_msg::serialize;
use crate::netns::NetNs;

fn nl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> LbError {
    move |source| LbError::Netlink { op, source }
}

pub struct GenlSocket {
    sock: Socket,
    seq: u32,
}

/// The messages of one read, parsed as replies to requests of payload `F` (generic netlink
/// here, ctnetlink in `conntrack`).
pub(super) fn messages<F>(buf: &[u8]) -> Result<Vec<NetlinkMessage<F>>, LbError>
where
    F: NetlinkDeserializable,
{
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = NetlinkBuffer::new_checked(&buf[at..])
            .map_err(|_| LbError::BadReply("message length out of bounds"))?
            .length() as usize;
        out.push(
            NetlinkMessage::deserialize(&buf[at..at + len])
                .map_err(|_| LbError::BadReply("undecodable netlink message"))?,
        );
        at += (len + 3) & !3;
    }
    Ok(out)
}

impl GenlSocket {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Self, LbError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(nl_err("socket"))?;
        sock.bind_auto().map_err(nl_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect"))?;
        Ok(GenlSocket { sock, seq: 0 })
    }

    /// A socket whose kernel side lives in `ns`.
    pub fn open_in(ns: &NetNs) -> Result<Self, LbError> {
        ns.run(Self::open)?
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&self) -> Result<Vec<u8>, LbError> {
        let (buf, _) = self.sock.recv_from_full().map_err(nl_err("recv"))?;
        Ok(buf)
    }

    /// The numeric id of a generic netlink family, or `FamilyMissing` (ENOENT) when the
    /// kernel does not provide it.
    pub fn resolve_family(&mut self, name: &'static str) -> Result<u16, LbError> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = seq;
        let ask = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        });
        self.sock
            .send(&serialize(NetlinkMessage::new(header, ask.into())), 0)
            .map_err(nl_err("send getfamily"))?;
        loop {
            let buf = self.recv()?;
            for m in messages::<GenlMessage<GenlCtrl>>(&buf)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                return match m.payload {
                    NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => {
                        Err(LbError::FamilyMissing(name))
                    }
                    NetlinkPayload::Error(e) => Err(nl_err("getfamily")(e.to_io())),
                    NetlinkPayload::InnerMessage(reply) => reply
                        .payload
                        .nlas
                        .iter()
                        .find_map(|a| match a {
                            GenlCtrlAttrs::FamilyId(id) => Some(*id),
                            _ => None,
                        })
                        .ok_or(LbError::BadReply("no CTRL_ATTR_FAMILY_ID")),
                    _ => Err(LbError::BadReply("unexpected reply to getfamily")),
                };
            }
        }
    }

    /// Sends every message in one write, then waits for one ACK per message. The kernel handles
    /// them in order and carries on after a failure, so the first error is returned after all
    /// ACKs are read (leaving none behind to confuse the next call).
    pub fn request_all(&mut self, build: impl Fn(u32) -> Vec<Vec<u8>>) -> Result<usize, LbError> {
        let first = self.seq.wrapping_add(1);
        let msgs = build(first);
        if msgs.is_empty() {
            return Ok(0);
        }
        self.seq = first.wrapping_add(msgs.len() as u32 - 1);
        let wire: Vec<u8> = msgs.concat();
        self.sock.send(&wire, 0).map_err(nl_err("send"))?;
        let mut pending = msgs.len();
        let mut first_err = None;
        while pending > 0 {
            let buf = self.recv()?;
            for m in messages::<GenlMessage<super::ipvs_msg::IpvsRequest>>(&buf)? {
                let NetlinkPayload::Error(e) = m.payload else {
                    continue;
                };
                if m.header.sequence_number.wrapping_sub(first) >= msgs.len() as u32 {
                    continue;
                }
                pending -= 1;
                if e.code.is_some() && first_err.is_none() {
                    first_err = Some(e.to_io());
                }
            }
        }
        match first_err {
            Some(e) => Err(nl_err("ipvs request")(e)),
            None => Ok(msgs.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_family_is_reported_as_such() {
        let mut s = GenlSocket::open().expect("genl socket");
        assert!(matches!(
            s.resolve_family("SKNOSUCHFAM"),
            Err(LbError::FamilyMissing(_))
        ));
        // nlctrl always exists and resolves to GENL_ID_CTRL.
        assert_eq!(s.resolve_family("nlctrl").unwrap(), 0x10);
    }
}
