//! Fault injection on the netns backend: `node kill|start|isolate|heal` really crash and cut
//! nodes. Isolation must cut the agent's control channel too, which crosses the underlay.

mod common;

use std::time::Duration;

use common::Cluster;

/// The manager's address on the underlay, where agents reach it.
const MANAGER: &str = "192.168.0.1:2377";

fn can_ping(c: &Cluster, from: &str, addr: &str) -> bool {
    c.node(from, &format!("busybox ping -c1 -W1 {addr} >/dev/null"))
        .code
        == 0
}

fn reaches_manager(c: &Cluster, from: &str) -> bool {
    c.node(
        from,
        // The agents' listener speaks TLS; any answer (a 404 here) means it was reached.
        &format!("curl -sk -o /dev/null --max-time 2 https://{MANAGER}/_ping"),
    )
    .code
        == 0
}

/// Running tasks of `service` as (node hostname, pid).
fn running(c: &Cluster, service: &str) -> Vec<(String, i32)> {
    let nodes: Vec<serde_json::Value> = c
        .sk(&["node", "ls", "--format", "json"])
        .ok()
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let hostname = |id: &str| {
        nodes
            .iter()
            .find(|n| {
                n["ID"]
                    .as_str()
                    .is_some_and(|i| id.starts_with(i) || i.starts_with(id))
            })
            .and_then(|n| n["Hostname"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    c.api_tasks(service)
        .iter()
        .filter(|t| t["Status"]["State"] == "running")
        .filter_map(|t| {
            Some((
                hostname(t["NodeID"].as_str()?),
                t["Status"]["ContainerStatus"]["PID"].as_i64()? as i32,
            ))
        })
        .collect()
}

#[test]
fn kill_crashes_a_node_and_start_brings_it_back() {
    require_root!();
    let c = Cluster::up("kill", 2);
    c.service_create(&[
        "--name",
        "sleeper",
        "--replicas",
        "2",
        "whoami",
        "sleep",
        "300",
    ])
    .ok();
    c.eventually("both replicas running", Duration::from_secs(20), || {
        running(&c, "sleeper").len() == 2
    });
    let tasks = running(&c, "sleeper");
    let on2: Vec<i32> = tasks
        .iter()
        .filter(|(n, _)| n == "node2")
        .map(|t| t.1)
        .collect();
    let on1: Vec<i32> = tasks
        .iter()
        .filter(|(n, _)| n == "node1")
        .map(|t| t.1)
        .collect();
    assert!(
        !on2.is_empty() && !on1.is_empty(),
        "replicas did not spread: {tasks:?}"
    );
    let agent = common::pid_of(&c, "node2");
    assert!(can_ping(&c, "node1", "192.168.0.12"));

    c.sk(&["node", "kill", "node2"]).ok();
    assert!(!common::alive(agent), "node2's agent survived the kill");
    assert!(
        on2.iter().all(|p| !common::alive(*p)),
        "node2's task survived"
    );
    assert!(
        on1.iter().all(|p| common::alive(*p)),
        "node1's task died with node2"
    );
    assert!(
        !can_ping(&c, "node1", "192.168.0.12"),
        "node2 still answers"
    );
    // A second kill of a dead node changes nothing and succeeds.
    c.sk(&["node", "kill", "node2"]).ok();

    c.sk(&["node", "start", "node2"]).ok();
    let agent = common::pid_of(&c, "node2");
    assert!(common::alive(agent), "node start did not start an agent");
    c.eventually(
        "node2 to reach the manager again",
        Duration::from_secs(10),
        || reaches_manager(&c, "node2"),
    );
    assert!(can_ping(&c, "node1", "192.168.0.12"));
    // Starting a running node is a no-op: the same agent keeps running.
    c.sk(&["node", "start", "node2"]).ok();
    assert_eq!(common::pid_of(&c, "node2"), agent);
}

#[test]
fn isolate_cuts_data_and_control_and_heal_restores_both() {
    require_root!();
    let c = Cluster::up("isolate", 3);
    assert!(reaches_manager(&c, "node2"));
    let agent = common::pid_of(&c, "node2");

    c.sk(&["node", "isolate", "node2"]).ok();
    assert!(!can_ping(&c, "node1", "192.168.0.12"), "data path not cut");
    assert!(!can_ping(&c, "node2", "192.168.0.13"), "data path not cut");
    assert!(!reaches_manager(&c, "node2"), "control channel not cut");
    assert!(
        reaches_manager(&c, "node3"),
        "the others lost the manager too"
    );
    assert!(
        can_ping(&c, "node1", "192.168.0.13"),
        "the others lost each other"
    );
    assert!(common::alive(agent), "isolation killed the agent");

    c.sk(&["node", "heal", "node2"]).ok();
    // Neighbour entries that failed while cut are resolved again on the next probe (up to a
    // second), as on a real network.
    c.eventually(
        "node2 to reach the manager again",
        Duration::from_secs(10),
        || reaches_manager(&c, "node2"),
    );
    assert!(can_ping(&c, "node1", "192.168.0.12"));
    assert_eq!(common::pid_of(&c, "node2"), agent);
}

#[test]
fn faults_name_what_is_wrong() {
    require_root!();
    let c = Cluster::up("faultsbad", 1);
    let r = c.sk(&["node", "kill", "node9"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no node \"node9\""), "{}", r.stderr);
    let r = common::swarmkit(&["--cluster", "nosuchcluster", "node", "isolate", "node1"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no cluster named"), "{}", r.stderr);
}
