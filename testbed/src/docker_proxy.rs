//! One docker socket for a cluster of several managers (`/run/swarmkit/NAME/docker.sock`,
//! what `cluster env` points `DOCKER_HOST` at): each connection goes to the manager that
//! leads with a quorum, so a docker CLI pointed at the cluster keeps working when the
//! manager it used dies or is cut off. Docker Swarm leaves that to the user (or a load
//! balancer in front of the managers); a follower would forward writes anyway, but a dead
//! manager answers nothing and a cut-off one refuses writes.
//!
//! `swarmkit __docker_proxy` serves it, supervised like the cluster's other daemons. It asks
//! every manager's socket `GET /swarmkit/v1/replica/leads` a few times a second (a cheap,
//! local answer) and sends each new connection to the one that says it leads; with none (an
//! election in progress) to the first that accepts, whose follower side waits for the next
//! leader. Bytes are spliced as they are: TLS-less unix sockets end to end, root-only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{UnixListener, UnixStream};

use cluster::client::ManagerClient;
use cluster::paths::ClusterPaths;

/// How often the managers are asked who leads: a connection made just after a failover
/// goes to a follower for at most this long, which forwards it.
const POLL: Duration = Duration::from_millis(250);
/// How long one manager gets to say whether it leads, or to accept a connection.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Entry point of `swarmkit __docker_proxy --cluster C`.
pub async fn run(cluster: &str) -> anyhow::Result<()> {
    let paths = ClusterPaths::new(cluster);
    let socket = paths.docker_proxy_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let leader: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    tokio::spawn(watch_leader(paths.clone(), leader.clone()));
    loop {
        let (client, _) = listener
            .accept()
            .await
            .context("accepting a docker client")?;
        let first = leader.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let paths = paths.clone();
        tokio::spawn(async move {
            let mut candidates = paths.manager_sockets();
            if let Some(leader) = first {
                candidates.retain(|s| *s != leader);
                candidates.insert(0, leader);
            }
            if let Some(manager) = first_accepting(&candidates).await {
                splice(client, manager).await;
            } else {
                tracing::warn!("no manager accepted a docker client's connection");
            }
        });
    }
}

async fn first_accepting(sockets: &[PathBuf]) -> Option<UnixStream> {
    for socket in sockets {
        if let Ok(Ok(stream)) = tokio::time::timeout(ASK_TIMEOUT, UnixStream::connect(socket)).await
        {
            return Some(stream);
        }
    }
    None
}

async fn splice(mut client: UnixStream, mut manager: UnixStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut manager).await;
}

/// Keeps `leader` at the socket of the manager that says it leads (None while none does).
async fn watch_leader(paths: ClusterPaths, leader: Arc<Mutex<Option<PathBuf>>>) {
    loop {
        let sockets = paths.manager_sockets();
        let asks = sockets.iter().map(|s| async move {
            let client = ManagerClient::new(s);
            let said = tokio::time::timeout(
                ASK_TIMEOUT,
                client.get::<serde_json::Value>(cluster::manager::replicas::LEADS),
            )
            .await;
            matches!(said, Ok(Ok(v)) if v["leads"] == true).then(|| s.clone())
        });
        let leading = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next();
        *leader.lock().unwrap_or_else(|e| e.into_inner()) = leading;
        tokio::time::sleep(POLL).await;
    }
}
