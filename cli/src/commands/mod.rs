//! The subcommands. Each talks to the cluster's manager through the Docker Engine API and
//! renders what it gets back; the manager does all validation.

pub mod cluster;
pub mod exec;
pub mod network;
pub mod node;
pub mod service;
mod service_logs;
mod service_policy;
mod service_ps;
mod service_update;
pub mod vm;

use std::path::PathBuf;

use ::cluster::paths::ClusterPaths;
use bollard::Docker;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
    pub fn connect(cluster: &str) -> Result<Api, ClientError> {
        let socket = ClusterPaths::new(cluster).manager_socket();
        let unreachable = || ClientError::Unreachable {
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

    pub fn error(&self, err: bollard::errors::Error) -> ClientError {
        use bollard::errors::Error as E;
        match err {
            E::DockerResponseServerError { message, .. } => ClientError::Daemon(message),
            E::SocketNotFoundError(_) => self.unreachable(),
            other if is_connect_failure(&other) => self.unreachable(),
            other => ClientError::Transport {
                cluster: self.cluster.clone(),
                source: other,
            },
        }
    }

    fn unreachable(&self) -> ClientError {
        ClientError::Unreachable {
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
    fn api(self, api: &Api) -> Result<T, ClientError>;
}

impl<T> ApiResult<T> for Result<T, bollard::errors::Error> {
    fn api(self, api: &Api) -> Result<T, ClientError> {
        self.map_err(|e| api.error(e))
    }
}

/// Runs `op` for each name, printing what it returns and each error as docker does for
/// `rm` and friends: keep going, report every failure, exit 1 if any failed.
pub async fn for_each_name<F, Fut>(names: &[String], mut op: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let mut code = 0;
    for name in names {
        match op(name.clone()).await {
            Ok(line) => println!("{line}"),
            Err(err) => {
                crate::print_error(&err);
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Prints an inspect array for the objects found and an error line for each name that was
/// not, like `docker inspect`.
pub fn print_inspect<T: serde::Serialize>(
    found: &[T],
    errors: Vec<ClientError>,
    format: &crate::render::Format,
) -> anyhow::Result<i32> {
    match format {
        crate::render::Format::Template { text, .. } => {
            for item in found {
                let line = crate::template::render(text, &serde_json::to_value(item)?)?;
                println!("{line}");
            }
        }
        _ => print!("{}", crate::render::inspect_json(found)?),
    }
    let code = if errors.is_empty() { 0 } else { 1 };
    for err in errors {
        crate::print_error(&err.into());
    }
    Ok(code)
}

/// One `--filter KEY=VALUE`; the manager checks the keys, as dockerd does.
pub fn parse_filter(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "bad format of filter {s:?} (expected name=value), e.g. --filter name=web"
        )),
    }
}

/// `--filter` flags as the API's `filters` parameter: values of one key are alternatives.
pub fn filters(
    list: &[(String, String)],
) -> Option<std::collections::HashMap<String, Vec<String>>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (k, v) in list {
        out.entry(k.clone()).or_default().push(v.clone());
    }
    (!out.is_empty()).then_some(out)
}
