//! Three managers replicating the store (issue 24): the leader's node killed, the leader cut
//! off, and two of three managers lost, each while a bounded load runs through the routing
//! mesh on a worker. Every write goes through the stock docker CLI on a manager's own socket,
//! as a user on that manager's machine would. Each test prints its figures on `MANAGERS name
//! key=value` lines (the time from the fault to the first accepted write among them); what
//! must hold is asserted.

mod common;
#[path = "heal/load.rs"]
mod load;

use std::time::{Duration, Instant};

use common::Cluster;
use load::Load;

const PORT: u16 = 8080;
/// docker's words when a write finds no quorum.
const NO_LEADER: &str = "The swarm does not have a leader";

fn up(tag: &str) -> Cluster {
    Cluster::up_with(tag, 5, &["--managers", "3"])
}

/// The managers as `docker node ls` on `via` shows them: (hostname, MANAGER STATUS).
fn managers(c: &Cluster, via: &str) -> Vec<(String, String)> {
    let out = c
        .docker_via(
            via,
            &["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"],
        )
        .stdout;
    out.lines()
        .filter_map(|l| {
            let (host, status) = l.split_once(' ')?;
            (!status.is_empty()).then(|| (host.to_string(), status.to_string()))
        })
        .collect()
}

/// Waits until `old`, asked itself, shows itself Reachable under `new` as Leader.
fn following(c: &Cluster, old: &str, new: &str) {
    c.eventually(
        "the old leader back, following",
        Duration::from_secs(30),
        || {
            let m = managers(c, old);
            m.contains(&(old.to_string(), "Reachable".to_string()))
                && m.contains(&(new.to_string(), "Leader".to_string()))
        },
    );
}

fn leader(c: &Cluster, via: &str) -> Option<String> {
    managers(c, via)
        .into_iter()
        .find(|(_, s)| s == "Leader")
        .map(|(h, _)| h)
}

/// A web service on the two workers (node4, node5), off every manager: what the mesh
/// serves must not depend on which manager dies.
fn web(c: &Cluster) {
    c.docker_via(
        "node1",
        &[
            "service",
            "create",
            "-q",
            "--name",
            "web",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname!=node1",
            "--constraint",
            "node.hostname!=node2",
            "--constraint",
            "node.hostname!=node3",
            "-p",
            "8080:80",
            "whoami",
        ],
    )
    .ok();
}

fn load(c: &Cluster) -> Load {
    let l = Load::start(&c.name, "node5", PORT, 2);
    c.eventually("the load to get going", Duration::from_secs(20), || {
        l.sent() > 50
    });
    l
}

fn figure(test: &str, pairs: &[(&str, String)]) {
    let kv: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("MANAGERS {test} {}", kv.join(" "));
}

/// Creates network `name` through the manager on `via` until it is taken, within `deadline`;
/// returns how long after `since` that was.
fn first_write(c: &Cluster, since: Instant, via: &str, name: &str, deadline: Duration) -> Duration {
    c.eventually(&format!("a write through {via}"), deadline, || {
        c.docker_via(via, &["network", "create", "-d", "overlay", name])
            .success()
    });
    since.elapsed()
}

#[test]
fn the_leaders_machine_dies_and_another_manager_takes_over() {
    require_root!();
    let c = up("mgr-kill");
    assert_eq!(
        managers(&c, "node2").len(),
        3,
        "three managers: {:?}",
        managers(&c, "node2")
    );
    let old = leader(&c, "node2").expect("a leader");
    let via = if old == "node2" { "node3" } else { "node2" };
    web(&c);
    let l = load(&c);

    let killed = Instant::now();
    c.sk(&["node", "kill", &old]).ok();
    let took = first_write(&c, killed, via, "after-kill", Duration::from_secs(20));
    let new = leader(&c, via).expect("a new leader");
    assert_ne!(new, old);
    assert!(
        managers(&c, via).contains(&(old.clone(), "Unreachable".to_string())),
        "the dead leader shows Unreachable: {:?}",
        managers(&c, via)
    );
    // The new leader keeps the heartbeats: the dead node is marked down by it.
    c.eventually("the dead node down", Duration::from_secs(30), || {
        c.docker_via(
            via,
            &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"],
        )
        .stdout
        .lines()
        .any(|l| l == format!("{old} Down"))
    });
    let down = killed.elapsed();
    let r = l.stop();
    figure(
        "leader_kill",
        &[
            ("first_write_after_s", format!("{:.2}", took.as_secs_f64())),
            ("node_down_after_s", format!("{:.2}", down.as_secs_f64())),
            ("requests", (r.ok + r.failed).to_string()),
            ("failed", r.failed.to_string()),
        ],
    );
    assert_eq!(r.failed, 0, "the mesh served throughout: {:?}", r.errors);

    // The old leader comes back as a follower, with everything written while it was away.
    c.sk(&["node", "start", &old]).ok();
    following(&c, &old, &new);
    let nets = c.docker_via(&old, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        nets.stdout.lines().any(|n| n == "after-kill"),
        "{}",
        nets.stdout
    );
}

#[test]
fn without_a_quorum_writes_are_refused_reads_and_the_mesh_go_on() {
    require_root!();
    let c = up("mgr-quorum");
    web(&c);
    c.docker_via("node1", &["network", "create", "-d", "overlay", "kept"])
        .ok();
    let l = load(&c);
    c.sk(&["node", "kill", "node2"]).ok();
    c.sk(&["node", "kill", "node3"]).ok();

    let refused = c.docker_via("node1", &["network", "create", "-d", "overlay", "refused"]);
    assert!(!refused.success(), "a write without a quorum was taken");
    assert!(
        refused.stderr.contains(NO_LEADER),
        "docker's words: {}",
        refused.stderr
    );
    let services = c.docker_via("node1", &["service", "ls", "--format", "{{.Name}}"]);
    assert!(services.success(), "reads go on: {}", services.stderr);
    assert_eq!(services.stdout.trim(), "web");

    let returned = Instant::now();
    for node in ["node2", "node3"] {
        c.sk(&["node", "start", node]).ok();
    }
    let took = first_write(&c, returned, "node1", "resumed", Duration::from_secs(30));
    let r = l.stop();
    figure(
        "quorum_loss",
        &[
            (
                "first_write_after_return_s",
                format!("{:.2}", took.as_secs_f64()),
            ),
            ("requests", (r.ok + r.failed).to_string()),
            ("failed", r.failed.to_string()),
        ],
    );
    assert_eq!(r.failed, 0, "the mesh served throughout: {:?}", r.errors);
    let nets = c
        .docker_via("node2", &["network", "ls", "--format", "{{.Name}}"])
        .ok();
    let names: Vec<&str> = nets.stdout.lines().collect();
    assert!(
        names.contains(&"kept") && names.contains(&"resumed"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"refused"),
        "a refused write was applied: {names:?}"
    );
}

#[test]
fn a_leader_cut_off_steps_down_and_rejoins_as_a_follower() {
    require_root!();
    let c = up("mgr-isolate");
    let old = leader(&c, "node1").expect("a leader");
    let majority: Vec<String> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != old)
        .map(String::from)
        .collect();
    let cut = Instant::now();
    c.sk(&["node", "isolate", &old]).ok();

    let took = first_write(&c, cut, &majority[0], "majority", Duration::from_secs(20));
    let new = leader(&c, &majority[0]).expect("the majority elects a leader");
    assert_ne!(new, old);
    // The cut-off side takes no write: it cannot reach a quorum.
    let refused = c.docker_via(&old, &["network", "create", "-d", "overlay", "minority"]);
    assert!(!refused.success(), "the isolated manager took a write");
    assert!(refused.stderr.contains(NO_LEADER), "{}", refused.stderr);

    c.sk(&["node", "heal", &old]).ok();
    following(&c, &old, &new);
    figure(
        "leader_isolated",
        &[("first_write_after_s", format!("{:.2}", took.as_secs_f64()))],
    );
    for via in ["node1", "node2", "node3"] {
        let nets = c
            .docker_via(via, &["network", "ls", "--format", "{{.Name}}"])
            .ok();
        let names: Vec<&str> = nets.stdout.lines().collect();
        assert_eq!(
            names.iter().filter(|n| **n == "majority").count(),
            1,
            "{via}: {names:?}"
        );
        assert!(!names.contains(&"minority"), "{via}: {names:?}");
    }
}

/// Whether `node` shows `status` (Leader, Reachable, Unreachable, or "" for none) in `docker
/// node ls` on `via`.
fn shows(c: &Cluster, via: &str, node: &str, status: &str) -> bool {
    let listed = c.docker_via(via, &["node", "ls", "--format", "{{.Hostname}}"]);
    if !listed.success() || !listed.stdout.lines().any(|h| h == node) {
        return false;
    }
    let m = managers(c, via);
    match status {
        "" => !m.iter().any(|(h, _)| h == node),
        s => m.contains(&(node.to_string(), s.to_string())),
    }
}

#[test]
fn managers_are_promoted_and_demoted_through_the_docker_cli() {
    require_root!();
    let c = up("mgr-roles");
    let state = format!("/var/lib/swarmkit/{}/managers", c.name);

    // docker node promote answers at once, as docker's does; the new manager catches up and
    // votes: with node1 gone, node2, node3 and node4 are the quorum.
    let promoted = c.docker_via("node1", &["node", "promote", "node4"]).ok();
    assert_eq!(
        promoted.stdout.trim(),
        "Node node4 promoted to a manager in the swarm."
    );
    c.eventually("node4 a reachable manager", Duration::from_secs(30), || {
        shows(&c, "node1", "node4", "Reachable")
    });
    let info = c
        .docker_via("node4", &["info", "--format", "{{.Swarm.Managers}}"])
        .ok();
    assert_eq!(info.stdout.trim(), "4", "docker info on the new manager");
    // The new manager serves the API with the cluster's state.
    let nets = c.docker_via("node4", &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        nets.stdout.lines().any(|n| n == "ingress"),
        "{}",
        nets.stdout
    );

    let leader_before = leader(&c, "node1").expect("a leader");
    c.sk(&["node", "kill", &leader_before]).ok();
    let via = if leader_before == "node4" {
        "node2"
    } else {
        "node4"
    };
    first_write(
        &c,
        Instant::now(),
        via,
        "with-node4",
        Duration::from_secs(20),
    );
    c.eventually(
        "the dead leader unreachable",
        Duration::from_secs(10),
        || shows(&c, via, &leader_before, "Unreachable"),
    );

    // A demotion that would leave no quorum of reachable managers is refused, whole.
    let survivors: Vec<&str> = ["node1", "node2", "node3", "node4"]
        .into_iter()
        .filter(|n| *n != leader_before)
        .collect();
    let first = c.docker_via(via, &["node", "demote", survivors[0]]).ok();
    assert!(first.stdout.contains("demoted"), "{}", first.stdout);
    c.eventually("the demoted manager gone", Duration::from_secs(20), || {
        shows(&c, via, survivors[0], "")
    });
    let refused = c.docker_via(via, &["node", "demote", survivors[1]]);
    assert!(!refused.success(), "a demotion without a quorum was taken");
    assert!(
        refused.stderr.contains("loss of quorum"),
        "exit {}: {}{}",
        refused.code,
        refused.stdout,
        refused.stderr
    );
    assert!(shows(&c, via, survivors[1], "Reachable") || shows(&c, via, survivors[1], "Leader"));

    // The killed leader returns and is demoted; its replica is deleted and its node serves on
    // as a worker.
    c.sk(&["node", "start", &leader_before]).ok();
    c.eventually("the old leader back", Duration::from_secs(30), || {
        shows(&c, via, &leader_before, "Reachable") || shows(&c, via, &leader_before, "Leader")
    });
    let demoted = c.sk(&["node", "demote", &leader_before]).ok();
    assert_eq!(
        demoted.stdout.trim(),
        format!("Manager {leader_before} demoted in the swarm.")
    );
    c.eventually(
        "the demoted manager's replica deleted",
        Duration::from_secs(10),
        || !std::path::Path::new(&format!("{state}/{leader_before}")).exists(),
    );
    for node in [survivors[0], &leader_before] {
        let role = c
            .docker_via(
                via,
                &["node", "inspect", node, "--format", "{{.Spec.Role}}"],
            )
            .ok();
        assert_eq!(role.stdout.trim(), "worker", "{node}");
    }

    // Down to one manager: it cannot be demoted.
    let left: Vec<String> = managers(&c, via).into_iter().map(|(h, _)| h).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    c.sk(&["node", "demote", &left[0]]).ok();
    let last = &left[1];
    let refused = c.docker_via(last, &["node", "demote", last]);
    assert!(!refused.success());
    assert!(
        refused.stderr.contains("demote the last manager"),
        "{}",
        refused.stderr
    );
    // The one manager left takes writes alone, and re-promoting a demoted node works.
    first_write(&c, Instant::now(), last, "alone", Duration::from_secs(20));
    c.sk(&["node", "promote", &leader_before]).ok();
    assert!(shows(&c, last, &leader_before, "Reachable"));
}

#[test]
fn a_lost_quorum_is_rebuilt_from_one_manager_with_force_new_cluster() {
    require_root!();
    let c = up("mgr-recover");
    c.docker_via("node1", &["network", "create", "-d", "overlay", "kept"])
        .ok();
    c.sk(&["node", "kill", "node2"]).ok();
    c.sk(&["node", "kill", "node3"]).ok();
    let refused = c.docker_via("node1", &["network", "create", "-d", "overlay", "refused"]);
    assert!(refused.stderr.contains(NO_LEADER), "{}", refused.stderr);

    let recovered = c
        .sk(&[
            "cluster",
            "recover",
            "--force-new-cluster",
            "--from",
            "node1",
        ])
        .ok();
    assert!(
        recovered.stdout.contains("recovered from node1"),
        "{}",
        recovered.stdout
    );
    // One manager, itself a quorum: it takes writes at once, and kept what it had.
    c.docker_via("node1", &["network", "create", "-d", "overlay", "after"])
        .ok();
    assert_eq!(
        managers(&c, "node1"),
        vec![("node1".to_string(), "Leader".to_string())]
    );

    // A dropped manager's node comes back a worker: its agent stops the stale manager and
    // deletes its replica; promoted again, it catches up with everything.
    c.sk(&["node", "start", "node2"]).ok();
    let replica = format!("/var/lib/swarmkit/{}/managers/node2", c.name);
    c.eventually(
        "node2's stale replica deleted",
        Duration::from_secs(20),
        || !std::path::Path::new(&replica).exists(),
    );
    c.sk(&["node", "promote", "node2"]).ok();
    let nets = c
        .docker_via("node2", &["network", "ls", "--format", "{{.Name}}"])
        .ok();
    let names: Vec<&str> = nets.stdout.lines().collect();
    for want in ["kept", "after"] {
        assert!(names.contains(&want), "{want} on node2: {names:?}");
    }
    assert!(!names.contains(&"refused"), "{names:?}");
}

/// One client's operation and how it ended: acknowledged, or unknown (refused or lost: it may
/// still have been applied).
#[derive(Clone, Debug)]
struct Op {
    service: String,
    kind: &'static str,
    acked: bool,
}

/// How a manager's own replica stands (`GET /swarmkit/v1/replica` on its socket).
fn replica_status(c: &Cluster, node: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", "--unix-socket"])
        .arg(format!(
            "/run/swarmkit/{}/managers/{node}/manager.sock",
            c.name
        ))
        .arg("http://swarmkit/swarmkit/v1/replica")
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The history test, on a whole cluster: three clients create, update and remove
/// services with unique names, each through its own manager's socket with the docker CLI,
/// while the leader's node is killed and restarted and a manager is cut off and healed
/// (bounded: three rounds, about 40 s). Afterwards every acknowledged create is there once
/// unless it was removed, every acknowledged remove is gone, every acknowledged update shows,
/// nothing appears that no one asked for, and the three managers' stores are the same bytes.
#[test]
fn service_writes_through_every_manager_keep_their_history_through_kills_and_isolation() {
    require_root!();
    let c = up("mgr-history");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (history, faults) = std::thread::scope(|s| {
        let clients: Vec<_> = ["node1", "node2", "node3"]
            .into_iter()
            .enumerate()
            .map(|(k, via)| {
                let (c, stop) = (&c, &stop);
                s.spawn(move || {
                    let mut ops = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let name = format!("h{k}-{i}");
                        let create = c.docker_via(
                            via,
                            &[
                                "service",
                                "create",
                                "-d",
                                "-q",
                                "--replicas",
                                "0",
                                "--name",
                                &name,
                                "whoami",
                            ],
                        );
                        ops.push(Op {
                            service: name.clone(),
                            kind: "create",
                            acked: create.success(),
                        });
                        if !create.success() {
                            continue;
                        }
                        if i % 2 == 0 {
                            let update = c.docker_via(
                                via,
                                &["service", "update", "-d", "--label-add", "upd=1", &name],
                            );
                            ops.push(Op {
                                service: name.clone(),
                                kind: "update",
                                acked: update.success(),
                            });
                        }
                        if i % 3 == 0 {
                            let rm = c.docker_via(via, &["service", "rm", &name]);
                            ops.push(Op {
                                service: name.clone(),
                                kind: "rm",
                                acked: rm.success(),
                            });
                        }
                    }
                    ops
                })
            })
            .collect();
        // The nemesis: how long each fault lasts is the schedule, not a wait for anything.
        let mut faults = Vec::new();
        for round in 0..3 {
            let live = ["node1", "node2", "node3"]
                .into_iter()
                .find(|n| leader(&c, n).is_some())
                .unwrap_or("node1");
            let victim = leader(&c, live).unwrap_or_else(|| "node1".into());
            c.sk(&["node", "kill", &victim]).ok();
            std::thread::sleep(Duration::from_secs(4));
            c.sk(&["node", "start", &victim]).ok();
            faults.push(format!("kill {victim}"));
            let cut = ["node1", "node2", "node3"][round % 3];
            c.sk(&["node", "isolate", cut]).ok();
            std::thread::sleep(Duration::from_secs(4));
            c.sk(&["node", "heal", cut]).ok();
            faults.push(format!("isolate {cut}"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let history: Vec<Op> = clients
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect();
        (history, faults)
    });

    // Every manager back, one leader, and the three stores the same bytes.
    c.eventually("the managers to agree", Duration::from_secs(60), || {
        let st: Vec<_> = ["node1", "node2", "node3"]
            .into_iter()
            .filter_map(|n| replica_status(&c, n))
            .collect();
        st.len() == 3
            && st.iter().filter(|s| s["leader"] == true).count() == 1
            && st
                .iter()
                .all(|s| s["digest"] == st[0]["digest"] && s["applied"] == st[0]["applied"])
    });

    let listed = c
        .docker_via(
            "node1",
            &["service", "ls", "--format", "{{.Name}} {{.Replicas}}"],
        )
        .ok();
    let present: std::collections::BTreeSet<String> = listed
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let attempted: std::collections::BTreeSet<&str> =
        history.iter().map(|o| o.service.as_str()).collect();
    for name in &present {
        assert!(
            attempted.contains(name.as_str()),
            "{name} appeared without being asked for"
        );
    }
    let acked = |name: &str, kind: &str| {
        history
            .iter()
            .any(|o| o.service == name && o.kind == kind && o.acked)
    };
    let tried =
        |name: &str, kind: &str| history.iter().any(|o| o.service == name && o.kind == kind);
    let mut checked = 0;
    for name in &attempted {
        if acked(name, "rm") {
            assert!(
                !present.contains(*name),
                "{name}: removed (acknowledged) but present"
            );
        } else if acked(name, "create") && !tried(name, "rm") {
            assert!(
                present.contains(*name),
                "{name}: created (acknowledged) but missing"
            );
            if acked(name, "update") {
                let label = c
                    .docker_via(
                        "node2",
                        &[
                            "service",
                            "inspect",
                            name,
                            "--format",
                            "{{index .Spec.Labels \"upd\"}}",
                        ],
                    )
                    .ok();
                assert_eq!(
                    label.stdout.trim(),
                    "1",
                    "{name}: the acknowledged update is lost"
                );
            }
        }
        checked += 1;
    }
    let acked_ops = history.iter().filter(|o| o.acked).count();
    figure(
        "history",
        &[
            ("operations", history.len().to_string()),
            ("acknowledged", acked_ops.to_string()),
            ("services_checked", checked.to_string()),
            ("faults", faults.join(",").replace(' ', ":")),
        ],
    );
    assert!(
        acked_ops > 100,
        "too little was acknowledged to tell anything: {acked_ops}"
    );
}

/// A followed log asked of a follower streams the leader's copy of the task's output (agents
/// push it to the leader): lines printed after the follow began arrive while it runs.
#[test]
fn a_followed_log_through_a_follower_streams_as_the_task_writes() {
    require_root!();
    let c = up("mgr-logs");
    let lead = leader(&c, "node1").expect("a leader");
    let follower = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| *n != lead)
        .unwrap();
    c.service_create(&[
        "--name",
        "ticker",
        "--constraint",
        "node.hostname==node4",
        "whoami",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
    ])
    .ok();
    let mut follow = std::process::Command::new("timeout")
        .args([
            "--kill-after=5",
            "30",
            "docker",
            "service",
            "logs",
            "-f",
            "--raw",
            "ticker",
        ])
        .env(
            "DOCKER_HOST",
            format!(
                "unix:///run/swarmkit/{}/managers/{follower}/manager.sock",
                c.name
            ),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the docker CLI is installed (scripts/setup)");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(n) = line
                .trim()
                .strip_prefix("tick ")
                .and_then(|n| n.parse::<u64>().ok())
                && tx.send(n).is_err()
            {
                return;
            }
        }
    });
    // The first line may be one written before the follow began; a later, higher one shows
    // the answer streaming.
    let deadline = Instant::now() + Duration::from_secs(25);
    let next = |deadline: Instant| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a tick line through the follower within the deadline")
    };
    let first = next(deadline);
    let mut last = first;
    while last < first + 5 {
        last = next(deadline);
    }
    assert!(
        follow.try_wait().unwrap().is_none(),
        "the followed log ended instead of streaming"
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `cluster env` points docker at the cluster's one socket, which takes each connection to
/// the manager leading with a quorum: the same DOCKER_HOST takes writes again soon after its
/// leader is cut off, and after the next leader's node is killed, with no one changing it.
#[test]
fn cluster_env_follows_the_leader_through_a_cut_and_a_kill() {
    require_root!();
    let c = up("mgr-env");
    let env = c.sk(&["cluster", "env", &c.name]).ok().stdout;
    let host = env
        .trim()
        .strip_prefix("export DOCKER_HOST=")
        .expect("an export line")
        .to_string();
    assert_eq!(host, format!("unix:///run/swarmkit/{}/docker.sock", c.name));
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .args(["--kill-after=5", "30", "docker"])
            .args(args)
            .env("DOCKER_HOST", &host)
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        // A create whose answer was lost in the failover may have landed: its retry meets
        // the name taken.
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists")
    };
    assert!(docker(&["network", "create", "-d", "overlay", "before"]));
    let first = leader(&c, "node1").expect("a leader");
    c.sk(&["node", "isolate", &first]).ok();
    let cut = Instant::now();
    c.eventually(
        "a write through DOCKER_HOST after the cut",
        Duration::from_secs(20),
        || docker(&["network", "create", "-d", "overlay", "after-cut"]),
    );
    eprintln!(
        "leader cut off -> write through DOCKER_HOST: {:.2}s",
        cut.elapsed().as_secs_f64()
    );
    let second = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != first)
        .find_map(|via| leader(&c, via))
        .expect("a new leader");
    assert_ne!(second, first);
    c.sk(&["node", "heal", &first]).ok();
    c.sk(&["node", "kill", &second]).ok();
    let killed = Instant::now();
    c.eventually(
        "a write through DOCKER_HOST after the kill",
        Duration::from_secs(20),
        || docker(&["network", "create", "-d", "overlay", "after-kill"]),
    );
    eprintln!(
        "leader killed -> write through DOCKER_HOST: {:.2}s",
        killed.elapsed().as_secs_f64()
    );
}

/// A root CA rotation on a cluster of three managers: it completes (every node, the managers'
/// own nodes among them, renewed under the new root), and the managers still elect and
/// replicate with each other over mutual TLS afterwards: the leader's node killed, another
/// leads, takes a write, and every agent still takes orders.
#[test]
fn a_ca_rotation_reaches_every_manager_and_failover_still_works() {
    require_root!();
    let c = up("mgr-ca");
    let before = c.sk(&["cluster", "ca"]).ok().stdout;
    let rotated = c.sk(&["cluster", "ca", "--rotate", "-q"]).ok().stdout;
    assert!(
        rotated.starts_with("-----BEGIN CERTIFICATE-----"),
        "{rotated}"
    );
    assert_ne!(rotated, before);
    for via in ["node1", "node2", "node3"] {
        let root = c.docker_via(via, &["swarm", "ca"]).stdout;
        assert_eq!(root, rotated, "{via} shows another root");
    }
    let old = leader(&c, "node2").expect("a leader");
    let via = if old == "node2" { "node3" } else { "node2" };
    c.sk(&["node", "kill", &old]).ok();
    first_write(
        &c,
        Instant::now(),
        via,
        "after-rotation",
        Duration::from_secs(20),
    );
    let new = leader(&c, via).expect("a new leader");
    assert_ne!(new, old);
    // Every live agent takes orders from the new leader under the new root.
    for node in ["node1", "node2", "node3", "node4", "node5"]
        .into_iter()
        .filter(|n| *n != old)
    {
        c.service_create(&[
            "--name",
            &format!("on-{node}"),
            "--constraint",
            &format!("node.hostname=={node}"),
            "whoami",
        ])
        .ok();
    }
    c.sk(&["node", "start", &old]).ok();
    following(&c, &old, &new);
}
