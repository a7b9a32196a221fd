//! Indexes over the store that the dispatcher keeps up to date from each commit's changes,
//! and the computation of one plan object for one node from them. Every plan object is
//! computed here and only here, for a full plan and for a delta alike.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::model::{EndpointMode, PublishMode, Task};
use crate::plan::{
    AttachmentPlan, HostPortPlan, IngressPort, KeyringPlan, NetworkPeer, NetworkPlan, NodeHeader,
    PeerKey, PortKey, ServicePlan, TaskPlan, keeps_running, serves_traffic,
};
use crate::store::State;

/// Where a live task (one that exists on its node, see `keeps_running`) sits.
#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    pub node: String,
    pub service: String,
    pub addrs: Vec<PeerKey>,
}

impl Live {
    fn of(t: &Task) -> Live {
        Live {
            node: t.node_id.clone(),
            service: t.service_id.clone(),
            addrs: t
                .attachments
                .iter()
                .map(|a| (a.network_id.clone(), a.addr.addr()))
                .collect(),
        }
    }
}

#[derive(Default)]
pub struct Index {
    pub live: HashMap<String, Live>,
    /// Tasks whose liveness waits on the acks (draining): rechecked when the lowest ack moves.
    pub draining: BTreeSet<String>,
    pub by_service: HashMap<String, BTreeSet<String>>,
    pub by_node: HashMap<String, BTreeSet<String>>,
    /// Live tasks holding an address on a network (more than one only while one leaves).
    pub addrs: BTreeMap<PeerKey, BTreeSet<String>>,
    /// node -> network -> live local tasks attached to it.
    pub node_nets: HashMap<String, HashMap<String, usize>>,
    /// network -> services whose tasks join it (ingress excluded: it carries no discovery).
    pub services_by_net: HashMap<String, BTreeSet<String>>,
    /// published ingress port -> the service publishing it.
    pub ports: BTreeMap<PortKey, String>,
    pub ingress_net: Option<String>,
}

fn remove_from<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<String>>, k: &K, id: &str) {
    if let Some(set) = m.get_mut(k) {
        set.remove(id);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

/// Ingress-mode published ports of a service.
pub fn ingress_ports_of(s: &crate::model::Service) -> impl Iterator<Item = PortKey> + '_ {
    s.ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .map(|p| (p.protocol, p.published))
}

impl Index {
    pub fn build(state: &State, min_ack: u64) -> Index {
        let mut idx = Index::default();
        for s in state.services.values() {
            idx.set_service(None, Some(s), state);
        }
        for t in state.tasks.values() {
            idx.set_task(&t.id, Some(t), min_ack);
        }
        idx.ingress_net = state
            .networks
            .values()
            .find(|n| n.ingress)
            .map(|n| n.id.clone());
        idx
    }

    pub fn set_service(
        &mut self,
        old: Option<&crate::model::Service>,
        new: Option<&crate::model::Service>,
        state: &State,
    ) {
        let is_ingress = |n: &str| state.networks.get(n).is_some_and(|n| n.ingress);
        if let Some(o) = old {
            for n in &o.networks {
                remove_from(&mut self.services_by_net, n, &o.id);
            }
            for k in ingress_ports_of(o) {
                if self.ports.get(&k) == Some(&o.id) {
                    self.ports.remove(&k);
                }
            }
        }
        if let Some(s) = new {
            for n in s.networks.iter().filter(|n| !is_ingress(n)) {
                self.services_by_net
                    .entry(n.clone())
                    .or_default()
                    .insert(s.id.clone());
            }
            for k in ingress_ports_of(s) {
                self.ports.insert(k, s.id.clone());
            }
        }
    }

    /// Updates the indexes for one task; returns its live entries before and after.
    pub fn set_task(
        &mut self,
        id: &str,
        task: Option<&Task>,
        min_ack: u64,
    ) -> (Option<Live>, Option<Live>) {
        match task {
            Some(t) if t.drain_version.is_some() && !t.status.state.is_terminal() => {
                self.draining.insert(id.to_string())
            }
            _ => self.draining.remove(id),
        };
        let new = task.filter(|t| keeps_running(t, min_ack)).map(Live::of);
        let old = self.live.get(id).cloned();
        if old == new {
            return (old, new);
        }
        if let Some(o) = &old {
            self.live.remove(id);
            remove_from(&mut self.by_service, &o.service, id);
            remove_from(&mut self.by_node, &o.node, id);
            for k in &o.addrs {
                if let Some(set) = self.addrs.get_mut(k) {
                    set.remove(id);
                    if set.is_empty() {
                        self.addrs.remove(k);
                    }
                }
                if let Some(nets) = self.node_nets.get_mut(&o.node)
                    && let Some(c) = nets.get_mut(&k.0)
                {
                    *c -= 1;
                    if *c == 0 {
                        nets.remove(&k.0);
                    }
                }
            }
        }
        if let Some(n) = &new {
            self.live.insert(id.to_string(), n.clone());
            let ins = |m: &mut HashMap<String, BTreeSet<String>>, k: &str| {
                m.entry(k.to_string()).or_default().insert(id.to_string());
            };
            ins(&mut self.by_service, &n.service);
            ins(&mut self.by_node, &n.node);
            for k in &n.addrs {
                self.addrs
                    .entry(k.clone())
                    .or_default()
                    .insert(id.to_string());
                *self
                    .node_nets
                    .entry(n.node.clone())
                    .or_default()
                    .entry(k.0.clone())
                    .or_default() += 1;
            }
        }
        (old, new)
    }

    /// Whether the node has the network: a local task uses it, or it is the ingress network
    /// (every node has its ingress sandbox).
    pub fn has_net(&self, node: &str, net: &str) -> bool {
        self.ingress_net.as_deref() == Some(net)
            || self
                .node_nets
                .get(node)
                .is_some_and(|m| m.contains_key(net))
    }

    /// Networks the node has.
    pub fn nets_of(&self, node: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .node_nets
            .get(node)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        out.extend(self.ingress_net.clone());
        out
    }
}

pub fn header(state: &State, idx: &Index, node: &str) -> NodeHeader {
    let Some(n) = state.nodes.get(node) else {
        return NodeHeader {
            node_id: node.to_string(),
            ..Default::default()
        };
    };
    NodeHeader {
        node_id: n.id.clone(),
        hostname: n.hostname.clone(),
        vtep: Some(n.addr),
        lb_driver: n.lb_driver.clone(),
        ingress: idx.ingress_net.clone().map(|id| (id, n.ingress_addr)),
        data_port: state.meta.data_port(),
    }
}

pub fn network(state: &State, idx: &Index, node: &str, id: &str) -> Option<NetworkPlan> {
    if !state.nodes.contains_key(node) || !idx.has_net(node, id) {
        return None;
    }
    let n = state.networks.get(id)?;
    Some(NetworkPlan {
        id: n.id.clone(),
        name: n.name.clone(),
        vni: n.vni,
        subnet: n.subnet,
        gateway: n.gateway,
        mtu: if n.encrypted() {
            netcore::xfrm::ENCRYPTED_MTU
        } else {
            crate::ipam::OVERLAY_MTU
        },
        ingress: n.ingress,
        encrypted: n.encrypted(),
        keyring: n.keyring.as_ref().map(|k| KeyringPlan {
            keys: k.keys.clone(),
            primary: k.primary,
        }),
        peers: Vec::new(),
    })
}

/// The remote endpoint at `key` as `node` must reach it: a live task on another node, or
/// on the ingress network another ready node's ingress sandbox.
pub fn peer(state: &State, idx: &Index, node: &str, key: &PeerKey) -> Option<NetworkPeer> {
    if !state.nodes.contains_key(node) || !idx.has_net(node, &key.0) {
        return None;
    }
    let vtep = |owner: &str| state.nodes.get(owner).map(|n| n.addr);
    let remote_task = idx.addrs.get(key).into_iter().flatten().find_map(|id| {
        let l = idx.live.get(id)?;
        (l.node != node).then(|| vtep(&l.node)).flatten()
    });
    let remote_sandbox = || {
        (idx.ingress_net.as_deref() == Some(key.0.as_str()))
            .then(|| {
                state.nodes.values().find(|o| {
                    o.id != node
                        && o.state == crate::model::NodeState::Ready
                        && o.ingress_addr.addr() == key.1
                })
            })
            .flatten()
            .map(|o| o.addr)
    };
    remote_task.or_else(remote_sandbox).map(|vtep| NetworkPeer {
        network_id: key.0.clone(),
        ip: key.1,
        vtep,
    })
}

/// Every peer key on a network (tasks' addresses and, on ingress, nodes' sandboxes).
pub fn peer_keys_of_net(state: &State, idx: &Index, net: &str) -> Vec<PeerKey> {
    let lo = (net.to_string(), Ipv4Addr::UNSPECIFIED);
    let hi = (net.to_string(), Ipv4Addr::BROADCAST);
    let mut keys: Vec<PeerKey> = idx.addrs.range(lo..=hi).map(|(k, _)| k.clone()).collect();
    if idx.ingress_net.as_deref() == Some(net) {
        keys.extend(
            state
                .nodes
                .values()
                .map(|n| (net.to_string(), n.ingress_addr.addr())),
        );
    }
    keys
}

fn node_hostname(state: &State, id: &str) -> String {
    state
        .nodes
        .get(id)
        .map(|n| n.hostname.clone())
        .unwrap_or_default()
}

/// A task's hostname: its `--hostname` with docker's templates filled in, else the start of
/// its ID (as docker's containers get theirs).
pub fn hostname_of(
    state: &State,
    service: &crate::model::Service,
    container: &bollard::models::TaskSpecContainerSpec,
    t: &Task,
) -> String {
    crate::policy::hostname(
        container.hostname.as_deref().unwrap_or_default(),
        &[
            (".Service.Name", &service.name),
            (".Service.ID", &service.id),
            (".Task.Slot", &service.docker_slot(t).to_string()),
            (".Task.ID", &t.id),
            (".Task.Name", &service.container_name(t)),
            (".Node.ID", &t.node_id),
            (".Node.Hostname", &node_hostname(state, &t.node_id)),
        ],
    )
    .unwrap_or_else(|| t.id[..12.min(t.id.len())].to_string())
}

pub fn task(state: &State, idx: &Index, node: &str, id: &str) -> Option<TaskPlan> {
    if idx.live.get(id).is_none_or(|l| l.node != node) {
        return None;
    }
    let t = state.tasks.get(id)?;
    let service = state.services.get(&t.service_id)?;
    let container = service
        .spec
        .task_template
        .as_ref()
        .and_then(|tt| tt.container_spec.clone())
        .unwrap_or_default();
    let mut args = container.command.clone().unwrap_or_default();
    let command_len = args.len();
    args.extend(container.args.clone().unwrap_or_default());
    Some(TaskPlan {
        id: t.id.clone(),
        name: service.container_name(t),
        service_id: service.id.clone(),
        service_name: service.name.clone(),
        slot: t.slot,
        image: service.image(),
        args,
        command_len,
        // Checked when the spec was taken.
        mounts: crate::plan::mounts_of(&container).unwrap_or_default(),
        env: container.env.clone().unwrap_or_default(),
        hostname: hostname_of(state, service, &container, t),
        user: container.user.clone().unwrap_or_default(),
        dir: container.dir.clone().unwrap_or_default(),
        stop_signal: container.stop_signal.clone().unwrap_or_default(),
        hosts: container.hosts.clone().unwrap_or_default(),
        read_only: container.read_only.unwrap_or(false),
        dns_search: (container.dns_config.as_ref())
            .and_then(|d| d.search.clone())
            .unwrap_or_default(),
        dns_options: (container.dns_config.as_ref())
            .and_then(|d| d.options.clone())
            .unwrap_or_default(),
        // Checked when the spec was taken; an address that does not parse was refused then.
        dns_servers: (container.dns_config.as_ref())
            .and_then(|d| d.nameservers.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect(),
        sysctls: container
            .sysctls
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        attachments: t
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| AttachmentPlan {
                network_id: a.network_id.clone(),
                ifname: format!("eth{i}"),
                addr: a.addr,
            })
            .collect(),
        // The API refused references it could not resolve; one whose payload went since
        // (it cannot while in use) leaves the task without it rather than stalling the plan.
        files: crate::plan::task_files(state, &container).unwrap_or_default(),
        health: container
            .health_check
            .as_ref()
            .and_then(crate::plan::HealthPlan::from_spec),
        health_disabled: container.health_check.as_ref().is_some_and(|h| {
            h.test
                .as_deref()
                .and_then(|t| t.first())
                .is_some_and(|k| k == "NONE")
        }),
        internal: !t.attachments.is_empty()
            && t.attachments.iter().all(|a| {
                state
                    .networks
                    .get(&a.network_id)
                    .is_some_and(|n| n.internal)
            }),
        start_after: t.start_after,
        stop_grace_ms: crate::policy::stop_grace(&service.spec).as_millis() as u64,
        host_ports: service
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .map(|p| HostPortPlan {
                protocol: p.protocol,
                published: p.published,
                target: p.target,
            })
            .collect(),
        limits: crate::plan::TaskLimits::from_spec(
            service
                .spec
                .task_template
                .as_ref()
                .and_then(|tt| tt.resources.as_ref()),
        ),
        init: container.init.unwrap_or(false),
        cap_add: container.capability_add.clone().unwrap_or_default(),
        cap_drop: container.capability_drop.clone().unwrap_or_default(),
        groups: container.groups.clone().unwrap_or_default(),
        registry_auth: service.registry_auth.current.clone(),
    })
}

/// Addresses of a service's tasks that serve traffic, per network, in slot order (the
/// round-robin order).
fn backends(
    state: &State,
    idx: &Index,
    s: &crate::model::Service,
) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut serving: Vec<&Task> = idx
        .by_service
        .get(&s.id)
        .into_iter()
        .flatten()
        .filter_map(|id| state.tasks.get(id))
        .filter(|t| serves_traffic(t))
        .collect();
    serving.sort_by_key(|t| (t.slot, t.created));
    s.network_ids()
        .into_iter()
        .map(|net| {
            let addrs = serving
                .iter()
                .flat_map(|t| t.attachments.iter())
                .filter(|a| a.network_id == net)
                .map(|a| a.addr.addr())
                .collect();
            (net, addrs)
        })
        .collect()
}

/// A service concerns a node when one of its (non-ingress) networks is on the node: the
/// node's tasks resolve and balance to it.
pub fn service(state: &State, idx: &Index, node: &str, id: &str) -> Option<ServicePlan> {
    let s = state.services.get(id)?;
    let concerns = s
        .networks
        .iter()
        .any(|n| idx.ingress_net.as_deref() != Some(n.as_str()) && idx.has_net(node, n));
    if !concerns || !state.nodes.contains_key(node) {
        return None;
    }
    Some(ServicePlan {
        id: s.id.clone(),
        name: s.name.clone(),
        endpoint_mode: s.endpoint_mode,
        vips: s
            .vips
            .iter()
            .filter(|_| s.endpoint_mode == EndpointMode::Vip)
            .map(|v| (v.network_id.clone(), (v.addr.addr(), v.fwmark)))
            .collect(),
        backends: backends(state, idx, s),
        aliases: crate::plan::aliases_of(state, s),
    })
}

/// A published port is the same on every node (the routing mesh).
pub fn port(state: &State, idx: &Index, key: &PortKey) -> Option<IngressPort> {
    let ingress = idx.ingress_net.as_ref()?;
    let s = state.services.get(idx.ports.get(key)?)?;
    let p = s
        .ports
        .iter()
        .find(|p| p.mode == PublishMode::Ingress && (p.protocol, p.published) == *key)?;
    Some(IngressPort {
        protocol: p.protocol,
        published: p.published,
        target: p.target,
        service_id: s.id.clone(),
        backends: backends(state, idx, s).remove(ingress).unwrap_or_default(),
    })
}
