//! Key rotation of encrypted networks: on demand (`swarmkit network rotate-key NAME`) and on
//! the cluster's schedule. The manager only moves a keyring through its phases (see
//! crate::keys); the agents' reconcile installs and removes the SAs.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::lookup::find;
use super::shared::Shared;
use crate::model::Time;
use crate::store::State as StoreState;

/// What `swarmkit network rotate-key` waits on; tags and keys stay in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyStatus {
    pub network: String,
    /// A new key is handed out for receiving and not yet sent with.
    pub rotating: bool,
    pub keys: usize,
    /// Rotations completed or begun since the network was created.
    pub generation: u64,
    pub rotated: Time,
}

fn status(s: &StoreState, id: &str) -> ApiResult<KeyStatus> {
    let n = find(&s.networks, id, |n| &n.name, "network")?;
    let ring = n.keyring.as_ref().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "network {} is not encrypted: only networks created with --opt encrypted have keys",
            n.name
        ))
    })?;
    Ok(KeyStatus {
        network: n.name.clone(),
        rotating: ring.rotating(),
        keys: ring.keys.len(),
        generation: ring.generation,
        rotated: ring.rotated,
    })
}

pub async fn keys(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<KeyStatus>> {
    Ok(Json(status(&m.store.snapshot(), &id)?))
}

pub async fn rotate(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<KeyStatus>> {
    let id = m.update(|s| {
        let mut n = find(&s.networks, &id, |n| &n.name, "network")?.clone();
        status(s, &n.id)?;
        let version = s.version;
        let ring = n.keyring.as_mut().expect("checked by status");
        if ring.rotating() {
            return Err(ApiError::Conflict(format!(
                "a key rotation of network {} is still in progress: wait for it to finish \
                 (every node must first apply the new key)",
                n.name
            )));
        }
        ring.begin_rotation(version, chrono::Utc::now())?;
        let id = n.id.clone();
        s.put_network(n);
        Ok(id)
    })?;
    tracing::info!(network = id, "key rotation begun");
    Ok(Json(status(&m.store.snapshot(), &id)?))
}

/// Promotes new keys once every node can receive with them, and starts scheduled rotations.
/// Wakes on every store commit or ack movement, and at least once a second for the schedule.
pub async fn run(m: Shared) {
    let mut epoch = m.epoch.subscribe();
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), epoch.changed()).await;
        let s = m.store.snapshot();
        let min_ack = m.min_ack(&s);
        let every = s.meta.key_rotation();
        let now = chrono::Utc::now();
        let work: Vec<String> = s
            .networks
            .values()
            .filter(|n| {
                n.keyring
                    .as_ref()
                    .is_some_and(|r| r.pending.is_some_and(|v| min_ack >= v) || r.due(now, every))
            })
            .map(|n| n.id.clone())
            .collect();
        if work.is_empty() {
            continue;
        }
        let r = m.update(|s| {
            let min_ack = m.min_ack(s);
            for id in &work {
                let Some(mut n) = s.networks.get(id).cloned() else {
                    continue;
                };
                let version = s.version;
                let Some(ring) = n.keyring.as_mut() else {
                    continue;
                };
                if ring.promote_if_ready(min_ack) {
                    tracing::info!(network = n.name, "new key in use for sending");
                } else if ring.due(now, every) {
                    ring.begin_rotation(version, now)?;
                    tracing::info!(network = n.name, "scheduled key rotation begun");
                } else {
                    continue;
                }
                s.put_network(n);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!("key rotation: {e}");
        }
    }
}
