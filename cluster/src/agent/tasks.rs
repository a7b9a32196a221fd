//! The node's tasks: starting each in namespaces of its own (attached to its networks, with
//! its DNS server and, for host-mode ports, a link to the node), watching it become ready and
//! exit, stopping it, adopting what an earlier agent left running, and what to report of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use netcore::dns::{Resolver, ServeHandle};
use netcore::hostport::HostPort;
use netcore::lb;
use netcore::netns::NetNs;
use tokio::sync::mpsc;

use super::adopt;
use super::cgroup;
use super::dataplane::Dataplane;
use super::health;
use super::images::{Images, Prepared};
use super::logs::{self, LogSink};
use super::process::{self, MountTemplate};
use super::spawner::{Spawned, Spawner};
use crate::model::TaskState;
use crate::paths::ClusterPaths;
use crate::plan::{NodePlan, TaskPlan};
use crate::protocol::TaskReport;
use crate::wait::{self, Check, Pace, Waited};

/// How long a task may take to start listening before the agent says so in its log; it keeps
/// checking after that, since a loaded machine can be that slow.
const READY_WARN_AFTER: Duration = Duration::from_secs(10);

pub use super::event::Event;

struct RunningTask {
    plan: TaskPlan,
    /// Its leg on the node's gateway bridge (see [`leg_addr`]); none on internal networks.
    leg: Option<u32>,
    ns: NetNs,
    pid: Option<u32>,
    dns: Option<ServeHandle>,
    state: TaskState,
    stopping: bool,
    /// Started by an earlier agent: not our child, so its exit status is unknown.
    adopted: bool,
    /// Why its healthcheck failed it: it is stopped, and reported failed, not shut down.
    unhealthy: Option<String>,
    /// A registry image's task: its container's writable layer, removed when it ends.
    layer: Option<PathBuf>,
}

pub struct Tasks {
    paths: ClusterPaths,
    hostname: String,
    node: NetNs,
    resolver: Arc<Resolver>,
    running: HashMap<String, RunningTask>,
    reports: BTreeMap<String, TaskReport>,
    /// Tasks that ran here and ended. A task ID never runs twice: replacements are new tasks
    /// the manager creates, so the history in `service ps` tells the truth.
    finished: HashSet<String>,
    events: mpsc::UnboundedSender<Event>,
    logs: LogSink,
    /// None where it could not be made: tasks then copy the agent's own mount table.
    mounts: Option<MountTemplate>,
    /// What starts task processes (registry images' containers excepted, which their runtime
    /// starts).
    spawner: Spawner,
    /// Lists the node's resolvers, read at each task's start as dockerd reads them.
    resolv_conf: PathBuf,
    /// None where the node's image store could not be opened (said in the agent's log).
    images: Option<Images>,
    /// Tasks reported preparing (waiting for their image).
    preparing: HashSet<String>,
}

/// A task's process as it was started: by the spawner, or by a container runtime the agent
/// started.
enum Started {
    Process(Spawned),
    Container(tokio::process::Child),
}

impl Tasks {
    pub fn new(
        paths: ClusterPaths,
        hostname: &str,
        node: NetNs,
        events: mpsc::UnboundedSender<Event>,
        logs: LogSink,
        resolv_conf: PathBuf,
    ) -> anyhow::Result<Tasks> {
        let spawner = Spawner::start(&paths.name).context("starting the agent's task spawner")?;
        let images = Images::open(paths.node_images(hostname), events.clone())
            .inspect_err(|e| {
                tracing::warn!("the node's image store: {e}; registry images cannot run here")
            })
            .ok();
        Ok(Tasks {
            images,
            preparing: HashSet::new(),
            paths,
            hostname: hostname.to_string(),
            node,
            resolver: Resolver::new(),
            running: HashMap::new(),
            reports: BTreeMap::new(),
            finished: HashSet::new(),
            events,
            logs,
            mounts: MountTemplate::new()
                .inspect_err(|e| {
                    tracing::warn!("tasks will copy the node's whole mount table: {e}")
                })
                .ok(),
            spawner,
            resolv_conf,
        })
    }

    /// Where a task's embedded DNS forwards the names it does not own: its `--dns`, else the
    /// node's resolvers; nowhere for a task on internal networks only, which has no way out.
    fn upstreams(&self, t: &TaskPlan) -> Vec<std::net::SocketAddr> {
        if t.internal {
            Vec::new()
        } else if t.dns_servers.is_empty() {
            netcore::dns::node_upstreams(&self.resolv_conf)
        } else {
            t.dns_servers.iter().map(|a| (*a, 53).into()).collect()
        }
    }

    /// The resolver every task's DNS server answers from.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The plans of the tasks that run here and are not being stopped.
    pub fn live(&self) -> impl Iterator<Item = &TaskPlan> {
        self.running
            .values()
            .filter(|t| !t.stopping)
            .map(|t| &t.plan)
    }

    /// When the earliest task waiting out a restart back-off may start.
    pub fn next_start(&self, plan: &NodePlan) -> Option<tokio::time::Instant> {
        let now = chrono::Utc::now();
        plan.tasks
            .values()
            .filter(|t| !self.running.contains_key(&t.id) && !self.finished.contains(&t.id))
            .filter_map(|t| t.start_after)
            .filter(|at| *at > now)
            .min()
            .map(|at| {
                let wait = (at - now).to_std().unwrap_or_default();
                tokio::time::Instant::now() + wait + Duration::from_millis(1)
            })
    }

    fn report(&mut self, id: &str, state: TaskState, message: &str, err: Option<String>) {
        let pid = self.running.get(id).and_then(|t| t.pid);
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

    /// What the tasks did since the manager last took a report.
    pub fn reports(&self) -> Vec<TaskReport> {
        self.reports.values().cloned().collect()
    }

    pub fn has_reports(&self) -> bool {
        !self.reports.is_empty()
    }

    pub fn clear_reports(&mut self) {
        self.reports.clear();
    }

    /// Takes what a watcher saw; true when the plan should be applied again (an image the
    /// node was pulling arrived, or failed).
    pub fn on_event(&mut self, ev: Event) -> bool {
        match ev {
            Event::Exec {
                task_id,
                argv,
                env,
                reply,
            } => {
                let made = match self.running.get(&task_id) {
                    Some(t) if !t.stopping => match t.pid {
                        Some(pid) => process::probe(&self.paths.name, &t.plan, pid, &argv, &env)
                            .map_err(|e| format!("exec in {}: {e}", t.plan.name)),
                        None => Err(format!("{} has no process", t.plan.name)),
                    },
                    _ => Err(format!("task {task_id} is not running on this node")),
                };
                let _ = reply.send(made);
                return false;
            }
            Event::Pulled { image, result } => {
                if let Some(images) = &mut self.images {
                    images.on_pulled(image, result);
                }
                return true;
            }
            Event::Ready { id } => {
                if let Some(t) = self.running.get_mut(&id)
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
            Event::Unhealthy { id, why } => {
                let Some(t) = self.running.get_mut(&id) else {
                    return false;
                };
                if t.stopping {
                    return false;
                }
                // Failed now, before it is stopped: it leaves the load balancers at once.
                let message = format!("task: unhealthy container: {why}");
                t.state = TaskState::Failed;
                t.unhealthy = Some(message.clone());
                self.report(&id, TaskState::Failed, &message, Some(message.clone()));
                self.stop(&id);
            }
            Event::Exited { id, code } => {
                let Some(t) = self.running.remove(&id) else {
                    return false;
                };
                let oom = cgroup::release(&self.paths.name, &id, &t.plan.limits);
                let (state, message, err) = if let Some(why) = &t.unhealthy {
                    (TaskState::Failed, why.clone(), Some(why.clone()))
                } else if t.stopping {
                    (TaskState::Shutdown, "shutdown".to_string(), None)
                } else if let Some(why) = oom.filter(|_| code != Some(0)) {
                    (TaskState::Failed, why.clone(), Some(why))
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
        false
    }

    fn cleanup(&mut self, t: RunningTask) {
        if let Some(layer) = &t.layer {
            let (cluster, id, layer) = (self.paths.name.clone(), t.plan.id.clone(), layer.clone());
            // `crun run` forgets its container as it exits, unless it was killed first.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = process::runtime(&cluster).and_then(|r| r.delete(&id)) {
                    tracing::warn!(task = id, "forgetting its container: {e}");
                }
                if let Err(e) = std::fs::remove_dir_all(&layer) {
                    tracing::warn!(task = id, "removing its container's layer: {e}");
                }
            });
        }
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

    /// Stops the tasks the plan no longer has and starts (or adopts) the ones it has that do
    /// not run here yet; a task that cannot start is reported rejected.
    pub async fn converge(&mut self, plan: &NodePlan, dataplane: &Dataplane) {
        let wanted: HashMap<&str, &TaskPlan> =
            plan.tasks.values().map(|t| (t.id.as_str(), &**t)).collect();
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.stop(&id);
        }
        self.finished.retain(|id| wanted.contains_key(id.as_str()));
        self.preparing.retain(|id| wanted.contains_key(id.as_str()));
        if let Some(images) = &mut self.images {
            images.retain(&wanted.keys().copied().collect());
        }
        let now = chrono::Utc::now();
        for t in plan.tasks.values() {
            if self.running.contains_key(&t.id)
                || self.finished.contains(&t.id)
                || t.start_after.is_some_and(|at| at > now)
            {
                continue;
            }
            match self.adopt(t) {
                Adoption::Adopted => continue,
                Adoption::Ended => {
                    self.finished.insert(t.id.clone());
                    let why = cgroup::release(&self.paths.name, &t.id, &t.limits)
                        .unwrap_or_else(|| "task: exited while its agent was down".to_string());
                    self.report(&t.id, TaskState::Failed, &why, Some(why.clone()));
                    continue;
                }
                Adoption::Nothing => {}
            }
            let image = if process::runs_image(t) {
                match self.images.as_mut().map(|i| i.prepare(t)) {
                    Some(Prepared::Ready(image)) => Some(image),
                    Some(Prepared::Pulling) => {
                        if self.preparing.insert(t.id.clone()) {
                            self.report(&t.id, TaskState::Preparing, "preparing", None);
                        }
                        continue;
                    }
                    Some(Prepared::Failed(why)) => {
                        self.finished.insert(t.id.clone());
                        self.report(&t.id, TaskState::Rejected, "preparing", Some(why));
                        continue;
                    }
                    None => {
                        self.finished.insert(t.id.clone());
                        let why = "this node has no image store: see its agent's log";
                        self.report(&t.id, TaskState::Rejected, "preparing", Some(why.into()));
                        continue;
                    }
                }
            } else {
                None
            };
            let task_started = std::time::Instant::now();
            let result = self.start(t, dataplane, image).await;
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
            .and_then(|ns| {
                let upstreams = self.upstreams(t);
                Ok((self.resolver.serve_in(&t.id, &ns, upstreams)?, ns))
            });
        let (dns, ns) = match adopted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("adopting {}: {e:#}; it is stopped", t.name);
                kill_group(
                    rec.pid,
                    Duration::from_millis(rec.stop_grace_ms),
                    &rec.stop_signal,
                );
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
        self.running.insert(
            t.id.clone(),
            RunningTask {
                plan: t.clone(),
                leg: rec.leg,
                ns: ns.clone(),
                pid: Some(rec.pid),
                dns: Some(dns),
                state: TaskState::Starting,
                stopping: false,
                adopted: true,
                unhealthy: None,
                layer: process::runs_image(t)
                    .then(|| self.paths.node_containers(&self.hostname).join(&t.id)),
            },
        );
        self.watch_readiness(t, t.health.clone(), ns, Some(pid), port);
        Adoption::Adopted
    }

    /// Stops what an earlier agent left running that the plan no longer wants (its node was
    /// down meanwhile and the tasks were replaced elsewhere), so nothing runs twice.
    pub fn sweep(&mut self, plan: &NodePlan) {
        let wanted: HashSet<&str> = plan.tasks.values().map(|t| t.id.as_str()).collect();
        let tasks_dir = self.paths.run_dir().join("tasks");
        for (id, dir, rec) in adopt::records(&tasks_dir, &self.hostname) {
            if wanted.contains(id.as_str()) || self.running.contains_key(&id) {
                continue;
            }
            if adopt::alive(&rec) {
                tracing::info!(
                    task = id,
                    pid = rec.pid,
                    "stopping a task the plan no longer has"
                );
                kill_group(
                    rec.pid,
                    Duration::from_millis(rec.stop_grace_ms),
                    &rec.stop_signal,
                );
            }
            if let Err(e) = NetNs::delete(&self.paths.task_ns(&id)) {
                tracing::debug!("removing the namespace of {id}: {e}");
            }
            cgroup::remove(
                &self.paths.name,
                &id,
                Duration::from_millis(rec.stop_grace_ms),
            );
            adopt::forget(&dir);
        }
    }

    async fn start(
        &mut self,
        t: &TaskPlan,
        dataplane: &Dataplane,
        image: Option<Arc<oci::Image>>,
    ) -> anyhow::Result<()> {
        let runtime = match image {
            Some(_) => Some(process::runtime(&self.paths.name)?),
            None => None,
        };
        let ns = NetNs::create_untouched(&self.paths.task_ns(&t.id))?;
        // As docker's containers: a task that is not root may still serve on port 80. Written
        // only where it changes something: any sysctl a task writes costs more the more
        // namespaces the host has (see NetNs::create_untouched).
        let image_user = image.as_deref().map(|i| i.config.user.as_str());
        if !binds_low_ports_anyway(&t.user, image_user, &t.cap_drop) {
            ns.set_sysctl("net/ipv4/ip_unprivileged_port_start", "0")?;
        }
        for (key, value) in &t.sysctls {
            ns.set_sysctl(&key.replace('.', "/"), value)
                .with_context(|| format!("--sysctl {key}={value}"))?;
        }
        netcore::link::loopback_up(&ns).await?;
        for a in &t.attachments {
            dataplane.attach(&a.network_id, &ns, a).await?;
        }
        // As docker's containers: a leg on docker_gwbridge, the default route out of the
        // node through it, and the address host-mode published ports go to.
        let leg = if t.internal {
            None
        } else {
            let used: HashSet<u32> = self.running.values().filter_map(|r| r.leg).collect();
            let i = (0..LEGS)
                .find(|i| !used.contains(i))
                .context("no free address left on the node's gateway bridge")?;
            let port = format!("gw{}", &t.id[..8.min(t.id.len())]);
            let ifname = format!("eth{}", t.attachments.len());
            dataplane
                .gateway()
                .plug(&ns, &port, &ifname, leg_addr(i), true)
                .await
                .context("the task's leg on the gateway bridge")?;
            Some(i)
        };
        if !t.host_ports.is_empty() {
            let Some(i) = leg else {
                anyhow::bail!(
                    "host-mode published ports need a way into the task, and every network \
                     it is on is --internal"
                );
            };
            // The node's localhost reaches the ports through the bridge alone: loopback
            // sources may leave by it, by no other (see netcore::hostport).
            let bridge = netcore::gateway::bridge_of(leg_addr(i));
            self.node
                .set_sysctl(&format!("net/ipv4/conf/{bridge}/route_localnet"), "1")?;
        }
        let dns = self.resolver.serve_in(&t.id, &ns, self.upstreams(t))?;
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
        let layer = image
            .as_ref()
            .map(|_| self.paths.node_containers(&self.hostname).join(&t.id));
        let volumes = self.paths.node_volumes(&self.hostname);
        let started = match (&image, &runtime, &layer) {
            (Some(image), Some(runtime), Some(layer)) => {
                Started::Container(process::spawn_container(
                    t,
                    &ns,
                    self.mounts.as_ref(),
                    &dir,
                    &self.paths.name,
                    &process::Container {
                        runtime,
                        image,
                        layer,
                        volumes: &volumes,
                    },
                    outputs,
                )?)
            }
            _ => Started::Process(self.spawner.spawn(
                &process::Launch {
                    task: t,
                    net: ns.fd(),
                    mounts: self.mounts.as_ref().map(|m| m.as_fd()),
                    dir: &dir,
                    cluster: &self.paths.name,
                    argv: &argv,
                },
                outputs,
            )?),
        };
        let pid = match &started {
            Started::Container(child) => child.id(),
            Started::Process(spawned) => Some(spawned.pid),
        };
        if let Some(p) = pid {
            let rec = adopt::Record {
                node: self.hostname.clone(),
                pid: p,
                start_time: adopt::start_time(p).unwrap_or_default(),
                leg,
                stop_grace_ms: t.stop_grace_ms,
                stop_signal: t.stop_signal.clone(),
            };
            if let Err(e) = adopt::save(&dir, &rec) {
                tracing::warn!("recording {} for a restarted agent: {e}", t.name);
            }
        }
        let id = t.id.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let code = match started {
                Started::Container(mut child) => child.wait().await.ok().and_then(|s| s.code()),
                Started::Process(spawned) => spawned.exited().await,
            };
            let _ = events.send(Event::Exited { id, code });
        });
        let port = crate::images::resolve(&t.image)
            .filter(|_| t.args.is_empty())
            .map(|b| b.port());
        self.running.insert(
            t.id.clone(),
            RunningTask {
                plan: t.clone(),
                leg,
                ns: ns.clone(),
                pid,
                dns: Some(dns),
                state: TaskState::Starting,
                stopping: false,
                adopted: false,
                unhealthy: None,
                layer,
            },
        );
        self.preparing.remove(&t.id);
        self.report(&t.id, TaskState::Starting, "starting", None);
        let health = match (&t.health, &image) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(i)) if !t.health_disabled => i.config.healthcheck.as_ref().and_then(|h| {
                crate::plan::HealthPlan::from_spec(&bollard::models::HealthConfig {
                    test: Some(h.test.clone()),
                    interval: Some(h.interval_ns),
                    timeout: Some(h.timeout_ns),
                    retries: Some(h.retries),
                    start_period: Some(h.start_period_ns),
                    ..Default::default()
                })
            }),
            _ => None,
        };
        self.watch_readiness(t, health, ns, pid, port);
        Ok(())
    }

    /// What makes a starting task running: its healthcheck's first success where it has one
    /// (which then goes on checking), else its image's port answering.
    fn watch_readiness(
        &self,
        t: &TaskPlan,
        health: Option<crate::plan::HealthPlan>,
        ns: NetNs,
        pid: Option<u32>,
        port: Option<u16>,
    ) {
        let events = self.events.clone();
        if let (Some(h), Some(pid)) = (&health, pid) {
            tokio::spawn(health::monitor(
                self.paths.name.clone(),
                t.clone(),
                pid,
                h.clone(),
                events,
            ));
            return;
        }
        let id = t.id.clone();
        tokio::spawn(async move {
            let ev = match wait_listening(ns, pid, port).await {
                Ok(()) => Event::Ready { id },
                Err(err) => Event::NotReady { id, err },
            };
            let _ = events.send(ev);
        });
    }

    fn stop(&mut self, id: &str) {
        let Some(t) = self.running.get_mut(id) else {
            return;
        };
        if t.stopping {
            return;
        }
        t.stopping = true;
        let grace = Duration::from_millis(t.plan.stop_grace_ms);
        match t.pid {
            Some(pid) => kill_group(pid, grace, &t.plan.stop_signal),
            None => {
                let _ = self.events.send(Event::Exited {
                    id: id.to_string(),
                    code: None,
                });
            }
        }
    }

    /// The host-mode ports the running tasks publish, each towards its task's leg.
    pub fn host_ports(&self) -> Vec<HostPort> {
        self.running
            .values()
            .filter(|t| !t.stopping)
            .filter_map(|t| t.leg.map(|i| (t, i)))
            .flat_map(|(t, i)| {
                t.plan.host_ports.iter().map(move |p| HostPort {
                    proto: match p.protocol {
                        crate::model::Protocol::Tcp => lb::Protocol::Tcp,
                        crate::model::Protocol::Udp => lb::Protocol::Udp,
                    },
                    port: p.published,
                    addr: leg_addr(i),
                    target: p.target,
                })
            })
            .collect()
    }
}

enum Adoption {
    Adopted,
    /// Its process ended while no agent watched it.
    Ended,
    /// No earlier agent started it.
    Nothing,
}

/// The task's stop signal (SIGTERM unless `--stop-signal` named another) to its process
/// group, SIGKILL after its stop grace period.
fn kill_group(pid: u32, grace: Duration, stop_signal: &str) {
    let pgid = nix::unistd::Pid::from_raw(-(pid as i32));
    // The manager refused a name that does not parse; an older record has none.
    let signal =
        crate::policy::stop_signal(stop_signal).unwrap_or(nix::sys::signal::Signal::SIGTERM);
    let _ = nix::sys::signal::kill(pgid, signal);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    });
}

/// Whether the task's process may bind a port under 1024 without lowering
/// `ip_unprivileged_port_start`: it runs as root (by `--user`, else its image's user) and
/// keeps CAP_NET_BIND_SERVICE.
fn binds_low_ports_anyway(user: &str, image_user: Option<&str>, cap_drop: &[String]) -> bool {
    let user = match (user, image_user) {
        ("", Some(image_user)) => image_user,
        (user, _) => user,
    };
    let root = matches!(user.split(':').next(), Some("" | "root" | "0"));
    let dropped = cap_drop.iter().any(|c| {
        let c = c.to_ascii_uppercase();
        c == "ALL" || c.trim_start_matches("CAP_") == "NET_BIND_SERVICE"
    });
    root && !dropped
}

/// How many task legs the gateway subnet holds: all of 172.18.0.0/16 after the gateway
/// (.0.1) and the ingress sandbox (.0.2), short of the hairpin address (.255.254) and the
/// broadcast address.
const LEGS: u32 = 65536 - 5;

/// The address of leg `i` on the gateway bridge.
fn leg_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(netcore::gateway::GATEWAY) + 2 + i)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_task_that_cannot_bind_low_ports_lowers_the_limit() {
        let none: &[String] = &[];
        assert!(binds_low_ports_anyway("", None, none));
        assert!(binds_low_ports_anyway("root:wheel", None, none));
        assert!(binds_low_ports_anyway("", Some("0"), none));
        assert!(
            !binds_low_ports_anyway("", Some("nginx"), none),
            "the image's user"
        );
        assert!(!binds_low_ports_anyway("1000", Some(""), none));
        assert!(
            binds_low_ports_anyway("0", Some("nginx"), none),
            "--user wins"
        );
        assert!(!binds_low_ports_anyway("", None, &["ALL".into()]));
        assert!(!binds_low_ports_anyway(
            "",
            None,
            &["cap_net_bind_service".into()]
        ));
        assert!(binds_low_ports_anyway("", None, &["NET_RAW".into()]));
    }
}
