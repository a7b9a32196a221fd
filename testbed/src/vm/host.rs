//! The host side of whole-machine nodes: `swarmkit __vmhost` keeps one SSH session per node
//! open for the life of the cluster. Each session runs the node's end of the control path
//! (see [`super::relay`]: the cluster's agent socket on the node, carried back to the
//! manager's, where the agent and the manager prove who they are in mutual TLS) and starts
//! the agent once, with the worker join token in a root-only file (never on a command line).
//! The agent runs detached in the node, so a lost session only pauses its manager channel
//! until we reconnect.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::node::{VmNode, load_node, load_nodes, set_session_state};
use super::reach::{self, ReachError};
use super::relay;
use crate::ssh::{self, Session, Target, shell_quote};
use cluster::client::ManagerClient;
use cluster::paths::ClusterPaths;
use russh::ChannelStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A guest under TCG on a loaded host reaches its SSH server in well under this.
const SSHD_TIMEOUT: Duration = Duration::from_secs(90);

pub fn target(node: &VmNode) -> Result<Target, ssh::SshError> {
    Ok(Target {
        addr: node.ssh.clone(),
        user: node.user.clone(),
        host_key: ssh::parse_public(&node.host_key)?,
    })
}

pub async fn connect(node: &VmNode) -> Result<Session, ssh::SshError> {
    let key = Arc::new(ssh::ensure_client_key(&node.key_file)?);
    ssh::connect(&target(node)?, key, CONNECT_TIMEOUT).await
}

/// Makes sure the node has this build of swarmkit; returns its path there. Uploads go to a
/// content-addressed path, so an unchanged binary is never sent twice.
pub(crate) async fn ensure_binary(s: &Session, node: &VmNode) -> anyhow::Result<String> {
    if let Some(b) = &node.binary {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe()?;
    let cache = super::image::default_cache();
    let _ = std::fs::create_dir_all(&cache);
    let mut fp = super::fingerprint::Fingerprints::load(&cache);
    let hash = fp.get(&exe)?;
    fp.save();
    let path = format!("/var/lib/swarmkit/bin/swarmkit-{}", &hash[..16]);
    let present = s.exec(&format!("test -x {path}")).await?;
    if present.code == 0 {
        return Ok(path);
    }
    let bytes = tokio::task::spawn_blocking(move || super::image::stripped(&exe)).await??;
    if bytes.is_empty() {
        anyhow::bail!("stripping {} gave an empty binary", node.name);
    }
    // Only a binary whose bytes arrived whole takes the name the presence check looks for.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let out = s
        .exec_with_stdin(
            &format!(
                "mkdir -p /var/lib/swarmkit/bin && cat > {path}.tmp && \
                 echo '{sha}  {path}.tmp' | sha256sum -c - >/dev/null && \
                 chmod 755 {path}.tmp && mv {path}.tmp {path}"
            ),
            &bytes,
        )
        .await?;
    out.succeeded(format!("uploading swarmkit to {n}", n = node.name))?;
    Ok(path)
}

/// Leaves the worker join token where the node's agent looks for it, owner-only, sent on
/// the session's stdin; an agent that has its credentials never reads it.
async fn put_join_token(s: &Session, paths: &ClusterPaths, node: &VmNode) -> anyhow::Result<()> {
    // Where the machines run the managers, none answers before their agents start: the
    // token is the one the seeded store was made with.
    let token = if paths.replicated() {
        let file = paths.join_token_file();
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
    } else {
        crate::supervise::worker_token(paths).await?
    };
    let file = paths.join_token_file();
    let dir = file.parent().context("the token file has a directory")?;
    let out = s
        .exec_with_stdin(
            &format!(
                "umask 077 && mkdir -p {d} && cat > {f}.tmp && mv {f}.tmp {f}",
                d = shell_quote(&dir.display().to_string()),
                f = shell_quote(&file.display().to_string()),
            ),
            token.as_bytes(),
        )
        .await?;
    out.succeeded(format!("leaving the join token on {n}", n = node.name))?;
    Ok(())
}

/// A copy of the cluster's registry certificates directory on the node (`HOST:PORT/*` files,
/// a few KiB), where its agent reads them: this host's path means nothing there. Returns
/// the copy's path; None when the cluster has none.
async fn put_registry_certs(
    s: &Session,
    node: &VmNode,
    settings: &crate::record::RegistrySettings,
    cluster: &str,
) -> anyhow::Result<Option<String>> {
    let Some(dir) = &settings.certs else {
        return Ok(None);
    };
    let remote = format!("/run/swarmkit/{cluster}/registry-certs");
    let mut files = Vec::new();
    for host in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let host = host?;
        if !host.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(host.path())? {
            let f = f?;
            if f.file_type()?.is_file() {
                files.push((host.file_name(), f.file_name(), std::fs::read(f.path())?));
            }
        }
    }
    let out = s
        .exec(&format!(
            "rm -rf {r} && mkdir -p {r}",
            r = shell_quote(&remote)
        ))
        .await?;
    out.succeeded(format!("making {remote} on {n}", n = node.name))?;
    for (host, file, bytes) in files {
        let d = format!("{remote}/{}", host.to_string_lossy());
        let f = format!("{d}/{}", file.to_string_lossy());
        let out = s
            .exec_with_stdin(
                &format!(
                    "mkdir -p {d} && cat > {f}",
                    d = shell_quote(&d),
                    f = shell_quote(&f)
                ),
                &bytes,
            )
            .await?;
        out.succeeded(format!("copying {f} to {n}", n = node.name))?;
    }
    Ok(Some(remote))
}

/// Shell that waits, up to 15 s, until a guest has loaded the modules its agent and its state
/// disk need (its init leaves the marker). An ssh host has no such marker and waits out the
/// 15 s (noted on issue 24, not changed here).
const WAIT_FOR_MODULES: &str = "i=0; while [ ! -e /run/swarmkit-modules.done ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done;";

/// Shell command that mounts a QEMU guest's state disk (its `sk-state` drive, see the qemu
/// backend) on the cluster's state directory, once: a manager's store and Raft log and the
/// node's credentials survive the guest's death as a machine's disk does.
fn mount_state_command(paths: &ClusterPaths) -> String {
    format!(
        "{WAIT_FOR_MODULES} \
         st={st}; grep -q \" $st \" /proc/mounts && exit 0; \
         for b in /sys/block/vd*; do \
           if [ \"$(cat $b/serial 2>/dev/null)\" = {serial} ]; then \
             mkdir -p $st && chmod 700 $st && exec mount -t ext4 /dev/${{b##*/}} $st; \
           fi; \
         done; exit 0",
        st = shell_quote(&paths.state_dir().display().to_string()),
        serial = STATE_DISK_SERIAL,
    )
}

/// The serial number a guest's state disk carries, by which the guest finds it.
pub(crate) const STATE_DISK_SERIAL: &str = "sk-state";

/// Lays out the node's manager (its store, key, the members and settings, its replica file
/// last) unless the node already has it: a restarted machine keeps the store it had, which
/// is ahead of the seed.
async fn put_manager_seat(s: &Session, paths: &ClusterPaths, node: &VmNode) -> anyhow::Result<()> {
    if !crate::managers::has_seat_to_give(paths, &node.name) {
        return Ok(());
    }
    let present = s
        .exec(&format!(
            "test -f {}",
            shell_quote(&paths.replica_file(&node.name).display().to_string())
        ))
        .await?;
    if present.code == 0 {
        crate::managers::seated(paths, &node.name);
        return Ok(());
    }
    for (file, bytes) in &crate::managers::seat_files(paths, &node.name)? {
        let f = shell_quote(&file.display().to_string());
        let d = shell_quote(
            &file
                .parent()
                .context("a seat file has a directory")?
                .display()
                .to_string(),
        );
        let out = s
            .exec_with_stdin(
                &format!("umask 077 && mkdir -p {d} && cat > {f}.tmp && sync && mv {f}.tmp {f}"),
                bytes,
            )
            .await?;
        out.succeeded(format!("copying {f} to {n}", n = node.name))?;
    }
    crate::managers::seated(paths, &node.name);
    Ok(())
}

/// Shell command that starts the agent unless it already runs, with `extra` in its
/// environment.
fn agent_command(
    cluster: &str,
    node: &VmNode,
    bin: &str,
    extra: &[(&'static str, String)],
) -> String {
    let run = format!("/run/swarmkit/{cluster}");
    let mut env = vec![
        // A node without a launch is a host (the ssh backend): its namespace is shared.
        match node.launch {
            Some(_) => cluster::agent::NodeNs::Guest,
            None => cluster::agent::NodeNs::Host,
        }
        .as_env(),
        (cluster::agent::ENV_NODE_ADDR, node.addr.addr().to_string()),
        (cluster::paths::OWNER_ENV, cluster.to_string()),
    ];
    if let Some(lb) = &node.lb {
        env.push((cluster::agent::ENV_LB, lb.clone()));
    }
    if let Some(mesh) = node.mesh {
        env.push((cluster::agent::ENV_MESH, mesh.to_string()));
    }
    env.extend_from_slice(extra);
    // A guest's outside world is the cluster's underlay, as a netns node's is (see the netns
    // backend): its tasks resolve through the underlay's address. A host keeps its own.
    let mut resolvers = String::new();
    if node.launch.is_some() {
        let file = format!("{run}/underlay-resolv.conf");
        resolvers = format!(
            "printf 'nameserver {}\\n' > {file} && ",
            crate::backend::netns::MANAGER_ADDR
        );
        env.push((cluster::agent::ENV_RESOLV_CONF, file));
    }
    // Agents log at the level the cluster was brought up with, as they do on netns nodes.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG", filter));
    }
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v)))
        .collect();
    format!(
        "{WAIT_FOR_MODULES} \
         mkdir -p {run} /run/netns && {resolvers}\
         if [ -f {run}/agent.pid ] && kill -0 \"$(cat {run}/agent.pid)\" 2>/dev/null; then exit 0; fi; \
         cd / && {env} setsid {bin} --cluster {c} __agent --node {n} </dev/null >>{run}/agent.log 2>&1 & \
         echo $! > {run}/agent.pid",
        env = env.join(" "),
        bin = shell_quote(bin),
        c = shell_quote(cluster),
        n = shell_quote(&node.name),
    )
}

/// Logs in, makes sure the node has our binary, its join token and its end of the control
/// path, and starts its agent; returns the session and the relay's channel.
async fn serve_node(
    paths: &ClusterPaths,
    node: &VmNode,
) -> anyhow::Result<(Session, ChannelStream<russh::client::Msg>)> {
    reach::wait_sshd(paths, node, SSHD_TIMEOUT).await?;
    let s = connect(node).await?;
    set_session_state(paths, &node.name, "ssh");
    let bin = ensure_binary(&s, node).await?;
    // A guest we booted has its state disk; a host (the ssh backend's) is left as it is,
    // even when it happens to be a guest of ours.
    if node.launch.is_some() {
        let out = s.exec(&mount_state_command(paths)).await?;
        out.succeeded(format!("mounting the state disk on {n}", n = node.name))?;
    }
    put_join_token(&s, paths, node).await?;
    put_manager_seat(&s, paths, node).await?;
    // Any node of a cluster of several managers may run one (promoted later).
    let runs_manager = paths.replicated();
    // Before the agent, whose first connection would otherwise wait out a retry.
    let relay = s
        .exec_stream(&relay::command(
            &bin,
            &paths.name,
            runs_manager.then_some(node.name.as_str()),
        ))
        .await
        .context("starting the node's end of the control path")?;
    let registry = crate::record::registry_of(paths);
    let certs = put_registry_certs(&s, node, &registry, &paths.name).await?;
    let mut env = registry.env(certs.as_deref());
    // Where the machines run the managers, agents dial them across the underlay.
    if let Ok(members) = crate::managers::members(paths) {
        let addrs: Vec<String> = members.into_values().map(|m| m.addr).collect();
        env.push((cluster::agent::ENV_MANAGER_TCP, addrs.join(",")));
    }
    let out = s
        .exec(&agent_command(&paths.name, node, &bin, &env))
        .await?;
    out.succeeded(format!("starting the agent on {n}", n = node.name))?;
    Ok((s, relay))
}

/// Where this host's end of a node's manager socket listens (while the node's session is up);
/// clients find it through the node's manager directory while the node is a manager
/// ([`show_manager`]).
fn forward_socket(paths: &ClusterPaths, node: &str) -> std::path::PathBuf {
    super::node::vm_dir(paths).join(format!("{node}.manager.sock"))
}

/// Lists the node among the managers clients ask (`ClusterPaths::manager_sockets`), or not.
fn show_manager(paths: &ClusterPaths, node: &str, is: bool) {
    let dir = paths.replica_run_dir(node);
    if !is {
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(node, "no longer a manager: its socket is withdrawn");
        }
        return;
    }
    let link = dir.join("manager.sock");
    if link.symlink_metadata().is_ok() {
        return;
    }
    let made = cluster::paths::create_private_dir(&dir)
        .and_then(|()| std::os::unix::fs::symlink(forward_socket(paths, node), &link));
    match made {
        Ok(()) => tracing::info!(node, "a manager: its socket is reached here"),
        Err(e) => tracing::warn!(node, "listing its manager socket: {e}"),
    }
}

/// How often the managers are asked which nodes are managers (a promotion or demotion shows
/// in clients' list of manager sockets within about this long).
const ROLES_EVERY: Duration = Duration::from_secs(2);
/// How long the managers get to answer which nodes are managers (guests under emulation
/// answer in seconds while an election runs).
const ROLES_ANSWER: Duration = Duration::from_secs(10);

/// Keeps the managers this host's clients know in step with the nodes' roles: a node
/// promoted through the API runs its manager on its machine, reached through its relay.
async fn follow_manager_roles(paths: ClusterPaths) {
    use bollard::models::NodeSpecRoleEnum;
    loop {
        tokio::time::sleep(ROLES_EVERY).await;
        // The cluster's docker socket goes to the leader, which answers at once; a follower
        // asked directly may first wait seconds for the leader's view.
        let proxy = paths.docker_proxy_socket();
        let client = if proxy.exists() {
            ManagerClient::new(&proxy)
        } else {
            ManagerClient::of_cluster(&paths)
        };
        let Ok(Ok(nodes)) = tokio::time::timeout(
            ROLES_ANSWER,
            client.get::<Vec<bollard::models::Node>>("/nodes"),
        )
        .await
        else {
            continue;
        };
        for n in nodes {
            let (Some(spec), Some(desc)) = (n.spec, n.description) else {
                continue;
            };
            let Some(hostname) = desc.hostname else {
                continue;
            };
            show_manager(
                &paths,
                &hostname,
                spec.role == Some(NodeSpecRoleEnum::MANAGER),
            );
        }
    }
}

/// Entry point of `swarmkit __vmhost --cluster C`.
pub async fn run(cluster: &str) -> anyhow::Result<()> {
    let paths = ClusterPaths::new(cluster);
    let nodes = load_nodes(&paths);
    if nodes.is_empty() {
        anyhow::bail!("cluster {cluster} has no whole-machine nodes");
    }
    let mut tasks = Vec::new();
    if paths.replicated() {
        if let Ok(members) = crate::managers::members(&paths) {
            for m in members.values() {
                show_manager(&paths, &m.node, true);
            }
        }
        tasks.push(tokio::spawn(follow_manager_roles(paths.clone())));
    }
    for node in nodes {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                // `node start` boots a killed guest again under a new pid.
                let node = load_node(&paths, &node.name).unwrap_or_else(|_| node.clone());
                match serve_node(&paths, &node).await {
                    Ok((s, channel)) => {
                        tracing::info!(node = node.name, "session up, agent started");
                        set_session_state(&paths, &node.name, "agent");
                        pause = Duration::from_millis(200);
                        // The node's manager, when it runs one, is reached here through the
                        // relay; only while the session is up, so that clients find no
                        // socket (and move on at once) while the machine is away.
                        let manager = paths
                            .members_file()
                            .exists()
                            .then(|| forward_socket(&paths, &node.name));
                        let listener = match manager.as_deref().map(relay::bind_manager_socket) {
                            Some(Ok(l)) => Some(l),
                            Some(Err(e)) => {
                                tracing::warn!(node = node.name, "{e:#}");
                                None
                            }
                            None => None,
                        };
                        tokio::select! {
                            () = s.closed() => {
                                tracing::warn!(node = node.name, "session lost; reconnecting");
                            }
                            ended = relay::serve_host_end(channel, paths.agent_socket(), listener.as_ref()) => {
                                tracing::warn!(node = node.name, "the relay ended ({ended:?}); reconnecting");
                            }
                        }
                        if let Some(socket) = manager {
                            let _ = std::fs::remove_file(socket);
                        }
                    }
                    // A killed guest (`node kill`) is waited for quietly and often, as it may
                    // be started again at any time.
                    Err(e) if matches!(e.downcast_ref(), Some(ReachError::Died { .. })) => {
                        pause = Duration::from_millis(200);
                    }
                    Err(e) => tracing::warn!(node = node.name, "{e:#}"),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(3));
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}
