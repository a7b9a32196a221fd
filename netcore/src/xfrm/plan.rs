//! What encrypted networks need in the kernel, computed without it: keys and the specs that
//! carry them, whose state is whose (`Owner`: marks and reqids), the SPIs both ends derive
//! alike, the SAs and policies a spec wants, and the nftables table that marks and guards
//! the encrypted VNIs. `kernel` applies it; nothing here touches a socket.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::journal::Journal;

/// The MTU of an encrypted overlay: 1450 less ESP's overhead (26), rounded down to a
/// multiple of 4, as Swarm sets it.
pub const ENCRYPTED_MTU: u32 = 1424;
pub const AEAD_ALG: &str = "rfc4106(gcm(aes))";
pub(super) const ICV_BITS: u32 = 64;
/// Key bytes plus the 4-byte salt rfc4106 takes at the end of the key.
pub const KEY_LEN: usize = 20;
pub(super) const REPLAY_WINDOW: u32 = 32;
/// The top byte of every mark and reqid this module programs: what carries it is ours to
/// reconcile, anything else in the kernel is left alone.
pub(super) const OWNER: u32 = 0x5c00_0000;
pub(super) const OWNER_MASK: u32 = 0xff00_0000;
pub(super) const IPPROTO_UDP: u8 = 17;
/// The nftables table that marks and guards encrypted VNIs in a namespace the cluster owns.
pub const NFT_TABLE: &str = "swarmkit_ipsec";
/// The top byte of the reqid an `Owner::shared` cluster programs: it never equals a
/// per-VNI reqid, so one kind is never taken for the other.
const SHARED_OWNER: u32 = 0x5d00_0000;

/// One key of a network's keyring: 16 bytes of AES key and 4 of salt, named by a tag.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub tag: u32,
    #[serde(with = "hex_bytes")]
    pub material: [u8; KEY_LEN],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ tag: {:#010x}, material: <redacted> }}", self.tag)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; super::KEY_LEN], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; super::KEY_LEN], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; super::KEY_LEN];
        hex::decode_to_slice(&s, &mut out).map_err(|e| match e {
            hex::FromHexError::OddLength | hex::FromHexError::InvalidStringLength => {
                D::Error::custom("key material has the wrong length")
            }
            hex::FromHexError::InvalidHexCharacter { .. } => {
                D::Error::custom("key material is not hex")
            }
        })?;
        Ok(out)
    }
}

/// What one encrypted network needs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkIpsec {
    pub network_id: String,
    pub vni: u32,
    /// Every key a peer may send with; the node receives with all of them.
    pub keys: Vec<Key>,
    /// Tag of the key this node sends with.
    pub primary: u32,
    /// Underlay addresses of the other nodes with endpoints on the network.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// Everything encrypted on this node; an empty `networks` removes everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpsecSpec {
    pub local: Ipv4Addr,
    /// The VXLAN data port.
    pub port: u16,
    pub networks: Vec<NetworkIpsec>,
}

/// The mark that selects a network's VXLAN packets for its outbound policies.
pub fn mark_of(vni: u32) -> u32 {
    OWNER | (vni & 0xff_ffff)
}

/// The reqid tying a network's policies to its SAs.
pub fn reqid_of(vni: u32) -> u32 {
    OWNER | (vni & 0xff_ffff)
}

/// Whose IPsec state an `Ipsec` reconciles, and in which nftables table.
#[derive(Clone, Debug)]
pub struct Owner {
    pub(super) table: String,
    /// None: the namespace is the cluster's own, and every reqid with the owner byte is ours.
    pub(super) reqid: Option<u32>,
    /// Notes the table and the reqid before the first change, for teardown by another process.
    pub(super) journal: Option<Arc<Journal>>,
}

impl Owner {
    /// A namespace that only this cluster uses (a netns node, a guest): one reqid per VNI.
    pub fn namespace() -> Owner {
        Owner {
            table: NFT_TABLE.to_string(),
            reqid: None,
            journal: None,
        }
    }

    /// A namespace shared with other clusters and with its owner's own xfrm state (an ssh
    /// host): one reqid for all of the cluster's SAs and policies, derived from its name, so
    /// reconciling and teardown touch nothing else. The SAs of different networks towards one
    /// peer stay apart by their marks, which the kernel matches along with the reqid.
    pub fn shared(cluster: &str, table: &str, journal: Option<Arc<Journal>>) -> Owner {
        Owner {
            table: table.to_string(),
            reqid: Some(shared_reqid(cluster)),
            journal,
        }
    }

    /// Whatever carries `reqid`, for teardown, which needs no table.
    pub(crate) fn of_reqid(reqid: u32) -> Owner {
        Owner {
            table: String::new(),
            reqid: Some(reqid),
            journal: None,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn reqid(&self, vni: u32) -> u32 {
        self.reqid.unwrap_or_else(|| reqid_of(vni))
    }

    pub(super) fn owns(&self, reqid: u32) -> bool {
        match self.reqid {
            Some(r) => reqid == r,
            None => reqid & OWNER_MASK == OWNER,
        }
    }
}

/// The reqid of every SA and policy cluster `cluster` makes in a shared namespace.
pub fn shared_reqid(cluster: &str) -> u32 {
    let d = Sha256::digest(cluster.as_bytes());
    SHARED_OWNER | u32::from_be_bytes([0, d[0], d[1], d[2]])
}

/// The SPI of the SA from `src` to `dst` for `network_id` with the key tagged `tag`. Both ends
/// compute it alike; SPIs below 256 are reserved by RFC 4303.
pub fn spi(network_id: &str, src: Ipv4Addr, dst: Ipv4Addr, tag: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(network_id.as_bytes());
    h.update(src.octets());
    h.update(dst.octets());
    h.update(tag.to_be_bytes());
    let d = h.finalize();
    let v = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    if v < 256 { v + 256 } else { v }
}

/// An SA in the kernel, as far as reconciling needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sa {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    pub reqid: u32,
    /// Outbound SAs carry the network's mark; inbound ones none.
    pub mark: Option<u32>,
}

/// An outbound policy in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Policy {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub mark: u32,
    /// Of its template: the SAs it sends through.
    pub reqid: u32,
}

/// What the spec asks the kernel to hold, with the key for each SA.
pub(super) struct Wanted<'a> {
    pub(super) sas: BTreeMap<Sa, &'a Key>,
    pub(super) policies: BTreeSet<Policy>,
    pub(super) vnis: BTreeSet<u32>,
}

pub(super) fn wanted<'a>(spec: &'a IpsecSpec, owner: &Owner) -> Wanted<'a> {
    let mut sas = BTreeMap::new();
    let mut policies = BTreeSet::new();
    let mut vnis = BTreeSet::new();
    for n in &spec.networks {
        vnis.insert(n.vni);
        let reqid = owner.reqid(n.vni);
        let mark = mark_of(n.vni);
        for &peer in &n.peers {
            for k in &n.keys {
                let sa = Sa {
                    src: peer,
                    dst: spec.local,
                    spi: spi(&n.network_id, peer, spec.local, k.tag),
                    reqid,
                    mark: None,
                };
                sas.insert(sa, k);
            }
            if let Some(k) = n.keys.iter().find(|k| k.tag == n.primary) {
                let sa = Sa {
                    src: spec.local,
                    dst: peer,
                    spi: spi(&n.network_id, spec.local, peer, k.tag),
                    reqid,
                    mark: Some(mark),
                };
                sas.insert(sa, k);
                policies.insert(Policy {
                    src: spec.local,
                    dst: peer,
                    dport: spec.port,
                    mark,
                    reqid,
                });
            }
        }
    }
    Wanted {
        sas,
        policies,
        vnis,
    }
}

/// The nftables table: marks on output, the cleartext drop on input. Replaced whole, in one
/// transaction, so it is never seen half-written.
pub fn table_text(table: &str, port: u16, vnis: &BTreeSet<u32>) -> String {
    let mut s = format!("add table ip {table}\ndelete table ip {table}\n");
    if vnis.is_empty() {
        return s;
    }
    s.push_str(&format!("table ip {table} {{\n"));
    s.push_str(
        "  chain select_esp {\n    type route hook output priority mangle; policy accept;\n",
    );
    for v in vnis {
        s.push_str(&format!(
            "    udp dport {port} @th,96,24 {v} meta mark set {:#x} comment \"vni {v}\"\n",
            mark_of(*v)
        ));
    }
    s.push_str(
        "  }\n  chain drop_cleartext {\n    type filter hook input priority filter; policy accept;\n",
    );
    for v in vnis {
        s.push_str(&format!(
            "    udp dport {port} @th,96,24 {v} meta secpath missing counter drop comment \"cleartext vni {v}\"\n"
        ));
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u32) -> Key {
        Key {
            tag,
            material: [tag as u8; KEY_LEN],
        }
    }

    #[test]
    fn spis_differ_per_direction_network_and_key_and_avoid_the_reserved_range() {
        let a = Ipv4Addr::new(192, 168, 0, 10);
        let b = Ipv4Addr::new(192, 168, 0, 11);
        let s = spi("net1", a, b, 1);
        assert_eq!(s, spi("net1", a, b, 1));
        assert_ne!(s, spi("net1", b, a, 1));
        assert_ne!(s, spi("net2", a, b, 1));
        assert_ne!(s, spi("net1", a, b, 2));
        assert!(s >= 256);
    }

    #[test]
    fn key_debug_and_errors_never_show_material() {
        let k = key(7);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains("0707"), "{shown}");
        let json = serde_json::to_string(&k).unwrap();
        let back: Key = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k);
    }

    #[test]
    fn key_material_is_stored_as_hex_and_anything_else_is_refused() {
        let json = serde_json::to_string(&key(0xab)).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"tag":171,"material":"{}"}}"#, "ab".repeat(KEY_LEN))
        );
        let bad = |material: &str| {
            let json = format!(r#"{{"tag":1,"material":"{material}"}}"#);
            serde_json::from_str::<Key>(&json).unwrap_err().to_string()
        };
        assert!(bad("abcd").contains("wrong length"));
        assert!(bad(&"zz".repeat(KEY_LEN)).contains("not hex"));
    }

    #[test]
    fn wanted_state_has_an_sa_per_key_inbound_and_one_outbound_per_peer() {
        let local = Ipv4Addr::new(192, 168, 0, 10);
        let peers: BTreeSet<Ipv4Addr> = [
            Ipv4Addr::new(192, 168, 0, 11),
            Ipv4Addr::new(192, 168, 0, 12),
        ]
        .into();
        let spec = IpsecSpec {
            local,
            port: 4789,
            networks: vec![NetworkIpsec {
                network_id: "n1".into(),
                vni: 4097,
                keys: vec![key(1), key(2)],
                primary: 1,
                peers: peers.clone(),
            }],
        };
        let w = wanted(&spec, &Owner::namespace());
        let inbound = w.sas.keys().filter(|s| s.dst == local).count();
        let outbound: Vec<&Sa> = w.sas.keys().filter(|s| s.src == local).collect();
        assert_eq!(inbound, 4);
        assert_eq!(outbound.len(), 2);
        assert!(outbound.iter().all(|s| s.mark == Some(mark_of(4097))));
        assert!(outbound.iter().all(|s| s.spi == spi("n1", local, s.dst, 1)));
        assert_eq!(w.policies.len(), 2);
        assert_eq!(w.vnis, [4097].into());
    }

    #[test]
    fn a_shared_namespace_gives_each_cluster_one_reqid_of_its_own() {
        let spec = IpsecSpec {
            local: Ipv4Addr::new(192, 168, 0, 10),
            port: 4789,
            networks: [4097, 4098]
                .map(|vni| NetworkIpsec {
                    network_id: format!("n{vni}"),
                    vni,
                    keys: vec![key(1)],
                    primary: 1,
                    peers: [Ipv4Addr::new(192, 168, 0, 11)].into(),
                })
                .into(),
        };
        let a = Owner::shared("alpha", "swarmkit_alpha_ipsec", None);
        let w = wanted(&spec, &a);
        let r = shared_reqid("alpha");
        assert!(w.sas.keys().all(|s| s.reqid == r));
        assert!(w.policies.iter().all(|p| p.reqid == r));
        assert!(a.owns(r));
        assert!(!a.owns(shared_reqid("beta")), "another cluster's state");
        assert!(!a.owns(reqid_of(4097)), "a namespace-owned reqid");
        assert!(!Owner::namespace().owns(r));
        // The networks' outbound SAs to one peer stay apart by their marks.
        let marks: BTreeSet<_> = w.sas.keys().filter_map(|s| s.mark).collect();
        assert_eq!(marks, [mark_of(4097), mark_of(4098)].into());
    }

    #[test]
    fn table_marks_and_guards_each_encrypted_vni_on_the_data_port() {
        let t = table_text(NFT_TABLE, 7789, &[4097, 4099].into());
        assert!(
            t.contains("udp dport 7789 @th,96,24 4097 meta mark set 0x5c001001"),
            "{t}"
        );
        assert!(
            t.contains("udp dport 7789 @th,96,24 4099 meta secpath missing counter drop"),
            "{t}"
        );
        let empty = table_text(NFT_TABLE, 4789, &BTreeSet::new());
        assert!(!empty.contains("chain"), "{empty}");
    }
}
