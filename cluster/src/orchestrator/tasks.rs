//! Task records as the orchestrator makes and ends them: a new task placed and given its
//! addresses, a status, and a task taken out of service without breaking a connection.

use chrono::Utc;

use super::schedule::{ScheduleError, pick_node};
use crate::ids::new_id;
use crate::ipam;
use crate::model::{Attachment, Service, Task, TaskState, TaskStatus, Time};
use crate::store::State;

/// A new task for `slot`, placed on `home` (a global service's node) or spread, and given
/// an address on each of its networks. One that no node has room for is made pending, on no
/// node, with docker's explanation; `place_pending` places it once one has.
pub fn new_task(
    state: &mut State,
    service: &Service,
    slot: u64,
    home: Option<&str>,
    restarts: u64,
    start_after: Option<Time>,
) -> Result<Task, ScheduleError> {
    let placed = match home {
        Some(node) => Ok(node.to_string()),
        None => pick_node(state, &service.id),
    };
    let (node_id, status) = match placed {
        Ok(node) => (
            node,
            status(TaskState::Assigned, "scheduler assigned task to node"),
        ),
        Err(e @ ScheduleError::InsufficientResources { .. }) => {
            (String::new(), pending(&e.to_string()))
        }
        Err(e) => return Err(e),
    };
    let mut attachments = Vec::new();
    // One attachment per network, so allocations within a task never collide; earlier tasks
    // of this transaction are already in `state`.
    for net in service.network_ids() {
        let addr = ipam::allocate_address(state, &net)?;
        attachments.push(Attachment {
            network_id: net,
            addr,
        });
    }
    let now = Utc::now();
    Ok(Task {
        id: new_id(),
        service_id: service.id.clone(),
        slot,
        node_id,
        created: now,
        updated: now,
        version: 0,
        desired: TaskState::Running,
        status,
        attachments,
        spec_generation: service.spec_generation,
        start_after,
        drain_version: None,
        running_version: None,
        restarts,
    })
}

/// A task waiting for a node with room, as docker shows one.
fn pending(why: &str) -> TaskStatus {
    TaskStatus {
        err: Some(why.to_string()),
        ..status(TaskState::Pending, "pending task scheduling")
    }
}

/// Whether a task waits for a node (see `new_task`).
pub fn unplaced(t: &Task) -> bool {
    t.node_id.is_empty() && t.status.state == TaskState::Pending
}

/// Places a pending task on a node that now has room; else it stays pending, explained by
/// the error (which a failure to place for another reason, the nodes gone or the constraints
/// changed, is too).
pub fn place_pending(state: &mut State, task: &Task) -> Result<(), ScheduleError> {
    match pick_node(state, &task.service_id) {
        Ok(node) => {
            let mut t = task.clone();
            t.node_id = node;
            t.status = status(TaskState::Assigned, "scheduler assigned task to node");
            t.updated = Utc::now();
            state.put_task(t);
            Ok(())
        }
        Err(e) => {
            still_pending(state, task, &e.to_string());
            Err(e)
        }
    }
}

/// Keeps a task pending, explained by `why` (written only when that changed).
pub fn still_pending(state: &mut State, task: &Task, why: &str) {
    if task.status.err.as_deref() == Some(why) {
        return;
    }
    let mut t = task.clone();
    t.status = pending(why);
    t.updated = Utc::now();
    state.put_task(t);
}

pub fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state,
        timestamp: Utc::now(),
        message: message.to_string(),
        err: None,
        pid: None,
        exit_code: None,
    }
}

/// Takes a task out of service: out of every load balancer now, stopped once every node has
/// applied that (see `Task::drain_version`).
pub fn shut_down(state: &mut State, mut task: Task) {
    if task.desired != TaskState::Running {
        return;
    }
    task.desired = TaskState::Shutdown;
    task.drain_version = Some(state.version);
    task.updated = Utc::now();
    if !task.status.state.is_terminal() && task.status.state < TaskState::Starting {
        // Never started: nothing to drain.
        task.status = status(TaskState::Shutdown, "shutdown before start");
    }
    state.put_task(task);
}
