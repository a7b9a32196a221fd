//! Running read-only tools on a swarm's nodes, for `trace`, `graph`'s readers and `doctor`:
//! in a node's own namespace, in one of the engine's sandboxes, or in a task's network
//! namespace. A swarmkit cluster is reached through `swarmkit node exec` / `swarmkit exec`,
//! the machinery a person would use, so it works on every backend. A Docker node is this
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

use anyhow::Context;
use cluster::client::ManagerClient;
use tokio::sync::OnceCell;

const DEADLINE: Duration = Duration::from_secs(30);

/// Where a command runs: a node (by hostname), a sandbox on a node, or a task (by ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Node(String),
    Sandbox(String, String),
    Task(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Node(n) => write!(f, "{n}"),
            Place::Sandbox(n, s) => write!(f, "{n}/{s}"),
            Place::Task(t) => write!(f, "task {t}"),
        }
    }
}

/// How a command ended.
#[derive(Clone, Debug, Default)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Ran {
    /// Its stdout when it succeeded, else what it said on stderr (or its exit status).
    pub fn result(self) -> Result<String, String> {
        if self.ok {
            Ok(self.stdout)
        } else if self.stderr.trim().is_empty() {
            Err(format!("exit status {}", self.code))
        } else {
            Err(self.stderr.trim().to_string())
        }
    }
}

/// A swarm whose nodes' kernels can be read.
pub struct Swarm {
    /// The cluster's name, or the Docker engine's address.
    pub name: String,
    kind: Kind,
}

enum Kind {
    Swarmkit,
    Docker {
        /// The nodes doctor, trace or graph were told how to reach, by hostname.
        nodes: BTreeMap<String, Arc<Reach>>,
        /// Each task's node (hostname) and container, as last read from the manager.
        tasks: std::sync::RwLock<BTreeMap<String, (String, String)>>,
    },
}

impl Swarm {
    pub fn swarmkit(cluster: &str) -> Swarm {
        Swarm {
            name: cluster.to_string(),
            kind: Kind::Swarmkit,
        }
    }

    pub fn docker(
        name: &str,
        nodes: BTreeMap<String, Arc<Reach>>,
        tasks: BTreeMap<String, (String, String)>,
    ) -> Swarm {
        Swarm {
            name: name.to_string(),
            kind: Kind::Docker {
                nodes,
                tasks: std::sync::RwLock::new(tasks),
            },
        }
    }

    /// Learns the tasks' containers anew (a live picture's tasks come and go).
    pub fn set_tasks(&self, latest: BTreeMap<String, (String, String)>) {
        if let Kind::Docker { tasks, .. } = &self.kind {
            *tasks.write().unwrap_or_else(|e| e.into_inner()) = latest;
        }
    }

    pub fn is_docker(&self) -> bool {
        matches!(self.kind, Kind::Docker { .. })
    }

    /// Whether the node's kernel can be read at all.
    pub fn reaches(&self, host: &str) -> bool {
        match &self.kind {
            Kind::Swarmkit => true,
            Kind::Docker { nodes, .. } => nodes.contains_key(host),
        }
    }

    /// The sandboxes Docker's engine on `host` holds, by name.
    pub async fn docker_sandboxes(&self, host: &str) -> Result<Vec<String>, String> {
        match &self.kind {
            Kind::Swarmkit => Err("swarmkit's sandboxes are named from the API".into()),
            Kind::Docker { nodes, .. } => {
                let reach = nodes.get(host).ok_or_else(|| unreached(host))?;
                Ok(reach.read_sandboxes().await?.into_keys().collect())
            }
        }
    }

    /// Runs `argv` at `place`, whatever its exit status; an error only when it could not run.
    pub async fn output(&self, place: &Place, argv: &[&str]) -> anyhow::Result<Ran> {
        match &self.kind {
            Kind::Swarmkit => {
                let out = swarmkit_output(&self.name, place, argv).await?;
                // QEMU guests' `ip` on PATH is busybox's, without JSON; iproute2's own is
                // packed beside it.
                if !out.ok && argv.first() == Some(&"ip") {
                    let mut full = vec![testbed::vm::image::IPROUTE2_IP];
                    full.extend_from_slice(&argv[1..]);
                    if let Ok(o) = swarmkit_output(&self.name, place, &full).await
                        && (o.ok || !o.stderr.is_empty())
                    {
                        return Ok(o);
                    }
                }
                Ok(out)
            }
            Kind::Docker { nodes, tasks } => {
                let (host, at) = match place {
                    Place::Node(h) => (h.as_str(), At::Node),
                    Place::Sandbox(h, s) => (h.as_str(), At::Sandbox(s)),
                    Place::Task(t) => {
                        let (h, c) = tasks
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(t)
                            .cloned()
                            .with_context(|| format!("task {t} has no container the API knows"))?;
                        let reach = nodes
                            .get(&h)
                            .ok_or_else(|| anyhow::anyhow!(unreached(&h)))?;
                        return reach
                            .run(At::Container(&c), argv)
                            .await
                            .map_err(|e| anyhow::anyhow!("{} at {place}: {e}", argv.join(" ")));
                    }
                };
                let reach = nodes
                    .get(host)
                    .ok_or_else(|| anyhow::anyhow!(unreached(host)))?;
                reach
                    .run(at, argv)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} at {place}: {e}", argv.join(" ")))
            }
        }
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    #[test]
    fn swarmkits_own_sockets_name_their_cluster() {
        let args = |h: &str| SwarmArgs {
            docker_host: Some(h.into()),
            ..SwarmArgs::default()
        };
        assert!(matches!(
            args("unix:///run/swarmkit/lab/nodes/node1.sock").engine("default"),
            Engine::Cluster(c) if c == "lab"
        ));
        assert!(matches!(
            args("unix:///run/swarmkit-docker/lab/n1.sock").engine("default"),
            Engine::Docker(_)
        ));
        assert!(matches!(
            args("unix:///var/run/docker.sock").engine("default"),
            Engine::Docker(h) if h == "unix:///var/run/docker.sock"
        ));
        assert!(matches!(
            SwarmArgs::default().engine("x"),
            Engine::Cluster(c) if c == "x"
        ));
    }
}

fn unreached(host: &str) -> String {
    format!(
        "doctor, trace and graph were not told how to reach node {host}: give --reach {host}=local|netns:NAME, or an --inventory of SSH hosts"
    )
}

async fn swarmkit_output(cluster: &str, place: &Place, argv: &[&str]) -> anyhow::Result<Ran> {
    let exe = std::env::current_exe().context("locating the swarmkit binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--cluster", cluster]);
    match place {
        Place::Node(n) => cmd.args(["node", "exec", n, "--"]),
        Place::Sandbox(n, s) => cmd.args(["node", "exec", "--netns", s, n, "--"]),
        Place::Task(t) => cmd.args(["exec", t, "--"]),
    };
    cmd.args(argv)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .with_context(|| {
            format!(
                "{} at {place} took longer than {DEADLINE:?}",
                argv.join(" ")
            )
        })?
        .with_context(|| format!("running {} at {place}", argv.join(" ")))?;
    Ok(ran(&out))
}

fn ran(out: &std::process::Output) -> Ran {
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// Where the Engine API answers.
pub enum Engine {
    Cluster(String),
    Docker(String),
}

pub fn client(engine: &Engine) -> anyhow::Result<ManagerClient> {
    let host = match engine {
        Engine::Cluster(name) => {
            let socket = cluster::paths::ClusterPaths::new(name).live_manager_socket();
            if !socket.exists() {
                anyhow::bail!(
                    "cluster {name:?} is not up (no manager socket at {}): start it with `swarmkit cluster up --name {name}`, or point doctor at a Docker engine with --docker-host",
                    socket.display()
                );
            }
            return Ok(ManagerClient::new(&socket));
        }
        Engine::Docker(host) => host,
    };
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(ManagerClient::new(std::path::Path::new(path)));
    }
    let Some(addr) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("https://"))
    else {
        anyhow::bail!(
            "--docker-host {host:?}: give unix:///path/to/docker.sock or tcp://HOST:PORT (ssh:// is not supported: use --inventory to read nodes over SSH)"
        );
    };
    let client = ManagerClient::tcp(addr);
    let verify = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
    if !verify {
        return Ok(client);
    }
    let dir = std::env::var_os("DOCKER_CERT_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))
        .context("DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME is")?;
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| {
            format!(
                "reading {} (DOCKER_CERT_PATH holds ca.pem, cert.pem and key.pem)",
                dir.join(f).display()
            )
        })
    };
    let (ca, cert, key) = (read("ca.pem")?, read("cert.pem")?, read("key.pem")?);
    let config = cluster::pki::tls::client_config(&[&ca], Some((&cert, &key)))
        .context("DOCKER_CERT_PATH's certificates")?;
    let host_only = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let name =
        rustls::pki_types::ServerName::try_from(host_only.trim_matches(['[', ']']).to_string())
            .with_context(|| format!("{host_only:?} is not a host name TLS can check"))?;
    Ok(client.with_tls_to(config, name))
}

/// Which swarm to look at, shared by doctor, graph, trace and ui: a swarmkit cluster
/// (`--cluster`), or the swarm a Docker engine manages, with how to read its nodes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SwarmArgs {
    /// Look at the swarm this Docker engine manages instead of a swarmkit cluster:
    /// unix:///var/run/docker.sock or tcp://HOST:2376 (TLS with DOCKER_TLS_VERIFY and
    /// DOCKER_CERT_PATH, as docker does)
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// How to read a Docker node's kernel, by hostname or node ID: NODE=local (this machine),
    /// NODE=netns:NAME (a network namespace here, as in a lab); repeatable, or comma-separated
    /// in SWARMKIT_REACH. SSH hosts come from --inventory
    #[arg(
        long = "reach",
        value_name = "NODE=WAY",
        env = "SWARMKIT_REACH",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,
    /// SSH hosts to read Docker nodes' kernels from: a TOML file of [[host]] name (the node's
    /// hostname), address, user, key, host_key (pinned), as `cluster up --backend ssh` takes
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<std::path::PathBuf>,
}

impl SwarmArgs {
    /// A Docker host that is one of swarmkit's own sockets (`swarmkit cluster env` exports
    /// them as DOCKER_HOST) names that cluster: its nodes are reached the swarmkit way.
    pub fn engine(&self, cluster: &str) -> Engine {
        match &self.docker_host {
            Some(h) if !h.is_empty() => {
                let own = h
                    .strip_prefix("unix://")
                    .and_then(|p| p.strip_prefix(cluster::paths::RUN_ROOT))
                    .and_then(|p| p.strip_prefix('/'))
                    .and_then(|p| p.split('/').next())
                    .filter(|c| !c.is_empty());
                match own {
                    Some(c) => Engine::Cluster(c.to_string()),
                    None => Engine::Docker(h.clone()),
                }
            }
            _ => Engine::Cluster(cluster.to_string()),
        }
    }
}

/// A node as the manager lists it, enough to match a way in to it.
pub struct NodeKey<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub addr: &'a str,
}

/// A way into every Docker node the arguments name, by hostname, with how each is reached.
/// Asked through a local socket, the engine that answered (`answering`, a node ID) is this
/// machine's.
pub async fn docker_reaches(
    engine: &Engine,
    nodes: &[NodeKey<'_>],
    answering: Option<&str>,
    args: &SwarmArgs,
) -> anyhow::Result<(BTreeMap<String, Arc<Reach>>, BTreeMap<String, String>)> {
    use anyhow::bail;
    let mut reaches = BTreeMap::new();
    let mut how = BTreeMap::new();
    let find = |key: &str| {
        nodes
            .iter()
            .find(|n| n.hostname == key || n.id == key || n.addr == key)
            .with_context(|| {
                format!(
                    "{key:?} is no node of this swarm (its nodes: {})",
                    nodes
                        .iter()
                        .map(|n| n.hostname)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    for spec in &args.nodes {
        let (key, way) = spec
            .split_once('=')
            .with_context(|| format!("--reach {spec:?}: give NODE=local or NODE=netns:NAME"))?;
        let node = find(key)?;
        let (way, label) = match way {
            "local" => (Way::Local, "this machine".to_string()),
            w if w.starts_with("netns:") => {
                let ns = &w["netns:".len()..];
                if ns.is_empty() || !std::path::Path::new("/run/netns").join(ns).exists() {
                    bail!("--reach {spec:?}: there is no network namespace {ns:?} (ip netns list)");
                }
                (Way::Netns(ns.to_string()), format!("netns {ns}"))
            }
            other => bail!(
                "--reach {spec:?}: {other:?} is not a way in: local, netns:NAME, or an SSH host in --inventory"
            ),
        };
        reaches.insert(node.hostname.to_string(), Reach::new(way));
        how.insert(node.hostname.to_string(), label);
    }
    if let Some(path) = &args.inventory {
        for h in testbed::vm::inventory::load(path, None)? {
            let node = nodes
                .iter()
                .find(|n| n.hostname == h.name || n.addr == h.addr.addr().to_string())
                .with_context(|| {
                    format!(
                        "inventory {}: host {} matches no node of this swarm by hostname or address",
                        path.display(),
                        h.name
                    )
                })?;
            if reaches.contains_key(node.hostname) {
                continue;
            }
            let session = testbed::vm::host::connect(&h)
                .await
                .with_context(|| format!("connecting to {} over SSH", h.ssh))?;
            reaches.insert(
                node.hostname.to_string(),
                Reach::new(Way::Ssh(Box::new(session))),
            );
            how.insert(
                node.hostname.to_string(),
                format!("ssh {}@{}", h.user, h.ssh),
            );
        }
    }
    if let (Engine::Docker(host), Some(id)) = (engine, answering)
        && host.starts_with("unix://")
        && let Some(n) = nodes.iter().find(|n| n.id == id)
        && !reaches.contains_key(n.hostname)
    {
        reaches.insert(n.hostname.to_string(), Reach::new(Way::Local));
        how.insert(n.hostname.to_string(), "this machine".into());
    }
    Ok((reaches, how))
}

/// Where on a Docker node a command runs.
#[derive(Clone, Copy, Debug)]
enum At<'a> {
    Node,
    /// An engine sandbox by name: `1-<network id prefix>` (an overlay), `ingress_sbox`, ...
    Sandbox(&'a str),
    /// A container's network namespace, by container ID.
    Container(&'a str),
}

pub enum Way {
    Local,
    Netns(String),
    Ssh(Box<testbed::ssh::Session>),
}

/// One Docker node, reachable.
pub struct Reach {
    way: Way,
    /// dockerd's PID there, found once.
    dockerd: OnceCell<Result<u32, String>>,
    /// Its sandboxes (name to path in its mount namespace) as last read: read again when asked
    /// for all of them, or for one they lack (a live picture sees networks come and go).
    sandboxes: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Reach {
    pub fn new(way: Way) -> Arc<Reach> {
        Arc::new(Reach {
            way,
            dockerd: OnceCell::new(),
            sandboxes: Default::default(),
        })
    }

    async fn run(&self, at: At<'_>, argv: &[&str]) -> Result<Ran, String> {
        let mut full: Vec<String> = Vec::new();
        match at {
            At::Node => {}
            At::Sandbox(name) => {
                let pid = self.dockerd().await?;
                let known = self.known_sandbox(name);
                let path = match known {
                    Some(p) => p,
                    None => self
                        .read_sandboxes()
                        .await?
                        .get(name)
                        .cloned()
                        .ok_or_else(|| format!("dockerd (pid {pid}) has no sandbox {name}"))?,
                };
                full.extend(
                    [
                        "nsenter",
                        "-t",
                        &pid.to_string(),
                        "-m",
                        "--",
                        "nsenter",
                        &format!("--net={path}"),
                        "--",
                    ]
                    .map(String::from),
                );
            }
            At::Container(container) => {
                let pid = self.container_pid(container).await?;
                full.extend(["nsenter", "-t", &pid.to_string(), "-n", "--"].map(String::from));
            }
        }
        full.extend(argv.iter().map(|s| s.to_string()));
        self.node_run(&full).await
    }

    /// A process of the container: the first whose cgroup names its ID (Docker's cgroupfs and
    /// systemd drivers both put the full ID in the path).
    async fn container_pid(&self, container: &str) -> Result<u32, String> {
        if container.len() < 12 || !container.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{container:?} is not a container ID"));
        }
        let script = format!("grep -l {container} /proc/[0-9]*/cgroup 2>/dev/null | head -n1");
        let out = self
            .node_run(&["sh".into(), "-c".into(), script])
            .await?
            .result()?;
        out.trim()
            .strip_prefix("/proc/")
            .and_then(|s| s.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no process of container {container} on this node"))
    }

    fn known_sandbox(&self, name: &str) -> Option<String> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// dockerd's sandboxes now, from its mount table.
    async fn read_sandboxes(&self) -> Result<BTreeMap<String, String>, String> {
        let pid = self.dockerd().await?;
        let mountinfo = self
            .node_run(&["cat".into(), format!("/proc/{pid}/mountinfo")])
            .await?
            .result()?;
        let found = nsfs_mounts(&mountinfo);
        *self.sandboxes.lock().unwrap_or_else(|e| e.into_inner()) = found.clone();
        Ok(found)
    }

    async fn dockerd(&self) -> Result<u32, String> {
        self.dockerd
            .get_or_init(|| async { self.find_dockerd().await })
            .await
            .clone()
    }

    async fn find_dockerd(&self) -> Result<u32, String> {
        Ok(match &self.way {
            Way::Local => local_dockerd(&std::fs::metadata("/proc/self/ns/net"))?,
            Way::Netns(ns) => local_dockerd(&std::fs::metadata(format!("/run/netns/{ns}")))?,
            Way::Ssh(_) => {
                // The dockerd in the session's own network namespace: a host may run several
                // (a lab), and the oldest on the host is not necessarily this node's.
                let find = "pgrep -xo --nslist net --ns $$ dockerd || pgrep -xo dockerd";
                let out = self
                    .node_run(&["sh".into(), "-c".into(), find.into()])
                    .await?
                    .result()?;
                out.trim()
                    .parse()
                    .map_err(|_| "no dockerd runs there".to_string())?
            }
        })
    }

    /// Runs a full argv in the node's own namespace.
    async fn node_run(&self, argv: &[String]) -> Result<Ran, String> {
        let what = argv.join(" ");
        let mut cmd = match &self.way {
            Way::Ssh(s) => {
                let line: Vec<String> = argv.iter().map(|a| testbed::ssh::shell_quote(a)).collect();
                let out = tokio::time::timeout(DEADLINE, s.exec(&line.join(" ")))
                    .await
                    .map_err(|_| format!("{what}: no answer within {DEADLINE:?}"))?
                    .map_err(|e| format!("{what}: {e}"))?;
                return Ok(Ran {
                    ok: out.code == 0,
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    code: out.code,
                });
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
        };
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .map_err(|_| format!("{what}: no answer within {DEADLINE:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(ran(&out))
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
