//! The cluster's daemons (manager, agents on netns nodes, the `__vmhost` SSH daemon) and the
//! supervisor that keeps them running. Every daemon is started from a [`Spec`] kept in the run
//! directory next to its pid file, so the supervisor (`swarmkit __supervise`), `node start`
//! and `cluster up` on a stopped cluster all restart it the same way. A daemon marked killed
//! (`node kill`) stays down until `node start` removes the mark. The manager is started here
//! too (`start_manager`) and awaited (`wait_manager`), the same way on every backend.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use netcore::netns::{NetNs, enter_raw};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::procs;
use crate::record::UpOptions;
use crate::{Result, io};
use cluster::client::ManagerClient;
use cluster::paths::{ClusterPaths, OWNER_ENV};

/// How to start one daemon of a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Its name: the stem of its log, pid and spec files (`manager`, `vmhost`, `node1`).
    pub name: String,
    /// Arguments after `swarmkit --cluster NAME`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A node daemon runs in that node's network namespace, with its hostname.
    pub node_ns: Option<String>,
    pub hostname: Option<String>,
}

impl Spec {
    /// A daemon in the host's namespaces.
    pub fn host(name: &str, args: &[&str], env: &[(&str, String)]) -> Spec {
        Spec {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            node_ns: None,
            hostname: None,
        }
    }
}

/// The supervisor's own name; it does not supervise itself (`cluster up` restarts it).
pub const SUPERVISOR: &str = "supervisor";
const POLL: Duration = Duration::from_millis(200);
/// A daemon that keeps dying is restarted at most this often.
const MIN_RESTART_GAP: Duration = Duration::from_secs(1);

fn spec_file(paths: &ClusterPaths, name: &str) -> PathBuf {
    paths.run_dir().join(format!("{name}.spec.json"))
}

fn pid_file(paths: &ClusterPaths, name: &str) -> PathBuf {
    paths.run_dir().join(format!("{name}.pid"))
}

/// Marks a daemon as stopped on purpose (`node kill`), so that nothing restarts it.
pub fn killed_marker(paths: &ClusterPaths, name: &str) -> PathBuf {
    paths.run_dir().join(format!("{name}.killed"))
}

/// The daemon's pid when it runs (verified against its command line and owner mark).
pub fn running(paths: &ClusterPaths, spec: &Spec) -> Option<i32> {
    let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
    procs::from_file(&pid_file(paths, &spec.name), &paths.name, &args)
}

pub fn load(paths: &ClusterPaths, name: &str) -> Option<Spec> {
    serde_json::from_slice(&std::fs::read(spec_file(paths, name)).ok()?).ok()
}

/// Every daemon spec of the cluster, the supervisor's aside.
pub fn all(paths: &ClusterPaths) -> Vec<Spec> {
    std::fs::read_dir(paths.run_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".spec.json")?;
            (stem != SUPERVISOR).then(|| load(paths, stem)).flatten()
        })
        .collect()
}

/// Holds the daemon's lock file: one starter at a time, so a supervisor and a `node start`
/// racing each other never start it twice.
fn lock(paths: &ClusterPaths, name: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = paths.run_dir().join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(path.display().to_string()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(path.display().to_string())(e.into()))
}

/// Starts the daemon unless it runs already; returns its pid and whether it was started now.
/// Its spec is kept so that it can be started again the same way.
pub fn ensure(paths: &ClusterPaths, spec: &Spec) -> Result<(u32, bool)> {
    let _lock = lock(paths, &spec.name)?;
    if let Some(pid) = running(paths, spec) {
        return Ok((pid as u32, false));
    }
    let pid = spawn(paths, spec)?;
    // The pid first: whoever reads the spec must find the process it describes.
    cluster::paths::write_atomically(&pid_file(paths, &spec.name), pid.to_string().as_bytes())
        .map_err(io("writing a pid file"))?;
    let bytes = serde_json::to_vec_pretty(spec).expect("a spec serializes");
    cluster::paths::write_atomically(&spec_file(paths, &spec.name), &bytes)
        .map_err(io("writing a daemon spec"))?;
    Ok((pid, true))
}

fn spawn(paths: &ClusterPaths, spec: &Spec) -> Result<u32> {
    let log = paths.log_file(&spec.name);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(log.display().to_string()))?;
    let err = out.try_clone().map_err(io(log.display().to_string()))?;
    let mut cmd = std::process::Command::new(cluster::paths::OWN_BINARY);
    cmd.arg0("swarmkit")
        .arg("--cluster")
        .arg(&paths.name)
        .args(&spec.args)
        .env(OWNER_ENV, &paths.name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let Some(ns_name) = &spec.node_ns else {
        let child = cmd.spawn().map_err(io(format!("starting {}", spec.name)))?;
        return Ok(child.id());
    };
    let ns = NetNs::open(ns_name)?;
    let fd = ns.raw_fd();
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.name.clone());
    // SAFETY: async-signal-safe syscalls only; `ns` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            enter_raw(fd, CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWUTS).map_err(std::io::Error::from)?;
            nix::unistd::sethostname(&hostname).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io(format!("starting {}", spec.name)))?;
    drop(ns);
    Ok(child.id())
}

/// Starts the supervisor unless it runs.
pub fn ensure_supervisor(paths: &ClusterPaths) -> Result<u32> {
    Ok(ensure(paths, &Spec::host(SUPERVISOR, &["__supervise"], &[]))?.0)
}

/// The supervisor's pid when it runs.
pub fn supervisor(paths: &ClusterPaths) -> Option<i32> {
    procs::from_file(&pid_file(paths, SUPERVISOR), &paths.name, &["__supervise"])
}

/// Entry point of `swarmkit __supervise --cluster C`: restarts any daemon of the cluster that
/// died, unless it was killed on purpose. It never exits on its own while the cluster's run
/// directory exists.
pub fn run(cluster: &str) -> Result<()> {
    let paths = ClusterPaths::new(cluster);
    let mut last_start: std::collections::HashMap<String, Instant> = Default::default();
    while paths.run_dir().is_dir() {
        // Daemons this process started, once they die.
        while let Ok(status) =
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        for spec in all(&paths) {
            // A node killed on purpose takes every daemon on it down (a manager's too).
            let node_killed = spec
                .hostname
                .as_ref()
                .is_some_and(|h| killed_marker(&paths, h).exists());
            if node_killed
                || killed_marker(&paths, &spec.name).exists()
                || running(&paths, &spec).is_some()
            {
                continue;
            }
            if last_start
                .get(&spec.name)
                .is_some_and(|t| t.elapsed() < MIN_RESTART_GAP)
            {
                continue;
            }
            last_start.insert(spec.name.clone(), Instant::now());
            match ensure(&paths, &spec) {
                Ok((pid, _)) => tracing::warn!(daemon = spec.name, pid, "restarted"),
                Err(e) => tracing::warn!(daemon = spec.name, "restart failed: {e}"),
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Starts a new cluster's manager (with `extra` in its environment) and the supervisor that
/// keeps it running; [`wait_manager`] waits until it answers.
pub(crate) fn start_manager(
    opts: &UpOptions,
    paths: &ClusterPaths,
    extra: &[(&'static str, String)],
) -> Result<()> {
    crate::record::note_registry(paths, &opts.registry)?;
    let mut env = opts.manager_env();
    env.extend_from_slice(extra);
    ensure(paths, &Spec::host("manager", &["__manager"], &env))?;
    ensure_supervisor(paths)?;
    Ok(())
}

/// The manager's own start-up, on any backend.
const MANAGER_TIMEOUT: Duration = Duration::from_secs(20);

/// The cluster's current worker join token, as `docker swarm join-token -q worker` prints it.
pub(crate) async fn worker_token(paths: &ClusterPaths) -> Result<String> {
    let swarm: serde_json::Value = ManagerClient::of_cluster(paths).get("/swarm").await?;
    swarm["JoinTokens"]["Worker"]
        .as_str()
        .map(str::to_string)
        .ok_or(crate::TestbedError::NoJoinToken)
}

/// Leaves the worker token where this machine's agents look for it (owner-only), so that a
/// node without credentials joins as a worker; agents with credentials never read it.
pub(crate) async fn write_join_token(paths: &ClusterPaths) -> Result<()> {
    let token = worker_token(paths).await?;
    let file = paths.join_token_file();
    cluster::paths::write_atomically(&file, token.as_bytes())
        .map_err(io(format!("writing {}", file.display())))?;
    Ok(())
}

pub(crate) async fn wait_manager(paths: &ClusterPaths) -> Result<()> {
    wait_manager_within(paths, MANAGER_TIMEOUT).await
}

/// [`wait_manager`] with a deadline of the caller's: managers that machines' agents run
/// answer only once those machines are up.
pub(crate) async fn wait_manager_within(paths: &ClusterPaths, within: Duration) -> Result<()> {
    let client = ManagerClient::of_cluster(paths);
    crate::wait::wait_until(
        "the manager to answer",
        within,
        &paths.log_file("manager"),
        || async { client.get::<serde_json::Value>("/swarm").await.is_ok() },
    )
    .await?;
    Ok(())
}
