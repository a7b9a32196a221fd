//! Applying an [`IpsecSpec`] over xfrm netlink: the SAs and policies of one owner in one
//! namespace, reconciled in two halves around the overlay's own changes, and the nftables
//! table written whole through the nft runner.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_xfrm::{
    Address, IPPROTO_ESP, UserTemplate, XFRM_MODE_TRANSPORT, XFRM_POLICY_ALLOW, XFRM_POLICY_OUT,
    XfrmAttrs,
};

use super::plan::{
    AEAD_ALG, ICV_BITS, IPPROTO_UDP, IpsecSpec, Key, OWNER, OWNER_MASK, Owner, Policy,
    REPLAY_WINDOW, Sa, table_text, wanted,
};
use crate::journal::JournalError;
use crate::netns::{NetNs, NetNsError};
use crate::nft::NftError;

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

pub(super) type Result<T> = std::result::Result<T, XfrmError>;

pub(super) fn kernel(
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

pub(super) fn ip(a: Ipv4Addr) -> IpAddr {
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
pub(super) fn connect(ns: &NetNs) -> Result<xfrmnetlink::Handle> {
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
