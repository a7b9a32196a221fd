//! Following a connection from place to place by the kernels' records: at each place its
//! conntrack entry (or IPVS's connection entry) says where it went, and the reply tuple of
//! one hop finds the next hop's entry. The walk ends at the task that accepted the
//! connection, or where the records do.

use anyhow::Context;

use super::Hop;
use super::kernel::{self, CtEntry, Place, Swarm, Tuple};
use crate::graph::model::{GNetwork, GTask, Topology};
use crate::graph::svg::Anchor;

/// Where the walk stands: the place whose conntrack table must hold the connection's entry,
/// the node that place is on, and the entry's original tuple as far as it is known.
struct At {
    place: Place,
    node: String,
    want: Tuple,
}

/// What the kernel at one place recorded of the connection: its conntrack entry, where the
/// connection went from there (the reply's source, or the backend IPVS chose), the record
/// that says so, and the tuple the next place's entry must have.
#[derive(Clone)]
struct Record {
    entry: CtEntry,
    next: (String, u16),
    evidence: String,
    onward: Tuple,
}

/// Where one hop leaves the walk.
enum Step {
    /// The connection's own task accepted it.
    Accepted(GTask),
    /// The kernels' records end here.
    Lost,
    /// On to the next place.
    Onward(At),
}

/// Walks from `place`, where a conntrack entry with original tuple `want` must exist, to the
/// task that accepted the connection. Returns that task.
pub async fn follow(
    swarm: &Swarm,
    topo: &Topology,
    place: Place,
    start_node: &str,
    want: Tuple,
    hops: &mut Vec<Hop>,
) -> anyhow::Result<Option<GTask>> {
    let mut walk = Walk { swarm, topo, hops };
    let mut at = At {
        place,
        node: start_node.to_string(),
        want,
    };
    // A connection crosses at most node -> sandbox -> node -> sandbox -> task (the mesh
    // balanced by the node's own IPVS), node -> sandbox -> task (in the sandbox), or task ->
    // network sandbox -> task (VIP).
    let mut previous: Option<(Record, String)> = None;
    for _ in 0..6 {
        let here = place_label(topo, &at.place);
        let Some(record) = walk.read_record(&at, &here, previous.as_ref()).await else {
            return Ok(None);
        };
        previous = Some((record.clone(), here.clone()));
        match walk.step(at, record, here).await? {
            Step::Accepted(task) => return Ok(Some(task)),
            Step::Lost => return Ok(None),
            Step::Onward(next) => at = next,
        }
    }
    Ok(None)
}

/// One walk: the cluster it reads the kernels of, what its manager says the cluster is, and
/// the hops found so far.
struct Walk<'a> {
    swarm: &'a Swarm,
    topo: &'a Topology,
    hops: &'a mut Vec<Hop>,
}

impl Walk<'_> {
    /// The connection's record at `at`, or None (with a hop saying why) where there is none.
    /// `previous` is the record of the place before, with its label.
    async fn read_record(
        &mut self,
        at: &At,
        here: &str,
        previous: Option<&(Record, String)>,
    ) -> Option<Record> {
        let (swarm, topo) = (self.swarm, self.topo);
        let entries = match kernel::conntrack(swarm, &at.place, "tcp", &at.want).await {
            Ok(entries) => entries,
            Err(err) => {
                self.hops.push(Hop {
                    place: here.to_string(),
                    what: format!("cannot read the conntrack table: {err:#}"),
                    evidence: "conntrack -L".into(),
                    anchors: Vec::new(),
                });
                return None;
            }
        };
        let untracked = match at.place {
            Place::Task(ref id) if entries.is_empty() => self.untracked(id, &at.want, previous),
            _ => None,
        };
        if untracked.is_some() {
            return untracked;
        }
        let Some(e) = pick(&entries) else {
            let docker_node = matches!(at.place, Place::Node(_))
                && topo.node(&at.node).is_some_and(|n| n.engine == "docker");
            let mesh = if docker_node {
                kernel::docker_mesh_missing(swarm, &at.place, at.want.dport).await
            } else {
                None
            };
            self.hops.push(match mesh {
                Some(evidence) => Hop {
                    place: here.to_string(),
                    what: format!(
                        "no conntrack entry for {}, and no DNAT for port {} here: dockerd did not program the routing mesh on this node (it gives up on a kernel without IPVS; swarmkit doctor says why)",
                        describe(&at.want),
                        at.want.dport
                    ),
                    evidence,
                    anchors: vec![Anchor::Node(at.node.clone())],
                },
                None => Hop {
                    place: here.to_string(),
                    what: format!("no conntrack entry for {}", describe(&at.want)),
                    evidence: "conntrack -L".into(),
                    anchors: Vec::new(),
                },
            });
            return None;
        };
        let mut record = Record {
            next: (e.reply.src.clone(), e.reply.sport),
            evidence: format!("conntrack {}", or_new(&e.state)),
            onward: e.onward(),
            entry: e.clone(),
        };
        let ipvs = topo.node(&at.node).is_some_and(|n| n.lb_driver == "ipvs");
        // IPVS may balance without conntrack recording the rewrite.
        let balanced = if ipvs && !e.dnat() {
            kernel::ipvs_conns(swarm, &at.place, e.orig.sport).await
        } else {
            Vec::new()
        };
        // A Docker sandbox marks the connection for IPVS; on a kernel without IPVS nothing
        // balances it and the sandbox itself refuses it: the walk ends here, saying why.
        if ipvs
            && balanced.is_empty()
            && !e.dnat()
            && matches!(at.place, Place::Sandbox(..))
            && let Some(evidence) = kernel::ipvs_missing(swarm, &at.place).await
        {
            self.hops.push(Hop {
                place: here.to_string(),
                what: format!(
                    "{} arrived for IPVS to balance, but this kernel has no IPVS: nothing balances it, and the sandbox refuses it itself (the routing mesh and VIPs fail silently here)",
                    e.orig
                ),
                evidence,
                anchors: vec![Anchor::Sandbox(at.node.clone())],
            });
            return None;
        }
        if let Some(c) = balanced.first()
            && let Some((a, p)) = c.destination.rsplit_once(':')
        {
            record.next = (a.to_string(), p.parse().unwrap_or(0));
            record.evidence = format!("ipvsadm -Lnc {}", c.state);
            record.onward = Tuple {
                src: String::new(),
                sport: 0,
                dst: record.next.0.clone(),
                dport: record.next.1,
            };
        }
        Some(record)
    }

    /// The record of task `id` that tracked no connections when this one was made (swarmkit
    /// tasks track only during a trace's own connection): what the places around it recorded.
    /// Sent here by the place before, that place's entry shows the task's answer; at the task
    /// that called, the address it called is where the connection went.
    fn untracked(
        &self,
        id: &str,
        want: &Tuple,
        previous: Option<&(Record, String)>,
    ) -> Option<Record> {
        let reversed = |t: &Tuple| Tuple {
            src: t.dst.clone(),
            sport: t.dport,
            dst: t.src.clone(),
            dport: t.sport,
        };
        let (orig, state, evidence) = match previous {
            Some((before, place)) => {
                // An entry still in SYN_SENT saw no answer: the task did not accept.
                if before.entry.state == "SYN_SENT" || want.dst.is_empty() {
                    return None;
                }
                let state = before.entry.state.clone();
                let evidence = format!("conntrack {} at {place}", or_new(&state));
                (want.clone(), state, evidence)
            }
            None if !want.dst.is_empty() => {
                let task = self.topo.tasks().find(|t| t.id == id)?;
                let network = vip_network(self.topo, &want.dst)
                    .map(|n| n.name.clone())
                    .or_else(|| task_by_addr(self.topo, &want.dst).map(|(_, n)| n));
                let src = task
                    .addresses
                    .iter()
                    .find(|a| Some(&a.network) == network.as_ref())
                    .map(|a| a.addr.clone())
                    .unwrap_or_default();
                let orig = Tuple {
                    src,
                    ..want.clone()
                };
                let evidence = "the address it called; the task tracked no connections then".into();
                (orig, String::new(), evidence)
            }
            None => return None,
        };
        let entry = CtEntry {
            proto: "tcp".into(),
            state,
            reply: reversed(&orig),
            orig,
        };
        Some(Record {
            next: (entry.orig.dst.clone(), entry.orig.dport),
            evidence,
            onward: entry.onward(),
            entry,
        })
    }

    /// Reads where `record` sends the connection from `at`: to a task (its own, which accepted
    /// it, or a backend), to a VIP's network sandbox, into the node's ingress sandbox, back to
    /// the node (a hairpin), or nowhere this cluster knows. Adds the hop and says where next.
    async fn step(&mut self, at: At, record: Record, here: String) -> anyhow::Result<Step> {
        let topo = self.topo;
        let e = &record.entry;
        let next = &record.next;
        let current_task = match &at.place {
            Place::Task(id) => topo.tasks().find(|t| &t.id == id).cloned(),
            _ => None,
        };
        // A task's VIP is answered by its network's sandbox on the same node, whose load
        // balancer picks the backend.
        let vip_net = match at.place {
            Place::Task(_) => vip_network(topo, &next.0),
            _ => None,
        };
        let (what, anchors, step) = match (task_by_addr(topo, &next.0), vip_net) {
            (Some((task, _)), _) if current_task.as_ref().map(|c| &c.id) == Some(&task.id) => {
                let redirect = if e.reply.sport != e.orig.dport {
                    format!(", redirected to target port {}", e.reply.sport)
                } else {
                    String::new()
                };
                (
                    format!("accepted {}{redirect}", e.orig),
                    vec![Anchor::Task(task.name.clone())],
                    Step::Accepted(task.clone()),
                )
            }
            (Some((task, network)), _) => {
                return self.step_to_task(at, record, here, task, &network).await;
            }
            (None, Some(network)) => {
                let short = &network.id[..10.min(network.id.len())];
                (
                    format!(
                        "to VIP {}:{}, answered by the {} network's sandbox on {}",
                        next.0, next.1, network.name, at.node
                    ),
                    lb_anchor(topo, &at.place, &at.node),
                    Step::Onward(At {
                        place: Place::Sandbox(at.node.clone(), format!("1-{short}")),
                        node: at.node.clone(),
                        want: record.onward.clone(),
                    }),
                )
            }
            (None, None) if e.dnat() && matches!(at.place, Place::Node(_)) => (
                format!(
                    "DNAT {} => {}:{} (the node's ingress sandbox)",
                    e.orig, next.0, next.1
                ),
                vec![Anchor::Node(at.node.clone())],
                Step::Onward(At {
                    place: Place::Sandbox(at.node.clone(), "ingress_sbox".into()),
                    node: at.node.clone(),
                    want: record.onward.clone(),
                }),
            ),
            // Where the node's own IPVS balances (mesh `node`, QEMU guests), the sandbox sends
            // a connection from the node's localhost back to the node, since IPVS will not
            // balance a loopback source.
            (None, None) if e.dnat() && matches!(at.place, Place::Sandbox(..)) => {
                let onward = &record.onward;
                (
                    format!(
                        "hairpin {} => back to the node as {}:{} -> {}:{}",
                        e.orig, onward.src, onward.sport, onward.dst, onward.dport
                    ),
                    vec![Anchor::Sandbox(at.node.clone())],
                    Step::Onward(At {
                        place: Place::Node(at.node.clone()),
                        node: at.node.clone(),
                        want: onward.clone(),
                    }),
                )
            }
            (None, None) => (
                format!(
                    "{} leaves for {}:{}, which no task owns",
                    e.orig, next.0, next.1
                ),
                Vec::new(),
                Step::Lost,
            ),
        };
        self.hops.push(Hop {
            place: here,
            what,
            evidence: record.evidence,
            anchors,
        });
        Ok(step)
    }

    /// The connection goes from `at` to `task`, another task than the one it may have come
    /// from: a load balancer's choice, a masquerade, or a straight route. Where the node's own
    /// IPVS balances (mesh `node`), the chosen ingress task is reached through the node's
    /// ingress sandbox, whose own entry shows its masquerade; otherwise the overlay hop to the
    /// task's node follows.
    async fn step_to_task(
        &mut self,
        at: At,
        record: Record,
        here: String,
        task: &GTask,
        network: &str,
    ) -> anyhow::Result<Step> {
        let topo = self.topo;
        let e = &record.entry;
        let next = &record.next;
        let balanced = e.dnat() || record.evidence.starts_with("ipvsadm");
        let masquerade = !balanced && e.reply.dst != e.orig.src;
        let what = if masquerade {
            format!(
                "masquerades {} as {} on to {} on {}: {}",
                e.orig.src, e.reply.dst, task.name, task.node, e.orig
            )
        } else {
            let how = if balanced {
                "load balancer chose"
            } else {
                "goes straight to"
            };
            format!(
                "{how} {} on {}: {} => {}:{}",
                task.name, task.node, e.orig, next.0, next.1
            )
        };
        self.hops.push(Hop {
            place: here,
            what,
            evidence: record.evidence.clone(),
            anchors: lb_anchor(topo, &at.place, &at.node),
        });
        let ingress = topo.networks.iter().any(|n| n.name == network && n.ingress);
        if balanced && ingress && matches!(at.place, Place::Node(_)) {
            return Ok(Step::Onward(At {
                place: Place::Sandbox(at.node.clone(), "ingress_sbox".into()),
                node: at.node,
                want: record.onward,
            }));
        }
        let overlay = overlay_hop(self.swarm, topo, &at.node, task, network).await?;
        self.hops.push(overlay);
        Ok(Step::Onward(At {
            place: Place::Task(task.id.clone()),
            node: task.node.clone(),
            want: record.onward,
        }))
    }
}

fn task_by_addr<'a>(topo: &'a Topology, addr: &str) -> Option<(&'a GTask, String)> {
    topo.tasks().find_map(|t| {
        t.addresses
            .iter()
            .find(|a| a.addr == addr)
            .map(|a| (t, a.network.clone()))
    })
}

fn place_label(topo: &Topology, place: &Place) -> String {
    match place {
        Place::Task(id) => topo
            .tasks()
            .find(|t| &t.id == id)
            .map(|t| format!("{} ({})", t.name, t.node))
            .unwrap_or_else(|| id.clone()),
        other => other.to_string(),
    }
}

/// The network on which `addr` is a service's VIP.
fn vip_network<'a>(topo: &'a Topology, addr: &str) -> Option<&'a GNetwork> {
    let on = topo
        .services
        .iter()
        .flat_map(|s| &s.vips)
        .find(|v| v.addr == addr)?;
    topo.networks.iter().find(|n| n.name == on.network)
}

fn lb_anchor(topo: &Topology, place: &Place, node: &str) -> Vec<Anchor> {
    match place {
        Place::Task(id) => topo
            .tasks()
            .find(|t| &t.id == id)
            .map(|t| vec![Anchor::Task(t.name.clone())])
            .unwrap_or_default(),
        Place::Sandbox(..) => vec![Anchor::Sandbox(node.to_string())],
        Place::Node(_) => vec![Anchor::Node(node.to_string())],
    }
}

/// The hop from `node` to `task` over `network`, from the network sandbox's neighbour and
/// FDB entries on `node`.
async fn overlay_hop(
    swarm: &Swarm,
    topo: &Topology,
    node: &str,
    task: &GTask,
    network: &str,
) -> anyhow::Result<Hop> {
    let addr = task
        .addresses
        .iter()
        .find(|a| a.network == network)
        .map(|a| a.addr.clone())
        .unwrap_or_default();
    let net = topo
        .networks
        .iter()
        .find(|n| n.name == network)
        .with_context(|| format!("network {network} is not in the cluster's list"))?;
    let short: String = net.id.chars().take(10).collect();
    let sandbox = Place::Sandbox(node.to_string(), format!("1-{short}"));
    let hop = kernel::vxlan_hop(swarm, &sandbox, &addr).await?;
    let vtep_node = |vtep: &str| {
        topo.nodes
            .iter()
            .find(|n| n.addr == vtep)
            .map(|n| n.hostname.clone())
            .unwrap_or_else(|| "no node of this cluster".into())
    };
    let what = match &hop.remote_vtep {
        None if hop.fdb_unreadable => format!(
            "{addr} is {} on {} (no `bridge` tool here to read the FDB's remote VTEP)",
            hop.mac,
            if hop.device.is_empty() {
                "?"
            } else {
                &hop.device
            }
        ),
        Some(vtep) => format!(
            "VXLAN {} VNI {}: {addr} is {} at remote VTEP {vtep} ({}){}",
            hop.device,
            hop.vni.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            hop.mac,
            vtep_node(vtep),
            hop.tx_packets
                .map(|p| format!(", {p} packets sent"))
                .unwrap_or_default()
        ),
        None if hop.device.is_empty() => {
            format!("no neighbour or FDB entry for {addr} on {network}")
        }
        None => format!(
            "{addr} is {} on local bridge port {} ({network} stays on {node})",
            hop.mac, hop.device
        ),
    };
    Ok(Hop {
        place: sandbox.to_string(),
        what,
        evidence: "ip neigh, bridge fdb, ip -s link".into(),
        anchors: vec![
            Anchor::Vtep(network.to_string(), node.to_string()),
            Anchor::Vtep(network.to_string(), task.node.clone()),
        ],
    })
}

/// Of several entries for one tuple (a source port reused within TIME_WAIT), prefer the one
/// still open.
fn pick(entries: &[CtEntry]) -> Option<&CtEntry> {
    entries
        .iter()
        .find(|e| e.state == "ESTABLISHED")
        .or_else(|| entries.first())
}

fn or_new(s: &str) -> &str {
    if s.is_empty() { "entry" } else { s }
}

fn describe(t: &Tuple) -> String {
    let src = if t.src.is_empty() { "*" } else { &t.src };
    let dst = if t.dst.is_empty() { "*" } else { &t.dst };
    format!("{src}:{} -> {dst}:{}", t.sport, t.dport)
}
