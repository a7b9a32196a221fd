//! Managers that replicate the store through Raft (openraft; docs/raft.md says why that one).
//!
//! A write is decided by the leader against its latest state, as today's single manager
//! decides it (`Store::update`), and what it changed, its rows, becomes one log entry. The
//! write is answered once that entry is committed on a quorum and applied here; every
//! manager applies the same rows in the same order, so their stores are the same bytes.
//!
//! - [`log`]: the log and vote, durable in `raft.redb`;
//! - [`machine`]: the state machine, which is the store;
//! - [`net`]: the transport between managers (mutual TLS, manager certificates only).

pub mod log;
pub mod machine;
pub mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::store::{Rows, Store, StoreError};

/// The managers' clock, on a machine of ordinary speed: leaders heartbeat every 200 ms. A
/// follower stands for election once it has heard nothing for the leader's lease
/// (`election_max`: it refuses votes before, so a slow heartbeat cannot depose a live leader)
/// plus its own timeout (random in `election_min..election_max`): 1.75 to 2 s after the
/// leader's last heartbeat, a new leader inside the 3 s the managers promise (Swarm's default
/// is ~10 s). A write waits up to 5 s for a leader and a quorum before it is refused.
///
/// Machines much slower than that (QEMU guests under software emulation, several to a core)
/// answer a vote later than 750 ms and never elect anyone: their managers run `pace` times
/// slower (`SWARMKIT_RAFT_PACE`, which the backend sets for them).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    election_min: Duration,
    election_max: Duration,
    /// How long a write waits for a leader and a quorum before it is refused.
    pub write_deadline: Duration,
    /// How recently a manager must have answered the leader to count towards the quorum a
    /// membership change needs: what `docker node ls` shows as Reachable. (Much shorter,
    /// and a loaded machine's late heartbeat refuses a sound change; a manager lost within
    /// it is counted, as docker counts it.)
    recently_answered: Duration,
}

/// How many times slower than the default the managers' clock runs, 1 to 20.
pub const ENV_RAFT_PACE: &str = "SWARMKIT_RAFT_PACE";

impl Timing {
    pub fn paced(pace: u32) -> Timing {
        let pace = pace.clamp(1, 20);
        Timing {
            heartbeat: Duration::from_millis(200) * pace,
            election_min: Duration::from_millis(750) * pace,
            election_max: Duration::from_millis(1000) * pace,
            write_deadline: Duration::from_secs(5) * pace,
            recently_answered: Duration::from_millis(2000) * pace,
        }
    }
}

/// This process's managers' clock (see [`Timing`]).
pub fn timing() -> &'static Timing {
    static TIMING: std::sync::OnceLock<Timing> = std::sync::OnceLock::new();
    TIMING.get_or_init(|| {
        let pace = std::env::var(ENV_RAFT_PACE)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Timing::paced(pace)
    })
}

/// How long sending and installing a whole snapshot may take.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(30);

/// docker's words when a write finds no quorum.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

/// How far behind the leader a learner may be and still become a voter.
const CAUGHT_UP_WITHIN: u64 = 10;

/// The port managers listen on, to agents and to each other (docker's).
pub const MANAGER_PORT: u16 = 2377;

/// Which manager a node's manager is: kept beside its replica (`ClusterPaths::replica_file`),
/// and what the node's agent starts it from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaIdentity {
    pub id: u64,
    pub member: Member,
    /// Whether it makes the managers a cluster on its first start (the first manager of a
    /// new cluster, from the members file).
    #[serde(default)]
    pub initialize: bool,
}

/// A manager as the others know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its swarm node ID.
    pub node: String,
    /// Where its manager listens to the others (`host:port`).
    pub addr: String,
}

/// One committed write: the rows it changed, sealed payloads still sealed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Write {
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub key: String,
    /// The stored bytes, base64 (none: removed).
    #[serde(with = "base64_bytes")]
    pub bytes: Option<Vec<u8>>,
}

/// A snapshot: every row of the store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Image {
    pub rows: Vec<Row>,
}

impl Write {
    pub fn from_rows(rows: Rows) -> Write {
        Write {
            rows: rows
                .into_iter()
                .map(|(key, bytes)| Row { key, bytes })
                .collect(),
        }
    }
}

pub(crate) fn rows_of(rows: &[Row]) -> Rows {
    rows.iter()
        .map(|r| (r.key.clone(), r.bytes.clone()))
        .collect()
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

openraft::declare_raft_types!(
    /// The managers' Raft: writes in, nothing out (the store is read directly).
    pub Managers:
        D = Write,
        R = (),
        NodeId = u64,
        Node = Member,
        SnapshotData = Image,
);

/// When to snapshot and how much log to keep past one: bounded disk, and a follower a few
/// hundred writes behind still catches up from the log.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    pub every: u64,
    pub keep: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            every: 1000,
            keep: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the managers' Raft: {0}")]
    Raft(String),
    #[error("the managers' Raft log: {0}")]
    Log(Box<openraft::StorageError<u64>>),
}

impl From<openraft::StorageError<u64>> for ReplicaError {
    fn from(e: openraft::StorageError<u64>) -> ReplicaError {
        ReplicaError::Log(Box::new(e))
    }
}

fn raft_error(e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Raft(e.to_string())
}

/// How a manager stands, as `docker node ls` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reachability {
    Leader,
    Reachable,
    Unreachable,
}

/// docker's `swarm init --force-new-cluster`, on the replica in `dir` with no manager running
/// on it: that manager becomes the only one (its log gains a membership of itself alone,
/// which it commits by itself once started), every other manager is dropped (their IDs
/// refused from now on, their nodes workers in the store) and the store keeps everything it
/// applied. Returns the managers dropped.
pub fn force_new_cluster(dir: &Path, me: &ReplicaIdentity) -> Result<BTreeSet<u64>, ReplicaError> {
    let store = Store::open(&dir.join("state.redb")).map_err(raft_error)?;
    let (applied, membership) = machine::applied_state(&store)?;
    let log = log::Log::open(&dir.join("raft.redb"))?;
    let meta = store.snapshot().meta.clone();
    let highest = membership
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .chain([meta.last_manager_id, me.id])
        .max()
        .unwrap_or(me.id);
    let dropped: BTreeSet<u64> = (1..=highest).filter(|id| *id != me.id).collect();
    // The store is written directly: no other manager is left to replicate it, and the
    // entry below makes this one the cluster from here on.
    store
        .update(|s| {
            let mut meta = s.meta.clone();
            // Every ID up to here that is not this manager's is refused from now on.
            meta.last_manager_id = highest;
            meta.manager_nodes = vec![me.member.node.clone()];
            s.put_meta(meta);
            let others: Vec<_> = s
                .nodes
                .values()
                .filter(|n| n.leader && n.hostname != me.member.node)
                .cloned()
                .collect();
            for mut n in others {
                n.leader = false;
                s.put_node(n);
            }
            Ok::<_, StoreError>(())
        })
        .map_err(raft_error)?;
    let at = log.force_alone(me.id, me.member.clone(), applied)?;
    tracing::info!(id = me.id, %at, ?dropped, "forced a new cluster of one manager");
    Ok(dropped)
}

/// This manager's replica of the store.
pub struct Replica {
    id: u64,
    raft: Raft<Managers>,
    answered: net::Answered,
}

impl Replica {
    /// Starts replica `id` over `store`, its log in `dir/raft.redb`. The store must not be
    /// written by anyone else from now on: every write goes through the log.
    pub async fn start(
        id: u64,
        dir: &Path,
        store: Arc<Store>,
        network: net::Network,
        compaction: Compaction,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let config = Config {
            cluster_name: "swarmkit-managers".into(),
            heartbeat_interval: timing().heartbeat.as_millis() as u64,
            election_timeout_min: timing().election_min.as_millis() as u64,
            election_timeout_max: timing().election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(compaction.every),
            max_in_snapshot_log_to_keep: compaction.keep,
            // A snapshot goes whole, in one request, and is installed with a durable commit
            // and a reload: openraft's 200 ms default is a chunk's, far too short for that.
            install_snapshot_timeout: SNAPSHOT_DEADLINE.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(raft_error)?;
        let log = log::Log::open(&dir.join("raft.redb"))?;
        let machine = machine::Machine::new(store.clone());
        let answered = network.answered();
        let raft = Raft::new(id, Arc::new(config), network, log, machine)
            .await
            .map_err(raft_error)?;
        let replica = Arc::new(Replica { id, raft, answered });
        store.replicate_through(Box::new(Writer(replica.clone())));
        Ok(replica)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn raft(&self) -> &Raft<Managers> {
        &self.raft
    }

    /// Makes these managers a new cluster (once, on the first manager).
    pub async fn initialize(&self, members: BTreeMap<u64, Member>) -> Result<(), ReplicaError> {
        self.raft.initialize(members).await.map_err(raft_error)
    }

    /// Adds a manager as a learner (docker's promote, first half): the leader replicates to
    /// it from now on; it votes once [`Replica::make_voters`] says so. Returns once the
    /// change is committed, not once the learner has caught up.
    pub async fn add_learner(&self, id: u64, member: Member) -> Result<(), ReplicaError> {
        self.raft
            .add_learner(id, member, false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }

    /// Learners that now vote (docker's promote, second half).
    pub async fn make_voters(&self, ids: BTreeSet<u64>) -> Result<(), ReplicaError> {
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }

    /// Managers that leave, voters and learners alike (docker's demote). A leader that
    /// removes itself leads until the change commits, then steps down.
    pub async fn remove_members(&self, ids: BTreeSet<u64>) -> Result<(), ReplicaError> {
        let voters: BTreeSet<u64> = self.voters().intersection(&ids).copied().collect();
        if !voters.is_empty() {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(raft_error)?;
        }
        let left: BTreeSet<u64> = self
            .members()
            .into_keys()
            .filter(|id| ids.contains(id))
            .collect();
        if !left.is_empty() {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(left), false)
                .await
                .map_err(raft_error)?;
        }
        Ok(())
    }

    /// Whether the voters left once `leaving` have gone would still have a quorum that
    /// answered this leader within the last few heartbeats: `Err((reachable, remaining))`
    /// when not (a change that could not commit would stop every write behind it).
    pub fn quorum_without(&self, leaving: &BTreeSet<u64>) -> Result<(), (usize, usize)> {
        let voters = self.voters();
        if !self.leads() {
            return Err((0, voters.difference(leaving).count()));
        }
        let remaining: Vec<u64> = voters.difference(leaving).copied().collect();
        let reachable = remaining
            .iter()
            .filter(|id| **id == self.id || self.answered.within(**id, timing().recently_answered))
            .count();
        if reachable > remaining.len() / 2 {
            Ok(())
        } else {
            Err((reachable, remaining.len()))
        }
    }

    /// Whether the leader has replicated to learner `id` all but the last few entries (it may
    /// vote without slowing the commits it will count in).
    pub fn caught_up(&self, id: u64) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let (Some(last), Some(replication)) = (m.last_log_index, m.replication.as_ref()) else {
            return false;
        };
        replication
            .get(&id)
            .and_then(|matched| *matched)
            .is_some_and(|matched| matched.index + CAUGHT_UP_WITHIN >= last)
    }

    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .collect()
    }

    /// Whether Raft has this manager lead (however recently a quorum answered it).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits until this manager leads (`true`) or does not (`false`).
    pub async fn until_leader(&self, leading: bool) {
        let mut metrics = self.raft.metrics();
        loop {
            if (metrics.borrow_and_update().state == ServerState::Leader) == leading {
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: this manager leads no more, and never will again.
                if leading {
                    std::future::pending::<()>().await;
                }
                return;
            }
        }
    }

    /// The leader's ID and address, as this manager last heard of them.
    pub fn leader_with_id(&self) -> Option<(u64, Member)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(id, member)| (*id, member.clone()))
    }

    /// Waits until the leader this manager knows of is another than `from`.
    pub async fn leader_changes_from(&self, from: Option<u64>) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != from {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The leader as a member (its address), as this manager last heard of it.
    pub fn leader_member(&self) -> Option<Member> {
        self.leader_with_id().map(|(_, member)| member)
    }

    /// Every manager, by Raft ID.
    pub fn members(&self) -> BTreeMap<u64, Member> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, m)| (*id, m.clone()))
            .collect()
    }

    /// The leader's ID, as this manager last heard it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this manager leads and a quorum acknowledged it within an election timeout
    /// (a leader cut off from the others stops counting itself one long before it hears
    /// of a successor).
    pub fn leads(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= timing().election_max.as_millis() as u64)
    }

    /// Waits until this manager leads with every entry it holds applied, so that what it
    /// decides next starts from the cluster's latest state.
    async fn ready_to_decide(&self) -> Result<(), StoreError> {
        let ready = |m: &openraft::RaftMetrics<u64, Member>| {
            m.state == ServerState::Leader && m.last_applied.map(|l| l.index) == m.last_log_index
        };
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timing().write_deadline;
        loop {
            if ready(&metrics.borrow_and_update()) {
                // A quorum confirms this leader now, one round trip before the write is
                // proposed: a leader that lost its followers refuses the write rather than
                // log an entry that may commit long after it was answered "no leader".
                let confirmed = tokio::time::timeout(
                    2 * timing().election_max,
                    self.raft.ensure_linearizable(),
                )
                .await;
                return match confirmed {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(StoreError::NoLeader(NO_LEADER.into())),
                };
            }
            // A follower never becomes ready by waiting: the write belongs to the leader.
            if metrics.borrow().state != ServerState::Leader
                && metrics.borrow().state != ServerState::Candidate
                && metrics.borrow().current_leader.is_some()
            {
                return Err(StoreError::NoLeader(NO_LEADER.into()));
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(StoreError::NoLeader(NO_LEADER.into())),
            }
        }
    }

    async fn write(&self, rows: Rows) -> Result<(), StoreError> {
        match tokio::time::timeout(
            timing().write_deadline,
            self.raft.client_write(Write::from_rows(rows)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!("a write was not committed: {e}");
                Err(StoreError::NoLeader(NO_LEADER.into()))
            }
            Err(_) => Err(StoreError::NoLeader(NO_LEADER.into())),
        }
    }

    /// Every manager and how it stands, as the leader sees it (`None` on a follower, or on a
    /// leader cut off from the others: ask the leader).
    pub fn standing(&self) -> Option<Vec<(u64, Member, Reachability)>> {
        // A leader no quorum answered lately has lost the others: it speaks for itself only.
        if !self.leads() {
            return None;
        }
        let m = self.raft.metrics().borrow().clone();
        Some(
            m.membership_config
                .nodes()
                .map(|(id, member)| {
                    let standing = if *id == self.id {
                        Reachability::Leader
                    } else if self.answered.within(*id, timing().recently_answered) {
                        Reachability::Reachable
                    } else {
                        Reachability::Unreachable
                    };
                    (*id, member.clone(), standing)
                })
                .collect(),
        )
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("the managers' Raft did not stop cleanly: {e}");
        }
    }
}

/// The store's way into the log. `Store::update` runs on a thread that may block (the
/// manager's writes run in `block_in_place`), so it waits for Raft on the runtime's handle.
struct Writer(Arc<Replica>);

impl crate::store::Replicate for Writer {
    fn prepare(&self) -> Result<(), StoreError> {
        tokio::runtime::Handle::current().block_on(self.0.ready_to_decide())
    }

    fn replicate(&self, rows: Rows) -> Result<(), StoreError> {
        tokio::runtime::Handle::current().block_on(self.0.write(rows))
    }
}
