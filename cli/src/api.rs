//! The client of a cluster's manager: the Docker Engine API (through bollard) on the
//! cluster's unix socket, the [`ApiError`] its calls fail with, how errors print (daemon
//! errors exactly as docker prints them), and small readers of the API's objects that
//! commands and pictures share.

use std::path::PathBuf;

use bollard::Docker;
use bollard::models::Node;
use cluster::paths::ClusterPaths;

/// What went wrong talking to a cluster's manager through its Engine API (as opposed to
/// `cluster::client::ClientError`, the control plane's own client of the manager socket).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The manager answered with an error status; printed exactly as docker prints it.
    #[error("Error response from daemon: {0}")]
    Daemon(String),
    #[error(
        "cannot reach the manager of cluster {cluster:?} at {}: is the cluster up? (swarmkit cluster up --name {cluster})",
        socket.display()
    )]
    Unreachable { cluster: String, socket: PathBuf },
    #[error("talking to the manager of cluster {cluster:?}")]
    Transport {
        cluster: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A connection to one cluster's manager.
pub struct Api {
    pub docker: Docker,
    cluster: String,
    socket: PathBuf,
}

impl Api {
    pub fn connect(cluster: &str) -> Result<Api, ApiError> {
        let socket = ClusterPaths::new(cluster).live_manager_socket();
        let unreachable = || ApiError::Unreachable {
            cluster: cluster.to_string(),
            socket: socket.clone(),
        };
        if !socket.exists() {
            return Err(unreachable());
        }
        let docker =
            Docker::connect_with_unix(&socket.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
                .map_err(|_| unreachable())?;
        Ok(Api {
            docker,
            cluster: cluster.to_string(),
            socket,
        })
    }

    pub fn error(&self, err: bollard::errors::Error) -> ApiError {
        use bollard::errors::Error as E;
        match err {
            E::DockerResponseServerError { message, .. } => ApiError::Daemon(message),
            E::SocketNotFoundError(_) => self.unreachable(),
            other if is_connect_failure(&other) => self.unreachable(),
            other => ApiError::Transport {
                cluster: self.cluster.clone(),
                source: other,
            },
        }
    }

    fn unreachable(&self) -> ApiError {
        ApiError::Unreachable {
            cluster: self.cluster.clone(),
            socket: self.socket.clone(),
        }
    }
}

/// A stale socket file (manager crashed) refuses connections; that is "not up" too.
fn is_connect_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | NotFound | ConnectionReset) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// `.api(&api)?` turns a bollard result into one whose error prints like docker's.
pub trait ApiResult<T> {
    fn api(self, api: &Api) -> Result<T, ApiError>;
}

impl<T> ApiResult<T> for Result<T, bollard::errors::Error> {
    fn api(self, api: &Api) -> Result<T, ApiError> {
        self.map_err(|e| api.error(e))
    }
}

/// Daemon errors print exactly like docker's; anything else prints its whole cause chain.
pub fn print_error(err: &anyhow::Error) {
    if let Some(e @ ApiError::Daemon(_)) = err.downcast_ref() {
        eprintln!("{e}");
        return;
    }
    eprintln!("Error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// A node's hostname, as docker's tables show it (empty when the node did not report one).
pub fn hostname(n: &Node) -> String {
    n.description
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .unwrap_or_default()
}
