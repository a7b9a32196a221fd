//! The manager: owns the store, serves the Docker Engine API subset to clients (local root on
//! a 0600 unix socket, remote clients in mutual TLS) and the agent channel to agents (mutual
//! TLS only, on listeners that serve nothing else).
//!
//! This file only routes and serves. `shared` holds the state every handler shares (the
//! store, the dispatcher, acks, `logstore`) and `config` what the environment sets; the
//! handlers, one file per resource (`networks`, `services`, `tasks`, `nodes`, `system`,
//! `images` for image references, their digests and registry credentials, `logs`,
//! `rotation`, `agents` for the agents' channel and liveness, and `trust` for the CA,
//! certificates, tokens and who a request's certificate proves, and `replicas` for the Raft
//! routes between managers), and the background loops
//! (`updater`, `rotation::run`, `agents::watch_liveness`) use them, with `error`, `extract`
//! and `lookup` for answering like dockerd. Handlers import `shared` and those helpers, never
//! this file; one handler file uses another's only for a shape or a constant (`tasks` ->
//! `services` for ports, `nodes` -> `system` for the engine version), except `stacks`, whose
//! dry run of a stack deploy calls the create and update functions of `networks`,
//! `payloads` and `services` so that their validation lives in one place.

mod agents;
mod config;
mod containers;
mod error;
mod exec;
mod execstore;
mod extract;
mod images;
pub mod listen;
mod logs;
mod logstore;
mod lookup;
mod networks;
mod nodes;
mod options;
mod payloads;
mod promotion;
pub mod replicas;
mod rotation;
mod services;
mod shared;
mod stacks;
mod system;
mod tasks;
mod tls;
mod trust;
mod updater;

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};

pub use config::{
    ENV_CERT_EXPIRY_SECS, ENV_DATA_PATH_PORT, ENV_HEARTBEAT_MISSES, ENV_HEARTBEAT_MS,
    ENV_KEY_ROTATION_SECS, ENV_MANAGER_NODES, Heartbeat,
};
pub use error::{ApiError, ApiResult};
pub use nodes::{DATAPLANE_LABEL, LB_DRIVER_LABEL};
pub use rotation::KeyStatus;
pub use shared::{Manager, Replication, Shared};
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
        .route("/swarm/update", post(trust::swarm_update))
        .route("/swarmkit/v1/client-cert", post(trust::client_cert))
        .route("/distribution/{*name}", get(images::distribution))
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
        .route("/secrets", get(payloads::secrets))
        .route("/secrets/create", post(payloads::secret_create))
        .route(
            "/secrets/{id}",
            get(payloads::secret_inspect).delete(payloads::secret_remove),
        )
        .route("/secrets/{id}/update", post(payloads::secret_update))
        .route("/configs", get(payloads::configs))
        .route("/configs/create", post(payloads::config_create))
        .route(
            "/configs/{id}",
            get(payloads::config_inspect).delete(payloads::config_remove),
        )
        .route("/configs/{id}/update", post(payloads::config_update))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::inspect))
        .route("/tasks/{id}/logs", get(logs::task_logs))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{id}/update", post(nodes::update))
        .route("/swarmkit/v1/agents", get(agents::status))
        .route(replicas::REPLICA_STATUS, get(replicas::replica_status))
        .route(replicas::LEADS, get(replicas::leads))
        .route(
            "/swarmkit/v1/networks/{id}/rotate-key",
            post(rotation::rotate),
        )
        .route("/swarmkit/v1/networks/{id}/keys", get(rotation::keys))
        .route("/swarmkit/v1/stacks/check", post(stacks::check))
        .fallback(system::page_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(axum::middleware::from_fn(extract::json_errors))
        .with_state(m)
}

/// The agent channel, and nothing else: what the agents' listeners serve (mutual TLS, the
/// node known by its certificate). The Engine API and the admin routes are not here at all.
pub fn agent_router(m: Shared) -> Router {
    use crate::protocol::{EXECS, JOIN, LOGS, MANAGER_JOIN, PLAN, REGISTER, RENEW, REPORT};
    Router::new()
        .route(JOIN, post(trust::join))
        .route(REGISTER, post(agents::register))
        .route(RENEW, post(trust::renew))
        .route(PLAN, get(agents::plan))
        .route(REPORT, post(agents::report))
        .route(LOGS, post(logs::push))
        .route(MANAGER_JOIN, post(promotion::join))
        .route(EXECS, get(exec::poll))
        .route(&format!("{EXECS}/{{session}}"), post(exec::attach))
        .fallback(agent_listener_only)
        .layer(axum::extract::DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(axum::middleware::from_fn(extract::json_errors))
        .with_state(m)
}

async fn agent_listener_only() -> ApiError {
    ApiError::NotFound(
        "page not found: this listener serves only the agents' channel; the Engine API is on \
         the manager's unix socket, or over TLS with swarmkit cluster env --tls"
            .into(),
    )
}

/// Serves the Engine API to local root on `socket` (0600) and to remote clients with a
/// client certificate on the loopback TLS port the store records (`cluster env --tls`), and
/// the agent channel in mutual TLS on `agents.sock` beside `socket` (where SSH forwards end)
/// and on `underlay` when given: agents whose control channel must cross the cluster's
/// underlay (so that cutting a node's link really cuts it off) dial that TCP listener.
pub async fn serve(
    m: Shared,
    socket: &Path,
    underlay: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    use tower::Layer;
    listen::raise_open_files();
    let local = bind_private(socket)?;
    let agents_sock = bind_private(&socket.with_file_name(AGENT_SOCKET))?;
    let clients = bind_clients(&m).await?;
    // A follower hands what it is asked to the leader.
    let writes_to_leader = axum::middleware::from_fn_with_state(m.clone(), replicas::to_leader);
    let api = axum::middleware::map_request(strip_version)
        .layer(router(m.clone()).layer(writes_to_leader.clone()));
    let remote_api = axum::middleware::map_request(strip_version).layer(
        router(m.clone())
            .layer(writes_to_leader)
            .layer(axum::middleware::from_fn_with_state(
                m.clone(),
                trust::api_caller,
            )),
    );
    let mut agent_app = agent_router(m.clone()).layer(axum::middleware::from_fn_with_state(
        m.clone(),
        replicas::agents_to_leader,
    ));
    if let Some(replica) = &m.replica {
        let cluster_id = m.store.snapshot().meta.cluster_id.clone();
        let replayed = axum::middleware::map_request(strip_version).layer(router(m.clone()));
        agent_app = agent_app
            .merge(replicas::routes(
                replica.clone(),
                m.store.clone(),
                &cluster_id,
            ))
            .merge(replicas::forwarded(
                Router::new().fallback_service(replayed),
                &cluster_id,
            ));
    }
    // What decides is the leader's alone.
    tokio::spawn(m.clone().while_leading(agents::watch_liveness));
    tokio::spawn(m.clone().while_leading(rotation::run));
    tokio::spawn(m.clone().while_leading(updater::run));
    tokio::spawn(m.clone().while_leading(promotion::reconcile));
    tokio::spawn(trust::renew_own(m.clone()));
    tokio::spawn(containers::serve_nodes(
        m.clone(),
        containers::sockets_dir(socket),
    ));
    let limits = listen::Limits::default();
    let mut served = tokio::task::JoinSet::new();
    served.spawn(listen::serve(local, api, None, limits));
    served.spawn(listen::serve(
        clients,
        remote_api,
        Some(m.tls.clients()),
        limits,
    ));
    served.spawn(listen::serve(
        agents_sock,
        agent_app.clone(),
        Some(m.tls.agents()),
        limits,
    ));
    if let Some(tcp) = underlay {
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        served.spawn(listen::serve(tcp, agent_app, Some(m.tls.agents()), limits));
    }
    served.join_next().await;
    Ok(())
}

/// The agents' unix socket's name, beside the manager's (see `ClusterPaths::agent_socket`).
const AGENT_SOCKET: &str = "agents.sock";

fn bind_private(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The clients' TLS listener on the loopback port the store records; if something else took
/// that port while the manager was down, another one, recorded (`cluster env --tls` prints
/// it again).
async fn bind_clients(m: &Shared) -> anyhow::Result<tokio::net::TcpListener> {
    let port = m.store.snapshot().meta.client_port;
    if let Ok(l) = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await {
        return Ok(l);
    }
    let l = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let port = l.local_addr()?.port();
    tracing::warn!("the clients' port was taken; listening on 127.0.0.1:{port} instead");
    if m.replica.is_some() {
        // The recorded port is the managers' shared setting (another manager on this
        // machine may hold it): not this one's to change.
        return Ok(l);
    }
    m.update(|s| {
        let mut meta = s.meta.clone();
        meta.client_port = port;
        s.put_meta(meta);
        Ok(())
    })?;
    Ok(l)
}
