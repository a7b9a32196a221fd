//! The node-level parts of a plan: overlay sandboxes with their networks' VIP load balancers,
//! the ingress sandbox with the routing mesh, and the tasks' DNS views derived from the
//! plan's services.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::Ipv4Net;
use netcore::dns::{Answer, View};
use netcore::ingress::{MeshLayout, NodeIngress, PublishedPort, RouterAddrs, SandboxRouter};
use netcore::lb::{self, Driver, Frontend, LoadBalancer, VirtualService};
use netcore::netns::NetNs;
use netcore::overlay::{self, Endpoint, OverlaySpec, Peer};
use netcore::undo::Journal;
use netcore::xfrm::{Ipsec, IpsecSpec, NetworkIpsec, Owner};

use crate::model::{EndpointMode, Protocol};
use crate::paths::ClusterPaths;
use crate::plan::{AttachmentPlan, NetworkPlan, NodePlan, ServicePlan, TaskPlan};

/// The docker_gwbridge stand-in between a node and its ingress sandbox.
const GW_IFNAME: &str = "docker_gwbridge";
const GW_NODE: &str = "172.18.0.1/16";
const GW_SANDBOX: &str = "172.18.0.2/16";
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
    /// Opened with the first encrypted network, kept after (the kernel state is what matters).
    ipsec: Option<Ipsec>,
    ipsec_owner: Owner,
}

/// The data port a plan asks for (plans from before it existed carry 0).
fn data_port(plan: &NodePlan) -> u16 {
    if plan.data_port == 0 {
        overlay::VXLAN_PORT
    } else {
        plan.data_port
    }
}

/// The IPsec the plan's encrypted networks need on this node: SAs and policies towards every
/// node that has endpoints on them.
fn ipsec_of(plan: &NodePlan, local: Ipv4Addr) -> IpsecSpec {
    IpsecSpec {
        local,
        port: data_port(plan),
        networks: plan
            .networks
            .iter()
            .filter(|n| n.encrypted)
            .filter_map(|n| {
                let ring = n.keyring.as_ref()?;
                Some(NetworkIpsec {
                    network_id: n.id.clone(),
                    vni: n.vni,
                    keys: ring.keys.clone(),
                    primary: ring.primary,
                    peers: n
                        .peers
                        .iter()
                        .map(|p| p.vtep)
                        .filter(|v| *v != local)
                        .collect(),
                })
            })
            .collect(),
    }
}

fn spec_of(n: &NetworkPlan, port: u16) -> OverlaySpec {
    OverlaySpec {
        network_id: n.id.clone(),
        vni: n.vni,
        subnet: n.subnet,
        gateway: n.gateway,
        mtu: n.mtu,
        port,
        peers: n
            .peers
            .iter()
            .map(|p| Peer {
                ip: p.ip,
                mac: overlay::mac_for(p.ip),
                vtep: p.vtep,
            })
            .collect(),
    }
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
        self.journal = journal;
        self
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
            let ns = overlay::ensure(&self.node, &name, self.vtep, &spec).await?;
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
                        .iter()
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
            let gw_node: Ipv4Net = GW_NODE.parse()?;
            let gw_sbox: Ipv4Net = GW_SANDBOX.parse()?;
            netcore::underlay::link_pair(
                &self.node,
                GW_IFNAME,
                gw_node,
                &sbox,
                SBOX_GW_IFNAME,
                gw_sbox,
            )
            .await?;
            // Replies to clients on the underlay (or to the node's own address) leave the
            // way docker's ingress-sbox sends them: back through the gateway bridge.
            netcore::link::Links::new(&sbox)?
                .add_default_route(gw_node.addr())
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
                        .add_route_via(ing.sandbox_addr.trunc(), gw_sbox.addr())
                        .await?;
                    links
                        .add_route_via(Ipv4Net::from(GW_HAIRPIN), gw_sbox.addr())
                        .await?;
                    let router = SandboxRouter::new(
                        sbox,
                        &self.paths.nft_table("mesh"),
                        RouterAddrs {
                            node: gw_node.addr(),
                            sandbox: gw_sbox.addr(),
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
                    gw_sbox.addr(),
                    GW_IFNAME,
                    self.mesh,
                )
                .with_journal(self.journal.clone()),
                router,
            });
        }
        let ingress = self.ingress.as_mut().expect("set above");
        let services: Vec<VirtualService> = ing
            .ports
            .iter()
            .map(|p| VirtualService {
                fwmark: 0x10000
                    + u32::from(p.published)
                    + if p.protocol == Protocol::Udp {
                        0x10000
                    } else {
                        0
                    },
                frontend: Frontend::Port {
                    proto: p.protocol,
                    port: p.published,
                    target: p.target,
                },
                backends: p.backends.clone(),
            })
            .collect();
        let published: Vec<PublishedPort> = ing
            .ports
            .iter()
            .map(|p| PublishedPort {
                proto: p.protocol,
                port: p.published,
            })
            .collect();
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

/// A service as it was and as it is (None: absent).
pub type ServiceChange<'a> = (Option<&'a Arc<ServicePlan>>, Option<&'a Arc<ServicePlan>>);

/// Services that appeared, left or changed between two plans: one walk down both lists,
/// which a plan keeps sorted by ID (`PlanState` holds them in a BTreeMap). Plans made from one
/// plan state share their unchanged services, so most steps compare two pointers.
pub fn changed_services<'a>(old: &'a NodePlan, new: &'a NodePlan) -> Vec<ServiceChange<'a>> {
    debug_assert!(old.services.is_sorted_by(|a, b| a.id < b.id));
    debug_assert!(new.services.is_sorted_by(|a, b| a.id < b.id));
    let (mut a, mut b) = (
        old.services.iter().peekable(),
        new.services.iter().peekable(),
    );
    let mut out = Vec::new();
    loop {
        match (a.peek(), b.peek()) {
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {
                a.next();
                b.next();
            }
            (Some(o), Some(n)) => match o.id.cmp(&n.id) {
                std::cmp::Ordering::Equal => {
                    if o != n {
                        out.push((Some(*o), Some(*n)));
                    }
                    a.next();
                    b.next();
                }
                std::cmp::Ordering::Less => out.push((a.next(), None)),
                std::cmp::Ordering::Greater => out.push((None, b.next())),
            },
            (Some(_), None) => out.push((a.next(), None)),
            (None, Some(_)) => out.push((None, b.next())),
            (None, None) => return out,
        }
    }
}

/// The networks whose services `changed_services` found changed: the tasks on them need
/// their load balancers and DNS views brought up to date.
pub fn networks_of(changed: &[ServiceChange]) -> HashSet<String> {
    let mut nets = HashSet::new();
    for s in changed.iter().flat_map(|(a, b)| [a, b]).flatten() {
        nets.extend(s.vips.keys().cloned());
        nets.extend(s.backends.keys().cloned());
    }
    nets
}

/// Networks a task shares with services, in the task's interface order; ingress carries no
/// service discovery.
pub fn task_networks<'a>(plan: &NodePlan, task: &'a TaskPlan) -> Vec<&'a str> {
    let ingress = plan.ingress.as_ref().map(|i| i.network_id.as_str());
    task.attachments
        .iter()
        .map(|a| a.network_id.as_str())
        .filter(|n| Some(*n) != ingress)
        .collect()
}

/// What `changed` does to a network's balanced services, by fwmark (None: gone).
pub fn network_changes(
    changed: &[ServiceChange],
    network_id: &str,
) -> Vec<(u32, Option<VirtualService>)> {
    let mut out = Vec::new();
    for (old, new) in changed {
        let now = new.and_then(|s| virtual_service(s, network_id));
        if let Some((_, mark)) = old.and_then(|s| s.vips.get(network_id))
            && now.as_ref().map(|v| v.fwmark) != Some(*mark)
        {
            out.push((*mark, None));
        }
        if let Some(v) = now {
            out.push((v.fwmark, Some(v)));
        }
    }
    // Marks that leave first: one freed and taken by another service in the same change
    // ends up taken.
    out.sort_by_key(|(_, v)| v.is_some());
    out
}

/// What the sandbox balances for `s` on the network: nothing while no task of it serves
/// there. Its VIP is on the sandbox's bridge all the same (see `apply_vips`), so a client gets
/// the reset or port-unreachable a reject rule would give, from the sandbox's own stack; and a
/// new service costs one load-balancer batch per node, when its first task runs, not two.
fn virtual_service(s: &ServicePlan, network_id: &str) -> Option<VirtualService> {
    let (vip, fwmark) = s.vips.get(network_id)?;
    let backends = s.backends.get(network_id).filter(|b| !b.is_empty())?;
    Some(VirtualService {
        fwmark: *fwmark,
        frontend: Frontend::Vip(*vip),
        backends: backends.clone(),
    })
}

/// The VIPs a network's sandbox balances: every VIP-mode service on the network with a task
/// that serves.
pub fn network_services(plan: &NodePlan, network_id: &str) -> Vec<VirtualService> {
    plan.services
        .iter()
        .filter_map(|s| virtual_service(s, network_id))
        .collect()
}

/// How a name in a view was claimed: a service's own name wins over another's alias.
#[derive(Clone, Copy, PartialEq)]
enum Claim {
    Name,
    Alias,
}

/// The names `s` gives a task on `nets` (lower-case), with their answers: its name and
/// `tasks.NAME`, and its aliases on the networks that name them, as in Docker.
fn claims(s: &ServicePlan, nets: &[&str]) -> Vec<(String, Answer, Claim)> {
    let shared: Vec<&str> = nets
        .iter()
        .copied()
        .filter(|n| s.backends.contains_key(*n))
        .collect();
    if shared.is_empty() {
        return Vec::new();
    }
    let answers = |on: &[&str]| {
        let ips: Vec<Ipv4Addr> = on
            .iter()
            .flat_map(|n| s.backends.get(*n).cloned().unwrap_or_default())
            .collect();
        let name = match (s.endpoint_mode, on.first().and_then(|n| s.vips.get(*n))) {
            (EndpointMode::Vip, Some((vip, _))) => Answer {
                ips: vec![*vip],
                rotate: false,
            },
            _ => Answer {
                ips: ips.clone(),
                rotate: true,
            },
        };
        (name, Answer { ips, rotate: true })
    };
    let mut out = Vec::new();
    let (name, tasks) = answers(&shared);
    let lower = s.name.to_lowercase();
    out.push((format!("tasks.{lower}"), tasks, Claim::Name));
    out.push((lower, name, Claim::Name));
    for net in &shared {
        for alias in s.aliases.get(*net).into_iter().flatten() {
            let (name, tasks) = answers(&[net]);
            let alias = alias.to_lowercase();
            out.push((format!("tasks.{alias}"), tasks, Claim::Alias));
            out.push((alias, name, Claim::Alias));
        }
    }
    out
}

/// Whether `s` could claim `name` (lower-case) at all, without building its claims.
fn may_claim(s: &ServicePlan, name: &str) -> bool {
    let bare = name.strip_prefix("tasks.").unwrap_or(name);
    let is = |n: &str| n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(bare);
    is(&s.name) || s.aliases.values().flatten().any(|a| is(a))
}

/// Adds one claim the way the whole view is built: a name overwrites, an alias only fills.
fn claim(names: &mut HashMap<String, Answer>, name: String, answer: Answer, how: Claim) {
    match how {
        Claim::Name => {
            names.insert(name, answer);
        }
        Claim::Alias => {
            names.entry(name).or_insert(answer);
        }
    }
}

/// What the task resolves through 127.0.0.11: service names to VIPs (or task IPs in dnsrr
/// mode) and `tasks.NAME` to task IPs, only for services on networks it shares. A service's
/// network aliases resolve the same way, but only on the network that names them, as in
/// Docker.
pub fn task_view(plan: &NodePlan, task: &TaskPlan) -> View {
    let nets = task_networks(plan, task);
    let mut names = HashMap::new();
    for s in &plan.services {
        for (name, answer, how) in claims(s, &nets) {
            claim(&mut names, name, answer, how);
        }
    }
    View { names }
}

/// The names of `task`'s view that `changed` (from `changed_services`) touched, each with
/// its answer in `plan` (None: gone): what `task_view` would give for those names, found
/// without building the whole view.
pub fn view_changes(
    plan: &NodePlan,
    task: &TaskPlan,
    changed: &[ServiceChange],
) -> Vec<(String, Option<Answer>)> {
    let nets = task_networks(plan, task);
    let touched: BTreeSet<String> = changed
        .iter()
        .flat_map(|(a, b)| [a, b])
        .flatten()
        .flat_map(|s| claims(s, &nets))
        .map(|(name, _, _)| name)
        .collect();
    touched
        .into_iter()
        .map(|name| {
            let mut one = HashMap::new();
            for s in plan.services.iter().filter(|s| may_claim(s, &name)) {
                for (n, answer, how) in claims(s, &nets) {
                    if n == name {
                        claim(&mut one, n, answer, how);
                    }
                }
            }
            let answer = one.remove(&name);
            (name, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{IngressPlan, ServicePlan};
    use std::collections::BTreeMap;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn task(nets: &[&str]) -> TaskPlan {
        TaskPlan {
            id: "t1".into(),
            name: "app.1.t1".into(),
            service_id: "app".into(),
            service_name: "app".into(),
            slot: 1,
            image: "whoami".into(),
            args: vec![],
            env: vec![],
            hostname: "t1".into(),
            attachments: nets
                .iter()
                .enumerate()
                .map(|(i, n)| AttachmentPlan {
                    network_id: n.to_string(),
                    ifname: format!("eth{i}"),
                    addr: "10.0.9.9/24".parse().unwrap(),
                })
                .collect(),
            start_after: None,
            host_ports: vec![],
            stop_grace_ms: 0,
        }
    }

    fn service(name: &str, mode: EndpointMode, on: &[(&str, u8, &[&str])]) -> ServicePlan {
        ServicePlan {
            id: name.into(),
            name: name.into(),
            endpoint_mode: mode,
            vips: on
                .iter()
                .filter(|_| mode == EndpointMode::Vip)
                .map(|(n, vip, _)| (n.to_string(), (ip(*vip), 300)))
                .collect(),
            backends: on
                .iter()
                .map(|(n, vip, _)| (n.to_string(), vec![ip(vip + 1), ip(vip + 2)]))
                .collect(),
            aliases: on
                .iter()
                .map(|(n, _, a)| (n.to_string(), a.iter().map(|s| s.to_string()).collect()))
                .collect::<BTreeMap<_, Vec<_>>>(),
        }
    }

    /// A plan as `PlanState` makes them: services sorted by ID.
    fn plan(mut services: Vec<ServicePlan>) -> NodePlan {
        services.sort_by(|a, b| a.id.cmp(&b.id));
        NodePlan {
            services: services.into_iter().map(Arc::new).collect(),
            ingress: Some(IngressPlan {
                network_id: "ingress".into(),
                sandbox_addr: "10.255.0.2/16".parse().unwrap(),
                ports: vec![],
            }),
            ..Default::default()
        }
    }

    fn ips(v: &View, name: &str) -> Option<Vec<Ipv4Addr>> {
        v.names.get(name).map(|a| a.ips.clone())
    }

    #[test]
    fn aliases_resolve_on_their_own_network_only() {
        let p = plan(vec![service(
            "demo_db",
            EndpointMode::Vip,
            &[("back", 10, &["db", "Store"]), ("front", 20, &[])],
        )]);
        let on_back = task_view(&p, &task(&["ingress", "back"]));
        assert_eq!(ips(&on_back, "db"), Some(vec![ip(10)]));
        assert_eq!(ips(&on_back, "store"), Some(vec![ip(10)]));
        assert_eq!(ips(&on_back, "tasks.db"), Some(vec![ip(11), ip(12)]));
        assert_eq!(ips(&on_back, "demo_db"), Some(vec![ip(10)]));
        // On the other network the service resolves by name, not by the alias.
        let on_front = task_view(&p, &task(&["front"]));
        assert_eq!(ips(&on_front, "demo_db"), Some(vec![ip(20)]));
        assert_eq!(ips(&on_front, "db"), None);
        assert_eq!(ips(&on_front, "tasks.db"), None);
    }

    #[test]
    fn dnsrr_aliases_answer_task_addresses() {
        let p = plan(vec![service(
            "demo_db",
            EndpointMode::Dnsrr,
            &[("back", 10, &["db"])],
        )]);
        let v = task_view(&p, &task(&["back"]));
        assert_eq!(ips(&v, "db"), Some(vec![ip(11), ip(12)]));
        assert!(v.names["db"].rotate);
    }

    #[test]
    fn a_service_name_wins_over_another_services_alias() {
        let p = plan(vec![
            service("db", EndpointMode::Vip, &[("back", 30, &[])]),
            service("demo_db", EndpointMode::Vip, &[("back", 10, &["db"])]),
        ]);
        let v = task_view(&p, &task(&["back"]));
        assert_eq!(ips(&v, "db"), Some(vec![ip(30)]));
        assert_eq!(ips(&v, "demo_db"), Some(vec![ip(10)]));
    }

    /// The names a change touched, brought into the old view, give the new whole view: for
    /// services coming and going, backends changing, aliases colliding with names.
    #[test]
    fn view_changes_bring_a_view_to_the_whole_new_one() {
        let t = task(&["ingress", "back"]);
        let steps = vec![
            vec![service("web", EndpointMode::Vip, &[("back", 10, &[])])],
            vec![
                service("web", EndpointMode::Vip, &[("back", 10, &[])]),
                service(
                    "demo_db",
                    EndpointMode::Vip,
                    &[("back", 20, &["db", "Web"])],
                ),
            ],
            vec![
                service("web", EndpointMode::Vip, &[("back", 30, &[])]),
                service("demo_db", EndpointMode::Dnsrr, &[("back", 20, &["db"])]),
                service("db", EndpointMode::Vip, &[("back", 40, &[])]),
            ],
            vec![
                service("demo_db", EndpointMode::Dnsrr, &[("back", 20, &["db"])]),
                service("other", EndpointMode::Vip, &[("front", 50, &[])]),
            ],
            vec![],
        ];
        let mut prev = plan(Vec::new());
        let mut names = task_view(&prev, &t).names;
        for services in steps {
            let next = plan(services);
            let changed = changed_services(&prev, &next);
            for (name, answer) in view_changes(&next, &t, &changed) {
                match answer {
                    Some(a) => names.insert(name, a),
                    None => names.remove(&name),
                };
            }
            assert_eq!(names, task_view(&next, &t).names);
            prev = next;
        }
    }

    /// With a mark: `service` gives every VIP mark 300.
    fn marked(name: &str, mark: u32, vip: u8) -> ServicePlan {
        let mut s = service(name, EndpointMode::Vip, &[("back", vip, &[])]);
        s.vips.get_mut("back").unwrap().1 = mark;
        s
    }

    #[test]
    fn changed_services_and_their_balancing_on_a_network() {
        let old = plan(vec![
            marked("a", 300, 10),
            marked("b", 301, 20),
            marked("c", 302, 30),
        ]);
        // `a` is shared as plans from one plan state share it; `b` gains a backend; `c`
        // leaves and `d` comes with its mark and VIP.
        let mut b = marked("b", 301, 20);
        b.backends.get_mut("back").unwrap().push(ip(99));
        let mut services = vec![old.services[0].clone(), Arc::new(b)];
        services.push(Arc::new(marked("d", 302, 30)));
        let new = NodePlan {
            services,
            ..old.clone()
        };
        let changed = changed_services(&old, &new);
        let ids: Vec<_> = changed
            .iter()
            .map(|(o, n)| (o.map(|s| s.id.as_str()), n.map(|s| s.id.as_str())))
            .collect();
        assert_eq!(
            ids,
            [(Some("b"), Some("b")), (Some("c"), None), (None, Some("d"))]
        );
        let on_back = network_changes(&changed, "back");
        let marks: Vec<_> = on_back
            .iter()
            .map(|(m, s)| (*m, s.as_ref().map(|s| s.backends.len())))
            .collect();
        // The mark `c` frees is taken by `d`: freed first, so it ends up taken.
        assert_eq!(marks, [(302, None), (301, Some(3)), (302, Some(2))]);
        assert!(network_changes(&changed, "front").is_empty());
        assert!(changed_services(&new, &new).is_empty());
    }
}
