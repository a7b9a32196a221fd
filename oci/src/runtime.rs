//! Running bundles under crun, the distribution's OCI runtime, found on PATH.
//!
//! The container runs in the foreground (`crun run`): crun's own exit status is the
//! container's, it forwards the stop signal, and its stdout and stderr are the container's,
//! so the agent supervises it as any task process. crun is told to leave cgroups alone
//! (`--cgroup-manager=disabled`): it is started inside the task's own cgroup, which holds the
//! limits, and the container stays there. Each cluster keeps its containers' state under a
//! root of its own, so one cluster's containers are never another's.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no OCI runtime on this node: crun is not on PATH; install it (Debian/Ubuntu: \
         apt-get install crun) to run images from a registry here"
    )]
    Missing,
    #[error(
        "--init needs a static init on this node (docker-init, or tini-static: apt-get install \
         tini), bound into the container as docker binds its own"
    )]
    NoInit,
    #[error("crun {what}: {detail}")]
    Failed { what: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct Runtime {
    binary: PathBuf,
    /// crun's state directory for this cluster's containers.
    root: PathBuf,
}

/// The first executable `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_else(|| vec!["/usr/local/bin".into(), "/usr/bin".into(), "/bin".into()])
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this machine's `/` is the kernel's initial ramfs (`rootfs` in the mount table).
/// Read once: a netns host's table holds a mount per namespace, thousands of lines.
fn root_is_initramfs() -> bool {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE.get_or_init(read_root_is_initramfs)
}

fn read_root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|table| {
        table.lines().any(|l| {
            let mut halves = l.split(" - ");
            let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
                return false;
            };
            left.split(' ').nth(4) == Some("/") && right.split(' ').next() == Some("rootfs")
        })
    })
}

/// The static init `--init` runs a container under, as docker's `docker-init` is tini: the
/// node's `docker-init` or Debian's `tini-static`, found on PATH.
pub fn find_init() -> Result<PathBuf, RuntimeError> {
    on_path("docker-init")
        .or_else(|| on_path("tini-static"))
        .ok_or(RuntimeError::NoInit)
}

impl Runtime {
    /// crun, keeping state under `root`.
    pub fn find(root: &Path) -> Result<Runtime, RuntimeError> {
        Ok(Runtime {
            binary: on_path("crun").ok_or(RuntimeError::Missing)?,
            root: root.to_path_buf(),
        })
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// The foreground `crun run` of the bundle in `bundle` as container `id`. The caller puts
    /// it in the task's namespaces and cgroup, with the container's root mounted.
    pub fn run(&self, bundle: &Path, id: &str) -> Command {
        let mut cmd = self.base();
        cmd.arg("--cgroup-manager=disabled").arg("run");
        if root_is_initramfs() {
            // pivot_root cannot leave the initial ramfs (a VM guest booted from its
            // initramfs): the container's root is moved instead, as dockerd does with
            // DOCKER_RAMDISK.
            cmd.arg("--no-pivot");
        }
        cmd.arg("--bundle").arg(bundle).arg(id);
        cmd
    }

    /// `argv` run in the running container `id` as its own process runs (its namespaces,
    /// user, capabilities, environment and working directory): docker's exec, which
    /// healthchecks use.
    /// `env` (`KEY=value`) is added to the container's own.
    pub fn exec(&self, id: &str, env: &[String], argv: &[String]) -> Command {
        let mut cmd = self.base();
        cmd.arg("--cgroup-manager=disabled").arg("exec");
        for kv in env {
            cmd.arg("--env").arg(kv);
        }
        cmd.arg(id).args(argv);
        cmd
    }

    /// The container's init process as the node sees it, while it runs.
    pub fn pid(&self, id: &str) -> Result<u32, RuntimeError> {
        let out = self.output(self.base().args(["state", id]), "state")?;
        let state: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| RuntimeError::Failed {
                what: "state".into(),
                detail: e.to_string(),
            })?;
        state["pid"]
            .as_u64()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .ok_or_else(|| RuntimeError::Failed {
                what: "state".into(),
                detail: format!("container {id} has no process yet"),
            })
    }

    /// Signals every process of the container.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.output(self.base().args(["kill", "--all", id, signal]), "kill")
            .map(drop)
    }

    /// Forgets a container whose `crun run` did not clean up after itself (killed itself).
    /// One that is already gone is no error.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.output(self.base().args(["delete", "--force", id]), "delete") {
            Err(RuntimeError::Failed { detail, .. })
                if detail.contains("does not exist") || detail.contains("No such file") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    fn output(&self, cmd: &mut Command, what: &str) -> Result<Vec<u8>, RuntimeError> {
        let out = cmd.output().map_err(|e| RuntimeError::Failed {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Failed {
                what: what.to_string(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_names_the_package() {
        let msg = RuntimeError::Missing.to_string();
        assert!(msg.contains("apt-get install crun"), "{msg}");
    }

    #[test]
    fn run_keeps_state_under_the_clusters_root_and_leaves_cgroups_alone() {
        let r = Runtime {
            binary: "/usr/bin/crun".into(),
            root: "/run/swarmkit/c1/crun".into(),
        };
        let cmd = r.run(Path::new("/b"), "c1-t1");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--root",
                "/run/swarmkit/c1/crun",
                "--cgroup-manager=disabled",
                "run",
                "--bundle",
                "/b",
                "c1-t1"
            ]
        );
    }
}
