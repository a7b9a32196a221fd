//! The cluster as the pictures see it: nodes with their tasks, overlay networks with the nodes
//! they reach, services with their VIPs and published ports. Read from the manager's API only,
//! so a picture shows what the cluster says it is, never what swarmkit thinks it should be.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{Network, Node, Service};
use serde::{Deserialize, Serialize};

use anyhow::{Context, bail};
use cluster::client::ManagerClient;

use crate::api::{self, Api, ApiResult};
use crate::reach::{self, Engine, NodeKey, Swarm, SwarmArgs};
use crate::render;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Topology {
    pub cluster: String,
    pub nodes: Vec<GNode>,
    pub networks: Vec<GNetwork>,
    pub services: Vec<GService>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GNode {
    pub id: String,
    pub hostname: String,
    /// The underlay address, which is also the node's VTEP.
    pub addr: String,
    pub state: String,
    pub availability: String,
    pub lb_driver: String,
    /// Whose engine runs the node: `swarmkit` or `docker`.
    pub engine: String,
    /// Where the routing mesh balances on this node: `sandbox` or `node`.
    pub mesh: String,
    pub tasks: Vec<GTask>,
    /// A Docker engine's load-balancer endpoints (`lb-<network>` in its `lb_` sandboxes, and
    /// the ingress sandbox's), read from the node's kernel where it can be reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lb_endpoints: Vec<Attachment>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GTask {
    pub id: String,
    /// `service.slot` (or `service.node-id` in a global mode), as `service ps` names it.
    pub name: String,
    pub service: String,
    pub node: String,
    pub state: String,
    pub addresses: Vec<Attachment>,
    /// Its container, where the engine reports one (Docker's; swarmkit's tasks have none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub network: String,
    /// Without the prefix length, as connections use it.
    pub addr: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GNetwork {
    pub id: String,
    pub name: String,
    pub vni: String,
    pub subnet: String,
    pub ingress: bool,
    pub encrypted: bool,
    /// Hostnames of the nodes the overlay reaches: every node for ingress, else the nodes
    /// running a task attached to it (where the agent builds its sandbox).
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GService {
    pub id: String,
    pub name: String,
    /// `vip` or `dnsrr`.
    pub mode: String,
    pub running: usize,
    pub desired: Option<i64>,
    pub vips: Vec<Attachment>,
    pub ports: Vec<GPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GPort {
    pub published: i64,
    pub target: i64,
    pub protocol: String,
    /// Published in host mode: only on the nodes running a task, not by the routing mesh.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
}

impl GPort {
    pub fn label(&self) -> String {
        format!(
            "*:{}->{}/{}{}",
            self.published,
            self.target,
            self.protocol,
            if self.host { " (host mode)" } else { "" }
        )
    }
}

/// A task as the manager's API returns it; bollard's model lacks `NetworksAttachments`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiTask {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub slot: i64,
    #[serde(default)]
    pub desired_state: String,
    #[serde(default)]
    pub status: ApiTaskStatus,
    #[serde(default)]
    pub networks_attachments: Vec<ApiAttachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiTaskStatus {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub container_status: Option<ApiContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiContainerStatus {
    #[serde(rename = "ContainerID", default)]
    pub container_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiAttachment {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub network: ApiAttachedNetwork,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiAttachedNetwork {
    #[serde(rename = "ID")]
    pub id: String,
}

/// Everything the manager says about the cluster, as it said it.
pub struct Raw {
    pub nodes: Vec<Node>,
    pub networks: Vec<Network>,
    pub services: Vec<Service>,
    pub tasks: Vec<ApiTask>,
}

impl Raw {
    /// From any Engine API (a Docker manager's): the lists, and which node answered.
    pub async fn fetch_from(client: &ManagerClient) -> anyhow::Result<(Raw, Option<String>)> {
        let info: serde_json::Value = client.get("/info").await?;
        if !info["Swarm"]["ControlAvailable"].as_bool().unwrap_or(false) {
            bail!(
                "this engine is not a swarm manager (swarm state {}): point --docker-host at a manager node's engine",
                info["Swarm"]["LocalNodeState"]
            );
        }
        let raw = Raw {
            nodes: client.get("/nodes").await?,
            networks: client.get("/networks").await?,
            services: client.get("/services").await?,
            tasks: client.get("/tasks").await?,
        };
        Ok((raw, info["Swarm"]["NodeID"].as_str().map(str::to_string)))
    }

    pub async fn fetch(cluster: &str) -> anyhow::Result<Raw> {
        let api = Api::connect(cluster)?;
        let nodes = api.docker.list_nodes(None).await.api(&api)?;
        let networks = api.docker.list_networks(None).await.api(&api)?;
        let services = api.docker.list_services(None).await.api(&api)?;
        let client = ::cluster::client::ManagerClient::of_cluster(
            &::cluster::paths::ClusterPaths::new(cluster),
        );
        let tasks = client.get("/tasks").await?;
        Ok(Raw {
            nodes,
            networks,
            services,
            tasks,
        })
    }
}

pub async fn fetch(cluster: &str) -> anyhow::Result<Topology> {
    Ok(Topology::from_raw(cluster, Raw::fetch(cluster).await?))
}

/// The swarm `args` name, as a topology, read again (a live picture's refresh).
pub async fn topology(cluster: &str, args: &SwarmArgs) -> anyhow::Result<Topology> {
    match args.engine(cluster) {
        Engine::Cluster(_) => fetch(cluster).await,
        engine @ Engine::Docker(_) => {
            let Engine::Docker(host) = &engine else {
                unreachable!()
            };
            let (raw, _) = Raw::fetch_from(&reach::client(&engine)?)
                .await
                .with_context(|| format!("asking the Docker engine at {host}"))?;
            Ok(Topology::from_raw(host, raw))
        }
    }
}

/// The swarm `args` name (a swarmkit cluster, or the one a Docker engine manages), as a
/// topology, and a way into its nodes' kernels.
pub async fn open(cluster: &str, args: &SwarmArgs) -> anyhow::Result<(Topology, Swarm)> {
    let engine = args.engine(cluster);
    let Engine::Docker(host) = &engine else {
        return Ok((fetch(cluster).await?, Swarm::swarmkit(cluster)));
    };
    let client = reach::client(&engine)?;
    let (raw, answering) = Raw::fetch_from(&client)
        .await
        .with_context(|| format!("asking the Docker engine at {host}"))?;
    let topo = Topology::from_raw(host, raw);
    if topo.nodes.iter().any(|n| n.engine != "docker") {
        bail!(
            "{host} is a swarmkit manager: use --cluster NAME instead of --docker-host, so its nodes can be reached"
        );
    }
    let keys: Vec<NodeKey> = topo
        .nodes
        .iter()
        .map(|n| NodeKey {
            id: &n.id,
            hostname: &n.hostname,
            addr: &n.addr,
        })
        .collect();
    let (reaches, _) = reach::docker_reaches(&engine, &keys, answering.as_deref(), args).await?;
    let swarm = Swarm::docker(host, reaches, topo.containers());
    let mut topo = topo;
    read_lb_endpoints(&mut topo, &swarm).await;
    Ok((topo, swarm))
}

/// Each reachable Docker node's load-balancer endpoints: the address its `lb_<network id
/// prefix>` sandbox holds on that network.
pub async fn read_lb_endpoints(topo: &mut Topology, swarm: &Swarm) {
    if !swarm.is_docker() {
        return;
    }
    let networks: Vec<(String, String, Option<ipnet::Ipv4Net>)> = topo
        .networks
        .iter()
        .map(|n| (n.id.clone(), n.name.clone(), n.subnet.parse().ok()))
        .collect();
    let topo_ingress = topo
        .networks
        .iter()
        .find(|n| n.ingress)
        .map(|n| n.id.clone());
    for node in &mut topo.nodes {
        if !swarm.reaches(&node.hostname) {
            continue;
        }
        let Ok(sandboxes) = swarm.docker_sandboxes(&node.hostname).await else {
            continue;
        };
        let mut found = Vec::new();
        for sb in sandboxes {
            // The ingress sandbox is the routing mesh's endpoint on the ingress network.
            let net = if sb == "ingress_sbox" {
                topo_ingress
                    .as_ref()
                    .and_then(|id| networks.iter().find(|(n, _, _)| n == id))
            } else {
                sb.strip_prefix("lb_")
                    .filter(|p| !p.is_empty())
                    .and_then(|p| networks.iter().find(|(id, _, _)| id.starts_with(p)))
            };
            let Some((_, name, subnet)) = net else {
                continue;
            };
            let place = reach::Place::Sandbox(node.hostname.clone(), sb.clone());
            let Ok(out) = swarm.output(&place, &["ip", "-j", "addr", "show"]).await else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            for a in v
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            {
                let Some(ip) = a["local"]
                    .as_str()
                    .and_then(|x| x.parse::<std::net::Ipv4Addr>().ok())
                else {
                    continue;
                };
                if subnet.is_some_and(|s| s.contains(&ip)) {
                    found.push(Attachment {
                        network: name.clone(),
                        addr: ip.to_string(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.network.cmp(&b.network));
        node.lb_endpoints = found;
    }
}

fn strip_len(addr: &str) -> String {
    addr.split('/').next().unwrap_or(addr).to_string()
}

impl Topology {
    pub fn from_raw(cluster: &str, raw: Raw) -> Topology {
        let net_names: BTreeMap<String, String> = raw
            .networks
            .iter()
            .filter_map(|n| Some((n.id.clone()?, n.name.clone()?)))
            .collect();
        let svc_names: BTreeMap<String, String> = raw
            .services
            .iter()
            .filter_map(|s| Some((s.id.clone()?, s.spec.as_ref()?.name.clone()?)))
            .collect();
        let mut nodes: Vec<GNode> = raw.nodes.iter().map(node).collect();
        nodes.sort_by(|a, b| render::natural_cmp(&a.hostname, &b.hostname));
        let hostname_of: BTreeMap<String, String> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.hostname.clone()))
            .collect();

        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        // A job's task is desired "complete" while it runs (as Swarm shows it).
        let meant_to_run = |t: &&ApiTask| {
            t.desired_state == "running"
                || (t.desired_state == "complete" && t.status.state != "complete")
        };
        for t in raw.tasks.iter().filter(meant_to_run) {
            let service = svc_names.get(&t.service_id).cloned().unwrap_or_default();
            let task = GTask {
                id: t.id.clone(),
                // docker's names: by slot, or by node for a global service's (slot 0).
                name: match t.slot {
                    0 => format!("{service}.{}", t.node_id),
                    slot => format!("{service}.{slot}"),
                },
                service,
                node: hostname_of.get(&t.node_id).cloned().unwrap_or_default(),
                state: t.status.state.clone(),
                container: t
                    .status
                    .container_status
                    .as_ref()
                    .map(|c| c.container_id.clone())
                    .unwrap_or_default(),
                addresses: t
                    .networks_attachments
                    .iter()
                    .flat_map(|a| {
                        let network = net_names.get(&a.network.id).cloned().unwrap_or_default();
                        a.addresses.iter().map(move |addr| Attachment {
                            network: network.clone(),
                            addr: strip_len(addr),
                        })
                    })
                    .collect(),
            };
            if t.status.state == "running" {
                *running.entry(t.service_id.clone()).or_default() += 1;
            }
            if let Some(n) = nodes.iter_mut().find(|n| n.id == t.node_id) {
                n.tasks.push(task);
            }
        }
        for n in &mut nodes {
            n.tasks
                .sort_by(|a, b| render::natural_cmp(&a.name, &b.name));
        }

        let mut networks: Vec<GNetwork> = raw
            .networks
            .iter()
            .filter(|n| n.driver.as_deref() == Some("overlay"))
            .map(|n| network(n, &nodes))
            .collect();
        // Ingress first: it is the one every published port crosses.
        networks.sort_by(|a, b| (!a.ingress, &a.name).cmp(&(!b.ingress, &b.name)));

        let mut services: Vec<GService> = raw
            .services
            .iter()
            .map(|s| service(s, &net_names, &running))
            .collect();
        services.sort_by(|a, b| render::natural_cmp(&a.name, &b.name));
        Topology {
            cluster: cluster.to_string(),
            nodes,
            networks,
            services,
        }
    }

    /// Each task with a container: its node's hostname and the container's ID.
    pub fn containers(&self) -> BTreeMap<String, (String, String)> {
        self.tasks()
            .filter(|t| !t.container.is_empty())
            .map(|t| (t.id.clone(), (t.node.clone(), t.container.clone())))
            .collect()
    }

    pub fn tasks(&self) -> impl Iterator<Item = &GTask> {
        self.nodes.iter().flat_map(|n| n.tasks.iter())
    }

    pub fn node(&self, hostname: &str) -> Option<&GNode> {
        self.nodes.iter().find(|n| n.hostname == hostname)
    }

    /// Ports published by any service: they enter at every node.
    /// The ports the routing mesh publishes on every node (host-mode ports are the tasks'
    /// nodes' own).
    pub fn published(&self) -> Vec<(&GService, &GPort)> {
        self.services
            .iter()
            .flat_map(|s| s.ports.iter().filter(|p| !p.host).map(move |p| (s, p)))
            .collect()
    }

    /// The host-mode ports open on `node`: those of services with a task there.
    pub fn host_ports(&self, node: &GNode) -> Vec<(&GService, &GPort)> {
        self.services
            .iter()
            .filter(|s| node.tasks.iter().any(|t| t.service == s.name))
            .flat_map(|s| s.ports.iter().filter(|p| p.host).map(move |p| (s, p)))
            .collect()
    }
}

fn node(n: &Node) -> GNode {
    let labels = n
        .description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .and_then(|e| e.labels.clone())
        .unwrap_or_default();
    GNode {
        id: n.id.clone().unwrap_or_default(),
        hostname: api::hostname(n),
        addr: n
            .status
            .as_ref()
            .and_then(|s| s.addr.clone())
            .unwrap_or_default(),
        state: n
            .status
            .as_ref()
            .and_then(|s| s.state)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        availability: n
            .spec
            .as_ref()
            .and_then(|s| s.availability)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        // A node without swarmkit's labels is a Docker engine's, which balances with IPVS in
        // sandboxes.
        engine: if labels.contains_key("swarmkit.lb-driver") {
            "swarmkit".into()
        } else {
            "docker".into()
        },
        lb_driver: labels
            .get("swarmkit.lb-driver")
            .cloned()
            .unwrap_or_else(|| "ipvs".into()),
        mesh: labels
            .get("swarmkit.mesh")
            .cloned()
            .unwrap_or_else(|| "sandbox".into()),
        tasks: Vec::new(),
        lb_endpoints: Vec::new(),
    }
}

fn network(n: &Network, nodes: &[GNode]) -> GNetwork {
    let name = n.name.clone().unwrap_or_default();
    let ingress = n.ingress.unwrap_or(false);
    let options = n.options.clone().unwrap_or_default();
    let reach: BTreeSet<&str> = nodes
        .iter()
        .filter(|node| {
            ingress
                || node
                    .tasks
                    .iter()
                    .any(|t| t.addresses.iter().any(|a| a.network == name))
        })
        .map(|node| node.hostname.as_str())
        .collect();
    GNetwork {
        id: n.id.clone().unwrap_or_default(),
        vni: options
            .get("com.docker.network.driver.overlay.vxlanid_list")
            .cloned()
            .unwrap_or_default(),
        subnet: n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.subnet.clone())
            .unwrap_or_default(),
        encrypted: options.contains_key("encrypted"),
        ingress,
        // Keep the nodes' order (natural by hostname), not the set's.
        nodes: nodes
            .iter()
            .filter(|node| reach.contains(node.hostname.as_str()))
            .map(|node| node.hostname.clone())
            .collect(),
        name,
    }
}

fn service(
    s: &Service,
    net_names: &BTreeMap<String, String>,
    running: &BTreeMap<String, usize>,
) -> GService {
    let id = s.id.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let endpoint = s.endpoint.clone().unwrap_or_default();
    let mode = endpoint
        .spec
        .as_ref()
        .and_then(|e| e.mode)
        .map(|m| m.to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "vip".into());
    GService {
        name: spec.name.clone().unwrap_or_default(),
        mode,
        running: running.get(&id).copied().unwrap_or(0),
        // What a service asks to run at once where its spec says (a global service's
        // depends on its nodes, and is left out).
        desired: spec.mode.as_ref().and_then(|m| {
            m.replicated
                .as_ref()
                .and_then(|r| r.replicas)
                .or_else(|| m.replicated_job.as_ref().and_then(|j| j.max_concurrent))
        }),
        vips: endpoint
            .virtual_ips
            .unwrap_or_default()
            .iter()
            .map(|v| Attachment {
                network: v
                    .network_id
                    .as_ref()
                    .and_then(|id| net_names.get(id))
                    .cloned()
                    .unwrap_or_default(),
                addr: strip_len(v.addr.as_deref().unwrap_or_default()),
            })
            .collect(),
        ports: endpoint
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| GPort {
                published: p.published_port.unwrap_or_default(),
                target: p.target_port.unwrap_or_default(),
                protocol: p
                    .protocol
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "tcp".into()),
                host: p.publish_mode.map(|m| m.to_string()).as_deref() == Some("host"),
            })
            .collect(),
        id,
    }
}
