//! The per-pass bound on new tasks: a big service, or a big loss, is made good over several
//! passes, each within `TASKS_PER_PASS`, with nothing but the orchestrator's own commits to
//! drive them. Global services following their nodes, and jobs running to completion.

use std::collections::BTreeMap;

use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob,
    TaskSpec, TaskSpecContainerSpec,
};
use chrono::Utc;

use super::{TASKS_PER_PASS, in_transition, node_down, reconcile, reconcile_at};
use crate::model::{
    Availability, EndpointMode, Node, NodeResources, NodeState, Service, TaskState,
};
use crate::store::State;

fn node(state: &mut State, i: u8) -> String {
    let id = format!("node-{i}");
    let now = Utc::now();
    state.put_node(Node {
        id: id.clone(),
        hostname: format!("node{i}"),
        addr: [192, 168, 0, 10 + i].into(),
        created: now,
        updated: now,
        version: 0,
        state: NodeState::Ready,
        leader: i == 1,
        lb_driver: "nftables".into(),
        mesh: "sandbox".into(),
        kernel: String::new(),
        ingress_addr: format!("10.255.0.{}/16", 1 + i)
            .parse()
            .expect("an address"),
        availability: Availability::Active,
        labels: BTreeMap::new(),
        ipsec_missing: Some(Vec::new()),
        cert_serial: String::new(),
        role: crate::pki::Role::Worker,
        cert_root: String::new(),
        resources: NodeResources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 4 << 30,
        },
    });
    id
}

/// Two ready nodes and a service `svc` of `replicas` with no task yet.
fn cluster(replicas: u64) -> State {
    cluster_of(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(replicas as i64),
        }),
        ..Default::default()
    })
}

/// Two ready nodes and a service `svc` in `mode` with no task yet.
fn cluster_of(mode: ServiceSpecMode) -> State {
    let mut s = State::default();
    node(&mut s, 1);
    node(&mut s, 2);
    let now = Utc::now();
    let spec = ServiceSpec {
        name: Some("web".into()),
        mode: Some(mode),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("whoami:latest".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
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
    s
}

fn active(s: &State) -> usize {
    s.tasks
        .values()
        .filter(|t| t.desired == TaskState::Running)
        .count()
}

/// What the updater does after each commit: passes over the services in transition until
/// none is. Returns the tasks each pass created.
fn updater(s: &mut State) -> Vec<usize> {
    let mut created = Vec::new();
    while in_transition(s).contains("svc") {
        assert!(created.len() < 1000, "no convergence: {created:?}");
        s.version += 1;
        let before = active(s);
        let min_ack = s.version - 1;
        reconcile_at(s, "svc", min_ack, Utc::now()).expect("placeable");
        created.push(active(s) - before);
    }
    created
}

/// Every slot 1..=replicas has exactly one task meant to run.
fn one_per_slot(s: &State, replicas: u64) {
    let mut slots: BTreeMap<u64, usize> = BTreeMap::new();
    for t in s.tasks.values().filter(|t| t.desired == TaskState::Running) {
        *slots.entry(t.slot).or_default() += 1;
    }
    assert_eq!(slots.len() as u64, replicas);
    assert!(
        slots
            .iter()
            .all(|(slot, n)| *n == 1 && (1..=replicas).contains(slot))
    );
}

#[test]
fn a_big_service_is_created_over_bounded_passes() {
    let replicas = 3 * TASKS_PER_PASS as u64 + 7;
    let mut s = cluster(replicas);
    // The API's pass, inside the create transaction.
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(active(&s), TASKS_PER_PASS);
    assert!(s.services["svc"].filling);
    assert!(
        in_transition(&s).contains("svc"),
        "the rest is the updater's, which sees only services in transition"
    );
    let passes = updater(&mut s);
    assert_eq!(passes, vec![TASKS_PER_PASS, TASKS_PER_PASS, 7]);
    one_per_slot(&s, replicas);
    assert!(!s.services["svc"].filling);
    // Spread stays even across passes.
    let on_first = s.tasks.values().filter(|t| t.node_id == "node-1").count() as u64;
    assert!(on_first.abs_diff(replicas - on_first) <= 1);
}

#[test]
fn a_lost_node_is_made_good_over_bounded_passes() {
    let replicas = 2 * TASKS_PER_PASS as u64 + 40;
    let mut s = cluster(replicas);
    reconcile(&mut s, "svc").expect("placeable");
    updater(&mut s);
    one_per_slot(&s, replicas);
    node(&mut s, 3);
    let lost = s.tasks.values().filter(|t| t.node_id == "node-1").count();
    assert!(lost > TASKS_PER_PASS);
    // What the liveness loop does, inside its own transaction.
    node_down(&mut s, "node-1");
    assert_eq!(active(&s), replicas as usize - lost + TASKS_PER_PASS);
    let passes = updater(&mut s);
    assert!(passes.iter().all(|n| *n <= TASKS_PER_PASS), "{passes:?}");
    assert_eq!(passes.iter().sum::<usize>(), lost - TASKS_PER_PASS);
    one_per_slot(&s, replicas);
    assert!(
        s.tasks
            .values()
            .filter(|t| t.desired == TaskState::Running)
            .all(|t| t.node_id != "node-1")
    );
}

#[test]
fn a_service_within_one_pass_is_never_filling() {
    let mut s = cluster(TASKS_PER_PASS as u64);
    reconcile(&mut s, "svc").expect("placeable");
    one_per_slot(&s, TASKS_PER_PASS as u64);
    assert!(!s.services["svc"].filling);
    assert!(in_transition(&s).is_empty());
}

fn global(job: bool) -> ServiceSpecMode {
    let empty = Some(std::collections::HashMap::new());
    if job {
        ServiceSpecMode {
            global_job: empty,
            ..Default::default()
        }
    } else {
        ServiceSpecMode {
            global: empty,
            ..Default::default()
        }
    }
}

fn replicated_job(max_concurrent: i64, total: i64) -> ServiceSpecMode {
    ServiceSpecMode {
        replicated_job: Some(ServiceSpecModeReplicatedJob {
            max_concurrent: Some(max_concurrent),
            total_completions: Some(total),
        }),
        ..Default::default()
    }
}

/// The nodes running a task of `svc` (meant to run), one entry per task.
fn nodes_running(s: &State) -> Vec<String> {
    let mut nodes: Vec<String> = s
        .tasks
        .values()
        .filter(|t| t.desired == TaskState::Running)
        .map(|t| t.node_id.clone())
        .collect();
    nodes.sort();
    nodes
}

fn set_node(s: &mut State, id: &str, change: impl FnOnce(&mut Node)) {
    let mut n = s.nodes[id].clone();
    change(&mut n);
    s.put_node(n);
}

/// What `node update` does after changing a node: every service reconciled.
fn node_updated(s: &mut State, id: &str, change: impl FnOnce(&mut Node)) {
    set_node(s, id, change);
    reconcile(s, "svc").expect("placeable");
}

/// What an agent's report of an exit does: the task ends there, and its service is
/// reconciled.
fn exited(s: &mut State, id: &str, state: TaskState) {
    let mut t = s.tasks[id].clone();
    t.status.state = state;
    t.desired = TaskState::Shutdown;
    s.put_task(t);
    reconcile(s, "svc").expect("placeable");
}

fn running_ids(s: &State) -> Vec<String> {
    s.tasks
        .values()
        .filter(|t| t.desired == TaskState::Running)
        .map(|t| t.id.clone())
        .collect()
}

fn with_constraint(s: &mut State, constraint: &str) {
    let mut svc = s.services["svc"].clone();
    svc.spec
        .task_template
        .get_or_insert_with(Default::default)
        .placement
        .get_or_insert_with(Default::default)
        .constraints = Some(vec![constraint.to_string()]);
    s.put_service(svc);
}

#[test]
fn a_global_service_runs_one_task_per_node_and_follows_nodes_that_join_leave_and_return() {
    let mut s = cluster_of(global(false));
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);
    assert!(in_transition(&s).is_empty(), "nothing left to do");

    node(&mut s, 3);
    assert!(
        in_transition(&s).contains("svc"),
        "a node that joins is the updater's to fill"
    );
    updater(&mut s);
    assert_eq!(nodes_running(&s), ["node-1", "node-2", "node-3"]);
    let slot_on_2 = s
        .tasks
        .values()
        .find(|t| t.node_id == "node-2")
        .unwrap()
        .slot;

    node_down(&mut s, "node-2");
    assert_eq!(nodes_running(&s), ["node-1", "node-3"]);
    assert!(
        in_transition(&s).is_empty(),
        "a down node is waited for, not polled"
    );

    set_node(&mut s, "node-2", |n| n.state = NodeState::Ready);
    assert!(in_transition(&s).contains("svc"));
    updater(&mut s);
    assert_eq!(nodes_running(&s), ["node-1", "node-2", "node-3"]);
    let back = s
        .tasks
        .values()
        .find(|t| t.node_id == "node-2" && t.desired == TaskState::Running)
        .unwrap();
    assert_eq!(
        back.slot, slot_on_2,
        "a node keeps its slot, and its history"
    );
}

#[test]
fn a_global_service_leaves_a_drained_node_keeps_a_paused_one_and_returns_when_active() {
    let mut s = cluster_of(global(false));
    reconcile(&mut s, "svc").expect("placeable");
    node_updated(&mut s, "node-1", |n| n.availability = Availability::Drain);
    assert_eq!(nodes_running(&s), ["node-2"]);
    assert!(in_transition(&s).is_empty());

    node_updated(&mut s, "node-1", |n| n.availability = Availability::Active);
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);

    // Paused: the task there stays; once it exits, no new one comes until it is active.
    node_updated(&mut s, "node-2", |n| n.availability = Availability::Pause);
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);
    let on_2 = s
        .tasks
        .values()
        .find(|t| t.node_id == "node-2" && t.desired == TaskState::Running)
        .unwrap()
        .id
        .clone();
    exited(&mut s, &on_2, TaskState::Failed);
    assert_eq!(nodes_running(&s), ["node-1"]);
    assert!(in_transition(&s).is_empty(), "a paused node is not polled");
    node_updated(&mut s, "node-2", |n| n.availability = Availability::Active);
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);
}

#[test]
fn a_global_service_follows_the_labels_its_constraint_matches() {
    let mut s = cluster_of(global(false));
    with_constraint(&mut s, "node.labels.zone==east");
    set_node(&mut s, "node-1", |n| {
        n.labels.insert("zone".into(), "east".into());
    });
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(nodes_running(&s), ["node-1"]);

    node_updated(&mut s, "node-2", |n| {
        n.labels.insert("zone".into(), "east".into());
    });
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);

    node_updated(&mut s, "node-1", |n| {
        n.labels.clear();
    });
    assert_eq!(nodes_running(&s), ["node-2"]);
    assert!(in_transition(&s).is_empty());
}

#[test]
fn a_global_service_rolls_an_update_over_its_nodes() {
    let mut s = cluster_of(global(false));
    node(&mut s, 3);
    reconcile(&mut s, "svc").expect("placeable");
    let mut svc = s.services["svc"].clone();
    svc.spec_generation += 1;
    super::begin_update(&mut svc, false);
    s.put_service(svc);
    reconcile(&mut s, "svc").expect("placeable");
    // Parallelism 1, stop-first (docker's defaults): one node at a time stops its task.
    assert_eq!(nodes_running(&s).len(), 2);
    updater_with_acks(&mut s);
    assert_eq!(nodes_running(&s), ["node-1", "node-2", "node-3"]);
    assert!(
        s.tasks
            .values()
            .filter(|t| t.desired == TaskState::Running)
            .all(|t| t.spec_generation == 2)
    );
}

/// The updater, with every new task reported running and every task shut down reported
/// stopped at once (what agents do), and every node acking at once.
fn updater_with_acks(s: &mut State) {
    let mut passes = 0;
    while in_transition(s).contains("svc") {
        passes += 1;
        assert!(passes < 100, "no convergence");
        let tasks: Vec<_> = s.tasks.values().cloned().collect();
        for mut t in tasks {
            let observed = match t.desired {
                TaskState::Running => TaskState::Running,
                _ => TaskState::Shutdown,
            };
            if t.status.state != observed && !t.status.state.is_terminal() {
                t.status.state = observed;
                t.running_version = Some(s.version);
                s.put_task(t);
            }
        }
        s.version += 1;
        let min_ack = s.version;
        reconcile_at(s, "svc", min_ack, Utc::now()).expect("placeable");
    }
}

#[test]
fn a_replicated_job_runs_its_completions_at_most_max_concurrent_at_once() {
    let mut s = cluster_of(replicated_job(2, 5));
    reconcile(&mut s, "svc").expect("placeable");
    let mut completed = 0;
    while completed < 5 {
        let running = running_ids(&s);
        assert!(!running.is_empty() && running.len() <= 2, "{running:?}");
        assert_eq!(running.len(), 2.min(5 - completed));
        exited(&mut s, &running[0], TaskState::Complete);
        completed += 1;
    }
    assert!(running_ids(&s).is_empty());
    reconcile(&mut s, "svc").expect("placeable");
    assert!(
        running_ids(&s).is_empty(),
        "a completed job is never restarted"
    );
    assert!(in_transition(&s).is_empty());
    let mut slots: Vec<u64> = s
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Complete)
        .map(|t| t.slot)
        .collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3, 4, 5]);
}

#[test]
fn a_failed_job_task_is_retried_under_its_restart_policy() {
    let mut s = cluster_of(replicated_job(1, 1));
    reconcile(&mut s, "svc").expect("placeable");
    let first = running_ids(&s).remove(0);
    exited(&mut s, &first, TaskState::Failed);
    let retry = running_ids(&s);
    assert_eq!(retry.len(), 1, "retried");
    let retry = &s.tasks[&retry[0]];
    assert_eq!((retry.slot, retry.restarts), (1, 1));
    assert!(retry.start_after.is_some(), "after the policy's delay");

    // With --restart-condition none, a failure is final.
    let mut svc = s.services["svc"].clone();
    svc.spec
        .task_template
        .get_or_insert_with(Default::default)
        .restart_policy = Some(bollard::models::TaskSpecRestartPolicy {
        condition: Some(bollard::models::TaskSpecRestartPolicyConditionEnum::NONE),
        ..Default::default()
    });
    s.put_service(svc);
    let id = running_ids(&s).remove(0);
    exited(&mut s, &id, TaskState::Failed);
    assert!(running_ids(&s).is_empty());
    assert!(in_transition(&s).is_empty());
}

#[test]
fn a_global_job_runs_once_per_node_including_one_that_joins_later() {
    let mut s = cluster_of(global(true));
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(nodes_running(&s), ["node-1", "node-2"]);
    for id in running_ids(&s) {
        exited(&mut s, &id, TaskState::Complete);
    }
    assert!(running_ids(&s).is_empty());
    assert!(in_transition(&s).is_empty(), "done is done");

    node(&mut s, 3);
    assert!(in_transition(&s).contains("svc"));
    updater(&mut s);
    assert_eq!(nodes_running(&s), ["node-3"]);
    let id = running_ids(&s).remove(0);
    exited(&mut s, &id, TaskState::Complete);
    assert!(in_transition(&s).is_empty());
    assert_eq!(
        s.tasks
            .values()
            .filter(|t| t.status.state == TaskState::Complete)
            .count(),
        3
    );
}

#[test]
fn an_update_runs_a_job_again_and_stops_the_old_iteration() {
    let mut s = cluster_of(replicated_job(1, 2));
    reconcile(&mut s, "svc").expect("placeable");
    let first = running_ids(&s).remove(0);
    exited(&mut s, &first, TaskState::Complete);
    let second = running_ids(&s).remove(0);
    // What `service update` does to a job: a new iteration.
    let mut svc = s.services["svc"].clone();
    svc.spec_generation += 1;
    s.put_service(svc);
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(s.tasks[&second].desired, TaskState::Shutdown);
    let now = running_ids(&s);
    assert_eq!(now.len(), 1);
    let t = &s.tasks[&now[0]];
    assert_eq!((t.slot, t.spec_generation), (1, 2), "from its first task");
}

fn reserve(s: &mut State, nano_cpus: i64, memory_bytes: i64) {
    let mut svc = s.services["svc"].clone();
    svc.spec
        .task_template
        .get_or_insert_with(Default::default)
        .resources = Some(bollard::models::TaskSpecResources {
        reservations: Some(bollard::models::ResourceObject {
            nano_cpus: Some(nano_cpus),
            memory_bytes: Some(memory_bytes),
            generic_resources: None,
        }),
        ..Default::default()
    });
    s.put_service(svc);
}

/// The tasks meant to run that wait for a node, with their explanation.
fn pending(s: &State) -> Vec<String> {
    s.tasks
        .values()
        .filter(|t| t.desired == TaskState::Running && t.node_id.is_empty())
        .inspect(|t| assert_eq!(t.status.state, TaskState::Pending))
        .map(|t| t.status.err.clone().unwrap_or_default())
        .collect()
}

#[test]
fn a_task_no_node_has_room_for_waits_pending_and_is_placed_when_a_node_joins() {
    // Each node has 4 GiB: one 3 GiB reservation fits on each.
    let mut s = cluster(3);
    reserve(&mut s, 0, 3 << 30);
    reconcile(&mut s, "svc").expect("a pending task is no error");
    assert_eq!(nodes_running(&s), ["", "node-1", "node-2"]);
    assert_eq!(
        pending(&s),
        ["no suitable node (insufficient resources on 2 nodes)"]
    );
    assert!(
        in_transition(&s).is_empty(),
        "nothing to do until a node has room: the updater must not poll"
    );
    node(&mut s, 3);
    assert!(in_transition(&s).contains("svc"));
    updater(&mut s);
    assert_eq!(nodes_running(&s), ["node-1", "node-2", "node-3"]);
    assert!(pending(&s).is_empty());
    let placed = s.tasks.values().find(|t| t.node_id == "node-3").unwrap();
    assert_eq!(placed.status.state, TaskState::Assigned);
    assert_eq!(placed.status.err, None);
}

#[test]
fn reservations_add_up_per_node_and_a_returning_node_takes_what_fits() {
    // 2 CPUs per node: one 1.5 CPU reservation each.
    let mut s = cluster(3);
    reserve(&mut s, 1_500_000_000, 0);
    reconcile(&mut s, "svc").expect("a pending task is no error");
    assert_eq!(pending(&s).len(), 1);
    node_down(&mut s, "node-1");
    assert_eq!(nodes_running(&s), ["", "", "node-2"]);
    assert_eq!(
        pending(&s),
        [
            "no suitable node (insufficient resources on 1 node)",
            "no suitable node (insufficient resources on 1 node)"
        ],
        "the explanation follows the nodes there are"
    );
    set_node(&mut s, "node-1", |n| n.state = NodeState::Ready);
    updater(&mut s);
    assert_eq!(nodes_running(&s), ["", "node-1", "node-2"]);
}

#[test]
fn constraints_and_reservations_are_explained_together_and_constraints_alone_refuse() {
    let mut s = cluster(2);
    with_constraint(&mut s, "node.hostname==node1");
    reserve(&mut s, 0, 3 << 30);
    reconcile(&mut s, "svc").expect("a pending task is no error");
    assert_eq!(nodes_running(&s), ["", "node-1"]);
    assert_eq!(
        pending(&s),
        [
            "no suitable node (scheduling constraints not satisfied on 1 node; insufficient \
             resources on 1 node)"
        ]
    );
    let mut s = cluster(1);
    with_constraint(&mut s, "node.hostname==node9");
    reserve(&mut s, 0, 1 << 30);
    let e = reconcile(&mut s, "svc").unwrap_err().to_string();
    assert!(e.contains("placement constraints"), "{e}");
}

#[test]
fn a_global_service_skips_a_node_without_room() {
    let mut s = cluster_of(global(false));
    reserve(&mut s, 0, 3 << 30);
    set_node(&mut s, "node-2", |n| n.resources.memory_bytes = 2 << 30);
    reconcile(&mut s, "svc").expect("placeable");
    assert_eq!(nodes_running(&s), ["node-1"]);
    assert!(
        in_transition(&s).is_empty(),
        "a node without room is not awaited"
    );
}

#[test]
fn pending_tasks_are_placed_over_bounded_passes_and_a_full_cluster_costs_one_search() {
    // 1 GiB each: four fit on each 4 GiB node.
    let replicas = 2 * TASKS_PER_PASS as u64 + 50;
    let mut s = cluster(replicas);
    reserve(&mut s, 0, 1 << 30);
    reconcile(&mut s, "svc").expect("a pending task is no error");
    updater(&mut s);
    assert_eq!(pending(&s).len(), replicas as usize - 8);
    // With no room anywhere a pass changes nothing: it is not even in transition.
    let before = s.tasks.clone();
    let acked = s.version;
    reconcile_at(&mut s, "svc", acked, Utc::now()).unwrap();
    assert!(s.tasks == before, "nothing to write while no node has room");
    assert!(in_transition(&s).is_empty());
    node(&mut s, 3);
    set_node(&mut s, "node-3", |n| n.resources.memory_bytes = 1 << 40);
    let mut passes = Vec::new();
    while in_transition(&s).contains("svc") {
        assert!(passes.len() < 100, "no convergence: {passes:?}");
        let waiting = pending(&s).len();
        s.version += 1;
        let min_ack = s.version - 1;
        reconcile_at(&mut s, "svc", min_ack, Utc::now()).unwrap();
        passes.push(waiting - pending(&s).len());
    }
    assert_eq!(passes, [TASKS_PER_PASS, TASKS_PER_PASS, 42]);
    assert!(pending(&s).is_empty());
    one_per_slot(&s, replicas);
}
