//! The orchestrator without a kernel: restart policy, drains and rolling updates driven step by
//! step against a simulated agent that starts, routes and stops tasks the way real agents
//! report them. The invariants checked are the ones the live tests measure under load: a
//! service never has fewer routed tasks than the update order allows, and no slot runs twice.

use std::collections::BTreeMap;

use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use chrono::Utc;
use cluster::model::{
    Availability, EndpointMode, Node, NodeState, Service, Task, TaskState, UpdateState,
};
use cluster::orchestrator::{self, begin_update, in_transition, reconcile_at};
use cluster::store::State;

fn node(state: &mut State, name: &str, i: u8) -> String {
    let id = format!("node-{name}");
    let now = Utc::now();
    state.put_node(Node {
        id: id.clone(),
        hostname: name.to_string(),
        addr: [192, 168, 0, 10 + i].into(),
        created: now,
        updated: now,
        version: 0,
        state: NodeState::Ready,
        leader: i == 1,
        lb_driver: "nftables".into(),
        mesh: "sandbox".into(),
        kernel: String::new(),
        ingress_addr: format!("10.255.0.{}/16", 1 + i).parse().unwrap(),
        availability: Availability::Active,
        labels: BTreeMap::new(),
        ipsec_missing: Some(Vec::new()),
        cert_serial: String::new(),
        role: cluster::pki::Role::Worker,
        cert_root: String::new(),
        resources: Default::default(),
    });
    id
}

fn spec(replicas: i64) -> ServiceSpec {
    ServiceSpec {
        name: Some("web".into()),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(replicas),
            }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("whoami:latest".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Three ready nodes and a service `web` with `replicas` tasks placed, started and routed.
fn cluster(spec: ServiceSpec) -> State {
    let mut s = State::default();
    for (i, n) in ["node1", "node2", "node3"].iter().enumerate() {
        node(&mut s, n, i as u8 + 1);
    }
    let now = Utc::now();
    s.put_service(Service {
        id: "svc".into(),
        name: "web".into(),
        created: now,
        updated: now,
        version: 0,
        spec,
        previous_spec: None,
        spec_generation: 1,
        endpoint_mode: EndpointMode::Vip,
        ports: vec![],
        networks: vec![],
        vips: vec![],
        update_status: None,
        filling: false,
        registry_auth: Default::default(),
    });
    step(&mut s);
    settle(&mut s);
    s
}

/// One commit: the orchestrator's pass at the current acks (every node applied everything).
fn step(s: &mut State) -> Option<chrono::DateTime<Utc>> {
    s.version += 1;
    let min_ack = s.version - 1;
    reconcile_at(s, "svc", min_ack, Utc::now()).expect("placeable")
}

/// What agents report: tasks due start and run (routed from the next version on), drained
/// tasks whose removal every node applied stop.
fn agents(s: &mut State) {
    s.version += 1;
    let v = s.version;
    let tasks: Vec<Task> = s.tasks.values().cloned().collect();
    for mut t in tasks {
        let due = t.start_after.is_none_or(|a| a <= Utc::now());
        if t.desired == TaskState::Running && t.status.state < TaskState::Running && due {
            t.status = orchestrator::status(TaskState::Running, "started");
            t.running_version = Some(v);
            s.put_task(t);
        } else if t.desired == TaskState::Shutdown
            && !t.status.state.is_terminal()
            && t.drain_version.is_some_and(|d| d < v)
        {
            t.status = orchestrator::status(TaskState::Shutdown, "shutdown");
            s.put_task(t);
        }
    }
}

fn settle(s: &mut State) {
    for _ in 0..4 {
        agents(s);
        step(s);
    }
}

/// Tasks new connections can land on: desired and observed running, routed by every node.
fn routed(s: &State) -> Vec<&Task> {
    s.tasks
        .values()
        .filter(|t| {
            t.desired == TaskState::Running
                && t.status.state == TaskState::Running
                && t.running_version.is_some_and(|v| v < s.version)
        })
        .collect()
}

fn active_per_slot(s: &State) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for t in s.tasks.values().filter(|t| t.desired == TaskState::Running) {
        *m.entry(t.slot).or_default() += 1;
    }
    m
}

/// What the agent reports when a task's process exits on its own.
fn exit(s: &mut State, slot: u64, state: TaskState) {
    let mut t = s
        .tasks
        .values()
        .find(|t| t.slot == slot && t.desired == TaskState::Running)
        .cloned()
        .expect("a running task in the slot");
    t.status = orchestrator::status(state, "exited");
    t.desired = TaskState::Shutdown;
    s.put_task(t);
}

/// The failure back-off may delay a replacement's start; let it pass.
fn skip_backoff(s: &mut State) {
    if let Some(mut t) = s
        .tasks
        .values()
        .find(|t| t.desired == TaskState::Running)
        .cloned()
    {
        t.start_after = None;
        s.put_task(t);
    }
}

fn with_restart(
    condition: TaskSpecRestartPolicyConditionEnum,
    delay: i64,
    max: i64,
) -> ServiceSpec {
    let mut sp = spec(1);
    if let Some(t) = sp.task_template.as_mut() {
        t.restart_policy = Some(TaskSpecRestartPolicy {
            condition: Some(condition),
            delay: Some(delay),
            max_attempts: Some(max),
            window: None,
        });
    }
    sp
}

#[test]
fn exited_tasks_restart_under_the_policy() {
    use TaskSpecRestartPolicyConditionEnum::*;
    // any, with a delay: replaced, starting no earlier than the delay.
    let mut s = cluster(with_restart(ANY, 2_000_000_000, 0));
    exit(&mut s, 1, TaskState::Complete);
    let before = Utc::now();
    step(&mut s);
    let new: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.desired == TaskState::Running)
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].restarts, 1);
    let at = new[0].start_after.expect("delayed");
    assert!(
        at >= before + chrono::Duration::milliseconds(1900),
        "{at} vs {before}"
    );

    // on-failure: a clean exit stays down, a failure restarts.
    let mut s = cluster(with_restart(ON_FAILURE, 0, 0));
    exit(&mut s, 1, TaskState::Complete);
    step(&mut s);
    assert!(active_per_slot(&s).is_empty());
    let mut s = cluster(with_restart(ON_FAILURE, 0, 0));
    exit(&mut s, 1, TaskState::Failed);
    step(&mut s);
    assert_eq!(active_per_slot(&s), BTreeMap::from([(1, 1)]));

    // none: never.
    let mut s = cluster(with_restart(NONE, 0, 0));
    exit(&mut s, 1, TaskState::Failed);
    step(&mut s);
    assert!(active_per_slot(&s).is_empty());

    // max attempts 2: the first task and two restarts, then the slot stays empty.
    let mut s = cluster(with_restart(ANY, 0, 2));
    for round in 0..3 {
        exit(&mut s, 1, TaskState::Failed);
        step(&mut s);
        let running = active_per_slot(&s).get(&1).copied().unwrap_or(0);
        assert_eq!(running, usize::from(round < 2), "round {round}");
        skip_backoff(&mut s);
        settle(&mut s);
    }
    // A new spec starts the count again.
    let mut svc = s.services.get("svc").cloned().unwrap();
    svc.spec_generation += 1;
    s.put_service(svc);
    step(&mut s);
    assert_eq!(active_per_slot(&s), BTreeMap::from([(1, 1)]));
}

#[test]
fn a_draining_node_hands_its_tasks_over_start_first() {
    let mut s = cluster(spec(3));
    let on3: Vec<String> = s
        .tasks
        .values()
        .filter(|t| t.node_id == "node-node3")
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on3.len(), 1);
    let mut n = s.nodes.get("node-node3").cloned().unwrap();
    n.availability = Availability::Drain;
    s.put_node(n);
    assert!(in_transition(&s).contains("svc"));
    for _ in 0..6 {
        step(&mut s);
        assert!(routed(&s).len() >= 3, "fewer than 3 routed tasks mid-drain");
        agents(&mut s);
    }
    let old = s.tasks.get(&on3[0]).unwrap();
    assert_eq!(
        (old.desired, old.status.state),
        (TaskState::Shutdown, TaskState::Shutdown)
    );
    assert!(
        s.tasks
            .values()
            .filter(|t| t.desired == TaskState::Running)
            .all(|t| t.node_id != "node-node3")
    );
    assert_eq!(
        active_per_slot(&s),
        BTreeMap::from([(1, 1), (2, 1), (3, 1)])
    );
    assert!(in_transition(&s).is_empty());

    // Pause keeps what runs and takes nothing new; no node left active: nothing placeable.
    let mut n = s.nodes.get("node-node2").cloned().unwrap();
    n.availability = Availability::Pause;
    s.put_node(n);
    assert_eq!(
        orchestrator::pick_node(&s, "svc").ok().as_deref(),
        Some("node-node1")
    );
    let mut n = s.nodes.get("node-node1").cloned().unwrap();
    n.availability = Availability::Pause;
    s.put_node(n);
    assert!(orchestrator::pick_node(&s, "svc").is_err());
}

/// Rolls `web` (3 replicas) to a new image under `config`, checking after every step that at
/// least `min_routed` tasks take new connections and that no slot has more than two tasks.
fn roll(config: ServiceSpecUpdateConfig, min_routed: usize) -> State {
    let mut s = cluster(spec(3));
    let mut svc = s.services.get("svc").cloned().unwrap();
    svc.spec.update_config = Some(config);
    svc.spec_generation += 1;
    begin_update(&mut svc, false);
    s.put_service(svc);
    let mut steps = 0;
    let mut max_in_flight = 0;
    while s
        .services
        .get("svc")
        .and_then(|x| x.update_status.clone())
        .unwrap()
        .state
        != UpdateState::Completed
    {
        steps += 1;
        assert!(steps < 50, "the update never completed");
        step(&mut s);
        assert!(
            routed(&s).len() >= min_routed,
            "step {steps}: {} routed",
            routed(&s).len()
        );
        assert!(active_per_slot(&s).values().all(|n| *n <= 2));
        let in_flight = s
            .services
            .get("svc")
            .and_then(|x| x.update_status.clone())
            .map_or(0, |u| u.slots.len());
        max_in_flight = max_in_flight.max(in_flight);
        agents(&mut s);
    }
    assert_eq!(max_in_flight, 1, "parallelism 1");
    let current: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.desired == TaskState::Running)
        .collect();
    assert_eq!(current.len(), 3);
    assert!(current.iter().all(|t| t.spec_generation == 2));
    assert!(in_transition(&s).is_empty());
    // A finished update is idempotent: another pass changes nothing.
    let mut again = s.clone();
    reconcile_at(&mut again, "svc", s.version, Utc::now()).unwrap();
    assert!(again.tasks == s.tasks && again.services == s.services);
    s
}

#[test]
fn start_first_updates_keep_every_replica_routed() {
    roll(
        ServiceSpecUpdateConfig {
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            ..Default::default()
        },
        3,
    );
}

#[test]
fn stop_first_updates_take_one_replica_out_at_a_time() {
    let s = roll(ServiceSpecUpdateConfig::default(), 2);
    // Every replaced task was drained (left the load balancers) before it stopped.
    assert!(
        s.tasks
            .values()
            .filter(|t| t.spec_generation == 1)
            .all(|t| t.drain_version.is_some() && t.status.state == TaskState::Shutdown)
    );
}

#[test]
fn update_delay_spaces_the_slots_and_says_when_to_wake() {
    let mut s = cluster(spec(3));
    let mut svc = s.services.get("svc").cloned().unwrap();
    svc.spec.update_config = Some(ServiceSpecUpdateConfig {
        delay: Some(60_000_000_000),
        order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        ..Default::default()
    });
    svc.spec_generation += 1;
    begin_update(&mut svc, false);
    s.put_service(svc);
    let mut wake = None;
    for _ in 0..6 {
        wake = step(&mut s).or(wake);
        agents(&mut s);
    }
    let updated = s
        .tasks
        .values()
        .filter(|t| t.desired == TaskState::Running && t.spec_generation == 2)
        .count();
    assert_eq!(updated, 1, "the second slot waits for the delay");
    let wake = wake.expect("a wake-up for the delay's end");
    assert!(wake > Utc::now() + chrono::Duration::seconds(50));
}

/// `--restart-window`: restarts count against `--restart-max-attempts` only while they are
/// recent; once the window has passed, the slot is filled again.
#[test]
fn the_restart_window_counts_only_recent_attempts() {
    use TaskSpecRestartPolicyConditionEnum::*;
    let mut sp = with_restart(ANY, 0, 1);
    if let Some(r) = sp
        .task_template
        .as_mut()
        .and_then(|t| t.restart_policy.as_mut())
    {
        r.window = Some(10_000_000_000);
    }
    let mut s = cluster(sp);
    exit(&mut s, 1, TaskState::Failed);
    step(&mut s);
    assert_eq!(active_per_slot(&s), BTreeMap::from([(1, 1)]), "one attempt");
    skip_backoff(&mut s);
    settle(&mut s);
    exit(&mut s, 1, TaskState::Failed);
    step(&mut s);
    assert!(
        active_per_slot(&s).is_empty(),
        "the one attempt in the window is used"
    );
    s.version += 1;
    let min_ack = s.version - 1;
    let later = Utc::now() + chrono::Duration::seconds(11);
    reconcile_at(&mut s, "svc", min_ack, later).expect("placeable");
    assert_eq!(
        active_per_slot(&s),
        BTreeMap::from([(1, 1)]),
        "past the window the earlier attempt no longer counts"
    );
}
