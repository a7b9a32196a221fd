//! The manager's durable, transactional store.
//!
//! Reads come from an in-memory snapshot (persistent maps, so cloning one is O(1)); every write
//! runs as a closure on a draft of that snapshot under one lock, and only if the closure
//! succeeds are the objects it touched written to redb in one durable transaction and the draft
//! published. A failed closure changes nothing, and concurrent writers are serialised, so no
//! update is ever lost or half-applied.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use imbl::{OrdMap, OrdSet};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::model::{Meta, Network, Node, Payload, Service, Task};
use crate::sealed::Sealer;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error("state store write failed: {0}")]
    Write(String),
    #[error("state store holds an unreadable {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Sealed(#[from] crate::sealed::SealError),
    /// A write no quorum of managers took: nothing of it is applied anywhere it was answered.
    #[error("{0}")]
    NoLeader(String),
}

/// What one write changed, as the store writes it: each touched key with its new bytes (none:
/// removed). Sealed payloads travel sealed, so what a manager replicates is what it stores.
pub type Rows = Vec<(String, Option<Vec<u8>>)>;

/// Where a write goes before it counts: a replicated store hands each write's rows to its
/// managers' Raft, and the write is answered only once a quorum holds them and this manager
/// applied them (through [`Store::apply`]).
pub trait Replicate: Send + Sync {
    /// Readies this manager to decide a write: it leads, and holds every entry committed
    /// before, so the draft a write starts from is the cluster's latest state.
    fn prepare(&self) -> Result<(), StoreError>;
    /// Blocks until `rows` are committed on a quorum and applied here.
    fn replicate(&self, rows: Rows) -> Result<(), StoreError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Network,
    Service,
    Task,
    Node,
    Secret,
    Config,
    Meta,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Network => "network/",
            Kind::Service => "service/",
            Kind::Task => "task/",
            Kind::Node => "node/",
            Kind::Secret => "secret/",
            Kind::Config => "config/",
            Kind::Meta => "meta",
        }
    }
}

/// One consistent view of the whole desired and observed state.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub version: u64,
    pub meta: Meta,
    pub networks: OrdMap<String, Network>,
    pub services: OrdMap<String, Service>,
    pub tasks: OrdMap<String, Task>,
    pub nodes: OrdMap<String, Node>,
    pub secrets: OrdMap<String, Payload>,
    pub configs: OrdMap<String, Payload>,
    dirty: Vec<(Kind, String)>,
    /// The addresses services' VIPs and tasks' attachments hold on each network, with how
    /// many hold each; kept by every put and remove of a service or task, so IPAM finds a free
    /// address without reading every service and task (at 5000 services that read was
    /// ~7 ms of each service created).
    held: OrdMap<String, OrdMap<Ipv4Addr, u32>>,
    tasks_by: TaskIndex,
}

/// The tasks counted the ways the orchestrator asks about them at every commit and every
/// placement, kept by every put and remove of a task: at 5000 services each of those
/// questions was a walk over every task (a third of the manager's CPU while services were
/// created).
#[derive(Clone, Debug, Default)]
struct TaskIndex {
    /// Every task of each service, by ID.
    of_service: OrdMap<String, OrdSet<String>>,
    /// Active tasks (desired running) on each node, and of each service on each node.
    on_node: OrdMap<String, u32>,
    on_node_of: OrdMap<(String, String), u32>,
    /// Active tasks in each slot of each service, and how many of a service's slots hold
    /// more than one.
    in_slot: OrdMap<(String, u64), u32>,
    crowded: OrdMap<String, u32>,
    /// Active tasks of each service that wait for a node.
    unplaced: OrdMap<String, u32>,
}

/// Adds `delta` to the count at `key` (a count that reaches 0 leaves); returns it before and
/// after.
fn count<K: Ord + Clone>(counts: &mut OrdMap<K, u32>, key: K, delta: i32) -> (u32, u32) {
    let before = counts.get(&key).copied().unwrap_or(0);
    let after = before.saturating_add_signed(delta);
    if after == 0 {
        counts.remove(&key);
    } else {
        counts.insert(key, after);
    }
    (before, after)
}

impl TaskIndex {
    fn count(&mut self, t: &Task, delta: i32) {
        let service = &t.service_id;
        if delta > 0 {
            self.of_service
                .entry(service.clone())
                .or_default()
                .insert(t.id.clone());
        } else if let Some(ids) = self.of_service.get_mut(service) {
            ids.remove(&t.id);
            if ids.is_empty() {
                self.of_service.remove(service);
            }
        }
        if !crate::orchestrator::is_active(t) {
            return;
        }
        count(&mut self.on_node, t.node_id.clone(), delta);
        count(
            &mut self.on_node_of,
            (t.node_id.clone(), service.clone()),
            delta,
        );
        match count(&mut self.in_slot, (service.clone(), t.slot), delta) {
            (1, 2) => drop(count(&mut self.crowded, service.clone(), 1)),
            (2, 1) => drop(count(&mut self.crowded, service.clone(), -1)),
            _ => {}
        }
        if crate::orchestrator::unplaced(t) {
            count(&mut self.unplaced, service.clone(), delta);
        }
    }
}

fn service_holds(s: &Service) -> impl Iterator<Item = (&str, Ipv4Addr)> {
    s.vips
        .iter()
        .map(|v| (v.network_id.as_str(), v.addr.addr()))
}

fn task_holds(t: &Task) -> impl Iterator<Item = (&str, Ipv4Addr)> {
    t.attachments
        .iter()
        .map(|a| (a.network_id.as_str(), a.addr.addr()))
}

/// Counts `holds` in or out of `held`; an address nothing holds any more leaves it.
fn hold<'a>(
    held: &mut OrdMap<String, OrdMap<Ipv4Addr, u32>>,
    holds: impl Iterator<Item = (&'a str, Ipv4Addr)>,
    delta: i32,
) {
    for (network, addr) in holds {
        count(held.entry(network.to_string()).or_default(), addr, delta);
    }
}

impl State {
    /// Whether anything was written to this draft (a dry run changed nothing if not).
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
    pub fn put_network(&mut self, mut n: Network) {
        n.version = self.version;
        self.dirty.push((Kind::Network, n.id.clone()));
        self.networks.insert(n.id.clone(), n);
    }
    pub fn remove_network(&mut self, id: &str) {
        self.dirty.push((Kind::Network, id.to_string()));
        self.networks.remove(id);
    }
    pub fn put_service(&mut self, mut s: Service) {
        s.version = self.version;
        self.dirty.push((Kind::Service, s.id.clone()));
        hold(&mut self.held, service_holds(&s), 1);
        if let Some(old) = self.services.insert(s.id.clone(), s) {
            hold(&mut self.held, service_holds(&old), -1);
        }
    }
    pub fn remove_service(&mut self, id: &str) {
        self.dirty.push((Kind::Service, id.to_string()));
        if let Some(old) = self.services.remove(id) {
            hold(&mut self.held, service_holds(&old), -1);
        }
    }
    pub fn put_task(&mut self, mut t: Task) {
        t.version = self.version;
        self.dirty.push((Kind::Task, t.id.clone()));
        self.remove_task_only(&t.id);
        hold(&mut self.held, task_holds(&t), 1);
        self.tasks_by.count(&t, 1);
        self.tasks.insert(t.id.clone(), t);
    }
    pub fn remove_task(&mut self, id: &str) {
        self.dirty.push((Kind::Task, id.to_string()));
        self.remove_task_only(id);
    }

    /// Takes a task out of the map and its counts out of the indexes, writing nothing.
    fn remove_task_only(&mut self, id: &str) {
        if let Some(old) = self.tasks.remove(id) {
            hold(&mut self.held, task_holds(&old), -1);
            self.tasks_by.count(&old, -1);
        }
    }

    /// Whether a service's VIP or a task's attachment holds `addr` on `network_id`.
    pub fn holds(&self, network_id: &str, addr: Ipv4Addr) -> bool {
        self.held
            .get(network_id)
            .is_some_and(|on| on.contains_key(&addr))
    }

    /// Every address services and tasks hold on `network_id`.
    pub fn held_on(&self, network_id: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.held
            .get(network_id)
            .into_iter()
            .flat_map(|on| on.keys().copied())
    }

    /// Every task of a service, current or past.
    pub fn tasks_of<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by
            .of_service
            .get(service_id)
            .into_iter()
            .flat_map(|ids| ids.iter().filter_map(|id| self.tasks.get(id)))
    }

    /// Active tasks on a node: of `service_id`, and of all services.
    pub fn active_on(&self, node_id: &str, service_id: &str) -> (u32, u32) {
        let all = self.tasks_by.on_node.get(node_id).copied().unwrap_or(0);
        let mine = self
            .tasks_by
            .on_node_of
            .get(&(node_id.to_string(), service_id.to_string()))
            .copied()
            .unwrap_or(0);
        (mine, all)
    }

    /// Services with an active task on a node.
    pub fn services_on<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tasks_by
            .on_node_of
            .range((node_id.to_string(), String::new())..)
            .take_while(move |((node, _), _)| node == node_id)
            .map(|((_, service), _)| service.as_str())
    }

    /// Services with a slot that holds more than one active task.
    pub fn crowded_services(&self) -> impl Iterator<Item = &str> {
        self.tasks_by.crowded.keys().map(String::as_str)
    }

    /// Services with an active task that waits for a node.
    pub fn waiting_services(&self) -> impl Iterator<Item = &str> {
        self.tasks_by.unplaced.keys().map(String::as_str)
    }

    pub fn put_node(&mut self, mut n: Node) {
        n.version = self.version;
        self.dirty.push((Kind::Node, n.id.clone()));
        self.nodes.insert(n.id.clone(), n);
    }
    pub fn remove_node(&mut self, id: &str) {
        self.dirty.push((Kind::Node, id.to_string()));
        self.nodes.remove(id);
    }
    pub fn put_meta(&mut self, meta: Meta) {
        self.dirty.push((Kind::Meta, String::new()));
        self.meta = meta;
    }

    pub fn put_secret(&mut self, mut p: Payload) {
        p.version = self.version;
        self.dirty.push((Kind::Secret, p.id.clone()));
        self.secrets.insert(p.id.clone(), p);
    }
    pub fn remove_secret(&mut self, id: &str) {
        self.dirty.push((Kind::Secret, id.to_string()));
        self.secrets.remove(id);
    }
    pub fn put_config(&mut self, mut p: Payload) {
        p.version = self.version;
        self.dirty.push((Kind::Config, p.id.clone()));
        self.configs.insert(p.id.clone(), p);
    }
    pub fn remove_config(&mut self, id: &str) {
        self.dirty.push((Kind::Config, id.to_string()));
        self.configs.remove(id);
    }

    /// Takes one stored row into this state as it is on disk (its object's own version kept):
    /// how a store is loaded, and how a replicated write is applied.
    fn absorb(
        &mut self,
        key: &str,
        bytes: Option<&[u8]>,
        sealer: &Sealer,
    ) -> Result<(), StoreError> {
        if key == Kind::Meta.prefix() {
            if let Some(bytes) = bytes {
                let (version, meta): (u64, Meta) = decode(key, bytes)?;
                self.version = version;
                self.meta = meta;
            }
        } else if let Some(id) = key.strip_prefix(Kind::Network.prefix()) {
            match bytes {
                Some(b) => drop(self.networks.insert(id.to_string(), decode(key, b)?)),
                None => drop(self.networks.remove(id)),
            }
        } else if let Some(id) = key.strip_prefix(Kind::Service.prefix()) {
            let new = bytes.map(|b| unseal_service(key, b, sealer)).transpose()?;
            if let Some(s) = &new {
                hold(&mut self.held, service_holds(s), 1);
            }
            let old = match new {
                Some(s) => self.services.insert(id.to_string(), s),
                None => self.services.remove(id),
            };
            if let Some(old) = old {
                hold(&mut self.held, service_holds(&old), -1);
            }
        } else if let Some(id) = key.strip_prefix(Kind::Task.prefix()) {
            let new: Option<Task> = bytes.map(|b| decode(key, b)).transpose()?;
            self.remove_task_only(id);
            if let Some(t) = new {
                hold(&mut self.held, task_holds(&t), 1);
                self.tasks_by.count(&t, 1);
                self.tasks.insert(id.to_string(), t);
            }
        } else if let Some(id) = key.strip_prefix(Kind::Node.prefix()) {
            match bytes {
                Some(b) => drop(self.nodes.insert(id.to_string(), decode(key, b)?)),
                None => drop(self.nodes.remove(id)),
            }
        } else if let Some(id) = key.strip_prefix(Kind::Secret.prefix()) {
            match bytes {
                Some(b) => drop(self.secrets.insert(id.to_string(), unseal(key, b, sealer)?)),
                None => drop(self.secrets.remove(id)),
            }
        } else if let Some(id) = key.strip_prefix(Kind::Config.prefix()) {
            match bytes {
                Some(b) => drop(self.configs.insert(id.to_string(), unseal(key, b, sealer)?)),
                None => drop(self.configs.remove(id)),
            }
        }
        Ok(())
    }

    /// The rows this draft's writes touched, as the store writes them.
    fn rows(&self, sealer: &Sealer) -> Result<Rows, StoreError> {
        self.dirty
            .iter()
            .map(|(kind, id)| {
                Ok((
                    format!("{}{}", kind.prefix(), id),
                    self.encoded(*kind, id, sealer)?,
                ))
            })
            .collect()
    }

    fn encoded(
        &self,
        kind: Kind,
        id: &str,
        sealer: &Sealer,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        fn enc<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, StoreError> {
            v.map(|v| serde_json::to_vec(v).map_err(|e| StoreError::Write(e.to_string())))
                .transpose()
        }
        let sealed = |p: Option<&Payload>| -> Result<Option<Vec<u8>>, StoreError> {
            let Some(p) = p else { return Ok(None) };
            let at_rest = AtRest {
                sealed: sealer.seal(&p.id, &p.data)?,
                payload: p.clone(),
            };
            enc(Some(&at_rest))
        };
        match kind {
            Kind::Network => enc(self.networks.get(id)),
            Kind::Service => {
                let Some(svc) = self.services.get(id) else {
                    return Ok(None);
                };
                let seal = |which: &str, auth: &Option<String>| {
                    auth.as_ref()
                        .map(|a| sealer.seal(&auth_binding(id, which), a.as_bytes()))
                        .transpose()
                };
                enc(Some(&ServiceAtRest {
                    sealed_auth: seal(CURRENT_AUTH, &svc.registry_auth.current)?,
                    sealed_previous_auth: seal(PREVIOUS_AUTH, &svc.registry_auth.previous)?,
                    service: svc.clone(),
                }))
            }
            Kind::Task => enc(self.tasks.get(id)),
            Kind::Node => enc(self.nodes.get(id)),
            Kind::Secret => sealed(self.secrets.get(id)),
            Kind::Config => sealed(self.configs.get(id)),
            Kind::Meta => enc(Some(&(self.version, &self.meta))),
        }
    }
}

/// A payload as the store writes it: its fields, and its data sealed.
#[derive(serde::Serialize, serde::Deserialize)]
struct AtRest {
    #[serde(flatten)]
    payload: Payload,
    sealed: String,
}

/// A service as the store writes it: its fields, and the registry credentials sent with it
/// sealed (each bound to the service and to which of its specs it is for).
#[derive(serde::Serialize, serde::Deserialize)]
struct ServiceAtRest {
    #[serde(flatten)]
    service: Service,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_previous_auth: Option<String>,
}

const CURRENT_AUTH: &str = "registry-auth";
const PREVIOUS_AUTH: &str = "previous-registry-auth";

fn auth_binding(id: &str, which: &str) -> String {
    format!("service/{id}/{which}")
}

fn unseal_service(key: &str, bytes: &[u8], sealer: &Sealer) -> Result<Service, StoreError> {
    let ServiceAtRest {
        mut service,
        sealed_auth,
        sealed_previous_auth,
    } = decode(key, bytes)?;
    let open = |which: &str, sealed: Option<String>| -> Result<Option<String>, StoreError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = sealer.open(&auth_binding(&service.id, which), &sealed)?;
        Ok(Some(String::from_utf8_lossy(&plain).into_owned()))
    };
    service.registry_auth.current = open(CURRENT_AUTH, sealed_auth)?;
    service.registry_auth.previous = open(PREVIOUS_AUTH, sealed_previous_auth)?;
    Ok(service)
}

fn unseal(key: &str, bytes: &[u8], sealer: &Sealer) -> Result<Payload, StoreError> {
    let AtRest {
        mut payload,
        sealed,
    } = decode(key, bytes)?;
    payload.data = std::sync::Arc::new(sealer.open(&payload.id, &sealed)?);
    Ok(payload)
}

pub struct Store {
    db: Database,
    /// Seals secrets and configs on their way to disk (the key beside the store file).
    sealer: Sealer,
    current: RwLock<Arc<State>>,
    write_lock: Mutex<()>,
    changed: watch::Sender<u64>,
    /// Set when this store is one of several managers' replicas.
    replicas: std::sync::OnceLock<Box<dyn Replicate>>,
    path: std::path::PathBuf,
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        // The store holds encrypted networks' keys: owner-only from its first byte on, and so
        // is a cluster's state directory around it, whoever made that.
        if let Some(dir) =
            crate::paths::cluster_state_dir(path, Path::new(crate::paths::STATE_ROOT))
        {
            crate::paths::create_private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(e.to_string()))?;
        }
        let sealer = Sealer::load_or_create(&path.with_extension("key"))?;
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        {
            let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
            txn.open_table(OBJECTS).map_err(|e| err(e.to_string()))?;
            txn.commit().map_err(|e| err(e.to_string()))?;
        }
        let state = load(&db, &sealer).map_err(|e| match e {
            StoreError::Write(message) => err(message),
            e => e,
        })?;
        let version = state.version;
        Ok(Store {
            db,
            sealer,
            current: RwLock::new(Arc::new(state)),
            write_lock: Mutex::new(()),
            changed: watch::channel(version).0,
            replicas: std::sync::OnceLock::new(),
            path: path.to_path_buf(),
        })
    }

    /// The file the sealing key is kept in (what another replica of this store needs).
    pub fn key_file(&self) -> std::path::PathBuf {
        self.path.with_extension("key")
    }

    pub fn snapshot(&self) -> Arc<State> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notified with the new version after every committed change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Runs `f` on a draft of the state; commits durably only if it returns Ok and changed
    /// something (replicated to a quorum of managers first, where there are several). `E`
    /// must absorb store failures.
    pub fn update<T, E>(&self, f: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _serialised = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(replicas) = self.replicas.get() {
            replicas.prepare()?;
        }
        let mut draft = (*self.snapshot()).clone();
        draft.version += 1;
        draft.dirty.clear();
        let out = f(&mut draft)?;
        if draft.dirty.is_empty() {
            return Ok(out);
        }
        draft.dirty.push((Kind::Meta, String::new()));
        draft.dirty.sort();
        draft.dirty.dedup();
        let rows = draft.rows(&self.sealer)?;
        if let Some(replicas) = self.replicas.get() {
            // Applied through `apply` here as on every other manager, once committed.
            replicas.replicate(rows)?;
            return Ok(out);
        }
        self.persist(&rows, None)?;
        draft.dirty.clear();
        self.publish(draft);
        Ok(out)
    }

    fn publish(&self, state: State) {
        let version = state.version;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
        self.changed.send_replace(version);
    }

    /// From now on every write goes through `replicas` first.
    pub fn replicate_through(&self, replicas: Box<dyn Replicate>) {
        if self.replicas.set(replicas).is_err() {
            tracing::warn!("the store already replicates: the second replicator is ignored");
        }
    }

    /// Applies a committed write's rows, with what the replicated log says was applied last
    /// (`applied`, kept beside the rows in the same transaction, so a restart resumes at the
    /// right entry).
    pub fn apply(&self, rows: &Rows, applied: &[u8]) -> Result<(), StoreError> {
        let mut next = (*self.snapshot()).clone();
        for (key, bytes) in rows {
            next.absorb(key, bytes.as_deref(), &self.sealer)?;
        }
        self.persist(rows, Some(applied))?;
        self.publish(next);
        Ok(())
    }

    /// What [`Store::apply`] last recorded as applied.
    pub fn applied(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::Write(e.to_string()))?;
        applied_in(&txn)
    }

    /// Every stored row, and what was applied last: a replica's snapshot, read in one
    /// transaction.
    pub fn export(&self) -> Result<(Rows, Option<Vec<u8>>), StoreError> {
        let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let txn = self.db.begin_read().map_err(|e| w(&e))?;
        let applied = applied_in(&txn)?;
        let table = txn.open_table(OBJECTS).map_err(|e| w(&e))?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(|e| w(&e))? {
            let (k, v) = row.map_err(|e| w(&e))?;
            rows.push((k.value().to_string(), Some(v.value().to_vec())));
        }
        Ok((rows, applied))
    }

    /// Replaces everything with a snapshot's rows in one transaction (a manager that was
    /// away too long to catch up from the log).
    pub fn install(&self, rows: &Rows, applied: &[u8]) -> Result<(), StoreError> {
        let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let txn = self.db.begin_write().map_err(|e| w(&e))?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| w(&e))?;
            table.retain(|_, _| false).map_err(|e| w(&e))?;
            for (key, bytes) in rows {
                if let Some(bytes) = bytes {
                    table
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(|e| w(&e))?;
                }
            }
            let mut marks = txn.open_table(APPLIED).map_err(|e| w(&e))?;
            marks.insert(APPLIED_KEY, applied).map_err(|e| w(&e))?;
        }
        txn.commit().map_err(|e| w(&e))?;
        let state = load(&self.db, &self.sealer)?;
        self.publish(state);
        Ok(())
    }

    fn persist(&self, rows: &Rows, applied: Option<&[u8]>) -> Result<(), StoreError> {
        let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let txn = self.db.begin_write().map_err(|e| w(&e))?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| w(&e))?;
            for (key, bytes) in rows {
                match bytes {
                    Some(bytes) => {
                        table
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| w(&e))?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(|e| w(&e))?;
                    }
                }
            }
            if let Some(applied) = applied {
                let mut marks = txn.open_table(APPLIED).map_err(|e| w(&e))?;
                marks.insert(APPLIED_KEY, applied).map_err(|e| w(&e))?;
            }
        }
        txn.commit().map_err(|e| w(&e))
    }
}

/// What the replicated log applied last, beside the rows it wrote.
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("applied");
const APPLIED_KEY: &str = "raft";

fn applied_in(txn: &redb::ReadTransaction) -> Result<Option<Vec<u8>>, StoreError> {
    let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
    let table = match txn.open_table(APPLIED) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(w(&e)),
    };
    Ok(table
        .get(APPLIED_KEY)
        .map_err(|e| w(&e))?
        .map(|v| v.value().to_vec()))
}

/// Every row of the store, as one state.
fn load(db: &Database, sealer: &Sealer) -> Result<State, StoreError> {
    let w = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
    let txn = db.begin_read().map_err(|e| w(&e))?;
    let table = txn.open_table(OBJECTS).map_err(|e| w(&e))?;
    let mut state = State::default();
    for row in table.iter().map_err(|e| w(&e))? {
        let (k, v) = row.map_err(|e| w(&e))?;
        state.absorb(k.value(), Some(v.value()), sealer)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Meta, TaskState};

    #[derive(Debug)]
    struct Refused;
    impl From<StoreError> for Refused {
        fn from(_: StoreError) -> Self {
            Refused
        }
    }

    fn task(id: usize, service: usize, slot: u64, node: &str, desired: TaskState) -> Task {
        let now = chrono::Utc::now();
        Task {
            id: format!("t{id}"),
            service_id: format!("s{service}"),
            slot,
            node_id: node.into(),
            created: now,
            updated: now,
            version: 0,
            desired,
            status: crate::model::TaskStatus {
                state: if node.is_empty() {
                    TaskState::Pending
                } else {
                    TaskState::Running
                },
                timestamp: now,
                message: String::new(),
                err: None,
                pid: None,
                exit_code: None,
            },
            attachments: Vec::new(),
            spec_generation: 0,
            start_after: None,
            drain_version: None,
            running_version: None,
            restarts: 0,
        }
    }

    /// What the task index answers, worked out by walking every task instead.
    fn walked(s: &State) -> String {
        use crate::orchestrator::{is_active, unplaced};
        use std::collections::{BTreeMap, BTreeSet};
        let active: Vec<&Task> = s.tasks.values().filter(|t| is_active(t)).collect();
        let mut slots: BTreeMap<(&str, u64), u32> = BTreeMap::new();
        for t in &active {
            *slots.entry((&t.service_id, t.slot)).or_default() += 1;
        }
        let crowded: BTreeSet<&str> = slots
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((svc, _), _)| *svc)
            .collect();
        let waiting: BTreeSet<&str> = active
            .iter()
            .filter(|t| unplaced(t))
            .map(|t| t.service_id.as_str())
            .collect();
        let mut out = format!("crowded {crowded:?} waiting {waiting:?}\n");
        for node in ["", "n1", "n2", "n3"] {
            let on: BTreeSet<&str> = active
                .iter()
                .filter(|t| t.node_id == node)
                .map(|t| t.service_id.as_str())
                .collect();
            out += &format!("{node}: {on:?}");
            for svc in 0..5 {
                let svc = format!("s{svc}");
                let all = active.iter().filter(|t| t.node_id == node).count() as u32;
                let mine = active
                    .iter()
                    .filter(|t| t.node_id == node && t.service_id == svc)
                    .count() as u32;
                let of: BTreeSet<&str> = s
                    .tasks
                    .values()
                    .filter(|t| t.service_id == svc)
                    .map(|t| t.id.as_str())
                    .collect();
                out += &format!(" {svc}={all},{mine},{of:?}");
            }
            out += "\n";
        }
        out
    }

    /// The same questions put to the index.
    fn indexed(s: &State) -> String {
        use std::collections::BTreeSet;
        let crowded: BTreeSet<&str> = s.crowded_services().collect();
        let waiting: BTreeSet<&str> = s.waiting_services().collect();
        let mut out = format!("crowded {crowded:?} waiting {waiting:?}\n");
        for node in ["", "n1", "n2", "n3"] {
            let on: BTreeSet<&str> = s.services_on(node).collect();
            out += &format!("{node}: {on:?}");
            for svc in 0..5 {
                let svc = format!("s{svc}");
                let (mine, all) = s.active_on(node, &svc);
                let of: BTreeSet<&str> = s.tasks_of(&svc).map(|t| t.id.as_str()).collect();
                out += &format!(" {svc}={all},{mine},{of:?}");
            }
            out += "\n";
        }
        out
    }

    /// Puts (new tasks and replacements that move, stop or place them) and removes in a fixed
    /// pseudo-random order: after each, the index answers what a walk over every task does,
    /// and a store loaded from disk rebuilds the same index.
    #[test]
    fn the_task_index_answers_what_a_walk_over_the_tasks_does() {
        let path = temp_path("index");
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&path).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..400 {
            let id = next(40) as usize;
            let remove = next(10) == 0;
            let node = ["", "n1", "n2", "n3"][next(4) as usize];
            let desired = if next(4) == 0 {
                TaskState::Shutdown
            } else {
                TaskState::Running
            };
            let slot = next(3);
            store
                .update(|s| {
                    if remove {
                        s.remove_task(&format!("t{id}"));
                    } else {
                        s.put_task(task(id, id % 5, slot, node, desired));
                    }
                    Ok::<_, Refused>(())
                })
                .unwrap();
            let s = store.snapshot();
            assert_eq!(indexed(&s), walked(&s));
        }
        let before = indexed(&store.snapshot());
        drop(store);
        let reloaded = Store::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(indexed(&reloaded.snapshot()), before);
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("swarmkit-store-{tag}-{}.redb", std::process::id()))
    }

    #[test]
    fn the_store_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("mode");
        let _ = std::fs::remove_file(&path);
        drop(Store::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        let _ = std::fs::remove_file(&path);
        assert_eq!(mode & 0o777, 0o600, "the store keeps keys: {mode:o}");
    }

    /// A private directory made as `ClusterPaths::create_state_dir` makes one, and a store
    /// in it written to: both stay owner-only.
    #[test]
    fn a_written_store_and_its_dir_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = std::env::temp_dir().join(format!("swarmkit-store-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::paths::create_private_dir(&dir).unwrap();
        let path = dir.join("state.redb");
        let store = Store::open(&path).unwrap();
        store
            .update(|s| {
                s.put_meta(Meta {
                    cluster_name: "c1".into(),
                    ..Default::default()
                });
                Ok::<_, Refused>(())
            })
            .unwrap();
        drop(store);
        let (dir_mode, file_mode) = (mode(&dir), mode(&path));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| (e.file_name(), mode(&e.path())))
            .filter(|(_, m)| m & 0o077 != 0)
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(dir_mode, 0o700);
        assert_eq!(file_mode, 0o600);
        assert!(leftovers.is_empty(), "readable by others: {leftovers:?}");
    }

    /// A secret's data is in the file only sealed, and comes back whole when the store is
    /// opened again; its key file is owner-only.
    #[test]
    fn secrets_are_sealed_on_disk_and_open_again() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("sealed");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("key"));
        let store = Store::open(&path).unwrap();
        let now = chrono::Utc::now();
        store
            .update(|s| {
                s.put_secret(Payload {
                    id: "s1".into(),
                    name: "db_pass".into(),
                    created: now,
                    updated: now,
                    version: 0,
                    labels: Default::default(),
                    data: Arc::new(b"correct horse battery staple".to_vec()),
                });
                Ok::<_, Refused>(())
            })
            .unwrap();
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        let plain = b"correct horse battery staple";
        let leaked = bytes.windows(plain.len()).any(|w| w == plain);
        let reopened = Store::open(&path).unwrap().snapshot();
        let key_mode = std::fs::metadata(path.with_extension("key"))
            .unwrap()
            .permissions()
            .mode();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("key"));
        assert!(!leaked, "the secret is in the store file in the clear");
        assert_eq!(*reopened.secrets["s1"].data, plain);
        assert_eq!(reopened.secrets["s1"].name, "db_pass");
        assert_eq!(key_mode & 0o777, 0o600);
    }

    /// The registry credentials sent with a service are in the file only sealed, and come
    /// back with it when the store is opened again.
    #[test]
    fn service_registry_auth_is_sealed_on_disk_and_opens_again() {
        let path = temp_path("auth");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("key"));
        let now = chrono::Utc::now();
        let (auth, previous) = ("eyJwYXNzd29yZCI6Imh1bnRlcjIifQ==", "b2xkLWNyZWRlbnRpYWxz");
        let store = Store::open(&path).unwrap();
        store
            .update(|s| {
                s.put_service(Service {
                    id: "svc1".into(),
                    name: "web".into(),
                    created: now,
                    updated: now,
                    version: 0,
                    spec: Default::default(),
                    previous_spec: None,
                    spec_generation: 1,
                    endpoint_mode: crate::model::EndpointMode::Vip,
                    ports: vec![],
                    networks: vec![],
                    vips: vec![],
                    update_status: None,
                    filling: false,
                    registry_auth: crate::model::RegistryAuth {
                        current: Some(auth.into()),
                        previous: Some(previous.into()),
                    },
                });
                Ok::<_, Refused>(())
            })
            .unwrap();
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        let leaked = [auth, previous]
            .iter()
            .any(|a| bytes.windows(a.len()).any(|w| w == a.as_bytes()));
        let reopened = Store::open(&path).unwrap().snapshot();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("key"));
        assert!(
            !leaked,
            "the credentials are in the store file in the clear"
        );
        let svc = &reopened.services["svc1"];
        assert_eq!(svc.registry_auth.current.as_deref(), Some(auth));
        assert_eq!(svc.registry_auth.previous.as_deref(), Some(previous));
        assert_eq!(svc.name, "web");
    }

    #[test]
    fn failed_update_changes_nothing_and_state_survives_reopen() {
        let path = temp_path("reopen");
        let _ = std::fs::remove_file(&path);
        {
            let store = Store::open(&path).unwrap();
            store
                .update(|s| {
                    s.put_meta(Meta {
                        cluster_name: "c1".into(),
                        ..Default::default()
                    });
                    Ok::<_, Refused>(())
                })
                .unwrap();
            let before = store.snapshot().version;
            let r = store.update(|s| {
                let mut m = s.meta.clone();
                m.cluster_name = "changed".into();
                s.put_meta(m);
                Err::<(), _>(Refused)
            });
            assert!(r.is_err());
            assert_eq!(store.snapshot().version, before);
            assert_eq!(store.snapshot().meta.cluster_name, "c1");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.snapshot().meta.cluster_name, "c1");
        assert_eq!(store.snapshot().version, 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn concurrent_writers_never_lose_an_update() {
        let path = temp_path("concurrent");
        let _ = std::fs::remove_file(&path);
        let store = Arc::new(Store::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        store
                            .update(|s| {
                                let mut m = s.meta.clone();
                                m.next_fwmark += 1;
                                s.put_meta(m);
                                Ok::<_, Refused>(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.snapshot().meta.next_fwmark, 80);
        drop(store);
        assert_eq!(Store::open(&path).unwrap().snapshot().meta.next_fwmark, 80);
        let _ = std::fs::remove_file(&path);
    }
}
