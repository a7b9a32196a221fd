//! `swarmkit cluster prune`: finds clusters that are dead (neither their manager nor their
//! supervisor runs) from everything a cluster leaves on this host (its run and state
//! directories, namespaces named `sk-NAME.*`, processes carrying its owner mark, QEMU guests
//! included) and removes each one completely, as `cluster down` does. Links, taps, nft tables
//! and sockets all live inside those namespaces and directories.

use netcore::netns::NetNs;

use cluster::paths::{ClusterPaths, RUN_ROOT, STATE_ROOT, validate_cluster_name};

/// What prune found and did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: Vec<String>,
    /// Live clusters, left alone.
    pub running: Vec<String>,
    /// Clusters whose removal failed, with why.
    pub failed: Vec<(String, String)>,
}

fn dirs(root: &str) -> Vec<String> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then_some(())?;
            e.file_name().into_string().ok()
        })
        .collect()
}

/// Every cluster name anything on this host belongs to.
pub fn candidates() -> Vec<String> {
    let mut names: Vec<String> = dirs(RUN_ROOT);
    // Only directories that hold a cluster's state: the root also holds caches.
    names.extend(dirs(STATE_ROOT).into_iter().filter(|n| {
        let p = ClusterPaths::new(n);
        p.info_file().exists() || p.store().exists()
    }));
    names.extend(
        NetNs::list_with_prefix("sk-")
            .iter()
            .filter_map(|ns| Some(ns.strip_prefix("sk-")?.split_once('.')?.0.to_string())),
    );
    names.extend(crate::procs::owners());
    names.retain(|n| validate_cluster_name(n).is_ok());
    names.sort();
    names.dedup();
    names
}

/// Whether the cluster still runs: its manager answers or its supervisor is alive (which will
/// bring the manager back).
pub fn alive(paths: &ClusterPaths) -> bool {
    paths
        .manager_sockets()
        .iter()
        .any(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
        || crate::supervise::supervisor(paths).is_some()
}

/// Removes every dead cluster whose name starts with `prefix`.
pub async fn prune(prefix: &str) -> Pruned {
    let mut out = Pruned::default();
    for name in candidates().into_iter().filter(|n| n.starts_with(prefix)) {
        if alive(&ClusterPaths::new(&name)) {
            out.running.push(name);
            continue;
        }
        match super::down(&name).await {
            Ok(()) => out.removed.push(name),
            Err(e) => out.failed.push((name, format!("{e:#}"))),
        }
    }
    out
}
