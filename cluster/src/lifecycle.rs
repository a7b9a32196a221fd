//! Bringing clusters up and down on the netns backend, and running commands inside nodes and
//! tasks. `up` builds the underlay and node namespaces over netlink while the manager starts,
//! then starts one agent per node and returns once every node is ready.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netcore::netns::{NetNs, enter_raw};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::client::ManagerClient;
use crate::paths::{ClusterPaths, OWNER_ENV, validate_cluster_name};
use crate::testbed::Backend;
use crate::testbed::supervise::{self, Spec};
use netcore::lb::Driver;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub backend: Backend,
    pub nodes: Vec<String>,
    /// The load balancer asked for at `cluster up`; None: each agent probes its kernel.
    #[serde(default)]
    pub lb: Option<Driver>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// Whether the manager answers right now.
    #[serde(default)]
    pub running: bool,
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub backend: Backend,
    /// None means each agent probes its kernel.
    pub lb: Option<Driver>,
    /// Hosts of the ssh backend (see crate::vm::inventory).
    pub inventory: Option<std::path::PathBuf>,
    /// UDP port of every network's VXLAN traffic (docker's `--data-path-port`); None: 4789.
    pub data_path_port: Option<u16>,
    /// How often encrypted networks get a new key; None: every 12 hours.
    pub key_rotation: Option<Duration>,
    /// Agents' heartbeat period (docker's `--dispatcher-heartbeat`); None: 500 ms.
    pub heartbeat: Option<Duration>,
    /// Heartbeats a node may miss before it is down; None: 3.
    pub heartbeat_misses: Option<u32>,
}

/// The environment carrying `opts`' data-path settings to a new cluster's manager.
pub(crate) fn manager_env(opts: &UpOptions) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Some(p) = opts.data_path_port {
        env.push((crate::manager::ENV_DATA_PATH_PORT, p.to_string()));
    }
    if let Some(d) = opts.key_rotation {
        env.push((
            crate::manager::ENV_KEY_ROTATION_SECS,
            d.as_secs().to_string(),
        ));
    }
    if let Some(d) = opts.heartbeat {
        env.push((crate::manager::ENV_HEARTBEAT_MS, d.as_millis().to_string()));
    }
    if let Some(n) = opts.heartbeat_misses {
        env.push((crate::manager::ENV_HEARTBEAT_MISSES, n.to_string()));
    }
    env
}

fn validate_data_path(opts: &UpOptions) -> anyhow::Result<()> {
    if let Some(p) = opts.data_path_port
        && !(1024..=49151).contains(&p)
    {
        bail!("invalid --data-path-port {p}: give a port in 1024-49151 (the default is 4789)");
    }
    if let Some(d) = opts.key_rotation
        && d < Duration::from_secs(10)
    {
        bail!(
            "invalid --key-rotation {}s: give at least 10s (the default is 12h)",
            d.as_secs()
        );
    }
    if let Some(d) = opts.heartbeat
        && !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&d)
    {
        bail!(
            "invalid --heartbeat-period {}ms: give 50ms to 60s (the default is 500ms)",
            d.as_millis()
        );
    }
    if opts.heartbeat_misses == Some(0) {
        bail!("invalid --heartbeat-misses 0: give at least 1 (the default is 3)");
    }
    Ok(())
}

pub(crate) use crate::testbed::netns::UNDERLAY_BRIDGE;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "swarmkit needs root to create network namespaces and program the kernel: run it with sudo"
        );
    }
    Ok(())
}

pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    while !check().await {
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ok(())
}

fn manager_running(paths: &ClusterPaths) -> bool {
    std::os::unix::net::UnixStream::connect(paths.manager_socket()).is_ok()
}

pub async fn up(opts: &UpOptions) -> anyhow::Result<ClusterInfo> {
    require_root()?;
    validate_cluster_name(&opts.name).map_err(anyhow::Error::msg)?;
    if !(1..=200).contains(&opts.nodes) {
        bail!("invalid --nodes {}: give 1 to 200", opts.nodes);
    }
    validate_data_path(opts)?;
    if opts.backend == Backend::Netns && opts.lb == Some(Driver::Ipvs) {
        // Namespaces share the host's kernel, so what it lacks, every node lacks.
        if netcore::lb::probe() != Driver::Ipvs {
            bail!(
                "this kernel has no IPVS (CONFIG_IP_VS), so netns nodes cannot use --lb ipvs: use --lb nftables, or the qemu backend whose guests have IPVS"
            );
        }
    }
    let paths = ClusterPaths::new(&opts.name);
    if let Some(info) = read_info(&paths) {
        return resume(info, &paths).await;
    }
    if paths.run_dir().exists() || paths.state_dir().exists() {
        // Leftovers of a `cluster up` that never finished: nothing was ever recorded as up.
        down(&opts.name).await?;
    }
    std::fs::create_dir_all(paths.run_dir())?;
    std::fs::create_dir_all(paths.state_dir())?;

    let result = match opts.backend {
        Backend::Qemu => crate::vm::up::build(opts, &paths).await,
        Backend::Ssh => crate::vm::up::build_ssh(opts, &paths).await,
        Backend::Netns => build(opts, &paths).await,
    };
    if result.is_err() {
        let _ = down(&opts.name).await;
    }
    result
}

async fn build(opts: &UpOptions, paths: &ClusterPaths) -> anyhow::Result<ClusterInfo> {
    let underlay = NetNs::create(&paths.underlay_ns())?;
    if !netcore::link::probe_vxlan(&underlay).await? {
        bail!(
            "this kernel cannot create VXLAN devices (CONFIG_VXLAN): overlay networks need it; use a kernel with VXLAN or the qemu backend"
        );
    }
    crate::testbed::netns::create_switch(&underlay).await?;
    let mut env = manager_env(opts);
    env.push((crate::testbed::netns::ENV_UNDERLAY_LISTEN, "1".to_string()));
    supervise::ensure(paths, &Spec::host("manager", &["__manager"], &env))?;
    supervise::ensure_supervisor(paths)?;
    let hostnames: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
    let plugs = hostnames.iter().enumerate().map(|(i, h)| {
        let underlay = underlay.clone();
        let ns_name = paths.node_ns(h);
        async move {
            let node = NetNs::create(&ns_name)?;
            netcore::underlay::plug(
                &underlay,
                UNDERLAY_BRIDGE,
                &format!("p{}", i + 1),
                &node,
                "eth0",
                crate::testbed::netns::node_addr(i + 1),
            )
            .await?;
            Ok::<_, anyhow::Error>(node)
        }
    });
    let nodes = futures::future::try_join_all(plugs).await?;

    let client = ManagerClient::new(&paths.manager_socket());
    wait_until("the manager to answer", READY_TIMEOUT, || async {
        client.get::<serde_json::Value>("/swarm").await.is_ok()
    })
    .await
    .with_context(|| format!("see {}", paths.log_file("manager").display()))?;

    // The agents dial the manager across the underlay; each opens its node's namespace.
    drop(nodes);
    for (i, h) in hostnames.iter().enumerate() {
        supervise::ensure(
            paths,
            &crate::testbed::netns::agent_spec(i + 1, h, opts.lb, paths),
        )?;
    }
    let want = opts.nodes;
    wait_until("every node to be ready", READY_TIMEOUT, || async {
        client
            .get::<Vec<bollard::models::Node>>("/nodes")
            .await
            .map(|ns| ns.iter().filter(|n| crate::testbed::node_ready(n)).count() == want)
            .unwrap_or(false)
    })
    .await
    .with_context(|| format!("see the node logs in {}", paths.run_dir().display()))?;

    record_up(opts, paths, hostnames)
}

/// `cluster up` on a cluster that is recorded as up: starts whatever of it is not running (the
/// supervisor, which restarts the manager and the agents; nodes killed on purpose stay down)
/// and waits until it answers. Its state is never touched.
async fn resume(info: ClusterInfo, paths: &ClusterPaths) -> anyhow::Result<ClusterInfo> {
    let specs = supervise::all(paths);
    if specs.is_empty() {
        bail!(
            "cluster {:?} is recorded in {} but nothing of it runs, nor is there a record of how it ran (was the host rebooted?): remove it with swarmkit cluster down {}",
            info.name,
            paths.info_file().display(),
            info.name
        );
    }
    let down: Vec<&Spec> = specs
        .iter()
        .filter(|s| {
            supervise::running(paths, s).is_none()
                && !supervise::killed_marker(paths, &s.name).exists()
        })
        .collect();
    if down.is_empty() && supervise::supervisor(paths).is_some() {
        bail!(
            "cluster {:?} is already up: use it, or remove it first (swarmkit cluster down {})",
            info.name,
            info.name
        );
    }
    for spec in down {
        supervise::ensure(paths, spec)?;
    }
    supervise::ensure_supervisor(paths)?;
    let client = ManagerClient::new(&paths.manager_socket());
    wait_until("the manager to answer", READY_TIMEOUT, || async {
        client.get::<serde_json::Value>("/swarm").await.is_ok()
    })
    .await
    .with_context(|| format!("see {}", paths.log_file("manager").display()))?;
    for node in &info.nodes {
        if supervise::killed_marker(paths, node).exists() {
            continue;
        }
        wait_until(&format!("{node} to be ready"), RESUME_TIMEOUT, || {
            crate::testbed::hostname_ready(&client, node)
        })
        .await?;
    }
    Ok(ClusterInfo {
        running: true,
        ..info
    })
}

/// Agents that were down reconnect within their retry back-off.
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes the record `cluster ls` reads, once every node of a new cluster is up.
pub(crate) fn record_up(
    opts: &UpOptions,
    paths: &ClusterPaths,
    nodes: Vec<String>,
) -> anyhow::Result<ClusterInfo> {
    let info = ClusterInfo {
        name: opts.name.clone(),
        backend: opts.backend,
        nodes,
        lb: opts.lb,
        created: chrono::Utc::now(),
        running: true,
    };
    write_atomically(&paths.info_file(), &serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Live processes (this one aside) carrying this cluster's owner mark, found through /proc so
/// that a crash that lost pid files still leaves nothing behind. Zombies are already dead:
/// their parent, not `cluster down`, has to reap them.
pub fn owned_processes(cluster: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mark = format!("{OWNER_ENV}={cluster}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let zombie = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|state| state.trim_start().starts_with('Z'))
        })
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| !zombie(*pid))
        .collect()
}

pub async fn down(name: &str) -> anyhow::Result<()> {
    require_root()?;
    validate_cluster_name(name).map_err(anyhow::Error::msg)?;
    let paths = ClusterPaths::new(name);
    let prefix = paths.ns_prefix();
    let known = paths.info_file().exists() || paths.run_dir().exists();
    let namespaces = NetNs::list_with_prefix(&prefix);
    let procs = owned_processes(name);
    if !known && namespaces.is_empty() && procs.is_empty() {
        bail!("no cluster named {name:?}: see swarmkit cluster ls");
    }
    // --- backend dispatch: existing hosts clean up after themselves over SSH ---
    let remote_errors = if crate::vm::up::is_ssh_backend(name) {
        crate::vm::host::remote_down(name).await
    } else {
        Vec::new()
    };
    // The supervisor first, or it would restart what is being stopped.
    if let Some(pid) = supervise::supervisor(&paths) {
        crate::testbed::procs::kill_all(&[pid]);
    }
    for pid in &procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until(
        "cluster processes to exit",
        Duration::from_secs(5),
        || async {
            procs
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p))
        },
    )
    .await?;
    let mut errors = remote_errors;
    for ns in NetNs::list_with_prefix(&prefix) {
        if let Err(e) = NetNs::delete(&ns) {
            errors.push(e.to_string());
        }
    }
    for dir in [paths.run_dir(), paths.state_dir()] {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("{}: {e}", dir.display()));
        }
    }
    if !errors.is_empty() {
        bail!(
            "cluster {name} was not fully removed:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The cluster's record, once `cluster up` has finished.
pub fn read_info(paths: &ClusterPaths) -> Option<ClusterInfo> {
    serde_json::from_slice(&std::fs::read(paths.info_file()).ok()?).ok()
}

pub fn list() -> anyhow::Result<Vec<ClusterInfo>> {
    let Ok(dir) = std::fs::read_dir(crate::paths::STATE_ROOT) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let paths = ClusterPaths::new(&name);
        let Ok(bytes) = std::fs::read(paths.info_file()) else {
            continue;
        };
        let mut info: ClusterInfo = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", paths.info_file().display()))?;
        info.running = manager_running(&paths);
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn open_ns(path: &str, flag: CloneFlags) -> anyhow::Result<(std::fs::File, CloneFlags)> {
    std::fs::File::open(path)
        .map(|f| (f, flag))
        .with_context(|| format!("opening namespace {path}"))
}

fn run_in(fds: Vec<(std::fs::File, CloneFlags)>, argv: &[String]) -> anyhow::Result<i32> {
    let Some(program) = argv.first() else {
        bail!("give a command to run after --");
    };
    let raw: Vec<(i32, CloneFlags)> = fds
        .iter()
        .map(|(f, flag)| (std::os::fd::AsRawFd::as_raw_fd(f), *flag))
        .collect();
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..]);
    // SAFETY: async-signal-safe syscalls only; the fds stay open until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, flag) in &raw {
                enter_raw(*fd, *flag)?;
            }
            nix::unistd::chdir("/").map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let status = tokio::task::block_in_place(|| cmd.status())
        .with_context(|| format!("running {program}"))?;
    drop(fds);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Runs argv inside a node's namespaces (network and hostname); returns its exit code.
pub async fn node_exec(
    cluster: &str,
    node: &str,
    sandbox: Option<&str>,
    argv: &[String],
) -> anyhow::Result<i32> {
    require_root()?;
    if let Some(name) = sandbox
        && (name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        bail!(
            "{name:?} is not a sandbox name: use ingress_sbox or 1-<network id> (letters, digits, '_', '-', '.')"
        );
    }
    // --- backend dispatch: whole-machine nodes (qemu, ssh) run commands over SSH ---
    if crate::vm::up::is_machine_backend(cluster) {
        let inside = match sandbox {
            Some(name) => crate::vm::host::Inside::Sandbox(name),
            None => crate::vm::host::Inside::Node,
        };
        return crate::vm::host::node_exec(cluster, node, inside, argv).await;
    }
    let paths = ClusterPaths::new(cluster);
    let pid: u32 = std::fs::read_to_string(paths.run_dir().join(format!("{node}.pid")))
        .map_err(|_| {
            anyhow::anyhow!(
                "no node {node:?} in cluster {cluster:?}: see swarmkit --cluster {cluster} node ls"
            )
        })?
        .trim()
        .parse()?;
    let uts = open_ns(&format!("/proc/{pid}/ns/uts"), CloneFlags::CLONE_NEWUTS)?;
    let net = match sandbox {
        None => open_ns(&format!("/proc/{pid}/ns/net"), CloneFlags::CLONE_NEWNET)?,
        Some(name) => {
            let path =
                Path::new(netcore::netns::NETNS_RUN_DIR).join(paths.node_sandbox_ns(node, name));
            if !path.exists() {
                bail!(
                    "{}",
                    no_sandbox(cluster, node, name, &node_sandboxes(&paths, node))
                );
            }
            open_ns(&path.to_string_lossy(), CloneFlags::CLONE_NEWNET)?
        }
    };
    run_in(vec![net, uts], argv)
}

/// The short names of a node's sandboxes (network namespaces the agent made for it).
fn node_sandboxes(paths: &ClusterPaths, node: &str) -> Vec<String> {
    let prefix = paths.node_sandbox_ns(node, "");
    sandbox_names(
        &prefix,
        NetNs::list_with_prefix(&prefix).iter().map(String::as_str),
    )
}

/// Sandbox short names among namespace names: those under a node's `prefix`, sorted.
pub(crate) fn sandbox_names<'a>(prefix: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut short: Vec<String> = names
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect();
    short.sort();
    short
}

pub(crate) fn no_sandbox(cluster: &str, node: &str, name: &str, have: &[String]) -> String {
    format!(
        "node {node} of cluster {cluster} has no sandbox {name:?}; it has: {}",
        if have.is_empty() {
            "none yet".to_string()
        } else {
            have.join(", ")
        }
    )
}

/// Runs argv inside a task's namespaces (net, uts, mnt); `task` is an ID, ID prefix or
/// task name like `search.1`. Returns its exit code.
pub async fn task_exec(cluster: &str, task: &str, argv: &[String]) -> anyhow::Result<i32> {
    require_root()?;
    let paths = ClusterPaths::new(cluster);
    let client = ManagerClient::new(&paths.manager_socket());
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
        bail!("no running task {task:?} in cluster {cluster:?}: see swarmkit service ps SERVICE");
    };
    let pid = t["Status"]["ContainerStatus"]["PID"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("task {task} has no process yet"))?;
    // On whole machines the pid is the guest's: enter the task from inside its node.
    if crate::vm::up::is_machine_backend(cluster) {
        let node_id = t["NodeID"].as_str().unwrap_or_default();
        let nodes: Vec<bollard::models::Node> = client.get("/nodes").await?;
        let hostname = nodes
            .iter()
            .find(|n| n.id.as_deref() == Some(node_id))
            .and_then(|n| n.description.as_ref()?.hostname.clone())
            .ok_or_else(|| anyhow::anyhow!("task {task} is on node {node_id}, which is gone"))?;
        return crate::vm::host::node_exec(
            cluster,
            &hostname,
            crate::vm::host::Inside::Task(pid),
            argv,
        )
        .await;
    }
    let ns = |kind: &str, flag| open_ns(&format!("/proc/{pid}/ns/{kind}"), flag);
    run_in(
        vec![
            ns("net", CloneFlags::CLONE_NEWNET)?,
            ns("uts", CloneFlags::CLONE_NEWUTS)?,
            ns("mnt", CloneFlags::CLONE_NEWNS)?,
        ],
        argv,
    )
}

/// Entry points of the daemons `cluster up` starts (hidden subcommands of the binary).
pub async fn run_manager(cluster: &str) -> anyhow::Result<()> {
    let paths = ClusterPaths::new(cluster);
    let m = crate::manager::Manager::open(cluster, &paths.store())?;
    let underlay = match std::env::var(crate::testbed::netns::ENV_UNDERLAY_LISTEN) {
        Ok(_) => Some(crate::testbed::netns::underlay_listener(&paths)?),
        Err(_) => None,
    };
    crate::manager::serve(m, &paths.manager_socket(), underlay).await
}

pub async fn run_supervisor(cluster: &str) -> anyhow::Result<()> {
    let cluster = cluster.to_string();
    tokio::task::spawn_blocking(move || crate::testbed::supervise::run(&cluster)).await??;
    Ok(())
}

pub async fn run_vmhost(cluster: &str) -> anyhow::Result<()> {
    crate::vm::host::run(cluster).await
}

pub async fn run_agent(cluster: &str, node: &str) -> anyhow::Result<()> {
    crate::agent::run(cluster, node).await
}
