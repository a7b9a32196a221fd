//! `swarmkit walkthrough`: replay a documented walkthrough (testplans/NAME.md) against a fresh
//! cluster and compare what happens with the document and with the accepted snapshot
//! (snapshots/NAME.snap). The same command is the project's end-to-end snapshot test.

mod assert;
mod display;
mod embedded;
mod exec;
mod normalize;
mod plan;
mod session;
mod snapshot;
mod words;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testbed::Backend;

pub use plan::Client;
use plan::Engine;

use display::Display;
use exec::Runner;
use plan::Plan;
use session::{Report, Session};

/// How long bringing a cluster up or down may take before the walkthrough gives up.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(300);

/// What a walkthrough's cluster may be built of, with what that means for it; None for a
/// backend walkthroughs do not run on (ssh needs an inventory they have no flag for).
fn backend_help(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Netns => Some("Nodes are network namespaces on this host"),
        Backend::Qemu => {
            Some("Nodes are QEMU guests (for IPVS and IPsec, which the host kernel may lack)")
        }
        Backend::Ssh => None,
    }
}

/// `--backend`'s values: the backends [`backend_help`] describes.
fn backends() -> impl Iterator<Item = clap::builder::PossibleValue> {
    Backend::ALL.into_iter().filter_map(|b| {
        backend_help(b).map(|help| clap::builder::PossibleValue::new(b.as_str()).help(help))
    })
}

#[derive(clap::Args, Debug)]
pub struct WalkthroughArgs {
    /// The walkthrough to run (NAME of testplans/NAME.md); `list` lists them, `patterns`
    /// lists the normalisation patterns.
    pub name: String,
    /// What the cluster's nodes are.
    #[arg(long, default_value = "netns", value_parser = crate::flags::backend_parser(backends()))]
    pub backend: Backend,
    /// Leave the cluster running afterwards, to look around.
    #[arg(long)]
    pub keep: bool,
    /// Accept this run's transcript as the new snapshot.
    #[arg(long)]
    pub update: bool,
    /// Which CLI runs the walkthrough's `docker` commands.
    #[arg(long, value_enum, default_value_t = Client::Swarmkit)]
    pub client: Client,
    /// Directory of walkthroughs [default: ./testplans, else the built-in ones].
    #[arg(long)]
    pub plans: Option<PathBuf>,
    /// Directory of snapshots [default: ./snapshots, else the built-in ones].
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkthroughError {
    #[error("no walkthrough named {name:?} in {place}; try `swarmkit walkthrough list`")]
    NoSuchPlan { name: String, place: String },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("--update needs a snapshots directory to write to: pass --snapshots DIR")]
    NowhereToUpdate,
    #[error("no cluster name fits 24 characters for prefix {0:?}")]
    ClusterName(String),
    #[error("`{command}` failed ({why})")]
    Cluster { command: String, why: String },
}

/// Where plans or snapshots come from.
enum Source {
    Dir(PathBuf),
    Embedded,
}

impl Source {
    fn choose(explicit: Option<&Path>, default_dir: &str) -> Result<Source, WalkthroughError> {
        match explicit {
            Some(d) if d.is_dir() => Ok(Source::Dir(d.to_path_buf())),
            Some(d) => Err(WalkthroughError::NotADirectory(d.to_path_buf())),
            None if Path::new(default_dir).is_dir() => Ok(Source::Dir(default_dir.into())),
            None => Ok(Source::Embedded),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Embedded => "the built-in walkthroughs".into(),
        }
    }
}

pub async fn run(cluster: &str, args: WalkthroughArgs) -> anyhow::Result<i32> {
    let plans = Source::choose(args.plans.as_deref(), "testplans")?;
    match args.name.as_str() {
        "list" => return list(&plans),
        "patterns" => return Ok(list_patterns()),
        _ => {}
    }
    let plan = load_plan(&plans, &args.name)?;
    let snapshots = Source::choose(args.snapshots.as_deref(), "snapshots")?;
    if args.update && matches!(snapshots, Source::Embedded) {
        return Err(WalkthroughError::NowhereToUpdate.into());
    }
    let accepted = snapshot_text(&snapshots, &args.name)?
        .map(|t| snapshot::parse(&t))
        .transpose()
        .with_context(|| format!("reading the snapshot of {}", args.name))?;

    let on_lab = plan.engine == Engine::Docker;
    if on_lab && let Some(why) = testbed::docker_lab::unavailable() {
        println!(
            "walkthrough {}: skipped: it runs on a real Docker Swarm, which cannot run here: \
             {why}",
            plan.name
        );
        return Ok(1);
    }
    let started = Instant::now();
    let name = unique_cluster_name(cluster, std::process::id())?;
    // A Docker lab is always driven by docker.io's own CLI.
    let client = if on_lab {
        Client::Docker
    } else {
        plan.client.unwrap_or(args.client)
    };
    let runner = Runner {
        exe: std::env::current_exe().context("finding the swarmkit executable")?,
        cluster: name.clone(),
        client,
        lab_nodes: on_lab.then_some(plan.nodes),
    };
    let display = Display::new(plan.command_count());
    let nodes = plan.nodes.to_string();
    let managers = plan.managers.to_string();
    let (on, up, down): (String, Vec<&str>, Vec<&str>) = if on_lab {
        (
            format!("Docker lab {name}, docker.io's dockerd and CLI"),
            vec![
                "lab",
                "up",
                &name,
                "--nodes",
                &nodes,
                "--hostnames",
                exec::LAB_HOSTNAMES,
            ],
            vec!["lab", "down", &name],
        )
    } else {
        (
            format!(
                "cluster {name}, {} client",
                match client {
                    Client::Swarmkit => "swarmkit",
                    Client::Docker => "docker",
                }
            ),
            vec![
                "cluster",
                "up",
                "--nodes",
                &nodes,
                "--managers",
                &managers,
                "--backend",
                args.backend.as_str(),
            ],
            vec!["cluster", "down"],
        )
    };
    display.line(&format!(
        "walkthrough {}: {} ({} nodes, {on})",
        plan.name, plan.title, plan.nodes,
    ));
    let outcome = replay(
        &runner,
        &display,
        &plan,
        accepted.as_deref(),
        args.backend,
        &up,
    )
    .await;
    // A failed run shows what the cluster's daemons logged before teardown removes them.
    let failed = !matches!(&outcome, Ok(Some(r)) if r.mismatches == 0);
    if failed {
        if on_lab {
            show_lab_logs(&display, &name);
        } else {
            show_daemon_logs(&display, &name);
        }
    }
    // Teardown runs whatever happened above, so a failed run leaves nothing behind.
    if args.keep && on_lab {
        display.line(&format!(
            "lab kept: eval \"$(swarmkit lab env {name})\" to use it; remove it with \
             `swarmkit lab down {name}`"
        ));
    } else if args.keep {
        display.line(&format!(
            "cluster kept: swarmkit --cluster {name} ... ; remove it with \
             `swarmkit --cluster {name} cluster down`"
        ));
    } else if let Err(e) = cluster_command(&runner, &display, &down).await {
        display.line(&format!("warning: {e:#}"));
    }
    display.finish();

    let Some(report) = outcome? else {
        println!("walkthrough {}: interrupted", plan.name);
        return Ok(130);
    };
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "walkthrough {}: {} commands, {} mismatches, {elapsed:.1}s",
        plan.name, report.commands, report.mismatches
    );
    if args.update {
        let Source::Dir(dir) = &snapshots else {
            return Err(WalkthroughError::NowhereToUpdate.into());
        };
        return update_snapshot(dir, &plan, &report, args.backend);
    }
    if accepted.is_none() {
        println!(
            "no snapshot for {} yet: run `swarmkit walkthrough {} --update` to accept this transcript",
            plan.name, plan.name
        );
        return Ok(1);
    }
    Ok(if report.mismatches == 0 { 0 } else { 1 })
}

/// The plan named `name`, parsed, with every normalisation pattern it names known.
fn load_plan(plans: &Source, name: &str) -> anyhow::Result<Plan> {
    let text = plan_text(plans, name)?;
    let plan = plan::parse(name, &text)?;
    for block in &plan.blocks {
        normalize::check_names(&block.patterns)?;
        for c in &block.commands {
            normalize::check_names(&c.patterns)?;
        }
    }
    Ok(plan)
}

/// Brings the runner's cluster (or Docker lab) up with the swarmkit command `up` and replays
/// the plan on it; None when interrupted (Ctrl-C, or `timeout`/`kill` sending TERM), which
/// the caller's teardown then still follows.
async fn replay(
    runner: &Runner,
    display: &Display,
    plan: &Plan,
    snapshot: Option<&[snapshot::Entry]>,
    backend: Backend,
    up: &[&str],
) -> anyhow::Result<Option<Report>> {
    cluster_command(runner, display, up).await?;
    let session = Session {
        plan,
        runner,
        display,
        snapshot,
        backend,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = session.run() => r.map(Some),
        _ = tokio::signal::ctrl_c() => Ok(None),
        _ = term.recv() => Ok(None),
    }
}

/// `--update`: writes this run's transcript as the plan's snapshot in `dir`, unless the
/// walkthrough's own checks failed or a block was skipped on this backend.
fn update_snapshot(
    dir: &Path,
    plan: &Plan,
    report: &Report,
    backend: Backend,
) -> anyhow::Result<i32> {
    // Snapshot differences are what --update accepts; the walkthrough's own checks
    // (its expected output, assertions, timeouts) must still pass.
    if report.mismatches > report.snapshot_mismatches {
        println!("snapshot not updated: fix the failures the walkthrough itself reports first");
        return Ok(1);
    }
    // A transcript with skipped blocks would drop their accepted entries.
    if let Some(b) = plan.blocks.iter().find(|b| !b.runs_on(backend)) {
        println!(
            "snapshot not updated: block {} runs on the {} backend only; update there",
            b.number,
            b.backend_names()
        );
        return Ok(1);
    }
    let path = dir.join(format!("{}.snap", plan.name));
    std::fs::write(&path, snapshot::render(&plan.name, &report.entries))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("snapshot written: {}", path.display());
    Ok(0)
}

fn list(plans: &Source) -> anyhow::Result<i32> {
    let mut found: Vec<(String, String)> = match plans {
        Source::Embedded => embedded::PLANS
            .iter()
            .map(|(n, t)| (n.to_string(), plan::title_of(t)))
            .collect(),
        Source::Dir(dir) => {
            let mut v = Vec::new();
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let path = entry?.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if path.extension().is_some_and(|e| e == "md") && stem != "README" {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    v.push((stem.to_string(), plan::title_of(&text)));
                }
            }
            v
        }
    };
    found.sort();
    let width = found.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(4);
    println!("{:width$}   TITLE", "NAME");
    for (name, title) in found {
        println!("{name:width$}   {title}");
    }
    Ok(0)
}

fn list_patterns() -> i32 {
    println!("{:16}   {:8}   MEANING", "PATTERN", "APPLIES");
    for p in normalize::PATTERNS {
        let applies = if p.default { "always" } else { "opt-in" };
        println!("{:16}   {applies:8}   {}", p.name, p.about);
    }
    0
}

fn plan_text(plans: &Source, name: &str) -> Result<String, anyhow::Error> {
    let missing = || WalkthroughError::NoSuchPlan {
        name: name.into(),
        place: plans.describe(),
    };
    match plans {
        Source::Embedded => Ok(embedded::plan(name).ok_or_else(missing)?.to_string()),
        Source::Dir(dir) => {
            let path = dir.join(format!("{name}.md"));
            if !path.is_file() {
                return Err(missing().into());
            }
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        }
    }
}

fn snapshot_text(snaps: &Source, name: &str) -> anyhow::Result<Option<String>> {
    match snaps {
        Source::Embedded => Ok(embedded::snapshot(name).map(String::from)),
        Source::Dir(dir) => {
            let path = dir.join(format!("{name}.snap"));
            if !path.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(text))
        }
    }
}

/// A fresh cluster per run, named after the caller's cluster name so it is recognisable, and
/// after our pid so that parallel runs never share one.
fn unique_cluster_name(prefix: &str, pid: u32) -> Result<String, WalkthroughError> {
    let suffix = format!("-wt{pid}");
    let keep = 24usize.saturating_sub(suffix.len());
    let head: String = prefix.chars().take(keep).collect();
    let head = head.trim_end_matches(['-', '_']);
    let name = if head.is_empty() {
        suffix[1..].to_string()
    } else {
        format!("{head}{suffix}")
    };
    cluster::paths::validate_cluster_name(&name)
        .map_err(|_| WalkthroughError::ClusterName(prefix.into()))?;
    Ok(name)
}

async fn cluster_command(runner: &Runner, display: &Display, args: &[&str]) -> anyhow::Result<()> {
    let invocation = runner.swarmkit(args);
    let shown = format!("swarmkit --cluster {} {}", runner.cluster, args.join(" "));
    display.line(&format!("# {shown}"));
    let outcome = exec::run(&invocation, CLUSTER_TIMEOUT, |l| {
        display.line(&format!("# {l}"))
    })
    .await?;
    let why = match (outcome.status, outcome.timed_out) {
        (Some(0), _) => return Ok(()),
        (_, true) => format!("no result within {}s", CLUSTER_TIMEOUT.as_secs()),
        (Some(code), _) => format!("exit status {code}"),
        (None, _) => "killed by a signal".into(),
    };
    Err(WalkthroughError::Cluster {
        command: shown,
        why,
    }
    .into())
}

/// The last lines of each dockerd's log of the Docker lab `name`.
fn show_lab_logs(display: &display::Display, name: &str) {
    let Ok(lab) = testbed::docker_lab::load(name) else {
        return;
    };
    for line in lab.log_tails(20).lines().filter(|l| !l.is_empty()) {
        display.line(&format!("# {line}"));
    }
}

/// The last lines of each daemon log of the cluster (manager, agents, VM hosts).
fn show_daemon_logs(display: &display::Display, cluster: &str) {
    let dir = std::path::Path::new(cluster::paths::RUN_ROOT).join(cluster);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut logs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        display.line(&format!(
            "# {} (last {} lines)",
            log.display(),
            lines.len().min(20)
        ));
        for l in &lines[lines.len().saturating_sub(20)..] {
            display.line(&format!("#   {l}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_unique_and_valid() {
        assert_eq!(
            unique_cluster_name("default", 4242).ok(),
            Some("default-wt4242".into())
        );
        let long =
            unique_cluster_name("a-very-long-cluster-name-indeed", 4_194_304).expect("shortened");
        assert!(long.len() <= 24 && long.ends_with("-wt4194304"), "{long}");
        assert_eq!(unique_cluster_name("", 7).ok(), Some("wt7".into()));
    }

    /// The Markdown's own examples must satisfy the plan's assertions wherever they are shown
    /// in full, so the documentation never illustrates a failure.
    #[test]
    fn plans_agree_with_their_own_assertions() {
        for (name, text) in embedded::PLANS {
            let p = plan::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            for b in &p.blocks {
                let shown: Vec<String> = b.commands.iter().map(|c| c.expected.join("\n")).collect();
                if shown.iter().any(|o| o.lines().any(|l| l.trim() == "...")) {
                    continue;
                }
                for a in &b.assertions {
                    if matches!(a, assert::Assertion::JsonLen { .. }) {
                        continue;
                    }
                    if let Err(why) = a.check(&shown) {
                        panic!("{name} block {}: {a}: {why}", b.number);
                    }
                }
            }
        }
    }

    #[test]
    fn every_embedded_plan_is_listed_and_parses() {
        assert!(embedded::plan("routing").is_some());
        assert!(embedded::plan("overlay").is_some());
        for (name, text) in embedded::PLANS {
            let p = plan::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            for b in &p.blocks {
                normalize::check_names(&b.patterns).expect("known patterns");
            }
        }
    }
}
