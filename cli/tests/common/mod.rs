//! A cluster per test, built by the real binary and always torn down (Drop), plus helpers to
//! run swarmkit commands and real clients inside nodes and tasks.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips (passes with a note) when not root: clusters need namespaces and netlink.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root to build a cluster");
            return;
        }
    };
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the binary under test, killed after two minutes so a hang fails the test instead of
/// the whole run.
pub fn swarmkit(args: &[&str]) -> Run {
    Run::from(
        Command::new("timeout")
            .args(["--kill-after=5", "120", env!("CARGO_BIN_EXE_swarmkit")])
            .args(args)
            .env("CI", "true")
            .output()
            .expect("swarmkit runs"),
    )
}

pub struct Cluster {
    pub name: String,
}

impl Cluster {
    /// A fresh cluster named after the test (and this process, so parallel runs never meet).
    pub fn up(tag: &str, nodes: usize) -> Cluster {
        Cluster::up_with(tag, nodes, &[])
    }

    /// A fresh cluster with more `cluster up` flags (`--backend qemu`).
    pub fn up_with(tag: &str, nodes: usize, flags: &[&str]) -> Cluster {
        let name = format!("t{}-{tag}", std::process::id() % 100000);
        let c = Cluster { name };
        let nodes = nodes.to_string();
        let mut args = vec!["cluster", "up", "--name", &c.name, "--nodes", &nodes];
        args.extend_from_slice(flags);
        swarmkit(&args).ok();
        c
    }

    pub fn sk(&self, args: &[&str]) -> Run {
        let mut all = vec!["--cluster", self.name.as_str()];
        all.extend_from_slice(args);
        swarmkit(&all)
    }

    pub fn node(&self, node: &str, cmd: &str) -> Run {
        self.sk(&["node", "exec", node, "--", "sh", "-c", cmd])
    }

    pub fn task(&self, task: &str, cmd: &str) -> Run {
        self.sk(&["exec", task, "--", "sh", "-c", cmd])
    }

    pub fn ns_prefix(&self) -> String {
        format!("sk-{}.", self.name)
    }

    /// Polls `check` until it holds, failing the test with `what` after `timeout`.
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Task IDs, slots and node hostnames of a service, from `service ps --format json`.
    pub fn tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let out = self
            .sk(&["service", "ps", service, "--format", "json"])
            .ok();
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Cluster {
    /// The tasks of `service` as the manager's API returns them (Docker's Task shape).
    pub fn api_tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let socket = format!("/run/swarmkit/{}/manager.sock", self.name);
        let filter = format!("http://swarmkit/tasks?filters={{%22service%22:[%22{service}%22]}}");
        let out = Command::new("curl")
            .args(["-s", "-g", "--unix-socket", &socket, &filter])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("tasks JSON")
    }

    /// The process ID of the running task in `slot` of `service`, from the manager's API.
    pub fn task_pid(&self, service: &str, slot: u64) -> i32 {
        self.api_tasks(service)
            .iter()
            .find(|t| t["Slot"] == slot && t["DesiredState"] == "running")
            .and_then(|t| t["Status"]["ContainerStatus"]["PID"].as_i64())
            .expect("a running task with a PID") as i32
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let r = swarmkit(&["cluster", "down", &self.name]);
        if r.code != 0 {
            eprintln!("cluster down {}: {}", self.name, r.stderr);
        }
    }
}

/// Names of the network namespaces whose names start with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    netcore::netns::NetNs::list_with_prefix(prefix)
}

/// Live processes carrying the cluster's owner mark (what `cluster down` must stop).
pub fn owned_processes(cluster: &str) -> Vec<i32> {
    cluster::lifecycle::owned_processes(cluster)
}

/// The JSON `"name"` of each elasticsearch answer in `out`.
pub fn es_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("\"name\" : \"")
                .and_then(|r| r.strip_suffix("\","))
                .map(String::from)
        })
        .collect()
}

/// The pid a cluster daemon (the manager, or a node's agent) recorded in its run directory.
pub fn pid_of(c: &Cluster, daemon: &str) -> i32 {
    std::fs::read_to_string(format!("/run/swarmkit/{}/{daemon}.pid", c.name))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Whether `pid` runs (a zombie does not count: it has exited).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
