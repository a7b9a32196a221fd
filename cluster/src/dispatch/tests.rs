//! Plans and deltas computed without a kernel: golden plans and deltas, and the incremental
//! dispatcher checked against a from-scratch computation after every commit.

use std::sync::Arc;

use bollard::models::{ServiceSpec, TaskSpec, TaskSpecContainerSpec};

use super::{Dispatcher, compute};
use crate::model::{
    Attachment, EndpointMode, Network, Node, NodeState, Port, Protocol, PublishMode, Service, Task,
    TaskState, Time, Vip,
};
use crate::plan::{PlanDelta, PlanState};
use crate::store::State;

fn t0() -> Time {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn node(n: u8) -> Node {
    Node {
        id: format!("node{n}id"),
        hostname: format!("node{n}"),
        addr: format!("192.168.0.{}", 10 + n).parse().unwrap(),
        created: t0(),
        updated: t0(),
        version: 0,
        state: NodeState::Ready,
        leader: n == 1,
        lb_driver: "nftables".into(),
        mesh: "sandbox".into(),
        kernel: "6.1".into(),
        ingress_addr: format!("10.255.0.{}/16", 1 + n).parse().unwrap(),
        availability: Default::default(),
        labels: Default::default(),
        ipsec_missing: Default::default(),
        cert_serial: String::new(),
        role: crate::pki::Role::Worker,
        cert_root: String::new(),
        resources: Default::default(),
    }
}

fn network(id: &str, subnet: &str, vni: u32, ingress: bool) -> Network {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    Network {
        id: id.into(),
        name: id.into(),
        created: t0(),
        version: 0,
        subnet,
        gateway: subnet.hosts().next().unwrap(),
        vni,
        attachable: false,
        ingress,
        internal: false,
        labels: Default::default(),
        options: Default::default(),
        keyring: None,
    }
}

/// The third octet of an overlay's /24 in these fixtures.
fn octet(net: &str) -> u8 {
    match net {
        "app" => 1,
        "other" => 2,
        _ => 4,
    }
}

/// A VIP-mode service on `networks` (ingress first when it publishes `published`).
fn service(id: &str, networks: &[&str], published: Option<u16>, vip_base: u8) -> Service {
    let mut nets: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
    let mut ports = Vec::new();
    if let Some(p) = published {
        nets.insert(0, "ingress".into());
        ports.push(Port {
            protocol: Protocol::Tcp,
            target: 80,
            published: p,
            mode: PublishMode::Ingress,
        });
    }
    let vips = nets
        .iter()
        .enumerate()
        .map(|(i, n)| Vip {
            network_id: n.clone(),
            addr: if n == "ingress" {
                format!("10.255.1.{vip_base}/16")
            } else {
                format!("10.0.{}.{vip_base}/24", octet(n))
            }
            .parse()
            .unwrap(),
            fwmark: 256 + u32::from(vip_base) * 4 + i as u32,
        })
        .collect();
    Service {
        id: id.into(),
        name: id.into(),
        created: t0(),
        updated: t0(),
        version: 0,
        spec: ServiceSpec {
            name: Some(id.into()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some("whoami".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        previous_spec: None,
        spec_generation: 0,
        endpoint_mode: EndpointMode::Vip,
        ports,
        networks: nets,
        vips,
        update_status: None,
        filling: false,
        registry_auth: Default::default(),
    }
}

/// A running task with one address per network of its service, `.{host}` in each subnet.
fn task(s: &Service, slot: u64, node: u8, host: u8) -> Task {
    Task {
        id: format!("{}{slot}", s.id),
        service_id: s.id.clone(),
        slot,
        node_id: format!("node{node}id"),
        created: t0(),
        updated: t0(),
        version: 0,
        desired: TaskState::Running,
        status: crate::model::TaskStatus {
            state: TaskState::Running,
            timestamp: t0(),
            message: "started".into(),
            err: None,
            pid: Some(100),
            exit_code: None,
        },
        attachments: s
            .networks
            .iter()
            .map(|n| Attachment {
                network_id: n.clone(),
                addr: if n == "ingress" {
                    format!("10.255.2.{host}/16")
                } else {
                    format!("10.0.{}.{host}/24", octet(n))
                }
                .parse()
                .unwrap(),
            })
            .collect(),
        spec_generation: 0,
        start_after: None,
        drain_version: None,
        running_version: Some(1),
        restarts: 0,
    }
}

/// Three nodes; `web` (published 8080, on `app`, on node1 and node2), `db` (on `app`, on
/// node3), `lonely` (on `other`, on node1).
fn cluster() -> State {
    let mut s = State::default();
    s.version = 1;
    for n in 1..=3 {
        s.put_node(node(n));
    }
    s.put_network(network("ingress", "10.255.0.0/16", 4096, true));
    s.put_network(network("app", "10.0.1.0/24", 4097, false));
    s.put_network(network("other", "10.0.2.0/24", 4098, false));
    let web = service("web", &["app"], Some(8080), 10);
    let db = service("db", &["app"], None, 20);
    let lonely = service("lonely", &["other"], None, 30);
    s.put_task(task(&web, 1, 1, 11));
    s.put_task(task(&web, 2, 2, 12));
    s.put_task(task(&db, 1, 3, 21));
    s.put_task(task(&lonely, 1, 1, 31));
    for svc in [web, db, lonely] {
        s.put_service(svc);
    }
    s
}

fn commit(prev: &Arc<State>, f: impl FnOnce(&mut State)) -> Arc<State> {
    let mut s = (**prev).clone();
    s.version += 1;
    f(&mut s);
    Arc::new(s)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// What `State::held_on` indexes, read from every service and task.
fn scanned(s: &State, network: &str) -> Vec<std::net::Ipv4Addr> {
    let mut all: Vec<_> = s
        .services
        .values()
        .flat_map(|svc| svc.vips.iter().map(|v| (&v.network_id, v.addr.addr())))
        .chain(
            s.tasks
                .values()
                .flat_map(|t| t.attachments.iter().map(|a| (&a.network_id, a.addr.addr()))),
        )
        .filter(|(n, _)| n.as_str() == network)
        .map(|(_, a)| a)
        .collect();
    all.sort();
    all.dedup();
    all
}

#[test]
fn held_addresses_follow_every_put_and_remove() {
    let mut s = cluster();
    let check = |s: &State| {
        for net in ["ingress", "app", "other"] {
            assert_eq!(s.held_on(net).collect::<Vec<_>>(), scanned(s, net), "{net}");
        }
    };
    check(&s);
    let web = s.services.get("web").unwrap().clone();
    // A task replaced by one with other addresses frees its old ones.
    s.put_task(task(&web, 1, 1, 99));
    assert!(!s.holds("app", "10.0.1.11".parse().unwrap()));
    assert!(s.holds("app", "10.0.1.99".parse().unwrap()));
    check(&s);
    s.remove_task("db1");
    s.remove_service("lonely");
    s.remove_task("missing");
    check(&s);
    // A service re-put with the same VIPs still holds them once.
    s.put_service(web);
    check(&s);
    assert!(s.holds("app", "10.0.1.10".parse().unwrap()));
}

#[test]
fn golden_plan_of_a_node() {
    let plan = compute(&cluster(), "node2id", 0);
    // node2 runs web.2 only: it gets `app` and ingress, web and db (on app), every published
    // port, and nothing of `other` or `lonely`.
    insta::assert_snapshot!(json(&plan));
}

#[test]
fn golden_delta_when_a_task_starts_elsewhere() {
    let s0 = Arc::new(cluster());
    let mut d = Dispatcher::new(s0.clone(), 0);
    for n in ["node1id", "node2id", "node3id"] {
        d.take(n, None).unwrap();
    }
    // web.3 starts on node3.
    let s1 = commit(&s0, |s| {
        let web = s.services.get("web").unwrap().clone();
        s.put_task(task(&web, 3, 3, 13));
    });
    d.advance(s1.clone());
    let delta = d.take("node1id", Some(1)).unwrap().delta.unwrap();
    insta::assert_snapshot!(json(&delta));
}

#[test]
fn a_commit_unrelated_to_a_node_wakes_it_not() {
    let s0 = Arc::new(cluster());
    let mut d = Dispatcher::new(s0.clone(), 0);
    for n in ["node1id", "node2id", "node3id"] {
        d.take(n, None).unwrap();
    }
    let mut rx3 = d.subscribe("node3id").unwrap();
    rx3.borrow_and_update();
    // A second `lonely` task on node1: only node1 has `other`; nothing it publishes.
    let s1 = commit(&s0, |s| {
        let lonely = s.services.get("lonely").unwrap().clone();
        s.put_task(task(&lonely, 2, 1, 32));
    });
    d.advance(s1.clone());
    assert!(!rx3.has_changed().unwrap(), "node3 was woken");
    let none = d.take("node3id", Some(1)).unwrap();
    assert!(none.delta.is_none());
    assert_eq!(none.version, 1, "node3 keeps the version it has");
    assert!(d.take("node2id", Some(1)).unwrap().delta.is_none());
    let one = d.take("node1id", Some(1)).unwrap().delta.unwrap();
    assert_eq!(one.tasks.put.len(), 1);
    assert_eq!(one.len(), 2, "the task and its service's backends: {one:?}");
    // Applied everything delivered and nothing newer concerns them: all are current.
    for n in ["node1id", "node2id", "node3id"] {
        let has = if n == "node1id" { 2 } else { 1 };
        let v = d.take(n, Some(has)).unwrap().version;
        d.ack(n, v, None);
    }
    assert_eq!(d.min_ack(), 2);
}

type Step = Box<dyn Fn(&mut State)>;

/// Mutations a cluster goes through; after each, the incremental plans must equal plans
/// computed from scratch, and an agent applying the deltas must hold exactly that.
#[test]
fn incremental_plans_equal_full_recomputation() {
    let nodes = ["node1id", "node2id", "node3id"];
    let mut s = Arc::new(cluster());
    let mut d = Dispatcher::new(s.clone(), 0);
    let mut agents: Vec<(Option<u64>, PlanState, u64)> = vec![(None, PlanState::default(), 0); 3];
    let steps: Vec<Step> = vec![
        // A new service on a new network, its task on node2.
        Box::new(|s| {
            s.put_network(network("n4", "10.0.4.0/24", 4099, false));
            let svc = service("api", &["n4", "app"], Some(9000), 40);
            s.put_task(task(&svc, 1, 2, 41));
            s.put_service(svc);
        }),
        // web.1 leaves (drained), db moves to node1.
        Box::new(|s| {
            let mut t = s.tasks.get("web1").unwrap().clone();
            t.desired = TaskState::Shutdown;
            t.drain_version = Some(s.version);
            s.put_task(t);
            s.remove_task("db1");
            let db = s.services.get("db").unwrap().clone();
            s.put_task(task(&db, 2, 1, 22));
        }),
        // web.1 stopped; a task starting is not yet a backend.
        Box::new(|s| {
            let mut t = s.tasks.get("web1").unwrap().clone();
            t.status.state = TaskState::Shutdown;
            s.put_task(t);
            let web = s.services.get("web").unwrap().clone();
            let mut t = task(&web, 4, 3, 14);
            t.status.state = TaskState::Starting;
            s.put_task(t);
        }),
        // node3 goes down: its tasks end.
        Box::new(|s| crate::orchestrator::node_down(s, "node3id")),
        // A service's image changes; lonely is removed with its task.
        Box::new(|s| {
            let mut web = s.services.get("web").unwrap().clone();
            web.spec
                .task_template
                .as_mut()
                .unwrap()
                .container_spec
                .as_mut()
                .unwrap()
                .image = Some("drupal".into());
            s.put_service(web);
            s.remove_task("lonely1");
            s.remove_service("lonely");
        }),
        // node3 returns at another address.
        Box::new(|s| {
            let mut n = s.nodes.get("node3id").unwrap().clone();
            n.state = NodeState::Ready;
            n.addr = "192.168.0.99".parse().unwrap();
            s.put_node(n);
        }),
    ];
    for (i, step) in steps.iter().enumerate() {
        s = commit(&s, |st| step(st));
        d.advance(s.clone());
        for (n, node) in nodes.iter().enumerate() {
            let fresh = compute(&s, node, d.min_ack);
            let held = d.plan_of(node).unwrap();
            assert_eq!(
                held, fresh,
                "step {i}, {node}: held plan differs from a fresh one"
            );
            // Agent 2 loses every other answer, and resyncs.
            let (since, plan, digest) = &mut agents[n];
            let got = d.take(node, *since).unwrap();
            if let Some(delta) = &got.delta {
                if n == 1 && i % 2 == 0 {
                    continue;
                }
                *digest = plan.apply(delta, *digest);
            }
            *since = Some(got.version);
            assert_eq!(*digest, plan.digest(), "step {i}: digest kept per delta");
            assert_eq!(
                *digest,
                d.feeds[*node].plan.digest(),
                "step {i}: agent and manager"
            );
            assert_eq!(
                d.feeds[*node].digest,
                d.feeds[*node].plan.digest(),
                "step {i}: the manager's digest kept per change"
            );
            assert_eq!(
                plan.to_plan(fresh.version),
                fresh,
                "step {i}, agent of {node}"
            );
        }
    }
}

#[test]
fn a_draining_task_stays_until_every_node_applied_its_removal() {
    let s0 = Arc::new(cluster());
    let mut d = Dispatcher::new(s0.clone(), 0);
    let nodes = ["node1id", "node2id", "node3id"];
    for n in nodes {
        let v = d.take(n, None).unwrap().version;
        d.ack(n, v, None);
    }
    let s1 = commit(&s0, |s| {
        let mut t = s.tasks.get("web2").unwrap().clone();
        t.desired = TaskState::Shutdown;
        t.drain_version = Some(s.version);
        s.put_task(t);
    });
    d.advance(s1.clone());
    let on_node2 = |d: &Dispatcher| d.plan_of("node2id").unwrap().tasks.contains_key("web2");
    assert!(on_node2(&d), "stopped before the others routed around it");
    let backends = |d: &Dispatcher| {
        d.plan_of("node1id").unwrap().ingress.unwrap().ports[0]
            .backends
            .clone()
    };
    assert_eq!(backends(&d).len(), 1, "still a backend");
    for n in nodes {
        let got = d.take(n, Some(1)).unwrap();
        assert!(got.delta.is_some(), "{n} must learn of it");
        assert!(on_node2(&d));
        d.ack(n, got.version, None);
    }
    assert!(!on_node2(&d), "every node applied: it may stop");
    let got = d.take("node2id", Some(2)).unwrap().delta.unwrap();
    assert_eq!(got.tasks.del, vec!["web2".to_string()]);
}

#[test]
fn deltas_are_small() {
    let s0 = Arc::new(cluster());
    let mut d = Dispatcher::new(s0.clone(), 0);
    let full = json(&d.take("node1id", None).unwrap().delta.unwrap()).len();
    let s1 = commit(&s0, |s| {
        let web = s.services.get("web").unwrap().clone();
        s.put_task(task(&web, 3, 3, 13));
    });
    d.advance(s1);
    let delta: PlanDelta = d.take("node1id", Some(1)).unwrap().delta.unwrap();
    assert!(
        json(&delta).len() * 2 < full,
        "delta {delta:?} vs full {full} bytes"
    );
}

#[test]
fn after_a_manager_restart_running_tasks_stay_running_and_draining_ones_wait() {
    let s0 = Arc::new(cluster());
    let s1 = commit(&s0, |s| {
        let mut t = s.tasks.get("web2").unwrap().clone();
        t.desired = TaskState::Shutdown;
        t.drain_version = Some(s.version);
        s.put_task(t);
    });
    let s2 = commit(&s1, |s| {
        let db = s.services.get("db").unwrap().clone();
        let mut t = task(&db, 2, 1, 22);
        t.running_version = Some(s.version);
        s.put_task(t);
    });
    // A new manager on that store.
    let mut d = Dispatcher::new(s2.clone(), 0);
    d.assume_applied_before_restart();
    assert_eq!(
        d.min_ack(),
        1,
        "web2's removal (version 2) is not known applied"
    );
    assert!(d.plan_of("node2id").unwrap().tasks.contains_key("web2"));
    for n in ["node1id", "node2id", "node3id"] {
        let v = d.take(n, Some(3)).unwrap().version;
        d.ack(n, v, None);
    }
    assert_eq!(d.min_ack(), 3);
    assert!(!d.plan_of("node2id").unwrap().tasks.contains_key("web2"));
}

/// A key rotation re-sends the encrypted network (with its keyring) to the nodes that have
/// it, and never its peers: its cost does not grow with the network's endpoints.
#[test]
fn a_key_rotation_resends_the_network_not_its_peers() {
    let s0 = commit(&Arc::new(cluster()), |s| {
        let mut app = s.networks.get("app").unwrap().clone();
        app.options.insert("encrypted".into(), String::new());
        app.keyring = Some(crate::keys::Keyring::new(t0()).unwrap());
        s.put_network(app);
    });
    let mut d = Dispatcher::new(s0.clone(), 0);
    let full = d.take("node1id", None).unwrap().delta.unwrap();
    let app = full.networks.put.iter().find(|n| n.id == "app").unwrap();
    assert!(app.encrypted);
    assert_eq!(app.mtu, netcore::xfrm::ENCRYPTED_MTU);
    assert_eq!(app.keyring.as_ref().unwrap().keys.len(), 1);
    for n in ["node2id", "node3id"] {
        d.take(n, None).unwrap();
    }
    let v = s0.version;
    let s1 = commit(&s0, |s| {
        let mut app = s.networks.get("app").unwrap().clone();
        app.keyring
            .as_mut()
            .unwrap()
            .begin_rotation(v + 1, t0())
            .unwrap();
        s.put_network(app);
    });
    d.advance(s1);
    for n in ["node1id", "node2id", "node3id"] {
        // Every node has `app` (web on node1 and node2, db on node3).
        let delta = d.take(n, Some(v)).unwrap().delta.unwrap();
        assert_eq!(delta.len(), 1, "{n}: only the network: {delta:?}");
        let ring = delta.networks.put[0].keyring.as_ref().unwrap();
        assert_eq!(ring.keys.len(), 2, "{n} receives with the new key");
    }
}

/// `--with-registry-auth`: a service's credentials travel in its tasks' plans, to the nodes
/// running them and no other; new credentials reach those nodes as a change of the tasks.
#[test]
fn registry_auth_travels_in_the_plans_of_the_services_tasks() {
    let auth = "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InAifQ==";
    let mut s = cluster();
    let mut web = s.services["web"].clone();
    web.registry_auth.current = Some(auth.into());
    s.put_service(web);
    let s0 = Arc::new(s);
    for n in ["node1id", "node2id"] {
        let plan = compute(&s0, n, 0);
        let web = plan.tasks.values().find(|t| t.service_id == "web").unwrap();
        assert_eq!(web.registry_auth.as_deref(), Some(auth), "{n}");
        assert!(
            plan.tasks
                .values()
                .filter(|t| t.service_id != "web")
                .all(|t| t.registry_auth.is_none())
        );
    }
    // node3 runs no task of web: its plan does not hold the credentials.
    assert!(!json(&compute(&s0, "node3id", 0)).contains(auth));
    // A service without credentials leaves the field out of the plan's bytes.
    assert!(!json(&compute(&cluster(), "node1id", 0)).contains("registry_auth"));

    let mut d = Dispatcher::new(s0.clone(), 0);
    d.take("node2id", None).unwrap();
    let s1 = commit(&s0, |s| {
        let mut web = s.services["web"].clone();
        web.registry_auth.current = Some("bmV3".into());
        s.put_service(web);
    });
    d.advance(s1);
    let delta = d.take("node2id", Some(1)).unwrap().delta.unwrap();
    let put = delta
        .tasks
        .put
        .iter()
        .find(|t| t.service_id == "web")
        .unwrap();
    assert_eq!(put.registry_auth.as_deref(), Some("bmV3"));
}
