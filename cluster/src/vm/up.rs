//! `cluster up --backend qemu`: the underlay switch and the manager as on the netns backend,
//! then one QEMU guest per node plugged into the switch through a tap, and the `__vmhost`
//! daemon that logs into each guest and starts its agent.

use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;
use netcore::netns::NetNs;

use super::progress::{AGENT_READY, BOOTING, NodeProgress, SSH_UP};
use super::{image, qemu};
use crate::client::ManagerClient;
use crate::lifecycle::{ClusterInfo, UpOptions};
use crate::paths::ClusterPaths;
use crate::testbed::supervise::{self, Spec};

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn node_addr(i: usize) -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(192, 168, 0, 10 + i as u8), 24).expect("valid /24")
}

pub async fn build(opts: &UpOptions, paths: &ClusterPaths) -> anyhow::Result<ClusterInfo> {
    let start = Instant::now();
    if !(1..=32).contains(&opts.nodes) {
        anyhow::bail!(
            "invalid --nodes {} for the qemu backend: give 1 to 32",
            opts.nodes
        );
    }
    let underlay = NetNs::create(&paths.underlay_ns())?;
    netcore::underlay::create_switch(&underlay, crate::lifecycle::UNDERLAY_BRIDGE).await?;
    supervise::ensure(
        paths,
        &Spec::host(
            "manager",
            &["__manager"],
            &crate::lifecycle::manager_env(opts),
        ),
    )?;
    supervise::ensure_supervisor(paths)?;
    let hostnames: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
    let progress = NodeProgress::new(&hostnames, start);

    // A prebuilt image (how flake.nix hands over NixOS guests), or ours, built or cached.
    let img = match std::env::var_os(image::ENV_IMAGE_DIR) {
        Some(dir) => image::from_dir(std::path::Path::new(&dir)).map_err(|e| {
            anyhow::anyhow!(
                "{} points at no usable image ({e}): give a directory with kernel, initrd and optionally cmdline",
                image::ENV_IMAGE_DIR
            )
        })?,
        None => {
            tokio::task::spawn_blocking(|| image::build(&image::BuildOptions::default()))
                .await??
        }
    };
    progress.note(&format!(
        "image {}{}",
        img.hash,
        if img.cached { " (cached)" } else { "" }
    ));
    let key = crate::ssh::ensure_client_key(&qemu::client_key_file(paths))?;
    let authorized = format!("{}\n", crate::ssh::public_openssh(key.public_key()));
    let accel = {
        let (p, i) = (paths.clone(), img.clone());
        tokio::task::spawn_blocking(move || qemu::detect_accel(&p, &i)).await??
    };

    let boots = hostnames.iter().enumerate().map(|(i, h)| {
        qemu::boot(qemu::BootSpec {
            paths,
            image: &img,
            accel: &accel,
            underlay: &underlay,
            bridge: crate::lifecycle::UNDERLAY_BRIDGE,
            name: h.clone(),
            index: i + 1,
            addr: node_addr(i + 1),
            authorized_key: authorized.clone(),
            lb: opts.lb.map(|d| d.to_string()),
        })
    });
    let nodes = futures::future::try_join_all(boots).await?;
    for n in &nodes {
        progress.step(&n.name, BOOTING, &format!("booting ({accel})"));
    }
    if std::env::var(ENV_BARE).is_ok_and(|v| v == "1") {
        return bare(opts, paths, &nodes, &progress).await;
    }
    finish(opts, paths, &nodes, &progress).await
}

/// With this set to 1, `cluster up --backend qemu` only boots the guests (SSH up, no agents):
/// machines to point an ssh-backend inventory at, as if they were hosts.
pub const ENV_BARE: &str = "SWARMKIT_QEMU_BARE";

async fn bare(
    opts: &UpOptions,
    paths: &ClusterPaths,
    nodes: &[qemu::VmNode],
    progress: &NodeProgress,
) -> anyhow::Result<ClusterInfo> {
    let waits = nodes.iter().map(|n| async move {
        qemu::wait_console(paths, n, SSH_TIMEOUT).await?;
        crate::lifecycle::wait_until(&format!("ssh on {}", n.name), SSH_TIMEOUT, || async {
            let a = n.ssh.clone();
            tokio::task::spawn_blocking(move || qemu::banner(&a))
                .await
                .unwrap_or(false)
        })
        .await?;
        progress.step(&n.name, AGENT_READY, "ssh up (bare)");
        Ok::<_, anyhow::Error>(())
    });
    futures::future::try_join_all(waits).await?;
    crate::lifecycle::record_up(opts, paths, nodes.iter().map(|n| n.name.clone()).collect())
}

/// `cluster up --backend ssh --inventory FILE`: the manager here, agents on existing hosts.
pub async fn build_ssh(opts: &UpOptions, paths: &ClusterPaths) -> anyhow::Result<ClusterInfo> {
    let start = Instant::now();
    let Some(inv) = &opts.inventory else {
        anyhow::bail!(
            "--backend ssh needs --inventory hosts.toml (address, user, key and host_key of each host)"
        );
    };
    let nodes = super::inventory::load(inv, opts.lb.map(|d| d.to_string()))?;
    for n in &nodes {
        if !n.key_file.is_file() {
            anyhow::bail!(
                "node {}: key {} does not exist",
                n.name,
                n.key_file.display()
            );
        }
        // Loading it checks its mode is 0600 and that it parses.
        crate::ssh::ensure_client_key(&n.key_file)?;
        qemu::save_node(paths, n)?;
    }
    supervise::ensure(
        paths,
        &Spec::host(
            "manager",
            &["__manager"],
            &crate::lifecycle::manager_env(opts),
        ),
    )?;
    supervise::ensure_supervisor(paths)?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let progress = NodeProgress::new(&names, start);
    finish(opts, paths, &nodes, &progress).await
}

/// Starts the SSH daemon and waits for every node's session and agent.
async fn finish(
    opts: &UpOptions,
    paths: &ClusterPaths,
    nodes: &[qemu::VmNode],
    progress: &NodeProgress,
) -> anyhow::Result<ClusterInfo> {
    let hostnames: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    supervise::ensure(paths, &Spec::host("vmhost", &["__vmhost"], &[]))?;

    let client = ManagerClient::new(&paths.manager_socket());
    let waits = nodes.iter().map(|n| {
        let client = client.clone();
        async move {
            qemu::wait_ssh(paths, n, SSH_TIMEOUT).await?;
            progress.step(&n.name, SSH_UP, "ssh up");
            crate::lifecycle::wait_until(
                &format!("the agent on {} to be ready", n.name),
                READY_TIMEOUT,
                || crate::testbed::hostname_ready(&client, &n.name),
            )
            .await
            .with_context(|| {
                format!(
                    "see {} and, inside the node, /run/swarmkit/{}/agent.log",
                    paths.log_file("vmhost").display(),
                    paths.name
                )
            })?;
            progress.step(&n.name, AGENT_READY, "agent ready");
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(waits).await?;
    crate::lifecycle::record_up(opts, paths, hostnames)
}

/// Whether `node exec` and friends go through SSH for this cluster: its nodes are machines
/// (their SSH details are in the run directory from the moment they boot).
pub fn is_machine_backend(cluster: &str) -> bool {
    qemu::vm_dir(&ClusterPaths::new(cluster)).is_dir()
}

/// Nodes of this cluster are existing hosts (no QEMU behind them).
pub fn is_ssh_backend(cluster: &str) -> bool {
    let paths = ClusterPaths::new(cluster);
    let nodes = qemu::load_nodes(&paths);
    !nodes.is_empty() && nodes.iter().all(|n| n.pid.is_none())
}
