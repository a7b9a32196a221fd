//! The per-node plan: everything one node must make true, computed by the manager from the
//! desired and observed state, fetched by the node's agent and applied through netcore.
//! It is a pure function of (state, acks, node), so it can be tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{EndpointMode, Protocol, PublishMode, Task, TaskState, Time};
use crate::store::State;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    /// Store version this plan reflects; the agent acks it once applied.
    pub version: u64,
    pub node_id: String,
    pub hostname: String,
    pub vtep: Option<Ipv4Addr>,
    pub lb_driver: String,
    pub networks: Vec<NetworkPlan>,
    pub tasks: Vec<TaskPlan>,
    pub services: Vec<ServicePlan>,
    pub ingress: Option<IngressPlan>,
    /// UDP port of all VXLAN traffic (0 in plans from before it existed: 4789).
    #[serde(default)]
    pub data_port: u16,
    /// Keys of the encrypted networks in `networks`, by network ID.
    #[serde(default)]
    pub keyrings: BTreeMap<String, KeyringPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyringPlan {
    /// Every key the node receives with.
    pub keys: Vec<netcore::xfrm::Key>,
    /// Tag of the key it sends with.
    pub primary: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkPlan {
    pub id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub ingress: bool,
    /// VXLAN of this network travels in ESP between nodes (`--opt encrypted`).
    #[serde(default)]
    pub encrypted: bool,
    /// Endpoints of this network on other nodes.
    pub peers: Vec<PeerPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerPlan {
    pub ip: Ipv4Addr,
    pub vtep: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskPlan {
    pub id: String,
    /// `service.slot.id`, docker's container name for the task.
    pub name: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub hostname: String,
    pub attachments: Vec<AttachmentPlan>,
    pub start_after: Option<Time>,
    /// Ports published in host mode: this node forwards them to this task directly.
    pub host_ports: Vec<HostPortPlan>,
    /// Between SIGTERM and SIGKILL when the task stops (`--stop-grace-period`).
    #[serde(default)]
    pub stop_grace_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostPortPlan {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachmentPlan {
    pub network_id: String,
    pub ifname: String,
    pub addr: Ipv4Net,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServicePlan {
    pub id: String,
    pub name: String,
    pub endpoint_mode: EndpointMode,
    /// network id -> (vip, fwmark)
    pub vips: BTreeMap<String, (Ipv4Addr, u32)>,
    /// network id -> addresses of running tasks, in slot order (the round-robin order).
    pub backends: BTreeMap<String, Vec<Ipv4Addr>>,
    /// network id -> extra DNS names of the service on that network (`Networks[].Aliases`).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngressPlan {
    pub network_id: String,
    /// This node's ingress sandbox address on the ingress network.
    pub sandbox_addr: Ipv4Net,
    pub ports: Vec<IngressPort>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngressPort {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
    pub service_id: String,
    /// Ingress addresses of the service's running tasks, in slot order.
    pub backends: Vec<Ipv4Addr>,
}

/// Whether a task must still be running on its node: desired running, or draining until
/// every node has applied its removal from the load balancers.
pub fn keeps_running(t: &Task, min_ack: u64) -> bool {
    match t.desired {
        TaskState::Running => true,
        _ => {
            !t.status.state.is_terminal()
                && t.status.state >= TaskState::Starting
                && t.drain_version.is_some_and(|v| min_ack < v)
        }
    }
}

/// A task receives traffic only while desired running and observed running.
pub fn serves_traffic(t: &Task) -> bool {
    t.desired == TaskState::Running && t.status.state == TaskState::Running
}

pub fn task_name(service_name: &str, t: &Task) -> String {
    format!("{service_name}.{}.{}", t.slot, t.id)
}

/// The spec's network aliases by network ID, from both places a spec may list networks
/// (TaskTemplate.Networks and the deprecated top-level Networks), targets by ID or name.
fn aliases_of(state: &State, s: &crate::model::Service) -> BTreeMap<String, Vec<String>> {
    let mut targets = s
        .spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.clone())
        .unwrap_or_default();
    #[allow(deprecated)]
    targets.extend(s.spec.networks.clone().unwrap_or_default());
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in targets {
        let Some(target) = t.target.as_deref() else {
            continue;
        };
        let Some(net) = state
            .networks
            .get(target)
            .or_else(|| state.networks.values().find(|n| n.name == target))
        else {
            continue;
        };
        let list = out.entry(net.id.clone()).or_default();
        for a in t.aliases.unwrap_or_default() {
            if !a.is_empty() && !list.contains(&a) {
                list.push(a);
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

pub fn compute(state: &State, node_id: &str, min_ack: u64) -> NodePlan {
    let Some(node) = state.nodes.get(node_id) else {
        return NodePlan {
            version: state.version,
            node_id: node_id.to_string(),
            ..Default::default()
        };
    };
    let vtep_of: BTreeMap<&str, Ipv4Addr> = state
        .nodes
        .values()
        .map(|n| (n.id.as_str(), n.addr))
        .collect();
    let ingress_net = state.networks.values().find(|n| n.ingress);

    // Tasks that exist (as namespaces with endpoints) anywhere, in slot order.
    let mut live: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| keeps_running(t, min_ack))
        .collect();
    live.sort_by_key(|t| (t.service_id.clone(), t.slot, t.created));

    let mut tasks = Vec::new();
    let mut local_networks: BTreeSet<String> = BTreeSet::new();
    for t in live.iter().filter(|t| t.node_id == node_id) {
        let Some(service) = state.services.get(&t.service_id) else {
            continue;
        };
        let container = service
            .spec
            .task_template
            .as_ref()
            .and_then(|tt| tt.container_spec.clone())
            .unwrap_or_default();
        let mut args = container.command.clone().unwrap_or_default();
        args.extend(container.args.clone().unwrap_or_default());
        let attachments = t
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| {
                local_networks.insert(a.network_id.clone());
                AttachmentPlan {
                    network_id: a.network_id.clone(),
                    ifname: format!("eth{i}"),
                    addr: a.addr,
                }
            })
            .collect();
        tasks.push(TaskPlan {
            id: t.id.clone(),
            name: task_name(&service.name, t),
            service_id: service.id.clone(),
            service_name: service.name.clone(),
            slot: t.slot,
            image: service.image(),
            args,
            env: container.env.clone().unwrap_or_default(),
            hostname: t.id[..12.min(t.id.len())].to_string(),
            attachments,
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
        });
    }
    if let Some(ing) = ingress_net {
        local_networks.insert(ing.id.clone());
    }

    let networks =
        local_networks
            .iter()
            .filter_map(|id| state.networks.get(id))
            .map(|n| {
                let mut peers: Vec<PeerPlan> = live
                    .iter()
                    .filter(|t| t.node_id != node_id)
                    .flat_map(|t| {
                        let vtep = vtep_of.get(t.node_id.as_str()).copied();
                        t.attachments
                            .iter()
                            .filter(|a| a.network_id == n.id)
                            .filter_map(move |a| {
                                vtep.map(|vtep| PeerPlan {
                                    ip: a.addr.addr(),
                                    vtep,
                                })
                            })
                    })
                    .collect();
                if n.ingress {
                    peers.extend(state.nodes.values().filter(|o| o.id != node_id).map(|o| {
                        PeerPlan {
                            ip: o.ingress_addr.addr(),
                            vtep: o.addr,
                        }
                    }));
                }
                peers.sort();
                peers.dedup();
                NetworkPlan {
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
                    peers,
                }
            })
            .collect();

    let mut services = Vec::new();
    let mut ports = Vec::new();
    for s in state.services.values() {
        let serving: Vec<&&Task> = live
            .iter()
            .filter(|t| t.service_id == s.id && serves_traffic(t))
            .collect();
        let mut backends: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for net in s.network_ids() {
            let addrs = serving
                .iter()
                .flat_map(|t| t.attachments.iter())
                .filter(|a| a.network_id == net)
                .map(|a| a.addr.addr())
                .collect();
            backends.insert(net, addrs);
        }
        for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
            if let Some(ing) = ingress_net {
                ports.push(IngressPort {
                    protocol: p.protocol,
                    published: p.published,
                    target: p.target,
                    service_id: s.id.clone(),
                    backends: backends.get(&ing.id).cloned().unwrap_or_default(),
                });
            }
        }
        let vips = s
            .vips
            .iter()
            .filter(|_| s.endpoint_mode == EndpointMode::Vip)
            .map(|v| (v.network_id.clone(), (v.addr.addr(), v.fwmark)))
            .collect();
        services.push(ServicePlan {
            id: s.id.clone(),
            name: s.name.clone(),
            endpoint_mode: s.endpoint_mode,
            vips,
            backends,
            aliases: aliases_of(state, s),
        });
    }
    ports.sort_by_key(|p| (p.protocol, p.published));
    let keyrings = local_networks
        .iter()
        .filter_map(|id| state.networks.get(id))
        .filter_map(|n| {
            n.keyring.as_ref().map(|k| {
                (
                    n.id.clone(),
                    KeyringPlan {
                        keys: k.keys.clone(),
                        primary: k.primary,
                    },
                )
            })
        })
        .collect();

    NodePlan {
        version: state.version,
        node_id: node.id.clone(),
        hostname: node.hostname.clone(),
        vtep: Some(node.addr),
        lb_driver: node.lb_driver.clone(),
        networks,
        tasks,
        services,
        ingress: ingress_net.map(|n| IngressPlan {
            network_id: n.id.clone(),
            sandbox_addr: node.ingress_addr,
            ports,
        }),
        data_port: state.meta.data_port(),
        keyrings,
    }
}
