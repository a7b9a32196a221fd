//! The manager's state that every handler shares: the store, the dispatcher that keeps every
//! node's plan, the agents' acks and last words, the tasks' output. Every write goes through
//! `Manager::update`, which commits and wakes whoever the commit concerns.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::config::{Heartbeat, settings_from_env};
use super::error::{ApiError, ApiResult};
use super::logstore::Logs;
use crate::dispatch::Dispatcher;
use crate::model::{Meta, Network};
use crate::raft::{Member, Reachability, Replica};
use crate::store::{State, Store};

pub struct Manager {
    pub store: Arc<Store>,
    /// This manager's replica of the store, when it is one of several managers.
    pub replica: Option<Arc<Replica>>,
    /// Every node's plan, kept up to date from the store's commits, and the agents' acks.
    dispatch: Mutex<Dispatcher>,
    /// What tasks printed, as their agents pushed it.
    pub(super) logs: Logs,
    /// Bumped on every commit and whenever the lowest ack moves (for the updater).
    pub(super) epoch: watch::Sender<u64>,
    /// When each node's agent last talked to us.
    last_seen: Mutex<HashMap<String, Instant>>,
    pub heartbeat: Heartbeat,
    /// Since when this manager leads (since it started, when it is the only one): what a
    /// node it has not heard from yet is given its reconnect grace from.
    lead_since: Mutex<Instant>,
    /// What the TLS listeners present (the manager's certificate under the current roots).
    pub(super) tls: super::tls::Listeners,
    /// `docker exec` sessions on the nodes' sockets.
    pub(super) execs: super::execstore::Execs,
}

pub type Shared = Arc<Manager>;

/// How one of several managers joins the others.
#[derive(Clone, Debug)]
pub struct Replication {
    /// Its Raft ID.
    pub id: u64,
    /// Every manager of the cluster, this one included.
    pub members: BTreeMap<u64, Member>,
    /// Whether this manager makes the managers a cluster on its first start (one does).
    pub initialize: bool,
}

impl Manager {
    pub fn open(cluster: &str, path: &Path) -> anyhow::Result<Shared> {
        let store = Store::open(path)?;
        initialise(&store, cluster)?;
        Manager::with(Arc::new(store), None, None)
    }

    /// Makes a cluster's first store at `path`, as a single manager's first start makes it;
    /// every manager of a new replicated cluster starts from a copy of it (the same
    /// identity, trust and sealing key). The worker join token is left beside it (`.token`,
    /// owner-only): machines whose agents run the managers need it before any manager
    /// answers.
    pub fn seed(cluster: &str, path: &Path) -> anyhow::Result<()> {
        let store = Store::open(path)?;
        initialise(&store, cluster)?;
        let token = store
            .snapshot()
            .meta
            .trust
            .as_ref()
            .map(|t| t.worker_token.clone())
            .ok_or_else(|| anyhow::anyhow!("the seeded store holds no trust"))?;
        crate::paths::write_atomically(&path.with_extension("token"), token.as_bytes())?;
        Ok(())
    }

    /// One of several managers, its store replicated with theirs (its log beside its store).
    pub async fn open_replicated(path: &Path, r: Replication) -> anyhow::Result<Shared> {
        let store = Arc::new(Store::open(path)?);
        let meta = store.snapshot().meta.clone();
        let trust = meta.trust.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "the store at {} holds no cluster: a replicated manager starts from a copy of \
                 a seeded store (cluster up --managers makes them)",
                path.display()
            )
        })?;
        let tls = super::tls::Listeners::new(trust, &meta.cluster_id)?;
        let network = crate::raft::net::Network::new(tls.managers());
        let dir = path.parent().unwrap_or(Path::new("."));
        let replica = Replica::start(
            r.id,
            dir,
            store.clone(),
            network,
            crate::raft::Compaction::default(),
        )
        .await?;
        if r.initialize && !replica.raft().is_initialized().await? {
            replica.initialize(r.members).await?;
        }
        // The same listeners the Raft network dials with: what refreshes one (a renewal, a
        // rotated root) must refresh the other.
        Manager::with(store, Some(replica), Some(tls))
    }

    fn with(
        store: Arc<Store>,
        replica: Option<Arc<Replica>>,
        tls: Option<super::tls::Listeners>,
    ) -> anyhow::Result<Shared> {
        let meta = store.snapshot().meta.clone();
        let heartbeat = Heartbeat::of(&meta)?;
        let tls = match tls {
            Some(tls) => tls,
            None => {
                let trust = meta
                    .trust
                    .as_ref()
                    .expect("initialise makes the cluster's trust");
                super::tls::Listeners::new(trust, &meta.cluster_id)?
            }
        };
        let dispatch = Mutex::new(Dispatcher::new(store.snapshot(), 0));
        let m = Arc::new(Manager {
            store,
            replica,
            dispatch,
            logs: Default::default(),
            epoch: watch::channel(0).0,
            last_seen: Mutex::new(HashMap::new()),
            heartbeat,
            lead_since: Mutex::new(Instant::now()),
            tls,
            execs: Default::default(),
        });
        m.dispatch().assume_applied_before_restart();
        Ok(m)
    }
}

/// Makes what a cluster's first start needs (its identity, the ingress network, its CA and
/// tokens, the clients' port); a restart finds it all there and changes nothing.
fn initialise(store: &Store, cluster: &str) -> Result<(), ApiError> {
    {
        // Nodes keep their state across a manager restart: their agents get a grace period
        // to reconnect (see agents::watch_liveness) before anything is rescheduled.
        store.update(|s: &mut State| {
            if s.meta.cluster_id.is_empty() {
                let mut local = std::collections::BTreeMap::new();
                for name in ["bridge", "docker_gwbridge", "host", "none"] {
                    local.insert(name.to_string(), crate::ids::new_hex_id());
                }
                s.put_meta(Meta {
                    cluster_id: crate::ids::new_id(),
                    cluster_name: cluster.to_string(),
                    created: Some(chrono::Utc::now()),
                    local_networks: local,
                    next_fwmark: 256,
                    ..settings_from_env()
                });
            }
            if !s.networks.values().any(|n| n.ingress) {
                let subnet = crate::ipam::INGRESS_SUBNET.parse().expect("constant");
                s.put_network(Network {
                    id: crate::ids::new_id(),
                    name: "ingress".into(),
                    created: chrono::Utc::now(),
                    version: 0,
                    subnet,
                    gateway: "10.255.0.1".parse().expect("constant"),
                    vni: crate::ipam::INGRESS_VNI,
                    attachable: false,
                    internal: false,
                    ingress: true,
                    labels: Default::default(),
                    options: Default::default(),
                    keyring: None,
                });
            }
            super::tls::ensure_trust(s)?;
            if s.meta.client_port == 0 {
                let mut meta = s.meta.clone();
                meta.client_port = super::tls::free_loopback_port()?;
                s.put_meta(meta);
            }
            Ok::<_, ApiError>(())
        })?;
        Ok(())
    }
}

impl Manager {
    /// Whether this manager leads: the only one always does. Leading is Raft's word for it,
    /// not whether a quorum answered lately: the loops that follow it must not flap.
    pub fn leads(&self) -> bool {
        self.replica.as_ref().is_none_or(|r| r.is_leader())
    }

    pub fn lead_since(&self) -> Instant {
        *self.lead_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until this manager leads (`true`) or stops leading (`false`).
    pub async fn until_leading(&self, leading: bool) {
        let Some(replica) = &self.replica else {
            if leading {
                return;
            }
            return std::future::pending().await;
        };
        replica.until_leader(leading).await
    }

    /// Runs `work` while this manager leads, restarting it each time it leads again: the
    /// loops that decide (liveness, updates, key rotation) are the leader's alone. Taking
    /// over starts as a restarted manager starts: every node gets its reconnect grace from
    /// now, and what the agents last acknowledged is taken as applied.
    pub async fn while_leading<F, Fut>(self: Arc<Self>, work: F)
    where
        F: Fn(Shared) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            self.until_leading(true).await;
            if self.replica.is_some() {
                *self.lead_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                self.dispatch().assume_applied_before_restart();
            }
            tokio::select! {
                () = work(self.clone()) => return,
                () = self.until_leading(false) => {
                    tracing::info!("this manager no longer leads: its loops wait");
                }
            }
        }
    }

    /// The managers among `s`'s nodes, by node ID: whether each leads and whether the
    /// leader hears from it (docker's MANAGER STATUS). The one manager is the node that
    /// registered first; several are the Raft members, as the leader sees them (a follower
    /// answering alone sees only itself).
    pub fn managers(&self, s: &State) -> BTreeMap<String, (bool, Reachability)> {
        let id_of = |hostname: &str| {
            s.nodes
                .values()
                .find(|n| n.hostname == hostname)
                .map(|n| n.id.clone())
        };
        let Some(replica) = &self.replica else {
            return s
                .nodes
                .values()
                .filter(|n| n.leader)
                .map(|n| (n.id.clone(), (true, Reachability::Reachable)))
                .collect();
        };
        let standing = replica.standing().unwrap_or_else(|| {
            replica
                .members()
                .into_iter()
                .map(|(id, m)| {
                    let seen = if id == replica.id() {
                        Reachability::Reachable
                    } else {
                        Reachability::Unreachable
                    };
                    (id, m, seen)
                })
                .collect()
        });
        standing
            .into_iter()
            .filter_map(|(_, member, seen)| {
                let leads = seen == Reachability::Leader;
                let reach = if leads { Reachability::Reachable } else { seen };
                Some((id_of(&member.node)?, (leads, reach)))
            })
            .collect()
    }

    /// The dispatcher, brought up to the store's latest commit.
    pub(super) fn dispatch(&self) -> MutexGuard<'_, Dispatcher> {
        let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        d.advance(self.store.snapshot());
        d
    }

    /// The plan version a node last reported applied (0: none yet).
    pub fn ack_of(&self, node_id: &str) -> u64 {
        self.dispatch().ack_of(node_id)
    }

    /// The lowest store version every ready node's dataplane reflects.
    pub fn min_ack(&self, _state: &State) -> u64 {
        self.dispatch().min_ack()
    }

    pub fn set_ack(&self, node_id: &str, version: u64, digest: Option<u64>) {
        let mut d = self.dispatch();
        let before = d.min_ack();
        d.ack(node_id, version, digest);
        if d.min_ack() != before {
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    pub fn touch(&self, node_id: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), Instant::now());
    }

    pub fn last_seen(&self, node_id: &str) -> Option<Instant> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Commits through the store and hands the change to the dispatcher, which wakes the
    /// agents whose plans it changed.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let out = tokio::task::block_in_place(|| {
            let out = self.store.update(f)?;
            drop(self.dispatch());
            Ok::<_, ApiError>(out)
        })?;
        self.epoch.send_modify(|e| *e += 1);
        Ok(out)
    }
}
