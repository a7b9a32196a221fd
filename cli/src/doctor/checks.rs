//! The checks: pure functions of [`Facts`], each naming what is wrong, the evidence the
//! kernel or the API gave, and the fix. A check that had nothing to look at passes
//! silently; one that looked and found nothing wrong says what it looked at.

use std::collections::BTreeSet;

use serde::Serialize;

use super::facts::{Facts, Flavor, KernelFacts, NodeFacts};

/// VXLAN over IPv4 adds 50 bytes: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The MTU Docker and swarmkit give an overlay unless told otherwise.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;
pub const VXLAN_PORT: u16 = 4789;
pub const GOSSIP_PORT: u16 = 7946;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    /// The node it was found on, by hostname; none for cluster-wide findings.
    pub node: Option<String>,
    pub problem: String,
    pub evidence: String,
    pub fix: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Passed {
    pub check: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    pub passed: Vec<Passed>,
}

impl Verdict {
    fn check(&mut self, check: &'static str, looked_at: String, found: Vec<Finding>) {
        if found.is_empty() {
            if !looked_at.is_empty() {
                self.passed.push(Passed {
                    check,
                    detail: looked_at,
                });
            }
        } else {
            self.findings.extend(found);
        }
    }
}

pub fn run(flavor: Flavor, f: &Facts) -> Verdict {
    let mut v = Verdict::default();
    let read: Vec<(&NodeFacts, &KernelFacts)> = f
        .nodes
        .iter()
        .filter_map(|n| n.kernel.as_ref().ok().map(|k| (n, k)))
        .collect();
    let count = |what: &str| format!("{what} on {} node(s)", read.len());

    v.check("node-state", nodes_state_detail(f), node_state(f));
    v.check("node-unread", String::new(), unread(flavor, f));
    v.check(
        "kernel-ipvs",
        match uses_ipvs(f) {
            Some(_) if read.iter().any(|(n, _)| n.needs_ipvs) => count("IPVS present"),
            _ => String::new(),
        },
        ipvs(f, &read),
    );
    v.check(
        "kernel-esp",
        if f.networks.iter().any(|n| n.encrypted) {
            count("ESP present")
        } else {
            String::new()
        },
        esp(f, &read),
    );
    v.check(
        "underlay-mtu",
        count("underlay MTU fits the overlay's"),
        mtu(f, &read),
    );
    v.check("vxlan-offload", String::new(), offload(&read));
    v.check(
        "node-address",
        count("advertised address assigned and used towards every peer"),
        address(f, &read),
    );
    v.check(
        "firewall-vxlan",
        count("no firewall rule drops UDP 4789"),
        firewall_port(&read, VXLAN_PORT),
    );
    if flavor == Flavor::Docker {
        v.check(
            "firewall-gossip",
            count("no firewall rule drops port 7946"),
            firewall_port(&read, GOSSIP_PORT),
        );
        let probes: usize = read.iter().map(|(_, k)| k.gossip.len()).sum();
        v.check(
            "gossip-reach",
            if probes > 0 {
                format!("{probes} TCP 7946 connection(s) between nodes answered")
            } else {
                String::new()
            },
            gossip(f, &read),
        );
    }
    v.check(
        "firewall-forward",
        count("no forwarding rule drops a published port"),
        forward(f, &read),
    );
    let fdb: usize = read
        .iter()
        .flat_map(|(_, k)| &k.overlays)
        .map(|o| o.fdb.len())
        .sum();
    v.check(
        "stale-fdb",
        if fdb > 0 {
            format!("{fdb} VXLAN FDB entries, each pointing at a node of the swarm")
        } else {
            String::new()
        },
        stale_fdb(f, &read),
    );
    v.check("encryption-sa", String::new(), encryption_sas(f, &read));
    let balanced: usize = read
        .iter()
        .map(|(_, k)| {
            k.overlays
                .iter()
                .filter_map(|o| o.lb.as_ref())
                .map(|lb| lb.vips.len())
                .sum::<usize>()
                + k.mesh_lb.as_ref().map_or(0, |(_, lb)| lb.ports.len())
        })
        .sum();
    v.check(
        "lb-backends",
        if balanced > 0 {
            format!(
                "{balanced} load-balanced VIP(s) and port(s) send to exactly their running tasks"
            )
        } else {
            String::new()
        },
        lb_backends(f, &read),
    );
    let probes: usize = read.iter().map(|(_, k)| k.probes.len()).sum();
    v.check(
        "overlay-reach",
        if probes > 0 {
            format!("{probes} task-to-task ping(s) across nodes over their overlays answered")
        } else {
            String::new()
        },
        overlay_reach(f, &read, &v.findings),
    );
    v.check(
        "duplicate-subnet",
        format!("{} network(s) with subnets of their own", f.networks.len()),
        duplicate_subnets(f),
    );
    let listened: usize = read.iter().map(|(_, k)| k.listeners.len()).sum();
    v.check(
        "task-listens",
        if listened > 0 {
            format!("{listened} task(s) with published ports listen beyond loopback")
        } else {
            String::new()
        },
        listeners(f, &read),
    );
    v
}

fn nodes_state_detail(f: &Facts) -> String {
    format!(
        "{} node(s) ready",
        f.nodes.iter().filter(|n| n.ready).count()
    )
}

fn node_state(f: &Facts) -> Vec<Finding> {
    f.nodes
        .iter()
        .filter(|n| !n.ready)
        .map(|n| Finding {
            check: "node-state",
            node: Some(n.hostname.clone()),
            problem: "the node is not ready: its tasks are being moved away and it is not examined further".into(),
            evidence: format!("the manager reports node {} as not ready", n.id),
            fix: "start its engine again, or remove it from the swarm (docker node rm)".into(),
        })
        .collect()
}

fn unread(flavor: Flavor, f: &Facts) -> Vec<Finding> {
    f.nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| n.kernel.as_ref().err().map(|why| (n, why)))
        .map(|(n, why)| Finding {
            check: "node-unread",
            node: Some(n.hostname.clone()),
            problem: "its kernel was not examined, so its faults are not known".into(),
            evidence: why.clone(),
            fix: match flavor {
                Flavor::Docker => format!(
                    "tell doctor how to reach it: --reach {}=netns:NAME (a namespace here) or --reach {}=local, or an --inventory of SSH hosts with pinned keys; or run doctor on that node",
                    n.hostname, n.hostname
                ),
                Flavor::Swarmkit => "check that its agent runs (swarmkit node ls)".into(),
            },
        })
        .collect()
}

fn uses_ipvs(f: &Facts) -> Option<String> {
    let vip: Vec<&str> = f
        .services
        .iter()
        .filter(|s| s.vip || s.ports.iter().any(|p| p.3))
        .map(|s| s.name.as_str())
        .collect();
    (!vip.is_empty()).then(|| vip.join(", "))
}

fn ipvs(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let Some(services) = uses_ipvs(f) else {
        return Vec::new();
    };
    read.iter()
        .filter(|(n, k)| n.needs_ipvs && !k.ipvs.present)
        .map(|(n, k)| Finding {
            check: "kernel-ipvs",
            node: Some(n.hostname.clone()),
            problem: format!(
                "the kernel has no IPVS: every VIP and every routing-mesh port here fails silently (services: {services})"
            ),
            evidence: k.ipvs.evidence.clone(),
            fix: "load it (modprobe ip_vs ip_vs_rr), or boot a kernel built with CONFIG_IP_VS; until then use --endpoint-mode dnsrr and --publish mode=host".into(),
        })
        .collect()
}

fn esp(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let encrypted: Vec<&str> = f
        .networks
        .iter()
        .filter(|n| n.encrypted)
        .map(|n| n.name.as_str())
        .collect();
    if encrypted.is_empty() {
        return Vec::new();
    }
    read.iter()
        .filter(|(_, k)| !k.esp.present)
        .map(|(n, k)| Finding {
            check: "kernel-esp",
            node: Some(n.hostname.clone()),
            problem: format!(
                "the kernel has no ESP (xfrm): encrypted overlays ({}) carry nothing to or from this node",
                encrypted.join(", ")
            ),
            evidence: k.esp.evidence.clone(),
            fix: "load it (modprobe esp4), or boot a kernel built with CONFIG_INET_ESP and CONFIG_XFRM_USER".into(),
        })
        .collect()
}

/// The link that carries a node's advertised address: its underlay.
fn underlay<'a>(n: &NodeFacts, k: &'a KernelFacts) -> Option<&'a super::facts::Link> {
    k.links
        .iter()
        .find(|l| l.addrs.iter().any(|a| a.addr().to_string() == n.addr))
}

fn mtu(_f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    read.iter()
        .filter_map(|(n, k)| {
            let link = underlay(n, k)?;
            let overlay = k
                .overlays
                .iter()
                .filter_map(|o| o.mtu)
                .max()
                .unwrap_or(DEFAULT_OVERLAY_MTU);
            let need = overlay + VXLAN_OVERHEAD;
            (link.mtu < need).then(|| Finding {
                check: "underlay-mtu",
                node: Some(n.hostname.clone()),
                problem: format!(
                    "the underlay's MTU ({}) is below the overlay's {overlay} + {VXLAN_OVERHEAD} of VXLAN: full-size packets between tasks are dropped (small ones, pings and handshakes, still pass)",
                    link.mtu
                ),
                evidence: format!(
                    "{} carries {} with mtu {}; overlays here use mtu {overlay}",
                    link.name, n.addr, link.mtu
                ),
                fix: format!(
                    "raise the MTU of {} to at least {need}, or create the overlays with --opt com.docker.network.driver.mtu={}",
                    link.name,
                    link.mtu.saturating_sub(VXLAN_OVERHEAD)
                ),
            })
        })
        .collect()
}

/// NIC drivers known to corrupt VXLAN's inner checksums when they offload them (VMware's
/// vmxnet3 is the one Swarm users report).
const BAD_VXLAN_OFFLOAD: &[&str] = &["vmxnet3"];

fn offload(read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    read.iter()
        .filter_map(|(n, k)| {
            let o = k.offload.as_ref()?;
            let on = o.on("tx-checksum-ip-generic") || o.on("tx-udp_tnl-csum-segmentation");
            (BAD_VXLAN_OFFLOAD.contains(&o.driver.as_str()) && on).then(|| Finding {
                check: "vxlan-offload",
                node: Some(n.hostname.clone()),
                problem: format!(
                    "the underlay NIC ({}, driver {}) offloads checksums of VXLAN packets, which this driver gets wrong: overlay TCP stalls or drops while pings pass",
                    o.link, o.driver
                ),
                evidence: format!(
                    "ethtool -k {}: {}",
                    o.link,
                    o.features
                        .iter()
                        .filter(|(f, on)| *on && (f == "tx-checksum-ip-generic" || f == "tx-udp_tnl-csum-segmentation"))
                        .map(|(f, _)| format!("{f}: on"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                fix: format!(
                    "turn it off (ethtool -K {} tx-checksum-ip-generic off), and make it persist in the host's network configuration",
                    o.link
                ),
            })
        })
        .collect()
}

fn address(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, k) in read {
        if n.addr.is_empty() {
            continue;
        }
        if underlay(n, k).is_none() {
            out.push(Finding {
                check: "node-address",
                node: Some(n.hostname.clone()),
                problem: format!(
                    "the node advertises {}, an address none of its interfaces has: peers send its VXLAN traffic nowhere",
                    n.addr
                ),
                evidence: format!(
                    "ip addr: {}",
                    k.links
                        .iter()
                        .flat_map(|l| l.addrs.iter().map(move |a| format!("{} {a}", l.name)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                fix: "rejoin with --advertise-addr (and --data-path-addr) set to an address of the interface that reaches the other nodes".into(),
            });
            continue;
        }
        for (peer, src) in &k.routes_to_peers {
            let peer_name = f
                .nodes
                .iter()
                .find(|p| &p.addr == peer)
                .map(|p| p.hostname.as_str())
                .unwrap_or("?");
            match src {
                Ok(src) if src == &n.addr => {}
                Ok(src) => out.push(Finding {
                    check: "node-address",
                    node: Some(n.hostname.clone()),
                    problem: format!(
                        "traffic to {peer_name} ({peer}) leaves from {src}, not from the advertised {}: the peer drops its VXLAN packets as coming from an unknown VTEP",
                        n.addr
                    ),
                    evidence: format!("ip route get {peer}: src {src}"),
                    fix: "advertise (--advertise-addr/--data-path-addr) an address on the interface that routes to the other nodes, or route them through that interface".into(),
                }),
                Err(e) => out.push(Finding {
                    check: "node-address",
                    node: Some(n.hostname.clone()),
                    problem: format!("there is no route to {peer_name} ({peer})"),
                    evidence: format!("ip route get {peer}: {e}"),
                    fix: "add a route to the other nodes' addresses, or advertise addresses on a shared subnet".into(),
                }),
            }
        }
    }
    out
}

fn firewall_port(read: &[(&NodeFacts, &KernelFacts)], port: u16) -> Vec<Finding> {
    let (check, what, breaks) = if port == VXLAN_PORT {
        (
            "firewall-vxlan",
            "VXLAN (UDP 4789)",
            "overlay traffic between tasks on different nodes is lost",
        )
    } else {
        (
            "firewall-gossip",
            "gossip (TCP/UDP 7946)",
            "nodes cannot tell each other where tasks are: new tasks stay unreachable from other nodes",
        )
    };
    let mut out = Vec::new();
    for (n, k) in read {
        for d in &k.drops {
            if d.hook.as_deref() == Some("prerouting") && d.chain.contains("DOCKER") {
                continue;
            }
            if !d.ports.iter().any(|(_, p)| *p == port) {
                continue;
            }
            out.push(Finding {
                check,
                node: Some(n.hostname.clone()),
                problem: format!("a firewall rule drops {what}: {breaks}"),
                evidence: format!(
                    "nft list ruleset: chain {}{} handle {}: {}",
                    d.chain,
                    d.hook
                        .as_deref()
                        .map(|h| format!(" (hook {h})"))
                        .unwrap_or_default(),
                    d.handle,
                    d.text
                ),
                fix: format!(
                    "allow it between the swarm's nodes: remove the rule (nft delete rule {} handle {}) or accept port {port} from the nodes' addresses before it",
                    d.chain, d.handle
                ),
            });
        }
    }
    out
}

fn gossip(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, k) in read {
        for (peer, outcome) in &k.gossip {
            if let Err(e) = outcome {
                let peer_name = f
                    .nodes
                    .iter()
                    .find(|p| &p.addr == peer)
                    .map(|p| p.hostname.clone())
                    .unwrap_or_else(|| peer.clone());
                out.push(Finding {
                    check: "gossip-reach",
                    node: Some(n.hostname.clone()),
                    problem: format!(
                        "{peer_name} does not answer on TCP 7946: the two nodes cannot exchange where tasks are"
                    ),
                    evidence: format!("connect {peer}:7946 from {}: {e}", n.hostname),
                    fix: format!(
                        "open TCP and UDP 7946 between the nodes (firewalls on {} and {peer_name}, and any in between)",
                        n.hostname
                    ),
                });
            }
        }
    }
    out
}

fn forward(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let published: BTreeSet<u16> = f
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(|p| p.0))
        .collect();
    let mut out = Vec::new();
    for (n, k) in read {
        for d in &k.drops {
            if d.hook.as_deref() != Some("forward") {
                continue;
            }
            let hit: Vec<u16> = d
                .ports
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| published.contains(p))
                .collect();
            if hit.is_empty() {
                continue;
            }
            out.push(Finding {
                check: "firewall-forward",
                node: Some(n.hostname.clone()),
                problem: format!(
                    "a forwarding rule drops published port(s) {hit:?}: the routing mesh forwards them to the ingress sandbox, so they are refused on this node"
                ),
                evidence: format!(
                    "nft list ruleset: chain {} handle {}: {}",
                    d.chain, d.handle, d.text
                ),
                fix: format!(
                    "remove the rule (nft delete rule {} handle {}) or accept forwarded traffic to the published ports before it",
                    d.chain, d.handle
                ),
            });
        }
    }
    out
}

fn stale_fdb(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let vteps: BTreeSet<&str> = f.nodes.iter().map(|n| n.addr.as_str()).collect();
    let mut out = Vec::new();
    for (n, k) in read {
        for o in &k.overlays {
            let net = f
                .network(&o.network_id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| o.network_id.clone());
            for e in o.fdb.iter().filter(|e| !vteps.contains(e.dst.as_str())) {
                // The neighbour entry names the overlay address that MAC stands for.
                let addr = o
                    .neighbours
                    .iter()
                    .find(|x| x.mac.eq_ignore_ascii_case(&e.mac))
                    .map(|x| format!("{} ({})", x.ip, e.mac))
                    .unwrap_or_else(|| e.mac.clone());
                out.push(Finding {
                    check: "stale-fdb",
                    node: Some(n.hostname.clone()),
                    problem: format!(
                        "overlay {net} sends {addr} to VTEP {}, which is no node of this swarm: traffic for that address goes to a machine that left",
                        e.dst
                    ),
                    evidence: format!(
                        "bridge fdb show in {}: {} dev {} dst {}",
                        o.sandbox, e.mac, e.dev, e.dst
                    ),
                    fix: format!(
                        "delete it (bridge fdb del {} dev {} dst {} self) in the overlay's sandbox, or restart the node's engine (dockerd, or the swarmkit agent) to rebuild the overlay",
                        e.mac, e.dev, e.dst
                    ),
                });
            }
        }
    }
    out
}

fn encryption_sas(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for net in f.networks.iter().filter(|n| n.encrypted) {
        let on: BTreeSet<&str> = f
            .running()
            .filter(|t| t.addrs.iter().any(|(id, _)| id == &net.id))
            .map(|t| t.node_id.as_str())
            .collect();
        for (n, k) in read.iter().filter(|(n, _)| on.contains(n.id.as_str())) {
            for peer in f
                .nodes
                .iter()
                .filter(|p| p.id != n.id && on.contains(p.id.as_str()))
            {
                let has = |src: &str, dst: &str| {
                    k.sas
                        .iter()
                        .any(|s| s.src == src && s.dst == dst && s.proto == "esp")
                };
                let missing: Vec<String> = [(&n.addr, &peer.addr), (&peer.addr, &n.addr)]
                    .into_iter()
                    .filter(|(s, d)| !has(s, d))
                    .map(|(s, d)| format!("{s} -> {d}"))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                out.push(Finding {
                    check: "encryption-sa",
                    node: Some(n.hostname.clone()),
                    problem: format!(
                        "encrypted overlay {} has no ESP security association towards {}: their tasks cannot talk",
                        net.name, peer.hostname
                    ),
                    evidence: format!(
                        "ip xfrm state: no ESP SA for {} ({} SA(s) in all)",
                        missing.join(", "),
                        k.sas.len()
                    ),
                    fix: "check that ESP (IP protocol 50) passes between the nodes and that the kernel has esp4; restarting a task on the network makes the engine program its keys again".into(),
                });
            }
        }
    }
    out
}

/// Findings that explain an unreachable task on their node; the probe's finding points at
/// them instead of guessing. A low MTU is not one: the probes are small pings.
const OVERLAY_CAUSES: &[&str] = &[
    "firewall-vxlan",
    "node-address",
    "stale-fdb",
    "kernel-esp",
    "encryption-sa",
];

fn overlay_reach(
    f: &Facts,
    read: &[(&NodeFacts, &KernelFacts)],
    found: &[Finding],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let causes = |hosts: &[&str]| -> Vec<String> {
        found
            .iter()
            .filter(|x| OVERLAY_CAUSES.contains(&x.check))
            .filter(|x| x.node.as_deref().is_some_and(|n| hosts.contains(&n)))
            .map(|x| format!("{} on {}", x.check, x.node.as_deref().unwrap_or_default()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    for (n, k) in read {
        for p in &k.probes {
            let Err(e) = &p.outcome else { continue };
            let target = f.task(&p.to_task);
            let to_node = target
                .and_then(|t| f.node(&t.node_id))
                .map(|n| n.hostname.clone())
                .unwrap_or_default();
            let name = |id: &str| {
                f.task(id)
                    .map(|t| t.name.clone())
                    .unwrap_or_else(|| id.to_string())
            };
            let net = f
                .network(&p.network)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| p.network.clone());
            out.push(Finding {
                check: "overlay-reach",
                node: Some(n.hostname.clone()),
                problem: format!(
                    "task {} on {to_node} is unreachable over {net} from task {} on {}",
                    name(&p.to_task),
                    name(&p.from_task),
                    n.hostname
                ),
                evidence: format!("ping {} from {}: {e}", p.to_addr, name(&p.from_task)),
                fix: match causes(&[n.hostname.as_str(), to_node.as_str()]).as_slice() {
                    [] => "no other finding explains it: capture UDP 4789 on both nodes' underlays (tcpdump -ni any udp port 4789) to see which side drops it".into(),
                    c => format!("fix {} first: it explains this", c.join(", ")),
                },
            });
        }
    }
    // Tasks come from the API in no order; the pairs read best in one.
    out.sort_by(|a, b| (&a.node, &a.problem).cmp(&(&b.node, &b.problem)));
    out
}

/// Backends the balancer holds against the running tasks the manager reports.
fn lb_backends(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    use std::collections::BTreeSet;
    let mut out = Vec::new();
    let running_on = |svc: &str, net: &str| -> BTreeSet<String> {
        f.running()
            .filter(|t| t.service_id == svc)
            .flat_map(|t| {
                t.addrs
                    .iter()
                    .filter(|(n, _)| n == net)
                    .map(|(_, a)| a.clone())
            })
            .collect()
    };
    let name_of = |addr: &str| {
        f.tasks
            .iter()
            .find(|t| t.addrs.iter().any(|(_, a)| a == addr))
            .map(|t| {
                format!(
                    "{addr} ({}{})",
                    t.name,
                    if t.running { "" } else { ", not running" }
                )
            })
            .unwrap_or_else(|| format!("{addr} (no task)"))
    };
    let mut compare = |node: &NodeFacts,
                       what: String,
                       svc: &super::facts::SvcFacts,
                       (source, place): (&str, &str),
                       have: &BTreeSet<String>,
                       want: BTreeSet<String>| {
        if *have == want {
            return;
        }
        let extra: Vec<String> = have.difference(&want).map(|a| name_of(a)).collect();
        let missing: Vec<String> = want.difference(have).map(|a| name_of(a)).collect();
        let mut problem = format!("{what} of {} on this node", svc.name);
        if !extra.is_empty() {
            problem += &format!(
                " sends part of its connections to {}, which the manager does not run for it",
                extra.join(", ")
            );
        }
        if !missing.is_empty() {
            problem += &format!(
                "{} never sends to {}",
                if extra.is_empty() { "" } else { ", and" },
                missing.join(", ")
            );
        }
        out.push(Finding {
            check: "lb-backends",
            node: Some(node.hostname.clone()),
            problem,
            evidence: format!(
                "{source} in {place}: backends {}; running tasks: {}",
                have.iter().cloned().collect::<Vec<_>>().join(", "),
                want.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            fix: "restart the node's agent (stop the process in /run/swarmkit/<cluster>/<node>.pid; its supervisor starts it again and it programs the balancer anew from the manager's tasks), and report it: the agent missed a change".into(),
        });
    };
    for (n, k) in read {
        for o in &k.overlays {
            let Some(lb) = &o.lb else { continue };
            for (vip, have) in &lb.vips {
                let Some(svc) = f.services.iter().find(|s| {
                    s.vips
                        .iter()
                        .any(|(net, a)| net == &o.network_id && a == vip)
                }) else {
                    continue;
                };
                let want = running_on(&svc.id, &o.network_id);
                compare(
                    n,
                    format!("VIP {vip}"),
                    svc,
                    (&lb.source, &o.sandbox),
                    have,
                    want,
                );
            }
        }
        if let Some((place, lb)) = &k.mesh_lb {
            let Some(ingress) = f.networks.iter().find(|n| n.ingress) else {
                continue;
            };
            for ((proto, port), have) in &lb.ports {
                let Some(svc) = f
                    .services
                    .iter()
                    .find(|s| s.ports.iter().any(|p| p.3 && p.0 == *port && &p.2 == proto))
                else {
                    continue;
                };
                let want = running_on(&svc.id, &ingress.id);
                compare(
                    n,
                    format!("published port {port}/{proto}"),
                    svc,
                    (&lb.source, place),
                    have,
                    want,
                );
            }
        }
    }
    out
}

fn duplicate_subnets(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, a) in f.networks.iter().enumerate() {
        for b in &f.networks[i + 1..] {
            for sa in &a.subnets {
                for sb in &b.subnets {
                    if sa.contains(sb) || sb.contains(sa) {
                        out.push(Finding {
                            check: "duplicate-subnet",
                            node: None,
                            problem: format!(
                                "networks {} and {} overlap ({sa} and {sb}): a task on both cannot tell which one an address is on",
                                a.name, b.name
                            ),
                            evidence: format!(
                                "network inspect: {} {} subnet {sa}; {} {} subnet {sb}",
                                a.name, a.driver, b.name, b.driver
                            ),
                            fix: "recreate one of them with a subnet of its own (docker network create --subnet …), after moving its services".into(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn listeners(f: &Facts, read: &[(&NodeFacts, &KernelFacts)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, k) in read {
        for (task_id, ls) in &k.listeners {
            let Some(t) = f.task(task_id) else { continue };
            let Some(svc) = f.service(&t.service_id) else {
                continue;
            };
            let Ok(ls) = ls else { continue };
            for (published, target, proto, _) in &svc.ports {
                if proto != "tcp" {
                    continue;
                }
                let on_port: Vec<_> = ls.iter().filter(|l| l.port == *target).collect();
                let evidence = format!(
                    "/proc/net/tcp in task {}: listening on {}",
                    t.name,
                    if ls.is_empty() {
                        "nothing".to_string()
                    } else {
                        ls.iter()
                            .map(|l| format!("{}:{}", l.addr, l.port))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                if on_port.is_empty() {
                    out.push(Finding {
                        check: "task-listens",
                        node: Some(n.hostname.clone()),
                        problem: format!(
                            "task {} listens on nothing at its target port {target}: port {published} of {} is refused when it lands there",
                            t.name, svc.name
                        ),
                        evidence,
                        fix: format!(
                            "make the application listen on 0.0.0.0:{target}, or publish the port it does listen on (--publish {published}:PORT)"
                        ),
                    });
                } else if !on_port
                    .iter()
                    .any(|l| super::facts::listens_beyond_loopback(l))
                {
                    out.push(Finding {
                        check: "task-listens",
                        node: Some(n.hostname.clone()),
                        problem: format!(
                            "task {} listens on port {target} on loopback only: every connection to port {published} of {} that lands on it is refused",
                            t.name, svc.name
                        ),
                        evidence,
                        fix: format!(
                            "bind the application to 0.0.0.0:{target} (or its overlay address), not 127.0.0.1"
                        ),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::facts::*;
    use super::*;

    fn node(id: &str, addr: &str, kernel: KernelFacts) -> NodeFacts {
        NodeFacts {
            id: id.into(),
            hostname: format!("host-{id}"),
            addr: addr.into(),
            ready: true,
            needs_ipvs: true,
            kernel: Ok(kernel),
        }
    }

    fn underlay(addr: &str, mtu: u32) -> Link {
        Link {
            name: "eth0".into(),
            mtu,
            addrs: vec![format!("{addr}/24").parse().unwrap()],
        }
    }

    fn healthy() -> Facts {
        let k = |me: &str, peer: &str| KernelFacts {
            links: vec![underlay(me, 1500)],
            routes_to_peers: vec![(peer.into(), Ok(me.into()))],
            ..KernelFacts::default()
        };
        Facts {
            nodes: vec![
                node("a", "10.9.0.1", k("10.9.0.1", "10.9.0.2")),
                node("b", "10.9.0.2", k("10.9.0.2", "10.9.0.1")),
            ],
            networks: vec![NetFacts {
                id: "n1".into(),
                name: "web".into(),
                driver: "overlay".into(),
                subnets: vec!["10.0.1.0/24".parse().unwrap()],
                ..NetFacts::default()
            }],
            services: vec![SvcFacts {
                id: "s1".into(),
                name: "search".into(),
                vip: true,
                vips: Vec::new(),
                ports: vec![(9200, 80, "tcp".into(), true)],
            }],
            tasks: vec![TaskFacts {
                id: "t1".into(),
                name: "search.1".into(),
                service_id: "s1".into(),
                node_id: "a".into(),
                running: true,
                container_id: "c1".into(),
                addrs: vec![("n1".into(), "10.0.1.3".into())],
            }],
        }
    }

    fn kernel_of<'a>(f: &'a mut Facts, id: &str) -> &'a mut KernelFacts {
        f.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap()
            .kernel
            .as_mut()
            .unwrap()
    }

    fn checks(v: &Verdict) -> Vec<&'static str> {
        v.findings.iter().map(|f| f.check).collect()
    }

    #[test]
    fn a_healthy_swarm_has_no_findings() {
        let v = run(Flavor::Docker, &healthy());
        assert!(v.findings.is_empty(), "{:#?}", v.findings);
        assert!(v.passed.iter().any(|p| p.check == "underlay-mtu"));
    }

    #[test]
    fn missing_ipvs_matters_only_where_vips_need_it() {
        let mut f = healthy();
        kernel_of(&mut f, "a").ipvs = Module {
            present: false,
            evidence: "/proc/net/ip_vs: absent".into(),
        };
        let v = run(Flavor::Docker, &f);
        assert_eq!(checks(&v), vec!["kernel-ipvs"]);
        assert!(v.findings[0].problem.contains("search"));
        f.nodes[0].needs_ipvs = false;
        assert!(run(Flavor::Swarmkit, &f).findings.is_empty());
    }

    #[test]
    fn each_injected_fault_is_named() {
        let mut f = healthy();
        let k = kernel_of(&mut f, "b");
        k.links[0].mtu = 1400;
        k.drops.push(DropRule {
            chain: "inet fault input".into(),
            hook: Some("input".into()),
            handle: 4,
            text: "udp dport 4789 drop".into(),
            ports: vec![("udp".into(), 4789)],
        });
        k.overlays.push(OverlayFacts {
            network_id: "n1".into(),
            sandbox: "1-n1".into(),
            fdb: vec![FdbEntry {
                mac: "02:42:0a:00:01:63".into(),
                dev: "vxlan0".into(),
                dst: "10.9.0.99".into(),
            }],
            ..OverlayFacts::default()
        });
        let k = kernel_of(&mut f, "a");
        k.listeners.push((
            "t1".into(),
            Ok(vec![Listener {
                addr: "127.0.0.1".into(),
                port: 80,
            }]),
        ));
        k.gossip.push(("10.9.0.2".into(), Err("timed out".into())));
        let v = run(Flavor::Docker, &f);
        let mut got = checks(&v);
        got.sort();
        assert_eq!(
            got,
            vec![
                "firewall-vxlan",
                "gossip-reach",
                "stale-fdb",
                "task-listens",
                "underlay-mtu"
            ]
        );
        for finding in &v.findings {
            assert!(!finding.fix.is_empty() && !finding.evidence.is_empty());
        }
        assert!(v.findings.iter().any(|x| x.fix.contains("handle 4")));
        // Swarmkit has no gossip port: the probe is Docker's only.
        assert!(!checks(&run(Flavor::Swarmkit, &f)).contains(&"gossip-reach"));
    }

    #[test]
    fn vxlan_checksum_offload_is_named_on_drivers_that_break_it() {
        let mut f = healthy();
        let offload = |driver: &str| Offload {
            link: "eth0".into(),
            driver: driver.into(),
            features: vec![("tx-checksum-ip-generic".into(), true)],
        };
        kernel_of(&mut f, "a").offload = Some(offload("vmxnet3"));
        kernel_of(&mut f, "b").offload = Some(offload("virtio_net"));
        let v = run(Flavor::Docker, &f);
        assert_eq!(checks(&v), vec!["vxlan-offload"]);
        assert_eq!(v.findings[0].node.as_deref(), Some("host-a"));
        assert!(v.findings[0].fix.contains("ethtool -K eth0"));
    }

    #[test]
    fn overlapping_subnets_and_wrong_source_addresses_are_named() {
        let mut f = healthy();
        f.networks.push(NetFacts {
            id: "n2".into(),
            name: "backend".into(),
            driver: "overlay".into(),
            subnets: vec!["10.0.0.0/16".parse().unwrap()],
            ..NetFacts::default()
        });
        kernel_of(&mut f, "a").routes_to_peers =
            vec![("10.9.0.2".into(), Ok("192.168.1.5".into()))];
        let mut got = checks(&run(Flavor::Docker, &f));
        got.sort();
        assert_eq!(got, vec!["duplicate-subnet", "node-address"]);
    }

    #[test]
    fn encrypted_networks_need_sas_both_ways_between_their_nodes() {
        let mut f = healthy();
        f.networks[0].encrypted = true;
        f.tasks.push(TaskFacts {
            id: "t2".into(),
            name: "search.2".into(),
            service_id: "s1".into(),
            node_id: "b".into(),
            running: true,
            addrs: vec![("n1".into(), "10.0.1.4".into())],
            ..TaskFacts::default()
        });
        let sa = |s: &str, d: &str| Sa {
            src: s.into(),
            dst: d.into(),
            proto: "esp".into(),
            spi: "0x1".into(),
        };
        kernel_of(&mut f, "a").sas = vec![sa("10.9.0.1", "10.9.0.2"), sa("10.9.0.2", "10.9.0.1")];
        kernel_of(&mut f, "b").sas = vec![sa("10.9.0.2", "10.9.0.1")];
        let v = run(Flavor::Docker, &f);
        assert_eq!(checks(&v), vec!["encryption-sa"]);
        assert_eq!(v.findings[0].node.as_deref(), Some("host-b"));
        assert!(v.findings[0].evidence.contains("10.9.0.1 -> 10.9.0.2"));
    }
}
