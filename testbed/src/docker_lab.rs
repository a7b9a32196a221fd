//! A real Docker Swarm on this host (Debian's `docker.io`, dockerd 20.10), to compare swarmkit
//! with and to point `swarmkit doctor`, `graph`, `trace` and `ui` at: one dockerd per network
//! namespace, on an underlay bridge in a namespace of its own, everything named after the lab.
//! A lab outlives the process that made it: [`up`] leaves the dockerds running and writes the
//! lab's record; [`down`] (by name, from any process) removes every trace. Nothing runs in, or
//! changes, the host's own network namespace: no interface, route or firewall rule of the
//! host's is touched.
//!
//! Layout for a lab named `NAME`:
//! - namespaces `NAME-ul` (the bridge `br0`), `NAME-n1`, `NAME-n2`, ... (each with `eth0`, a
//!   veth to the bridge, [`UNDERLAY`]`.(10+i)/24`, MTU 1500);
//! - the lab's directory [`RUN_ROOT`]`/NAME/`: its record `lab.json` and, under `nI/`, each
//!   node's data and exec roots, socket, pid file, `daemon.json`, trust key and `dockerd.log`;
//! - each dockerd runs under `ip netns exec NAME-nI unshare --uts`, in a process group of its
//!   own (so it outlives whoever started it), with its own hostname (`NAME-nI`, or the
//!   prefix [`up`] was given and the node's number: `node1`), the host's cgroup hierarchies
//!   remounted (`ip netns exec` mounts a fresh sysfs, which hides them), a tmpfs on each of
//!   `/run/containerd`, `/run/docker` and `/var/lib/docker` (which the shims, dockerd and
//!   libnetwork write to whatever their roots), and `--cgroup-parent /NAME-nI`; dockerd
//!   starts its own containerd;
//! - node 1 is the manager (`swarm init`), the others join as workers;
//! - one image, made with `docker import` from busybox-static, tagged [`IMAGE_TAG`] and
//!   carried to the other nodes with `docker save` / `docker load` (no registry is
//!   reachable). Services name it with `--no-resolve-image` (the dockerds also run with
//!   `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`, so no node tries to pull it).
//!
//! Each dockerd mounts its sandboxes' namespaces inside its own mount namespace, at
//! `EXEC_ROOT/netns/<sandbox>`: from the host's mount namespace they are reached through the
//! dockerd's root, `/proc/<dockerd pid>/root/EXEC_ROOT/netns/<sandbox>` ([`Lab::sandboxes`]),
//! e.g. with `nsenter --net=<that path>`.
//!
//! Two more ways in, each asked for at [`up_with`] ([`access`] makes their material):
//! - `tls`: a throwaway CA, a server certificate per node and one client certificate (docker's
//!   `DOCKER_CERT_PATH` layout in [`Lab::tls_dir`]); each dockerd also serves the Engine API
//!   with `--tlsverify` at `tcp://ADDR:2376` ([`Lab::tcp_host`]);
//! - `ssh`: dropbear in each node's namespace at `ADDR:22`, under a private mount namespace
//!   where the lab's own root home (its `authorized_keys`) is bind-mounted over `/root`, with
//!   a host key per node; [`Lab::inventory`] pins them (the format of `--inventory`).
//!
//! Both listen on the underlay only, which the host has no route to: they are reached from
//! inside the lab's namespaces (`ip netns exec NAME-n1 ...`).

pub mod access;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The underlay's first three octets: node `i` (from 0) is `UNDERLAY.(10+i)/24`. The underlay
/// lives in namespaces of its own, so it cannot collide with the host's networks; it stays
/// clear of docker's own pools (172.17/16 and up, 10.0.0.0/8 in /24s from 10.0.0.0) all the
/// same.
pub const UNDERLAY: &str = "10.231.7";

/// Where labs live: `RUN_ROOT/NAME/`. Not under swarmkit's own run directory
/// (`/run/swarmkit`), nor a name that starts like it: a DOCKER_HOST there names a swarmkit
/// cluster to `swarmkit doctor` and friends.
pub const RUN_ROOT: &str = "/run/swarm-labs";

/// The name every node knows the busybox-static image by.
pub const IMAGE_TAG: &str = "busybox:lab";

/// Most nodes a lab may have (their addresses are `UNDERLAY.10` up).
pub const MAX_NODES: usize = 200;

/// Longest lab name: namespace and cgroup names add `-n200`, hostnames must fit 64.
pub const MAX_NAME: usize = 40;

/// The lab's record, in its directory.
const RECORD: &str = "lab.json";

/// Where dockerd, containerd or the shims write whatever their roots are: a tmpfs over each,
/// inside each node.
const PRIVATE_DIRS: [&str; 3] = ["/run/containerd", "/run/docker", "/var/lib/docker"];

/// How long one docker or ip command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a dockerd may take to answer `/_ping`, and the swarm to list every node Ready.
const DAEMON_DEADLINE: Duration = Duration::from_secs(60);
const SWARM_DEADLINE: Duration = Duration::from_secs(60);
/// How long an SSH server may take to listen.
const SSH_DEADLINE: Duration = Duration::from_secs(15);

/// How long dockerds get to stop on SIGTERM, and the rest to die on SIGKILL, at teardown.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const KILL_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "{0:?} is not a lab name: use 1 to {MAX_NAME} lowercase letters, digits and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "{0:?} is not a hostname prefix: use 1 to 20 letters, digits and '-', starting with a letter"
    )]
    BadPrefix(String),
    #[error("invalid --nodes {0}: give 1 to {MAX_NODES}")]
    BadNodes(usize),
    #[error("a Docker Swarm lab cannot run here: {0}")]
    Unavailable(String),
    #[error(
        "lab {0:?} exists already: use it (swarmkit lab env {0}) or remove it first (swarmkit lab down {0})"
    )]
    Exists(String),
    #[error("no lab named {0:?}: see swarmkit lab ls, or make it with swarmkit lab up {0}")]
    NoLab(String),
    #[error(
        "lab {lab}: its record {path} is unreadable ({why}); `swarmkit lab down {lab}` removes the lab without it"
    )]
    Record {
        lab: String,
        path: PathBuf,
        why: String,
    },
    #[error("lab {lab}: timed out after {after:?} waiting for {what}")]
    Timeout {
        lab: String,
        what: String,
        after: Duration,
    },
    #[error("lab {lab}: the dockerd of {node} exited while starting")]
    DaemonExited { lab: String, node: String },
    #[error("lab {lab}: `{command}` failed: {message}")]
    Command {
        lab: String,
        command: String,
        message: String,
    },
    #[error("lab {lab}: {what}: {source}")]
    Io {
        lab: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {lab} did not come up, and what was made of it is removed again: {cause}{logs}")]
    UpFailed {
        lab: String,
        cause: Box<LabError>,
        /// The end of each dockerd's log, read before the teardown removed it.
        logs: String,
    },
    #[error(
        "lab {lab}: teardown left {}; run `swarmkit lab down {lab}` again, or remove them by hand",
        .left.join(", ")
    )]
    Leftovers { lab: String, left: Vec<String> },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// One dockerd of the lab, as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    /// Its network namespace, `NAME-nI`.
    pub netns: String,
    /// Its hostname (its own UTS namespace), as `docker node ls` shows it.
    pub hostname: String,
    /// Its underlay IPv4 address, without the prefix.
    pub addr: String,
    /// The dockerd's unix socket.
    pub socket: PathBuf,
    /// The dockerd's pid (0 until it started).
    pub dockerd_pid: u32,
    /// The dockerd's `--exec-root`: sandboxes' namespaces are mounted under `netns/` there,
    /// in the dockerd's mount namespace only.
    pub exec_root: PathBuf,
    /// The node's directory: data root, pid file, daemon.json, key.json, dockerd.log.
    pub dir: PathBuf,
    /// Its SSH server's pid, with `ssh` (0 otherwise, or until it started).
    #[serde(default)]
    pub dropbear_pid: u32,
}

impl LabNode {
    /// `unix://SOCKET`, for `DOCKER_HOST` or `-H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its dockerd's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }
}

/// A lab: its record (`RUN_ROOT/NAME/lab.json`), and what can be done with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    /// `RUN_ROOT/NAME`.
    pub dir: PathBuf,
    /// The underlay's namespace, `NAME-ul` (the bridge `br0`, a port `nI` per node).
    pub underlay_ns: String,
    /// Node 1 (index 0) is the manager.
    pub nodes: Vec<LabNode>,
    /// The ID (`sha256:…`) of the busybox-static image every node has, tagged [`IMAGE_TAG`]
    /// (empty until it is loaded).
    pub image: String,
    /// The tag every node knows the image by.
    pub image_tag: String,
    /// Whether each dockerd serves the Engine API over TLS too ([`Lab::tcp_host`]).
    #[serde(default)]
    pub tls: bool,
    /// Whether each node runs an SSH server ([`Lab::inventory`]).
    #[serde(default)]
    pub ssh: bool,
}

/// What [`up_with`] makes besides the swarm.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Hostnames `PREFIX1`, `PREFIX2`, ... instead of `NAME-n1`, ...
    pub hostname_prefix: Option<String>,
    /// The Engine API over TLS at `tcp://ADDR:2376` on each node, certificates in
    /// [`Lab::tls_dir`].
    pub tls: bool,
    /// An SSH server (dropbear) at `ADDR:22` on each node, an inventory in
    /// [`Lab::inventory`].
    pub ssh: bool,
}

/// Why a lab cannot be brought up here, if it cannot: it needs root, docker.io's dockerd and
/// CLI, containerd, util-linux, iproute2 and a static busybox.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces, mounts, dockerd)".into());
    }
    let tools: [(&[&str], &str); 8] = [
        (&["/usr/sbin/dockerd", "/usr/bin/dockerd"], "docker.io"),
        (&["/usr/bin/containerd"], "containerd"),
        (
            &["/usr/bin/containerd-shim-runc-v2"],
            "containerd (containerd-shim-runc-v2)",
        ),
        (&["/usr/bin/docker", "/usr/local/bin/docker"], "docker.io"),
        (&["/usr/bin/unshare"], "util-linux"),
        (&["/usr/bin/nsenter"], "util-linux"),
        (&["/usr/bin/timeout"], "coreutils"),
        (&["/usr/bin/ip", "/sbin/ip", "/bin/ip"], "iproute2"),
    ];
    for (candidates, package) in tools {
        if !candidates.iter().any(|p| Path::new(p).is_file()) {
            return Some(format!(
                "{} is missing (apt-get install {package}, or run scripts/setup)",
                candidates[0]
            ));
        }
    }
    if busybox().is_none() {
        return Some(
            "no static busybox for the image (apt-get install busybox-static, or run scripts/setup)"
                .into(),
        );
    }
    None
}

/// The docker CLI: docker.io's own (the daemons' version, whose output the walkthroughs
/// show), else whichever is on the PATH.
pub fn docker_cli() -> PathBuf {
    let own = PathBuf::from("/usr/bin/docker");
    if own.is_file() {
        own
    } else {
        PathBuf::from("docker")
    }
}

/// Whether `name` may name a lab: lowercase letters, digits and '-', at most [`MAX_NAME`].
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName(name.into()))
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 20
        && prefix.as_bytes()[0].is_ascii_alphabetic()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LabError::BadPrefix(prefix.into()))
    }
}

/// The directory of lab `name`: `RUN_ROOT/NAME`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(name)
}

/// The namespace of node `i` (from 0) of lab `name`: `NAME-n(i+1)`.
pub fn node_netns(name: &str, i: usize) -> String {
    format!("{name}-n{}", i + 1)
}

/// The manager's (node 1's) socket of lab `name`.
pub fn manager_socket(name: &str) -> PathBuf {
    lab_dir(name).join("n1").join("docker.sock")
}

/// Lab `name` from its record.
pub fn load(name: &str) -> Result<Lab> {
    validate_name(name)?;
    let path = lab_dir(name).join(RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NoLab(name.into()));
        }
        Err(e) => {
            return Err(LabError::Record {
                lab: name.into(),
                path,
                why: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| LabError::Record {
        lab: name.into(),
        path,
        why: e.to_string(),
    })
}

/// The labs on this host: every directory under [`RUN_ROOT`] (a lab's directory is made
/// first and removed last, so a half-made or half-removed lab is listed too), with its record
/// or why it has none, sorted by name.
pub fn list() -> Vec<(String, Result<Lab>)> {
    let mut names: Vec<String> = std::fs::read_dir(RUN_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| validate_name(n).is_ok() && lab_dir(n).is_dir());
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let lab = load(&n);
            (n, lab)
        })
        .collect()
}

/// Brings lab `name` up with `nodes` dockerds: node 1 the manager, the others workers, all
/// Ready, the image loaded and tagged on each. Hostnames are `NAME-nI`, or `PREFIXI` when
/// `hostname_prefix` is given (`node` -> `node1`, `node2`, ...). Refuses a name that is in
/// use (see [`down`]); on failure removes what it made and says why, with the dockerds' logs.
/// Takes 2-4 s for 3 nodes here.
pub fn up(name: &str, nodes: usize, hostname_prefix: Option<&str>) -> Result<Lab> {
    up_with(
        name,
        nodes,
        &Options {
            hostname_prefix: hostname_prefix.map(str::to_string),
            ..Options::default()
        },
    )
}

/// [`up`], with the Engine API over TLS and SSH servers when `options` ask for them (each
/// adds well under a second).
pub fn up_with(name: &str, nodes: usize, options: &Options) -> Result<Lab> {
    let hostname_prefix = options.hostname_prefix.as_deref();
    validate_name(name)?;
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(LabError::BadNodes(nodes));
    }
    if let Some(p) = hostname_prefix {
        validate_prefix(p)?;
    }
    if let Some(why) = unavailable() {
        return Err(LabError::Unavailable(why));
    }
    if options.ssh
        && let Some(why) = access::ssh_unavailable()
    {
        return Err(LabError::Unavailable(why));
    }
    let dir = lab_dir(name);
    if dir.exists() || !namespaces_of(name).is_empty() {
        return Err(LabError::Exists(name.into()));
    }
    let mut lab = Lab {
        name: name.into(),
        dir: dir.clone(),
        underlay_ns: format!("{name}-ul"),
        nodes: (0..nodes)
            .map(|i| {
                let node_dir = dir.join(format!("n{}", i + 1));
                let netns = node_netns(name, i);
                LabNode {
                    hostname: match hostname_prefix {
                        Some(p) => format!("{p}{}", i + 1),
                        None => netns.clone(),
                    },
                    netns,
                    addr: format!("{UNDERLAY}.{}", 10 + i),
                    socket: node_dir.join("docker.sock"),
                    dockerd_pid: 0,
                    exec_root: node_dir.join("exec"),
                    dir: node_dir,
                    dropbear_pid: 0,
                }
            })
            .collect(),
        image: String::new(),
        image_tag: IMAGE_TAG.into(),
        tls: options.tls,
        ssh: options.ssh,
    };
    match lab.build() {
        Ok(()) => Ok(lab),
        Err(cause) => {
            let logs = lab.log_tails(30);
            let _ = down(name);
            Err(LabError::UpFailed {
                lab: name.into(),
                cause: Box::new(cause),
                logs,
            })
        }
    }
}

/// Removes lab `name`, whatever state it is in (up, half-made, half-removed, its record
/// missing): its containers killed first, then each dockerd asked to stop, then whatever is
/// left of its processes (containerd, shims) killed; mounts under its directory detached; its
/// namespaces, cgroups and directory removed. True when there was anything to remove.
pub fn down(name: &str) -> Result<bool> {
    validate_name(name)?;
    let dir = lab_dir(name);
    let record = load(name).ok();
    let dockerds: Vec<u32> = record
        .as_ref()
        .map(|l| l.nodes.iter().map(|n| n.dockerd_pid).collect())
        .unwrap_or_default();
    // The SSH servers, when this process started them: reaped as they die.
    let children: Vec<u32> = record
        .as_ref()
        .map(|l| l.nodes.iter().map(|n| n.dropbear_pid).collect())
        .unwrap_or_default();
    let dockerds: Vec<u32> = dockerds
        .into_iter()
        .filter(|p| *p != 0 && process_in_lab(name, &dir, *p))
        .collect();
    let existed = dir.exists() || !namespaces_of(name).is_empty();
    let mut left = Vec::new();
    // Containers first (their cgroups are under /NAME-nI): their shims reap them, and the
    // dockerds then stop without waiting out each container's stop timeout.
    kill_all(&cgroup_members(name), nix::sys::signal::Signal::SIGKILL);
    kill_all(&dockerds, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < STOP_DEADLINE {
        reap(&dockerds);
        if dockerds.iter().all(|p| !alive(*p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whatever is left (a dockerd that did not stop, containerd, shims, a container the
    // swarm restarted meanwhile): SIGKILL until none is left.
    let start = Instant::now();
    loop {
        reap(&dockerds);
        let procs = processes_of(name, &dir);
        if procs.is_empty() {
            break;
        }
        if start.elapsed() > KILL_DEADLINE {
            left.push(format!("processes {procs:?}"));
            break;
        }
        kill_all(&procs, nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
        reap(&children);
    }
    reap(&dockerds);
    reap(&children);
    // Nothing of the nodes' mount namespaces reaches the host's (ip netns exec makes them
    // slaves); detach anything that did all the same.
    for mnt in mounts_under(&dir).into_iter().rev() {
        let _ = nix::mount::umount2(mnt.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    for ns in namespaces_of(name) {
        if let Err(e) = run(&["ip", "netns", "delete", &ns]) {
            left.push(format!("namespace {ns} ({e})"));
        }
    }
    left.extend(remove_cgroups(name));
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        left.push(format!("{} ({e})", dir.display()));
    }
    if left.is_empty() {
        Ok(existed)
    } else {
        Err(LabError::Leftovers {
            lab: name.into(),
            left,
        })
    }
}

impl Lab {
    /// `unix://SOCKET` of the manager (node 1), for `DOCKER_HOST` or `-H`.
    pub fn host(&self) -> String {
        self.nodes[0].host()
    }

    /// How `swarmkit doctor`, `graph`, `trace` and `ui` reach each node, as `--reach` and
    /// SWARMKIT_REACH take it: `HOST1=netns:NS1,HOST2=netns:NS2,...`.
    pub fn reach(&self) -> String {
        let each: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}=netns:{}", n.hostname, n.netns))
            .collect();
        each.join(",")
    }

    /// With `tls`: the Engine API of node `node` over TLS, `tcp://ADDR:2376` (for
    /// `DOCKER_HOST` with `DOCKER_TLS_VERIFY=1` and `DOCKER_CERT_PATH=`[`Lab::tls_dir`]).
    /// Reachable from inside the lab's namespaces only.
    pub fn tcp_host(&self, node: usize) -> Option<String> {
        self.tls
            .then(|| format!("tcp://{}:{}", self.nodes[node].addr, access::TLS_PORT))
    }

    /// With `tls`: docker's `DOCKER_CERT_PATH`, `ca.pem` (the lab's CA), `cert.pem` and
    /// `key.pem` (a client's, 0600).
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.join("tls"))
    }

    /// With `ssh`: the inventory of the nodes' SSH servers (`[[host]]` name = hostname,
    /// address = `ADDR:22`, user root, key = [`Lab::ssh_key`], host_key pinned), as
    /// `swarmkit doctor --inventory` takes it. Reachable from inside the lab's namespaces
    /// only.
    pub fn inventory(&self) -> Option<PathBuf> {
        self.ssh.then(|| self.dir.join("inventory.toml"))
    }

    /// With `ssh`: the client's private key (OpenSSH format, 0600) the servers accept.
    pub fn ssh_key(&self) -> Option<PathBuf> {
        self.ssh.then(|| self.ssh_dir().join("id_ed25519"))
    }

    fn ssh_dir(&self) -> PathBuf {
        self.dir.join("ssh")
    }

    /// The docker CLI against node `node`'s dockerd, bounded by a timeout.
    pub fn docker(&self, node: usize, args: &[&str]) -> std::io::Result<Output> {
        docker_at(&self.nodes[node].socket, args)
    }

    /// `argv` in node `node`'s network namespace (`ip netns exec`), bounded by a timeout.
    pub fn in_node(&self, node: usize, argv: &[&str]) -> std::io::Result<Output> {
        let mut all = vec!["ip", "netns", "exec", self.nodes[node].netns.as_str()];
        all.extend_from_slice(argv);
        bounded(&all)
    }

    /// `argv` in node `node`'s dockerd's network, mount and UTS namespaces (`nsenter -t PID
    /// -n -m -u`): where its sandboxes' namespace mounts and its cgroups are visible.
    pub fn in_dockerd(&self, node: usize, argv: &[&str]) -> std::io::Result<Output> {
        let pid = self.nodes[node].dockerd_pid.to_string();
        let mut all = vec!["nsenter", "-t", pid.as_str(), "-n", "-m", "-u", "--"];
        all.extend_from_slice(argv);
        bounded(&all)
    }

    /// The sandbox namespaces of node `node`'s dockerd (containers' and the overlays' own,
    /// `1-<network id prefix>`), as paths that work from the host's mount namespace:
    /// `/proc/<dockerd pid>/root/<exec-root>/netns/<sandbox>`, for `nsenter --net=<path>`.
    pub fn sandboxes(&self, node: usize) -> Vec<PathBuf> {
        let n = &self.nodes[node];
        let dir = PathBuf::from(format!("/proc/{}/root", n.dockerd_pid))
            .join(n.exec_root.strip_prefix("/").unwrap_or(&n.exec_root))
            .join("netns");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    /// How many of the lab's dockerds run now.
    pub fn running(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.dockerd_pid != 0 && alive(n.dockerd_pid))
            .count()
    }

    /// The last `lines` lines of each dockerd's log, each under a header naming it.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .filter(|n| n.log().exists())
            .map(|n| {
                format!(
                    "\n--- {} (last {lines} lines)\n{}",
                    n.log().display(),
                    tail(&n.log(), lines)
                )
            })
            .collect()
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let (lab, what) = (self.name.clone(), what.into());
        move |source| LabError::Io { lab, what, source }
    }

    fn command_failed(&self, command: String, message: String) -> LabError {
        LabError::Command {
            lab: self.name.clone(),
            command,
            message,
        }
    }

    /// Writes the record atomically (a temporary file renamed over it), so a reader never
    /// sees half of it.
    fn save(&self) -> Result<()> {
        let path = self.dir.join(RECORD);
        let tmp = self.dir.join(format!(".{RECORD}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|e| LabError::Record {
            lab: self.name.clone(),
            path: path.clone(),
            why: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(self.io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(self.io(format!("writing {}", path.display())))
    }

    fn build(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(self.io(format!("creating {}", self.dir.display())))?;
        self.save()?;
        self.underlay()?;
        if let Some(tls) = self.tls_dir() {
            access::make_tls(&self.name, &tls, &self.nodes)
                .map_err(self.io("making the lab's TLS certificates"))?;
        }
        self.start_daemons()?;
        self.save()?;
        if self.ssh {
            let (ssh, inventory) = (self.ssh_dir(), self.dir.join("inventory.toml"));
            access::make_ssh(&ssh, &inventory, &self.nodes)
                .map_err(self.io("making the lab's SSH keys"))?;
            self.start_ssh()?;
            self.save()?;
        }
        self.form_swarm()?;
        self.save()
    }

    /// Starts dropbear in each node's namespace (see [`access::dropbear_script`]), each in a
    /// process group of its own, and waits until each listens.
    fn start_ssh(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let script = access::dropbear_script(n, &self.ssh_dir());
            let log_path = n.dir.join("dropbear.log");
            let log = std::fs::File::create(&log_path)
                .map_err(self.io(format!("creating {}", log_path.display())))?;
            let log2 = log
                .try_clone()
                .map_err(self.io(format!("opening {}", log_path.display())))?;
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &n.netns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(self.io(format!("starting the SSH server of {}", n.netns)))?;
            // `ip netns exec`, `unshare` and `sh` exec each other: the child is dropbear.
            self.nodes[i].dropbear_pid = child.id();
        }
        self.save()?;
        for n in &self.nodes {
            let start = Instant::now();
            while !access::listens(n.dropbear_pid, access::SSH_PORT) {
                if !alive(n.dropbear_pid) {
                    reap(&[n.dropbear_pid]);
                    return Err(self.command_failed(
                        format!("dropbear in {}", n.netns),
                        format!(
                            "it exited while starting: {}",
                            tail(&n.dir.join("dropbear.log"), 10)
                        ),
                    ));
                }
                if start.elapsed() > SSH_DEADLINE {
                    return Err(LabError::Timeout {
                        lab: self.name.clone(),
                        what: format!("the SSH server of {} to listen", n.netns),
                        after: SSH_DEADLINE,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip"];
        all.extend_from_slice(args);
        run(&all).map_err(|m| self.command_failed(all.join(" "), m))
    }

    /// The bridge in `NAME-ul` and a veth from it into each node's namespace.
    fn underlay(&self) -> Result<()> {
        let ul = self.underlay_ns.as_str();
        self.ip(&["netns", "add", ul])?;
        self.ip(&["-n", ul, "link", "set", "lo", "up"])?;
        self.ip(&[
            "-n", ul, "link", "add", "br0", "mtu", "1500", "type", "bridge",
        ])?;
        self.ip(&["-n", ul, "link", "set", "br0", "up"])?;
        for (i, n) in self.nodes.iter().enumerate() {
            let ns = n.netns.as_str();
            let port = format!("n{}", i + 1);
            self.ip(&["netns", "add", ns])?;
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n", ul, "link", "add", &port, "mtu", "1500", "type", "veth", "peer", "name",
                "eth0", "mtu", "1500", "netns", ns,
            ])?;
            self.ip(&["-n", ul, "link", "set", &port, "master", "br0", "up"])?;
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", n.addr),
                "dev",
                "eth0",
            ])?;
            self.ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Starts every dockerd at once, each in a process group of its own (it outlives this
    /// process), and waits until each answers `/_ping`.
    fn start_daemons(&mut self) -> Result<()> {
        // Some paths are fixed whatever the daemons' roots: the shims' sockets go to
        // /run/containerd/s, dockerd makes /run/docker/plugins, and libnetwork writes its load
        // balancers' hosts and resolv.conf under /var/lib/docker/network/files. A tmpfs over
        // each, inside each node, keeps them off the host (which keeps only the empty
        // directories, made here if missing, as mount points).
        for d in PRIVATE_DIRS {
            std::fs::create_dir_all(d).map_err(self.io(format!("creating {d}")))?;
        }
        let private: String = PRIVATE_DIRS
            .iter()
            .map(|d| format!("mount -t tmpfs -o mode=0711 private {d}\n"))
            .collect();
        let cgroups = cgroup_mounts();
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            std::fs::create_dir_all(&n.dir)
                .map_err(self.io(format!("creating {}", n.dir.display())))?;
            let d = n.dir.display();
            // The trust key would go to /etc/docker/key.json, on the host; only the config
            // file moves it.
            let config = format!(r#"{{"deprecated-key-path": "{d}/key.json"}}"#);
            std::fs::write(n.dir.join("daemon.json"), config)
                .map_err(self.io(format!("writing {d}/daemon.json")))?;
            // `$$` is the dockerd's pid: the shell execs it.
            let script = format!(
                "set -e\n\
                 hostname {host}\n\
                 {cgroups}\
                 {private}\
                 echo $$ > {d}/launch.pid\n\
                 exec dockerd --data-root {d}/data --exec-root {exec} --pidfile {d}/dockerd.pid \
                 -H unix://{sock} {tls}--config-file {d}/daemon.json --cgroup-parent /{netns} \
                 --log-level info\n",
                tls = if self.tls {
                    format!("{} ", access::dockerd_tls_flags(n))
                } else {
                    String::new()
                },
                host = n.hostname,
                exec = n.exec_root.display(),
                sock = n.socket.display(),
                netns = n.netns,
            );
            let log = std::fs::File::create(n.log())
                .map_err(self.io(format!("creating {}", n.log().display())))?;
            let log2 = log
                .try_clone()
                .map_err(self.io(format!("opening {}", n.log().display())))?;
            let child = Command::new("ip")
                .args([
                    "netns", "exec", &n.netns, "unshare", "--uts", "sh", "-c", &script,
                ])
                .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(self.io(format!("starting the dockerd of {}", n.netns)))?;
            // `ip netns exec`, `unshare` and `sh` exec each other: the child is the dockerd.
            self.nodes[i].dockerd_pid = child.id();
        }
        self.save()?;
        for n in &self.nodes {
            let start = Instant::now();
            loop {
                if !alive(n.dockerd_pid) {
                    reap(&[n.dockerd_pid]);
                    return Err(LabError::DaemonExited {
                        lab: self.name.clone(),
                        node: n.netns.clone(),
                    });
                }
                if ping(&n.socket) {
                    break;
                }
                if start.elapsed() > DAEMON_DEADLINE {
                    return Err(LabError::Timeout {
                        lab: self.name.clone(),
                        what: format!("the dockerd of {} to answer /_ping", n.netns),
                        after: DAEMON_DEADLINE,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The docker CLI against node `i`, failing with its output unless it exits 0.
    fn docker_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let what = || format!("docker -H {} {}", self.nodes[i].host(), args.join(" "));
        let out = self.docker(i, args).map_err(self.io(what()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.command_failed(what(), output_text(&out)))
        }
    }

    /// `swarm init` on node 1, the image made there and carried to the others, the others
    /// joined as workers; waits until the manager lists every node Ready.
    fn form_swarm(&mut self) -> Result<()> {
        let manager = &self.nodes[0];
        let listen = format!("{}:2377", manager.addr);
        self.docker_ok(
            0,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                &manager.addr,
                "--listen-addr",
                &listen,
            ],
        )?;
        let token = self
            .docker_ok(0, &["swarm", "join-token", "-q", "worker"])?
            .trim()
            .to_string();
        let join_to = listen;
        let this: &Lab = self;
        let image = std::thread::scope(|s| -> Result<String> {
            let joins: Vec<_> = (1..this.nodes.len())
                .map(|i| {
                    let (token, join_to) = (&token, &join_to);
                    let n = &this.nodes[i];
                    let listen = format!("{}:2377", n.addr);
                    s.spawn(move || {
                        this.docker_ok(
                            i,
                            &[
                                "swarm",
                                "join",
                                "--token",
                                token,
                                "--advertise-addr",
                                &n.addr,
                                "--listen-addr",
                                &listen,
                                join_to,
                            ],
                        )
                    })
                })
                .collect();
            let image = this.make_image();
            for j in joins {
                j.join().map_err(|_| {
                    this.command_failed("docker swarm join".into(), "the thread panicked".into())
                })??;
            }
            image
        })?;
        self.image = image;
        let want = self.nodes.len();
        let start = Instant::now();
        loop {
            let out = self.docker(0, &["node", "ls", "--format", "{{.Status}}"]);
            let ready = out.is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.trim() == "Ready")
                        .count()
                        == want
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > SWARM_DEADLINE {
                return Err(LabError::Timeout {
                    lab: self.name.clone(),
                    what: format!("{want} Ready nodes in docker node ls"),
                    after: SWARM_DEADLINE,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The busybox-static image: imported on node 1 as [`IMAGE_TAG`], saved, and loaded on the
    /// others at once. Returns its ID.
    fn make_image(&self) -> Result<String> {
        let rootfs = rootfs_tar().map_err(self.io("building the busybox image's root"))?;
        let what = format!("docker import - {IMAGE_TAG}");
        let mut import = Command::new("timeout")
            .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
            .arg(docker_cli())
            .arg("-H")
            .arg(self.host())
            .args(["import", "-", IMAGE_TAG])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(self.io(what.clone()))?;
        if let Some(mut stdin) = import.stdin.take() {
            stdin.write_all(&rootfs).map_err(self.io(what.clone()))?;
        }
        let out = import.wait_with_output().map_err(self.io(what.clone()))?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !id.starts_with("sha256:") {
            return Err(self.command_failed(what, output_text(&out)));
        }
        if self.nodes.len() > 1 {
            let saved = self.dir.join("image.tar");
            let saved_s = saved.to_string_lossy().into_owned();
            self.docker_ok(0, &["save", "-o", &saved_s, IMAGE_TAG])?;
            std::thread::scope(|s| -> Result<()> {
                let loads: Vec<_> = (1..self.nodes.len())
                    .map(|i| {
                        let saved_s = &saved_s;
                        s.spawn(move || self.docker_ok(i, &["load", "-q", "-i", saved_s]))
                    })
                    .collect();
                for l in loads {
                    l.join().map_err(|_| {
                        self.command_failed("docker load".into(), "the thread panicked".into())
                    })??;
                }
                Ok(())
            })?;
            let _ = std::fs::remove_file(&saved);
        }
        Ok(id)
    }
}

/// The namespaces of lab `name` that exist now: `NAME-ul` and `NAME-n<digits>`, sorted.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut found: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_ours(name, n))
        .collect();
    found.sort();
    found
}

/// Whether `ns` is one of lab `name`'s names: `NAME-ul` or `NAME-n<digits>`.
fn is_ours(name: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    rest == "ul"
        || rest
            .strip_prefix('n')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The net namespace links (`net:[INODE]`) of lab `name`'s namespaces.
fn netns_links(name: &str) -> Vec<String> {
    namespaces_of(name)
        .iter()
        .filter_map(|ns| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(format!("/run/netns/{ns}")).ok()?;
            Some(format!("net:[{}]", m.ino()))
        })
        .collect()
}

/// Whether process `pid` is one of lab `name`'s (see [`processes_of`]).
fn process_in_lab(name: &str, dir: &Path, pid: u32) -> bool {
    processes_of(name, dir).contains(&pid)
}

/// The processes of lab `name` (directory `dir`) that run now: every process in one of its
/// network namespaces (dockerd, containerd, shims), in one of its cgroups (containers), or
/// whose command line names its directory. Never the calling process.
pub fn processes_of(name: &str, dir: &Path) -> Vec<u32> {
    let netns = netns_links(name);
    let dir = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    let me = std::process::id();
    let mut found: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| {
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            netns.contains(&net) || cmdline.contains(&dir) || in_cgroups_of(name, pid)
        })
        .collect();
    found.sort();
    found
}

/// The processes in lab `name`'s cgroups (`/NAME-nI/...`): its containers.
fn cgroup_members(name: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| in_cgroups_of(name, pid))
        .collect()
}

fn in_cgroups_of(name: &str, pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
        c.lines().any(|l| {
            l.splitn(3, ':')
                .nth(2)
                .and_then(|path| path.strip_prefix('/'))
                .is_some_and(|p| is_ours(name, p.split('/').next().unwrap_or("")))
        })
    })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Reaps those of `pids` that are this process's exited children (the dockerds, when this
/// process started them); a no-op for the others.
fn reap(pids: &[u32]) {
    for &pid in pids {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

fn kill_all(pids: &[u32], signal: nix::sys::signal::Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// Removes the cgroups `/NAME-nI` (and what dockerd made under them) from every hierarchy;
/// returns those it could not remove.
fn remove_cgroups(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    fn remove(dir: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                remove(&e.path())?;
            }
        }
        std::fs::remove_dir(dir)
    }
    let mut roots: Vec<PathBuf> = cgroup_mounts_raw()
        .into_iter()
        .map(|m| PathBuf::from(m.mountpoint))
        .collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let ours = e.file_name().to_str().is_some_and(|n| is_ours(name, n));
            if !ours {
                continue;
            }
            // A cgroup is busy for a moment after its last task exits.
            let start = Instant::now();
            while let Err(err) = remove(&e.path()) {
                if start.elapsed() > Duration::from_secs(5) {
                    left.push(format!("cgroup {} ({err})", e.path().display()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    left
}

/// One cgroup filesystem the host mounts under /sys/fs/cgroup.
struct CgroupMount {
    mountpoint: String,
    fstype: String,
    options: String,
}

/// The host's cgroup mounts (v1 hierarchies, the v2 one, and the tmpfs that holds them), in
/// mount order, from /proc/self/mountinfo.
fn cgroup_mounts_raw() -> Vec<CgroupMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split(' ').nth(4)?.to_string();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let options = post.nth(1).unwrap_or("").to_string();
            let under = mountpoint == "/sys/fs/cgroup" || mountpoint.starts_with("/sys/fs/cgroup/");
            (under && ["tmpfs", "cgroup", "cgroup2"].contains(&fstype.as_str())).then_some(
                CgroupMount {
                    mountpoint,
                    fstype,
                    options,
                },
            )
        })
        .filter(|m| m.fstype != "tmpfs" || m.mountpoint == "/sys/fs/cgroup")
        .collect()
}

/// Shell lines that mount the host's cgroup hierarchies again inside a node (whose fresh
/// sysfs hides them), v1 hierarchies by their controllers and name.
fn cgroup_mounts() -> String {
    let mut script = String::new();
    for m in cgroup_mounts_raw() {
        let line = match m.fstype.as_str() {
            "tmpfs" => format!("mount -t tmpfs -o mode=0755 cgroup {}\n", m.mountpoint),
            "cgroup2" => format!("mount -t cgroup2 cgroup2 {}\n", m.mountpoint),
            _ => {
                let opts: Vec<&str> = m
                    .options
                    .split(',')
                    .filter(|o| !["rw", "ro"].contains(o) && !o.starts_with("release_agent="))
                    .collect();
                let named_only = opts.iter().all(|o| o.starts_with("name="));
                let opts = if named_only {
                    format!("none,{}", opts.join(","))
                } else {
                    opts.join(",")
                };
                format!("mount -t cgroup -o {opts} cgroup {}\n", m.mountpoint)
            }
        };
        if m.mountpoint != "/sys/fs/cgroup" {
            script.push_str(&format!("mkdir -p {}\n", m.mountpoint));
        }
        script.push_str(&line);
    }
    script
}

/// Mount points in the host's mount namespace at or under `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let under = format!("{}/", dir.trim_end_matches('/'));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.as_str() == dir || m.starts_with(&under))
        .collect()
}

/// A tar of the image's root: busybox-static at /bin/busybox, a link to it for every applet,
/// and the usual empty directories.
fn rootfs_tar() -> std::io::Result<Vec<u8>> {
    let busybox = busybox().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no static busybox (apt-get install busybox-static)",
        )
    })?;
    let applets = Command::new(&busybox).arg("--list").output()?;
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty())
    };
    for d in [
        "bin", "dev", "etc", "proc", "sys", "root", "var", "www", "usr", "usr/bin", "sbin",
    ] {
        dir(&mut tar, d, 0o755)?;
    }
    dir(&mut tar, "tmp", 0o1777)?;
    tar.append_path_with_name(&busybox, "bin/busybox")?;
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, body) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        tar.append_data(&mut h, path, body.as_bytes())?;
    }
    tar.into_inner()
}

/// The docker CLI against `socket`, bounded by [`COMMAND_TIMEOUT`].
fn docker_at(socket: &Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new("timeout")
        .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
        .arg(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// `argv` bounded by [`COMMAND_TIMEOUT`].
fn bounded(argv: &[&str]) -> std::io::Result<Output> {
    Command::new("timeout")
        .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .output()
}

/// `argv` bounded by [`COMMAND_TIMEOUT`]; what it said when it did not exit 0.
fn run(argv: &[&str]) -> std::result::Result<(), String> {
    match bounded(argv) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(output_text(&out)),
        Err(e) => Err(e.to_string()),
    }
}

/// What a failed command said: its stderr and stdout, trimmed, and its exit status.
fn output_text(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    format!("{} ({})", text.trim(), out.status)
}

/// Whether the dockerd at `socket` answers `GET /_ping` with OK.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A statically linked busybox (busybox-static's `/bin/busybox`): the one binary of the image.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).is_ok_and(|elf| is_static_elf(&elf)))
}

/// Whether `elf` is a 64-bit ELF executable with no program interpreter (no PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_owns_exactly_its_names() {
        assert!(is_ours("t1-sw", "t1-sw-ul"));
        assert!(is_ours("t1-sw", "t1-sw-n1"));
        assert!(is_ours("t1-sw", "t1-sw-n12"));
        assert!(!is_ours("t1-sw", "t1-sw-n"));
        assert!(!is_ours("t1-sw", "t1-sw-x-n1"));
        assert!(!is_ours("t1-sw", "t1-sw2-n1"));
        assert!(!is_ours("t1-sw", "t1-sw"));
    }

    #[test]
    fn lab_names_and_prefixes_are_checked() {
        for good in ["x", "doctor-wt123", "t4242-dsw"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "X", "a/b", "a.b", &"a".repeat(MAX_NAME + 1)] {
            assert!(
                matches!(validate_name(bad), Err(LabError::BadName(_))),
                "{bad}"
            );
        }
        assert!(validate_prefix("node").is_ok());
        assert!(validate_prefix("1node").is_err());
        assert!(matches!(down("../x"), Err(LabError::BadName(_))));
    }

    #[test]
    fn a_record_round_trips_and_says_how_to_reach_each_node() {
        let node = |i: usize| LabNode {
            netns: node_netns("lab", i),
            hostname: format!("node{}", i + 1),
            addr: format!("{UNDERLAY}.{}", 10 + i),
            socket: lab_dir("lab").join(format!("n{}/docker.sock", i + 1)),
            dockerd_pid: 0,
            exec_root: PathBuf::from("/x"),
            dir: PathBuf::from("/x"),
            dropbear_pid: 0,
        };
        let lab = Lab {
            name: "lab".into(),
            dir: lab_dir("lab"),
            underlay_ns: "lab-ul".into(),
            nodes: vec![node(0), node(1)],
            image: "sha256:0".into(),
            image_tag: IMAGE_TAG.into(),
            tls: false,
            ssh: false,
        };
        let back: Lab = serde_json::from_str(&serde_json::to_string(&lab).unwrap()).unwrap();
        assert_eq!(back, lab);
        assert_eq!(lab.reach(), "node1=netns:lab-n1,node2=netns:lab-n2");
        assert_eq!(
            lab.host(),
            format!("unix://{}", manager_socket("lab").display())
        );
    }

    #[test]
    fn a_static_busybox_has_no_interpreter() {
        if let Some(bb) = busybox() {
            assert!(is_static_elf(&std::fs::read(bb).unwrap()));
        }
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh), "/bin/sh is dynamically linked");
    }
}
