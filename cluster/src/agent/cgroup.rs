//! A task's own cgroup, `swarmkit/<cluster>/<task id>`, which holds it to its `--limit-*`:
//! made and set before the task's process exists, joined by the process itself between fork
//! and exec (so it never runs unlimited), and removed when the task ends, with a verdict on
//! whether its memory limit killed it. cgroup v1 (one hierarchy per controller, as on these
//! machines) and v2 (one unified hierarchy) are told apart by what `/sys/fs/cgroup` holds.
//!
//! The few files are written directly rather than through a crate: `cgroups-rs` would bring a
//! dependency tree for what is a mkdir, five writes and an rmdir, and its join is not the
//! allocation-free write of "0" that a child may do after fork.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::plan::TaskLimits;
use crate::wait::{self, Check, Pace};

const ROOT: &str = "/sys/fs/cgroup";

/// The controllers a task's limits need: the v1 hierarchies it joins, the ones v2 enables.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The CFS period docker uses: 100 ms.
const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "this node has no {controller} cgroup controller (looked under {ROOT}): {flag} cannot be \
         enforced here; mount it, or keep the service off this node with a constraint"
    )]
    Missing {
        controller: &'static str,
        flag: &'static str,
    },
    #[error("the task's cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    V1,
    V2,
}

fn layout() -> Option<Layout> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        Some(Layout::V2)
    } else if root.join("memory").is_dir() || root.join("pids").is_dir() {
        // A hybrid host's `unified` mount carries no controllers: v1 is what limits.
        Some(Layout::V1)
    } else {
        None
    }
}

fn relative(cluster: &str, task: &str) -> PathBuf {
    Path::new("swarmkit").join(cluster).join(task)
}

/// The task's directory in each hierarchy it joins.
fn dirs(layout: Layout, cluster: &str, task: &str) -> Vec<PathBuf> {
    let rel = relative(cluster, task);
    match layout {
        Layout::V2 => vec![Path::new(ROOT).join(rel)],
        Layout::V1 => CONTROLLERS
            .iter()
            .map(|c| Path::new(ROOT).join(c))
            .filter(|c| c.is_dir())
            .map(|c| c.join(&rel))
            .collect(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io(&path))
}

/// A made cgroup: the `cgroup.procs` files the task's process writes itself into.
pub struct TaskCgroup {
    procs: Vec<CString>,
}

impl TaskCgroup {
    /// Makes the task's cgroup and sets its limits. A limit the node cannot enforce is an
    /// error, never dropped; a task with no limit runs without a cgroup of its own where the
    /// node has none or will not make one (said in the agent's log).
    pub fn create(
        cluster: &str,
        task: &str,
        limits: &TaskLimits,
    ) -> Result<Option<TaskCgroup>, CgroupError> {
        match (Self::make(cluster, task, limits), needed(limits).is_empty()) {
            (Ok(made), _) => Ok(made),
            (Err(e), true) => {
                tracing::warn!("task {task} runs in the agent's cgroup: {e}");
                Ok(None)
            }
            (Err(e), false) => Err(e),
        }
    }

    fn make(
        cluster: &str,
        task: &str,
        limits: &TaskLimits,
    ) -> Result<Option<TaskCgroup>, CgroupError> {
        let Some(layout) = layout() else {
            return match needed(limits).first() {
                None => Ok(None),
                Some((controller, flag)) => Err(CgroupError::Missing { controller, flag }),
            };
        };
        let dirs = dirs(layout, cluster, task);
        let enabled = match layout {
            Layout::V2 => enable_v2_controllers(cluster)?,
            Layout::V1 => Vec::new(),
        };
        for (controller, flag) in needed(limits) {
            let present = match layout {
                Layout::V1 => dirs
                    .iter()
                    .any(|d| in_controller(Path::new(ROOT), d, controller)),
                Layout::V2 => enabled.iter().any(|c| c == controller),
            };
            if !present {
                return Err(CgroupError::Missing { controller, flag });
            }
        }
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let made = TaskCgroup::of_dirs(&dirs);
        if let Err(e) = set_limits(Path::new(ROOT), layout, &dirs, limits) {
            remove_empty(&dirs);
            return Err(e);
        }
        Ok(Some(made))
    }

    /// The cgroup a running task was given, if it has one: for what joins the task later
    /// (its healthchecks).
    pub fn existing(cluster: &str, task: &str) -> Option<TaskCgroup> {
        let dirs: Vec<PathBuf> = dirs(layout()?, cluster, task)
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        (!dirs.is_empty()).then(|| TaskCgroup::of_dirs(&dirs))
    }

    fn of_dirs(dirs: &[PathBuf]) -> TaskCgroup {
        TaskCgroup {
            procs: dirs
                .iter()
                .map(|d| {
                    CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes())
                        .expect("cgroup paths hold no NUL")
                })
                .collect(),
        }
    }

    /// Moves the calling process into the cgroup. Only open, write and close: safe between
    /// fork and exec.
    pub fn join_self(&self) -> std::io::Result<()> {
        for path in &self.procs {
            // SAFETY: a NUL-terminated path made before the fork; the descriptor is closed here.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" is the writer itself, in v1 and v2 alike.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

/// The controllers a task's limits need, with the flag that asked for each.
fn needed(limits: &TaskLimits) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if limits.memory_bytes > 0 {
        out.push(("memory", "--limit-memory"));
    }
    if limits.memory_reservation > 0 {
        out.push(("memory", "--reserve-memory"));
    }
    if limits.nano_cpus > 0 {
        out.push(("cpu", "--limit-cpu"));
    }
    if limits.pids > 0 {
        out.push(("pids", "--limit-pids"));
    }
    out
}

/// Whether `dir` lies in `controller`'s v1 hierarchy under `root`.
fn in_controller(root: &Path, dir: &Path, controller: &str) -> bool {
    dir.starts_with(root.join(controller))
}

/// v2 hands a controller to a child only when every ancestor enables it for its subtree.
/// Each is asked for alone (the kernel refuses one, e.g. cpu while realtime threads sit
/// elsewhere, without the others); returns the ones the cluster's tasks get.
fn enable_v2_controllers(cluster: &str) -> Result<Vec<String>, CgroupError> {
    let root = Path::new(ROOT);
    let cluster_dir = root.join("swarmkit").join(cluster);
    std::fs::create_dir_all(&cluster_dir).map_err(io(&cluster_dir))?;
    let subtree = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let enabled = subtree(&cluster_dir);
    if CONTROLLERS.iter().all(|c| enabled.iter().any(|e| e == c)) {
        return Ok(enabled);
    }
    for dir in [
        root.to_path_buf(),
        root.join("swarmkit"),
        cluster_dir.clone(),
    ] {
        for c in CONTROLLERS {
            let _ = write(&dir, "cgroup.subtree_control", &format!("+{c}"));
        }
    }
    Ok(subtree(&cluster_dir))
}

fn set_limits(
    root: &Path,
    layout: Layout,
    dirs: &[PathBuf],
    l: &TaskLimits,
) -> Result<(), CgroupError> {
    let quota_us = l.nano_cpus * CFS_PERIOD_US / 1_000_000_000;
    match layout {
        Layout::V2 => {
            let d = &dirs[0];
            if l.memory_bytes > 0 {
                write(d, "memory.max", &l.memory_bytes.to_string())?;
                // No swap beyond the limit.
                if d.join("memory.swap.max").exists() {
                    write(d, "memory.swap.max", "0")?;
                }
            }
            if l.memory_reservation > 0 {
                write(d, "memory.low", &l.memory_reservation.to_string())?;
            }
            if l.nano_cpus > 0 {
                write(d, "cpu.max", &format!("{quota_us} {CFS_PERIOD_US}"))?;
            }
            if l.pids > 0 {
                write(d, "pids.max", &l.pids.to_string())?;
            }
        }
        Layout::V1 => {
            for d in dirs {
                if in_controller(root, d, "memory") {
                    if l.memory_bytes > 0 {
                        write(d, "memory.limit_in_bytes", &l.memory_bytes.to_string())?;
                        // No swap beyond the limit either, where the kernel accounts it.
                        if d.join("memory.memsw.limit_in_bytes").exists() {
                            write(
                                d,
                                "memory.memsw.limit_in_bytes",
                                &l.memory_bytes.to_string(),
                            )?;
                        }
                    }
                    if l.memory_reservation > 0 {
                        let soft = l.memory_reservation.to_string();
                        write(d, "memory.soft_limit_in_bytes", &soft)?;
                    }
                } else if in_controller(root, d, "cpu") && l.nano_cpus > 0 {
                    write(d, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                    write(d, "cpu.cfs_quota_us", &quota_us.to_string())?;
                } else if in_controller(root, d, "pids") && l.pids > 0 {
                    write(d, "pids.max", &l.pids.to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// How many times the kernel's OOM killer killed inside the task's memory cgroup.
fn oom_kills(root: &Path, layout: Layout, dirs: &[PathBuf]) -> u64 {
    let (file, dir) = match layout {
        Layout::V2 => ("memory.events", dirs.first()),
        Layout::V1 => (
            "memory.oom_control",
            dirs.iter().find(|d| in_controller(root, d, "memory")),
        ),
    };
    dir.and_then(|d| std::fs::read_to_string(d.join(file)).ok())
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// docker's way of writing a size: `64MiB`, `1.5GiB`.
pub fn bytes_in_units(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}

/// The task ended: why, if its memory limit killed it, and its cgroup removed (in the
/// background: what is left in it is killed first, and the kernel empties it shortly after).
pub fn release(cluster: &str, task: &str, limits: &TaskLimits) -> Option<String> {
    let layout = layout()?;
    let dirs = dirs(layout, cluster, task);
    if !dirs.iter().any(|d| d.is_dir()) {
        return None;
    }
    let verdict =
        (limits.memory_bytes > 0 && oom_kills(Path::new(ROOT), layout, &dirs) > 0).then(|| {
            format!(
                "task: killed: out of memory at its --limit-memory {}",
                bytes_in_units(limits.memory_bytes)
            )
        });
    tokio::spawn(retire(dirs, Duration::ZERO));
    verdict
}

/// Removes a task's cgroup in the background once what runs in it has had `grace` to stop
/// (a task that never started, or a stale one being stopped).
pub fn remove(cluster: &str, task: &str, grace: Duration) {
    if let Some(layout) = layout() {
        let dirs = dirs(layout, cluster, task);
        tokio::spawn(retire(dirs, grace));
    }
}

/// Removes every cgroup of a cluster once its agents are gone, killing what is left in them
/// first: a container's processes, which its runtime's death does not take with it. Not run
/// from an agent: another node's tasks share the directory.
pub fn remove_cluster(cluster: &str) {
    let Some(layout) = layout() else {
        return;
    };
    let bases: Vec<PathBuf> = match layout {
        Layout::V2 => vec![PathBuf::from(ROOT)],
        Layout::V1 => CONTROLLERS
            .iter()
            .map(|c| Path::new(ROOT).join(c))
            .collect(),
    };
    for base in bases {
        let dir = base.join("swarmkit").join(cluster);
        let tasks: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        for pid in tasks.iter().flat_map(|d| procs(d)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut left = tasks;
        // The kernel lets go of killed processes' cgroups shortly; bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            left = remove_empty(&left);
            if left.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Removes the directories that hold no process; the kernel refuses the others.
fn remove_empty(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|d| match std::fs::remove_dir(d) {
            Ok(()) => false,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        })
        .cloned()
        .collect()
}

/// Removes a task's directories: what runs in them has `grace` to end (a stop under way),
/// then is killed, and the kernel has a bounded time to let go of it.
async fn retire(dirs: Vec<PathBuf>, grace: Duration) {
    let pace = Pace::doubling(Duration::from_millis(5), Duration::from_millis(200));
    let emptied = |dirs: &[PathBuf]| Check::from(dirs.iter().all(|d| procs(d).is_empty()));
    let _ = wait::until(Some(grace), pace, || std::future::ready(emptied(&dirs))).await;
    for pid in dirs.iter().flat_map(|d| procs(d)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut left = dirs;
    let removed = wait::until(Some(Duration::from_secs(5)), pace, || {
        left = remove_empty(&left);
        std::future::ready(Check::from(left.is_empty()))
    })
    .await;
    if removed.is_err() {
        tracing::warn!("cgroups {left:?} still hold processes 5s after SIGKILL; left in place");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TaskLimits {
        TaskLimits {
            nano_cpus: 1_500_000_000,
            memory_bytes: 64 << 20,
            pids: 100,
            memory_reservation: 16 << 20,
        }
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sk-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn v1_limits_go_to_each_controllers_files() {
        let root = scratch("v1");
        let dirs: Vec<PathBuf> = CONTROLLERS
            .iter()
            .map(|c| root.join(c).join("swarmkit/c/t"))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(dirs[0].join("memory.memsw.limit_in_bytes"), "").unwrap();
        set_limits(&root, Layout::V1, &dirs, &limits()).unwrap();
        assert_eq!(read(&dirs[0], "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(&dirs[0], "memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(read(&dirs[0], "memory.soft_limit_in_bytes"), "16777216");
        assert_eq!(read(&dirs[1], "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&dirs[1], "cpu.cfs_quota_us"), "150000");
        assert_eq!(read(&dirs[2], "pids.max"), "100");
        assert_eq!(oom_kills(&root, Layout::V1, &dirs), 0);
        std::fs::write(
            dirs[0].join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&root, Layout::V1, &dirs), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_limits_go_to_the_unified_files() {
        let root = scratch("v2");
        let dir = root.join("swarmkit/c/t");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        let dirs = [dir.clone()];
        set_limits(&root, Layout::V2, &dirs, &limits()).unwrap();
        assert_eq!(read(&dir, "memory.max"), "67108864");
        assert_eq!(read(&dir, "memory.swap.max"), "0");
        assert_eq!(read(&dir, "memory.low"), "16777216");
        assert_eq!(read(&dir, "cpu.max"), "150000 100000");
        assert_eq!(read(&dir, "pids.max"), "100");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&root, Layout::V2, &dirs), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sizes_read_as_docker_writes_them() {
        assert_eq!(bytes_in_units(32 << 20), "32MiB");
        assert_eq!(bytes_in_units(1536 << 20), "1.5GiB");
        assert_eq!(bytes_in_units(1000), "1000B");
    }

    #[test]
    fn a_limit_names_the_controller_it_needs() {
        let l = TaskLimits {
            nano_cpus: 500_000_000,
            memory_bytes: 0,
            pids: 10,
            memory_reservation: 1,
        };
        assert_eq!(
            needed(&l),
            [
                ("memory", "--reserve-memory"),
                ("cpu", "--limit-cpu"),
                ("pids", "--limit-pids")
            ]
        );
        assert!(needed(&TaskLimits::default()).is_empty());
    }
}
