//! The ssh backend: nodes are existing hosts from an inventory (see crate::vm::inventory),
//! driven over SSH like QEMU guests (see [`super::machine`]). They belong to their owners:
//! the testbed injects no faults into them, and `cluster down` has each host remove what the
//! cluster made there.

use std::time::{Duration, Instant};

use super::NodeBackend;
use super::machine::{self, remote};
use crate::record::{ClusterInfo, UpOptions};
use crate::ssh::shell_quote;
use crate::vm::node::{load_nodes, save_node};
use crate::vm::progress::NodeProgress;
use crate::{Backend, Fault, Inside, Result, TestbedError};
use cluster::paths::ClusterPaths;

pub struct Ssh;

/// How long one host gets to clean up after the cluster.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl NodeBackend for Ssh {
    fn check(&self, opts: &UpOptions) -> Result<()> {
        // The node count is the inventory's (the manager count is checked against it once
        // read); the hosts' kernels judge --lb when agents start.
        if opts.inventory.is_none() {
            return Err(TestbedError::NoInventory);
        }
        Ok(())
    }

    async fn up(&self, opts: &UpOptions, paths: &ClusterPaths) -> Result<Vec<String>> {
        let start = Instant::now();
        let inv = opts.inventory.as_ref().ok_or(TestbedError::NoInventory)?;
        let nodes = crate::vm::inventory::load(inv, opts.lb.map(|d| d.to_string()))?;
        for n in &nodes {
            if !n.key_file.is_file() {
                return Err(TestbedError::NoKey {
                    node: n.name.clone(),
                    path: n.key_file.clone(),
                });
            }
            // Loading it checks its mode is 0600 and that it parses.
            crate::ssh::ensure_client_key(&n.key_file)?;
            save_node(paths, n).map_err(crate::io("saving the node's record"))?;
        }
        crate::managers::check_count(&UpOptions {
            nodes: nodes.len(),
            ..opts.clone()
        })?;
        if opts.managers > 1 {
            // The first hosts of the inventory run the managers, on the addresses the
            // inventory gives them; each gets its copy of the seed over SSH.
            let first: Vec<_> = nodes
                .iter()
                .take(opts.managers)
                .map(|n| (n.name.clone(), n.addr.addr()))
                .collect();
            crate::managers::seed_replicas(opts, paths, &crate::managers::replicas(&first), &[])?;
        } else {
            crate::supervise::start_manager(opts, paths, &[])?;
        }
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let progress = NodeProgress::new(&names, start);
        machine::start_agents(paths, &nodes, &progress).await
    }

    /// Each host runs `swarmkit cluster down` for this cluster itself (its agent, tasks,
    /// namespaces, nft tables, sysctls and run directory). An unreachable host is reported,
    /// not fatal: the local side is removed anyway.
    async fn down(&self, paths: &ClusterPaths) -> Vec<String> {
        let mut errors = Vec::new();
        for node in load_nodes(paths) {
            let r = async {
                let s = crate::vm::host::connect(&node).await?;
                let bin = crate::vm::host::ensure_binary(&s, &node).await?;
                let out = s
                    .exec(&format!(
                        "{} cluster down {} 2>&1",
                        shell_quote(&bin),
                        shell_quote(&paths.name)
                    ))
                    .await?;
                // "no cluster named" is a host the cluster never reached: nothing to remove.
                let text = String::from_utf8_lossy(&out.stdout);
                if out.code != 0 && !text.contains("no cluster named") {
                    anyhow::bail!("cluster down there failed: {}", text.trim());
                }
                Ok(())
            };
            if let Err(e) = tokio::time::timeout(DOWN_TIMEOUT, r)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {DOWN_TIMEOUT:?}")))
                .map_err(remote(&node.name))
            {
                errors.push(e.to_string());
            }
        }
        errors
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
        _paths: &ClusterPaths,
        _info: &ClusterInfo,
        node: &str,
        fault: Fault,
    ) -> Result<()> {
        Err(TestbedError::Unsupported {
            backend: Backend::Ssh,
            what: format!("{fault} {node}"),
            why: "its nodes are hosts you own, which swarmkit neither powers off nor cuts off; \
                  use the netns or qemu backend for fault injection",
        })
    }
}
