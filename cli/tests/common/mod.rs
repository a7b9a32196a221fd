//! The cli suites' helpers: the workspace's test kit (a cluster per test, built by the real
//! binary and torn down on drop; the binary under a timeout; polling with a deadline), plus
//! what only these suites use.

#![allow(dead_code, unused_imports)]

pub use testkit::{
    Cluster, Run, alive, eventually, eventually_true, is_root, sigkill, swarmkit, unique_name,
};

/// Skips (passes with a note) when not root: clusters need namespaces and netlink.
#[macro_export]
macro_rules! require_root {
    () => {
        testkit::require_root!()
    };
}

/// Names of the network namespaces whose names start with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    netcore::netns::NetNs::list_with_prefix(prefix)
}

/// Live processes carrying the cluster's owner mark (what `cluster down` must stop).
pub fn owned_processes(cluster: &str) -> Vec<i32> {
    testbed::procs::owned(cluster)
}

/// The JSON `"name"` of each elasticsearch answer in `out`.
pub fn es_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("\"name\" : \"")
                .and_then(|r| r.strip_suffix("\","))
                .map(String::from)
        })
        .collect()
}

/// The pid a cluster daemon (the manager, or a node's agent) recorded in its run directory.
pub fn pid_of(c: &Cluster, daemon: &str) -> i32 {
    c.pid_of(daemon)
}
