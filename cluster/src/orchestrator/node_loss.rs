//! What a lost node does to its tasks and services.

use std::collections::BTreeSet;

use chrono::Utc;

use super::reconcile::reconcile;
use crate::model::{NodeState, TaskState, TaskStatus};
use crate::store::State;

/// A node is down: its tasks end (Orphaned, as Swarm shows tasks of a lost node), which
/// takes their backends and overlay entries off every other node at once, and their
/// services get replacements on live nodes.
pub fn node_down(s: &mut State, id: &str) {
    let Some(mut node) = s.nodes.get(id).cloned() else {
        return;
    };
    if node.state == NodeState::Down {
        return;
    }
    let now = Utc::now();
    node.state = NodeState::Down;
    node.updated = now;
    let hostname = node.hostname.clone();
    s.put_node(node);
    let lost: Vec<_> = s
        .tasks
        .values()
        .filter(|t| t.node_id == id && !t.status.state.is_terminal())
        .cloned()
        .collect();
    let mut services = BTreeSet::new();
    for mut t in lost {
        if t.desired == TaskState::Running {
            services.insert(t.service_id.clone());
        }
        t.desired = TaskState::Shutdown;
        t.status = TaskStatus {
            state: TaskState::Orphaned,
            timestamp: now,
            message: "node is down".into(),
            err: Some(format!("node {hostname} is down")),
            pid: t.status.pid,
            exit_code: None,
        };
        t.updated = now;
        s.put_task(t);
    }
    for svc in services {
        // No live node left to place on is no reason to keep the dead node Ready.
        if let Err(e) = reconcile(s, &svc) {
            tracing::warn!("replacing the tasks of service {svc} lost with node {hostname}: {e}");
        }
    }
}
