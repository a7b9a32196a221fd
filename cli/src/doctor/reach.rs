//! How doctor runs a read-only tool on a node: in the node's own namespace, in one of the
//! engine's sandboxes, or in a task's network namespace. A swarmkit cluster is reached the
//! way `trace` reaches it (`swarmkit node exec`, `swarmkit exec`); a Docker node is this
//! machine, a network namespace on it (a lab), or an SSH host with a pinned key.
//!
//! Docker's sandboxes are found from dockerd itself, never from a fixed path: every sandbox
//! is an nsfs bind mount in dockerd's mount namespace, so `/proc/<dockerd>/mountinfo` lists
//! them wherever `--exec-root` put them, and `nsenter -t <dockerd> -m` then `--net=<path>`
//! enters one even when dockerd runs in a mount namespace of its own.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::trace::kernel::{self, Place};

const DEADLINE: Duration = Duration::from_secs(20);

/// Where on a node a command runs.
#[derive(Clone, Copy, Debug)]
pub enum At<'a> {
    Node,
    /// An engine sandbox by name: `1-<network id prefix>` (an overlay), `ingress_sbox`, ...
    Sandbox(&'a str),
    /// A task's network namespace: its task ID (swarmkit) and container ID (Docker).
    Task {
        task: &'a str,
        container: &'a str,
    },
}

pub enum Way {
    Swarmkit { cluster: String, node: String },
    Local,
    Netns(String),
    Ssh(Box<testbed::ssh::Session>),
}

/// One node, reachable.
pub struct Reach {
    way: Way,
    /// dockerd's PID there and its sandboxes (name to path in its mount namespace), read once.
    engine: OnceCell<Result<Engine, String>>,
}

#[derive(Clone, Debug)]
struct Engine {
    pid: u32,
    sandboxes: BTreeMap<String, String>,
}

impl Reach {
    pub fn new(way: Way) -> Arc<Reach> {
        Arc::new(Reach {
            way,
            engine: OnceCell::new(),
        })
    }

    pub fn describe(&self) -> String {
        match &self.way {
            Way::Swarmkit { node, .. } => format!("swarmkit node {node}"),
            Way::Local => "this machine".into(),
            Way::Netns(ns) => format!("network namespace {ns}"),
            Way::Ssh(_) => "ssh".into(),
        }
    }

    /// Runs argv at `at`; its stdout when it exits 0, else what it said on stderr.
    pub async fn run(&self, at: At<'_>, argv: &[&str]) -> Result<String, String> {
        match &self.way {
            Way::Swarmkit { cluster, node } => {
                let place = match at {
                    At::Node => Place::Node(node.clone()),
                    At::Sandbox(s) => Place::Sandbox(node.clone(), s.to_string()),
                    At::Task { task, .. } => Place::Task(task.to_string()),
                };
                let mut out = kernel::output(cluster, &place, argv)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                // QEMU guests' `ip` on PATH is busybox's, without JSON; iproute2's own is
                // packed beside it.
                if !out.status.success() && argv.first() == Some(&"ip") {
                    let mut full = vec![testbed::vm::image::IPROUTE2_IP];
                    full.extend_from_slice(&argv[1..]);
                    if let Ok(o) = kernel::output(cluster, &place, &full).await
                        && (o.status.success() || !o.stderr.is_empty())
                    {
                        out = o;
                    }
                }
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(stderr_or_code(&out.stderr, out.status.code().unwrap_or(-1)))
                }
            }
            _ => {
                let full = self.docker_argv(at, argv).await?;
                self.node_run(&full).await
            }
        }
    }

    /// Wraps argv so that, run in the node's namespace, it runs at `at`.
    async fn docker_argv(&self, at: At<'_>, argv: &[&str]) -> Result<Vec<String>, String> {
        let mut full: Vec<String> = Vec::new();
        match at {
            At::Node => {}
            At::Sandbox(name) => {
                let engine = self.engine().await?;
                let path = engine
                    .sandboxes
                    .get(name)
                    .ok_or_else(|| format!("dockerd (pid {}) has no sandbox {name}", engine.pid))?;
                full.extend(
                    [
                        "nsenter",
                        "-t",
                        &engine.pid.to_string(),
                        "-m",
                        "--",
                        "nsenter",
                        &format!("--net={path}"),
                        "--",
                    ]
                    .map(String::from),
                );
            }
            At::Task { container, .. } => {
                let pid = self.container_pid(container).await?;
                full.extend(["nsenter", "-t", &pid.to_string(), "-n", "--"].map(String::from));
            }
        }
        full.extend(argv.iter().map(|s| s.to_string()));
        Ok(full)
    }

    /// A process of the container: the first whose cgroup names its ID (Docker's cgroupfs and
    /// systemd drivers both put the full ID in the path).
    pub async fn container_pid(&self, container: &str) -> Result<u32, String> {
        if container.len() < 12 || !container.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{container:?} is not a container ID"));
        }
        let script = format!("grep -l {container} /proc/[0-9]*/cgroup 2>/dev/null | head -n1");
        let out = self.node_run(&["sh".into(), "-c".into(), script]).await?;
        out.trim()
            .strip_prefix("/proc/")
            .and_then(|s| s.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no process of container {container} on this node"))
    }

    async fn engine(&self) -> Result<Engine, String> {
        self.engine
            .get_or_init(|| async { self.find_engine().await })
            .await
            .clone()
    }

    async fn find_engine(&self) -> Result<Engine, String> {
        let pid = match &self.way {
            Way::Local => local_dockerd(&std::fs::metadata("/proc/self/ns/net"))?,
            Way::Netns(ns) => local_dockerd(&std::fs::metadata(format!("/run/netns/{ns}")))?,
            _ => {
                let out = self
                    .node_run(&["pgrep".into(), "-xo".into(), "dockerd".into()])
                    .await?;
                out.trim()
                    .parse()
                    .map_err(|_| "no dockerd runs there".to_string())?
            }
        };
        let mountinfo = self
            .node_run(&["cat".into(), format!("/proc/{pid}/mountinfo")])
            .await?;
        Ok(Engine {
            pid,
            sandboxes: nsfs_mounts(&mountinfo),
        })
    }

    /// The engine's sandbox names, for finding overlays and the ingress sandbox.
    pub async fn sandboxes(&self) -> Result<Vec<String>, String> {
        if let Way::Swarmkit { .. } = self.way {
            return Err("swarmkit sandboxes are named from the API".into());
        }
        Ok(self.engine().await?.sandboxes.keys().cloned().collect())
    }

    /// Runs a full argv in the node's own namespace.
    async fn node_run(&self, argv: &[String]) -> Result<String, String> {
        let what = argv.join(" ");
        let out = match &self.way {
            Way::Ssh(s) => {
                let line: Vec<String> = argv.iter().map(|a| testbed::ssh::shell_quote(a)).collect();
                let out = tokio::time::timeout(DEADLINE, s.exec(&line.join(" ")))
                    .await
                    .map_err(|_| format!("{what}: no answer within {DEADLINE:?}"))?
                    .map_err(|e| format!("{what}: {e}"))?;
                return if out.code == 0 {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(stderr_or_code(&out.stderr, out.code))
                };
            }
            Way::Local => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            Way::Netns(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).args(argv);
                c
            }
            Way::Swarmkit { .. } => unreachable!("swarmkit nodes run through trace::kernel"),
        };
        let mut cmd = out;
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .map_err(|_| format!("{what}: no answer within {DEADLINE:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(stderr_or_code(&out.stderr, out.status.code().unwrap_or(-1)))
        }
    }
}

fn stderr_or_code(stderr: &[u8], code: i32) -> String {
    let s = String::from_utf8_lossy(stderr).trim().to_string();
    if s.is_empty() {
        format!("exit status {code}")
    } else {
        s
    }
}

/// The dockerd whose network namespace is the one `ns` names (on this machine's /proc).
fn local_dockerd(ns: &std::io::Result<std::fs::Metadata>) -> Result<u32, String> {
    let ns = ns
        .as_ref()
        .map_err(|e| format!("reading its namespace: {e}"))?;
    let want = (ns.dev(), ns.ino());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            && (m.dev(), m.ino()) == want
        {
            found.push(pid);
        }
    }
    found.sort();
    found
        .first()
        .copied()
        .ok_or_else(|| "no dockerd runs in that network namespace".to_string())
}

/// Sandbox names and paths from a mountinfo: every nsfs mount that is a network namespace.
pub fn nsfs_mounts(mountinfo: &str) -> BTreeMap<String, String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            if r.next()? != "nsfs" {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            // Field 4 is the root within the filesystem (`net:[4026532…]`), 5 the mount point.
            if !fields.get(3)?.starts_with("net:") {
                return None;
            }
            let path = fields.get(4)?.replace("\\040", " ");
            let name = path.rsplit('/').next()?.to_string();
            Some((name, path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_come_from_dockerds_nsfs_mounts() {
        let mi = "\
25 30 0:23 / /proc rw,nosuid - proc proc rw
612 25 0:4 net:[4026532801] /run/docker-x/netns/ingress_sbox rw - nsfs nsfs rw
613 25 0:4 net:[4026532901] /run/docker-x/netns/1-abcdef0123 rw - nsfs nsfs rw
614 25 0:4 mnt:[4026532902] /run/other/mnt rw - nsfs nsfs rw
";
        let m = nsfs_mounts(mi);
        assert_eq!(m.len(), 2);
        assert_eq!(m["ingress_sbox"], "/run/docker-x/netns/ingress_sbox");
        assert_eq!(m["1-abcdef0123"], "/run/docker-x/netns/1-abcdef0123");
    }
}
