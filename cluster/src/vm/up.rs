//! `cluster up --backend qemu`: the underlay switch and the manager as on the netns backend,
//! then one QEMU guest per node plugged into the switch through a tap, and the `__vmhost`
//! daemon that logs into each guest and starts its agent.

use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;
use netcore::netns::NetNs;

use super::{image, qemu};
use crate::client::ManagerClient;
use crate::lifecycle::{ClusterInfo, UpOptions};
use crate::paths::ClusterPaths;

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn node_addr(i: usize) -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(192, 168, 0, 10 + i as u8), 24).expect("valid /24")
}

/// One progress line per node step; stderr, so scripted stdout stays clean.
fn progress(start: Instant, node: &str, what: &str) {
    eprintln!("{:>6.2}s  {node:<8} {what}", start.elapsed().as_secs_f64());
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
    let manager_pid = crate::lifecycle::spawn_daemon(paths, "manager", &["__manager"], &[], None)?;
    std::fs::write(paths.run_dir().join("manager.pid"), manager_pid.to_string())?;

    let img =
        tokio::task::spawn_blocking(|| image::build(&image::BuildOptions::default())).await??;
    eprintln!(
        "{:>6.2}s  image {}{}",
        start.elapsed().as_secs_f64(),
        img.hash,
        if img.cached { " (cached)" } else { "" }
    );
    let key = crate::ssh::ensure_client_key(&qemu::client_key_file(paths))?;
    let authorized = format!("{}\n", crate::ssh::public_openssh(key.public_key()));
    let accel = {
        let (p, i) = (paths.clone(), img.clone());
        tokio::task::spawn_blocking(move || qemu::detect_accel(&p, &i)).await??
    };

    let hostnames: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
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
            lb: opts.lb.clone(),
        })
    });
    let nodes = futures::future::try_join_all(boots).await?;
    for n in &nodes {
        progress(start, &n.name, &format!("booting ({accel})"));
    }
    let vmhost = crate::lifecycle::spawn_daemon(paths, "vmhost", &["__vmhost"], &[], None)?;
    std::fs::write(paths.run_dir().join("vmhost.pid"), vmhost.to_string())?;

    let client = ManagerClient::new(&paths.manager_socket());
    let waits = nodes.iter().map(|n| {
        let client = client.clone();
        async move {
            qemu::wait_ssh(paths, n, SSH_TIMEOUT).await?;
            progress(start, &n.name, "ssh up");
            crate::lifecycle::wait_until(
                &format!("the agent on {} to be ready", n.name),
                READY_TIMEOUT,
                || async { node_ready(&client, &n.name).await },
            )
            .await
            .with_context(|| {
                format!(
                    "see {} and, inside the node, /run/swarmkit/{}/agent.log",
                    paths.log_file("vmhost").display(),
                    paths.name
                )
            })?;
            progress(start, &n.name, "agent ready");
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(waits).await?;

    let info = ClusterInfo {
        name: opts.name.clone(),
        backend: opts.backend.clone(),
        nodes: hostnames,
        created: chrono::Utc::now(),
        running: true,
    };
    crate::lifecycle::write_atomically(&paths.info_file(), &serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

async fn node_ready(client: &ManagerClient, hostname: &str) -> bool {
    client
        .get::<Vec<bollard::models::Node>>("/nodes")
        .await
        .map(|ns| {
            ns.iter().any(|n| {
                n.description.as_ref().and_then(|d| d.hostname.as_deref()) == Some(hostname)
                    && n.status.as_ref().and_then(|s| s.state)
                        == Some(bollard::models::NodeState::READY)
            })
        })
        .unwrap_or(false)
}

/// Whether `node exec` and friends go through SSH for this cluster: its nodes are machines
/// (their SSH details are in the run directory from the moment they boot).
pub fn is_machine_backend(cluster: &str) -> bool {
    qemu::vm_dir(&ClusterPaths::new(cluster)).is_dir()
}
