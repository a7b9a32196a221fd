//! The per-pass bound on new tasks: a big service, or a big loss, is made good over several
//! passes, each within `TASKS_PER_PASS`, with nothing but the orchestrator's own commits to
//! drive them.

use std::collections::BTreeMap;

use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
};
use chrono::Utc;

use super::{TASKS_PER_PASS, in_transition, node_down, reconcile, reconcile_at};
use crate::model::{Availability, EndpointMode, Node, NodeState, Service, TaskState};
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
    });
    id
}

/// Two ready nodes and a service `svc` of `replicas` with no task yet.
fn cluster(replicas: u64) -> State {
    let mut s = State::default();
    node(&mut s, 1);
    node(&mut s, 2);
    let now = Utc::now();
    let spec = ServiceSpec {
        name: Some("web".into()),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(replicas as i64),
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
