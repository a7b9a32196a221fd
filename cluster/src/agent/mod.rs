//! The agent: one per node. It registers with the manager, long-polls its node's plan, makes
//! the node's kernel state and task processes match it through netcore, and reports back
//! what it observed. Every step is a reconcile, so a missed event is repaired by the next plan.

mod adopt;
mod config;
mod dataplane;
mod derive;
mod logs;
mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use netcore::dns::{Resolver, ServeHandle};
use netcore::lb;
use netcore::netns::NetNs;
use tokio::sync::{mpsc, watch};

use crate::client::{ClientError, ManagerClient};
use crate::model::TaskState;
use crate::paths::ClusterPaths;
use crate::plan::{NodePlan, PlanState, TaskPlan};
use crate::protocol::{
    PREFIX, PlanResponse, RegisterRequest, RegisterResponse, Report, TaskReport,
};
use crate::wait::{self, Check, Pace, Waited};

pub use config::{ENV_LB, ENV_MANAGER_TCP, ENV_MESH, ENV_NODE_ADDR, ENV_NODE_NS, NodeNs};
pub use process::write_files;

/// How long a task may take to start listening before the agent says so in its log; it keeps
/// checking after that, since a loaded machine can be that slow.
const READY_WARN_AFTER: Duration = Duration::from_secs(10);

enum Event {
    Exited { id: String, code: Option<i32> },
    Ready { id: String },
    NotReady { id: String, err: String },
}

struct RunningTask {
    plan: TaskPlan,
    /// Index of the task's /30 on its host-port link to the node, if it publishes in host mode.
    host_link: Option<u32>,
    ns: NetNs,
    pid: Option<u32>,
    dns: Option<ServeHandle>,
    state: TaskState,
    stopping: bool,
    /// Started by an earlier agent: not our child, so its exit status is unknown.
    adopted: bool,
}

pub struct Agent {
    paths: ClusterPaths,
    client: ManagerClient,
    node: NetNs,
    host_ports: netcore::hostport::HostPorts,
    resolver: std::sync::Arc<Resolver>,
    dataplane: dataplane::Dataplane,
    tasks: HashMap<String, RunningTask>,
    reports: BTreeMap<String, TaskReport>,
    /// Tasks that ran here and ended. A task ID never runs twice: replacements are new tasks
    /// the manager creates, so the history in `service ps` tells the truth.
    finished: HashSet<String>,
    events: mpsc::UnboundedSender<Event>,
    /// The plan last applied in full: what the next apply compares against.
    applied: Option<Arc<NodePlan>>,
    hostname: String,
    /// Tasks left by an earlier agent and absent from the plan were stopped.
    swept: bool,
    logs: logs::LogSink,
    /// None where it could not be made: tasks then copy the agent's own mount table.
    mounts: Option<process::MountTemplate>,
}

async fn register(client: &ManagerClient, req: &RegisterRequest) -> anyhow::Result<String> {
    // Several request timeouts long: a stalled connection (see ManagerClient::call) costs
    // one attempt, not the agent.
    wait::until(
        Some(Duration::from_secs(120)),
        Pace::every(Duration::from_millis(20)),
        || async {
            match client
                .post::<_, RegisterResponse>(&format!("{PREFIX}/register"), req)
                .await
            {
                Ok(r) => Check::Ready(r.node_id),
                Err(e) => Check::NotYet(e),
            }
        },
    )
    .await
    .map_err(Waited::into_reason)
    .context("registering with the manager")
}

/// Set by a QEMU guest's init once its ESP and crypto modules are loaded (see vm/guest/rc.node).
const ESP_MODULES_DONE: &str = "/run/swarmkit-modules-esp.done";
const DATAPLANE_MODULES_DONE: &str = "/run/swarmkit-modules.done";
const ESP_MODULES_WAIT: Duration = Duration::from_secs(60);

/// What this kernel lacks for encrypted overlays (empty: nothing), by really trying.
async fn probe_ipsec(node: &NetNs) -> Vec<String> {
    // A guest loads its ESP modules off the path to a ready node; probing before they are in
    // would report them missing.
    if std::path::Path::new(DATAPLANE_MODULES_DONE).exists() {
        let loaded = wait::until(
            Some(ESP_MODULES_WAIT),
            Pace::every(Duration::from_millis(20)),
            || async { std::path::Path::new(ESP_MODULES_DONE).exists().into() },
        )
        .await;
        if loaded.is_err() {
            tracing::warn!(
                "{ESP_MODULES_DONE} did not appear within {ESP_MODULES_WAIT:?}; probing anyway"
            );
        }
    }
    match netcore::xfrm::probe(node).await {
        Ok(()) => Vec::new(),
        Err(netcore::xfrm::XfrmError::Unsupported { missing }) => {
            tracing::info!(
                "encrypted overlays unavailable here: missing {}",
                missing.join(", ")
            );
            missing
        }
        // The node still serves plain overlays; encrypted ones are refused with the reason.
        Err(e) => {
            tracing::warn!("probing the kernel for IPsec ESP: {e}");
            vec![format!("a working IPsec probe ({e})")]
        }
    }
}

pub async fn run(cluster: &str, hostname: &str) -> anyhow::Result<()> {
    // Before tasks fill the descriptor table: one for each namespace whose nftables this
    // agent keeps programming (a sandbox per network, the ingress sandbox, the node), and
    // one for a task's, in flight. Past them, nft is spawned, a fork of the whole agent.
    lb::libnft::reserve_low_descriptors(64);
    let paths = ClusterPaths::new(cluster);
    let config::Config {
        vtep,
        driver,
        mesh,
        node_ns,
        manager_tcp,
    } = config::Config::from_env()?;
    // A namespace of the node's own is the cluster's and goes with it; on a whole machine (a
    // guest or a host) what the agent changes there is journaled, for `cluster down` to undo.
    let (node, journal) = if node_ns.is_machine() {
        (
            NetNs::of_pid(std::process::id())?,
            Some(std::sync::Arc::new(netcore::undo::Journal::new(
                paths.host_journal(),
            ))),
        )
    } else {
        (NetNs::open(&paths.node_ns(hostname))?, None)
    };
    // Only a host's namespace holds other clusters' and its owner's IPsec next to ours.
    let ipsec_owner = match (node_ns, &journal) {
        (config::NodeNs::Host, Some(j)) => {
            netcore::xfrm::Owner::shared(cluster, &paths.nft_table("ipsec"), Some(j.clone()))
        }
        _ => netcore::xfrm::Owner::namespace(),
    };
    // Refused at start, not at the first network: its sandbox could not balance VIPs.
    if node.sysctl("net/bridge/bridge-nf-call-iptables").is_err() {
        return Err(config::AgentError::NoBridgeNetfilter.into());
    }
    let client = match &manager_tcp {
        Some(addr) => ManagerClient::tcp(addr),
        None => ManagerClient::new(&paths.manager_socket()),
    };
    let req = RegisterRequest {
        hostname: hostname.to_string(),
        addr: vtep,
        lb_driver: driver,
        mesh,
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        ipsec_missing: Some(probe_ipsec(&node).await),
    };
    let node_id = register(&client, &req).await?;
    tracing::info!(node_id, hostname, %driver, %mesh, "registered");

    let (plan_tx, mut plan_rx) = watch::channel::<Option<(Arc<NodePlan>, u64)>>(None);
    tokio::spawn(poll_plans(client.clone(), node_id.clone(), req, plan_tx));
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let logs = logs::LogSink::start(client.clone(), node_id.clone());
    let mut agent = Agent {
        dataplane: dataplane::Dataplane::new(
            paths.clone(),
            hostname,
            node.clone(),
            vtep,
            driver,
            mesh,
        )
        .with_journal(journal.clone())
        .with_ipsec_owner(ipsec_owner),
        client,
        host_ports: netcore::hostport::HostPorts::new(
            node.clone(),
            &paths.nft_table("hostports"),
            journal,
        ),
        paths,
        node,
        resolver: Resolver::new(),
        tasks: HashMap::new(),
        reports: BTreeMap::new(),
        finished: HashSet::new(),
        events: events_tx,
        applied: None,
        hostname: hostname.to_string(),
        swept: false,
        logs,
        mounts: process::MountTemplate::new()
            .inspect_err(|e| tracing::warn!("tasks will copy the node's whole mount table: {e}"))
            .ok(),
    };
    let mut plan: Option<(Arc<NodePlan>, u64)> = None;
    let mut last_acked = None;
    // Nothing ticks: the loop wakes for a new plan, a task event, or a timer set for a
    // restart back-off ending or for retrying what failed.
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let mut reconcile = false;
        tokio::select! {
            changed = plan_rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("plan channel closed");
                }
                plan = plan_rx.borrow_and_update().clone();
                reconcile = true;
            }
            Some(ev) = events_rx.recv() => agent.on_event(ev),
            _ = sleep_until(wake_at) => reconcile = true,
        }
        while let Ok(ev) = events_rx.try_recv() {
            agent.on_event(ev);
        }
        let Some((plan, digest)) = &plan else {
            continue;
        };
        wake_at = None;
        // The version and digest of the plan last applied: the manager can send a second
        // delta under one version (a draining task settling), so both are reported.
        let mut applied = last_acked;
        if reconcile {
            let started = std::time::Instant::now();
            match agent.reconcile(plan).await {
                Ok(()) => {
                    tracing::debug!(version = plan.version, took = ?started.elapsed(), "plan applied");
                    applied = Some((plan.version, *digest));
                }
                Err(e) => {
                    tracing::warn!("applying plan {}: {e:#}", plan.version);
                    wake_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
        if !agent.reports.is_empty() || applied != last_acked {
            if agent.send_report(&plan.node_id, applied).await {
                last_acked = applied;
            } else {
                wake_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
        if let Some(at) = agent.next_start(plan) {
            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        }
    }
}

/// How soon a failed apply or report is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Long-polls the node's plan changes and hands on the accumulated plan. It runs apart from
/// applying, so the polls (the node's heartbeats) keep coming however long an apply takes.
async fn poll_plans(
    client: ManagerClient,
    mut node_id: String,
    req: RegisterRequest,
    tx: watch::Sender<Option<(Arc<NodePlan>, u64)>>,
) {
    let mut since: Option<u64> = None;
    let mut plan = PlanState::default();
    let mut digest = 0;
    loop {
        let uri = match since {
            Some(v) => format!("{PREFIX}/{node_id}/plan?since={v}"),
            None => format!("{PREFIX}/{node_id}/plan"),
        };
        match client.get::<PlanResponse>(&uri).await {
            Ok(r) => {
                since = Some(r.version);
                if let Some(delta) = &r.delta {
                    tracing::debug!(
                        version = r.version,
                        full = delta.full,
                        objects = delta.len(),
                        "plan delta"
                    );
                    digest = plan.apply(delta, digest);
                    tx.send_replace(Some((Arc::new(plan.to_plan(r.version)), digest)));
                }
            }
            Err(ClientError::Status { status, .. }) if status == 404 => {
                if let Ok(id) = register(&client, &req).await {
                    node_id = id;
                }
                since = None;
            }
            Err(e @ ClientError::Timeout { .. }) => {
                // A request nobody answered (not a manager that is away) is worth seeing.
                tracing::warn!("plan poll: {e}; polling again");
            }
            Err(e) => {
                // The dataplane keeps serving while the manager is away; the manager sends
                // the full plan if it cannot tell what we have.
                tracing::debug!("plan poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl Agent {
    /// When the earliest task waiting out a restart back-off may start.
    fn next_start(&self, plan: &NodePlan) -> Option<tokio::time::Instant> {
        let now = chrono::Utc::now();
        plan.tasks
            .iter()
            .filter(|t| !self.tasks.contains_key(&t.id) && !self.finished.contains(&t.id))
            .filter_map(|t| t.start_after)
            .filter(|at| *at > now)
            .min()
            .map(|at| {
                let wait = (at - now).to_std().unwrap_or_default();
                tokio::time::Instant::now() + wait + Duration::from_millis(1)
            })
    }

    fn report(&mut self, id: &str, state: TaskState, message: &str, err: Option<String>) {
        let pid = self.tasks.get(id).and_then(|t| t.pid);
        self.reports.insert(
            id.to_string(),
            TaskReport {
                id: id.to_string(),
                state,
                message: message.to_string(),
                err,
                pid,
                exit_code: None,
            },
        );
    }

    /// Whether the manager took the report.
    async fn send_report(&mut self, node_id: &str, applied: Option<(u64, u64)>) -> bool {
        let report = Report {
            applied_version: applied.map(|(v, _)| v),
            plan_digest: applied.map(|(_, d)| d),
            tasks: self.reports.values().cloned().collect(),
        };
        match self
            .client
            .post::<_, serde_json::Value>(&format!("{PREFIX}/{node_id}/report"), &report)
            .await
        {
            Ok(_) => {
                self.reports.clear();
                true
            }
            Err(e) => {
                tracing::warn!("report: {e}");
                false
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready { id } => {
                if let Some(t) = self.tasks.get_mut(&id)
                    && t.state == TaskState::Starting
                    && !t.stopping
                {
                    t.state = TaskState::Running;
                    self.report(&id, TaskState::Running, "started", None);
                }
            }
            Event::NotReady { id, err } => {
                tracing::warn!(task = id, "not ready: {err}");
            }
            Event::Exited { id, code } => {
                let Some(t) = self.tasks.remove(&id) else {
                    return;
                };
                let (state, message, err) = if t.stopping {
                    (TaskState::Shutdown, "shutdown".to_string(), None)
                } else if t.adopted {
                    let why = "task: exited (status unknown: it outlived an agent restart)";
                    (TaskState::Failed, why.to_string(), Some(why.to_string()))
                } else if code == Some(0) {
                    (TaskState::Complete, "finished".to_string(), None)
                } else {
                    let why = match code {
                        Some(c) => format!("task: non-zero exit ({c})"),
                        None => "task: killed by a signal".to_string(),
                    };
                    (TaskState::Failed, why.clone(), Some(why))
                };
                let pid = t.pid;
                self.finished.insert(id.clone());
                self.cleanup(t);
                self.reports.insert(
                    id.clone(),
                    TaskReport {
                        id,
                        state,
                        message,
                        err,
                        pid,
                        exit_code: code.map(i64::from),
                    },
                );
            }
        }
    }

    fn cleanup(&mut self, t: RunningTask) {
        self.resolver.remove(&t.plan.id);
        adopt::forget(&self.paths.task_dir(&t.plan.id));
        let RunningTask { ns, dns, .. } = t;
        // Sockets and handles keep a namespace alive: release them before its name.
        drop(dns);
        let name = ns.name().to_string();
        drop(ns);
        if let Err(e) = NetNs::delete(&name) {
            tracing::warn!("removing {name}: {e}");
        }
    }

    async fn reconcile(&mut self, plan: &Arc<NodePlan>) -> anyhow::Result<()> {
        // Whatever fails below is re-applied in full next time.
        let prev = self.applied.take();
        self.apply(plan, prev.as_deref()).await?;
        self.applied = Some(Arc::clone(plan));
        if !self.swept {
            self.sweep(plan);
            self.swept = true;
        }
        Ok(())
    }

    /// Takes over a task an earlier agent started, if its process still runs.
    fn adopt(&mut self, t: &TaskPlan) -> Adoption {
        let dir = self.paths.task_dir(&t.id);
        let Some(rec) = adopt::load(&dir).filter(|r| r.node == self.hostname) else {
            return Adoption::Nothing;
        };
        if !adopt::alive(&rec) {
            adopt::forget(&dir);
            return Adoption::Ended;
        }
        let adopted = NetNs::open(&self.paths.task_ns(&t.id))
            .map_err(anyhow::Error::from)
            .and_then(|ns| Ok((self.resolver.serve_in(&t.id, &ns)?, ns)));
        let (dns, ns) = match adopted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("adopting {}: {e:#}; it is stopped", t.name);
                kill_group(rec.pid, Duration::from_millis(rec.stop_grace_ms));
                adopt::forget(&dir);
                return Adoption::Ended;
            }
        };
        tracing::info!(task = t.name, pid = rec.pid, "adopted");
        if let Err(e) = self.logs.follow(&t.id, &dir) {
            tracing::warn!("{}: its output is not read: {e}", t.name);
        }
        let id = t.id.clone();
        let events = self.events.clone();
        let pid = rec.pid;
        tokio::spawn(async move {
            if let Err(e) = adopt::exited(pid).await {
                tracing::warn!("watching adopted task {id}: {e}");
                return;
            }
            let _ = events.send(Event::Exited { id, code: None });
        });
        let port = crate::images::resolve(&t.image)
            .filter(|_| t.args.is_empty())
            .map(|b| b.port());
        // Starting until it answers again; not reported, since the manager knows it running
        // and a report would take it out of the load balancers for nothing.
        self.tasks.insert(
            t.id.clone(),
            RunningTask {
                plan: t.clone(),
                host_link: rec.host_link,
                ns: ns.clone(),
                pid: Some(rec.pid),
                dns: Some(dns),
                state: TaskState::Starting,
                stopping: false,
                adopted: true,
            },
        );
        let events = self.events.clone();
        let id = t.id.clone();
        tokio::spawn(async move {
            let ev = match wait_listening(ns, Some(pid), port).await {
                Ok(()) => Event::Ready { id },
                Err(err) => Event::NotReady { id, err },
            };
            let _ = events.send(ev);
        });
        Adoption::Adopted
    }

    /// Stops what an earlier agent left running that the plan no longer wants (its node was
    /// down meanwhile and the tasks were replaced elsewhere), so nothing runs twice.
    fn sweep(&mut self, plan: &NodePlan) {
        let wanted: HashSet<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
        let tasks_dir = self.paths.run_dir().join("tasks");
        for (id, dir, rec) in adopt::records(&tasks_dir, &self.hostname) {
            if wanted.contains(id.as_str()) || self.tasks.contains_key(&id) {
                continue;
            }
            if adopt::alive(&rec) {
                tracing::info!(
                    task = id,
                    pid = rec.pid,
                    "stopping a task the plan no longer has"
                );
                kill_group(rec.pid, Duration::from_millis(rec.stop_grace_ms));
            }
            if let Err(e) = NetNs::delete(&self.paths.task_ns(&id)) {
                tracing::debug!("removing the namespace of {id}: {e}");
            }
            adopt::forget(&dir);
        }
    }

    /// Makes the node match `plan`. Tasks' load balancers and DNS views are rebuilt only
    /// where a service on one of their networks changed since `prev` (the plan applied
    /// last), so a change costs in proportion to what it touches.
    async fn apply(&mut self, plan: &NodePlan, prev: Option<&NodePlan>) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.dataplane
            .install_ipsec(plan)
            .await
            .context("encrypted networks")?;
        self.dataplane.apply_networks(plan).await?;
        let networks = started.elapsed();
        self.dataplane.apply_ingress(plan).await?;
        tracing::debug!(?networks, ingress = ?(started.elapsed() - networks), "dataplane applied");

        let wanted: HashMap<&str, &TaskPlan> =
            plan.tasks.iter().map(|t| (t.id.as_str(), &**t)).collect();
        let stale: Vec<String> = self
            .tasks
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.stop(&id);
        }
        self.finished.retain(|id| wanted.contains_key(id.as_str()));
        let now = chrono::Utc::now();
        for t in &plan.tasks {
            if self.tasks.contains_key(&t.id)
                || self.finished.contains(&t.id)
                || t.start_after.is_some_and(|at| at > now)
            {
                continue;
            }
            match self.adopt(t) {
                Adoption::Adopted => continue,
                Adoption::Ended => {
                    self.finished.insert(t.id.clone());
                    let why = "task: exited while its agent was down";
                    self.report(&t.id, TaskState::Failed, why, Some(why.to_string()));
                    continue;
                }
                Adoption::Nothing => {}
            }
            let task_started = std::time::Instant::now();
            let result = self.start(t).await;
            tracing::debug!(task = t.name, took = ?task_started.elapsed(), "task started");
            if let Err(e) = result {
                tracing::warn!("starting {}: {e:#}", t.name);
                self.finished.insert(t.id.clone());
                self.report(
                    &t.id,
                    TaskState::Rejected,
                    "failed to start",
                    Some(format!("{e:#}")),
                );
            }
        }
        let changed = prev.map(|p| derive::changed_services(p, plan));
        let touched = changed.as_deref().map(derive::networks_of);
        self.dataplane.apply_vips(plan, changed.as_deref()).await?;
        let prev_tasks: HashSet<&str> = prev
            .map(|p| p.tasks.iter().map(|t| t.id.as_str()).collect())
            .unwrap_or_default();
        // Tasks on the same networks see the same names: each view is computed once per
        // apply (not once per task), and shared.
        let mut by_nets: HashMap<Vec<String>, Vec<&RunningTask>> = HashMap::new();
        for t in self.tasks.values().filter(|t| !t.stopping) {
            if let Some(nets) = &touched
                && prev_tasks.contains(t.plan.id.as_str())
                && !t
                    .plan
                    .attachments
                    .iter()
                    .any(|a| nets.contains(&a.network_id))
            {
                continue;
            }
            let key = derive::task_networks(plan, &t.plan)
                .into_iter()
                .map(String::from)
                .collect();
            by_nets.entry(key).or_default().push(t);
        }
        for tasks in by_nets.into_values() {
            let ids: Vec<&str> = tasks.iter().map(|t| t.plan.id.as_str()).collect();
            // The names the change touched, when the view shared so far is the one for `prev`;
            // the whole view otherwise.
            let updated = changed.as_deref().is_some_and(|c| {
                let changes = derive::view_changes(plan, &tasks[0].plan, c);
                self.resolver.update_shared_view(&ids, changes)
            });
            if !updated {
                let view = derive::task_view(plan, &tasks[0].plan);
                self.resolver.set_shared_view(&ids, view);
            }
        }
        let host_ports: Vec<netcore::hostport::HostPort> = self
            .tasks
            .values()
            .filter(|t| !t.stopping)
            .filter_map(|t| t.host_link.map(|i| (t, i)))
            .flat_map(|(t, i)| {
                t.plan
                    .host_ports
                    .iter()
                    .map(move |p| netcore::hostport::HostPort {
                        proto: match p.protocol {
                            crate::model::Protocol::Tcp => lb::Protocol::Tcp,
                            crate::model::Protocol::Udp => lb::Protocol::Udp,
                        },
                        port: p.published,
                        addr: host_link_addrs(i).1.addr(),
                        target: p.target,
                    })
            })
            .collect();
        tokio::task::block_in_place(|| self.host_ports.apply(&host_ports))
            .context("host-mode ports")?;
        self.dataplane.prune_networks(plan).await;
        self.dataplane
            .prune_ipsec(plan)
            .await
            .context("encrypted networks")?;
        Ok(())
    }

    async fn start(&mut self, t: &TaskPlan) -> anyhow::Result<()> {
        let ns = NetNs::create(&self.paths.task_ns(&t.id))?;
        netcore::link::loopback_up(&ns).await?;
        for a in &t.attachments {
            self.dataplane.attach(&a.network_id, &ns, a).await?;
        }
        let host_link = if t.host_ports.is_empty() {
            None
        } else {
            let used: HashSet<u32> = self.tasks.values().filter_map(|r| r.host_link).collect();
            let i = (0..16000u32)
                .find(|i| !used.contains(i))
                .context("no free host-port link left on this node")?;
            let (node_side, task_side) = host_link_addrs(i);
            netcore::underlay::link_pair(
                &self.node,
                &format!("hp{}", &t.id[..8.min(t.id.len())]),
                node_side,
                &ns,
                "gw0",
                task_side,
            )
            .await?;
            // Replies to outside clients go back through the node, source addresses intact.
            netcore::link::Links::new(&ns)?
                .add_default_route(node_side.addr())
                .await?;
            Some(i)
        };
        let dns = self.resolver.serve_in(&t.id, &ns)?;
        tokio::task::block_in_place(|| lb::track_connections(&ns))
            .context("connection tracking in the task's namespace")?;
        let argv = match (crate::images::resolve(&t.image), t.args.is_empty()) {
            (Some(b), true) => vec![
                crate::paths::OWN_BINARY.to_string(),
                "__image".to_string(),
                b.name().to_string(),
            ],
            _ => t.args.clone(),
        };
        let dir = self.paths.task_dir(&t.id);
        let outputs = logs::outputs(&dir).context("the task's output FIFOs")?;
        self.logs
            .follow(&t.id, &dir)
            .context("reading the task's output")?;
        let child = process::spawn(
            t,
            &ns,
            self.mounts.as_ref(),
            &dir,
            &self.paths.name,
            &argv,
            outputs,
        )?;
        let pid = child.id();
        if let Some(p) = pid {
            let rec = adopt::Record {
                node: self.hostname.clone(),
                pid: p,
                start_time: adopt::start_time(p).unwrap_or_default(),
                host_link,
                stop_grace_ms: t.stop_grace_ms,
            };
            if let Err(e) = adopt::save(&dir, &rec) {
                tracing::warn!("recording {} for a restarted agent: {e}", t.name);
            }
        }
        let id = t.id.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut child = child;
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = events.send(Event::Exited { id, code });
        });
        let port = crate::images::resolve(&t.image)
            .filter(|_| t.args.is_empty())
            .map(|b| b.port());
        self.tasks.insert(
            t.id.clone(),
            RunningTask {
                plan: t.clone(),
                host_link,
                ns: ns.clone(),
                pid,
                dns: Some(dns),
                state: TaskState::Starting,
                stopping: false,
                adopted: false,
            },
        );
        self.report(&t.id, TaskState::Starting, "starting", None);
        let events = self.events.clone();
        let id = t.id.clone();
        tokio::spawn(async move {
            let ev = match wait_listening(ns, pid, port).await {
                Ok(()) => Event::Ready { id },
                Err(err) => Event::NotReady { id, err },
            };
            let _ = events.send(ev);
        });
        Ok(())
    }

    fn stop(&mut self, id: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.stopping {
            return;
        }
        t.stopping = true;
        let grace = Duration::from_millis(t.plan.stop_grace_ms);
        match t.pid {
            Some(pid) => kill_group(pid, grace),
            None => {
                let _ = self.events.send(Event::Exited {
                    id: id.to_string(),
                    code: None,
                });
            }
        }
    }
}

enum Adoption {
    Adopted,
    /// Its process ended while no agent watched it.
    Ended,
    /// No earlier agent started it.
    Nothing,
}

/// SIGTERM to a task's process group, SIGKILL after its stop grace period.
fn kill_group(pid: u32, grace: Duration) {
    let pgid = nix::unistd::Pid::from_raw(-(pid as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    });
}

/// The /30 linking a host-mode task to its node, carved from 172.19.0.0/16: (node, task).
fn host_link_addrs(i: u32) -> (ipnet::Ipv4Net, ipnet::Ipv4Net) {
    let base = u32::from(Ipv4Addr::new(172, 19, 0, 0)) + i * 4;
    (
        ipnet::Ipv4Net::new(Ipv4Addr::from(base + 1), 30).expect("/30"),
        ipnet::Ipv4Net::new(Ipv4Addr::from(base + 2), 30).expect("/30"),
    )
}

/// Ready means the task accepts connections on its image's port (from inside its namespace),
/// not merely that its process exists. It checks until the port answers; a task that exits
/// first is reported by its exit, and the check's late answer is ignored.
async fn wait_listening(ns: NetNs, pid: Option<u32>, port: Option<u16>) -> Result<(), String> {
    let Some(port) = port else {
        return Ok(());
    };
    let started = tokio::time::Instant::now();
    let warned = std::sync::atomic::AtomicBool::new(false);
    let answers = || {
        let ns = ns.clone();
        tokio::task::spawn_blocking(move || {
            ns.run(|| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .unwrap_or(false)
        })
    };
    wait::until(
        None,
        Pace::doubling(Duration::from_millis(2), Duration::from_millis(100)),
        || {
            let answered = answers();
            let warned = &warned;
            async move {
                if answered.await.unwrap_or(false) {
                    return Check::Ready(());
                }
                if started.elapsed() > READY_WARN_AFTER
                    && !warned.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "nothing listens on port {port} after {READY_WARN_AFTER:?}; still waiting"
                    );
                }
                let alive = pid.is_some_and(|p| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
                });
                if alive {
                    Check::NotYet(String::new())
                } else {
                    Check::Failed(format!("the task stopped before port {port} answered"))
                }
            }
        },
    )
    .await
    // No deadline: only a failure ends it without an answer.
    .map_err(Waited::into_reason)
}
