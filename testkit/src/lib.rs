//! What every test suite of the workspace shares (a dev-dependency only): skipping with a
//! reason when a test cannot run here, unique cluster names, a cluster guard that runs
//! `swarmkit cluster down` when dropped (on panic too), polling with a deadline instead of
//! sleeping, the swarmkit binary run under a timeout, and process probes.

pub mod docker_swarm;
pub mod image;
pub mod netns;
pub mod registry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The (check, node) of each finding in `swarmkit doctor --format json`'s answer, sorted,
/// each once.
pub fn doctor_findings(answer: &serde_json::Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = answer["findings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap_or_default().to_string(),
                f["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    f.sort();
    f.dedup();
    f
}

/// Returns from the test (which then passes, printing why) when `$reason` is `Some`.
#[macro_export]
macro_rules! skip_unless {
    ($reason:expr) => {
        if let Some(why) = $reason {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Skips the test unless it runs as root (clusters need namespaces and netlink).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::skip_unless!($crate::needs_root())
    };
}

/// Why a test that builds clusters cannot run here, if it cannot.
pub fn needs_root() -> Option<String> {
    (!is_root()).then(|| "needs root to build a cluster (namespaces, netlink)".to_string())
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The swarmkit binary under test: `SWARMKIT_BIN`, else the one cargo built next to the test
/// binary (target/debug/deps/TEST -> target/debug/swarmkit).
pub fn bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWARMKIT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("swarmkit");
    p.is_file().then_some(p)
}

/// Why a test that runs the binary cannot run here, if it cannot.
pub fn needs_bin() -> Option<String> {
    bin().is_none().then(|| {
        "no swarmkit binary next to the tests (cargo build first, or set SWARMKIT_BIN)".into()
    })
}

/// Why a test that boots QEMU guests cannot run here, if it cannot: it needs root, the binary,
/// QEMU, and a guest kernel (cached, or Debian's package to fetch).
pub fn needs_qemu() -> Option<String> {
    if let Some(why) = needs_root().or_else(needs_bin) {
        return Some(why);
    }
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").exists() {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    let cached = std::path::Path::new("/var/cache/swarmkit/kernel").is_dir();
    let apt = Command::new("apt-cache")
        .args(["show", "linux-image-amd64"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cached && !apt {
        return Some("Debian's linux-image-amd64 is neither cached nor known to apt".into());
    }
    None
}

/// The first of `candidates` (the paths one tool may have) that exists.
pub fn find_tool(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Why a test that calls these tools cannot run here, if it cannot: each tool is given by
/// the paths it may have and the Debian package that has it.
pub fn needs_tools(tools: &[(&[&str], &str)]) -> Option<String> {
    tools.iter().find_map(|(candidates, package)| {
        find_tool(candidates).is_none().then(|| {
            let tool = candidates.first().copied().unwrap_or(package);
            format!("{tool} is missing (apt-get install {package})")
        })
    })
}

/// A cluster name unique to this test process: `t<pid>-<tag>` (cluster names are at most 24
/// characters, so keep tags short).
pub fn unique_name(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id() % 100000)
}

/// What a finished command said.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fails the test with both outputs unless the command exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout then stderr, for a test that looks for a line in either.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A running task of a service as the manager lists it: its ID, its node's hostname, and its
/// address (without the prefix) on each network, by network name.
#[derive(Clone, Debug)]
pub struct RunningTask {
    pub id: String,
    pub node: String,
    pub addrs: BTreeMap<String, String>,
}

/// How long one swarmkit command may take before it is killed (a hang fails the test instead
/// of stalling the run); qemu clusters take longer to come up than namespaces.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs the binary under test with `args`, bounded by [`COMMAND_TIMEOUT`].
pub fn swarmkit(args: &[&str]) -> Run {
    swarmkit_with(args, &[])
}

/// As [`swarmkit`], with extra environment variables.
pub fn swarmkit_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("running swarmkit under timeout"))
}

/// The binary under test with `args`, bounded by [`COMMAND_TIMEOUT`], for a suite that wants
/// the raw [`Output`] or its own environment.
pub fn command(args: &[&str]) -> Command {
    let bin = bin().expect("no swarmkit binary: skip with testkit::needs_bin() first");
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(COMMAND_TIMEOUT.as_secs().to_string())
        .arg(bin)
        .args(args)
        .env("CI", "true");
    cmd
}

/// A cluster owned by the test: dropping it (at the end of the test, or while a failed
/// assertion unwinds) runs `swarmkit cluster down`.
pub struct Cluster {
    pub name: String,
}

impl Cluster {
    /// A fresh netns cluster of `nodes` nodes named [`unique_name`]`(tag)`.
    pub fn up(tag: &str, nodes: usize) -> Cluster {
        Cluster::up_with(tag, nodes, &[])
    }

    /// As [`Cluster::up`], with more `cluster up` flags (`--backend qemu`). The guard exists
    /// before the command runs, so a half-built cluster is torn down too.
    pub fn up_with(tag: &str, nodes: usize, flags: &[&str]) -> Cluster {
        Cluster::up_with_env(tag, nodes, flags, &[])
    }

    /// As [`Cluster::up_with`], with `env` in the environment of `cluster up` and so of the
    /// daemons it starts (the manager reads its heartbeat settings from there).
    pub fn up_with_env(tag: &str, nodes: usize, flags: &[&str], env: &[(&str, &str)]) -> Cluster {
        let c = Cluster::guard(&unique_name(tag));
        let nodes = nodes.to_string();
        let mut args = vec!["cluster", "up", "--name", &c.name, "--nodes", &nodes];
        args.extend_from_slice(flags);
        swarmkit_with(&args, env).ok();
        c
    }

    /// Only the guard, for a cluster the test brings up (or fails to) itself.
    pub fn guard(name: &str) -> Cluster {
        Cluster {
            name: name.to_string(),
        }
    }

    /// `swarmkit --cluster NAME ARGS`.
    pub fn sk(&self, args: &[&str]) -> Run {
        let mut all = vec!["--cluster", self.name.as_str()];
        all.extend_from_slice(args);
        swarmkit(&all)
    }

    /// `swarmkit service create ARGS…` on this cluster: the one spelling every suite uses to
    /// start a service, so a change to how services are created is made here once.
    pub fn service_create(&self, args: &[&str]) -> Run {
        let mut all = vec!["service", "create"];
        all.extend_from_slice(args);
        self.sk(&all)
    }

    /// The stock docker CLI against this cluster's manager socket, bounded like every command.
    pub fn docker(&self, args: &[&str]) -> Run {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "120", "docker"])
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix:///run/swarmkit/{}/manager.sock", self.name),
            )
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        Run::from(out)
    }

    /// The stock docker CLI against the manager on `node`, in a cluster of several managers
    /// (`cluster up --managers`), bounded like every command.
    pub fn docker_via(&self, node: &str, args: &[&str]) -> Run {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "60", "docker"])
            .args(args)
            .env(
                "DOCKER_HOST",
                format!(
                    "unix:///run/swarmkit/{}/managers/{node}/manager.sock",
                    self.name
                ),
            )
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        Run::from(out)
    }

    /// A shell command on a node.
    pub fn node(&self, node: &str, cmd: &str) -> Run {
        self.sk(&["node", "exec", node, "--", "sh", "-c", cmd])
    }

    /// A shell command inside a task.
    pub fn task(&self, task: &str, cmd: &str) -> Run {
        self.sk(&["exec", task, "--", "sh", "-c", cmd])
    }

    /// curl from a node: the body, or None when the request failed or took over 5 s.
    pub fn curl(&self, node: &str, url: &str) -> Option<String> {
        let r = self.sk(&[
            "node",
            "exec",
            node,
            "--",
            "curl",
            "-s",
            "-f",
            "--max-time",
            "5",
            url,
        ]);
        r.success().then_some(r.stdout)
    }

    /// Of `n` new requests to `url` from a node, one after the other in one exec, how many
    /// answered 200 (each may take 2 s); with the exec's stderr, for the failure message.
    pub fn count_ok(&self, node: &str, url: &str, n: usize) -> (usize, String) {
        let r = self.node(
            node,
            &format!(
                "ok=0; for i in $(seq {n}); do c=$(curl -s -m 2 -o /dev/null -w '%{{http_code}}' {url}); [ \"$c\" = 200 ] && ok=$((ok+1)); done; echo $ok"
            ),
        );
        (r.stdout.trim().parse().unwrap_or(0), r.stderr)
    }

    /// Polls `check` until it holds, failing the test with `what` after `deadline`.
    pub fn eventually(&self, what: &str, deadline: Duration, check: impl FnMut() -> bool) {
        eventually_true(what, deadline, check)
    }

    pub fn ns_prefix(&self) -> String {
        format!("sk-{}.", self.name)
    }

    /// The pid a cluster daemon (the manager, or a node's agent) recorded in its run
    /// directory.
    pub fn pid_of(&self, daemon: &str) -> i32 {
        pid_of(&self.name, daemon)
    }

    /// Task IDs, slots and node hostnames of a service, from `service ps --format json`.
    pub fn tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let out = self
            .sk(&["service", "ps", service, "--format", "json"])
            .ok();
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The tasks of `service` as the manager's API returns them (Docker's Task shape).
    pub fn api_tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let tasks = self.api(&format!(
            "/tasks?filters={{%22service%22:[%22{service}%22]}}"
        ));
        serde_json::from_value(tasks).expect("tasks JSON")
    }

    /// The running tasks of `service` (observed state `running`), from the manager's API.
    pub fn running_tasks(&self, service: &str) -> Vec<RunningTask> {
        let nodes = self.api("/nodes");
        let hostname = |id: &serde_json::Value| {
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["ID"] == *id)
                .and_then(|n| n["Description"]["Hostname"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        self.api_tasks(service)
            .iter()
            .filter(|t| t["Status"]["State"] == "running")
            .map(|t| RunningTask {
                id: t["ID"].as_str().unwrap_or_default().into(),
                node: hostname(&t["NodeID"]),
                addrs: t["NetworksAttachments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let addr = a["Addresses"][0].as_str().unwrap_or_default();
                        let network = a["Network"]["Spec"]["Name"].as_str().unwrap_or_default();
                        let ip = addr.split('/').next().unwrap_or_default();
                        (network.to_string(), ip.to_string())
                    })
                    .collect(),
            })
            .collect()
    }

    /// `GET path` from the manager's API (Docker's paths, and `/swarmkit/v1/...`).
    pub fn api(&self, path: &str) -> serde_json::Value {
        let socket = format!("/run/swarmkit/{}/manager.sock", self.name);
        let out = Command::new("curl")
            .args(["-s", "-g", "--max-time", "10", "--unix-socket", &socket])
            .arg(format!("http://swarmkit{path}"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Whether every agent applied everything the manager sent it and holds exactly the
    /// manager's plan (`GET /swarmkit/v1/agents`): a causal "the change is in every
    /// dataplane", where a test would otherwise guess how long that takes.
    pub fn all_in_sync(&self) -> bool {
        self.api("/swarmkit/v1/agents")
            .as_array()
            .expect("agents")
            .iter()
            .all(|f| f["in_sync"] == true)
    }

    /// The last lines of each daemon's log, to stderr: what a failed test leaves to read
    /// once `cluster down` has removed the run directory.
    fn print_daemon_logs(&self) {
        const LINES: usize = 40;
        let Ok(entries) = std::fs::read_dir(format!("/run/swarmkit/{}", self.name)) else {
            return;
        };
        let mut logs: Vec<_> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last {LINES} lines)", log.display());
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                eprintln!("{line}");
            }
        }
    }

    /// The process ID of the running task in `slot` of `service`, from the manager's API.
    pub fn task_pid(&self, service: &str, slot: u64) -> i32 {
        self.api_tasks(service)
            .iter()
            .find(|t| t["Slot"] == slot && t["DesiredState"] == "running")
            .and_then(|t| t["Status"]["ContainerStatus"]["PID"].as_i64())
            .expect("a running task with a PID") as i32
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_daemon_logs();
        }
        let r = swarmkit(&["cluster", "down", &self.name]);
        if r.code != 0 && !r.stderr.contains("no cluster named") {
            eprintln!("cluster down {}: {}", self.name, r.stderr);
        }
    }
}

/// Polls `f` until it gives a value, failing the test with `what` after `deadline`.
pub fn eventually<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// As [`eventually`] for a condition.
pub fn eventually_true(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    eventually(what, deadline, || check().then_some(()))
}

/// The pid a daemon of `cluster` recorded in its run directory.
pub fn pid_of(cluster: &str, daemon: &str) -> i32 {
    std::fs::read_to_string(format!("/run/swarmkit/{cluster}/{daemon}.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// SIGKILL to `pid`: a crash, as a test injects it.
pub fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("killing {pid}: {e}"));
}

/// Whether `pid` runs (a zombie does not count: it has exited).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_cluster_names() {
        let n = unique_name("prune");
        assert!(n.len() <= 24, "{n}");
        assert!(n.starts_with('t'));
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn eventually_returns_the_first_value() {
        let mut n = 0;
        let v = eventually("three tries", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn eventually_fails_at_its_deadline() {
        eventually_true("never", Duration::from_millis(30), || false);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_pid_is_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
