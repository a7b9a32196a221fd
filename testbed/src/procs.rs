//! Finding and stopping the processes a cluster started, through /proc, so that a crash that
//! lost pid files still leaves nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use cluster::paths::OWNER_ENV;

/// Whether `pid` is gone or a zombie (already dead: its parent has to reap it).
pub fn dead(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold ')'.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn environ_has(pid: i32, kv: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|e| e == kv))
        .unwrap_or(false)
}

/// The container a task's process runs, when that process is its runtime's (a registry
/// image's task): crun's child, the container's init.
pub fn container_of(pid: i32) -> Option<i32> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "crun" {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Live processes (this one aside) carrying this cluster's owner mark.
pub fn owned(cluster: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mark = format!("{OWNER_ENV}={cluster}");
    all_pids()
        .into_iter()
        .filter(|pid| *pid != me && environ_has(*pid, mark.as_bytes()) && !dead(*pid))
        .collect()
}

/// Cluster names found in the owner marks of live processes.
pub fn owners() -> Vec<String> {
    let prefix = format!("{OWNER_ENV}=");
    let mut out: Vec<String> = all_pids()
        .into_iter()
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|b| *b == 0).find_map(|kv| {
                std::str::from_utf8(kv)
                    .ok()?
                    .strip_prefix(&prefix)
                    .map(str::to_string)
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `pid` when it is alive, belongs to `cluster` and runs with all of `args` on its command
/// line: a pid file can outlive its process, and the number be reused.
pub fn verified(pid: i32, cluster: &str, args: &[&str]) -> Option<i32> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let mark = format!("{OWNER_ENV}={cluster}");
    let ok = !dead(pid)
        && environ_has(pid, mark.as_bytes())
        && args.iter().all(|a| argv.contains(&a.as_bytes()));
    ok.then_some(pid)
}

/// Reads a pid file and verifies it (see [`verified`]).
pub fn from_file(file: &Path, cluster: &str, args: &[&str]) -> Option<i32> {
    let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    verified(pid, cluster, args)
}

/// `root` and every process below it. Each is stopped as it is found, so none can fork a
/// child the walk would miss; the caller kills or resumes them.
fn stop_tree(root: i32) -> Vec<i32> {
    let mut found = vec![root];
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    loop {
        let more: Vec<i32> = all_pids()
            .into_iter()
            .filter(|p| !found.contains(p) && parent(*p).is_some_and(|pp| found.contains(&pp)))
            .collect();
        if more.is_empty() {
            return found;
        }
        for p in &more {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        found.extend(more);
    }
}

/// SIGKILLs `root` and all its descendants, and waits (with a deadline) until they are dead.
pub fn kill_tree(root: i32) -> bool {
    let tree = stop_tree(root);
    kill_all(&tree)
}

/// SIGKILLs every pid and waits up to five seconds for all to die.
pub fn kill_all(pids: &[i32]) -> bool {
    for p in pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    let start = Instant::now();
    while !pids.iter().all(|p| dead(*p)) {
        if start.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_dies_whole() {
        // sh starts a grandchild sleeper; both must die, and nothing else.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        let start = Instant::now();
        let grandchild = loop {
            if let Some(p) = all_pids().into_iter().find(|p| parent(*p) == Some(root)) {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "sleep never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(kill_tree(root));
        let _ = child.wait();
        assert!(dead(grandchild), "the grandchild survived");
        assert!(!dead(std::process::id() as i32));
    }

    #[test]
    fn a_pid_file_naming_another_process_is_not_trusted() {
        let me = std::process::id() as i32;
        assert_eq!(verified(me, "no-such-cluster", &[]), None);
    }
}
