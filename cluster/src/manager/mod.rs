//! The manager: owns the store, serves the Docker Engine API subset to clients and the plan
//! channel to agents, over HTTP on a unix socket (mode 0600).

mod agents;
mod error;
mod extract;
mod logs;
mod lookup;
mod networks;
mod nodes;
mod rotation;
mod services;
mod system;
mod tasks;
mod updater;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use tokio::sync::watch;

pub use agents::{ENV_HEARTBEAT_MISSES, ENV_HEARTBEAT_MS, Heartbeat};
pub use error::{ApiError, ApiResult};
pub use nodes::{DATAPLANE_LABEL, LB_DRIVER_LABEL};
pub use rotation::KeyStatus;

use crate::dispatch::Dispatcher;
use crate::model::{Meta, Network};
use crate::store::{State, Store};

/// Docker API version we speak (the 28.x CLI's).
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";
pub const ENGINE_VERSION: &str = concat!("swarmkit-", env!("CARGO_PKG_VERSION"));

pub struct Manager {
    pub store: Store,
    /// Every node's plan, kept up to date from the store's commits, and the agents' acks.
    dispatch: Mutex<Dispatcher>,
    /// What tasks printed, as their agents pushed it.
    logs: logs::Logs,
    /// Bumped on every commit and whenever the lowest ack moves (for the updater).
    epoch: watch::Sender<u64>,
    /// When each node's agent last talked to us.
    last_seen: Mutex<HashMap<String, Instant>>,
    pub heartbeat: agents::Heartbeat,
    started: Instant,
}

pub type Shared = Arc<Manager>;

impl Manager {
    pub fn open(cluster: &str, path: &Path) -> anyhow::Result<Shared> {
        let store = Store::open(path)?;
        let heartbeat = agents::Heartbeat::of(&store.snapshot().meta)?;
        let dispatch = Mutex::new(Dispatcher::new(store.snapshot(), 0));
        let m = Arc::new(Manager {
            store,
            dispatch,
            logs: Default::default(),
            epoch: watch::channel(0).0,
            last_seen: Mutex::new(HashMap::new()),
            heartbeat,
            started: Instant::now(),
        });
        m.initialise(cluster)?;
        m.dispatch().assume_applied_before_restart();
        Ok(m)
    }

    fn initialise(&self, cluster: &str) -> Result<(), ApiError> {
        // Nodes keep their state across a manager restart: their agents get a grace period
        // to reconnect (see agents::watch_liveness) before anything is rescheduled.
        self.store.update(|s: &mut State| {
            if s.meta.cluster_id.is_empty() {
                let mut local = std::collections::BTreeMap::new();
                for name in ["bridge", "docker_gwbridge", "host", "none"] {
                    local.insert(name.to_string(), crate::ids::new_hex_id());
                }
                s.put_meta(Meta {
                    cluster_id: crate::ids::new_id(),
                    cluster_name: cluster.to_string(),
                    created: Some(chrono::Utc::now()),
                    local_networks: local,
                    next_fwmark: 256,
                    ..settings_from_env()
                });
            }
            if !s.networks.values().any(|n| n.ingress) {
                let subnet = crate::ipam::INGRESS_SUBNET.parse().expect("constant");
                s.put_network(Network {
                    id: crate::ids::new_id(),
                    name: "ingress".into(),
                    created: chrono::Utc::now(),
                    version: 0,
                    subnet,
                    gateway: "10.255.0.1".parse().expect("constant"),
                    vni: crate::ipam::INGRESS_VNI,
                    attachable: false,
                    ingress: true,
                    labels: Default::default(),
                    options: Default::default(),
                    keyring: None,
                });
            }
            Ok::<_, ApiError>(())
        })?;
        drop(self.dispatch());
        Ok(())
    }

    /// The dispatcher, brought up to the store's latest commit.
    fn dispatch(&self) -> MutexGuard<'_, Dispatcher> {
        let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        d.advance(self.store.snapshot());
        d
    }

    /// The plan version a node last reported applied (0: none yet).
    pub fn ack_of(&self, node_id: &str) -> u64 {
        self.dispatch().ack_of(node_id)
    }

    /// The lowest store version every ready node's dataplane reflects.
    pub fn min_ack(&self, _state: &State) -> u64 {
        self.dispatch().min_ack()
    }

    pub fn set_ack(&self, node_id: &str, version: u64, digest: Option<u64>) {
        let mut d = self.dispatch();
        let before = d.min_ack();
        d.ack(node_id, version, digest);
        if d.min_ack() != before {
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    pub fn touch(&self, node_id: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), Instant::now());
    }

    pub fn last_seen(&self, node_id: &str) -> Option<Instant> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Commits through the store and hands the change to the dispatcher, which wakes the
    /// agents whose plans it changed.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let out = tokio::task::block_in_place(|| {
            let out = self.store.update(f)?;
            drop(self.dispatch());
            Ok::<_, ApiError>(out)
        })?;
        self.epoch.send_modify(|e| *e += 1);
        Ok(out)
    }
}

/// Environment `cluster up` passes to a new cluster's manager: its data-path settings,
/// recorded in the store's Meta when the cluster is created.
pub const ENV_DATA_PATH_PORT: &str = "SWARMKIT_DATA_PATH_PORT";
pub const ENV_KEY_ROTATION_SECS: &str = "SWARMKIT_KEY_ROTATION_SECS";

fn settings_from_env() -> Meta {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    Meta {
        data_path_port: num(ENV_DATA_PATH_PORT)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        key_rotation_secs: num(ENV_KEY_ROTATION_SECS).unwrap_or(0),
        heartbeat_ms: num(agents::ENV_HEARTBEAT_MS).unwrap_or(0),
        heartbeat_misses: num(agents::ENV_HEARTBEAT_MISSES).unwrap_or(0),
        ..Default::default()
    }
}

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
        .layer(axum::middleware::from_fn(error::json_errors))
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
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let app = axum::middleware::map_request(strip_version).layer(router(m.clone()));
    tokio::spawn(agents::watch_liveness(m.clone()));
    tokio::spawn(rotation::run(m.clone()));
    tokio::spawn(updater::run(m));
    let unix = axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(app.clone()),
    );
    match underlay {
        None => unix.await?,
        Some(tcp) => {
            tcp.set_nonblocking(true)?;
            let tcp = axum::serve(
                tokio::net::TcpListener::from_std(tcp)?,
                axum::ServiceExt::<Request>::into_make_service(app),
            );
            tokio::try_join!(unix.into_future(), tcp.into_future())?;
        }
    }
    Ok(())
}
