//! The manager on this node, where managers replicate the store: the agent runs it as a
//! child of its own, as dockerd runs its manager, so that losing the node loses it. The node
//! runs one while its replica file names it (`ClusterPaths::replica_file`); a promoted node's
//! agent asks the leader for what the manager starts from (its Raft ID, the sealing key, the
//! store), and a demoted node's agent stops its manager and deletes its replica once the plan
//! answers say the node no longer runs one.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::client::ManagerClient;
use crate::paths::ClusterPaths;
use crate::protocol::{MANAGER_JOIN, ManagerJoin};
use crate::raft::ReplicaIdentity;

/// A manager that keeps dying is started again at most this often.
const RESTART_GAP: Duration = Duration::from_secs(1);
/// How long a stopping manager has after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How soon a failed join is asked again.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// What the node's manager needs from the rest of the agent: whether the plan answers say it
/// runs one (`None`: not heard yet, or one manager that is not an agent's), and the client
/// that speaks as the node once it has enrolled.
pub struct Inputs {
    pub role: watch::Receiver<Option<bool>>,
    pub client: watch::Receiver<Option<ManagerClient>>,
}

/// Runs the node's manager for the agent's life. It starts before the agent enrolls: a new
/// cluster's managers must answer before any node can.
pub async fn run(paths: ClusterPaths, hostname: String, mut inputs: Inputs) {
    let mut local = Local {
        paths,
        hostname,
        child: None,
        started: None,
    };
    loop {
        let role = *inputs.role.borrow_and_update();
        let mut retry_at = None;
        match (local.seat(), role) {
            (Some(_), Some(false)) => local.leave().await,
            (Some(seat), _) => local.ensure_running(&seat),
            (None, Some(true)) => {
                let client = inputs.client.borrow_and_update().clone();
                if let Some(client) = client {
                    match local.join(&client).await {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!("joining the managers: {e:#}; again in {JOIN_RETRY:?}");
                            retry_at = Some(tokio::time::Instant::now() + JOIN_RETRY);
                        }
                    }
                }
            }
            (None, _) => {}
        }
        let wake_at = match (local.restart_at(), retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            changed = inputs.role.changed() => if changed.is_err() { return },
            _ = inputs.client.changed() => {}
            status = local.exited() => {
                tracing::warn!("the node's manager exited ({status}); starting it again");
                local.child = None;
            }
            _ = crate::wait::sleep_until(wake_at) => {}
        }
    }
}

struct Local {
    paths: ClusterPaths,
    hostname: String,
    child: Option<Child>,
    started: Option<tokio::time::Instant>,
}

impl Local {
    fn seat(&self) -> Option<ReplicaIdentity> {
        let bytes = std::fs::read(self.paths.replica_file(&self.hostname)).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::error!("the node's replica file does not parse: {e}"))
            .ok()
    }

    /// When a manager that died may be started again (none: nothing to wait for).
    fn restart_at(&self) -> Option<tokio::time::Instant> {
        match (&self.child, self.started) {
            (None, Some(at)) if self.seat().is_some() => Some(at + RESTART_GAP),
            _ => None,
        }
    }

    async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            },
            None => std::future::pending().await,
        }
    }

    fn ensure_running(&mut self, seat: &ReplicaIdentity) {
        if self.child.is_some() {
            return;
        }
        if self.started.is_some_and(|at| at.elapsed() < RESTART_GAP) {
            return;
        }
        self.started = Some(tokio::time::Instant::now());
        match self.spawn() {
            Ok(child) => {
                tracing::info!(id = seat.id, pid = child.id(), "started the node's manager");
                self.child = Some(child);
            }
            Err(e) => tracing::error!("starting the node's manager: {e:#}"),
        }
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let log_file = self.paths.replica_log(&self.hostname);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", log_file.display()))?;
        let mut cmd = Command::new(crate::paths::OWN_BINARY);
        cmd.arg("--cluster")
            .arg(&self.paths.name)
            .args(["__manager", "--replica", &self.hostname])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in managers_env(&self.paths) {
            cmd.env(k, v);
        }
        // The manager dies with the agent, as a machine's daemons die with it; the agent's
        // next start starts it again.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(cmd.spawn()?)
    }

    /// Asks the leader for this node's seat among the managers and lays out its replica; the
    /// replica file, written last, is what makes it one.
    async fn join(&self, client: &ManagerClient) -> anyhow::Result<()> {
        let joined: ManagerJoin = client.post(MANAGER_JOIN, &serde_json::json!({})).await?;
        let dir = self.paths.replica_dir(&self.hostname);
        let _ = std::fs::remove_dir_all(&dir);
        crate::paths::create_private_dir(&dir)?;
        let store_file = dir.join("state.redb");
        let key = STANDARD.decode(&joined.key)?;
        crate::sealed::Sealer::install(&store_file.with_extension("key"), &key)?;
        let applied = joined
            .applied
            .as_deref()
            .map(|a| STANDARD.decode(a))
            .transpose()?
            .ok_or_else(|| anyhow::anyhow!("the leader's store has applied nothing yet"))?;
        let rows = crate::raft::rows_of(&joined.image.rows);
        tokio::task::spawn_blocking(move || {
            crate::store::Store::open(&store_file)?.install(&rows, &applied)
        })
        .await??;
        let seat = ReplicaIdentity {
            id: joined.id,
            member: joined.member,
            initialize: false,
        };
        crate::paths::write_atomically(
            &self.paths.replica_file(&self.hostname),
            &serde_json::to_vec_pretty(&seat)?,
        )?;
        tracing::info!(id = seat.id, "this node is a manager now");
        Ok(())
    }

    /// Stops the node's manager and deletes its replica: the node is a worker again.
    async fn leave(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        for dir in [
            self.paths.replica_dir(&self.hostname),
            self.paths.replica_run_dir(&self.hostname),
        ] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!("removing {}: {e}", dir.display());
            }
        }
        tracing::info!("this node is no longer a manager: its manager stopped");
    }
}

/// The settings every manager of the cluster starts with, as the backend left them.
fn managers_env(paths: &ClusterPaths) -> Vec<(String, String)> {
    let file = paths.managers_env_file();
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!("{} does not parse: {e}", file.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}
