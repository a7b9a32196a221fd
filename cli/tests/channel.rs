//! The manager <-> agent channel on live clusters: deltas reach only the nodes they concern,
//! a restarted agent resyncs to exactly the manager's plan, and a node that stops
//! heartbeating is down, its tasks ended and replaced, its backends gone from every mesh.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, alive, swarmkit};

/// `path` from the manager, or None while it does not answer.
fn try_api(c: &Cluster, path: &str) -> Option<serde_json::Value> {
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let out = Command::new("curl")
        .args(["-sf", "-m", "2", "--unix-socket", &socket])
        .arg(format!("http://swarmkit{path}"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Each node's channel status (`GET /swarmkit/v1/agents`), by hostname.
fn channel(c: &Cluster) -> BTreeMap<String, serde_json::Value> {
    let hostnames: BTreeMap<String, String> = c
        .api("/nodes")
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["ID"].as_str().unwrap().to_string(),
                n["Description"]["Hostname"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    c.api("/swarmkit/v1/agents")
        .as_array()
        .expect("feeds")
        .iter()
        .map(|f| (hostnames[f["node_id"].as_str().unwrap()].clone(), f.clone()))
        .collect()
}

fn plans_sent(f: &serde_json::Value) -> u64 {
    f["sent"]["deltas"].as_u64().unwrap() + f["sent"]["full"].as_u64().unwrap()
}

fn signal(pid: i32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Pids of the running tasks of a service (from the API), by task ID.
fn running_tasks(c: &Cluster, service: &str) -> BTreeMap<String, i64> {
    c.api_tasks(service)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| {
            (
                t["ID"].as_str().unwrap().to_string(),
                t["Status"]["ContainerStatus"]["PID"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_commit_unrelated_to_a_node_sends_it_nothing() {
    require_root!();
    let c = Cluster::up("chan-quiet", 3);
    c.sk(&["network", "create", "--driver", "overlay", "a"])
        .ok();
    c.sk(&["network", "create", "--driver", "overlay", "b"])
        .ok();
    c.service_create(&[
        "--name",
        "on1",
        "--network",
        "a",
        "--constraint",
        "node.hostname==node1",
        "whoami",
    ])
    .ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    let before = channel(&c);
    c.service_create(&[
        "--name",
        "on2",
        "--network",
        "b",
        "--constraint",
        "node.hostname==node2",
        "whoami",
    ])
    .ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    let after = channel(&c);
    for node in ["node1", "node3"] {
        assert_eq!(
            plans_sent(&before[node]),
            plans_sent(&after[node]),
            "{node} shares nothing with on2 yet was sent something: {} -> {}",
            before[node],
            after[node]
        );
    }
    assert!(plans_sent(&after["node2"]) > plans_sent(&before["node2"]));
}

#[test]
fn a_restarted_agent_adopts_its_tasks_and_resyncs_to_exactly_the_managers_state() {
    require_root!();
    // Long enough a heartbeat timeout that the hung agent below is not declared down.
    let c = Cluster::up_with("chan-restart", 3, &["--heartbeat-misses", "20"]);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    // A task on node2 that writes all along: its output must neither kill it (a write with
    // no reader) nor be lost or repeated across the restart.
    c.service_create(&[
        "--name",
        "ticker",
        "--constraint",
        "node.hostname==node2",
        "whoami",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done",
    ])
    .ok();
    let ticks = || -> Vec<u64> {
        c.sk(&["service", "logs", "--raw", "ticker"])
            .ok()
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
            .collect()
    };
    c.eventually("the ticker's first lines", Duration::from_secs(20), || {
        ticks().len() >= 3
    });
    let ticker = running_tasks(&c, "ticker");
    let before = running_tasks(&c, "web");
    assert_eq!(before.len(), 3);
    let agent = c.pid_of("node2");
    // Changes reach the manager while node2's agent hangs, then it dies mid-stream; the
    // supervisor starts a new one.
    signal(agent, "STOP");
    c.service_create(&[
        "--detach",
        "--name",
        "api",
        "--network",
        "app",
        "--replicas",
        "3",
        "-p",
        "8081:80",
        "whoami",
    ])
    .ok();
    c.sk(&["service", "scale", "--detach", "web=2"]).ok();
    let seen_at_kill = ticks().len();
    signal(agent, "KILL");
    // Each new state is printed, so a timeout shows which part never came.
    let mut last = String::new();
    c.eventually(
        "node2's agent back and in sync",
        Duration::from_secs(30),
        || {
            let state = format!(
                "restarted: {}, in sync: {:?}, running api: {}, running web: {}",
                c.pid_of("node2") != agent,
                channel(&c)
                    .iter()
                    .map(|(node, f)| (node.clone(), f["in_sync"].clone()))
                    .collect::<Vec<_>>(),
                running_tasks(&c, "api").len(),
                running_tasks(&c, "web").len(),
            );
            if state != last {
                eprintln!("{state}");
                last = state;
            }
            c.pid_of("node2") != agent
                && c.all_in_sync()
                && running_tasks(&c, "api").len() == 3
                && running_tasks(&c, "web").len() == 2
        },
    );
    assert_eq!(
        running_tasks(&c, "ticker"),
        ticker,
        "the ticker survived its agent's restart as the same process"
    );
    c.eventually(
        "ticks from after the restart",
        Duration::from_secs(20),
        || ticks().len() > seen_at_kill + 10,
    );
    let all = ticks();
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every line once, in order, across the restart"
    );
    let node2 = &channel(&c)["node2"];
    assert!(node2["sent"]["full"].as_u64().unwrap() >= 2, "{node2}");
    // Adopted, not restarted: the same tasks with the same processes.
    for (id, pid) in running_tasks(&c, "web") {
        assert_eq!(before.get(&id), Some(&pid), "web task {id} was restarted");
        assert!(alive(pid as i32));
    }
    // What it holds is real: the mesh on node2 reaches every api and web replica.
    for port in [8080, 8081] {
        let (ok, stderr) = c.count_ok("node2", &format!("localhost:{port}/"), 12);
        assert_eq!(ok, 12, "port {port}: {stderr}");
    }
}

#[test]
fn a_silent_node_is_down_and_its_tasks_are_replaced() {
    require_root!();
    let c = Cluster::up("chan-down", 3);
    c.service_create(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    let on_node3: Vec<(String, i64)> = c
        .api_tasks("web")
        .iter()
        .filter(|t| t["DesiredState"] == "running")
        .filter(|t| {
            let n = t["NodeID"].as_str().unwrap();
            c.api(&format!("/nodes/{n}"))["Description"]["Hostname"] == "node3"
        })
        .map(|t| {
            (
                t["ID"].as_str().unwrap().to_string(),
                t["Status"]["ContainerStatus"]["PID"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(on_node3.len(), 1, "spread puts one replica on node3");
    let (lost_task, lost_pid) = on_node3[0].clone();
    // What node1's ingress sandbox holds for node3: FDB entries towards its VTEP, and the
    // neighbour entry of the lost task's ingress address.
    let ingress_id = c.api("/networks/ingress")["Id"]
        .as_str()
        .expect("ingress ID")
        .to_string();
    let sandbox = cluster::paths::ClusterPaths::new(&c.name).sandbox_ns("node1", &ingress_id);
    let vtep3 = c.api("/nodes/node3")["Status"]["Addr"]
        .as_str()
        .expect("node3's address")
        .to_string();
    let lost_ip = c
        .api_tasks("web")
        .iter()
        .find(|t| t["ID"] == lost_task.as_str())
        .and_then(|t| t["NetworksAttachments"][0]["Addresses"][0].as_str())
        .and_then(|a| a.split('/').next())
        .expect("the lost task's ingress address")
        .to_string();
    let in_sandbox = |cmd: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &sandbox])
            .args(cmd.split_whitespace())
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let towards_node3 = || -> (usize, bool) {
        let fdb = in_sandbox("bridge fdb show");
        let neigh = in_sandbox("ip neigh show");
        (
            fdb.lines()
                .filter(|l| l.contains(&format!("dst {vtep3} ")))
                .count(),
            neigh.lines().any(|l| l.starts_with(&format!("{lost_ip} "))),
        )
    };
    let (fdb_before, neigh_before) = towards_node3();
    assert!(
        fdb_before > 0 && neigh_before,
        "node1 knows node3 before: fdb {fdb_before}, neigh {neigh_before}"
    );
    let agent = c.pid_of("node3");
    // A hung agent heartbeats no more; its task keeps running, unreachable to the manager.
    signal(agent, "STOP");
    let stopped = Instant::now();
    c.eventually("node3 down", Duration::from_secs(10), || {
        c.sk(&["node", "inspect", "node3"])
            .ok()
            .stdout
            .contains("\"down\"")
    });
    let detected = stopped.elapsed();
    c.eventually("3 replicas running again", Duration::from_secs(15), || {
        running_tasks(&c, "web").len() == 3
    });
    let recovered = stopped.elapsed();
    eprintln!("node3 down after {detected:?}, 3 replicas again after {recovered:?}");
    let lost = c
        .api_tasks("web")
        .into_iter()
        .find(|t| t["ID"] == lost_task.as_str())
        .expect("the lost task stays as history");
    assert_eq!(lost["Status"]["State"], "orphaned", "{lost}");
    assert_eq!(lost["DesiredState"], "shutdown", "{lost}");
    assert_eq!(
        towards_node3(),
        (0, false),
        "node1 keeps FDB or neighbour entries of the down node3"
    );
    // Every request through the mesh on node1 succeeds: node3's backend is gone.
    let (ok, _) = c.count_ok("node1", "localhost:8080/", 30);
    assert_eq!(ok, 30, "failed requests after node3 went down");
    // Back: the orphaned task is stopped, nothing runs twice for a slot.
    signal(agent, "CONT");
    c.eventually("node3 ready", Duration::from_secs(10), || {
        c.sk(&["node", "inspect", "node3"])
            .ok()
            .stdout
            .contains("\"ready\"")
    });
    c.eventually("the orphaned task to stop", Duration::from_secs(10), || {
        !alive(lost_pid as i32)
    });
    let running = running_tasks(&c, "web");
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(!running.contains_key(&lost_task));
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
}

/// The heartbeat is set at `cluster up`, shown as docker shows its dispatcher's, and kept by a
/// restarted manager; nonsense is refused before anything exists.
#[test]
fn heartbeat_settings_are_the_clusters_and_survive_a_manager_restart() {
    require_root!();
    let c = Cluster::up_with(
        "chan-hb",
        1,
        &["--heartbeat-period", "200ms", "--heartbeat-misses", "2"],
    );
    let period = || try_api(&c, "/swarm")?["Spec"]["Dispatcher"]["HeartbeatPeriod"].as_i64();
    assert_eq!(period(), Some(200_000_000));
    let manager = c.pid_of("manager");
    signal(manager, "KILL");
    c.eventually("the manager restarted", Duration::from_secs(20), || {
        std::fs::read_to_string(format!("/run/swarmkit/{}/manager.pid", c.name))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|p| p != manager && alive(p))
            && period().is_some()
    });
    assert_eq!(
        period(),
        Some(200_000_000),
        "the restarted manager's heartbeat"
    );

    for (flags, named) in [
        (["--heartbeat-misses", "0"], "--heartbeat-misses"),
        (["--heartbeat-period", "5ms"], "--heartbeat-period"),
    ] {
        let name = format!("{}-bad", c.name);
        let mut args = vec!["cluster", "up", "--name", &name];
        args.extend_from_slice(&flags);
        let r = swarmkit(&args);
        assert_ne!(r.code, 0, "{flags:?} accepted");
        assert!(r.stderr.contains(named), "{}", r.stderr);
        let ls = swarmkit(&["cluster", "ls"]).ok().stdout;
        assert!(
            !ls.contains(&name),
            "{flags:?} left a cluster behind:\n{ls}"
        );
    }
}
