//! The dispatcher: keeps every node's plan up to date from each commit's changes and hands
//! each agent what changed for its node since the version it has (as Swarm's dispatcher
//! streams incremental assignments). Work per commit is proportional to the change: the
//! changed objects come from diffing two snapshots of persistent maps (shared subtrees are
//! skipped), indexes say which plan objects they affect, and only those are recomputed. A
//! node none of whose objects changed is not woken.

mod objects;
pub use objects::hostname_of;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use tokio::sync::watch;

use crate::model::NodeState;
use crate::plan::{Changes, Keyed, NodePlan, PeerKey, PlanDelta, PlanState, PortKey};
use crate::store::State;
use objects::Index;

/// Keys of plan objects that changed (for one node, or for every node).
#[derive(Default, Debug)]
struct Keys {
    header: bool,
    networks: BTreeSet<String>,
    peers: BTreeSet<PeerKey>,
    tasks: BTreeSet<String>,
    services: BTreeSet<String>,
    ports: BTreeSet<PortKey>,
}

impl Keys {
    fn len(&self) -> usize {
        usize::from(self.header)
            + self.networks.len()
            + self.peers.len()
            + self.tasks.len()
            + self.services.len()
            + self.ports.len()
    }

    fn is_empty(&self) -> bool {
        !self.header
            && self.networks.is_empty()
            && self.peers.is_empty()
            && self.tasks.is_empty()
            && self.services.is_empty()
            && self.ports.is_empty()
    }
}

/// One node's plan as the manager holds it, and what its agent has not received yet.
struct Feed {
    plan: PlanState,
    /// `plan.digest()`, kept current as the plan changes: the status of every node is read
    /// often (tests and tools poll it), and the whole sum costs a pass over the plan.
    digest: u64,
    dirty: Keys,
    /// The version last handed to the agent (None: its next poll gets the full plan).
    delivered: Option<u64>,
    wake: watch::Sender<u64>,
    sent: Sent,
}

/// What the manager sent one node (its control-plane traffic).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Sent {
    /// Incremental deltas.
    pub deltas: u64,
    /// Full plans (new, restarted or resynced agents).
    pub full: u64,
    /// Plan objects put or deleted, over both.
    pub objects: u64,
    /// Bytes of the answers that carried them.
    pub bytes: u64,
}

/// One node's channel, as `GET /swarmkit/v1/agents` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FeedStatus {
    pub node_id: String,
    pub delivered: Option<u64>,
    pub acked: u64,
    /// Plan objects changed and not yet delivered.
    pub pending: usize,
    pub sent: Sent,
    /// The agent applied everything delivered, and its plan's digest equals the manager's.
    pub in_sync: bool,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            plan: PlanState::default(),
            digest: PlanState::default().digest(),
            dirty: Keys::default(),
            delivered: None,
            wake: watch::channel(0).0,
            sent: Sent::default(),
        }
    }
}

/// Sets one object of a node's plan; records the key as dirty when it changed, and keeps
/// `digest` (the plan's, see [`PlanState::digest`]) current.
fn set<T: Keyed + Clone + PartialEq + serde::Serialize>(
    map: &mut imbl::OrdMap<T::Key, Arc<T>>,
    dirty: &mut BTreeSet<T::Key>,
    (kind, digest): (u8, &mut u64),
    key: &T::Key,
    value: Option<T>,
) -> bool {
    let changed = map.get(key).map(|v| &**v) != value.as_ref();
    if changed {
        if let Some(old) = map.get(key) {
            *digest = digest.wrapping_sub(crate::plan::object_hash(kind, &**old));
        }
        if let Some(v) = &value {
            *digest = digest.wrapping_add(crate::plan::object_hash(kind, v));
        }
        match value {
            Some(v) => map.insert(key.clone(), Arc::new(v)),
            None => map.remove(key),
        };
        dirty.insert(key.clone());
    }
    changed
}

fn changes<T: Keyed + Clone>(
    map: &imbl::OrdMap<T::Key, Arc<T>>,
    keys: &BTreeSet<T::Key>,
) -> Changes<T> {
    let mut c = Changes::default();
    for k in keys {
        match map.get(k) {
            Some(v) => c.put.push((**v).clone()),
            None => c.del.push(k.clone()),
        }
    }
    c
}

/// What a poll gets: the version the node's plan now reflects and, if anything changed
/// since the version the agent has, the delta (or the full plan).
pub struct Delivery {
    pub version: u64,
    pub delta: Option<PlanDelta>,
}

pub struct Dispatcher {
    state: Arc<State>,
    /// The lowest ack the indexes' liveness was computed with.
    min_ack: u64,
    idx: Index,
    feeds: BTreeMap<String, Feed>,
    /// The plan version each node's agent reported applied (observed, not persisted).
    acks: HashMap<String, u64>,
    /// The digest of the plan each agent applied (see `PlanState::digest`).
    digests: HashMap<String, u64>,
}

impl Dispatcher {
    pub fn new(state: Arc<State>, min_ack: u64) -> Dispatcher {
        let idx = Index::build(&state, min_ack);
        let mut d = Dispatcher {
            state,
            min_ack,
            idx,
            feeds: BTreeMap::new(),
            acks: HashMap::new(),
            digests: HashMap::new(),
        };
        let nodes: Vec<String> = d.state.nodes.keys().cloned().collect();
        for n in nodes {
            let feed = d.full_feed(&n);
            d.feeds.insert(n, feed);
        }
        d
    }

    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The node's whole plan as the manager holds it now.
    pub fn plan_of(&self, node: &str) -> Option<NodePlan> {
        self.feeds
            .get(node)
            .map(|f| f.plan.to_plan(self.state.version))
    }

    /// A new feed holding the node's whole plan, computed from scratch.
    fn full_feed(&self, node: &str) -> Feed {
        let (s, idx) = (&*self.state, &self.idx);
        let mut p = PlanState {
            header: objects::header(s, idx, node),
            ..Default::default()
        };
        let mut digest = crate::plan::object_hash(crate::plan::HEADER, &p.header);
        let mut ignore = Keys::default();
        for net in idx.nets_of(node) {
            set(
                &mut p.networks,
                &mut ignore.networks,
                (crate::plan::NETWORKS, &mut digest),
                &net,
                objects::network(s, idx, node, &net),
            );
            for k in objects::peer_keys_of_net(s, idx, &net) {
                set(
                    &mut p.peers,
                    &mut ignore.peers,
                    (crate::plan::PEERS, &mut digest),
                    &k,
                    objects::peer(s, idx, node, &k),
                );
            }
            for sid in idx.services_by_net.get(&net).into_iter().flatten() {
                set(
                    &mut p.services,
                    &mut ignore.services,
                    (crate::plan::SERVICES, &mut digest),
                    sid,
                    objects::service(s, idx, node, sid),
                );
            }
        }
        for id in idx.by_node.get(node).into_iter().flatten() {
            set(
                &mut p.tasks,
                &mut ignore.tasks,
                (crate::plan::TASKS, &mut digest),
                id,
                objects::task(s, idx, node, id),
            );
        }
        for k in idx.ports.keys() {
            set(
                &mut p.ports,
                &mut ignore.ports,
                (crate::plan::PORTS, &mut digest),
                k,
                objects::port(s, idx, k),
            );
        }
        let mut feed = Feed::new();
        feed.plan = p;
        feed.digest = digest;
        feed
    }

    /// Brings every node's plan to `new`, a later snapshot of the store.
    pub fn advance(&mut self, new: Arc<State>) {
        if new.version == self.state.version && Arc::ptr_eq(&new, &self.state) {
            return;
        }
        let old = std::mem::replace(&mut self.state, new.clone());
        let ingress = new
            .networks
            .values()
            .find(|n| n.ingress)
            .map(|n| n.id.clone());
        let mut touched = Keys::default();
        if ingress != self.idx.ingress_net {
            // Only at a cluster's creation: every node's plan depends on it.
            self.idx.ingress_net = ingress;
            touched.header = true;
        }
        for d in old.networks.diff(&new.networks) {
            let id = match d {
                DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k,
                DiffItem::Update { new: (k, _), .. } => k,
            };
            touched.networks.insert(id.clone());
        }
        for d in old.services.diff(&new.services) {
            let (o, n) = match d {
                DiffItem::Add(_, v) => (None, Some(v)),
                DiffItem::Remove(_, v) => (Some(v), None),
                DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
            };
            let id = o.or(n).map(|s| s.id.clone()).expect("one side");
            self.idx.set_service(o, n, &new);
            for s in [o, n].into_iter().flatten() {
                touched.ports.extend(objects::ingress_ports_of(s));
            }
            // Its tasks' plans carry its name, image and command.
            touched
                .tasks
                .extend(self.idx.by_service.get(&id).into_iter().flatten().cloned());
            touched.services.insert(id);
        }
        let mut node_changes = Vec::new();
        for d in old.nodes.diff(&new.nodes) {
            let (o, n) = match d {
                DiffItem::Add(_, v) => (None, Some(v)),
                DiffItem::Remove(_, v) => (Some(v), None),
                DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
            };
            node_changes.push(o.or(n).map(|x| x.id.clone()).expect("one side"));
            if let Some(net) = &self.idx.ingress_net {
                for x in [o, n].into_iter().flatten() {
                    touched.peers.insert((net.clone(), x.ingress_addr.addr()));
                }
            }
            let moved = match (o, n) {
                (Some(o), Some(n)) => o.addr != n.addr,
                _ => true,
            };
            if moved {
                let id = o.or(n).map(|x| x.id.as_str()).unwrap_or_default();
                for t in self.idx.by_node.get(id).into_iter().flatten() {
                    if let Some(l) = self.idx.live.get(t) {
                        touched.peers.extend(l.addrs.iter().cloned());
                    }
                }
            }
        }
        for d in old.tasks.diff(&new.tasks) {
            let id = match d {
                DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k,
                DiffItem::Update { new: (k, _), .. } => k,
            };
            touched.tasks.insert(id.clone());
        }
        self.process(touched, &node_changes);
        self.settle();
    }

    /// Re-evaluates draining tasks until the lowest ack and the plans agree (a task leaving
    /// the plans can lower a node's effective ack).
    fn settle(&mut self) {
        for _ in 0..8 {
            let m = self.min_ack();
            if m == self.min_ack {
                return;
            }
            self.min_ack = m;
            let touched = Keys {
                tasks: self.idx.draining.clone(),
                ..Default::default()
            };
            self.process(touched, &[]);
        }
    }

    fn process(&mut self, mut touched: Keys, node_changes: &[String]) {
        let s = self.state.clone();
        let tasks: Vec<String> = touched.tasks.iter().cloned().collect();
        for id in &tasks {
            let (o, n) = self.idx.set_task(id, s.tasks.get(id), self.min_ack);
            if o == n {
                if let Some(l) = &n {
                    // Observed state moves backends (a task starts or stops serving).
                    touched.services.insert(l.service.clone());
                }
                continue;
            }
            for l in [o, n].into_iter().flatten() {
                touched.peers.extend(l.addrs.iter().cloned());
                touched.networks.extend(l.addrs.iter().map(|a| a.0.clone()));
                touched.services.insert(l.service);
            }
        }
        for sid in &touched.services {
            if let Some(svc) = s.services.get(sid) {
                touched.ports.extend(objects::ingress_ports_of(svc));
            }
        }
        self.feeds.retain(|id, _| s.nodes.contains_key(id));
        for node in s.nodes.keys() {
            if !self.feeds.contains_key(node) {
                // Joining: its agent gets the full plan on its first poll anyway.
                let feed = self.full_feed(node);
                self.feeds.insert(node.clone(), feed);
            }
        }
        let idx = &self.idx;
        for node in s.nodes.keys() {
            let feed = self.feeds.get_mut(node).expect("inserted above");
            let was_clean = feed.dirty.is_empty();
            let (p, dirty, digest) = (&mut feed.plan, &mut feed.dirty, &mut feed.digest);
            if touched.header || node_changes.contains(node) {
                let h = objects::header(&s, idx, node);
                if p.header != h {
                    let hash = |h| crate::plan::object_hash(crate::plan::HEADER, h);
                    *digest = digest.wrapping_sub(hash(&p.header)).wrapping_add(hash(&h));
                    p.header = h;
                    dirty.header = true;
                }
            }
            let mut peers: BTreeSet<PeerKey> = BTreeSet::new();
            let mut services: BTreeSet<String> = BTreeSet::new();
            for net in &touched.networks {
                let v = objects::network(&s, idx, node, net);
                let had = p.networks.contains_key(net);
                let has = v.is_some();
                set(
                    &mut p.networks,
                    &mut dirty.networks,
                    (crate::plan::NETWORKS, &mut *digest),
                    net,
                    v,
                );
                if had != has {
                    peers.extend(objects::peer_keys_of_net(&s, idx, net));
                    services.extend(idx.services_by_net.get(net).into_iter().flatten().cloned());
                }
            }
            for k in touched.peers.iter().chain(peers.iter()) {
                set(
                    &mut p.peers,
                    &mut dirty.peers,
                    (crate::plan::PEERS, &mut *digest),
                    k,
                    objects::peer(&s, idx, node, k),
                );
            }
            for id in &touched.tasks {
                set(
                    &mut p.tasks,
                    &mut dirty.tasks,
                    (crate::plan::TASKS, &mut *digest),
                    id,
                    objects::task(&s, idx, node, id),
                );
            }
            for id in touched.services.iter().chain(services.iter()) {
                set(
                    &mut p.services,
                    &mut dirty.services,
                    (crate::plan::SERVICES, &mut *digest),
                    id,
                    objects::service(&s, idx, node, id),
                );
            }
            for k in &touched.ports {
                set(
                    &mut p.ports,
                    &mut dirty.ports,
                    (crate::plan::PORTS, &mut *digest),
                    k,
                    objects::port(&s, idx, k),
                );
            }
            if was_clean && !dirty.is_empty() {
                feed.wake.send_modify(|g| *g += 1);
            }
        }
    }

    /// Hands the node what changed since `since` (the version its agent has), or its full
    /// plan when the agent has nothing or something this manager did not deliver.
    pub fn take(&mut self, node: &str, since: Option<u64>) -> Option<Delivery> {
        let version = self.state.version;
        let feed = self.feeds.get_mut(node)?;
        let resync = since.is_none() || since != feed.delivered;
        let delta = if resync {
            Some(feed.plan.to_full_delta())
        } else if feed.dirty.is_empty() {
            None
        } else {
            let (p, k) = (&feed.plan, &feed.dirty);
            Some(PlanDelta {
                full: false,
                header: k.header.then(|| p.header.clone()),
                networks: changes(&p.networks, &k.networks),
                peers: changes(&p.peers, &k.peers),
                tasks: changes(&p.tasks, &k.tasks),
                services: changes(&p.services, &k.services),
                ports: changes(&p.ports, &k.ports),
            })
        };
        let version = match &delta {
            Some(d) => {
                if d.full {
                    feed.sent.full += 1;
                } else {
                    feed.sent.deltas += 1;
                }
                feed.sent.objects += d.len() as u64;
                feed.delivered = Some(version);
                feed.dirty = Keys::default();
                version
            }
            None => feed.delivered.unwrap_or(version),
        };
        Some(Delivery { version, delta })
    }

    /// Woken (the value moves) whenever the node's plan gains something undelivered.
    pub fn subscribe(&self, node: &str) -> Option<watch::Receiver<u64>> {
        self.feeds.get(node).map(|f| f.wake.subscribe())
    }

    /// After a manager restart: what the agents applied under the previous manager is
    /// unknown until they report, so assume the state as of the restart, except that no
    /// task draining then may stop before every node has acked its removal anew.
    pub fn assume_applied_before_restart(&mut self) {
        let assumed = self
            .idx
            .draining
            .iter()
            .filter_map(|id| self.state.tasks.get(id)?.drain_version)
            .map(|v| v.saturating_sub(1))
            .fold(self.state.version, u64::min);
        for n in self.state.nodes.keys() {
            self.acks.insert(n.clone(), assumed);
        }
        self.settle();
    }

    /// Counts the bytes of an answer that carried a delta.
    pub fn count_bytes(&mut self, node: &str, bytes: usize) {
        if let Some(f) = self.feeds.get_mut(node) {
            f.sent.bytes += bytes as u64;
        }
    }

    pub fn ack(&mut self, node: &str, version: u64, digest: Option<u64>) {
        self.acks.insert(node.to_string(), version);
        match digest {
            Some(d) => self.digests.insert(node.to_string(), d),
            None => self.digests.remove(node),
        };
        self.settle();
    }

    pub fn status(&self) -> Vec<FeedStatus> {
        self.feeds
            .iter()
            .map(|(id, f)| {
                let acked = self.ack_of(id);
                FeedStatus {
                    node_id: id.clone(),
                    delivered: f.delivered,
                    acked,
                    pending: f.dirty.len(),
                    sent: f.sent,
                    in_sync: f.dirty.is_empty()
                        && f.delivered == Some(acked)
                        && self.digests.get(id) == Some(&f.digest),
                }
            })
            .collect()
    }

    /// The plan version a node last reported applied (0: none yet).
    pub fn ack_of(&self, node: &str) -> u64 {
        self.acks.get(node).copied().unwrap_or(0)
    }

    /// The store version a node's dataplane is known to reflect: its ack, or the current
    /// version when it applied everything delivered and nothing newer concerns it.
    pub fn effective_ack(&self, node: &str) -> u64 {
        let acked = self.ack_of(node);
        match self.feeds.get(node) {
            Some(f) if f.dirty.is_empty() && f.delivered.is_some_and(|v| acked >= v) => {
                self.state.version
            }
            _ => acked,
        }
    }

    /// The lowest version every ready node's dataplane reflects.
    pub fn min_ack(&self) -> u64 {
        self.state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| self.effective_ack(&n.id))
            .min()
            .unwrap_or(self.state.version)
    }
}

/// One node's whole plan computed from scratch (what a new agent receives).
pub fn compute(state: &State, node: &str, min_ack: u64) -> NodePlan {
    let d = Dispatcher::new(Arc::new(state.clone()), min_ack);
    d.plan_of(node).unwrap_or_else(|| NodePlan {
        version: state.version,
        node_id: node.to_string(),
        ..Default::default()
    })
}
