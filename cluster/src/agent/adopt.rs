//! What a restarted agent needs to adopt the tasks its predecessor started: a record in each
//! task's run directory (its process, identified beyond the pid by its start time, and its
//! leg on the gateway bridge), and a way to learn when a process that is not our child exits.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The node that runs the task (netns nodes share one run directory).
    pub node: String,
    pub pid: u32,
    /// The process's start time (clock ticks after boot, /proc/PID/stat field 22), so a
    /// reused pid is never mistaken for the task.
    pub start_time: u64,
    /// Its leg on the node's gateway bridge.
    #[serde(default)]
    pub leg: Option<u32>,
    /// Between SIGTERM and SIGKILL when it is stopped.
    #[serde(default)]
    pub stop_grace_ms: u64,
    /// What it is asked to stop with (`--stop-signal`; empty: SIGTERM).
    #[serde(default)]
    pub stop_signal: String,
}

const FILE: &str = "task.json";

pub fn save(dir: &Path, r: &Record) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    crate::paths::write_atomically(&dir.join(FILE), &bytes)
}

pub fn load(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()
}

pub fn forget(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
}

pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3, the state.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the recorded process still runs (and is the same process).
pub fn alive(r: &Record) -> bool {
    start_time(r.pid) == Some(r.start_time)
}

/// Records of tasks this node ran, by task ID: `tasks_dir/<id>/task.json`.
pub fn records(tasks_dir: &Path, node: &str) -> Vec<(String, PathBuf, Record)> {
    let Ok(entries) = std::fs::read_dir(tasks_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let r = load(&dir)?;
            (r.node == node).then(|| (e.file_name().to_string_lossy().into_owned(), dir, r))
        })
        .collect()
}

/// Resolves when the process exits (a pidfd turns readable); works for processes that are
/// not our children.
pub async fn exited(pid: u32) -> std::io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        // Already gone.
        return if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(e)
        };
    }
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same descriptor)
    // until both are dropped together.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    let _ = afd.readable().await?;
    Ok(())
}
