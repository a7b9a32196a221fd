//! `swarmkit trace`: follow one real connection through the swarm, hop by hop, from what
//! the kernels recorded about it (conntrack and IPVS entries, neighbour and FDB entries, link
//! counters). Nothing here predicts where a packet should go: each hop is found by the
//! previous hop's reply tuple, and a hop the kernel has no record of ends the trace.

pub mod kernel;
mod walk;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::graph::model::{GTask, Topology};
use crate::graph::svg::{Anchor, Overlay};
use kernel::{Place, Swarm, Tuple};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    Text,
    Svg,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Follow a connection made on this node (to a published port: the routing mesh)
    #[arg(long, required_unless_present = "task", conflicts_with = "task")]
    pub node: Option<String>,
    /// Follow a connection made in this task (name like `web.1`, or ID): DNS, VIP, backend
    #[arg(long)]
    pub task: Option<String>,
    /// Follow the connection you made from this source port (e.g. `curl --local-port 41001`)
    /// instead of making one with curl
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,
    /// Output format: text, or SVG with the path drawn over the graph
    #[arg(long, value_enum, default_value = "text")]
    pub format: TraceFormat,
    /// Write to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Where the connection goes, HOST:PORT (e.g. localhost:9200, search:9200)
    pub target: String,
    #[command(flatten)]
    pub swarm: crate::reach::SwarmArgs,
}

/// One hop, as the kernel at `place` recorded it.
#[derive(Clone, Debug)]
pub struct Hop {
    pub place: String,
    pub what: String,
    pub evidence: String,
    pub anchors: Vec<Anchor>,
}

#[derive(Clone, Debug)]
pub struct Trace {
    pub title: String,
    pub hops: Vec<Hop>,
    /// The task that accepted the connection, when the trace reached one.
    pub replica: Option<GTask>,
}

impl Trace {
    pub fn text(&self) -> String {
        let width = self.hops.iter().map(|h| h.place.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (i, h) in self.hops.iter().enumerate() {
            out += &format!(
                "{:>2}. {:<width$}  {}  [{}]\n",
                i + 1,
                h.place,
                h.what,
                h.evidence
            );
        }
        match &self.replica {
            Some(t) => {
                let addrs = crate::graph::text::addresses(t);
                out += &format!("replica: {} on {} ({addrs})\n", t.name, t.node);
            }
            None => out += "replica: none reached (the trace ends where the kernel's records do)\n",
        }
        out
    }

    pub fn overlay(&self) -> Overlay {
        Overlay {
            title: self.title.clone(),
            hops: self
                .hops
                .iter()
                .map(|h| (h.anchors.clone(), format!("{}: {}", h.place, h.what)))
                .collect(),
        }
    }
}

pub fn parse_target(target: &str) -> anyhow::Result<(String, u16)> {
    let hint = "give the target as HOST:PORT, e.g. localhost:9200 or search:9200";
    let (host, port) = target
        .rsplit_once(':')
        .with_context(|| format!("{target:?} has no port: {hint}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{port:?} in {target:?} is not a port number: {hint}"))?;
    if host.is_empty() {
        bail!("{target:?} has no host: {hint}");
    }
    Ok((host.to_string(), port))
}

pub fn find_task<'a>(t: &'a Topology, name: &str) -> anyhow::Result<&'a GTask> {
    t.tasks()
        .find(|x| x.name == name || x.id == name)
        .or_else(|| {
            let mut by_prefix = t.tasks().filter(|x| x.id.starts_with(name));
            match (by_prefix.next(), by_prefix.next()) {
                (Some(one), None) if name.len() >= 3 => Some(one),
                _ => None,
            }
        })
        .with_context(|| {
            format!(
                "no task {name:?} in cluster {:?}: tasks are {}",
                t.cluster,
                t.tasks()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Where a traced connection starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    Node(String),
    Task(String),
}

/// Follows one connection to `target` (HOST:PORT) from `from`: the one from source port
/// `sport`, or a new one made with curl.
pub async fn trace(
    swarm: &Swarm,
    topo: &Topology,
    from: &From,
    target: &str,
    sport: Option<u16>,
) -> anyhow::Result<Trace> {
    let (host, port) = parse_target(target)?;
    // A swarmkit task's namespace tracks connections only while a trace needs it: tracking
    // every packet of every task cost ~6 % of overlay throughput (README, overlay benchmark).
    // The trace's own connection is tracked in the tasks it may reach, and tracking ends with
    // the trace. A connection made before (`--sport`) was not: its tasks' hops are read from
    // the places around them (see `walk`).
    let tracked = match sport {
        None if !swarm.is_docker() => track(swarm, topo, from, &host, port).await,
        _ => Vec::new(),
    };
    let traced = match from {
        From::Node(node) => from_node(swarm, topo, node, &host, port, sport).await,
        From::Task(task) => from_task(swarm, topo, task, &host, port, sport).await,
    };
    for place in &tracked {
        if let Err(e) = kernel::untrack(swarm, place).await {
            eprintln!("warning: connection tracking stays on at {place}: {e:#}");
        }
    }
    traced
}

/// Turns tracking on in the tasks a connection from `from` to `host`:`port` may reach: the
/// calling task, and the tasks of the services that name, publish or answer `host`:`port`
/// (every task where none does). Returns the places where it was turned on.
async fn track(swarm: &Swarm, topo: &Topology, from: &From, host: &str, port: u16) -> Vec<Place> {
    let named = host.strip_prefix("tasks.").unwrap_or(host);
    let serving: Vec<&str> = topo
        .services
        .iter()
        .filter(|s| {
            s.name == named
                || s.vips.iter().any(|v| v.addr == host)
                || s.ports.iter().any(|p| p.published == i64::from(port))
        })
        .map(|s| s.name.as_str())
        .collect();
    let caller = match from {
        From::Task(x) => find_task(topo, x).ok().map(|t| t.id.clone()),
        From::Node(_) => None,
    };
    let tasks = topo.tasks().filter(|t| {
        serving.is_empty()
            || serving.contains(&t.service.as_str())
            || caller.as_deref() == Some(t.id.as_str())
    });
    let places: Vec<Place> = tasks.map(|t| Place::Task(t.id.clone())).collect();
    let turned = futures::future::join_all(places.iter().map(|p| kernel::track(swarm, p))).await;
    places
        .into_iter()
        .zip(turned)
        .filter_map(|(p, on)| (on == Some(true)).then_some(p))
        .collect()
}

pub async fn run(cluster: &str, args: TraceArgs) -> anyhow::Result<i32> {
    let from = match (args.node, args.task) {
        (Some(node), _) => From::Node(node),
        (None, Some(task)) => From::Task(task),
        (None, None) => bail!("say where the connection starts: --node NODE or --task TASK"),
    };
    // Check the target before asking the manager anything.
    parse_target(&args.target)?;
    let (topo, swarm) = crate::graph::model::open(cluster, &args.swarm).await?;
    let trace = trace(&swarm, &topo, &from, &args.target, args.sport).await?;
    let body = match args.format {
        TraceFormat::Text => trace.text(),
        TraceFormat::Svg => crate::graph::svg::render(&topo, Some(&trace.overlay())),
    };
    crate::graph::emit(&body, args.output.as_deref())?;
    Ok(if trace.replica.is_some() { 0 } else { 1 })
}

/// Makes one connection with curl at `place` and returns its source port.
async fn connect(swarm: &Swarm, place: &Place, host: &str, port: u16) -> anyhow::Result<u16> {
    let url = format!("http://{host}:{port}/");
    // curl fails on a server that does not speak HTTP, but it has connected by then, which
    // is all a trace needs; the local port tells which connection it was. The host is the
    // user's: --globoff keeps curl from expanding brackets or braces in it into many URLs.
    let curl = |extra: &[&str]| {
        let mut argv = vec!["curl", "--globoff", "-s", "-o", "/dev/null", "-m", "5"];
        argv.extend_from_slice(extra);
        argv.push(url.as_str());
        argv.iter().map(|a| a.to_string()).collect::<Vec<String>>()
    };
    let run = |argv: Vec<String>| async move {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        kernel::run_status(swarm, place, &argv).await
    };
    let out = run(curl(&["-w", "%{local_port}"])).await?;
    match out.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        // On a Docker Swarm a refused connection is worth following too: where the mesh or a
        // VIP fails silently (no IPVS), the kernels' records show how far it got. curl names
        // no local port for a connection that failed, so it gets one chosen here.
        _ if swarm.is_docker() => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let sport = 42000 + (nanos % 18000) as u16;
            run(curl(&["--local-port", &sport.to_string()])).await?;
            Ok(sport)
        }
        _ => bail!("curl {url} at {place} did not connect; is something listening on port {port}?"),
    }
}

async fn from_node(
    swarm: &Swarm,
    topo: &Topology,
    node: &str,
    host: &str,
    port: u16,
    sport: Option<u16>,
) -> anyhow::Result<Trace> {
    let n = topo.node(node).with_context(|| {
        format!(
            "no node {node:?} in {}: nodes are {}",
            swarm.name,
            topo.nodes
                .iter()
                .map(|n| n.hostname.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let place = Place::Node(n.hostname.clone());
    let sport = match sport {
        Some(p) => p,
        None => connect(swarm, &place, host, port).await?,
    };
    let mut hops = vec![Hop {
        place: n.hostname.clone(),
        what: format!("connection to {host}:{port} from source port {sport}"),
        evidence: "client".into(),
        anchors: vec![Anchor::Port(n.hostname.clone())],
    }];
    // The node's table may hold a second entry from this source port: the same connection
    // hairpinned back by its ingress sandbox. The client's own is the one to the address it
    // called, when that address is known here.
    let dst = match host {
        "localhost" => "127.0.0.1".to_string(),
        h if h.parse::<std::net::Ipv4Addr>().is_ok() => h.to_string(),
        _ => String::new(),
    };
    let want = Tuple {
        dst,
        sport,
        dport: port,
        ..Tuple::default()
    };
    let replica = walk::follow(swarm, topo, place, &n.hostname, want, &mut hops).await?;
    Ok(Trace {
        title: format!("trace: {node} -> {host}:{port} (tcp, source port {sport})"),
        hops,
        replica,
    })
}

async fn from_task(
    swarm: &Swarm,
    topo: &Topology,
    task: &str,
    host: &str,
    port: u16,
    sport: Option<u16>,
) -> anyhow::Result<Trace> {
    let t = find_task(topo, task)?;
    let place = Place::Task(t.id.clone());
    let mut hops = Vec::new();
    let mut dst = String::new();
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        let (addrs, tool) = kernel::resolve(swarm, &place, host).await?;
        if addrs.is_empty() {
            bail!(
                "{host} does not resolve in task {}: does it share a network with that service?",
                t.name
            );
        }
        let kind = match topo
            .services
            .iter()
            .find(|s| s.vips.iter().any(|v| addrs.contains(&v.addr)))
        {
            Some(s) => format!("VIP of service {}", s.name),
            None => "task addresses (dnsrr)".into(),
        };
        let svc = topo.services.iter().find(|s| s.name == host);
        hops.push(Hop {
            place: t.name.clone(),
            what: format!("DNS {host} -> {} ({kind})", addrs.join(", ")),
            evidence: tool.into(),
            anchors: [Anchor::Task(t.name.clone())]
                .into_iter()
                .chain(svc.map(|s| Anchor::Service(s.name.clone())))
                .collect(),
        });
        if let [one] = &addrs[..] {
            dst = one.clone();
        }
    } else {
        dst = host.to_string();
    }
    let sport = match sport {
        Some(p) => p,
        None => connect(swarm, &place, host, port).await?,
    };
    hops.push(Hop {
        place: t.name.clone(),
        what: format!("connection to {host}:{port} from source port {sport}"),
        evidence: "client".into(),
        anchors: vec![Anchor::Task(t.name.clone())],
    });
    let want = Tuple {
        dst,
        sport,
        dport: port,
        ..Tuple::default()
    };
    let replica = walk::follow(swarm, topo, place, &t.node, want, &mut hops).await?;
    Ok(Trace {
        title: format!(
            "trace: task {} -> {host}:{port} (tcp, source port {sport})",
            t.name
        ),
        hops,
        replica,
    })
}
