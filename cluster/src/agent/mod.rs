//! The agent: one per node. It registers with the manager, long-polls its node's plan, makes
//! the node's kernel state and task processes match it through netcore, and reports back
//! what it observed. Every step is a reconcile, so a missed event is repaired by the next plan.

mod dataplane;
mod logs;
mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use netcore::dns::{Resolver, ServeHandle};
use netcore::ingress::MeshLayout;
use netcore::lb::{self, Driver, LoadBalancer};
use netcore::netns::NetNs;
use tokio::sync::{mpsc, watch};

use crate::client::{ClientError, ManagerClient};
use crate::model::TaskState;
use crate::paths::ClusterPaths;
use crate::plan::{NodePlan, TaskPlan};
use crate::protocol::{
    PREFIX, PlanResponse, RegisterRequest, RegisterResponse, Report, TaskReport,
};

pub use process::write_files;

/// Environment the lifecycle passes to an agent it starts.
pub const ENV_NODE_ADDR: &str = "SWARMKIT_NODE_ADDR";
pub const ENV_LB: &str = "SWARMKIT_LB";
/// `self` when the node is the machine itself (a VM guest or a remote host) rather than a
/// named namespace on the host.
pub const ENV_NODE_NS: &str = "SWARMKIT_NODE_NS";
/// Where the routing mesh balances: "node" where the node's namespace is the project's alone
/// (QEMU guests), else "sandbox" (the default).
pub const ENV_MESH: &str = "SWARMKIT_MESH";

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
    lb: Box<dyn LoadBalancer>,
    state: TaskState,
    stopping: bool,
}

pub struct Agent {
    paths: ClusterPaths,
    client: ManagerClient,
    node: NetNs,
    driver: Driver,
    host_ports: netcore::hostport::HostPorts,
    resolver: std::sync::Arc<Resolver>,
    dataplane: dataplane::Dataplane,
    tasks: HashMap<String, RunningTask>,
    reports: BTreeMap<String, TaskReport>,
    /// Tasks that ran here and ended. A task ID never runs twice: replacements are new tasks
    /// the manager creates, so the history in `service ps` tells the truth.
    finished: HashSet<String>,
    events: mpsc::UnboundedSender<Event>,
    logs: logs::LogSink,
}

async fn register(client: &ManagerClient, req: &RegisterRequest) -> anyhow::Result<String> {
    // Several request timeouts long: a stalled connection (see ManagerClient::call) costs
    // one attempt, not the agent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match client
            .post::<_, RegisterResponse>(&format!("{PREFIX}/register"), req)
            .await
        {
            Ok(r) => return Ok(r.node_id),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).context("registering with the manager");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
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
        let start = std::time::Instant::now();
        while !std::path::Path::new(ESP_MODULES_DONE).exists() {
            if start.elapsed() > ESP_MODULES_WAIT {
                tracing::warn!(
                    "{ESP_MODULES_DONE} did not appear within {ESP_MODULES_WAIT:?}; probing anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
    let paths = ClusterPaths::new(cluster);
    // A namespace of the node's own is the cluster's and goes with it; on a whole machine
    // ("self") what the agent changes there is journaled, for `cluster down` to undo.
    let (node, journal) = match std::env::var(ENV_NODE_NS).as_deref() {
        Ok("self") => (
            NetNs::of_pid(std::process::id())?,
            Some(std::sync::Arc::new(netcore::undo::Journal::new(
                paths.host_journal(),
            ))),
        ),
        _ => (NetNs::open(&paths.node_ns(hostname))?, None),
    };
    let vtep: Ipv4Addr = std::env::var(ENV_NODE_ADDR)
        .context("SWARMKIT_NODE_ADDR is not set")?
        .parse()
        .context("SWARMKIT_NODE_ADDR is not an IPv4 address")?;
    let driver = match std::env::var(ENV_LB).ok().filter(|s| !s.is_empty()) {
        Some(d) => d.parse::<Driver>().map_err(|e| anyhow::anyhow!("{e}"))?,
        None => lb::probe(),
    };
    let mesh = match std::env::var(ENV_MESH).ok().filter(|s| !s.is_empty()) {
        Some(m) => m
            .parse::<MeshLayout>()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => MeshLayout::Sandbox,
    };
    // Balancing in the node is what makes `ipvsadm -Ln` on the node show the mesh; with the
    // nftables driver nothing is gained by leaving Docker's layout.
    let mesh = if driver == Driver::Ipvs {
        mesh
    } else {
        MeshLayout::Sandbox
    };
    let client = match std::env::var(crate::client::ENV_MANAGER_TCP) {
        Ok(addr) => ManagerClient::tcp(&addr),
        Err(_) => ManagerClient::new(&paths.manager_socket()),
    };
    let req = RegisterRequest {
        hostname: hostname.to_string(),
        addr: vtep,
        lb_driver: driver.to_string(),
        mesh: mesh.to_string(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        ipsec_missing: Some(probe_ipsec(&node).await),
    };
    let node_id = register(&client, &req).await?;
    tracing::info!(node_id, hostname, %driver, %mesh, "registered");

    let (plan_tx, mut plan_rx) = watch::channel::<Option<NodePlan>>(None);
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
        .with_journal(journal.clone()),
        client,
        host_ports: netcore::hostport::HostPorts::new(
            node.clone(),
            &paths.nft_table("hostports"),
            journal,
        ),
        paths,
        node,
        driver,
        resolver: Resolver::new(),
        tasks: HashMap::new(),
        reports: BTreeMap::new(),
        finished: HashSet::new(),
        events: events_tx,
        logs,
    };
    // Wakes the loop for tasks whose restart back-off ends later; otherwise idle.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_acked = None;
    // A failed apply (say, a netlink call refused under load) is retried on the next tick,
    // not only when the next plan arrives.
    let mut retry = false;
    loop {
        let mut woke_by_tick = false;
        tokio::select! {
            changed = plan_rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("plan channel closed");
                }
            }
            Some(ev) = events_rx.recv() => agent.on_event(ev),
            _ = tick.tick() => woke_by_tick = true,
        }
        while let Ok(ev) = events_rx.try_recv() {
            agent.on_event(ev);
        }
        let new_plan = plan_rx.has_changed().unwrap_or(false);
        let Some(plan) = plan_rx.borrow_and_update().clone() else {
            continue;
        };
        let now = chrono::Utc::now();
        let due = plan.tasks.iter().any(|t| {
            t.start_after.is_some_and(|at| at <= now)
                && !agent.tasks.contains_key(&t.id)
                && !agent.finished.contains(&t.id)
        });
        if woke_by_tick && !new_plan && !due && !retry && agent.reports.is_empty() {
            continue;
        }
        let node_id = plan.node_id.clone();
        let started = std::time::Instant::now();
        let applied = match agent.reconcile(&plan).await {
            Ok(()) => {
                tracing::debug!(version = plan.version, took = ?started.elapsed(), "plan applied");
                retry = false;
                Some(plan.version)
            }
            Err(e) => {
                tracing::warn!("applying plan {}: {e:#}", plan.version);
                retry = true;
                None
            }
        };
        if (!agent.reports.is_empty() || applied != last_acked)
            && agent.send_report(&node_id, applied).await
        {
            last_acked = applied;
        }
    }
}

async fn poll_plans(
    client: ManagerClient,
    mut node_id: String,
    req: RegisterRequest,
    tx: watch::Sender<Option<NodePlan>>,
) {
    let mut epoch: Option<u64> = None;
    loop {
        let uri = match epoch {
            Some(e) => format!("{PREFIX}/{node_id}/plan?after={e}"),
            None => format!("{PREFIX}/{node_id}/plan"),
        };
        match client.get::<PlanResponse>(&uri).await {
            Ok(r) => {
                epoch = Some(r.epoch);
                tx.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&r.plan) {
                        false
                    } else {
                        *cur = Some(r.plan);
                        true
                    }
                });
            }
            Err(ClientError::Status { status, .. }) if status == 404 => {
                if let Ok(id) = register(&client, &req).await {
                    node_id = id;
                }
                epoch = None;
            }
            Err(e @ ClientError::Timeout { .. }) => {
                // A request nobody answered (not a manager that is away) is worth seeing.
                tracing::warn!("plan poll: {e}; polling again");
                epoch = None;
            }
            Err(e) => {
                // The dataplane keeps serving while the manager is away.
                tracing::debug!("plan poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                epoch = None;
            }
        }
    }
}

impl Agent {
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
    async fn send_report(&mut self, node_id: &str, applied: Option<u64>) -> bool {
        let report = Report {
            applied_version: applied,
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
        let RunningTask { ns, dns, lb, .. } = t;
        // Sockets and handles keep a namespace alive: release them before its name.
        drop(dns);
        drop(lb);
        let name = ns.name().to_string();
        drop(ns);
        if let Err(e) = NetNs::delete(&name) {
            tracing::warn!("removing {name}: {e}");
        }
    }

    async fn reconcile(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
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
            plan.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
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
        for t in self.tasks.values_mut().filter(|t| !t.stopping) {
            let services = dataplane::task_services(plan, &t.plan);
            tokio::task::block_in_place(|| t.lb.apply(&services))
                .with_context(|| format!("load balancing for {}", t.plan.name))?;
            self.resolver
                .set_view(&t.plan.id, dataplane::task_view(plan, &t.plan));
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
        let lb = lb::new(self.driver, ns.clone());
        let argv = match (crate::images::resolve(&t.image), t.args.is_empty()) {
            (Some(b), true) => vec![
                std::env::current_exe()?.to_string_lossy().into_owned(),
                "__image".to_string(),
                b.name().to_string(),
            ],
            _ => t.args.clone(),
        };
        let dir = self.paths.task_dir(&t.id);
        let mut child = process::spawn(t, &ns, &dir, &self.paths.name, &argv)?;
        self.logs.capture(&t.id, &mut child);
        let pid = child.id();
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
                lb,
                state: TaskState::Starting,
                stopping: false,
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
            Some(pid) => {
                let pgid = nix::unistd::Pid::from_raw(-(pid as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                });
            }
            None => {
                let _ = self.events.send(Event::Exited {
                    id: id.to_string(),
                    code: None,
                });
            }
        }
    }
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
    let mut warned = false;
    let mut pause = Duration::from_millis(2);
    loop {
        let ns2 = ns.clone();
        let ok = tokio::task::spawn_blocking(move || {
            ns2.run(|| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if !warned && started.elapsed() > READY_WARN_AFTER {
            warned = true;
            tracing::warn!(
                "nothing listens on port {port} after {READY_WARN_AFTER:?}; still waiting"
            );
        }
        let alive = pid.is_some_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
        });
        if !alive {
            return Err(format!("the task stopped before port {port} answered"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
