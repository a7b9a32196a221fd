//! Raft between managers: JSON over the managers' mutual-TLS channel, three routes
//! (`append`, `vote`, `snapshot` under [`ROUTE`]) that only a manager certificate of the same
//! cluster may call (the manager's router checks that). Each peer keeps one connection; every
//! call is bounded by openraft's deadline for it, so a dead peer costs a timeout, never a hang.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Image, Managers, Member};
use crate::client::{ClientError, ManagerClient};

/// Where the routes live on a manager's agent listener.
pub const ROUTE: &str = "/swarmkit/v1/raft";

/// A whole snapshot in one request: the store of a swarm is megabytes, not gigabytes.
#[derive(Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, Member>,
    pub image: Image,
}

/// When each peer last answered: what `docker node ls` reads as Reachable.
#[derive(Clone, Default)]
pub struct Answered(Arc<Mutex<HashMap<u64, Instant>>>);

impl Answered {
    fn heard(&self, peer: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    /// Whether `peer` answered within `window`.
    pub fn within(&self, peer: u64, window: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|at| at.elapsed() <= window)
    }
}

/// This manager's certificate as a client, replaced when it is renewed.
pub type ClientTls = tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>;

/// Dials managers with this manager's certificate.
#[derive(Clone)]
pub struct Network {
    tls: ClientTls,
    answered: Answered,
}

impl Network {
    pub fn new(tls: ClientTls) -> Network {
        Network {
            tls,
            answered: Answered::default(),
        }
    }

    pub fn answered(&self) -> Answered {
        self.answered.clone()
    }
}

pub struct Peer {
    target: u64,
    client: ManagerClient,
    tls: ClientTls,
    answered: Answered,
}

impl RaftNetworkFactory<Managers> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Peer {
        Peer {
            target,
            client: ManagerClient::tcp(&node.addr).with_tls((**self.tls.borrow()).clone()),
            tls: self.tls.clone(),
            answered: self.answered.clone(),
        }
    }
}

/// What a call failed with before the peer could answer.
enum Unanswered {
    Timeout,
    Unreachable(String),
}

impl Peer {
    async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        what: &str,
        body: &B,
        within: std::time::Duration,
    ) -> Result<T, Unanswered> {
        let uri = format!("{ROUTE}/{what}");
        if self.tls.has_changed().unwrap_or(false) {
            self.client
                .set_tls((**self.tls.borrow_and_update()).clone());
        }
        match tokio::time::timeout(within, self.client.post::<B, T>(&uri, body)).await {
            Err(_) | Ok(Err(ClientError::Timeout { .. })) => Err(Unanswered::Timeout),
            Ok(Err(e)) => Err(Unanswered::Unreachable(e.to_string())),
            Ok(Ok(answer)) => {
                self.answered.heard(self.target);
                Ok(answer)
            }
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        failed: Unanswered,
        action: openraft::network::RPCTypes,
        within: std::time::Duration,
    ) -> RPCError<u64, Member, E> {
        match failed {
            Unanswered::Timeout => RPCError::Timeout(Timeout {
                action,
                id: 0,
                target: self.target,
                timeout: within,
            }),
            Unanswered::Unreachable(why) => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
            }
        }
    }
}

impl Peer {
    /// One request-response RPC (`append`, `vote`): the peer's Raft answers Ok or its error.
    async fn rpc<B: Serialize, T: DeserializeOwned>(
        &mut self,
        what: &str,
        action: openraft::network::RPCTypes,
        rpc: &B,
        option: RPCOption,
    ) -> Result<T, RPCError<u64, Member, RaftError<u64>>> {
        let within = option.hard_ttl();
        let answer: Result<T, RaftError<u64>> = self
            .post(what, rpc, within)
            .await
            .map_err(|f| self.rpc_error(f, action, within))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<Managers> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Managers>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.rpc(
            "append",
            openraft::network::RPCTypes::AppendEntries,
            &rpc,
            option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.rpc("vote", openraft::network::RPCTypes::Vote, &rpc, option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<Managers>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<Managers, Fatal<u64>>> {
        let within = option.hard_ttl();
        let request = SnapshotRequest {
            vote,
            meta: snapshot.meta,
            image: *snapshot.snapshot,
        };
        let sent = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            sent = self.post::<_, Result<SnapshotResponse<u64>, Fatal<u64>>>("snapshot", &request, within) => sent,
        };
        match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(Unanswered::Timeout) => Err(StreamingError::Timeout(Timeout {
                action: openraft::network::RPCTypes::InstallSnapshot,
                id: 0,
                target: self.target,
                timeout: within,
            })),
            Err(Unanswered::Unreachable(why)) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other(why),
            ))),
        }
    }

    /// Retry a lost peer at the heartbeat: a manager that comes back rejoins within one.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(super::timing().heartbeat))
    }
}
