//! A blocking generic netlink socket: enough to resolve a family and send a run of requests
//! that each want an ACK. Blocking keeps it usable from the synchronous `LoadBalancer` trait
//! without a runtime; the socket is created on a thread inside the target namespace and keeps
//! talking to that namespace from any thread afterwards.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::LbError;
use super::ipvs_msg::get_family_message;
use crate::netns::NetNs;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

fn nl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> LbError {
    move |source| LbError::Netlink { op, source }
}

pub struct GenlSocket {
    sock: Socket,
    seq: u32,
}

/// One parsed netlink message: type, seq and payload after the netlink header.
struct Reply<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn split_messages(buf: &[u8]) -> Result<Vec<Reply<'_>>, LbError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or(LbError::BadReply("short header"))? as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(LbError::BadReply("message length out of bounds"));
        }
        out.push(Reply {
            kind: u16_at(buf, at + 4).ok_or(LbError::BadReply("short header"))?,
            seq: u32_at(buf, at + 8).ok_or(LbError::BadReply("short header"))?,
            payload: &buf[at + NLMSG_HDRLEN..at + len],
        });
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR payload (0 is an ACK).
fn error_code(payload: &[u8]) -> Result<i32, LbError> {
    u32_at(payload, 0)
        .map(|v| v as i32)
        .ok_or(LbError::BadReply("short error message"))
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
        self.sock
            .send(&get_family_message(name, seq), 0)
            .map_err(nl_err("send getfamily"))?;
        loop {
            let buf = self.recv()?;
            for m in split_messages(&buf)? {
                if m.seq != seq {
                    continue;
                }
                if m.kind == NLMSG_ERROR {
                    return match error_code(m.payload)? {
                        e if e == -libc::ENOENT => Err(LbError::FamilyMissing(name)),
                        e => Err(nl_err("getfamily")(std::io::Error::from_raw_os_error(-e))),
                    };
                }
                return family_id(m.payload).ok_or(LbError::BadReply("no CTRL_ATTR_FAMILY_ID"));
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
            for m in split_messages(&buf)? {
                if m.kind == NLMSG_DONE {
                    continue;
                }
                if m.kind != NLMSG_ERROR || m.seq.wrapping_sub(first) >= msgs.len() as u32 {
                    continue;
                }
                pending -= 1;
                let code = error_code(m.payload)?;
                if code != 0 && first_err.is_none() {
                    first_err = Some(std::io::Error::from_raw_os_error(-code));
                }
            }
        }
        match first_err {
            Some(e) => Err(nl_err("ipvs request")(e)),
            None => Ok(msgs.len()),
        }
    }
}

fn family_id(payload: &[u8]) -> Option<u16> {
    let mut at = GENL_HDRLEN;
    while at + 4 <= payload.len() {
        let len = u16_at(payload, at)? as usize;
        let kind = u16_at(payload, at + 2)? & 0x3fff;
        if len < 4 {
            return None;
        }
        if kind == CTRL_ATTR_FAMILY_ID {
            return u16_at(payload, at + 4);
        }
        at += (len + 3) & !3;
    }
    None
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
