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
    for group in group_findings(&v.findings) {
        s += &group;
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

/// The findings as text, the same finding on several nodes said once with their names, and
/// the unreachable task pairs of one cause listed under one heading.
fn group_findings(findings: &[checks::Finding]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut done = vec![false; findings.len()];
    for (i, x) in findings.iter().enumerate() {
        if done[i] {
            continue;
        }
        let same: Vec<usize> = (i..findings.len())
            .filter(|&j| {
                let y = &findings[j];
                !done[j]
                    && y.check == x.check
                    && y.fix == x.fix
                    && (x.check == "overlay-reach"
                        || (y.problem == x.problem && y.evidence == x.evidence))
            })
            .collect();
        for &j in &same {
            done[j] = true;
        }
        let nodes: Vec<&str> = same
            .iter()
            .filter_map(|&j| findings[j].node.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let on = if nodes.is_empty() {
            String::new()
        } else {
            format!(" on {}", nodes.join(", "))
        };
        let mut text = String::new();
        if x.check == "overlay-reach" && same.len() > 1 {
            text += &format!(
                "✗ {}{on}: {} task pair(s) unreachable over their overlays\n",
                x.check,
                same.len()
            );
            for &j in &same {
                let y = &findings[j];
                text += &format!("    {} ({})\n", y.problem, y.evidence);
            }
        } else {
            text += &format!("✗ {}{on}: {}\n", x.check, x.problem);
            text += &format!("    evidence: {}\n", x.evidence);
        }
        text += &format!("    fix:      {}\n", x.fix);
        out.push(text);
    }
    out
}
