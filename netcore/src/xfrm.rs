//! IPsec for encrypted overlay networks, programmed over xfrm netlink as Swarm does it.
//!
//! The VXLAN packets of an encrypted network travel in ESP transport mode with
//! `rfc4106(gcm(aes))` (16-byte key + 4-byte salt, 64-bit ICV). Per network and node pair:
//! - one inbound SA per key of the network's keyring (a node receives with every key), and
//!   one outbound SA with the primary key; each has its own SPI, derived from the network,
//!   both ends and the key's tag, so both ends compute the same SPI without talking;
//! - one outbound policy selecting UDP to the data port carrying this network's mark.
//!
//! The mark is set in the node namespace by an nftables `route` chain on output on the VXLAN
//! packets of the network's VNI (the inner packet's mark does not survive encapsulation across
//! namespaces), and the same table drops VXLAN packets for an encrypted VNI that arrive
//! without having gone through ESP (`meta secpath missing`): that needs nothing beyond
//! nftables, unlike the xt_u32 match Swarm relies on.
//!
//! Key material never appears in errors or logs: `Key`'s Debug prints its tag only and kernel
//! errors are reduced to their errno.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_xfrm::{
    Address, IPPROTO_ESP, UserTemplate, XFRM_MODE_TRANSPORT, XFRM_POLICY_ALLOW, XFRM_POLICY_OUT,
    XfrmAttrs,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::journal::{Journal, JournalError};
use crate::netns::{NetNs, NetNsError};
use crate::nft::NftError;

/// The MTU of an encrypted overlay: 1450 less ESP's overhead (26), rounded down to a
/// multiple of 4, as Swarm sets it.
pub const ENCRYPTED_MTU: u32 = 1424;
pub const AEAD_ALG: &str = "rfc4106(gcm(aes))";
const ICV_BITS: u32 = 64;
/// Key bytes plus the 4-byte salt rfc4106 takes at the end of the key.
pub const KEY_LEN: usize = 20;
const REPLAY_WINDOW: u32 = 32;
/// The top byte of every mark and reqid this module programs: what carries it is ours to
/// reconcile, anything else in the kernel is left alone.
const OWNER: u32 = 0x5c00_0000;
const OWNER_MASK: u32 = 0xff00_0000;
const IPPROTO_UDP: u8 = 17;
/// The nftables table that marks and guards encrypted VNIs in a namespace the cluster owns.
pub const NFT_TABLE: &str = "swarmkit_ipsec";
/// The top byte of the reqid an `Owner::shared` cluster programs: it never equals a
/// per-VNI reqid, so one kind is never taken for the other.
const SHARED_OWNER: u32 = 0x5d00_0000;

#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    #[error(transparent)]
    Namespace(#[from] NetNsError),
    #[error("xfrm in {ns}: {op} {subject}: {source}")]
    Kernel {
        ns: String,
        op: &'static str,
        subject: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables for encrypted overlays: {0}")]
    Nft(#[from] NftError),
    #[error(transparent)]
    Journal(Box<JournalError>),
    #[error(
        "this kernel cannot encrypt overlay networks: it lacks {}. Encrypted networks need \
         IPsec ESP with AES-GCM; use a cluster whose nodes boot such a kernel \
         (swarmkit cluster up --backend qemu)",
        .missing.join(" and ")
    )]
    Unsupported { missing: Vec<String> },
}

impl From<JournalError> for XfrmError {
    fn from(e: JournalError) -> Self {
        XfrmError::Journal(Box::new(e))
    }
}

impl XfrmError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            XfrmError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, XfrmError>;

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
    table: String,
    /// None: the namespace is the cluster's own, and every reqid with the owner byte is ours.
    reqid: Option<u32>,
    /// Notes the table and the reqid before the first change, for teardown by another process.
    journal: Option<Arc<Journal>>,
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

    fn owns(&self, reqid: u32) -> bool {
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
struct Wanted<'a> {
    sas: BTreeMap<Sa, &'a Key>,
    policies: BTreeSet<Policy>,
    vnis: BTreeSet<u32>,
}

fn wanted<'a>(spec: &'a IpsecSpec, owner: &Owner) -> Wanted<'a> {
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

fn kernel(
    ns: &str,
    op: &'static str,
    subject: String,
) -> impl FnOnce(xfrmnetlink::Error) -> XfrmError {
    let ns = ns.to_string();
    move |e| XfrmError::Kernel {
        ns,
        op,
        subject,
        // Only the errno: the other variants can carry the request, keys included.
        source: match e {
            xfrmnetlink::Error::NetlinkError(m) => m.to_io(),
            _ => io::Error::other("unexpected reply from the kernel"),
        },
    }
}

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// The node's IPsec state, reconciled in two halves around the overlay's own changes: `install`
/// adds what is new before any VXLAN packet could use it, `prune` removes what is gone after the
/// overlay stopped using it, so no packet of an encrypted network ever leaves in cleartext.
pub struct Ipsec {
    ns: NetNs,
    owner: Owner,
    handle: xfrmnetlink::Handle,
    /// What the nftables table holds now (None: not written by this process yet).
    table: Option<(u16, BTreeSet<u32>)>,
}

impl Ipsec {
    /// In a namespace the cluster owns (`Owner::namespace`).
    pub fn new(ns: &NetNs) -> Result<Ipsec> {
        Self::owned_by(ns, Owner::namespace())
    }

    pub fn owned_by(ns: &NetNs, owner: Owner) -> Result<Ipsec> {
        Ok(Ipsec {
            ns: ns.clone(),
            owner,
            handle: connect(ns)?,
            table: None,
        })
    }

    /// Journals the table and the reqid, once, before anything is made with them.
    fn note(&self) -> Result<()> {
        if let (Some(j), Some(reqid)) = (&self.owner.journal, self.owner.reqid) {
            j.table(&self.owner.table)?;
            j.xfrm_reqid(reqid)?;
        }
        Ok(())
    }

    /// Adds every SA, policy and VNI rule the spec needs; removes nothing.
    pub async fn install(&mut self, spec: &IpsecSpec) -> Result<()> {
        let want = wanted(spec, &self.owner);
        if self.table.is_none() {
            self.note()?;
        }
        let have: BTreeSet<Sa> = self.sas().await?.into_iter().collect();
        // SAs first: a policy without its SA would drop the packets it selects.
        for (sa, key) in &want.sas {
            if !have.contains(sa) {
                self.add_sa(sa, key).await?;
            }
        }
        let have: BTreeSet<Policy> = self.policies().await?.into_iter().collect();
        for p in want.policies.difference(&have) {
            self.add_policy(p).await?;
        }
        let vnis = match &self.table {
            Some((port, vnis)) if *port == spec.port => vnis.union(&want.vnis).copied().collect(),
            _ => want.vnis.clone(),
        };
        self.write_table(spec.port, vnis)
    }

    /// Removes every SA, policy and VNI rule of ours the spec no longer needs.
    pub async fn prune(&mut self, spec: &IpsecSpec) -> Result<()> {
        let want = wanted(spec, &self.owner);
        if self.table.is_none() {
            self.note()?;
        }
        self.write_table(spec.port, want.vnis.clone())?;
        for p in self.policies().await? {
            if !want.policies.contains(&p) {
                self.del_policy(&p).await?;
            }
        }
        for sa in self.sas().await? {
            if !want.sas.contains_key(&sa) {
                self.del_sa(&sa).await?;
            }
        }
        Ok(())
    }

    /// `install` then `prune`: the whole reconcile, for callers with nothing in between.
    pub async fn apply(&mut self, spec: &IpsecSpec) -> Result<()> {
        self.install(spec).await?;
        self.prune(spec).await
    }

    fn write_table(&mut self, port: u16, vnis: BTreeSet<u32>) -> Result<()> {
        if self.table.as_ref() == Some(&(port, vnis.clone())) {
            return Ok(());
        }
        crate::nft::apply_nft(&self.ns, &table_text(&self.owner.table, port, &vnis))?;
        self.table = Some((port, vnis));
        Ok(())
    }

    /// Removes every SA and policy of ours, whatever made them (teardown of a shared namespace).
    pub async fn remove_all(&self) -> Result<()> {
        for p in self.policies().await? {
            self.del_policy(&p).await?;
        }
        for sa in self.sas().await? {
            self.del_sa(&sa).await?;
        }
        Ok(())
    }

    /// Our SAs in the kernel (those whose reqid is the owner's).
    pub async fn sas(&self) -> Result<Vec<Sa>> {
        let msgs: Vec<_> = self
            .handle
            .state()
            .get_dump()
            .execute()
            .try_collect()
            .await
            .map_err(kernel(self.ns.name(), "list", "states".into()))?;
        Ok(msgs
            .into_iter()
            .filter(|m| self.owner.owns(m.user_sa_info.reqid))
            .filter(|m| m.user_sa_info.id.proto == IPPROTO_ESP)
            .map(|m| Sa {
                src: m.user_sa_info.saddr.to_ipv4(),
                dst: m.user_sa_info.id.daddr.to_ipv4(),
                spi: m.user_sa_info.id.spi,
                reqid: m.user_sa_info.reqid,
                mark: m.nlas.iter().find_map(|a| match a {
                    XfrmAttrs::Mark(mk) if mk.mask != 0 => Some(mk.value),
                    _ => None,
                }),
            })
            .collect())
    }

    /// Our outbound policies in the kernel (those whose mark carries our owner byte and whose
    /// template's reqid is the owner's).
    pub async fn policies(&self) -> Result<Vec<Policy>> {
        let msgs: Vec<_> = self
            .handle
            .policy()
            .get_dump()
            .execute()
            .try_collect()
            .await
            .map_err(kernel(self.ns.name(), "list", "policies".into()))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.user_policy_info.direction == XFRM_POLICY_OUT)
            .filter_map(|m| {
                let mark = m.nlas.iter().find_map(|a| match a {
                    XfrmAttrs::Mark(mk) => Some(mk.value),
                    _ => None,
                })?;
                let reqid = m.nlas.iter().find_map(|a| match a {
                    XfrmAttrs::Template(t) => t.first().map(|t| t.reqid),
                    _ => None,
                })?;
                (mark & OWNER_MASK == OWNER && self.owner.owns(reqid)).then(|| Policy {
                    src: m.user_policy_info.selector.saddr.to_ipv4(),
                    dst: m.user_policy_info.selector.daddr.to_ipv4(),
                    dport: m.user_policy_info.selector.dport,
                    mark,
                    reqid,
                })
            })
            .collect())
    }

    async fn add_sa(&self, sa: &Sa, key: &Key) -> Result<()> {
        let subject = format!("SA {} -> {} spi {:#010x}", sa.src, sa.dst, sa.spi);
        let mut req = self
            .handle
            .state()
            .add(ip(sa.src), ip(sa.dst))
            .protocol(IPPROTO_ESP)
            .spi(sa.spi)
            .mode(XFRM_MODE_TRANSPORT)
            .reqid(sa.reqid)
            .replay_window(REPLAY_WINDOW, 0, 0, 0, 0)
            .encryption_aead(AEAD_ALG, &key.material.to_vec(), ICV_BITS)
            .map_err(kernel(self.ns.name(), "add", subject.clone()))?;
        if let Some(mark) = sa.mark {
            req = req.mark(mark, u32::MAX);
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(xfrmnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(kernel(self.ns.name(), "add", subject)(e)),
        }
    }

    async fn del_sa(&self, sa: &Sa) -> Result<()> {
        let mut req = self
            .handle
            .state()
            .delete(ip(sa.src), ip(sa.dst))
            .protocol(IPPROTO_ESP)
            .spi(sa.spi);
        if let Some(mark) = sa.mark {
            req = req.mark(mark, u32::MAX);
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(xfrmnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            Err(e) => Err(kernel(
                self.ns.name(),
                "delete",
                format!("SA {} -> {} spi {:#010x}", sa.src, sa.dst, sa.spi),
            )(e)),
        }
    }

    async fn add_policy(&self, p: &Policy) -> Result<()> {
        let mut tmpl = UserTemplate::default();
        tmpl.source(&ip(p.src));
        tmpl.id.daddr = Address::from_ipv4(&p.dst);
        tmpl.id.proto = IPPROTO_ESP;
        tmpl.reqid = p.reqid;
        tmpl.mode = XFRM_MODE_TRANSPORT;
        let r = self
            .handle
            .policy()
            .add(ip(p.src), 32, ip(p.dst), 32)
            .direction(XFRM_POLICY_OUT)
            .action(XFRM_POLICY_ALLOW)
            .selector_protocol(IPPROTO_UDP)
            .selector_protocol_dst_port(p.dport)
            .mark(p.mark, u32::MAX)
            .add_template(tmpl)
            .execute()
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(xfrmnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(kernel(
                self.ns.name(),
                "add",
                format!("policy {} -> {} mark {:#x}", p.src, p.dst, p.mark),
            )(e)),
        }
    }

    async fn del_policy(&self, p: &Policy) -> Result<()> {
        let r = self
            .handle
            .policy()
            .delete(ip(p.src), 32, ip(p.dst), 32)
            .direction(XFRM_POLICY_OUT)
            .selector_protocol(IPPROTO_UDP)
            .selector_protocol_dst_port(p.dport)
            .mark(p.mark, u32::MAX)
            .execute()
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(xfrmnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(kernel(
                self.ns.name(),
                "delete",
                format!("policy {} -> {} mark {:#x}", p.src, p.dst, p.mark),
            )(e)),
        }
    }
}

/// An xfrm netlink handle whose socket lives in `ns`; usable from any thread afterwards.
fn connect(ns: &NetNs) -> Result<xfrmnetlink::Handle> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = ns
        .run(|| {
            let _guard = rt.enter();
            xfrmnetlink::new_connection()
        })?
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                XfrmError::Unsupported {
                    missing: vec!["xfrm netlink (CONFIG_XFRM_USER)".into()],
                }
            } else {
                XfrmError::Kernel {
                    ns: ns.name().to_string(),
                    op: "open",
                    subject: "xfrm netlink socket".into(),
                    source,
                }
            }
        })?;
    rt.spawn(conn);
    Ok(handle)
}

/// Whether this kernel can carry encrypted overlays, found by really adding (and deleting) a
/// throwaway ESP state with the AEAD we use, in `ns`. `Unsupported` names what is missing.
pub async fn probe(ns: &NetNs) -> Result<()> {
    let handle = connect(ns)?;
    let lo = ip(Ipv4Addr::LOCALHOST);
    let spi = 0x5c00_0000 | (rand::random::<u32>() & 0xff_ffff);
    let attempt = |alg: Option<&str>| {
        let req = handle
            .state()
            .add(lo, lo)
            .protocol(IPPROTO_ESP)
            .spi(spi)
            .mode(XFRM_MODE_TRANSPORT);
        let key: Vec<u8> = (0..KEY_LEN as u8).collect();
        let req = match alg {
            None => req.encryption_aead(AEAD_ALG, &key, ICV_BITS),
            // AES-CBC with HMAC-SHA1: what CONFIG_INET_ESP itself selects, so it tells ESP's
            // absence apart from GCM's.
            Some(enc) => match req.encryption(enc, &key[..16].to_vec()) {
                Ok(r) => r.authentication_trunc("hmac(sha1)", &key, 96),
                Err(e) => Err(e),
            },
        };
        async move {
            match req {
                Ok(r) => r.execute().await,
                Err(e) => Err(e),
            }
        }
    };
    let errno = |e: &xfrmnetlink::Error| match e {
        xfrmnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    };
    let cleanup = || async {
        let _ = handle
            .state()
            .delete(lo, lo)
            .protocol(IPPROTO_ESP)
            .spi(spi)
            .execute()
            .await;
    };
    let gcm = match attempt(None).await {
        Ok(()) => {
            cleanup().await;
            return Ok(());
        }
        Err(e) => errno(&e),
    };
    let mut missing = Vec::new();
    match gcm {
        Some(libc::EPROTONOSUPPORT) => {
            missing.push("IPsec ESP (CONFIG_INET_ESP, module esp4)".into());
        }
        // "Requested AEAD algorithm not found": no GCM; whether ESP is there is asked apart.
        Some(libc::ENOSYS) => {
            missing.push(format!(
                "AES-GCM for ESP ({AEAD_ALG}: CONFIG_CRYPTO_GCM, modules gcm and ghash_generic)"
            ));
            match attempt(Some("cbc(aes)")).await {
                Ok(()) => cleanup().await,
                Err(e) if errno(&e) == Some(libc::EPROTONOSUPPORT) => {
                    missing.push("IPsec ESP (CONFIG_INET_ESP, module esp4)".into());
                }
                Err(_) => {}
            }
        }
        // "Kernel was unable to initialize cryptographic operations": GCM is known but cannot be
        // instantiated, in practice because ESP's IV generator finds no seeded stdrng.
        other => missing.push(format!(
            "a working AES-GCM transform (the kernel refused it{}; usually the crypto RNG is \
             missing: drbg with hmac(sha512), modules drbg and sha512_generic)",
            other
                .map(|e| format!(": {}", io::Error::from_raw_os_error(e)))
                .unwrap_or_default()
        )),
    }
    Err(XfrmError::Unsupported { missing })
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
