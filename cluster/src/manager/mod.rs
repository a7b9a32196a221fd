//! The manager: owns the store, serves the Docker Engine API subset to clients and the plan
//! channel to agents, over HTTP on a unix socket (mode 0600).
//!
//! This file only routes and serves. `shared` holds the state every handler shares (the
//! store, the dispatcher, acks, `logstore`) and `config` what the environment sets; the
//! handlers, one file per resource (`networks`, `services`, `tasks`, `nodes`, `system`,
//! `logs`, `rotation`, and `agents` for the agents' channel and liveness), and the background
//! loops (`updater`, `rotation::run`, `agents::watch_liveness`) use them, with `error`,
//! `extract` and `lookup` for answering like dockerd. Handlers import `shared` and those
//! helpers, never this file; one handler file uses another's only for a shape or a constant
//! (`tasks` -> `services` for ports, `nodes` -> `system` for the engine version).

mod agents;
mod config;
mod error;
mod extract;
pub mod listen;
mod logs;
mod logstore;
mod lookup;
mod networks;
mod nodes;
mod rotation;
mod services;
mod shared;
mod system;
mod tasks;
mod updater;

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};

pub use config::{
    ENV_DATA_PATH_PORT, ENV_HEARTBEAT_MISSES, ENV_HEARTBEAT_MS, ENV_KEY_ROTATION_SECS, Heartbeat,
};
pub use error::{ApiError, ApiResult};
pub use nodes::{DATAPLANE_LABEL, LB_DRIVER_LABEL};
pub use rotation::KeyStatus;
pub use shared::{Manager, Shared};
pub use system::{API_VERSION, ENGINE_VERSION, MIN_API_VERSION};

/// Docker clients prefix paths with `/v1.NN`; route on the rest.
async fn strip_version(mut req: Request) -> Request {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(slash) = rest.find('/')
        && rest[..slash]
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
    {
        let new_path = rest[slash..].to_string();
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

pub fn router(m: Shared) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/swarm", get(system::swarm))
        .route("/distribution/{*name}", get(system::distribution))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/services", get(services::list))
        .route("/services/create", post(services::create))
        .route(
            "/services/{id}",
            get(services::inspect).delete(services::remove),
        )
        .route("/services/{id}/update", post(services::update))
        .route("/services/{id}/logs", get(logs::service_logs))
        .route("/secrets", get(system::no_secrets))
        .route("/configs", get(system::no_secrets))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::inspect))
        .route("/tasks/{id}/logs", get(logs::task_logs))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{id}/update", post(nodes::update))
        .route("/swarmkit/v1/agents", get(agents::status))
        .route(
            "/swarmkit/v1/networks/{id}/rotate-key",
            post(rotation::rotate),
        )
        .route("/swarmkit/v1/networks/{id}/keys", get(rotation::keys))
        .route("/swarmkit/v1/agents/register", post(agents::register))
        .route("/swarmkit/v1/agents/{id}/plan", get(agents::plan))
        .route("/swarmkit/v1/agents/{id}/report", post(agents::report))
        .route(
            &format!("/swarmkit/v1/agents/{{id}}/{}", crate::tasklog::PUSH_PATH),
            post(logs::push),
        )
        .fallback(system::page_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(axum::middleware::from_fn(extract::json_errors))
        .with_state(m)
}

/// Serves the API on `socket` until the process is stopped, and on `underlay` too when given:
/// agents whose control channel must cross the cluster's underlay (so that cutting a node's
/// link really cuts it off) dial that TCP listener; clients keep the unix socket.
pub async fn serve(
    m: Shared,
    socket: &Path,
    underlay: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tower::Layer;
    listen::raise_open_files();
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let app = axum::middleware::map_request(strip_version).layer(router(m.clone()));
    tokio::spawn(agents::watch_liveness(m.clone()));
    tokio::spawn(rotation::run(m.clone()));
    tokio::spawn(updater::run(m));
    let limits = listen::Limits::default();
    let unix = listen::serve(listener, app.clone(), None, limits);
    match underlay {
        None => unix.await,
        Some(tcp) => {
            tcp.set_nonblocking(true)?;
            let tcp = listen::serve(tokio::net::TcpListener::from_std(tcp)?, app, None, limits);
            tokio::join!(unix, tcp);
        }
    }
    Ok(())
}
