//! The node-level parts of a plan in the kernel: overlay sandboxes with their networks' VIP
//! load balancers, IPsec, and the ingress sandbox with the routing mesh. What to put there is
//! derived from the plan in `derive`, which touches nothing.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::Ipv4Net;
use netcore::gateway::{self, Gateway};
use netcore::ingress::{MeshLayout, NodeIngress, RouterAddrs, SandboxRouter};
use netcore::journal::Journal;
use netcore::lb::{self, Driver, LoadBalancer};
use netcore::netns::NetNs;
use netcore::overlay::{self, Endpoint, OverlaySpec};
use netcore::xfrm::{Ipsec, Owner};

use super::derive::{
    ServiceChange, data_port, ingress_services, ipsec_of, network_changes, network_services,
    published_ports, spec_of,
};
use crate::paths::ClusterPaths;
use crate::plan::{AttachmentPlan, NodePlan};

/// The ingress sandbox's leg on the node's docker_gwbridge, the first after the gateway's.
const GW_SANDBOX: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// Its bridge port in the node.
const GW_SANDBOX_PORT: &str = "gwingress";
/// The ingress sandbox's interfaces, named as in Docker's ingress_sbox.
const SBOX_GW_IFNAME: &str = "eth1";
const SBOX_INGRESS_IFNAME: &str = "eth0";
/// Source of the node layout's hairpinned traffic (see netcore::ingress): on the gateway
/// subnet's far end, which Docker never hands out first, and assigned to nobody.
const GW_HAIRPIN: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 254);

struct Sandbox {
    ns: NetNs,
    spec: OverlaySpec,
    /// Balances the network's VIPs for every local task on it (see netcore::overlay).
    lb: Box<dyn LoadBalancer>,
    /// The VIPs on the bridge, once set (None: read the bridge first).
    vips: Option<BTreeSet<Ipv4Addr>>,
}

struct Ingress {
    /// Balances the published ports: in the sandbox, or in the node in the node layout.
    lb: Box<dyn LoadBalancer>,
    node_rules: NodeIngress,
    /// The node layout's router into the ingress network.
    router: Option<SandboxRouter>,
}

pub struct Dataplane {
    paths: ClusterPaths,
    hostname: String,
    node: NetNs,
    vtep: Ipv4Addr,
    driver: Driver,
    mesh: MeshLayout,
    /// Set when the node's namespace is not the project's (see netcore::undo).
    journal: Option<Arc<Journal>>,
    sandboxes: HashMap<String, Sandbox>,
    ingress: Option<Ingress>,
    /// The node's docker_gwbridge: egress for tasks, the way into the ingress sandbox.
    gateway: Gateway,
    /// Opened with the first encrypted network, kept after (the kernel state is what matters).
    ipsec: Option<Ipsec>,
    ipsec_owner: Owner,
}

impl Dataplane {
    pub fn new(
        paths: ClusterPaths,
        hostname: &str,
        node: NetNs,
        vtep: Ipv4Addr,
        driver: Driver,
        mesh: MeshLayout,
    ) -> Self {
        Dataplane {
            gateway: Gateway::new(node.clone(), &paths.nft_table("gateway"), None)
                .without_bridge_netfilter(mesh == MeshLayout::Node),
            paths,
            hostname: hostname.to_string(),
            node,
            vtep,
            driver,
            mesh,
            journal: None,
            sandboxes: HashMap::new(),
            ingress: None,
            ipsec: None,
            ipsec_owner: Owner::namespace(),
        }
    }

    /// Journals what is changed in the node's own namespace, for `cluster down` to undo.
    pub fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        self.gateway = Gateway::new(
            self.node.clone(),
            &self.paths.nft_table("gateway"),
            journal.clone(),
        )
        .without_bridge_netfilter(self.mesh == MeshLayout::Node);
        self.journal = journal;
        self
    }

    /// The node's docker_gwbridge, where tasks get their leg.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Whose IPsec state this node's namespace holds (see `xfrm::Owner`).
    pub fn with_ipsec_owner(mut self, owner: Owner) -> Self {
        self.ipsec_owner = owner;
        self
    }

    /// Installs the SAs, policies and nftables rules of the plan's encrypted networks. Runs
    /// before the overlays change, so a new peer's VXLAN is never sent before it is encrypted.
    pub async fn install_ipsec(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
        let spec = ipsec_of(plan, self.vtep);
        if self.ipsec.is_none() && spec.networks.is_empty() {
            return Ok(());
        }
        let ipsec = match &mut self.ipsec {
            Some(i) => i,
            None => self
                .ipsec
                .insert(Ipsec::owned_by(&self.node, self.ipsec_owner.clone())?),
        };
        ipsec.install(&spec).await?;
        Ok(())
    }

    /// Removes what `install_ipsec` put in and the plan no longer needs. Runs after the
    /// overlays dropped their peers, so nothing still sends through what is removed.
    pub async fn prune_ipsec(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
        if let Some(ipsec) = &mut self.ipsec {
            ipsec.prune(&ipsec_of(plan, self.vtep)).await?;
        }
        Ok(())
    }

    pub async fn apply_networks(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
        let port = data_port(plan);
        for n in &plan.networks {
            let spec = spec_of(n, port);
            if let Some(sb) = self.sandboxes.get_mut(&n.id) {
                if sb.spec == spec {
                    continue;
                }
                // The common change: a task started or ended elsewhere on the network.
                if sb.spec.differs_only_in_peers(&spec) {
                    overlay::update_peers(&sb.ns, &sb.spec, &spec).await?;
                    sb.spec = spec;
                    continue;
                }
            }
            let name = self.paths.sandbox_ns(&self.hostname, &n.id);
            let ns = overlay::ensure(&self.node, &name, self.vtep, &spec, self.driver).await?;
            match self.sandboxes.get_mut(&n.id) {
                // Same namespace: its load balancer and VIPs are still what it applied.
                Some(sb) => sb.spec = spec,
                None => {
                    let lb = lb::new(self.driver, ns.clone());
                    self.sandboxes.insert(
                        n.id.clone(),
                        Sandbox {
                            ns,
                            spec,
                            lb,
                            vips: None,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Balances each network's VIPs in its sandbox: once per network and change, however
    /// many local tasks use it. With `changed` (the services that changed since the plan last
    /// applied, from `changed_services`), only those are handed on, so a change costs what it
    /// touches; None re-applies every network whole.
    pub async fn apply_vips(
        &mut self,
        plan: &NodePlan,
        changed: Option<&[ServiceChange<'_>]>,
    ) -> anyhow::Result<()> {
        let ingress = plan.ingress.as_ref().map(|i| i.network_id.as_str());
        for (id, sb) in self.sandboxes.iter_mut() {
            if Some(id.as_str()) == ingress {
                continue;
            }
            let (vips, changes) = match (changed, &sb.vips) {
                (Some(changed), Some(vips)) => {
                    let changes = network_changes(changed, id);
                    if changes.is_empty() {
                        continue;
                    }
                    // All that leave before all that come: a VIP may pass from a service
                    // that left to one that came.
                    let mut now = vips.clone();
                    for (old, _) in changed {
                        if let Some((vip, _)) = old.and_then(|s| s.vips.get(id)) {
                            now.remove(vip);
                        }
                    }
                    for (_, new) in changed {
                        if let Some((vip, _)) = new.and_then(|s| s.vips.get(id)) {
                            now.insert(*vip);
                        }
                    }
                    (now, Some(changes))
                }
                _ => {
                    let vips = plan
                        .services
                        .values()
                        .filter_map(|s| s.vips.get(id).map(|(vip, _)| *vip))
                        .collect();
                    (vips, None)
                }
            };
            // A VIP the bridge answers for has its rules already; one it stops answering
            // for loses them after.
            let kept = sb
                .vips
                .as_ref()
                .map(|v| v.intersection(&vips).copied().collect());
            overlay::reconcile_vips(
                &sb.ns,
                &sb.spec,
                sb.vips.as_ref(),
                kept.as_ref().unwrap_or(&vips),
            )
            .await
            .with_context(|| format!("VIP addresses of network {id}"))?;
            sb.vips = kept;
            let whole = || network_services(plan, id);
            tokio::task::block_in_place(|| match &changes {
                Some(changes) => sb.lb.apply_changes(changes, &whole),
                None => sb.lb.apply(&whole()),
            })
            .with_context(|| format!("load balancing on network {id}"))?;
            overlay::reconcile_vips(&sb.ns, &sb.spec, sb.vips.as_ref(), &vips)
                .await
                .with_context(|| format!("VIP addresses of network {id}"))?;
            sb.vips = Some(vips);
        }
        Ok(())
    }

    /// Sandboxes of networks no longer in the plan (no local task uses them).
    pub async fn prune_networks(&mut self, plan: &NodePlan) {
        let gone: Vec<String> = self
            .sandboxes
            .keys()
            .filter(|id| !plan.networks.iter().any(|n| &n.id == *id))
            .cloned()
            .collect();
        for id in gone {
            self.sandboxes.remove(&id);
            let name = self.paths.sandbox_ns(&self.hostname, &id);
            if let Err(e) = overlay::remove(&name).await {
                tracing::warn!("removing sandbox {name}: {e}");
            }
        }
    }

    pub async fn attach(
        &self,
        network_id: &str,
        target: &NetNs,
        a: &AttachmentPlan,
    ) -> anyhow::Result<()> {
        let sb = self
            .sandboxes
            .get(network_id)
            .ok_or_else(|| anyhow::anyhow!("network {network_id} has no sandbox on this node"))?;
        overlay::attach(
            &sb.ns,
            &sb.spec,
            target,
            &Endpoint {
                ifname: a.ifname.clone(),
                addr: a.addr,
                mac: overlay::mac_for(a.addr.addr()),
            },
        )
        .await?;
        Ok(())
    }

    pub async fn apply_ingress(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
        let Some(ing) = &plan.ingress else {
            return Ok(());
        };
        if self.ingress.is_none() {
            let sbox = NetNs::create(&self.paths.ingress_sbox_ns(&self.hostname))?;
            // Replies to clients on the underlay (or to the node's own address) leave the
            // way docker's ingress-sbox sends them: back through the gateway bridge.
            self.gateway
                .plug(&sbox, GW_SANDBOX_PORT, SBOX_GW_IFNAME, GW_SANDBOX, true)
                .await?;
            self.attach(
                &ing.network_id,
                &sbox,
                &AttachmentPlan {
                    network_id: ing.network_id.clone(),
                    ifname: SBOX_INGRESS_IFNAME.into(),
                    addr: ing.sandbox_addr,
                },
            )
            .await?;
            let (lb, router) = match self.mesh {
                MeshLayout::Sandbox => {
                    lb::forget_unanswered_quickly(&sbox)?;
                    (lb::new(self.driver, sbox), None)
                }
                MeshLayout::Node => {
                    let links = netcore::link::Links::new(&self.node)?;
                    links
                        .add_route_via(ing.sandbox_addr.trunc(), GW_SANDBOX)
                        .await?;
                    links
                        .add_route_via(Ipv4Net::from(GW_HAIRPIN), GW_SANDBOX)
                        .await?;
                    let router = SandboxRouter::new(
                        sbox,
                        &self.paths.nft_table("mesh"),
                        RouterAddrs {
                            node: gateway::GATEWAY,
                            sandbox: GW_SANDBOX,
                            hairpin: GW_HAIRPIN,
                            gw_ifname: SBOX_GW_IFNAME.into(),
                            ingress_ifname: SBOX_INGRESS_IFNAME.into(),
                        },
                    );
                    (lb::new(self.driver, self.node.clone()), Some(router))
                }
            };
            self.ingress = Some(Ingress {
                lb,
                node_rules: NodeIngress::new(
                    self.node.clone(),
                    &self.paths.nft_table("ingress"),
                    GW_SANDBOX,
                    gateway::BRIDGE,
                    self.mesh,
                )
                .with_journal(self.journal.clone()),
                router,
            });
        }
        let ingress = self.ingress.as_mut().expect("set above");
        let services = ingress_services(ing);
        let published = published_ports(ing);
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            // Routes before marks: the node's IPVS forwards through the sandbox.
            if let Some(router) = &mut ingress.router {
                router.apply(&published)?;
            }
            ingress.lb.apply(&services)?;
            ingress.node_rules.apply(&published)?;
            Ok(())
        })
    }
}
