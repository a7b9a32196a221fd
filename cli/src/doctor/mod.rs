//! `swarmkit doctor`: examine a swarm, swarmkit's own or a real Docker Swarm, and name what
//! breaks its networking, each finding with the evidence read from the kernel or the API
//! and the fix. It only reads: nothing on the swarm is changed.

mod checks;
mod facts;
mod gather;
pub mod reach;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use checks::Verdict;
use facts::{Facts, Flavor};
use reach::{Reach, Way};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Examine the swarm this Docker engine manages instead of a swarmkit cluster:
    /// unix:///var/run/docker.sock or tcp://HOST:2376 (TLS with DOCKER_TLS_VERIFY and
    /// DOCKER_CERT_PATH, as docker does)
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// How to read a Docker node's kernel, by hostname or node ID: NODE=local (this machine),
    /// NODE=netns:NAME (a network namespace here, as in a lab); repeatable. SSH hosts come
    /// from --inventory
    #[arg(long = "node", value_name = "NODE=WAY")]
    pub nodes: Vec<String>,
    /// SSH hosts to read Docker nodes' kernels from: a TOML file of [[host]] name (the node's
    /// hostname), address, user, key, host_key (pinned), as `cluster up --backend ssh` takes
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Output format: text, or JSON for scripts
    #[arg(long, value_enum, default_value = "text")]
    pub format: DoctorFormat,
}

#[derive(Serialize)]
struct Report<'a> {
    flavor: Flavor,
    healthy: bool,
    nodes: Vec<NodeLine>,
    findings: &'a [checks::Finding],
    passed: &'a [checks::Passed],
}

#[derive(Serialize)]
struct NodeLine {
    hostname: String,
    id: String,
    addr: String,
    /// How its kernel was read, or why it was not.
    read_through: Option<String>,
    not_read: Option<String>,
}

pub async fn run(cluster: &str, args: DoctorArgs) -> anyhow::Result<i32> {
    let engine = match &args.docker_host {
        Some(h) if !h.is_empty() => gather::Engine::Docker(h.clone()),
        _ => gather::Engine::Cluster(cluster.to_string()),
    };
    let client = gather::client(&engine)?;
    let view = gather::api_view(&client)
        .await
        .with_context(|| match &engine {
            gather::Engine::Cluster(c) => format!("asking cluster {c:?}'s manager"),
            gather::Engine::Docker(h) => format!("asking the Docker engine at {h}"),
        })?;
    let mut facts = view.facts;
    facts
        .nodes
        .sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let (reaches, how) = reaches(
        cluster,
        &engine,
        view.flavor,
        &facts,
        view.answering_node,
        &args,
    )
    .await?;
    gather::read_kernels(view.flavor, &mut facts, reaches).await;
    let verdict = checks::run(view.flavor, &facts);
    let text = match args.format {
        DoctorFormat::Text => text(view.flavor, &facts, &how, &verdict),
        DoctorFormat::Json => {
            let report = Report {
                flavor: view.flavor,
                healthy: verdict.findings.is_empty(),
                nodes: facts
                    .nodes
                    .iter()
                    .map(|n| NodeLine {
                        hostname: n.hostname.clone(),
                        id: n.id.clone(),
                        addr: n.addr.clone(),
                        read_through: n
                            .kernel
                            .is_ok()
                            .then(|| how.get(&n.id).cloned().unwrap_or_default()),
                        not_read: n.kernel.as_ref().err().cloned(),
                    })
                    .collect(),
                findings: &verdict.findings,
                passed: &verdict.passed,
            };
            serde_json::to_string_pretty(&report)? + "\n"
        }
    };
    print!("{text}");
    Ok(if verdict.findings.is_empty() { 0 } else { 1 })
}

/// A way into every node doctor can read, keyed by node ID, and how each was reached.
async fn reaches(
    cluster: &str,
    engine: &gather::Engine,
    flavor: Flavor,
    facts: &Facts,
    answering: Option<String>,
    args: &DoctorArgs,
) -> anyhow::Result<(BTreeMap<String, Arc<Reach>>, BTreeMap<String, String>)> {
    let mut reaches = BTreeMap::new();
    let mut how = BTreeMap::new();
    if flavor == Flavor::Swarmkit {
        let gather::Engine::Cluster(name) = engine else {
            bail!(
                "that engine is a swarmkit manager: run doctor with --cluster NAME instead of --docker-host, so it can reach the nodes"
            );
        };
        debug_assert_eq!(name, cluster);
        for n in &facts.nodes {
            reaches.insert(
                n.id.clone(),
                Reach::new(Way::Swarmkit {
                    cluster: cluster.to_string(),
                    node: n.hostname.clone(),
                }),
            );
            how.insert(n.id.clone(), format!("swarmkit node exec {}", n.hostname));
        }
        return Ok((reaches, how));
    }
    let find = |key: &str| {
        facts
            .nodes
            .iter()
            .find(|n| n.hostname == key || n.id == key || n.addr == key)
            .with_context(|| {
                format!(
                    "{key:?} is no node of this swarm (its nodes: {})",
                    facts
                        .nodes
                        .iter()
                        .map(|n| n.hostname.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    for spec in &args.nodes {
        let (key, way) = spec
            .split_once('=')
            .with_context(|| format!("--node {spec:?}: give NODE=local or NODE=netns:NAME"))?;
        let node = find(key)?;
        let (way, label) = match way {
            "local" => (Way::Local, "this machine".to_string()),
            w if w.starts_with("netns:") => {
                let ns = &w["netns:".len()..];
                if !std::path::Path::new("/run/netns").join(ns).exists() {
                    bail!("--node {spec:?}: there is no network namespace {ns:?} (ip netns list)");
                }
                (Way::Netns(ns.to_string()), format!("netns {ns}"))
            }
            other => bail!(
                "--node {spec:?}: {other:?} is not a way doctor knows: local, netns:NAME, or an SSH host in --inventory"
            ),
        };
        reaches.insert(node.id.clone(), Reach::new(way));
        how.insert(node.id.clone(), label);
    }
    if let Some(path) = &args.inventory {
        let hosts = testbed::vm::inventory::load(path, None)?;
        for h in hosts {
            let node = facts
                .nodes
                .iter()
                .find(|n| n.hostname == h.name || n.addr == h.addr.addr().to_string())
                .with_context(|| {
                    format!(
                        "inventory {}: host {} matches no node of this swarm by hostname or address",
                        path.display(),
                        h.name
                    )
                })?;
            if reaches.contains_key(&node.id) {
                continue;
            }
            let session = testbed::vm::host::connect(&h)
                .await
                .with_context(|| format!("connecting to {} over SSH", h.ssh))?;
            reaches.insert(node.id.clone(), Reach::new(Way::Ssh(Box::new(session))));
            how.insert(node.id.clone(), format!("ssh {}@{}", h.user, h.ssh));
        }
    }
    // Asked through a local socket, the engine that answered is this machine's.
    if let (gather::Engine::Docker(host), Some(id)) = (engine, answering)
        && host.starts_with("unix://")
        && !reaches.contains_key(&id)
    {
        reaches.insert(id.clone(), Reach::new(Way::Local));
        how.insert(id, "this machine".into());
    }
    Ok((reaches, how))
}

fn text(flavor: Flavor, f: &Facts, how: &BTreeMap<String, String>, v: &Verdict) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let kind = match flavor {
        Flavor::Docker => "Docker Swarm",
        Flavor::Swarmkit => "swarmkit cluster",
    };
    let _ = writeln!(
        s,
        "{kind}: {} node(s), {} network(s), {} service(s), {} running task(s)",
        f.nodes.len(),
        f.networks.len(),
        f.services.len(),
        f.running().count()
    );
    for n in &f.nodes {
        let read = match &n.kernel {
            Ok(_) => format!(
                "read through {}",
                how.get(&n.id).map(String::as_str).unwrap_or("?")
            ),
            Err(e) => format!("not read: {e}"),
        };
        let _ = writeln!(s, "  {:<20} {:<16} {read}", n.hostname, n.addr);
    }
    s.push('\n');
    for x in &v.findings {
        let _ = writeln!(
            s,
            "✗ {}{}: {}",
            x.check,
            x.node
                .as_deref()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default(),
            x.problem
        );
        let _ = writeln!(s, "    evidence: {}", x.evidence);
        let _ = writeln!(s, "    fix:      {}", x.fix);
    }
    for p in &v.passed {
        let _ = writeln!(s, "✓ {}: {}", p.check, p.detail);
    }
    s.push('\n');
    if v.findings.is_empty() {
        let _ = writeln!(s, "healthy: no problem found");
    } else {
        let _ = writeln!(s, "{} problem(s) found", v.findings.len());
    }
    s
}
