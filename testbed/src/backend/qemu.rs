//! The qemu backend: every node is a QEMU guest with its own kernel, plugged into the
//! cluster's underlay bridge by a tap, reached over SSH through QEMU's user-mode NIC (see
//! crate::vm). Faults: a kill is QEMU's death (the tap vanishes with it); a start boots the
//! same guest again. Isolation takes the tap down (the data path) and, inside the guest, drops
//! the agent's traffic to the manager's forwarded port (the control path, which otherwise runs
//! over the management NIC and the SSH session that `node exec` also uses). Teardown needs
//! nothing of its own: QEMU carries the cluster's owner mark and its taps die with it.

use std::time::{Duration, Instant};

use netcore::link::Links;
use netcore::netns::NetNs;

use super::NodeBackend;
use super::machine::{self, remote};
use crate::procs;
use crate::record::{ClusterInfo, UpOptions};
use crate::vm::image;
use crate::vm::node::{VmNode, clear_session_state, client_key_file, load_node, save_node};
use crate::vm::progress::{AGENT_READY, BOOTING, NodeProgress};
use crate::vm::qemu as vm;
use crate::{Backend, Fault, Inside, Result, TestbedError};
use cluster::paths::ClusterPaths;

pub struct Qemu;

const MAX_NODES: usize = 32;

/// With this set to 1, `cluster up --backend qemu` only boots the guests (SSH up, no agents):
/// machines to point an ssh-backend inventory at, as if they were hosts.
pub const ENV_BARE: &str = "SWARMKIT_QEMU_BARE";

/// A rebooted guest is booted, logged into and given its agent by the `__vmhost` daemon.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How much slower managers in guests under TCG keep time than on a real machine: elections
/// 5-6 s after a leader's death rather than ~2 s, still inside Swarm's ~10 s.
const TCG_RAFT_PACE: u32 = 3;

fn qemu_pid(paths: &ClusterPaths, node: &VmNode) -> Option<i32> {
    let name = format!("sk-{}-{}", paths.name, node.name);
    procs::verified(node.pid? as i32, &paths.name, &["-name", &name])
}

async fn guest(node: &VmNode, cmd: &str, stdin: &str) -> anyhow::Result<()> {
    let s = crate::vm::host::connect(node).await?;
    let out = s.exec_with_stdin(cmd, stdin.as_bytes()).await?;
    if out.code != 0 {
        anyhow::bail!(
            "`{cmd}` failed ({}): {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn signal_relay(paths: &ClusterPaths, signal: &str) -> String {
    let pid = crate::vm::relay::pid_file(paths);
    format!(
        "kill -{signal} \"$(cat {})\"",
        crate::ssh::shell_quote(&pid.display().to_string())
    )
}

async fn set_tap(paths: &ClusterPaths, tap: &str, up: bool) -> Result<()> {
    let links = Links::new(&NetNs::open(&paths.underlay_ns())?)?;
    if up {
        links.set_up_by_name(tap).await?;
    } else {
        links.set_down_by_name(tap).await?;
    }
    Ok(())
}

/// The image every guest boots: a prebuilt one (how flake.nix hands over NixOS guests), or
/// ours, built or cached.
async fn image() -> Result<image::Image> {
    match std::env::var_os(image::ENV_IMAGE_DIR) {
        Some(dir) => {
            image::from_dir(std::path::Path::new(&dir)).map_err(|source| TestbedError::ImageDir {
                var: image::ENV_IMAGE_DIR,
                source,
            })
        }
        None => Ok(
            tokio::task::spawn_blocking(|| image::build(&image::BuildOptions::default())).await??,
        ),
    }
}

impl NodeBackend for Qemu {
    fn check(&self, opts: &UpOptions) -> Result<()> {
        // The guests bring their own kernel, with IPVS: any --lb is theirs to honour.
        crate::managers::check_count(opts)?;
        if !(1..=MAX_NODES).contains(&opts.nodes) {
            return Err(TestbedError::InvalidNodes {
                backend: Backend::Qemu,
                given: opts.nodes,
                max: MAX_NODES,
            });
        }
        Ok(())
    }

    async fn up(&self, opts: &UpOptions, paths: &ClusterPaths) -> Result<Vec<String>> {
        let start = Instant::now();
        let underlay = NetNs::create(&paths.underlay_ns())?;
        // With the underlay's own address, as on netns clusters: where the guests' tasks find
        // the cluster's outside world (its resolver among it).
        super::netns::create_switch(&underlay).await?;
        let hostnames: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
        let progress = NodeProgress::new(&hostnames, start);
        let img = image().await?;
        progress.note(&format!(
            "image {}{}",
            img.hash,
            if img.cached { " (cached)" } else { "" }
        ));
        let key = crate::ssh::ensure_client_key(&client_key_file(paths))?;
        let authorized = format!("{}\n", crate::ssh::public_openssh(key.public_key()));
        let accel = {
            let (p, i) = (paths.clone(), img.clone());
            tokio::task::spawn_blocking(move || vm::detect_accel(&p, &i)).await??
        };
        if opts.managers > 1 {
            // Each of the first guests runs a manager, started by its agent; they start from
            // one seeded store, copied to each guest's state disk before its agent starts.
            // Under software emulation a guest answers a vote in seconds when several share
            // a core: its managers' clock runs slower (see cluster::raft::Timing).
            let pace = match accel.as_str() {
                "kvm" => Vec::new(),
                _ => vec![(cluster::raft::ENV_RAFT_PACE, TCG_RAFT_PACE.to_string())],
            };
            crate::managers::seed_replicas(
                opts,
                paths,
                &crate::managers::underlay_replicas(opts.managers),
                &pace,
            )?;
        } else {
            // The registries the guests pull from may be on the underlay: the manager
            // resolves digests from there too.
            crate::supervise::start_manager(
                opts,
                paths,
                &[(cluster::registry::ENV_REGISTRY_NETNS, paths.underlay_ns())],
            )?;
        }
        let boots = hostnames.iter().enumerate().map(|(i, h)| {
            vm::boot(vm::BootSpec {
                paths,
                image: &img,
                accel: &accel,
                underlay: &underlay,
                bridge: super::netns::UNDERLAY_BRIDGE,
                name: h.clone(),
                index: i + 1,
                addr: super::netns::node_addr(i + 1),
                authorized_key: authorized.clone(),
                lb: opts.lb.map(|d| d.to_string()),
            })
        });
        let nodes = futures::future::try_join_all(boots).await?;
        for n in &nodes {
            progress.step(&n.name, BOOTING, &format!("booting ({accel})"));
        }
        if std::env::var(ENV_BARE).is_ok_and(|v| v == "1") {
            let waits = nodes.iter().map(|n| async {
                machine::wait_sshd(paths, n).await?;
                progress.step(&n.name, AGENT_READY, "ssh up (bare)");
                Ok::<_, TestbedError>(())
            });
            futures::future::try_join_all(waits).await?;
            return Ok(hostnames);
        }
        machine::start_agents(paths, &nodes, &progress).await
    }

    async fn exec(
        &self,
        paths: &ClusterPaths,
        node: &str,
        inside: Inside<'_>,
        argv: &[String],
    ) -> Result<i32> {
        machine::exec(paths, node, inside, argv).await
    }

    async fn fault(
        &self,
        paths: &ClusterPaths,
        _info: &ClusterInfo,
        name: &str,
        fault: Fault,
    ) -> Result<()> {
        let mut node = load_node(paths, name).map_err(|_| TestbedError::NoNode {
            cluster: paths.name.clone(),
            node: name.to_string(),
        })?;
        let Some(launch) = node.launch.clone() else {
            return Err(TestbedError::Unsupported {
                backend: crate::Backend::Qemu,
                what: format!("{fault} {name}"),
                why: "the node was booted by an older swarmkit that did not record how",
            });
        };
        match fault {
            Fault::Kill => {
                if let Some(pid) = qemu_pid(paths, &node) {
                    procs::kill_all(&[pid]);
                }
                Ok(())
            }
            Fault::Start => {
                if qemu_pid(paths, &node).is_some() {
                    return set_tap(paths, &launch.tap, true).await;
                }
                let underlay = NetNs::open(&paths.underlay_ns())?;
                // The session marker belongs to the dead guest; the daemon writes it anew.
                clear_session_state(paths, name);
                let since = chrono::Utc::now();
                let pid = vm::spawn(
                    &launch,
                    paths,
                    name,
                    &underlay,
                    super::netns::UNDERLAY_BRIDGE,
                )
                .await?;
                node.pid = Some(pid);
                save_node(paths, &node).map_err(crate::io("saving the node's record"))?;
                crate::wait_restarted(paths, name, since, START_TIMEOUT, paths.log_file("vmhost"))
                    .await
            }
            // The control path is a unix socket the node's relay serves (see vm::relay):
            // a stopped relay blackholes it as a partition would, connections and all, and
            // carries on where it stopped when continued.
            // Where the guests run the managers, agents and managers meet across the
            // underlay alone: the relay only carries this host's clients to the node's
            // manager, which answers them, cut off, as an isolated netns node's does.
            Fault::Isolate => {
                set_tap(paths, &launch.tap, false).await?;
                if paths.replicated() {
                    return Ok(());
                }
                guest(&node, &signal_relay(paths, "STOP"), "")
                    .await
                    .map_err(remote(name))
            }
            Fault::Heal => {
                if !paths.replicated() {
                    guest(&node, &signal_relay(paths, "CONT"), "")
                        .await
                        .map_err(remote(name))?;
                }
                set_tap(paths, &launch.tap, true).await
            }
        }
    }
}
