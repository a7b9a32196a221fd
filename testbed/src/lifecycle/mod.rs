//! A cluster's life on any backend: `cluster up` (new, or resuming one that stopped), `cluster
//! down`, `cluster ls`, and running commands on nodes and in tasks. What differs by backend is
//! behind [`NodeBackend`]; this module reaches it only through the kind in the cluster's record,
//! by [`with_backend!`](crate::with_backend), and injects faults ([`inject`]) the same way.

pub mod prune;

use std::time::Duration;

use netcore::netns::NetNs;

use crate::backend::NodeBackend;
use crate::record::{backend_of, note_backend, record_up};
use crate::supervise::{self, Spec};
use crate::wait::wait_until;
use crate::{Fault, Inside, TestbedError};
use cluster::client::ManagerClient;
use cluster::paths::{ClusterPaths, validate_cluster_name};

pub use crate::record::{ClusterInfo, RegistrySettings, UpOptions, read_info, registry_of};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(
        "swarmkit needs root to create network namespaces and program the kernel: run it with sudo"
    )]
    NotRoot,
    /// The message says what a name may be.
    #[error("{0}")]
    InvalidName(String),
    #[error("invalid --data-path-port {0}: give a port in 1024-49151 (the default is 4789)")]
    InvalidDataPathPort(u16),
    #[error("invalid --key-rotation {}s: give at least 10s (the default is 12h)", .0.as_secs())]
    InvalidKeyRotation(Duration),
    #[error("invalid --cert-expiry {}s: give at least 10s (the default is 2160h, 90 days)", .0.as_secs())]
    InvalidCertExpiry(Duration),
    #[error("invalid --heartbeat-period {}ms: give 50ms to 60s (the default is 500ms)", .0.as_millis())]
    InvalidHeartbeat(Duration),
    #[error("invalid --heartbeat-misses 0: give at least 1 (the default is 3)")]
    InvalidHeartbeatMisses,
    #[error("no cluster named {0:?}: see swarmkit cluster ls")]
    NoCluster(String),
    #[error("cluster {0:?} is already up: use it, or remove it first (swarmkit cluster down {0})")]
    AlreadyUp(String),
    #[error(
        "cluster {name:?} is recorded in {} but nothing of it runs, nor is there a record of how it ran (was the host rebooted?): remove it with swarmkit cluster down {name}",
        record.display()
    )]
    NothingRuns {
        name: String,
        record: std::path::PathBuf,
    },
    #[error("cluster {name} was not fully removed:\n  {}", problems.join("\n  "))]
    NotFullyRemoved { name: String, problems: Vec<String> },
    #[error("no running task {task:?} in cluster {cluster:?}: see swarmkit service ps SERVICE")]
    NoTask { cluster: String, task: String },
    #[error("task {0} has no process yet")]
    TaskNotStarted(String),
    #[error("task {task} is on node {node}, which is gone")]
    TaskNodeGone { task: String, node: String },
    #[error("reading {}: {source}", path.display())]
    Record {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    #[error(transparent)]
    Client(#[from] cluster::client::ClientError),
    #[error(transparent)]
    NetNs(#[from] netcore::netns::NetNsError),
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// Runs `$body` with `$b` bound to the implementation of `$kind`: the one place that maps a
/// backend's name to its code.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, $b:ident => $body:expr) => {
        match $kind {
            $crate::Backend::Netns => {
                let $b = $crate::backend::netns::Netns;
                $body
            }
            $crate::Backend::Qemu => {
                let $b = $crate::backend::qemu::Qemu;
                $body
            }
            $crate::Backend::Ssh => {
                let $b = $crate::backend::ssh::Ssh;
                $body
            }
        }
    };
}

/// `swarmkit node kill|start|isolate|heal NODE`.
pub async fn inject(cluster: &str, node: &str, fault: Fault) -> Result<(), TestbedError> {
    let paths = ClusterPaths::new(cluster);
    let info = read_info(&paths).ok_or_else(|| TestbedError::NoCluster(cluster.to_string()))?;
    if !info.nodes.iter().any(|n| n == node) {
        return Err(TestbedError::NoNode {
            cluster: cluster.to_string(),
            node: node.to_string(),
        });
    }
    with_backend!(info.backend, b => b.fault(&paths, &info, node, fault).await)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LifecycleError {
    let what = what.into();
    move |source| LifecycleError::Io { what, source }
}

fn validate_data_path(opts: &UpOptions) -> Result<()> {
    if let Some(p) = opts.data_path_port
        && !(1024..=49151).contains(&p)
    {
        return Err(LifecycleError::InvalidDataPathPort(p));
    }
    if let Some(d) = opts.key_rotation
        && d < Duration::from_secs(10)
    {
        return Err(LifecycleError::InvalidKeyRotation(d));
    }
    if let Some(d) = opts.cert_expiry
        && d < cluster::pki::ca::MIN_CERT_EXPIRY
    {
        return Err(LifecycleError::InvalidCertExpiry(d));
    }
    if let Some(d) = opts.heartbeat
        && !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&d)
    {
        return Err(LifecycleError::InvalidHeartbeat(d));
    }
    if opts.heartbeat_misses == Some(0) {
        return Err(LifecycleError::InvalidHeartbeatMisses);
    }
    Ok(())
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LifecycleError::NotRoot);
    }
    Ok(())
}

fn manager_running(paths: &ClusterPaths) -> bool {
    paths
        .manager_sockets()
        .iter()
        .any(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
}

pub async fn up(opts: &UpOptions) -> Result<ClusterInfo> {
    require_root()?;
    validate_cluster_name(&opts.name).map_err(LifecycleError::InvalidName)?;
    validate_data_path(opts)?;
    with_backend!(opts.backend, b => b.check(opts))?;
    let paths = ClusterPaths::new(&opts.name);
    if let Some(info) = read_info(&paths) {
        return resume(info, &paths).await;
    }
    if paths.run_dir().exists() || paths.state_dir().exists() {
        // Leftovers of a `cluster up` that never finished: nothing was ever recorded as up.
        down(&opts.name).await?;
    }
    // Owner-only from the start: the state directory holds the store (network keys among
    // it), the run directory the manager's socket, logs and pid files.
    for dir in [paths.run_dir(), paths.state_dir()] {
        cluster::paths::create_private_dir(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    note_backend(&paths, opts.backend)?;
    let result = match with_backend!(opts.backend, b => b.up(opts, &paths).await) {
        Ok(nodes) => start_docker_proxy(&paths)
            .and_then(|()| record_up(opts, &paths, nodes))
            .map_err(LifecycleError::from),
        Err(e) => Err(e.into()),
    };
    if result.is_err() {
        let _ = down(&opts.name).await;
    }
    result
}

/// With several managers, the cluster's one docker socket (see crate::docker_proxy), once
/// it listens: `cluster env` points docker at it as soon as `cluster up` returns.
fn start_docker_proxy(paths: &ClusterPaths) -> crate::Result<()> {
    if !paths.replicated() {
        return Ok(());
    }
    supervise::ensure(paths, &Spec::host("docker", &["__docker_proxy"], &[]))?;
    let socket = paths.docker_proxy_socket();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if std::time::Instant::now() > until {
            return Err(TestbedError::Remote {
                node: "docker".into(),
                message: format!(
                    "the docker socket {} did not appear within 5s; see {}",
                    socket.display(),
                    paths.log_file("docker").display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `cluster up` on a cluster that is recorded as up: starts whatever of it is not running (the
/// supervisor, which restarts the manager and the agents; nodes killed on purpose stay down)
/// and waits until it answers. Its state is never touched.
async fn resume(info: ClusterInfo, paths: &ClusterPaths) -> Result<ClusterInfo> {
    let specs = supervise::all(paths);
    if specs.is_empty() {
        return Err(LifecycleError::NothingRuns {
            name: info.name,
            record: paths.info_file(),
        });
    }
    let down: Vec<&Spec> = specs
        .iter()
        .filter(|s| {
            supervise::running(paths, s).is_none()
                && !supervise::killed_marker(paths, &s.name).exists()
        })
        .collect();
    if down.is_empty() && supervise::supervisor(paths).is_some() {
        return Err(LifecycleError::AlreadyUp(info.name));
    }
    for spec in down {
        supervise::ensure(paths, spec)?;
    }
    supervise::ensure_supervisor(paths)?;
    supervise::wait_manager(paths).await?;
    supervise::write_join_token(paths).await?;
    let client = ManagerClient::of_cluster(paths);
    for node in &info.nodes {
        if supervise::killed_marker(paths, node).exists() {
            continue;
        }
        wait_until(
            &format!("{node} to be ready"),
            RESUME_TIMEOUT,
            &paths.run_dir(),
            || crate::hostname_ready(&client, node),
        )
        .await
        .map_err(TestbedError::from)?;
    }
    Ok(ClusterInfo {
        running: true,
        ..info
    })
}

/// Agents that were down reconnect within their retry back-off.
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn down(name: &str) -> Result<()> {
    require_root()?;
    validate_cluster_name(name).map_err(LifecycleError::InvalidName)?;
    let paths = ClusterPaths::new(name);
    let prefix = paths.ns_prefix();
    let known = paths.info_file().exists() || paths.run_dir().exists();
    let namespaces = NetNs::list_with_prefix(&prefix);
    let procs = crate::procs::owned(name);
    if !known && namespaces.is_empty() && procs.is_empty() {
        return Err(LifecycleError::NoCluster(name.to_string()));
    }
    // The supervisor first, or it would restart what is being stopped; then the cluster's
    // processes here, before the remote side: a live `__vmhost` would see its nodes' relays
    // end and start their agents again while they are being cleaned.
    if let Some(pid) = supervise::supervisor(&paths) {
        crate::procs::kill_all(&[pid]);
    }
    let mut errors = Vec::new();
    if !crate::procs::kill_all(&procs) {
        errors.push(format!(
            "processes {procs:?} did not die within 5s of SIGKILL"
        ));
    }
    // Its tasks' cgroups on this machine (an ssh host's own `cluster down` does its own).
    cluster::agent::remove_cluster_cgroups(name);
    // What the backend made beyond this host's cluster-named objects, while the records
    // that lead to it still exist.
    if let Some(kind) = backend_of(&paths) {
        errors.extend(with_backend!(kind, b => b.down(&paths).await));
    }
    // On a host whose own namespace an agent used (an ssh node), its tables and sysctls; the
    // journal is only ever written there, never for namespaces the cluster made.
    let mut journal_kept = false;
    if paths.host_journal().exists() {
        let here = NetNs::of_pid(std::process::id())?;
        if let Err(e) = netcore::undo::undo(&paths.host_journal(), &here).await {
            // The run dir stays with the journal in it: that is what a retry undoes.
            journal_kept = paths.host_journal().exists();
            errors.push(if journal_kept {
                format!("{e}: `swarmkit cluster down {name}` on this host")
            } else {
                e.to_string()
            });
        }
    }
    for ns in NetNs::list_with_prefix(&prefix) {
        if let Err(e) = NetNs::delete(&ns) {
            errors.push(e.to_string());
        }
    }
    for dir in [paths.run_dir(), paths.state_dir()] {
        if journal_kept && dir == paths.run_dir() {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("{}: {e}", dir.display()));
        }
    }
    if !errors.is_empty() {
        return Err(LifecycleError::NotFullyRemoved {
            name: name.to_string(),
            problems: errors,
        });
    }
    Ok(())
}

pub fn list() -> Result<Vec<ClusterInfo>> {
    let Ok(dir) = std::fs::read_dir(cluster::paths::STATE_ROOT) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let paths = ClusterPaths::new(&name);
        let Ok(bytes) = std::fs::read(paths.info_file()) else {
            continue;
        };
        let mut info: ClusterInfo =
            serde_json::from_slice(&bytes).map_err(|source| LifecycleError::Record {
                path: paths.info_file(),
                source,
            })?;
        info.running = manager_running(&paths);
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Runs argv on a node, in its own namespaces or in one of its sandboxes; returns its exit
/// code.
pub async fn node_exec(
    cluster: &str,
    node: &str,
    sandbox: Option<&str>,
    argv: &[String],
) -> Result<i32> {
    require_root()?;
    let inside = match sandbox {
        Some(name)
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) =>
        {
            return Err(TestbedError::BadSandboxName(name.to_string()).into());
        }
        Some(name) => Inside::Sandbox(name),
        None => Inside::Node,
    };
    let (paths, info) = recorded(cluster)?;
    Ok(with_backend!(info.backend, b => b.exec(&paths, node, inside, argv).await)?)
}

/// The cluster's paths and record; a cluster without a record is not (yet) up.
fn recorded(cluster: &str) -> Result<(ClusterPaths, ClusterInfo), TestbedError> {
    let paths = ClusterPaths::new(cluster);
    let info = read_info(&paths).ok_or_else(|| TestbedError::NoCluster(cluster.to_string()))?;
    Ok((paths, info))
}

/// Runs argv inside a task's namespaces (net, uts, mnt), from its node; `task` is an ID, ID
/// prefix or task name like `search.1`. Returns its exit code.
pub async fn task_exec(cluster: &str, task: &str, argv: &[String]) -> Result<i32> {
    require_root()?;
    let (paths, info) = recorded(cluster)?;
    let client = ManagerClient::of_cluster(&paths);
    let tasks: Vec<serde_json::Value> = client.get("/tasks").await?;
    let services: Vec<bollard::models::Service> = client.get("/services").await?;
    let name_of = |t: &serde_json::Value| {
        let sid = t["ServiceID"].as_str().unwrap_or_default();
        let svc = services
            .iter()
            .find(|s| s.id.as_deref() == Some(sid))
            .and_then(|s| s.spec.as_ref()?.name.clone())
            .unwrap_or_default();
        format!("{svc}.{}", t["Slot"].as_i64().unwrap_or(0))
    };
    let found = tasks.iter().find(|t| {
        let running = t["Status"]["State"].as_str() == Some("running")
            || t["Status"]["State"].as_str() == Some("starting");
        running
            && (t["ID"].as_str().is_some_and(|id| id.starts_with(task))
                || name_of(t) == task
                || task.starts_with(&format!("{}.", name_of(t))))
    });
    let Some(t) = found else {
        return Err(LifecycleError::NoTask {
            cluster: cluster.to_string(),
            task: task.to_string(),
        });
    };
    // The pid is the one the task's node gave it: enter it from there.
    let pid = t["Status"]["ContainerStatus"]["PID"]
        .as_u64()
        .ok_or_else(|| LifecycleError::TaskNotStarted(task.to_string()))?;
    let node_id = t["NodeID"].as_str().unwrap_or_default();
    let nodes: Vec<bollard::models::Node> = client.get("/nodes").await?;
    let hostname = nodes
        .iter()
        .find(|n| n.id.as_deref() == Some(node_id))
        .and_then(|n| n.description.as_ref()?.hostname.clone())
        .ok_or_else(|| LifecycleError::TaskNodeGone {
            task: task.to_string(),
            node: node_id.to_string(),
        })?;
    Ok(with_backend!(info.backend, b => {
        b.exec(&paths, &hostname, Inside::Task(pid), argv).await
    })?)
}

/// Entry points of the daemons `cluster up` starts (hidden subcommands of the binary).
pub async fn run_manager(
    cluster: &str,
    replica: Option<&str>,
    seed: Option<&std::path::Path>,
    force_new_cluster: bool,
) -> anyhow::Result<()> {
    let paths = ClusterPaths::new(cluster);
    if let Some(path) = seed {
        return cluster::manager::Manager::seed(cluster, path);
    }
    if force_new_cluster {
        let node =
            replica.ok_or_else(|| anyhow::anyhow!("--force-new-cluster needs --replica NODE"))?;
        let dropped = crate::managers::force_new_cluster_here(&paths, node)?;
        println!("{}", serde_json::to_string(&dropped)?);
        return Ok(());
    }
    if let Some(node) = replica {
        return crate::managers::run_replica(&paths, node).await;
    }
    let m = cluster::manager::Manager::open(cluster, &paths.store())?;
    let underlay = match std::env::var(crate::backend::netns::ENV_UNDERLAY_LISTEN) {
        Ok(_) => Some(crate::backend::netns::underlay_listener(&paths)?),
        Err(_) => None,
    };
    cluster::manager::serve(m, &paths.manager_socket(), underlay).await
}

pub async fn run_supervisor(cluster: &str) -> anyhow::Result<()> {
    let cluster = cluster.to_string();
    tokio::task::spawn_blocking(move || crate::supervise::run(&cluster)).await??;
    Ok(())
}

pub async fn run_vmhost(cluster: &str) -> anyhow::Result<()> {
    crate::backend::machine::run_host(cluster).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    fn opts(backend: Backend, nodes: usize) -> UpOptions {
        UpOptions {
            managers: 1,
            name: "t".into(),
            nodes,
            backend,
            lb: None,
            inventory: None,
            data_path_port: None,
            key_rotation: None,
            heartbeat: None,
            heartbeat_misses: None,
            cert_expiry: None,
            registry: Default::default(),
        }
    }

    #[test]
    fn bad_options_are_refused_by_cause() {
        let mut o = opts(Backend::Netns, 3);
        o.data_path_port = Some(80);
        assert!(matches!(
            validate_data_path(&o),
            Err(LifecycleError::InvalidDataPathPort(80))
        ));
        o.data_path_port = None;
        o.key_rotation = Some(Duration::from_secs(1));
        assert!(matches!(
            validate_data_path(&o),
            Err(LifecycleError::InvalidKeyRotation(_))
        ));
        o.key_rotation = None;
        o.cert_expiry = Some(Duration::from_secs(9));
        assert!(matches!(
            validate_data_path(&o),
            Err(LifecycleError::InvalidCertExpiry(_))
        ));
        o.cert_expiry = None;
        // Each backend judges what it can build, before anything exists.
        let refused = |o: &UpOptions| with_backend!(o.backend, b => b.check(o));
        assert!(matches!(
            refused(&opts(Backend::Qemu, 33)),
            Err(TestbedError::InvalidNodes {
                backend: Backend::Qemu,
                given: 33,
                max: 32
            })
        ));
        assert!(matches!(
            refused(&opts(Backend::Netns, 0)),
            Err(TestbedError::InvalidNodes {
                backend: Backend::Netns,
                ..
            })
        ));
        let mut o = opts(Backend::Netns, 3);
        o.managers = 4;
        assert!(matches!(
            refused(&o),
            Err(TestbedError::InvalidManagers { given: 4, max: 3 })
        ));
        o.managers = 0;
        assert!(matches!(
            refused(&o),
            Err(TestbedError::InvalidManagers { given: 0, .. })
        ));
        let mut o = opts(Backend::Qemu, 3);
        o.managers = 3;
        assert!(refused(&o).is_ok(), "guests run managers too");
        o.managers = 4;
        assert!(matches!(
            refused(&o),
            Err(TestbedError::InvalidManagers { given: 4, max: 3 })
        ));
        assert!(matches!(
            refused(&opts(Backend::Ssh, 1)),
            Err(TestbedError::NoInventory)
        ));
        assert!(refused(&opts(Backend::Qemu, 32)).is_ok());
    }
}
