//! Reading a swarm into [`Facts`]: the manager's answers through the Engine API (Docker's
//! or swarmkit's, which serve the same shapes), then every reachable node's kernel, nodes in
//! parallel. Only reads: `ip`, `bridge`, `nft list`, `/proc`, pings and TCP connects.

use bollard::models::{Node, Service};
use cluster::client::ManagerClient;
use serde_json::Value;

use super::facts::*;
use crate::graph::model::{ApiTask, Raw};
use crate::reach::{Place, Swarm};

/// The manager's view, and which node answered (the one doctor may read as "local").
pub struct ApiView {
    pub facts: Facts,
    pub flavor: Flavor,
    pub answering_node: Option<String>,
}

pub async fn api_view(client: &ManagerClient) -> anyhow::Result<ApiView> {
    let (raw, answering_node) = Raw::fetch_from(client).await?;
    let Raw {
        nodes,
        networks,
        services,
        tasks,
    } = raw;
    let label = |n: &Node, k: &str| {
        n.description
            .as_ref()
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.labels.as_ref())
            .and_then(|l| l.get(k).cloned())
    };
    let flavor = if nodes
        .iter()
        .any(|n| label(n, "swarmkit.lb-driver").is_some())
    {
        Flavor::Swarmkit
    } else {
        Flavor::Docker
    };
    let facts = Facts {
        nodes: nodes
            .iter()
            .map(|n| NodeFacts {
                id: n.id.clone().unwrap_or_default(),
                hostname: crate::api::hostname(n),
                addr: n
                    .status
                    .as_ref()
                    .and_then(|s| s.addr.clone())
                    .unwrap_or_default(),
                ready: n
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_some_and(|s| s.to_string() == "ready"),
                needs_ipvs: match flavor {
                    Flavor::Docker => true,
                    Flavor::Swarmkit => label(n, "swarmkit.lb-driver").as_deref() == Some("ipvs"),
                },
                kernel: Err("not read".into()),
            })
            .collect(),
        networks: networks
            .iter()
            .filter(|n| n.scope.as_deref() == Some("swarm"))
            .map(|n| NetFacts {
                id: n.id.clone().unwrap_or_default(),
                name: n.name.clone().unwrap_or_default(),
                driver: n.driver.clone().unwrap_or_default(),
                subnets: n
                    .ipam
                    .as_ref()
                    .and_then(|i| i.config.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.subnet.as_deref()?.parse().ok())
                    .collect(),
                encrypted: n
                    .options
                    .as_ref()
                    .is_some_and(|o| o.contains_key("encrypted")),
                ingress: n.ingress.unwrap_or(false),
            })
            .collect(),
        services: services.iter().map(service).collect(),
        tasks: Vec::new(),
    };
    let mut facts = facts;
    facts.tasks = tasks.iter().map(|t| task(t, &facts)).collect();
    Ok(ApiView {
        facts,
        flavor,
        answering_node,
    })
}

fn service(s: &Service) -> SvcFacts {
    let endpoint = s.endpoint.as_ref();
    let dnsrr = s
        .spec
        .as_ref()
        .and_then(|sp| sp.endpoint_spec.as_ref())
        .and_then(|e| e.mode)
        .is_some_and(|m| m.to_string() == "dnsrr");
    SvcFacts {
        id: s.id.clone().unwrap_or_default(),
        name: s
            .spec
            .as_ref()
            .and_then(|sp| sp.name.clone())
            .unwrap_or_default(),
        vip: !dnsrr
            && endpoint
                .and_then(|e| e.virtual_ips.as_ref())
                .is_some_and(|v| !v.is_empty()),
        vips: if dnsrr {
            Vec::new()
        } else {
            endpoint
                .and_then(|e| e.virtual_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    let addr = v.addr.as_deref()?;
                    Some((
                        v.network_id.clone()?,
                        addr.split('/').next().unwrap_or(addr).to_string(),
                    ))
                })
                .collect()
        },
        ports: endpoint
            .and_then(|e| e.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p.published_port.unwrap_or_default() as u16,
                    p.target_port.unwrap_or_default() as u16,
                    p.protocol
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| "tcp".into()),
                    p.publish_mode.map(|m| m.to_string()).as_deref() != Some("host"),
                )
            })
            .collect(),
    }
}

fn task(t: &ApiTask, facts: &Facts) -> TaskFacts {
    let svc = facts
        .service(&t.service_id)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    TaskFacts {
        id: t.id.clone(),
        name: match t.slot {
            slot if slot > 0 => format!("{svc}.{slot}"),
            _ => format!("{svc}.{}", t.node_id),
        },
        service_id: t.service_id.clone(),
        node_id: t.node_id.clone(),
        running: t.status.state == "running" && t.desired_state == "running",
        container_id: t
            .status
            .container_status
            .as_ref()
            .map(|c| c.container_id.clone())
            .unwrap_or_default(),
        addrs: t
            .networks_attachments
            .iter()
            .flat_map(|a| {
                a.addresses.iter().map(|x| {
                    (
                        a.network.id.clone(),
                        x.split('/').next().unwrap_or(x).to_string(),
                    )
                })
            })
            .collect(),
    }
}

/// Reads every node that has a way in, in parallel.
pub async fn read_kernels(flavor: Flavor, facts: &mut Facts, swarm: &Swarm) {
    let snapshot = facts.clone();
    let reads = snapshot
        .nodes
        .iter()
        .filter(|n| n.ready && swarm.reaches(&n.hostname))
        .map(|n| async { (n.id.clone(), read_node(flavor, &snapshot, n, swarm).await) });
    for (id, k) in futures::future::join_all(reads).await {
        if let Some(n) = facts.nodes.iter_mut().find(|n| n.id == id) {
            n.kernel = k;
        }
    }
}

/// Runs argv at `place`: its stdout, or why it failed.
async fn run(swarm: &Swarm, place: &Place, argv: &[&str]) -> Result<String, String> {
    swarm
        .output(place, argv)
        .await
        .map_err(|e| format!("{e:#}"))?
        .result()
}

const IPVS_PROBE: &str = r#"m=$0
if [ -e /proc/net/ip_vs ] && [ "$m" = ip_vs ]; then echo "present: /proc/net/ip_vs exists"
elif [ -d /sys/module/$m ]; then echo "present: /sys/module/$m exists"
elif grep -qs "/$m.ko" /lib/modules/$(uname -r)/modules.builtin; then echo "present: built into $(uname -r)"
elif modprobe -n $m 2>/dev/null; then echo "present: not loaded, but modprobe -n $m finds it for $(uname -r)"
else echo "absent: no /sys/module/$m, not in /lib/modules/$(uname -r)/modules.builtin, and modprobe -n $m finds no module for kernel $(uname -r)"
fi"#;

async fn module(swarm: &Swarm, node: &Place, name: &str) -> Module {
    match run(swarm, node, &["sh", "-c", IPVS_PROBE, name]).await {
        Ok(out) => Module {
            present: out.starts_with("present"),
            evidence: out.trim().to_string(),
        },
        // Unknown is not a finding: say so and let the rest speak.
        Err(e) => Module {
            present: true,
            evidence: format!("could not tell: {e}"),
        },
    }
}

async fn read_node(
    flavor: Flavor,
    f: &Facts,
    me: &NodeFacts,
    swarm: &Swarm,
) -> Result<KernelFacts, String> {
    let id = me.id.as_str();
    let node = Place::Node(me.hostname.clone());
    let links = run(swarm, &node, &["ip", "-j", "addr", "show"])
        .await
        .map_err(|e| format!("reading its links: {e}"))?;
    let mut k = KernelFacts {
        links: parse_links(&links),
        ipvs: if me.needs_ipvs {
            module(swarm, &node, "ip_vs").await
        } else {
            Module::present("not needed")
        },
        esp: if f.networks.iter().any(|n| n.encrypted) {
            module(swarm, &node, "esp4").await
        } else {
            Module::present("not needed")
        },
        ..KernelFacts::default()
    };
    if let Some(link) = k
        .links
        .iter()
        .find(|l| l.addrs.iter().any(|a| a.addr().to_string() == me.addr))
    {
        let probe = format!(
            "basename \"$(readlink /sys/class/net/{0}/device/driver)\" 2>/dev/null || echo; ethtool -k {0} 2>/dev/null || true",
            link.name
        );
        if let Ok(out) = run(swarm, &node, &["sh", "-c", &probe]).await {
            k.offload = Some(parse_offload(&link.name, &out));
        }
    }
    let peers: Vec<&NodeFacts> = f
        .nodes
        .iter()
        .filter(|p| p.id != id && p.ready && !p.addr.is_empty())
        .collect();
    for p in &peers {
        let src = run(swarm, &node, &["ip", "-j", "route", "get", &p.addr])
            .await
            .and_then(|o| parse_route_source(&o).ok_or_else(|| format!("no source in {o}")));
        k.routes_to_peers.push((p.addr.clone(), src));
        if flavor == Flavor::Docker {
            // bash's /dev/tcp: a TCP connect with nothing installed but bash. 124 is
            // timeout's, 1 bash's refused connection; anything else (no bash, no timeout)
            // means the probe could not be made, which says nothing about the peer.
            let probe = format!("exec 3<>/dev/tcp/{}/7946", p.addr);
            let outcome = match swarm
                .output(&node, &["timeout", "3", "bash", "-c", &probe])
                .await
            {
                Ok(r) if r.ok => Ok(()),
                Ok(r) if r.code == 124 => Err("no answer within 3 s".to_string()),
                Ok(r) if r.code == 1 => Err(r.stderr.trim().to_string()),
                _ => continue,
            };
            k.gossip.push((p.addr.clone(), outcome));
        }
    }
    if let Ok(rules) = run(swarm, &node, &["nft", "-j", "list", "ruleset"]).await {
        k.drops = parse_nft_drops(&rules);
    }
    if f.networks.iter().any(|n| n.encrypted)
        && let Ok(out) = run(swarm, &node, &["ip", "xfrm", "state"]).await
    {
        k.sas = parse_xfrm_states(&out);
    }
    k.overlays = overlays(flavor, f, me, swarm).await;
    for (label, place) in [
        (
            "ingress_sbox",
            Place::Sandbox(me.hostname.clone(), "ingress_sbox".into()),
        ),
        ("the node", node.clone()),
    ] {
        if let Some(lb) = lb_maps(flavor, swarm, &place).await
            && !lb.ports.is_empty()
        {
            k.mesh_lb = Some((label.to_string(), lb));
            break;
        }
    }
    let mine: Vec<&TaskFacts> = f.running().filter(|t| t.node_id == id).collect();
    for t in &mine {
        let Some(svc) = f.service(&t.service_id) else {
            continue;
        };
        if !svc.ports.iter().any(|p| p.2 == "tcp") {
            continue;
        }
        k.listeners.push((t.id.clone(), listeners(swarm, t).await));
    }
    k.probes = probes(f, id, swarm, &mine).await;
    Ok(k)
}

async fn listeners(swarm: &Swarm, t: &TaskFacts) -> Result<Vec<Listener>, String> {
    let mut all = Vec::new();
    for file in ["tcp", "tcp6"] {
        let place = Place::Task(t.id.clone());
        match run(swarm, &place, &["cat", &format!("/proc/net/{file}")]).await {
            Ok(text) => all.extend(parse_proc_net_tcp(&text)),
            Err(e) if file == "tcp" => return Err(e),
            Err(_) => {}
        }
    }
    Ok(all)
}

/// Every overlay sandbox on the node (`1-<first ten characters of the network's ID>`, as
/// Docker names them and swarmkit does too): its FDB, neighbours and MTU.
async fn overlays(flavor: Flavor, f: &Facts, me: &NodeFacts, swarm: &Swarm) -> Vec<OverlayFacts> {
    let id = me.id.as_str();
    let sandboxes = match flavor {
        Flavor::Docker => swarm
            .docker_sandboxes(&me.hostname)
            .await
            .unwrap_or_default(),
        Flavor::Swarmkit => Vec::new(),
    };
    let names: Vec<(String, String)> = match flavor {
        Flavor::Docker => sandboxes
            .iter()
            .filter_map(|s| {
                let prefix = s.strip_prefix("1-")?;
                let net = f.networks.iter().find(|n| n.id.starts_with(prefix))?;
                Some((s.clone(), net.id.clone()))
            })
            .collect(),
        Flavor::Swarmkit => f
            .networks
            .iter()
            .filter(|n| {
                n.ingress
                    || f.running()
                        .any(|t| t.node_id == id && t.addrs.iter().any(|(nid, _)| nid == &n.id))
            })
            .map(|n| (format!("1-{}", &n.id[..n.id.len().min(10)]), n.id.clone()))
            .collect(),
    };
    let mut out = Vec::new();
    for (sandbox, network_id) in names {
        let place = Place::Sandbox(me.hostname.clone(), sandbox.clone());
        let Ok(fdb) = run(swarm, &place, &["bridge", "-j", "fdb", "show"]).await else {
            continue;
        };
        let neigh = run(swarm, &place, &["ip", "-j", "neigh", "show"])
            .await
            .unwrap_or_default();
        let links = run(swarm, &place, &["ip", "-j", "-d", "link", "show"])
            .await
            .unwrap_or_default();
        let mtu = serde_json::from_str::<Value>(&links)
            .ok()
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .filter(|l| l["linkinfo"]["info_kind"] == "vxlan")
                    .filter_map(|l| l["mtu"].as_u64())
                    .max()
            })
            .map(|m| m as u32);
        // Docker balances a network's VIPs in its `lb_<network id prefix>` sandbox.
        let lb_place = match flavor {
            Flavor::Swarmkit => Some(place.clone()),
            Flavor::Docker => sandboxes
                .iter()
                .find(|s| {
                    s.strip_prefix("lb_")
                        .is_some_and(|p| !p.is_empty() && network_id.starts_with(p))
                })
                .map(|s| Place::Sandbox(me.hostname.clone(), s.clone())),
        };
        let lb = match &lb_place {
            Some(p) => lb_maps(flavor, swarm, p).await,
            None => None,
        };
        out.push(OverlayFacts {
            network_id,
            sandbox,
            fdb: parse_fdb(&fdb),
            neighbours: parse_neighbours(&neigh),
            mtu,
            lb,
        });
    }
    out
}

/// swarmkit's load-balancer maps in a sandbox, where it balances with nftables.
/// What a sandbox (or node) balances each VIP and published port to: swarmkit's nftables
/// maps, or the marks swarmkit's IPVS driver or Docker set joined with IPVS's services.
async fn lb_maps(flavor: Flavor, swarm: &Swarm, place: &Place) -> Option<LbMaps> {
    let marks = match flavor {
        Flavor::Swarmkit => {
            let json = run(
                swarm,
                place,
                &["nft", "-j", "list", "table", "ip", "swarmkit"],
            )
            .await
            .ok()?;
            if let Some(lb) = parse_lb_maps(&json) {
                return Some(lb);
            }
            parse_nft_marks(&json)
        }
        Flavor::Docker => {
            let rules = run(swarm, place, &["iptables", "-t", "mangle", "-S"])
                .await
                .ok()?;
            parse_mangle_marks(&rules)
        }
    };
    if marks.is_empty() {
        return None;
    }
    // No ipvsadm, or no IPVS at all (kernel-ipvs says so): nothing to compare.
    let ipvs = run(swarm, place, &["ipvsadm", "-Ln"]).await.ok()?;
    Some(marks.join(&parse_ipvs_fwm(&ipvs)))
}

const PING: &str = r#"if command -v ping >/dev/null 2>&1; then exec ping -c1 -W2 "$0"; else exec busybox ping -c1 -W2 "$0"; fi"#;

/// From one task of each overlay on this node, a ping to every task of that overlay on the
/// other nodes.
async fn probes(f: &Facts, id: &str, swarm: &Swarm, mine: &[&TaskFacts]) -> Vec<Probe> {
    let mut out = Vec::new();
    for net in f.networks.iter().filter(|n| !n.ingress) {
        let Some(from) = mine
            .iter()
            .find(|t| t.addrs.iter().any(|(nid, _)| nid == &net.id))
        else {
            continue;
        };
        for to in f.running().filter(|t| t.node_id != id) {
            let Some((_, addr)) = to.addrs.iter().find(|(nid, _)| nid == &net.id) else {
                continue;
            };
            let place = Place::Task(from.id.clone());
            let argv = ["sh", "-c", PING, addr.as_str()];
            // Ok(true): a reply; Ok(false): ping ran and had none; Err: it could not run.
            let ping = || async {
                swarm
                    .output(&place, &argv)
                    .await
                    .map(|r| r.ok)
                    .map_err(|e| format!("{e:#}"))
            };
            // A task that has only just started may not be reachable for a moment (its
            // peers' agents are still programming it): only a second miss, 1 s later, counts.
            let mut outcome = ping().await;
            if outcome == Ok(false) {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                outcome = ping().await;
            }
            let outcome = match outcome {
                Ok(true) => Ok(()),
                Ok(false) => Err("no reply to two pings 1 s apart".to_string()),
                // Not reachability: the probe could not be made, which is not a finding.
                Err(e) => {
                    tracing::debug!("probe from {} to {addr}: {e}", from.id);
                    continue;
                }
            };
            out.push(Probe {
                network: net.id.clone(),
                from_task: from.id.clone(),
                to_task: to.id.clone(),
                to_addr: addr.clone(),
                outcome,
            });
        }
    }
    out
}
