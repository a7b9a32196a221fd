//! `swarmkit doctor`: examine a swarm, swarmkit's own or a real Docker Swarm, and name what
//! breaks its networking, each finding with the evidence read from the kernel or the API
//! and the fix. It only reads: nothing on the swarm is changed.

mod checks;
mod facts;
mod gather;

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::reach::{self, Engine, NodeKey, Swarm, SwarmArgs};
use checks::Verdict;
use facts::{Facts, Flavor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub swarm: SwarmArgs,
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
    let engine = args.swarm.engine(cluster);
    let client = reach::client(&engine)?;
    let view = gather::api_view(&client)
        .await
        .with_context(|| match &engine {
            Engine::Cluster(c) => format!("asking cluster {c:?}'s manager"),
            Engine::Docker(h) => format!("asking the Docker engine at {h}"),
        })?;
    let mut facts = view.facts;
    facts
        .nodes
        .sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let (swarm, how) = match (view.flavor, &engine) {
        (Flavor::Swarmkit, Engine::Docker(_)) => anyhow::bail!(
            "that engine is a swarmkit manager: run doctor with --cluster NAME instead of --docker-host, so it can reach the nodes"
        ),
        (Flavor::Swarmkit, Engine::Cluster(name)) => {
            let how = facts
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.hostname.clone(),
                        format!("swarmkit node exec {}", n.hostname),
                    )
                })
                .collect();
            (Swarm::swarmkit(name), how)
        }
        (Flavor::Docker, _) => {
            let keys: Vec<NodeKey> = facts
                .nodes
                .iter()
                .map(|n| NodeKey {
                    id: &n.id,
                    hostname: &n.hostname,
                    addr: &n.addr,
                })
                .collect();
            let (reaches, how) =
                reach::docker_reaches(&engine, &keys, view.answering_node.as_deref(), &args.swarm)
                    .await?;
            let tasks = facts
                .tasks
                .iter()
                .filter(|t| !t.container_id.is_empty())
                .filter_map(|t| {
                    let host = facts.node(&t.node_id)?.hostname.clone();
                    Some((t.id.clone(), (host, t.container_id.clone())))
                })
                .collect();
            let name = match &engine {
                Engine::Docker(h) => h.clone(),
                Engine::Cluster(c) => c.clone(),
            };
            (Swarm::docker(&name, reaches, tasks), how)
        }
    };
    gather::read_kernels(view.flavor, &mut facts, &swarm).await;
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
                            .then(|| how.get(&n.hostname).cloned().unwrap_or_default()),
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
                how.get(&n.hostname).map(String::as_str).unwrap_or("?")
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
