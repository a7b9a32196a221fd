//! The ssh backend: nodes are existing hosts from an inventory (see crate::vm::inventory).
//! They belong to their owners, so the testbed injects no faults into them.

use super::{Backend, Fault, NodeBackend, Result, TestbedError};
use crate::lifecycle::ClusterInfo;
use crate::paths::ClusterPaths;

pub struct Ssh;

impl NodeBackend for Ssh {
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
