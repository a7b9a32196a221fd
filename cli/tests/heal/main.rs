//! The cluster heals and changes without dropping requests: a killed task is replaced under its
//! restart policy, a drained node hands its tasks over, rolling updates and rollbacks replace
//! every task, each under a bounded load through the routing mesh whose failures are counted.

#[path = "../common/mod.rs"]
mod common;
mod load;

use std::time::{Duration, Instant};

use common::Cluster;
use load::{Load, Report};

const PORT: u16 = 8080;

/// `web`: three whoami replicas published on 8080, stopping within 2 s of SIGTERM (docker's
/// default is 10 s; the built-in image stops at once, answering what is under way).
fn web(c: &Cluster, extra: &[&str]) {
    let mut args = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "--stop-grace-period",
        "2s",
    ];
    args.extend_from_slice(extra);
    args.push("whoami");
    c.sk(&args).ok();
}

/// Starts the load on node1 and waits until requests are flowing.
fn load(c: &Cluster) -> Load {
    let l = Load::start(&c.name, "node1", PORT, 4);
    c.eventually("the load to get going", Duration::from_secs(20), || {
        l.sent() > 100
    });
    l
}

/// Lets the load run on for `n` more requests (the state after a change is observed under
/// load too), then stops it.
fn finish(c: &Cluster, l: Load, n: u64, what: &str) -> Report {
    let target = l.sent() + n;
    c.eventually(
        "more requests after the change",
        Duration::from_secs(30),
        || l.sent() >= target || !l.running(),
    );
    let r = l.stop();
    eprintln!(
        "{what}: {} requests, {} failed in {:.1?} (first failure at {:?}, last at {:?}) {:?}",
        r.ok + r.failed,
        r.failed,
        r.elapsed,
        r.first_failure,
        r.last_failure,
        r.errors
    );
    r
}

fn inspect(c: &Cluster, what: &str, name: &str) -> serde_json::Value {
    let out = c.sk(&[what, "inspect", name]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0].clone()
}

fn update_state(c: &Cluster, svc: &str) -> String {
    inspect(c, "service", svc)["UpdateStatus"]["State"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn running_ids(c: &Cluster, svc: &str) -> Vec<String> {
    c.api_tasks(svc)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .filter_map(|t| t["ID"].as_str().map(String::from))
        .collect()
}

fn node_id(c: &Cluster, node: &str) -> String {
    inspect(c, "node", node)["ID"]
        .as_str()
        .expect("node ID")
        .to_string()
}

#[test]
fn a_killed_task_leaves_the_mesh_and_is_replaced_under_its_restart_policy() {
    require_root!();
    let c = Cluster::up("restart", 3);
    web(&c, &["--restart-delay", "1s"]);
    c.service_create(&["--name", "once", "--restart-condition", "none", "whoami"])
        .ok();

    let l = load(&c);
    let old = c.api_tasks("web");
    let old_id = old
        .iter()
        .find(|t| t["Slot"] == 1 && t["DesiredState"] == "running")
        .and_then(|t| t["ID"].as_str())
        .expect("web.1")
        .to_string();
    let killed = Instant::now();
    common::sigkill(c.task_pid("web", 1));
    // The dead backend is out of every load balancer once the manager knows the task
    // failed and every agent holds its plan. From then on no request may fail: not to the
    // dead backend, nor to its replacement, which joins only once it answers.
    c.eventually(
        "web.1's failure in every node's dataplane",
        Duration::from_secs(30),
        || {
            c.api_tasks("web")
                .iter()
                .any(|t| t["ID"] == old_id.as_str() && t["Status"]["State"] == "failed")
                && c.all_in_sync()
        },
    );
    let out_of_the_mesh = l.started_for();
    c.eventually("web.1 replaced and routed", Duration::from_secs(30), || {
        let running = running_ids(&c, "web");
        running.len() == 3 && !running.contains(&old_id) && c.all_in_sync()
    });
    let replaced = killed.elapsed();
    let r = finish(&c, l, 400, "task killed");
    eprintln!(
        "task killed: out of every mesh {out_of_the_mesh:.1?} into the load, replaced and routed everywhere {replaced:.1?} after the kill"
    );
    assert!(r.ok > 400);
    let late: Vec<&(Duration, String)> = r
        .failures
        .iter()
        .filter(|(at, _)| *at >= out_of_the_mesh)
        .collect();
    assert!(
        late.is_empty(),
        "requests failed after every node had taken the dead backend out: {late:?}"
    );
    assert!(
        replaced >= Duration::from_secs(1),
        "the restart delay was skipped"
    );
    let ps = c.sk(&["service", "ps", "web"]).ok().stdout;
    let history = ps
        .lines()
        .find(|l| l.contains(" \\_ web.1"))
        .unwrap_or_else(|| panic!("no history row for web.1:\n{ps}"));
    assert!(
        history.contains("Shutdown") && history.contains("Failed"),
        "{history}"
    );

    // --restart-condition none: the task stays down, and the service says so.
    common::sigkill(c.task_pid("once", 1));
    c.eventually("once.1 failed", Duration::from_secs(20), || {
        c.api_tasks("once")
            .iter()
            .any(|t| t["Status"]["State"] == "failed")
    });
    assert!(
        c.api_tasks("once")
            .iter()
            .all(|t| t["DesiredState"] != "running"),
        "a task with --restart-condition none was restarted"
    );
    let ls = c.sk(&["service", "ls"]).ok().stdout;
    let row = ls.lines().find(|l| l.contains(" once ")).expect("once");
    assert!(row.contains(" 0/1 "), "{row}");
}

#[test]
fn draining_a_node_moves_its_tasks_without_a_failed_request() {
    require_root!();
    let c = Cluster::up("drain", 3);
    web(&c, &[]);
    let node3 = node_id(&c, "node3");
    let on3 = |c: &Cluster| {
        c.api_tasks("web")
            .iter()
            .filter(|t| t["NodeID"] == node3.as_str() && t["DesiredState"] == "running")
            .count()
    };
    assert_eq!(on3(&c), 1);

    let l = load(&c);
    c.sk(&["node", "update", "--availability", "drain", "node3"])
        .ok();
    c.eventually("node3 drained", Duration::from_secs(30), || {
        on3(&c) == 0
            && running_ids(&c, "web").len() == 3
            && c.api_tasks("web")
                .iter()
                .filter(|t| t["NodeID"] == node3.as_str())
                .all(|t| t["Status"]["State"] == "shutdown")
    });
    let r = finish(&c, l, 400, "drain");
    assert_served(&r, "drain");
    let ls = c.sk(&["node", "ls"]).ok().stdout;
    let row = ls.lines().find(|l| l.contains("node3")).expect("node3");
    assert!(row.contains("Drain"), "{row}");

    // Pause: node2 keeps its task and takes no new one; a new replica goes to node1.
    c.sk(&["node", "update", "--availability", "pause", "node2"])
        .ok();
    c.sk(&["service", "scale", "web=4"]).ok();
    let node1 = node_id(&c, "node1");
    let placed: Vec<String> = c
        .api_tasks("web")
        .iter()
        .filter(|t| t["Slot"] == 4 && t["DesiredState"] == "running")
        .filter_map(|t| t["NodeID"].as_str().map(String::from))
        .collect();
    assert_eq!(placed, std::slice::from_ref(&node1));

    // Labels, and constraints on them.
    c.sk(&["node", "update", "--label-add", "zone=east", "node2"])
        .ok();
    c.sk(&["node", "update", "--availability", "active", "node2"])
        .ok();
    let labels = inspect(&c, "node", "node2")["Spec"]["Labels"].clone();
    assert_eq!(labels, serde_json::json!({"zone": "east"}));
    c.service_create(&[
        "--name",
        "east",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==east",
        "whoami",
    ])
    .ok();
    let node2 = node_id(&c, "node2");
    assert!(
        c.api_tasks("east")
            .iter()
            .filter(|t| t["DesiredState"] == "running")
            .all(|t| t["NodeID"] == node2.as_str())
    );
    c.sk(&["node", "update", "--label-rm", "zone", "node2"])
        .ok();
    assert_eq!(
        inspect(&c, "node", "node2")["Spec"]["Labels"],
        serde_json::json!({})
    );

    // The stock docker CLI: availability back to active; node rm refuses a node that is up.
    let host = format!("unix:///run/swarmkit/{}/manager.sock", c.name);
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &host)
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = docker(&["node", "update", "--availability", "active", "node3"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = docker(&["node", "ls"]);
    let row = out.lines().find(|l| l.contains("node3")).expect("node3");
    assert!(row.contains("Active"), "{row}");
    let (code, _, err) = docker(&["node", "rm", "node3"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not down"), "{err}");
    // The first node to register leads, whichever that was.
    let leader = out
        .lines()
        .find(|l| l.contains("Leader"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("node")))
        .expect("a leader in node ls")
        .to_string();
    let r = c.sk(&["node", "rm", &leader]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("manager"), "{}", r.stderr);
}

fn assert_served(r: &Report, what: &str) {
    assert_eq!(r.failed, 0, "{what}: {r:?}");
}

/// Rolls `web` with `args` under load and checks every task was replaced, with no failed
/// request.
fn roll(c: &Cluster, args: &[&str], done: &str, what: &str) {
    let before = running_ids(c, "web");
    let l = load(c);
    let mut all = vec!["service"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--detach", "web"]);
    c.sk(&all).ok();
    c.eventually(what, Duration::from_secs(60), || {
        update_state(c, "web") == done && running_ids(c, "web").len() == 3
    });
    let r = finish(c, l, 400, what);
    assert_served(&r, what);
    let after = running_ids(c, "web");
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "{what}: not every task was replaced"
    );
}

#[test]
fn rolling_updates_and_rollback_drop_no_request() {
    require_root!();
    let c = Cluster::up("update", 3);
    web(&c, &[]);
    roll(
        &c,
        &[
            "update",
            "--update-order",
            "start-first",
            "--env-add",
            "V=2",
        ],
        "completed",
        "update start-first",
    );
    roll(
        &c,
        &["update", "--update-order", "stop-first", "--env-add", "V=3"],
        "completed",
        "update stop-first",
    );
    roll(&c, &["rollback"], "rollback_completed", "rollback");
    let env = inspect(&c, "service", "web")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone();
    assert_eq!(env, serde_json::json!(["V=2"]));
    // Parallelism 0 replaces every slot at once, start-first still without a failure.
    roll(
        &c,
        &[
            "update",
            "--update-parallelism",
            "0",
            "--update-order",
            "start-first",
            "--env-add",
            "V=4",
        ],
        "completed",
        "update all at once",
    );
    let r = c.sk(&["service", "rollback", "--detach", "nosuch"]);
    assert_ne!(r.code, 0);
}

#[test]
fn the_docker_cli_sets_policies_updates_and_rolls_back() {
    require_root!();
    let c = Cluster::up("dockerupd", 3);
    let host = format!("unix:///run/swarmkit/{}/manager.sock", c.name);
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .args(["120", "docker"])
            .args(args)
            .env("DOCKER_HOST", &host)
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        let r = common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        r.ok()
    };
    docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        "--restart-max-attempts",
        "3",
        "--update-order",
        "start-first",
        "--stop-grace-period",
        "2s",
        "whoami",
    ]);
    let spec = inspect(&c, "service", "web")["Spec"].clone();
    let restart = &spec["TaskTemplate"]["RestartPolicy"];
    assert_eq!(restart["Condition"], "on-failure", "{spec}");
    assert_eq!(restart["Delay"], 2_000_000_000i64);
    assert_eq!(restart["MaxAttempts"], 3);
    assert_eq!(spec["UpdateConfig"]["Order"], "start-first");
    c.eventually("web converged", Duration::from_secs(30), || {
        running_ids(&c, "web").len() == 3
    });

    // docker's own progress display follows the update to its end (UpdateStatus), under load.
    let before = running_ids(&c, "web");
    let l = load(&c);
    docker(&["service", "update", "--env-add", "V=2", "web"]);
    assert_eq!(update_state(&c, "web"), "completed");
    let r = finish(&c, l, 400, "docker service update");
    assert_served(&r, "docker service update");
    assert!(running_ids(&c, "web").iter().all(|id| !before.contains(id)));

    let l = load(&c);
    let out = docker(&["service", "rollback", "web"]);
    assert!(out.stdout.contains("rollback"), "{}", out.stdout);
    assert_eq!(update_state(&c, "web"), "rollback_completed");
    let r = finish(&c, l, 400, "docker service rollback");
    assert_served(&r, "docker service rollback");
    let env = inspect(&c, "service", "web")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone();
    assert!(env.is_null() || env == serde_json::json!([]), "{env}");

    // swarmkit's CLI waits for a start-first update too, and only for the new tasks.
    let before = running_ids(&c, "web");
    c.sk(&["service", "update", "--env-add", "V=3", "web"]).ok();
    // As docker's: it returns once every new task runs; the last old one may still be
    // draining out of the load balancers then.
    let new = running_ids(&c, "web")
        .into_iter()
        .filter(|id| !before.contains(id))
        .count();
    assert_eq!(new, 3, "returned before the update ended");
}
