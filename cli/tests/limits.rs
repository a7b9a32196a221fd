//! Resource limits and reservations, `--init`, capabilities and `--group`, given with the
//! stock docker CLI and seen from the kernel's side: the task's own cgroup and its files, the
//! OOM killer at the memory limit, the scheduler leaving a task pending, the init's children,
//! and the task's /proc status.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Cluster;

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `test` on a fresh cluster, then takes the cluster down and removes the cgroups its
/// tasks left (`cluster down` kills the tasks; their empty cgroups outlive them).
fn on_cluster(tag: &str, nodes: usize, test: impl FnOnce(&Cluster)) {
    let c = Cluster::up(tag, nodes);
    let name = c.name.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&c)));
    drop(c);
    cluster::agent::remove_cluster_cgroups(&name);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn docker_ok(c: &Cluster, args: &[&str]) -> String {
    let r = c.docker(args);
    assert_eq!(r.code, 0, "docker {args:?}: {}", r.stderr);
    r.stdout
}

/// A line of /proc/PID/status, after its "Field:".
fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directory of `pid`'s cgroup in `controller`'s hierarchy (v1), or in the unified one.
fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = table
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if unified() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            };
            wanted.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("{pid} in no {controller} cgroup: {table}"));
    let base = if unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        Path::new("/sys/fs/cgroup").join(controller)
    };
    base.join(path.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

fn task_id(c: &Cluster, service: &str) -> String {
    c.api_tasks(service)
        .iter()
        .find(|t| t["DesiredState"] == "running")
        .and_then(|t| t["ID"].as_str())
        .expect("a task meant to run")
        .to_string()
}

/// `docker service ps --no-trunc`'s state and error columns, one line per task (the error
/// unquoted).
fn ps(c: &Cluster, service: &str) -> Vec<String> {
    docker_ok(
        c,
        &[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
            service,
        ],
    )
    .lines()
    .map(|l| l.replace('"', ""))
    .collect()
}

#[test]
fn limits_are_set_in_the_tasks_own_cgroup_which_goes_with_the_task() {
    require_root!();
    on_cluster("lim", 1, |c| {
        docker_ok(
            c,
            &[
                "service",
                "create",
                "--name",
                "lim",
                "--limit-cpu",
                "0.5",
                "--limit-memory",
                "64m",
                "--limit-pids",
                "100",
                "--reserve-memory",
                "16m",
                "whoami",
            ],
        );
        let pid = c.task_pid("lim", 1);
        let id = task_id(c, "lim");
        let memory = cgroup_dir(pid, "memory");
        assert!(
            memory.ends_with(format!("swarmkit/{}/{id}", c.name)),
            "{}",
            memory.display()
        );
        let (cpu, pids) = (cgroup_dir(pid, "cpu"), cgroup_dir(pid, "pids"));
        assert_eq!(read(&pids, "pids.max"), "100");
        if unified() {
            assert_eq!(read(&memory, "memory.max"), (64u64 << 20).to_string());
            assert_eq!(read(&memory, "memory.low"), (16u64 << 20).to_string());
            assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
        } else {
            assert_eq!(
                read(&memory, "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(
                read(&memory, "memory.soft_limit_in_bytes"),
                (16u64 << 20).to_string()
            );
            assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
        }
        // The task still serves within them.
        let r = c.task("lim.1", "id -u");
        assert_eq!(r.stdout.trim(), "0", "{}", r.stderr);
        docker_ok(c, &["service", "rm", "lim"]);
        c.eventually("the task's cgroup to be removed", DEADLINE, || {
            !memory.exists() && !cpu.exists() && !pids.exists()
        });
    });
}

#[test]
fn a_memory_hog_is_killed_at_its_limit_and_restarted() {
    require_root!();
    on_cluster("oom", 1, |c| {
        docker_ok(
            c,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "hog",
                "--limit-memory",
                "32m",
                "--restart-delay",
                "100ms",
                "whoami",
                "tail",
                "/dev/zero",
            ],
        );
        let oom = "task: killed: out of memory at its --limit-memory 32MiB";
        c.eventually("the hog to be killed and restarted", DEADLINE, || {
            let lines = ps(c, "hog");
            lines.iter().filter(|l| l.ends_with(oom)).count() >= 2
        });
        let lines = ps(c, "hog");
        assert!(
            lines
                .iter()
                .filter(|l| l.starts_with("Failed"))
                .all(|l| l.ends_with(oom)),
            "every failure is the limit's: {lines:?}"
        );
    });
}

#[test]
fn a_reservation_no_node_has_leaves_its_task_pending_and_one_that_fits_is_placed() {
    require_root!();
    on_cluster("rsv", 2, |c| {
        let memory: u64 = docker_ok(
            c,
            &[
                "node",
                "inspect",
                "node1",
                "--format",
                "{{.Description.Resources.MemoryBytes}}",
            ],
        )
        .trim()
        .parse()
        .unwrap();
        let cpus: u64 = docker_ok(
            c,
            &[
                "node",
                "inspect",
                "node1",
                "--format",
                "{{.Description.Resources.NanoCPUs}}",
            ],
        )
        .trim()
        .parse()
        .unwrap();
        assert!(memory > 0 && cpus >= 1_000_000_000, "{memory} {cpus}");
        let too_much = format!("{}", memory + 1);
        docker_ok(
            c,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "big",
                "--reserve-memory",
                &too_much,
                "whoami",
            ],
        );
        c.eventually("the big task to wait, pending", DEADLINE, || {
            ps(c, "big").iter().any(|l| {
                l.starts_with("Pending ")
                    && l.ends_with("|no suitable node (insufficient resources on 2 nodes)")
            })
        });
        // A reservation that fits is placed; the big one still waits.
        docker_ok(
            c,
            &[
                "service",
                "create",
                "--name",
                "small",
                "--reserve-memory",
                "16m",
                "--reserve-cpu",
                "0.1",
                "whoami",
            ],
        );
        assert_eq!(c.running_tasks("small").len(), 1);
        let big = c.api_tasks("big");
        assert_eq!(big.len(), 1);
        assert_eq!(big[0]["Status"]["State"], "pending");
        assert_eq!(big[0]["NodeID"].as_str().unwrap_or_default(), "");
    });
}

/// The init's children, by pid: their command lines.
fn children(pid: i32) -> Vec<(i32, String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(|child: i32| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (
                child,
                cmdline.trim().to_string(),
                status_field(child, "State"),
            )
        })
        .collect()
}

#[test]
fn init_reaps_orphans_and_forwards_sigterm() {
    require_root!();
    on_cluster("init", 1, |c| {
        docker_ok(
            c,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "ini",
                "--init",
                "--restart-condition",
                "none",
                "whoami",
                "sh",
                "-c",
                "(sleep 3 &); exec sleep 1000",
            ],
        );
        let init = common::eventually("the task to run", DEADLINE, || {
            c.api_tasks("ini")
                .iter()
                .find(|t| t["Status"]["State"] == "running")
                .and_then(|t| t["Status"]["ContainerStatus"]["PID"].as_i64())
                .map(|p| p as i32)
        });
        let cmdline = std::fs::read(format!("/proc/{init}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("__init"),
            "the task's process is the init"
        );
        // The orphan of the subshell comes to the init, which reaps it when it exits.
        c.eventually("the orphan to become the init's", DEADLINE, || {
            children(init).iter().any(|(_, cmd, _)| cmd == "sleep 3")
        });
        c.eventually("the orphan to be reaped", DEADLINE, || {
            let kids = children(init);
            kids.len() == 1 && kids[0].1 == "sleep 1000"
        });
        assert!(
            children(init)
                .iter()
                .all(|(_, _, state)| !state.starts_with('Z')),
            "no zombie: {:?}",
            children(init)
        );
        // SIGTERM to the init alone reaches the command, whose status the init exits with.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.eventually("the task to end with sleep's status", DEADLINE, || {
            ps(c, "ini")
                .iter()
                .any(|l| l.starts_with("Failed") && l.ends_with("task: non-zero exit (143)"))
        });
    });
}

/// The capabilities in a /proc/PID/status field ("CapEff", "CapBnd"), as bits.
fn caps_of(pid: i32, field: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, field), 16).unwrap()
}

const NET_ADMIN: u64 = 1 << 12;
const NET_RAW: u64 = 1 << 13;
/// docker's default set (moby's oci/caps/defaults.go), as `docker run` shows it in CapEff.
const DOCKER_DEFAULT: u64 = 0x00000000a80425fb;

#[test]
fn capabilities_are_dockers_default_with_adds_and_drops_and_groups_are_added() {
    require_root!();
    on_cluster("caps", 1, |c| {
        // A default task has docker's set, still binds port 80 (whoami is ready once it
        // answers there), and exec into it is unaffected.
        docker_ok(c, &["service", "create", "--name", "plain", "whoami"]);
        let pid = c.task_pid("plain", 1);
        assert_eq!(caps_of(pid, "CapEff"), DOCKER_DEFAULT);
        assert_eq!(caps_of(pid, "CapBnd"), DOCKER_DEFAULT);
        let r = c.task("plain.1", "id -u");
        assert_eq!(r.stdout.trim(), "0", "{}", r.stderr);

        docker_ok(
            c,
            &[
                "service",
                "create",
                "--name",
                "tuned",
                "--cap-drop",
                "NET_RAW",
                "--cap-add",
                "NET_ADMIN",
                "--group",
                "daemon",
                "--group",
                "4242",
                "whoami",
                "sleep",
                "1000",
            ],
        );
        let pid = c.task_pid("tuned", 1);
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            let caps = caps_of(pid, field);
            assert_eq!(caps, (DOCKER_DEFAULT & !NET_RAW) | NET_ADMIN, "{field}");
        }
        assert_eq!(caps_of(pid, "CapInh"), 0);
        let groups: Vec<String> = status_field(pid, "Groups")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let daemon = nix::unistd::Group::from_name("daemon")
            .unwrap()
            .expect("the node has a daemon group")
            .gid
            .to_string();
        for g in ["0", daemon.as_str(), "4242"] {
            assert!(groups.iter().any(|x| x == g), "{g} in {groups:?}");
        }

        // As nobody: no capabilities left at all, the groups after the user's own.
        docker_ok(
            c,
            &[
                "service", "create", "--name", "nobody", "--user", "nobody", "--group", "4242",
                "whoami", "sleep", "1000",
            ],
        );
        let pid = c.task_pid("nobody", 1);
        assert_eq!(caps_of(pid, "CapEff"), 0);
        assert_eq!(status_field(pid, "Groups"), "4242 65534");

        // A name that is no capability is refused by name; nothing is created.
        let r = c.docker(&[
            "service",
            "create",
            "--detach",
            "--name",
            "bad",
            "--cap-add",
            "FLY",
            "whoami",
        ]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("--cap-add \"CAP_FLY\""), "{}", r.stderr);
        assert!(c.docker(&["service", "inspect", "bad"]).code != 0);
    });
}
