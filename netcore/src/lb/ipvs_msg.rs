//! IPVS generic-netlink requests. The netlink and generic netlink framing is
//! netlink-packet-core's and -generic's; the IPVS attributes, which no crate covers, are
//! encoded by hand to the layout of the kernel's include/uapi/linux/ip_vs.h. Only the handful
//! of commands a fwmark-keyed, masquerading, round-robin balancer needs are covered; every
//! byte is pinned by the tests below.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_FLUSH: u8 = 17;

pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_FWMARK: u16 = 5;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;

pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// IP_VS_CONN_F_MASQ: NAT forwarding, the only method that works across a VXLAN overlay.
pub const IP_VS_CONN_F_MASQ: u32 = 0;
pub const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u16 = libc::AF_INET as u16;
const NLA_HDRLEN: usize = 4;

/// One real server of a fwmark service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    pub addr: Ipv4Addr,
    /// 0 keeps the packet's destination port (VIP); otherwise the port to DNAT to.
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsRequest {
    /// An IPv4 fwmark service, scheduler rr, no persistence.
    NewService {
        fwmark: u32,
    },
    DelService {
        fwmark: u32,
    },
    NewDest {
        fwmark: u32,
        dest: Dest,
        weight: u32,
    },
    /// Changes the weight; weight 0 stops new connections but keeps established ones.
    SetDest {
        fwmark: u32,
        dest: Dest,
        weight: u32,
    },
    DelDest {
        fwmark: u32,
        dest: Dest,
    },
    /// Every service and destination in the namespace.
    Flush,
}

/// Appends attribute headers and payloads with 4-byte alignment (NLA_ALIGNTO).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = (NLA_HDRLEN + value.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        let aligned = (self.0.len() + 3) & !3;
        self.0.resize(aligned, 0);
    }
    fn u16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_ne_bytes());
    }
    fn u32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }
    fn nested(&mut self, kind: u16, inner: Attrs) {
        self.put(kind | NLA_F_NESTED, &inner.0);
    }
}

fn service_id(fwmark: u32) -> Attrs {
    let mut a = Attrs::default();
    a.u16(IPVS_SVC_ATTR_AF, AF_INET);
    a.u32(IPVS_SVC_ATTR_FWMARK, fwmark);
    a
}

fn dest_id(dest: Dest) -> Attrs {
    let mut a = Attrs::default();
    // union nf_inet_addr: an IPv4 address fills the first four bytes of sixteen.
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&dest.addr.octets());
    a.put(IPVS_DEST_ATTR_ADDR, &addr);
    a.put(IPVS_DEST_ATTR_PORT, &dest.port.to_be_bytes());
    a
}

fn dest_full(dest: Dest, weight: u32) -> Attrs {
    let mut a = dest_id(dest);
    a.u32(IPVS_DEST_ATTR_FWD_METHOD, IP_VS_CONN_F_MASQ);
    a.u32(IPVS_DEST_ATTR_WEIGHT, weight);
    a.u32(IPVS_DEST_ATTR_U_THRESH, 0);
    a.u32(IPVS_DEST_ATTR_L_THRESH, 0);
    a.u16(IPVS_DEST_ATTR_ADDR_FAMILY, AF_INET);
    a
}

impl IpvsRequest {
    pub fn command(&self) -> u8 {
        match self {
            IpvsRequest::NewService { .. } => IPVS_CMD_NEW_SERVICE,
            IpvsRequest::DelService { .. } => IPVS_CMD_DEL_SERVICE,
            IpvsRequest::NewDest { .. } => IPVS_CMD_NEW_DEST,
            IpvsRequest::SetDest { .. } => IPVS_CMD_SET_DEST,
            IpvsRequest::DelDest { .. } => IPVS_CMD_DEL_DEST,
            IpvsRequest::Flush => IPVS_CMD_FLUSH,
        }
    }

    /// The attributes after the generic netlink header.
    pub fn attributes(&self) -> Vec<u8> {
        let mut a = Attrs::default();
        match *self {
            IpvsRequest::NewService { fwmark } => {
                let mut svc = service_id(fwmark);
                svc.put(IPVS_SVC_ATTR_SCHED_NAME, b"rr\0");
                // struct ip_vs_flags { flags, mask }: clear every flag.
                let mut flags = [0u8; 8];
                flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
                svc.put(IPVS_SVC_ATTR_FLAGS, &flags);
                svc.u32(IPVS_SVC_ATTR_TIMEOUT, 0);
                svc.put(IPVS_SVC_ATTR_NETMASK, &[0xff; 4]);
                a.nested(IPVS_CMD_ATTR_SERVICE, svc);
            }
            IpvsRequest::DelService { fwmark } => {
                a.nested(IPVS_CMD_ATTR_SERVICE, service_id(fwmark))
            }
            IpvsRequest::NewDest {
                fwmark,
                dest,
                weight,
            }
            | IpvsRequest::SetDest {
                fwmark,
                dest,
                weight,
            } => {
                a.nested(IPVS_CMD_ATTR_SERVICE, service_id(fwmark));
                a.nested(IPVS_CMD_ATTR_DEST, dest_full(dest, weight));
            }
            IpvsRequest::DelDest { fwmark, dest } => {
                a.nested(IPVS_CMD_ATTR_SERVICE, service_id(fwmark));
                a.nested(IPVS_CMD_ATTR_DEST, dest_id(dest));
            }
            IpvsRequest::Flush => {}
        }
        a.0
    }

    /// A complete netlink message asking for an ACK.
    pub fn to_message(&self, family_id: u16, seq: u32) -> Vec<u8> {
        let genl = GenlMessage::new(
            GenlHeader {
                cmd: self.command(),
                version: IPVS_GENL_VERSION,
            },
            self.clone(),
            family_id,
        );
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        serialize(NetlinkMessage::new(header, NetlinkPayload::from(genl)))
    }
}

/// A finalized message (length and type filled in) as bytes.
pub(crate) fn serialize<I: netlink_packet_core::NetlinkSerializable>(
    mut m: NetlinkMessage<I>,
) -> Vec<u8> {
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

impl GenlFamily for IpvsRequest {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        IpvsRequest::command(self)
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsRequest {
    fn buffer_len(&self) -> usize {
        self.attributes().len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.attributes());
    }
}

/// Only ACKs come back for these requests, and those never reach this parser; it exists for
/// the framing's bounds.
impl ParseableParametrized<[u8], GenlHeader> for IpvsRequest {
    fn parse_with_param(_: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Err(DecodeError::from(format!(
            "unexpected IPVS message (command {}) in reply to a request",
            header.cmd
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes are written out in little-endian host order (x86-64, aarch64), matching
    // what the kernel reads with nla_get_u16/u32; ports and the netmask are big-endian.
    #[cfg(target_endian = "little")]
    fn svc_attr(fwmark: u32) -> Vec<u8> {
        let mut v = vec![
            6, 0, 1, 0, 2, 0, 0, 0, // AF = AF_INET (u16) + 2 pad
            8, 0, 5, 0, // FWMARK
        ];
        v.extend_from_slice(&fwmark.to_le_bytes());
        v
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn new_service_bytes() {
        let msg = IpvsRequest::NewService { fwmark: 0x101 }.to_message(0x22, 7);
        let mut want = vec![
            76, 0, 0, 0, // nlmsg_len = 16 + 4 + 56
            0x22, 0, // type = family id
            5, 0, // NLM_F_REQUEST | NLM_F_ACK
            7, 0, 0, 0, // seq
            0, 0, 0, 0, // pid
            1, 1, 0, 0, // IPVS_CMD_NEW_SERVICE, version 1
            56, 0, 1, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, len 4 + 52
        ];
        want.extend(svc_attr(0x101));
        want.extend([
            7, 0, 6, 0, b'r', b'r', 0, 0, // SCHED_NAME "rr\0" + 1 pad
            12, 0, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // FLAGS {flags 0, mask ~0}
            8, 0, 8, 0, 0, 0, 0, 0, // TIMEOUT 0
            8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff, // NETMASK 255.255.255.255
        ]);
        assert_eq!(msg, want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn new_and_set_dest_bytes() {
        let dest = Dest {
            addr: Ipv4Addr::new(10, 0, 0, 5),
            port: 8080,
        };
        let dest_attr = |weight: u8| {
            let mut v = vec![
                72, 0, 2, 0x80, // IPVS_CMD_ATTR_DEST | NLA_F_NESTED, len 4 + 68
                20, 0, 1, 0, 10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, // ADDR (16 bytes)
                6, 0, 2, 0, 0x1f, 0x90, 0, 0, // PORT 8080 big-endian + pad
                8, 0, 3, 0, 0, 0, 0, 0, // FWD_METHOD = MASQ
                8, 0, 4, 0, weight, 0, 0, 0, // WEIGHT
                8, 0, 5, 0, 0, 0, 0, 0, // U_THRESH
                8, 0, 6, 0, 0, 0, 0, 0, // L_THRESH
                6, 0, 11, 0, 2, 0, 0, 0, // ADDR_FAMILY = AF_INET + pad
            ];
            v.splice(0..0, {
                let mut s = vec![20, 0, 1, 0x80];
                s.extend(svc_attr(300));
                s
            });
            v
        };
        let new = IpvsRequest::NewDest {
            fwmark: 300,
            dest,
            weight: 1,
        };
        assert_eq!(new.command(), 5);
        assert_eq!(new.attributes(), dest_attr(1));
        let set = IpvsRequest::SetDest {
            fwmark: 300,
            dest,
            weight: 0,
        };
        assert_eq!(set.command(), 6);
        assert_eq!(set.attributes(), dest_attr(0));
        let msg = set.to_message(0x22, 1);
        assert_eq!(&msg[..4], &(20 + 20 + 72u32).to_le_bytes());
        assert_eq!(msg[16], IPVS_CMD_SET_DEST);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn del_dest_and_service_bytes() {
        let del = IpvsRequest::DelDest {
            fwmark: 256,
            dest: Dest {
                addr: Ipv4Addr::new(192, 168, 1, 2),
                port: 0,
            },
        };
        assert_eq!(del.command(), 7);
        let mut want = vec![20, 0, 1, 0x80];
        want.extend(svc_attr(256));
        want.extend([
            32, 0, 2, 0x80, // DEST nested, len 4 + 28
            20, 0, 1, 0, 192, 168, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
            6, 0, 2, 0, 0, 0, 0, 0, // PORT 0
        ]);
        assert_eq!(del.attributes(), want);

        let mut want = vec![20, 0, 1, 0x80];
        want.extend(svc_attr(256));
        assert_eq!(IpvsRequest::DelService { fwmark: 256 }.attributes(), want);
        assert_eq!(IpvsRequest::DelService { fwmark: 256 }.command(), 3);
        assert!(IpvsRequest::Flush.attributes().is_empty());
        assert_eq!(IpvsRequest::Flush.command(), 17);
    }
}
