//! Clusters of several managers (`cluster up --managers N`): manager `k` runs on node `k`,
//! started by that node's agent (as dockerd runs its manager), so that killing or isolating
//! the node takes its manager with it, as losing a machine does. Every first manager starts
//! from a copy of one seeded store (the same cluster identity, trust and sealing key) and
//! they replicate from there through Raft; the members file says who they were at first, each
//! replica file which one a node runs. A node promoted later gets its copy from the leader.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::manager::{Manager, Replication};
use cluster::paths::ClusterPaths;
use cluster::raft::{Member, ReplicaIdentity};

use crate::{Result, TestbedError, io};

/// The most managers a cluster may have; Swarm advises at most seven too.
pub const MAX_MANAGERS: usize = 7;

/// How long a killed manager's store may stay locked after the kill.
const STORE_RELEASE: Duration = Duration::from_secs(5);

/// How long seeding the first store may take (a process start and a durable write).
const SEED_TIMEOUT: Duration = Duration::from_secs(30);

/// The managers of a cluster of several: Raft ID 1, 2, ... on the nodes given (the first
/// few, in order), each on its node's address.
pub fn replicas(nodes: &[(String, std::net::Ipv4Addr)]) -> BTreeMap<u64, Member> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, (node, addr))| {
            (
                i as u64 + 1,
                Member {
                    node: node.clone(),
                    addr: format!("{addr}:{}", cluster::raft::MANAGER_PORT),
                },
            )
        })
        .collect()
}

/// [`replicas`] on node1..nodeN of a cluster whose nodes sit on its own underlay (netns
/// nodes, qemu guests), at their underlay addresses.
pub fn underlay_replicas(managers: usize) -> BTreeMap<u64, Member> {
    let nodes: Vec<_> = (1..=managers)
        .map(|i| {
            (
                format!("node{i}"),
                crate::backend::netns::node_addr(i).addr(),
            )
        })
        .collect();
    replicas(&nodes)
}

/// What a manager that runs on a machine of its own needs there before its agent starts
/// it: its copy of the seeded store and sealing key, the members and settings files, and
/// its replica file last (what makes the agent start it). Paths are the machine's, which
/// are this host's (the same `ClusterPaths`). Empty for a node that runs no manager.
pub fn seat_files(paths: &ClusterPaths, node: &str) -> Result<Vec<(std::path::PathBuf, Vec<u8>)>> {
    if !has_seat_to_give(paths, node) {
        return Ok(Vec::new());
    }
    let seat = paths.replica_file(node);
    let dir = paths.replica_dir(node);
    [
        dir.join("state.redb"),
        dir.join("state.key"),
        paths.members_file(),
        paths.managers_env_file(),
        seat,
    ]
    .into_iter()
    .map(|f| {
        let bytes = std::fs::read(&f).map_err(io(format!("reading {}", f.display())))?;
        Ok((f, bytes))
    })
    .collect()
}

/// Refuses a manager count the cluster cannot have: from 1 to its nodes, at most
/// [`MAX_MANAGERS`].
pub fn check_count(opts: &crate::record::UpOptions) -> Result<()> {
    let max = opts.nodes.min(MAX_MANAGERS);
    if opts.managers == 0 || opts.managers > max {
        return Err(TestbedError::InvalidManagers {
            given: opts.managers,
            max,
        });
    }
    Ok(())
}

/// Seeds the `members` of a new cluster with the settings `cluster up` was given and
/// `extra` (what the backend's nodes need).
pub fn seed_replicas(
    opts: &crate::record::UpOptions,
    paths: &ClusterPaths,
    members: &BTreeMap<u64, Member>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    crate::record::note_registry(paths, &opts.registry)?;
    let mut env = opts.manager_env();
    env.extend_from_slice(extra);
    let hostnames: Vec<String> = members.values().map(|m| m.node.clone()).collect();
    env.push((cluster::manager::ENV_MANAGER_NODES, hostnames.join(",")));
    seed(paths, members, &env)
}

/// Whether this host holds a seat for the node's manager not yet laid on its machine (once
/// laid, this host's copy of the store goes, see [`seated`]).
pub fn has_seat_to_give(paths: &ClusterPaths, node: &str) -> bool {
    paths.replica_file(node).exists() && paths.replica_dir(node).join("state.redb").exists()
}

/// The node's manager has its copy of the seed on its machine: this host's copy of the store
/// and its sealing key go (a machine that restarts keeps its own, which is ahead; a node
/// demoted and restarted must not be handed a stale seat again). Its replica file stays, as
/// the record of which manager the node was.
pub fn seated(paths: &ClusterPaths, node: &str) {
    let dir = paths.replica_dir(node);
    for f in ["state.redb", "state.key"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

pub fn members(paths: &ClusterPaths) -> Result<BTreeMap<u64, Member>> {
    let file = paths.members_file();
    let bytes = std::fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| TestbedError::Remote {
        node: "managers".into(),
        message: format!("{} does not parse: {e}", file.display()),
    })
}

/// Makes the first store once (in a process of its own, with the settings `env` carries, as
/// a single manager's first start would), gives every manager a copy, and records who the
/// managers are.
fn seed(
    paths: &ClusterPaths,
    members: &BTreeMap<u64, Member>,
    env: &[(&str, String)],
) -> Result<()> {
    let seed = paths.state_dir().join("seed.redb");
    let mut cmd = std::process::Command::new(cluster::paths::OWN_BINARY);
    cmd.arg("--cluster")
        .arg(&paths.name)
        .args(["__manager", "--seed"])
        .arg(&seed)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(io("seeding the managers' store"))?;
    let until = std::time::Instant::now() + SEED_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io("seeding the managers' store"))?
        {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestbedError::Remote {
                node: "managers".into(),
                message: format!("seeding the store took over {SEED_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(TestbedError::Remote {
            node: "managers".into(),
            message: format!("seeding the store failed ({status})"),
        });
    }
    for member in members.values() {
        // Its sockets' directory now, so that clients know from the start there are several.
        let run_dir = paths.replica_run_dir(&member.node);
        cluster::paths::create_private_dir(&run_dir)
            .map_err(io(format!("creating {}", run_dir.display())))?;
        let dir = paths.replica_dir(&member.node);
        cluster::paths::create_private_dir(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        for (from, to) in [("seed.redb", "state.redb"), ("seed.key", "state.key")] {
            let (from, to) = (paths.state_dir().join(from), dir.join(to));
            std::fs::copy(&from, &to).map_err(io(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cluster::paths::write_atomically(
        &paths.managers_env_file(),
        &serde_json::to_vec(&env).expect("pairs of strings serialize"),
    )
    .map_err(io("writing the managers' settings"))?;
    // Last: a replica file is what makes its node's agent start the manager.
    for (id, member) in members {
        let seat = ReplicaIdentity {
            id: *id,
            member: member.clone(),
            initialize: *id == 1,
        };
        let file = paths.replica_file(&member.node);
        cluster::paths::write_atomically(
            &file,
            &serde_json::to_vec_pretty(&seat).expect("a replica identity serializes"),
        )
        .map_err(io(format!("writing {}", file.display())))?;
    }
    // Where the nodes' agents look for it, for machines whose managers are not up yet.
    let token = paths.state_dir().join("seed.token");
    std::fs::copy(&token, paths.join_token_file())
        .map_err(io(format!("copying {}", token.display())))?;
    for leftover in ["seed.redb", "seed.key", "seed.token"] {
        let _ = std::fs::remove_file(paths.state_dir().join(leftover));
    }
    let bytes = serde_json::to_vec_pretty(members).expect("members serialize");
    cluster::paths::write_atomically(&paths.members_file(), &bytes)
        .map_err(io("writing the members file"))?;
    Ok(())
}

/// Entry point of `__manager --replica NODE`, which the node's agent runs in its namespaces.
pub async fn run_replica(paths: &ClusterPaths, node: &str) -> anyhow::Result<()> {
    let file = paths.replica_file(node);
    let me: ReplicaIdentity = serde_json::from_slice(
        &std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", file.display()))?;
    let run_dir = paths.replica_run_dir(node);
    cluster::paths::create_private_dir(&run_dir)?;
    let store = paths.replica_dir(node).join("state.redb");
    let members = if me.initialize {
        members(paths)?
    } else {
        BTreeMap::new()
    };
    let m = Manager::open_replicated(
        &store,
        Replication {
            id: me.id,
            members,
            initialize: me.initialize,
        },
    )
    .await?;
    // Agents and the other managers reach this one on its node's underlay address.
    let listener = std::net::TcpListener::bind(&me.member.addr)
        .map_err(|e| anyhow::anyhow!("binding {} for manager {}: {e}", me.member.addr, me.id))?;
    cluster::manager::serve(m, &run_dir.join("manager.sock"), Some(listener)).await
}

/// `swarmkit cluster recover --force-new-cluster [--from NODE]` (docker's `swarm init
/// --force-new-cluster`, run on a surviving manager): the manager on `from` (else the first
/// manager node not killed) becomes the only one, keeping everything its store applied; the
/// others are dropped, their nodes workers that can be promoted again. Returns the node
/// recovered from.
pub async fn recover(cluster: &str, from: Option<&str>) -> Result<String> {
    let paths = ClusterPaths::new(cluster);
    let cannot = |why: String| TestbedError::CannotRecover {
        cluster: cluster.to_string(),
        why,
    };
    let info = crate::record::read_info(&paths)
        .ok_or_else(|| TestbedError::NoCluster(cluster.to_string()))?;
    let seat = |node: &str| -> Option<ReplicaIdentity> {
        serde_json::from_slice(&std::fs::read(paths.replica_file(node)).ok()?).ok()
    };
    let managers: Vec<&String> = info.nodes.iter().filter(|n| seat(n).is_some()).collect();
    if managers.is_empty() {
        return Err(cannot(
            "it has one manager, which does not replicate: there is nothing to recover from \
             (a cluster of several is made with cluster up --managers 3)"
                .into(),
        ));
    }
    let node = match from {
        Some(node) => node.to_string(),
        None => managers
            .iter()
            .find(|n| !crate::supervise::killed_marker(&paths, n).exists())
            .map(|n| n.to_string())
            .ok_or_else(|| {
                cannot("every manager's node is killed: start one (swarmkit node start) or give --from NODE".into())
            })?,
    };
    let me = seat(&node).ok_or_else(|| {
        cannot(format!(
            "{node} runs no manager; the managers are {}",
            managers
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let members = BTreeMap::from([(me.id, me.member.clone())]);
    let write_members = || {
        let bytes = serde_json::to_vec_pretty(&members).expect("members serialize");
        cluster::paths::write_atomically(&paths.members_file(), &bytes)
            .map_err(io("writing the members file"))
    };
    if info.backend == crate::Backend::Netns {
        // Its manager stops with its node, the store and log are rewritten, and the node
        // starts again: its manager elects itself and its agent registers with it.
        crate::lifecycle::inject(cluster, &node, crate::Fault::Kill).await?;
        let (p, n) = (paths.clone(), node.clone());
        let dropped = tokio::task::spawn_blocking(move || force_new_cluster_here(&p, &n))
            .await
            .map_err(|e| cannot(e.to_string()))?
            .map_err(|e| cannot(format!("{e:#}")))?;
        write_members()?;
        tracing::info!(?dropped, "managers dropped");
        crate::lifecycle::inject(cluster, &node, crate::Fault::Start).await?;
        return Ok(node);
    }
    // On a machine the store is on its disk: its agent (and the manager it runs) stops, the
    // machine rewrites its own replica, and the agent starts again with the managers this
    // host now knows. The dropped managers' seats here go, so that nothing reaches for them;
    // their own agents stop them once the plans say their nodes are workers.
    crate::backend::machine::force_new_cluster(&paths, &node)
        .await
        .map_err(|e| cannot(e.to_string()))?;
    write_members()?;
    for other in managers.iter().filter(|n| **n != &node) {
        for dir in [paths.replica_dir(other), paths.replica_run_dir(other)] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    crate::backend::machine::restart_agent(&paths, &node)
        .await
        .map_err(|e| cannot(e.to_string()))?;
    crate::supervise::wait_manager_within(&paths, RECOVER_TIMEOUT).await?;
    Ok(node)
}

/// How long a machine's manager gets to answer again after a recovery.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// `__manager --replica NODE --force-new-cluster`, where the node's replica lives (this host
/// for a netns node, the machine for the others), its manager stopped: rewrites the replica
/// as the only manager (see `cluster::raft::force_new_cluster`) and the members file beside
/// it. Returns the IDs dropped.
pub fn force_new_cluster_here(
    paths: &ClusterPaths,
    node: &str,
) -> anyhow::Result<std::collections::BTreeSet<u64>> {
    let file = paths.replica_file(node);
    let me: ReplicaIdentity = serde_json::from_slice(
        &std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", file.display()))?;
    let dir = paths.replica_dir(node);
    // A killed process's files close as its last thread exits, a moment after its leader
    // shows as dead: its store's lock may still be held for that moment.
    let until = std::time::Instant::now() + STORE_RELEASE;
    let dropped = loop {
        match cluster::raft::force_new_cluster(&dir, &me) {
            Ok(dropped) => break dropped,
            Err(e)
                if e.to_string().contains("already open") && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let bytes = serde_json::to_vec_pretty(&BTreeMap::from([(me.id, me.member.clone())]))?;
    cluster::paths::write_atomically(&paths.members_file(), &bytes)?;
    Ok(dropped)
}
