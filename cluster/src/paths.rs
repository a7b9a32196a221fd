//! Where a cluster keeps its files, and how its kernel objects are named. Every name starts
//! with the cluster's own prefix so that parallel clusters never collide and teardown finds
//! everything a cluster made.

use std::path::PathBuf;

pub const RUN_ROOT: &str = "/run/swarmkit";
pub const STATE_ROOT: &str = "/var/lib/swarmkit";

/// Cluster names become parts of namespace and file names; see `names` for the rules.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    crate::names::validate(crate::names::Named::Cluster, name)
}

#[derive(Clone, Debug)]
pub struct ClusterPaths {
    pub name: String,
}

impl ClusterPaths {
    pub fn new(name: &str) -> Self {
        ClusterPaths {
            name: name.to_string(),
        }
    }
    /// Runtime directory: sockets, logs, per-task files. Gone after `cluster down`.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(&self.name)
    }
    /// Durable state: the manager's store and the cluster's description.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(STATE_ROOT).join(&self.name)
    }
    /// Makes the state directory, owner-only: the store in it holds network keys.
    pub fn create_state_dir(&self) -> std::io::Result<()> {
        create_private_dir(&self.state_dir())
    }
    pub fn manager_socket(&self) -> PathBuf {
        self.run_dir().join("manager.sock")
    }
    /// A node's own Docker API (`docker ps` for the tasks on it), served by the manager.
    pub fn node_docker_socket(&self, hostname: &str) -> PathBuf {
        self.run_dir()
            .join("nodes")
            .join(format!("{hostname}.sock"))
    }
    /// The manager's listener for agents on this machine (mutual TLS, agent routes only):
    /// where SSH forwards from remote nodes end, and where a remote node's agent finds its
    /// end of the forward (the same path on its machine).
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("agents.sock")
    }
    /// The join token a node's agent joins with when it has no certificate yet (0600, put
    /// there by the backend that starts the agent).
    pub fn join_token_file(&self) -> PathBuf {
        self.run_dir().join("join-token")
    }
    /// A node's key, its certificate and the cluster's root, kept across agent restarts.
    pub fn node_credentials(&self, hostname: &str) -> PathBuf {
        self.state_dir().join("nodes").join(hostname)
    }
    /// The client certificate `cluster env --tls` hands the docker CLI (docker's file names).
    pub fn client_credentials(&self) -> PathBuf {
        self.state_dir().join("client")
    }
    /// Where a docker client finds a manager: with several, the cluster's docker socket,
    /// which takes each connection to the leader (`__docker_proxy`), else the first manager
    /// that answers; the one manager's socket otherwise.
    pub fn docker_host(&self) -> String {
        let proxy = self.docker_proxy_socket();
        if proxy.exists() {
            return format!("unix://{}", proxy.display());
        }
        format!("unix://{}", self.live_manager_socket().display())
    }
    /// The cluster's docker socket when it has several managers (see [`Self::docker_host`]).
    pub fn docker_proxy_socket(&self) -> PathBuf {
        self.run_dir().join("docker.sock")
    }
    pub fn store(&self) -> PathBuf {
        self.state_dir().join("state.redb")
    }
    /// Where the manager on `node` keeps its replica of the store, its sealing key and its
    /// Raft log, in a cluster of several managers.
    pub fn replica_dir(&self, node: &str) -> PathBuf {
        self.state_dir().join("managers").join(node)
    }
    /// The sockets of the manager on `node` (its Engine API, agents', nodes').
    pub fn replica_run_dir(&self, node: &str) -> PathBuf {
        self.run_dir().join("managers").join(node)
    }
    /// Which manager the one on `node` is (`ReplicaOf`): while it exists, the node's agent
    /// runs that manager.
    pub fn replica_file(&self, node: &str) -> PathBuf {
        self.replica_dir(node).join("replica.json")
    }
    /// The log of the manager on `node`.
    pub fn replica_log(&self, node: &str) -> PathBuf {
        self.log_file(&format!("manager-{node}"))
    }
    /// The settings every manager of a cluster of several starts with (name, value pairs).
    pub fn managers_env_file(&self) -> PathBuf {
        self.state_dir().join("managers-env.json")
    }
    /// Every manager of a cluster of several, with its Raft ID and address.
    pub fn members_file(&self) -> PathBuf {
        self.state_dir().join("managers.json")
    }
    /// Whether the cluster's managers replicate (`cluster up --managers N`, N > 1): its
    /// members file exists.
    pub fn replicated(&self) -> bool {
        self.members_file().exists()
    }
    /// Every manager's Engine API socket: the one manager's, or one per manager node
    /// (ordered by node) when there are several.
    pub fn manager_sockets(&self) -> Vec<PathBuf> {
        let mut sockets: Vec<PathBuf> = std::fs::read_dir(self.run_dir().join("managers"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path().join("manager.sock")))
            .collect();
        if sockets.is_empty() {
            return vec![self.manager_socket()];
        }
        // Manager nodes are the first few (node1..node7): their names sort as their numbers.
        sockets.sort();
        sockets
    }
    /// The first manager socket whose manager answers a ping within a second (the first of
    /// all when none does, for the error to name).
    pub fn live_manager_socket(&self) -> PathBuf {
        let sockets = self.manager_sockets();
        if sockets.len() == 1 {
            // Nothing to choose: no probe for the one manager to serve.
            return sockets[0].clone();
        }
        // Managers may be between leaders, or one may be stopping (demoted): a few seconds
        // for one to answer before the first is named in the error.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            if let Some(live) = sockets.iter().find(|s| answers_ping(s)) {
                return live.clone();
            }
            if std::time::Instant::now() >= until {
                return sockets[0].clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    pub fn info_file(&self) -> PathBuf {
        self.state_dir().join("cluster.json")
    }
    /// Prefix of every network namespace this cluster owns. The '.' cannot occur in a
    /// cluster name, so cluster "a" never matches cluster "a-b".
    pub fn ns_prefix(&self) -> String {
        format!("sk-{}.", self.name)
    }
    pub fn underlay_ns(&self) -> String {
        format!("{}underlay", self.ns_prefix())
    }
    pub fn node_ns(&self, hostname: &str) -> String {
        format!("{}{hostname}", self.ns_prefix())
    }
    pub fn sandbox_ns(&self, hostname: &str, network_id: &str) -> String {
        format!(
            "{}{hostname}.1-{}",
            self.ns_prefix(),
            &network_id[..10.min(network_id.len())]
        )
    }
    pub fn ingress_sbox_ns(&self, hostname: &str) -> String {
        self.node_sandbox_ns(hostname, "ingress_sbox")
    }
    /// A sandbox of a node by its short name, as Docker names them: `ingress_sbox`, or
    /// `1-<network id>` for an overlay.
    pub fn node_sandbox_ns(&self, hostname: &str, sandbox: &str) -> String {
        format!("{}{hostname}.{sandbox}", self.ns_prefix())
    }
    pub fn task_ns(&self, task_id: &str) -> String {
        format!(
            "{}t-{}",
            self.ns_prefix(),
            &task_id[..12.min(task_id.len())]
        )
    }
    /// A node's image store (its pulled layers), on disk.
    pub fn node_images(&self, hostname: &str) -> PathBuf {
        self.state_dir().join("nodes").join(hostname).join("images")
    }

    /// A node's containers' writable layers, beside its images (overlayfs wants them on one
    /// filesystem with room).
    pub fn node_containers(&self, hostname: &str) -> PathBuf {
        self.state_dir()
            .join("nodes")
            .join(hostname)
            .join("containers")
    }

    /// A node's volumes (docker's local driver): `<dir>/<name>/_data`.
    pub fn node_volumes(&self, hostname: &str) -> PathBuf {
        self.state_dir()
            .join("nodes")
            .join(hostname)
            .join("volumes")
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.run_dir().join("tasks").join(task_id)
    }
    pub fn log_file(&self, process: &str) -> PathBuf {
        self.run_dir().join(format!("{process}.log"))
    }
    /// An nft table the agent makes in a node's own namespace, which on an ssh node is its
    /// owner's host and may hold other clusters' tables: `swarmkit_<cluster>_<what>`.
    pub fn nft_table(&self, what: &str) -> String {
        format!("swarmkit_{}_{what}", self.name)
    }
    /// The agent's journal of what it changed in a node namespace it does not own (see
    /// netcore::undo); `cluster down` on that host undoes it.
    pub fn host_journal(&self) -> PathBuf {
        self.run_dir().join("host-changes.json")
    }
}

/// Whether the manager on `socket` answers `GET /_ping` with 200 within a second: a socket
/// that takes a connection may still belong to a manager on its way down.
fn answers_ping(socket: &std::path::Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let second = Some(std::time::Duration::from_secs(1));
    if stream.set_read_timeout(second).is_err() || stream.set_write_timeout(second).is_err() {
        return false;
    }
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: swarmkit\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or the new, never a
/// mix: written beside it, synced, then renamed over it. The file is owner-only, from its
/// first byte: the temporary file is made 0600 before anything is written to it.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover keeps its mode when opened: it goes, so the file is made anew with ours.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Makes `dir` (and what it lacks above it) owner-only, tightening it if it exists.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The cluster state directory a store at `store` lies in, if it lies in one: a directory
/// right under `root` (STATE_ROOT outside tests).
pub fn cluster_state_dir<'a>(
    store: &'a std::path::Path,
    root: &std::path::Path,
) -> Option<&'a std::path::Path> {
    store.parent().filter(|d| d.parent() == Some(root))
}

/// Environment variable carried by every process a cluster starts, so teardown can find
/// them by reading /proc even after a crash lost the pid files.
pub const OWNER_ENV: &str = "SWARMKIT_OWNER";

/// The program to run for a daemon or built-in image: this very binary. Not its path, which
/// an upgrade (or a rebuild) replaces under running daemons, so that restarting one would
/// fail with "No such file"; the running binary stays reachable as long as we run.
pub const OWN_BINARY: &str = "/proc/self/exe";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_dirs_are_owner_only_whatever_was_there() {
        let root = std::env::temp_dir().join(format!("swarmkit-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("state");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // One made before, by a plain create_dir_all.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("cluster.json");
        let tmp = file.with_extension("tmp");
        // A leftover of a crash, readable by all.
        std::fs::write(&tmp, b"old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&file, b"{}").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"{}");
        assert!(!tmp.exists());
        write_atomically(&file, b"{\"a\":1}").unwrap();
        assert_eq!(mode(&file), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_store_lies_in_a_cluster_state_dir_only_right_under_the_root() {
        let root = std::path::Path::new(STATE_ROOT);
        let store = ClusterPaths::new("c1").store();
        assert_eq!(
            cluster_state_dir(&store, root),
            Some(ClusterPaths::new("c1").state_dir().as_path())
        );
        let tmp = std::env::temp_dir().join("x.redb");
        assert_eq!(cluster_state_dir(&tmp, root), None);
        assert_eq!(cluster_state_dir(&root.join("x.redb"), root), None);
    }

    #[test]
    fn nft_tables_carry_the_cluster_name_and_stay_apart() {
        let a = ClusterPaths::new("a");
        let ab = ClusterPaths::new("a-b");
        assert_eq!(a.nft_table("ingress"), "swarmkit_a_ingress");
        assert_eq!(ab.nft_table("hostports"), "swarmkit_a-b_hostports");
        let kinds = ["ingress", "hostports", "mesh"];
        for x in kinds {
            for y in kinds {
                assert_ne!(a.nft_table(x), ab.nft_table(y));
            }
        }
    }
}
