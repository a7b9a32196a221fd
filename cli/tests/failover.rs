//! Failover under load (issue 11, "How it is checked"): a node killed, a node isolated then
//! healed, the manager killed, an agent restarted, each while a bounded load runs through the
//! routing mesh. Each test prints its figures on `FAILOVER name key=value` lines, which
//! `bench/failover.sh` collects; the targets (no failed connection 3 s after a node dies,
//! replicas back within 5 s) are reported there, not asserted here.

mod common;
#[path = "heal/load.rs"]
mod load;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Cluster;
use load::{Load, Report};

const PORT: u16 = 8080;

/// The cluster, and what the web service runs: the built-in whoami, or with
/// `SWARMKIT_TEST_IMAGES=registry` a registry image (busybox's httpd, pushed to a registry in
/// the cluster's underlay and run under crun). The registry goes before the cluster.
struct Lab {
    _registry: Option<testkit::registry::Registry>,
    image: String,
    c: Cluster,
}

impl std::ops::Deref for Lab {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

fn up(tag: &str, nodes: usize) -> Lab {
    const REGISTRY: &str = "192.168.0.1:5000";
    if std::env::var("SWARMKIT_TEST_IMAGES").as_deref() != Ok("registry") {
        return Lab {
            _registry: None,
            image: "whoami".into(),
            c: Cluster::up(tag, nodes),
        };
    }
    let c = Cluster::up_with(tag, nodes, &["--insecure-registry", REGISTRY]);
    let registry = testkit::registry::Registry::builder()
        .netns(&format!("{}underlay", c.ns_prefix()))
        .addr(REGISTRY.parse().unwrap())
        .start();
    let built = testkit::image::OciLayout::new()
        .layer(testkit::image::Layer::busybox(&["sh", "httpd"]))
        .layer(testkit::image::Layer::new().file("/srv/index.html", "web\n", 0o644))
        .entrypoint(&["httpd", "-f", "-p", "80", "-h", "/srv"])
        .write(&std::env::temp_dir().join(format!("{}-web", c.name)), "1");
    registry.push(&built, "web:1");
    Lab {
        image: registry.image("web:1"),
        _registry: Some(registry),
        c,
    }
}

fn web(c: &Lab) {
    c.service_create(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "--stop-grace-period",
        "2s",
        &c.image,
    ])
    .ok();
}

fn load(c: &Cluster) -> Load {
    let l = Load::start(&c.name, "node1", PORT, 4);
    c.eventually("the load to get going", Duration::from_secs(20), || {
        l.sent() > 100
    });
    l
}

fn finish(c: &Cluster, l: Load, n: u64) -> Report {
    let target = l.sent() + n;
    c.eventually(
        "more requests after the change",
        Duration::from_secs(30),
        || l.sent() >= target || !l.running(),
    );
    l.stop()
}

fn figure(test: &str, pairs: &[(&str, String)]) {
    let kv: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("FAILOVER {test} {}", kv.join(" "));
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn node_id(c: &Cluster, node: &str) -> String {
    let out = c.sk(&["node", "inspect", node]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0]["ID"].as_str().expect("node ID").to_string()
}

/// Tasks of `web` desired and observed running: (slot, node ID, task ID, pid).
fn running(c: &Cluster) -> Vec<(u64, String, String, i64)> {
    c.api_tasks("web")
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| {
            (
                t["Slot"].as_u64().unwrap_or(0),
                t["NodeID"].as_str().unwrap_or("").to_string(),
                t["ID"].as_str().unwrap_or("").to_string(),
                t["Status"]["ContainerStatus"]["PID"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// Every slot 1..=3 runs exactly one task, and none on `not_on`.
fn one_per_slot(c: &Cluster, not_on: Option<&str>) -> bool {
    let r = running(c);
    let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for (slot, ..) in &r {
        *per_slot.entry(*slot).or_default() += 1;
    }
    per_slot == BTreeMap::from([(1, 1), (2, 1), (3, 1)])
        && not_on.is_none_or(|n| r.iter().all(|(_, node, ..)| node != n))
}

/// Whether a task's pid (i64 in the API's JSON) still runs.
fn alive(pid: i64) -> bool {
    i32::try_from(pid).is_ok_and(common::alive)
}

/// Kills (or isolates) node3 under load and brings it back; returns nothing, prints figures.
fn lose_node3(test: &str, cut: &str, restore: &str) {
    let c = up(test, 3);
    web(&c);
    let node3 = node_id(&c, "node3");
    let before: Vec<_> = running(&c);
    let lost: Vec<i64> = before
        .iter()
        .filter(|(_, n, ..)| *n == node3)
        .map(|t| t.3)
        .collect();
    assert_eq!(lost.len(), 1, "one replica on node3: {before:?}");

    let l = load(&c);
    let cut_at = l.started_for();
    let started = Instant::now();
    c.sk(&["node", cut, "node3"]).ok();
    // Down is when every other node drops node3's backends: the bound on how long a new
    // connection can still be sent there (the load's own figure is blurred by clients that
    // block on a dead backend until their timeout).
    c.eventually("node3 down", Duration::from_secs(30), || {
        let ls = c.sk(&["node", "ls"]).ok().stdout;
        ls.lines()
            .any(|l| l.contains("node3") && l.contains("Down"))
    });
    let down = started.elapsed();
    c.eventually(
        "three replicas running again, none on node3",
        Duration::from_secs(60),
        || one_per_slot(&c, Some(&node3)),
    );
    let replicas_back = started.elapsed();
    let quiet_from = l.started_for();
    let r = finish(&c, l, 1000);
    let recovered = r
        .last_failure
        .map_or(Duration::ZERO, |f| f.saturating_sub(cut_at));
    figure(
        test,
        &[
            ("requests", (r.ok + r.failed).to_string()),
            ("failed", r.failed.to_string()),
            ("no_failure_after_s", secs(recovered)),
            ("down_after_s", secs(down)),
            ("replicas_back_after_s", secs(replicas_back)),
        ],
    );
    // When the last failure began is a figure (bench/failover.sh holds it to the target),
    // not an assertion: under load a request can stall for its own reasons. What must hold
    // is that the mesh serves fully once the replicas are back.
    if r.last_failure.is_some_and(|f| f >= quiet_from) {
        eprintln!("FAILOVER {test} failed_after_replicas_back=1 ({r:?})");
    }
    let (ok, stderr) = c.count_ok("node1", &format!("localhost:{PORT}/"), 30);
    assert_eq!(
        ok, 30,
        "the mesh on node1 after the replicas were back: {stderr}"
    );
    let ps = c.sk(&["service", "ps", "web"]).ok().stdout;
    assert!(
        ps.lines()
            .any(|l| l.contains("node3") && l.contains("Shutdown") && l.contains("Orphaned")),
        "the lost task is not shown as Swarm shows it:\n{ps}"
    );

    let started = Instant::now();
    c.sk(&["node", restore, "node3"]).ok();
    c.eventually("node3 ready again", Duration::from_secs(60), || {
        let ls = c.sk(&["node", "ls"]).ok().stdout;
        ls.lines()
            .any(|l| l.contains("node3") && l.contains("Ready"))
    });
    // Its old task is stopped (isolation killed nothing), and no slot ever runs twice.
    c.eventually(
        "node3's orphaned task stopped",
        Duration::from_secs(30),
        || lost.iter().all(|p| !alive(*p)),
    );
    for _ in 0..25 {
        assert!(
            one_per_slot(&c, None),
            "a slot runs twice: {:?}",
            running(&c)
        );
        std::thread::sleep(Duration::from_millis(40));
    }
    figure(test, &[("back_ready_after_s", secs(started.elapsed()))]);
}

#[test]
fn node_killed_under_load() {
    require_root!();
    lose_node3("fkill", "kill", "start");
}

#[test]
fn node_isolated_then_healed_under_load() {
    require_root!();
    lose_node3("fiso", "isolate", "heal");
}

/// What the API lists, without what legitimately changes with time.
fn listings(c: &Cluster) -> serde_json::Value {
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let get = |path: &str| -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--unix-socket", &socket])
            .arg(format!("http://swarmkit{path}"))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let mut tasks: Vec<serde_json::Value> = get("/tasks")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            serde_json::json!([
                t["ID"],
                t["Slot"],
                t["NodeID"],
                t["DesiredState"],
                t["Status"]["State"],
                t["Status"]["ContainerStatus"]["PID"],
                t["NetworksAttachments"],
            ])
        })
        .collect();
    tasks.sort_by_key(|t| t.to_string());
    let mut nodes: Vec<serde_json::Value> = get("/nodes")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            serde_json::json!([
                n["ID"],
                n["Description"]["Hostname"],
                n["Status"],
                n["Spec"]
            ])
        })
        .collect();
    nodes.sort_by_key(|n| n.to_string());
    serde_json::json!({
        "services": get("/services"),
        "networks": get("/networks"),
        "tasks": tasks,
        "nodes": nodes,
    })
}

fn pid_of(c: &Cluster, daemon: &str) -> i32 {
    std::fs::read_to_string(format!("/run/swarmkit/{}/{daemon}.pid", c.name))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

#[test]
fn manager_killed_under_load() {
    require_root!();
    let c = up("fmgr", 3);
    web(&c);
    let before = listings(&c);
    let old = pid_of(&c, "manager");
    assert!(old > 0);
    let l = load(&c);
    let started = Instant::now();
    kill9(old);
    c.eventually("the manager back", Duration::from_secs(60), || {
        let p = pid_of(&c, "manager");
        p != old && p > 0 && c.sk(&["service", "ls"]).code == 0
    });
    let api_back = started.elapsed();
    c.eventually("the same state as before", Duration::from_secs(60), || {
        listings(&c) == before
    });
    let same_after = started.elapsed();
    let r = finish(&c, l, 1000);
    figure(
        "manager",
        &[
            ("requests", (r.ok + r.failed).to_string()),
            ("failed", r.failed.to_string()),
            ("api_back_after_s", secs(api_back)),
            ("state_identical_after_s", secs(same_after)),
        ],
    );
    assert_eq!(r.failed, 0, "{r:?}");
}

#[test]
fn agent_restarted_under_load() {
    require_root!();
    let c = up("fagent", 3);
    web(&c);
    let before = running(&c);
    let old = pid_of(&c, "node2");
    assert!(old > 0);
    let l = load(&c);
    let started = Instant::now();
    kill9(old);
    c.eventually("node2's agent restarted", Duration::from_secs(30), || {
        let p = pid_of(&c, "node2");
        p != old && p > 0 && alive(i64::from(p))
    });
    let restarted = started.elapsed();
    // The new agent has reported to the manager: node2 is ready and has applied a plan.
    c.eventually(
        "node2's new agent applied its plan",
        Duration::from_secs(30),
        || {
            let out = c.sk(&["node", "inspect", "node2"]).ok().stdout;
            out.contains("\"Ready\"") || out.contains("\"ready\"")
        },
    );
    let r = finish(&c, l, 1000);
    let after = running(&c);
    figure(
        "agent",
        &[
            ("requests", (r.ok + r.failed).to_string()),
            ("failed", r.failed.to_string()),
            ("restarted_after_s", secs(restarted)),
        ],
    );
    assert_eq!(after, before, "tasks were restarted");
    assert!(before.iter().all(|t| alive(t.3)));
    assert_eq!(r.failed, 0, "{r:?}");
}
