//! Promoting and demoting managers where several replicate the store (docker's `node
//! promote` / `node demote`). The API only records the node's role; the leader's
//! [`reconcile`] loop brings Raft's membership to it, and each node's agent runs or stops its
//! manager as its plan answers say ([`runs_manager`]). A promoted node's agent asks
//! [`join`] for what its manager starts from; the manager then catches up as a learner and
//! votes once it has.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::{ApiError, ApiResult};
use super::shared::Shared;
use super::trust::Caller;
use crate::model::{Node, NodeState};
use crate::protocol::ManagerJoin;
use crate::raft::{Image, MANAGER_PORT, Member, Replica, Write};
use crate::store::State as StoreState;

/// docker's words for demoting the only manager.
const LAST_MANAGER: &str = "attempting to demote the last manager of the swarm";

/// Refuses a role change the cluster cannot make (the caller then records `node.leader`).
pub fn check_role_change(m: &Shared, s: &StoreState, node: &Node, manager: bool) -> ApiResult<()> {
    let Some(replica) = &m.replica else {
        return Err(ApiError::BadRequest(format!(
            "node {} cannot change role: this cluster's one manager does not replicate its \
             store; make the cluster with several (swarmkit cluster up --managers 3) to promote \
             and demote managers",
            node.hostname
        )));
    };
    if manager {
        if node.state != NodeState::Ready {
            return Err(ApiError::BadRequest(format!(
                "node {} is down and cannot be promoted: start it first (swarmkit node start {})",
                node.hostname, node.hostname
            )));
        }
        return Ok(());
    }
    if !s.nodes.values().any(|n| n.leader && n.id != node.id) {
        return Err(ApiError::BadRequest(LAST_MANAGER.into()));
    }
    // Demoting must leave a quorum of the managers that remain reachable.
    let leaving: BTreeSet<u64> = replica
        .members()
        .into_iter()
        .filter(|(_, member)| member.node == node.hostname)
        .map(|(id, _)| id)
        .collect();
    if let Err((reachable, remaining)) = replica.quorum_without(&leaving) {
        return Err(ApiError::BadRequest(lost_quorum(reachable, remaining)));
    }
    Ok(())
}

fn lost_quorum(reachable: usize, remaining: usize) -> String {
    format!(
        "can't remove member from the raft: this would result in a loss of quorum (of the \
         {remaining} managers that would remain, {reachable} answer the leader): start the \
         unreachable managers first"
    )
}

/// Whether `hostname`'s agent should run a manager (`None`: one manager, not an agent's): while
/// the node is one, and after a demotion until Raft has let it go.
pub fn runs_manager(m: &Shared, node_id: &str, hostname: &str) -> Option<bool> {
    let replica = m.replica.as_ref()?;
    let desired = m
        .store
        .snapshot()
        .nodes
        .get(node_id)
        .is_some_and(|n| n.leader);
    Some(desired || replica.members().values().any(|mm| mm.node == hostname))
}

/// Every manager's address, where several replicate (what agents ask in turn).
pub fn addresses(m: &Shared) -> Vec<String> {
    m.replica
        .as_ref()
        .map(|r| r.members().into_values().map(|mm| mm.addr).collect())
        .unwrap_or_default()
}

static JOINS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST /swarmkit/v1/agent/manager`: the agent of a node promoted to manager asks what its
/// manager starts from. The leader makes it a learner (once: asked again, it answers the
/// same ID) and hands over the store as it is, with its sealing key.
pub async fn join(State(m): State<Shared>, Caller(node): Caller) -> ApiResult<Json<ManagerJoin>> {
    let Some(replica) = m.replica.clone() else {
        return Err(ApiError::BadRequest(
            "this cluster has one manager, which does not replicate its store".into(),
        ));
    };
    if !m
        .store
        .snapshot()
        .nodes
        .get(&node.id)
        .is_some_and(|n| n.leader)
    {
        return Err(ApiError::Forbidden(format!(
            "node {} is not a manager: promote it first (docker node promote {})",
            node.hostname, node.hostname
        )));
    }
    let member = Member {
        node: node.hostname.clone(),
        addr: format!("{}:{MANAGER_PORT}", node.addr),
    };
    // One join at a time: two promoted together must not be given the same ID.
    let _one_at_a_time = JOINS.lock().await;
    let known = replica
        .members()
        .into_iter()
        .find(|(_, mm)| mm.node == node.hostname);
    let id = match known {
        Some((id, _)) => id,
        None => {
            let highest = replica.members().into_keys().max().unwrap_or(0);
            let id = m.update(|s| {
                let mut meta = s.meta.clone();
                meta.last_manager_id = meta.last_manager_id.max(highest) + 1;
                let id = meta.last_manager_id;
                s.put_meta(meta);
                Ok(id)
            })?;
            replica
                .add_learner(id, member.clone())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            tracing::info!(
                id,
                node = node.hostname,
                "a promoted manager joins as a learner"
            );
            id
        }
    };
    let key_file = m.store.key_file();
    let key = std::fs::read(&key_file)
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", key_file.display())))?;
    let store = m.store.clone();
    let (rows, applied) = tokio::task::spawn_blocking(move || store.export())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(ManagerJoin {
        id,
        member,
        key: STANDARD.encode(key),
        image: Image {
            rows: Write::from_rows(rows).rows,
        },
        applied: applied.map(|a| STANDARD.encode(a)),
    }))
}

/// How often the leader looks again even when nothing woke it (a learner catching up moves
/// no metric it waits on).
const RECHECK: Duration = Duration::from_millis(500);

/// The leader's loop: Raft's membership follows the nodes' roles. A demoted node's manager
/// leaves; a promoted one votes once it has caught up.
pub async fn reconcile(m: Shared) {
    let Some(replica) = m.replica.clone() else {
        return std::future::pending().await;
    };
    let mut epoch = m.epoch.subscribe();
    loop {
        if let Err(e) = step(&m, &replica).await {
            tracing::warn!("bringing the managers' membership to the nodes' roles: {e}");
        }
        let _ = tokio::time::timeout(RECHECK, epoch.changed()).await;
    }
}

async fn step(m: &Shared, replica: &Replica) -> Result<(), crate::raft::ReplicaError> {
    let s = m.store.snapshot();
    let role = |hostname: &str| {
        s.nodes
            .values()
            .find(|n| n.hostname == hostname)
            .map(|n| n.leader)
    };
    let members = replica.members();
    // A member whose node has not registered yet (a new cluster's) stays.
    let leaving: BTreeSet<u64> = members
        .iter()
        .filter(|(_, mm)| role(&mm.node) == Some(false))
        .map(|(id, _)| *id)
        .collect();
    if !leaving.is_empty() {
        // A demotion accepted just before a manager went away waits for it to return: a
        // change without a quorum behind it would hold every write up.
        if let Err((reachable, remaining)) = replica.quorum_without(&leaving) {
            tracing::warn!(
                ?leaving,
                "demoted managers stay for now: {}",
                lost_quorum(reachable, remaining)
            );
            return Ok(());
        }
        tracing::info!(?leaving, "demoted managers leave");
        return bounded(replica.remove_members(leaving)).await;
    }
    let voters = replica.voters();
    let ready: BTreeSet<u64> = members
        .keys()
        .filter(|id| !voters.contains(id) && replica.caught_up(**id))
        .copied()
        .collect();
    if !ready.is_empty() {
        tracing::info!(?ready, "promoted managers have caught up and vote");
        bounded(replica.make_voters(ready)).await?;
    }
    Ok(())
}

/// A membership change that cannot commit (a manager lost meanwhile) gives the loop back.
async fn bounded(
    change: impl std::future::Future<Output = Result<(), crate::raft::ReplicaError>>,
) -> Result<(), crate::raft::ReplicaError> {
    tokio::time::timeout(crate::raft::timing().write_deadline, change)
        .await
        .map_err(|_| {
            crate::raft::ReplicaError::Raft(format!(
                "the membership change did not commit within {:?}",
                crate::raft::timing().write_deadline
            ))
        })?
}
