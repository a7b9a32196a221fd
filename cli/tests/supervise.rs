//! The manager is supervised, and `cluster up` on an existing cluster resumes it without
//! touching its state.

mod common;

use std::time::Duration;

use common::{Cluster, sigkill, swarmkit};

/// What the API lists: must be identical before and after a restart.
fn listings(c: &Cluster) -> (String, String) {
    (
        c.sk(&["network", "ls", "--format", "json"]).ok().stdout,
        c.sk(&["service", "ls", "--format", "json"]).ok().stdout,
    )
}

#[test]
fn a_dead_manager_is_restarted_and_keeps_its_state() {
    require_root!();
    let c = Cluster::up("supmgr", 2);
    c.sk(&["network", "create", "--driver", "overlay", "backnet"])
        .ok();
    c.service_create(&[
        "--name",
        "sleeper",
        "--network",
        "backnet",
        "whoami",
        "sleep",
        "300",
    ])
    .ok();
    let before = listings(&c);
    let old = common::pid_of(&c, "manager");
    sigkill(old);
    c.eventually("a new manager", Duration::from_secs(10), || {
        let new = common::pid_of(&c, "manager");
        new != old && common::alive(new) && c.sk(&["node", "ls"]).code == 0
    });
    assert_eq!(listings(&c), before);
}

#[test]
fn cluster_up_resumes_a_stopped_cluster_without_losing_state() {
    require_root!();
    let c = Cluster::up("supresume", 2);
    c.sk(&["network", "create", "--driver", "overlay", "backnet"])
        .ok();
    let before = listings(&c);
    // Everything that restarts things, then the manager and an agent.
    for daemon in ["supervisor", "manager", "node2"] {
        let pid = common::pid_of(&c, daemon);
        sigkill(pid);
        c.eventually("the process to die", Duration::from_secs(5), || {
            !common::alive(pid)
        });
    }
    assert_ne!(c.sk(&["node", "ls"]).code, 0, "the manager still answers");
    let r = swarmkit(&["cluster", "up", "--name", &c.name]).ok();
    assert!(r.stdout.contains("up"), "{}", r.stdout);
    for daemon in ["supervisor", "manager", "node2"] {
        assert!(
            common::alive(common::pid_of(&c, daemon)),
            "{daemon} was not restarted"
        );
    }
    assert_eq!(listings(&c), before);
    let ls = c.sk(&["node", "ls"]).ok().stdout;
    assert_eq!(ls.matches("Ready").count(), 2, "{ls}");
    // On a cluster that runs, `up` changes nothing and says so.
    let r = swarmkit(&["cluster", "up", "--name", &c.name]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already up"), "{}", r.stderr);
}

#[test]
fn a_killed_node_stays_down_until_started() {
    require_root!();
    let c = Cluster::up("supkill", 2);
    c.sk(&["node", "kill", "node2"]).ok();
    let dead = common::pid_of(&c, "node2");
    // Five supervisor rounds: a restart would have happened by then.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            common::pid_of(&c, "node2"),
            dead,
            "the supervisor restarted a killed node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!common::alive(dead));
    c.sk(&["node", "start", "node2"]).ok();
    assert!(common::alive(common::pid_of(&c, "node2")));
}

#[test]
fn prune_removes_a_crashed_cluster_completely_and_leaves_running_ones() {
    require_root!();
    let live = Cluster::up("prunelive", 1);
    let dead = Cluster::up("prunedead", 2);
    dead.service_create(&["--name", "sleeper", "whoami", "sleep", "300"])
        .ok();
    // A crash of everything: supervisor, manager, agents and tasks at once.
    let procs = common::owned_processes(&dead.name);
    assert!(procs.len() >= 4, "{procs:?}");
    for p in &procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    dead.eventually("every process to die", Duration::from_secs(5), || {
        common::owned_processes(&dead.name).is_empty()
    });
    assert!(!common::namespaces(&dead.ns_prefix()).is_empty());

    // Only this test's clusters: others may be running tests on this host.
    let prefix = common::unique_name("prune");
    let r = swarmkit(&["cluster", "prune", "--prefix", &prefix]).ok();
    assert!(
        r.stdout.contains(&format!("removed {}", dead.name)),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("left {} (running)", live.name)),
        "{}",
        r.stdout
    );
    assert!(common::namespaces(&dead.ns_prefix()).is_empty());
    assert!(common::owned_processes(&dead.name).is_empty());
    assert!(!std::path::Path::new(&format!("/run/swarmkit/{}", dead.name)).exists());
    assert!(!std::path::Path::new(&format!("/var/lib/swarmkit/{}", dead.name)).exists());
    live.sk(&["node", "ls"]).ok();
    let r = swarmkit(&["cluster", "prune", "--prefix", &prefix]).ok();
    assert!(r.stdout.contains("nothing to prune"), "{}", r.stdout);
}

/// An upgrade replaces the binary under a running cluster: the supervisor still restarts
/// what dies, and an agent still starts built-in images, from the binary they run.
#[test]
fn daemons_and_tasks_still_start_after_their_binary_is_replaced() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("sk-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("swarmkit");
    let install = || {
        // A new file, as a package upgrade or a rebuild writes it: the old one is unlinked.
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(testkit::bin().unwrap(), &copy).unwrap();
    };
    install();
    let c = Cluster::guard(&common::unique_name("supupgrade"));
    let up = std::process::Command::new("timeout")
        .args([
            "60",
            copy.to_str().unwrap(),
            "cluster",
            "up",
            "--name",
            &c.name,
        ])
        .args(["--nodes", "1"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    install();
    for daemon in ["manager", "node1"] {
        let old = common::pid_of(&c, daemon);
        sigkill(old);
        c.eventually(
            &format!("{daemon} restarted"),
            Duration::from_secs(15),
            || {
                let new = common::pid_of(&c, daemon);
                new != old && common::alive(new)
            },
        );
    }
    c.service_create(&["--name", "web", "whoami"]).ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.api_tasks("web")[0]["Status"]["State"], "running");
}

/// The parent of `pid` and its command line.
fn parent_of(pid: i64) -> (i32, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    (ppid, String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

fn task_pid(c: &Cluster, service: &str) -> i64 {
    c.api_tasks(service)[0]["Status"]["ContainerStatus"]["PID"]
        .as_i64()
        .unwrap()
}

/// Tasks are started by their node's spawner (named after the cluster), which ends with its
/// agent; the restarted agent keeps the running task and starts new ones through a spawner
/// of its own.
#[test]
fn tasks_are_started_by_a_spawner_that_ends_with_its_agent() {
    require_root!();
    let c = Cluster::up("spawner", 1);
    c.service_create(&["--name", "first", "whoami"]).ok();
    let first = task_pid(&c, "first");
    let (spawner, cmdline) = parent_of(first);
    assert!(
        cmdline.contains(&format!("--cluster {} __spawner", c.name)),
        "{cmdline}"
    );
    let agent = common::pid_of(&c, "node1");
    sigkill(agent);
    c.eventually("the spawner to end", Duration::from_secs(5), || {
        !common::alive(spawner)
    });
    c.eventually("node1 restarted", Duration::from_secs(15), || {
        let new = common::pid_of(&c, "node1");
        new != agent && common::alive(new)
    });
    c.service_create(&["--name", "second", "whoami"]).ok();
    let (again, cmdline) = parent_of(task_pid(&c, "second"));
    assert!(cmdline.contains("__spawner"), "{cmdline}");
    assert_ne!(again, spawner);
    assert_eq!(task_pid(&c, "first"), first, "the first task was restarted");
    assert!(common::alive(first as i32));
}

/// A spawner that dies is replaced at the next start, and the exits of what the new one
/// starts still carry their codes.
#[test]
fn a_dead_spawner_is_replaced_and_exit_codes_still_arrive() {
    require_root!();
    let c = Cluster::up("respawn", 1);
    c.service_create(&["--name", "first", "whoami"]).ok();
    let (spawner, _) = parent_of(task_pid(&c, "first"));
    sigkill(spawner);
    c.eventually("the spawner to end", Duration::from_secs(5), || {
        !common::alive(spawner)
    });
    c.service_create(&[
        "--detach",
        "--name",
        "three",
        "--restart-condition",
        "none",
        "whoami",
        "sh",
        "-c",
        "exit 3",
    ])
    .ok();
    c.eventually(
        "three to fail with its code",
        Duration::from_secs(10),
        || {
            c.api_tasks("three")
                .first()
                .is_some_and(|t| t["Status"]["ContainerStatus"]["ExitCode"] == 3)
        },
    );
    assert!(
        common::alive(task_pid(&c, "first") as i32),
        "a task outlives its spawner"
    );
}
