//! The node backends: the [`NodeBackend`] trait (this file), and one file per backend, each
//! an implementation of it; [`machine`] is what the backends whose nodes are whole machines
//! reached over SSH share. This file names none of them: the lifecycle picks one by a
//! cluster's [`crate::Backend`] (`crate::with_backend!`).

pub mod machine;
pub mod netns;
pub mod qemu;
pub mod ssh;

use cluster::paths::ClusterPaths;

#[cfg(doc)]
use crate::TestbedError;
use crate::record::{ClusterInfo, UpOptions};
use crate::{Fault, Inside, Result};

/// What every backend does for the lifecycle and the fault verbs. Methods take the cluster's
/// paths (and its record where it exists); a backend that cannot do something says so with
/// [`TestbedError::Unsupported`].
pub trait NodeBackend {
    /// Refuses, before anything is created, what this backend cannot build: a node count
    /// out of its range, a load balancer its nodes' kernel lacks, a missing inventory.
    fn check(&self, opts: &UpOptions) -> Result<()>;

    /// Builds the nodes of a new cluster whose run and state directories exist, starts the
    /// manager, the supervisor and one agent per node, and returns the nodes' names once
    /// every one is ready ([`crate::node_ready`]). On error the lifecycle tears down what was made.
    fn up(
        &self,
        opts: &UpOptions,
        paths: &ClusterPaths,
    ) -> impl std::future::Future<Output = Result<Vec<String>>>;

    /// Removes what this backend made beyond this host's processes, namespaces and
    /// directories named after the cluster (the lifecycle removes those after this).
    /// Problems are returned, not fatal: the rest of the teardown goes on. By default there
    /// is nothing beyond them.
    fn down(&self, _paths: &ClusterPaths) -> impl std::future::Future<Output = Vec<String>> {
        async { Vec::new() }
    }

    /// Runs `argv` on `node`, `inside` its own namespaces, a sandbox or a task; its output
    /// goes to ours. Returns its exit code.
    fn exec(
        &self,
        paths: &ClusterPaths,
        node: &str,
        inside: Inside<'_>,
        argv: &[String],
    ) -> impl std::future::Future<Output = Result<i32>>;

    /// Injects `fault` into `node` (one of `info.nodes`).
    fn fault(
        &self,
        paths: &ClusterPaths,
        info: &ClusterInfo,
        node: &str,
        fault: Fault,
    ) -> impl std::future::Future<Output = Result<()>>;
}
