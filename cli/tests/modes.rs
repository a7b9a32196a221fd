//! Service modes with the stock docker CLI (issue 26, item 2): a global service follows its
//! nodes through `node kill` / `node start`, drain / activate and label changes; a replicated
//! job runs its completions one at a time and is not restarted; a global job runs once per
//! node; an update runs a job again; a compose stack deploys both kinds; and what a mode has
//! no use for is refused with nothing changed.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::Cluster;

/// Long enough for a task to start on a loaded host, short enough to fail a stuck test soon.
const CONVERGE: Duration = Duration::from_secs(60);

/// A cluster whose nodes are declared down within about a second of missing heartbeats.
fn cluster(tag: &str) -> Cluster {
    Cluster::up_with(
        tag,
        3,
        &["--heartbeat-period", "200ms", "--heartbeat-misses", "3"],
    )
}

/// Hostnames of the nodes running a task of `service` meant to run, one per task.
fn running_on(c: &Cluster, service: &str) -> Vec<String> {
    let ps = c.docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}|{{.CurrentState}}",
    ]);
    let mut nodes: Vec<String> = ps
        .stdout
        .lines()
        .filter_map(|l| l.split_once('|'))
        .filter(|(_, state)| state.starts_with("Running"))
        .map(|(node, _)| node.to_string())
        .collect();
    nodes.sort();
    nodes
}

fn wait_running_on(c: &Cluster, service: &str, nodes: &[&str]) {
    c.eventually(
        &format!("{service} running once on each of {nodes:?}"),
        CONVERGE,
        || running_on(c, service) == nodes,
    );
}

/// `docker service ls`'s MODE and REPLICAS columns for `service`.
fn mode_and_replicas(c: &Cluster, service: &str) -> String {
    c.docker(&[
        "service",
        "ls",
        "--filter",
        &format!("name={service}"),
        "--format",
        "{{.Mode}} {{.Replicas}}",
    ])
    .ok()
    .stdout
    .trim()
    .to_string()
}

/// The states of a service's tasks (every one, history included), from `docker service ps`.
fn task_states(c: &Cluster, service: &str) -> Vec<(String, String, String)> {
    c.docker(&[
        "service",
        "ps",
        service,
        "--format",
        "{{.Node}}|{{.DesiredState}}|{{.CurrentState}}",
    ])
    .ok()
    .stdout
    .lines()
    .filter_map(|l| {
        let mut parts = l.splitn(3, '|');
        let node = parts.next()?.to_string();
        let desired = parts.next()?.to_string();
        let current = parts.next()?.split_whitespace().next()?.to_string();
        Some((node, desired, current))
    })
    .collect()
}

/// Something that reconciles every service (a node label no constraint reads), so that a
/// job that would be restarted is restarted before the test looks again.
fn reconcile_everything(c: &Cluster) {
    c.docker(&["node", "update", "--label-add", "poke=1", "node1"])
        .ok();
    c.eventually("every agent in sync", CONVERGE, || c.all_in_sync());
}

/// A request to the manager's API: (HTTP status, body).
fn api_send(c: &Cluster, method: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let out = Command::new("curl")
        .args(["-s", "-g", "--max-time", "10", "--unix-socket", &socket])
        .args(["-X", method, "-H", "Content-Type: application/json"])
        .args(["-d", &body.to_string(), "-w", "\n%{http_code}"])
        .arg(format!("http://swarmkit{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_global_service_follows_node_loss_drain_and_labels() {
    require_root!();
    let c = cluster("modes-global");
    c.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "g",
        "--mode",
        "global",
        "--stop-grace-period",
        "1s",
        "whoami",
    ])
    .ok();
    wait_running_on(&c, "g", &["node1", "node2", "node3"]);
    c.eventually("REPLICAS 3/3", CONVERGE, || {
        mode_and_replicas(&c, "g") == "global 3/3"
    });
    let scale = c.docker(&["service", "scale", "g=2"]);
    assert_ne!(scale.code, 0, "a global service has no replicas to scale");
    assert!(
        scale
            .stderr
            .contains("scale can only be used with replicated or replicated-job mode"),
        "{}",
        scale.stderr
    );

    c.sk(&["node", "kill", "node3"]).ok();
    wait_running_on(&c, "g", &["node1", "node2"]);
    c.sk(&["node", "start", "node3"]).ok();
    wait_running_on(&c, "g", &["node1", "node2", "node3"]);

    c.docker(&["node", "update", "--availability", "drain", "node2"])
        .ok();
    wait_running_on(&c, "g", &["node1", "node3"]);
    c.docker(&["node", "update", "--availability", "active", "node2"])
        .ok();
    wait_running_on(&c, "g", &["node1", "node2", "node3"]);

    c.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "east",
        "--mode",
        "global",
        "--constraint",
        "node.labels.zone==east",
        "whoami",
    ])
    .ok();
    c.docker(&["node", "update", "--label-add", "zone=east", "node2"])
        .ok();
    wait_running_on(&c, "east", &["node2"]);
    c.docker(&["node", "update", "--label-add", "zone=east", "node3"])
        .ok();
    wait_running_on(&c, "east", &["node2", "node3"]);
    c.docker(&["node", "update", "--label-rm", "zone", "node2"])
        .ok();
    wait_running_on(&c, "east", &["node3"]);
    // Through all of it, the other global service never ran twice on a node.
    assert_eq!(running_on(&c, "g"), ["node1", "node2", "node3"]);
}

#[test]
fn a_replicated_job_runs_its_completions_one_at_a_time_and_is_not_restarted() {
    require_root!();
    let c = cluster("modes-job");
    // Each task notes its start and end in a file every node sees: with one at a time the
    // lines alternate.
    let log = std::env::temp_dir().join(format!("{}-job.log", c.name));
    let _ = std::fs::remove_file(&log);
    let script = format!(
        "echo start >> {0}; sleep 0.3; echo end >> {0}",
        log.display()
    );
    // Not detached: docker's job progress returns once the job completed.
    let create = c
        .docker(&[
            "service",
            "create",
            "--name",
            "j",
            "--mode",
            "replicated-job",
            "--replicas",
            "3",
            "--max-concurrent",
            "1",
            "whoami",
            "sh",
            "-c",
            &script,
        ])
        .ok();
    assert!(create.text().contains("job complete"), "{}", create.text());
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["start", "end", "start", "end", "start", "end"],
        "at most one task at a time, three in all"
    );
    assert_eq!(
        mode_and_replicas(&c, "j"),
        "replicated job 0/1 (3/3 completed)"
    );
    let states = task_states(&c, "j");
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(
        states
            .iter()
            .all(|(_, desired, current)| desired == "Complete" && current == "Complete"),
        "{states:?}"
    );

    reconcile_everything(&c);
    assert_eq!(
        task_states(&c, "j").len(),
        3,
        "a completed job is not restarted"
    );
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count(),
        6
    );

    // An update runs it again, as Swarm's does (a new JobIteration).
    c.docker(&["service", "update", "--force", "j"]).ok();
    c.eventually("the job's second run", CONVERGE, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            == 12
            && mode_and_replicas(&c, "j") == "replicated job 0/1 (3/3 completed)"
    });
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_global_job_runs_once_per_node_and_stacks_deploy_every_mode() {
    require_root!();
    let c = cluster("modes-gjob");
    let create = c
        .docker(&[
            "service",
            "create",
            "--name",
            "gj",
            "--mode",
            "global-job",
            "whoami",
            "true",
        ])
        .ok();
    assert!(create.text().contains("job complete"), "{}", create.text());
    let states = task_states(&c, "gj");
    let nodes: BTreeSet<&str> = states.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(nodes, BTreeSet::from(["node1", "node2", "node3"]));
    assert!(states.iter().all(|(_, _, current)| current == "Complete"));
    assert_eq!(
        mode_and_replicas(&c, "gj"),
        "global job 0/0 (3/3 completed)"
    );
    reconcile_everything(&c);
    assert_eq!(task_states(&c, "gj").len(), 3, "once per node");

    let dir = std::env::temp_dir().join(format!("{}-compose", c.name));
    std::fs::create_dir_all(&dir).unwrap();
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        "services:\n  agent:\n    image: whoami\n    deploy:\n      mode: global\n  migrate:\n    image: whoami\n    command: [\"true\"]\n    deploy:\n      mode: replicated-job\n      replicas: 2\n",
    )
    .unwrap();
    c.docker(&[
        "stack",
        "deploy",
        "-d",
        "-c",
        &compose.to_string_lossy(),
        "st",
    ])
    .ok();
    let _ = std::fs::remove_dir_all(&dir);
    wait_running_on(&c, "st_agent", &["node1", "node2", "node3"]);
    c.eventually("the stack's job completed", CONVERGE, || {
        mode_and_replicas(&c, "st_migrate").ends_with("(2/2 completed)")
    });
    assert!(mode_and_replicas(&c, "st_agent").starts_with("global "));
    assert!(mode_and_replicas(&c, "st_migrate").starts_with("replicated job "));
}

#[test]
fn what_a_mode_has_no_use_for_is_refused_and_nothing_changes() {
    require_root!();
    let c = Cluster::up("modes-refuse", 1);
    for (args, says) in [
        (
            vec!["--mode", "global", "--replicas", "2"],
            "replicas can only be used with replicated or replicated-job mode",
        ),
        (
            vec!["--max-concurrent", "2"],
            "max-concurrent can only be used with replicated-job mode",
        ),
    ] {
        for r in [
            c.docker(
                &[
                    &["service", "create", "--name", "x"],
                    &args[..],
                    &["whoami"],
                ]
                .concat(),
            ),
            c.service_create(&[&["--name", "x"], &args[..], &["whoami"]].concat()),
        ] {
            assert_ne!(r.code, 0, "{args:?}");
            assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        }
    }

    let spec = |mode: serde_json::Value| {
        serde_json::json!({
            "Name": "x",
            "TaskTemplate": { "ContainerSpec": { "Image": "whoami" } },
            "Mode": mode,
        })
    };
    for (mode, says) in [
        (
            serde_json::json!({ "Global": {}, "Replicated": { "Replicas": 2 } }),
            "one mode",
        ),
        (
            serde_json::json!({ "ReplicatedJob": { "MaxConcurrent": 0 } }),
            "--max-concurrent 1 or more",
        ),
        (
            serde_json::json!({ "ReplicatedJob": { "TotalCompletions": -1 } }),
            "--replicas 0 or more",
        ),
    ] {
        let (code, body) = api_send(&c, "POST", "/services/create", &spec(mode.clone()));
        assert_eq!(code, 400, "{mode}: {body}");
        assert!(body.contains(says), "{mode}: {body}");
    }
    assert_eq!(c.docker(&["service", "ls", "-q"]).ok().stdout, "");

    // Changing a service's mode is refused, as docker's daemon refuses it.
    c.docker(&["service", "create", "-d", "--name", "x", "whoami"])
        .ok();
    let svc = c.api("/services/x");
    let version = svc["Version"]["Index"].as_u64().unwrap();
    let mut changed = svc["Spec"].clone();
    changed["Mode"] = serde_json::json!({ "Global": {} });
    let (code, body) = api_send(
        &c,
        "POST",
        &format!("/services/x/update?version={version}"),
        &changed,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("mode cannot change"), "{body}");
    let after = c.api("/services/x");
    assert_eq!(after["Version"]["Index"].as_u64(), Some(version));
    assert_eq!(after["Spec"]["Mode"]["Replicated"]["Replicas"], 1);
}
