//! Three managers' stores replicated through Raft, in one process over loopback mutual TLS
//! (the transport, the routes and the certificate check are the ones managers use): writes
//! reach every store before they are answered, losing the leader elects another, a manager
//! that was away catches up from a snapshot, and with no quorum a write is refused with
//! docker's words while reads go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::client::{ClientError, ManagerClient};
use cluster::manager::listen::{self, Limits};
use cluster::manager::replicas;
use cluster::model::Payload;
use cluster::pki::Role;
use cluster::pki::ca::{RootCa, Subject, new_key_and_request};
use cluster::pki::tls::{ClientAuth, client_config, server_config};
use cluster::raft::{Compaction, Member, NO_LEADER, Replica, net::Network};
use cluster::store::{Store, StoreError};

const CLUSTER: &str = "replicas-test";

struct Tls {
    root: RootCa,
    server: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
}

fn tls() -> Tls {
    let root = RootCa::generate(CLUSTER).unwrap();
    let (issued, key) = root
        .issue_manager(
            CLUSTER,
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let chain = format!("{}{}", issued.cert_pem, root.cert_pem);
    Tls {
        root: root.clone(),
        server: Arc::new(
            server_config(&[&root.cert_pem], &chain, &key, ClientAuth::Optional).unwrap(),
        ),
        client: client_config(&[&root.cert_pem], Some((&chain, &key))).unwrap(),
    }
}

/// One manager: its store, its replica and the server its peers reach it on.
struct Manager {
    id: u64,
    dir: PathBuf,
    addr: String,
    store: Arc<Store>,
    replica: Arc<Replica>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Managers {
    root: PathBuf,
    tls: Tls,
    compaction: Compaction,
    up: BTreeMap<u64, Manager>,
}

impl Drop for Managers {
    fn drop(&mut self) {
        for m in self.up.values_mut() {
            if let Some(runtime) = m.runtime.take() {
                runtime.shutdown_background();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn deadline_wait(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Managers {
    async fn up(tag: &str, n: u64, compaction: Compaction) -> Managers {
        let root =
            std::env::temp_dir().join(format!("swarmkit-replicas-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut managers = Managers {
            root,
            tls: tls(),
            compaction,
            up: BTreeMap::new(),
        };
        let mut addrs = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.insert(id, listener.local_addr().unwrap().to_string());
            listeners.insert(id, listener);
        }
        // Every manager seals with the cluster's one key: what one seals, all can open.
        let first = managers.dir(1);
        std::fs::create_dir_all(&first).unwrap();
        drop(Store::open(&first.join("state.redb")).unwrap());
        for id in 2..=n {
            std::fs::create_dir_all(managers.dir(id)).unwrap();
            std::fs::copy(first.join("state.key"), managers.dir(id).join("state.key")).unwrap();
        }
        for (id, listener) in listeners {
            let m = managers.start(id, listener).await;
            managers.up.insert(id, m);
        }
        let members = addrs
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    Member {
                        node: format!("node{id}"),
                        addr: addr.clone(),
                    },
                )
            })
            .collect();
        managers.up[&1].replica.initialize(members).await.unwrap();
        managers
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("manager{id}"))
    }

    /// Starts manager `id` on a runtime of its own, as a machine of its own: killing it ends
    /// every task it runs, its connections' too.
    async fn start(&self, id: u64, listener: std::net::TcpListener) -> Manager {
        let dir = self.dir(id);
        let addr = listener.local_addr().unwrap().to_string();
        let store = Arc::new(open_store(&dir).await);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (network, compaction, server_tls) = (
            Network::new(tokio::sync::watch::channel(Arc::new(self.tls.client.clone())).1),
            self.compaction,
            self.tls.server.clone(),
        );
        let (on, from) = (dir.clone(), store.clone());
        let replica = runtime
            .spawn(async move {
                let replica = Replica::start(id, &on, from.clone(), network, compaction)
                    .await
                    .unwrap();
                let routes = replicas::routes(replica.clone(), from, CLUSTER);
                let config = tokio::sync::watch::channel(server_tls).1;
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::spawn(listen::serve(
                    listener,
                    routes,
                    Some(config),
                    Limits::default(),
                ));
                replica
            })
            .await
            .unwrap();
        Manager {
            id,
            dir,
            addr,
            store,
            replica,
            runtime: Some(runtime),
        }
    }

    /// Stops manager `id` as a dead machine stops: no more answers, nothing flushed beyond
    /// what it already made durable.
    async fn kill(&mut self, id: u64) -> Manager {
        let mut m = self.up.remove(&id).expect("a running manager");
        if let Some(runtime) = m.runtime.take() {
            runtime.shutdown_background();
        }
        m
    }

    async fn restart(&mut self, gone: Manager) {
        let Manager {
            id,
            addr,
            store,
            replica,
            dir,
            ..
        } = gone;
        drop(replica);
        drop(store);
        let _ = dir;
        // The dead runtime lets go of its listener as its tasks are dropped.
        let until = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(&addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < until => {
                    tracing::debug!("{addr} still held: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{addr} stays held: {e}"),
            }
        };
        let m = self.start(id, listener).await;
        self.up.insert(id, m);
    }

    /// The manager that leads, as every running one agrees.
    fn leader(&self) -> u64 {
        let mut leader = 0;
        deadline_wait(
            "a leader every running manager agrees on",
            Duration::from_secs(10),
            || {
                let seen: Vec<Option<u64>> = self.up.values().map(|m| m.replica.leader()).collect();
                match seen.first().copied().flatten() {
                    Some(l)
                        if self.up.contains_key(&l)
                            && seen.iter().all(|s| *s == Some(l))
                            && self.up[&l].replica.leads() =>
                    {
                        leader = l;
                        true
                    }
                    _ => false,
                }
            },
        );
        leader
    }
}

/// Opens a store a stopped replica may still be letting go of (its tasks end a moment after
/// the shutdown returns).
async fn open_store(dir: &Path) -> Store {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(&dir.join("state.redb")) {
            Ok(store) => return store,
            Err(e) if Instant::now() < until => {
                tracing::debug!("store still held: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store of {} stays held: {e}", dir.display()),
        }
    }
}

fn config(name: &str) -> Payload {
    Payload {
        id: format!("id-{name}"),
        name: name.to_string(),
        created: chrono::Utc::now(),
        updated: chrono::Utc::now(),
        version: 0,
        labels: BTreeMap::new(),
        data: Arc::new(format!("data of {name}").into_bytes()),
    }
}

/// Writes config `name` through manager `at`'s store, as the manager API writes.
fn put(m: &Manager, name: &str) -> Result<(), StoreError> {
    tokio::task::block_in_place(|| {
        m.store.update(|s| {
            s.put_config(config(name));
            Ok::<_, StoreError>(())
        })
    })
}

fn names(store: &Store) -> Vec<String> {
    store
        .snapshot()
        .configs
        .values()
        .map(|c| c.name.clone())
        .collect()
}

/// Every running manager's store holds the same rows (sealed bytes included).
fn assert_identical(managers: &Managers) {
    let mut exports = managers
        .up
        .values()
        .map(|m| (m.id, m.store.export().unwrap().0));
    let (first, rows) = exports.next().unwrap();
    for (id, other) in exports {
        assert!(
            rows == other,
            "manager {id}'s store differs from manager {first}'s"
        );
    }
}

fn wait_applied(managers: &Managers, count: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while !managers
        .up
        .values()
        .all(|m| m.store.snapshot().configs.len() == count)
    {
        if Instant::now() > until {
            let seen: Vec<String> = managers
                .up
                .values()
                .map(|m| {
                    format!(
                        "manager {}: {} configs, {}",
                        m.id,
                        m.store.snapshot().configs.len(),
                        *m.replica.raft().metrics().borrow()
                    )
                })
                .collect();
            panic!(
                "not every manager applied {count} writes within 10 s:\n{}",
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_reach_a_quorum_and_survive_the_leader() {
    let mut managers = Managers::up("leader", 3, Compaction::default()).await;
    let leader = managers.leader();
    for i in 0..20 {
        put(&managers.up[&leader], &format!("before-{i}")).unwrap();
    }
    wait_applied(&managers, 20);
    assert_identical(&managers);
    let data = managers.up[&2].store.snapshot().configs["id-before-7"]
        .data
        .clone();
    assert_eq!(
        &data[..],
        b"data of before-7",
        "a follower opens what the leader sealed"
    );

    // A follower takes no write of its own: the leader decides every one.
    let follower = *managers.up.keys().find(|id| **id != leader).unwrap();
    let refused = put(&managers.up[&follower], "on-a-follower").unwrap_err();
    assert!(matches!(refused, StoreError::NoLeader(_)), "{refused}");

    let killed_at = Instant::now();
    let gone = managers.kill(leader).await;
    let stopped = killed_at.elapsed();
    let next = managers.leader();
    let elected = killed_at.elapsed();
    assert_ne!(next, leader);
    put(&managers.up[&next], "after").unwrap();
    let took = killed_at.elapsed();
    assert!(names(&managers.up[&next].store).contains(&"after".to_string()));

    // The old leader returns as a follower and catches up from the log.
    managers.restart(gone).await;
    wait_applied(&managers, 21);
    assert_eq!(
        managers.leader(),
        next,
        "a returning manager does not take over"
    );
    assert_identical(&managers);
    eprintln!(
        "leader killed to first accepted write: {took:?} (stopped after {stopped:?}, a new leader after {elected:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_away_catches_up_from_a_snapshot() {
    let compaction = Compaction { every: 20, keep: 5 };
    let mut managers = Managers::up("snapshot", 3, compaction).await;
    let leader = managers.leader();
    let away = *managers.up.keys().find(|id| **id != leader).unwrap();
    let gone = managers.kill(away).await;
    for i in 0..60 {
        put(&managers.up[&leader], &format!("while-away-{i}")).unwrap();
    }
    // The leader's log no longer reaches back to where the manager left.
    let purged = managers.up[&leader]
        .replica
        .raft()
        .metrics()
        .borrow()
        .purged;
    assert!(
        purged.is_some_and(|p| p.index > 10),
        "the leader compacted its log: {purged:?}"
    );
    managers.restart(gone).await;
    wait_applied(&managers, 60);
    let installed = managers.up[&away]
        .replica
        .raft()
        .metrics()
        .borrow()
        .snapshot;
    assert!(
        installed.is_some(),
        "manager {away} caught up from a snapshot"
    );
    assert_identical(&managers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_are_refused_and_nothing_is_lost() {
    let mut managers = Managers::up("quorum", 3, Compaction::default()).await;
    let leader = managers.leader();
    put(&managers.up[&leader], "kept").unwrap();
    wait_applied(&managers, 1);
    let others: Vec<u64> = managers
        .up
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let mut gone = Vec::new();
    for id in others {
        gone.push(managers.kill(id).await);
    }
    let refused = put(&managers.up[&leader], "refused").unwrap_err();
    assert_eq!(refused.to_string(), NO_LEADER);
    // Reads go on from what was committed.
    assert_eq!(names(&managers.up[&leader].store), vec!["kept".to_string()]);

    for m in gone {
        managers.restart(m).await;
    }
    let leader = managers.leader();
    put(&managers.up[&leader], "resumed").unwrap();
    wait_applied(&managers, 2);
    for m in managers.up.values() {
        let mut held = names(&m.store);
        held.sort();
        assert_eq!(
            held,
            vec!["kept".to_string(), "resumed".to_string()],
            "manager {}",
            m.id
        );
    }
    assert_identical(&managers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_manager_certificate_of_this_cluster_takes_part() {
    let managers = Managers::up("strangers", 1, Compaction::default()).await;
    let m = &managers.up[&1];
    let root = &managers.tls.root;
    let holder = |role: Role, cluster_id: &str| {
        let (key, csr) = new_key_and_request().unwrap();
        let subject = Subject {
            name: "node9",
            role,
            cluster_id,
        };
        let issued = root
            .sign_request(&csr, &subject, Duration::from_secs(3600))
            .unwrap();
        let chain = format!("{}{}", issued.cert_pem, root.cert_pem);
        ManagerClient::tcp(&m.addr)
            .with_tls(client_config(&[&root.cert_pem], Some((&chain, &key))).unwrap())
    };
    let vote = serde_json::json!({"vote": {"leader_id": {"term": 9, "node_id": 9}, "committed": false}, "last_log_id": null});
    for (who, client) in [
        ("a worker", holder(Role::Worker, CLUSTER)),
        (
            "a manager of another cluster",
            holder(Role::Manager, "other"),
        ),
        (
            "no certificate",
            ManagerClient::tcp(&m.addr).with_tls(client_config(&[&root.cert_pem], None).unwrap()),
        ),
    ] {
        match client
            .post::<_, serde_json::Value>("/swarmkit/v1/raft/vote", &vote)
            .await
        {
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status.as_u16(), 403, "{who}")
            }
            other => panic!("{who} was answered: {other:?}"),
        }
    }
    // The same request from a manager of this cluster is heard.
    let answer: serde_json::Value = ManagerClient::tcp(&m.addr)
        .with_tls(managers.tls.client.clone())
        .post("/swarmkit/v1/raft/vote", &vote)
        .await
        .unwrap();
    assert!(
        answer.get("Ok").is_some() || answer.get("Err").is_some(),
        "{answer}"
    );
}

/// The issue's history check, at the store: three clients write unique names through
/// whichever manager leads while managers are killed and restarted (the leader every other
/// round). Each write also counts itself in one shared counter, read and written in the same
/// transaction, so a write decided on a stale state (a lost update) shows as a count below
/// the number of names. Afterwards every acknowledged name is on every manager, the count
/// matches, and the stores are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn history_under_kills_and_restarts() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::RwLock;

    let compaction = Compaction {
        every: 50,
        keep: 10,
    };
    let managers = Arc::new(RwLock::new(Managers::up("history", 3, compaction).await));
    managers.read().await.leader();
    let start_count = {
        let m = managers.read().await;
        m.up[&m.leader()].store.snapshot().meta.next_fwmark
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..3 {
        let (managers, stop) = (managers.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut acked, mut unacked) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let leading = {
                    let m = managers.read().await;
                    m.up.values()
                        .find(|m| m.replica.leads())
                        .map(|m| m.store.clone())
                };
                let Some(store) = leading else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let name = format!("c{client}-{n}");
                n += 1;
                let written = tokio::task::block_in_place(|| {
                    store.update(|s| {
                        let mut meta = s.meta.clone();
                        meta.next_fwmark += 1;
                        s.put_meta(meta);
                        s.put_config(config(&name));
                        Ok::<_, StoreError>(())
                    })
                });
                match written {
                    Ok(()) => acked.push(name),
                    Err(_) => unacked.push(name),
                }
            }
            (acked, unacked)
        }));
    }
    // Four rounds of faults, each bounded: kill (the leader on even rounds), let the others
    // work on, restart.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let victim = {
            let m = managers.read().await;
            let leader = m.leader();
            if round % 2 == 0 {
                leader
            } else {
                *m.up.keys().find(|id| **id != leader).unwrap()
            }
        };
        let gone = managers.write().await.kill(victim).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        managers.write().await.restart(gone).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut unacked) = (Vec::new(), Vec::new());
    for c in clients {
        let (a, u) = c.await.unwrap();
        acked.extend(a);
        unacked.extend(u);
    }
    let managers = managers.read().await;
    let leader = managers.leader();
    // One more write through the final leader commits everything before it on every manager.
    put(&managers.up[&leader], "last").unwrap();
    let total = managers.up[&leader].store.snapshot().configs.len();
    wait_applied(&managers, total);
    assert_identical(&managers);
    for m in managers.up.values() {
        let state = m.store.snapshot();
        let held: std::collections::BTreeSet<&str> =
            state.configs.values().map(|c| c.name.as_str()).collect();
        assert_eq!(
            held.len(),
            state.configs.len(),
            "a name twice on manager {}",
            m.id
        );
        let lost: Vec<&String> = acked
            .iter()
            .filter(|a| !held.contains(a.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "manager {} lost acknowledged writes: {lost:?}",
            m.id
        );
        assert_eq!(
            (state.meta.next_fwmark - start_count) as usize + 1,
            state.configs.len(),
            "every applied write counted itself exactly once (no lost update) on manager {}",
            m.id
        );
    }
    assert!(
        acked.len() > 50,
        "the managers took writes through the faults: {}",
        acked.len()
    );
    eprintln!(
        "history: {} acknowledged, {} refused, {} of the refused applied after all",
        acked.len(),
        unacked.len(),
        total - 1 - acked.len()
    );
}
