//! Healthchecks given with the stock docker CLI, seen through the routing mesh: a task serves
//! only once its check passes, and one whose check fails is failed ("unhealthy container"),
//! leaves the load balancer and is replaced, as in Swarm. Which task is sick is a file the
//! check looks for, named after the task's hostname.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;

/// The flag files, removed when the test ends however it ends.
struct Sick(PathBuf);

impl Sick {
    fn set(&self, sick: bool) {
        if sick {
            std::fs::write(&self.0, "").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for Sick {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The hostnames that answer 20 requests to the published port from node1.
fn served(c: &Cluster) -> BTreeSet<String> {
    let r = c.node(
        "node1",
        "for i in $(seq 20); do curl -s -m 2 http://127.0.0.1:8080/ | grep '^Hostname:'; done",
    );
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Hostname: "))
        .map(str::to_string)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_task_serves_once_healthy_and_is_replaced_when_unhealthy() {
    require_root!();
    let c = Cluster::up("health", 2);
    let prefix = format!("/tmp/sktest-{}-sick-", c.name);
    let sick = Sick(PathBuf::from(format!("{prefix}web-1")));
    sick.set(true);
    let check = format!("test ! -e {prefix}$(hostname)");
    let r = c.docker(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--hostname",
        "web-{{.Task.Slot}}",
        "--health-cmd",
        &check,
        "--health-interval",
        "200ms",
        "--health-timeout",
        "2s",
        "--health-retries",
        "2",
        "-p",
        "8080:80",
        "--detach",
        "whoami",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let spec = c.docker(&[
        "service",
        "inspect",
        "web",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck}}",
    ]);
    assert!(spec.stdout.contains("CMD-SHELL"), "{}", spec.stdout);

    // Slot 2 is healthy and serves; slot 1 never passes, is failed as unhealthy and stays out.
    c.eventually("web-2 running", Duration::from_secs(30), || {
        c.running_tasks("web").len() == 1
    });
    c.eventually("web-1 failed as unhealthy", Duration::from_secs(30), || {
        let ps = c.docker(&[
            "service",
            "ps",
            "web",
            "--no-trunc",
            "--format",
            "{{.Error}}",
        ]);
        ps.stdout.contains("unhealthy container")
    });
    assert_eq!(served(&c), set(&["web-2"]));

    // Healed: a replacement of slot 1 passes its check and joins the load balancer.
    sick.set(false);
    c.eventually("both serving", Duration::from_secs(30), || {
        served(&c) == set(&["web-1", "web-2"])
    });

    // Sick again: the running slot-1 task fails and leaves; only web-2 answers until healed.
    sick.set(true);
    c.eventually("web-1 out of the balancer", Duration::from_secs(30), || {
        served(&c) == set(&["web-2"])
    });
    // Both the never-healthy task and the one that turned sick are in the history, failed.
    let failed = c.docker(&["service", "ps", "web", "--format", "{{.CurrentState}}"]);
    assert!(
        failed
            .stdout
            .lines()
            .filter(|l| l.starts_with("Failed"))
            .count()
            >= 2,
        "{}",
        failed.stdout
    );
    sick.set(false);
    c.eventually("web-1 back", Duration::from_secs(30), || {
        served(&c) == set(&["web-1", "web-2"])
    });
}

/// A healthcheck runs inside the task as dockerd's exec does: in its cgroup, with its
/// capabilities. The check passes only there, so the task serves only if it does.
#[test]
fn a_healthcheck_runs_in_the_tasks_cgroup_with_its_capabilities() {
    require_root!();
    let c = Cluster::up("healthcg", 1);
    let r = c.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--limit-memory",
        "64m",
        "--cap-drop",
        "NET_RAW",
        "--health-cmd",
        // In the task's cgroup, and without NET_RAW (bit 13 of CapEff).
        "grep -q \"swarmkit/$SK_CLUSTER/\" /proc/self/cgroup && \
         [ $(( 0x$(awk '/^CapEff/ {print $2}' /proc/self/status) & 0x2000 )) -eq 0 ]",
        "--health-interval",
        "200ms",
        "--env",
        &format!("SK_CLUSTER={}", c.name),
        "whoami",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.eventually("web healthy and running", Duration::from_secs(30), || {
        c.running_tasks("web").len() == 1
    });
}
