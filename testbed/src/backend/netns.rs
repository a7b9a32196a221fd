//! The netns backend: every node is a network namespace on this host, plugged into the
//! cluster's underlay bridge by a veth whose bridge end is `p<N>`. Agents reach the manager
//! over TCP across that underlay (the manager listens inside the underlay namespace), so that
//! cutting a node's port cuts its control channel as it would on a real network.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use netcore::lb::Driver;
use netcore::link::Links;
use netcore::netns::{NetNs, enter_raw};
use nix::sched::CloneFlags;

use super::NodeBackend;
use crate::procs;
use crate::record::{ClusterInfo, UpOptions};
use crate::supervise::{self, Spec};
use crate::{Backend, Fault, Inside, Result, TestbedError, io};
use cluster::client::ManagerClient;
use cluster::paths::ClusterPaths;

pub struct Netns;

pub(crate) const UNDERLAY_BRIDGE: &str = "br0";
/// The manager's address on the underlay (nodes are .11 and up).
pub const MANAGER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const MANAGER_PORT: u16 = cluster::raft::MANAGER_PORT;
/// Set on the manager: bind the agents' TCP listener inside the cluster's underlay namespace.
pub const ENV_UNDERLAY_LISTEN: &str = "SWARMKIT_MANAGER_UNDERLAY";
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Every node of a new cluster is ready within this (namespaces are cheap; agents are local).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_NODES: usize = 200;

/// Underlay address of the `i`th node (1-based).
pub fn node_addr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 10 + i as u8), 24).expect("valid /24")
}

/// The bridge end of the `i`th node's underlay veth (1-based).
fn port(i: usize) -> String {
    format!("p{i}")
}

fn index_of(info: &ClusterInfo, node: &str) -> usize {
    info.nodes
        .iter()
        .position(|n| n == node)
        .map_or(0, |i| i + 1)
}

/// The switch, with the manager's underlay address on it.
pub async fn create_switch(underlay: &NetNs) -> Result<()> {
    netcore::underlay::create_switch(underlay, UNDERLAY_BRIDGE).await?;
    let links = Links::new(underlay)?;
    let br = links.require(UNDERLAY_BRIDGE).await?;
    let addr = Ipv4Net::new(MANAGER_ADDR, 24).expect("valid /24");
    match links.add_addr(br, addr).await {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        r => Ok(r?),
    }
}

/// The manager's listener for agents: bound on a thread that entered the underlay namespace,
/// then served from the manager's own (root) namespace.
pub fn underlay_listener(paths: &ClusterPaths) -> Result<std::net::TcpListener> {
    let ns = NetNs::open(&paths.underlay_ns())?;
    let addr = std::net::SocketAddr::from((MANAGER_ADDR, MANAGER_PORT));
    ns.run(move || std::net::TcpListener::bind(addr))?
        .map_err(crate::io(format!(
            "binding {addr} in {}",
            paths.underlay_ns()
        )))
}

/// The resolvers of the cluster's nodes: the underlay's own address, where a DNS server of
/// the user's (or a test's) may listen in the underlay namespace. The host's resolvers are
/// never the nodes': the underlay is the cluster's whole outside world.
fn underlay_resolv_conf(paths: &ClusterPaths) -> std::path::PathBuf {
    paths.run_dir().join("underlay-resolv.conf")
}

fn write_underlay_resolv_conf(paths: &ClusterPaths) -> Result<()> {
    let text = format!(
        "# The nodes of cluster {c} resolve through its underlay: serve DNS on {MANAGER_ADDR}:53 \
         in namespace {ns}.\nnameserver {MANAGER_ADDR}\n",
        c = paths.name,
        ns = paths.underlay_ns(),
    );
    cluster::paths::write_atomically(&underlay_resolv_conf(paths), text.as_bytes())
        .map_err(crate::io("writing the nodes' resolv.conf"))
}

/// How the `i`th node's agent is started: inside its namespace, dialling the manager across
/// the underlay.
/// Where agents find the managers: every manager node's underlay address when there are
/// several, else the one manager's on the underlay.
fn manager_addrs(paths: &ClusterPaths) -> Vec<String> {
    match crate::managers::members(paths) {
        Ok(members) => members.into_values().map(|m| m.addr).collect(),
        Err(_) => vec![format!("{MANAGER_ADDR}:{MANAGER_PORT}")],
    }
}

pub fn agent_spec(i: usize, hostname: &str, lb: Option<Driver>, paths: &ClusterPaths) -> Spec {
    let (ns_var, ns) = cluster::agent::NodeNs::Named.as_env();
    let mut env = vec![
        (ns_var.to_string(), ns),
        (
            cluster::agent::ENV_NODE_ADDR.to_string(),
            node_addr(i).addr().to_string(),
        ),
        (
            cluster::agent::ENV_MANAGER_TCP.to_string(),
            manager_addrs(paths).join(","),
        ),
        (
            cluster::agent::ENV_RESOLV_CONF.to_string(),
            underlay_resolv_conf(paths).display().to_string(),
        ),
    ];
    if let Some(lb) = lb {
        env.push((cluster::agent::ENV_LB.to_string(), lb.to_string()));
    }
    // Netns nodes share this host's files: the certificates directory is the one given.
    let registry = crate::record::registry_of(paths);
    env.extend(
        registry
            .env(registry.local_certs().as_deref())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    Spec {
        name: hostname.to_string(),
        args: vec!["__agent".into(), "--node".into(), hostname.to_string()],
        env,
        node_ns: Some(paths.node_ns(hostname)),
        hostname: Some(hostname.to_string()),
    }
}

async fn set_port(paths: &ClusterPaths, i: usize, up: bool) -> Result<()> {
    let links = Links::new(&NetNs::open(&paths.underlay_ns())?)?;
    if up {
        links.set_up_by_name(&port(i)).await?;
    } else {
        links.set_down_by_name(&port(i)).await?;
    }
    Ok(())
}

fn open_ns(path: &str, flag: CloneFlags) -> Result<(std::fs::File, CloneFlags)> {
    std::fs::File::open(path)
        .map(|f| (f, flag))
        .map_err(io(format!("opening namespace {path}")))
}

/// Runs argv entering `fds` first (in the child, before exec); returns its exit code.
fn run_in(fds: Vec<(std::fs::File, CloneFlags)>, argv: &[String]) -> Result<i32> {
    let Some(program) = argv.first() else {
        return Err(TestbedError::NoCommand);
    };
    let raw: Vec<(std::os::fd::RawFd, CloneFlags)> = fds
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
    let status =
        tokio::task::block_in_place(|| cmd.status()).map_err(io(format!("running {program}")))?;
    drop(fds);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The short names of a node's sandboxes (network namespaces the agent made for it).
fn node_sandboxes(paths: &ClusterPaths, node: &str) -> Vec<String> {
    let prefix = paths.node_sandbox_ns(node, "");
    crate::sandbox_names(
        &prefix,
        NetNs::list_with_prefix(&prefix).iter().map(String::as_str),
    )
}

impl NodeBackend for Netns {
    fn check(&self, opts: &UpOptions) -> Result<()> {
        if !(1..=MAX_NODES).contains(&opts.nodes) {
            return Err(TestbedError::InvalidNodes {
                backend: Backend::Netns,
                given: opts.nodes,
                max: MAX_NODES,
            });
        }
        crate::managers::check_count(opts)?;
        // Namespaces share the host's kernel, so what it lacks, every node lacks.
        if opts.lb == Some(Driver::Ipvs) && netcore::lb::probe() != Driver::Ipvs {
            return Err(TestbedError::KernelLacks {
                feature: "IPVS (CONFIG_IP_VS)",
                hint: "netns nodes cannot use --lb ipvs: use --lb nftables, or the qemu backend whose guests have IPVS",
            });
        }
        Ok(())
    }

    async fn up(&self, opts: &UpOptions, paths: &ClusterPaths) -> Result<Vec<String>> {
        let underlay = NetNs::create(&paths.underlay_ns())?;
        if !netcore::link::probe_vxlan(&underlay).await? {
            return Err(TestbedError::KernelLacks {
                feature: "VXLAN (CONFIG_VXLAN)",
                hint: "overlay networks need it; use a kernel with VXLAN or the qemu backend",
            });
        }
        create_switch(&underlay).await?;
        write_underlay_resolv_conf(paths)?;
        // The manager starts while the nodes are plugged.
        // The registries the nodes pull from may be on the underlay: the manager resolves
        // digests from there too.
        let replicated = opts.managers > 1;
        if replicated {
            crate::managers::seed_replicas(
                opts,
                paths,
                &crate::managers::underlay_replicas(opts.managers),
                &[(cluster::registry::ENV_REGISTRY_NETNS, paths.underlay_ns())],
            )?;
        } else {
            crate::supervise::start_manager(
                opts,
                paths,
                &[
                    (ENV_UNDERLAY_LISTEN, "1".to_string()),
                    (cluster::registry::ENV_REGISTRY_NETNS, paths.underlay_ns()),
                ],
            )?;
        }
        let hostnames: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
        let plugs = hostnames.iter().enumerate().map(|(i, h)| {
            let underlay = underlay.clone();
            let ns_name = paths.node_ns(h);
            async move {
                let node = NetNs::create(&ns_name)?;
                netcore::underlay::plug(
                    &underlay,
                    UNDERLAY_BRIDGE,
                    &port(i + 1),
                    &node,
                    "eth0",
                    node_addr(i + 1),
                )
                .await?;
                Ok::<_, TestbedError>(())
            }
        });
        futures::future::try_join_all(plugs).await?;
        // The agents dial the manager across the underlay; each opens its node's namespace.
        // Where managers replicate, the manager nodes' agents start first: each runs its
        // node's manager, and the cluster answers once a quorum of them do.
        let managers = if replicated { opts.managers } else { 0 };
        for (i, h) in hostnames.iter().enumerate().take(managers) {
            supervise::ensure(paths, &agent_spec(i + 1, h, opts.lb, paths))?;
        }
        if replicated {
            supervise::ensure_supervisor(paths)?;
        }
        crate::supervise::wait_manager(paths).await?;
        crate::supervise::write_join_token(paths).await?;

        // The first node leads, as the node that ran `docker swarm init` does: it registers
        // before the others start, so which node leads does not depend on a race.
        let client = ManagerClient::of_cluster(paths);
        for (i, h) in hostnames.iter().enumerate() {
            supervise::ensure(paths, &agent_spec(i + 1, h, opts.lb, paths))?;
            if i == 0 {
                crate::wait::wait_until(
                    &format!("{h} to register"),
                    READY_TIMEOUT,
                    &paths.run_dir(),
                    || crate::hostname_ready(&client, h),
                )
                .await?;
            }
        }
        let want = opts.nodes;
        crate::wait::wait_until(
            "every node to be ready",
            READY_TIMEOUT,
            &paths.run_dir(),
            || async {
                client
                    .get::<Vec<bollard::models::Node>>("/nodes")
                    .await
                    .map(|ns| ns.iter().filter(|n| crate::node_ready(n)).count() == want)
                    .unwrap_or(false)
            },
        )
        .await?;
        Ok(hostnames)
    }

    async fn exec(
        &self,
        paths: &ClusterPaths,
        node: &str,
        inside: Inside<'_>,
        argv: &[String],
    ) -> Result<i32> {
        if let Inside::Task(pid) = inside {
            if let Some(container) = crate::procs::container_of(pid as i32) {
                // A container has a PID namespace of its own, which only a child made after
                // entering it is in (its /proc/self, its ps): nsenter forks that child.
                let target = container.to_string();
                let mut with: Vec<String> =
                    ["nsenter", "-t", &target, "-n", "-u", "-m", "-p", "--"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                with.extend(argv.iter().cloned());
                return run_in(Vec::new(), &with);
            }
            let ns = |kind: &str, flag| open_ns(&format!("/proc/{pid}/ns/{kind}"), flag);
            return run_in(
                vec![
                    ns("net", CloneFlags::CLONE_NEWNET)?,
                    ns("uts", CloneFlags::CLONE_NEWUTS)?,
                    ns("mnt", CloneFlags::CLONE_NEWNS)?,
                ],
                argv,
            );
        }
        let no_node = || TestbedError::NoNode {
            cluster: paths.name.clone(),
            node: node.to_string(),
        };
        let pid: u32 = std::fs::read_to_string(paths.run_dir().join(format!("{node}.pid")))
            .map_err(|_| no_node())?
            .trim()
            .parse()
            .map_err(|_| no_node())?;
        let uts = open_ns(&format!("/proc/{pid}/ns/uts"), CloneFlags::CLONE_NEWUTS)?;
        let net = match inside {
            Inside::Sandbox(name) => {
                let path = Path::new(netcore::netns::NETNS_RUN_DIR)
                    .join(paths.node_sandbox_ns(node, name));
                if !path.exists() {
                    return Err(TestbedError::NoSandbox {
                        cluster: paths.name.clone(),
                        node: node.to_string(),
                        name: name.to_string(),
                        have: node_sandboxes(paths, node),
                    });
                }
                open_ns(&path.to_string_lossy(), CloneFlags::CLONE_NEWNET)?
            }
            _ => open_ns(&format!("/proc/{pid}/ns/net"), CloneFlags::CLONE_NEWNET)?,
        };
        run_in(vec![net, uts], argv)
    }

    async fn fault(
        &self,
        paths: &ClusterPaths,
        info: &ClusterInfo,
        node: &str,
        fault: Fault,
    ) -> Result<()> {
        let i = index_of(info, node);
        match fault {
            Fault::Kill => {
                // The link first: nothing the node still sends escapes after the "crash".
                set_port(paths, i, false).await?;
                std::fs::write(supervise::killed_marker(paths, node), b"")
                    .map_err(crate::io("marking the node killed"))?;
                let spec = agent_spec(i, node, info.lb, paths);
                if let Some(pid) = supervise::running(paths, &spec)
                    && !procs::kill_tree(pid)
                {
                    return Err(TestbedError::Remote {
                        node: node.to_string(),
                        message:
                            "its agent, its manager or a task did not die within 5s of SIGKILL"
                                .into(),
                    });
                }
                Ok(())
            }
            Fault::Start => {
                set_port(paths, i, true).await?;
                let spec = agent_spec(i, node, info.lb, paths);
                if supervise::running(paths, &spec).is_some() {
                    return Ok(());
                }
                let since = chrono::Utc::now();
                // Once unmarked, the supervisor may start the agent first; either way once.
                let _ = std::fs::remove_file(supervise::killed_marker(paths, node));
                supervise::ensure(paths, &spec)?;
                crate::wait_restarted(paths, node, since, START_TIMEOUT, paths.log_file(node)).await
            }
            Fault::Isolate => set_port(paths, i, false).await,
            Fault::Heal => set_port(paths, i, true).await,
        }
    }
}
