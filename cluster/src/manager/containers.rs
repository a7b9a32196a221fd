//! Each node's own Docker API, as `docker ps` on a Swarm node answers it: the tasks placed
//! on the node as containers (named `service.slot.task-id`, with the `com.docker.swarm.*`
//! labels docker sets), `docker inspect`, `docker logs` and `docker system df`, read from
//! the manager's store and log store. Served on `nodes/<hostname>.sock` in the cluster's run
//! directory (0600 in the 0700 directory), one per node, made and removed as nodes come and
//! go: `DOCKER_HOST=unix:///run/swarmkit/<cluster>/nodes/node1.sock docker ps`. Read-only;
//! anything else is refused with where to go instead.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use bollard::models::{
    ContainerSummary, ContainerSummaryNetworkSettings, ContainerSummaryStateEnum, EndpointSettings,
    PortSummary, PortSummaryTypeEnum,
};
use chrono::Utc;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use super::logs::LogsQuery;
use super::lookup::{Field, Filters};
use super::shared::Shared;
use crate::model::{Task, TaskState, Time};
use crate::store::State as StoreState;

#[derive(Clone)]
struct NodeView {
    m: Shared,
    node_id: String,
}

/// The container docker would show for a task: its name, state and labels.
fn container_name(s: &StoreState, t: &Task) -> String {
    s.services.get(&t.service_id).map_or_else(
        || format!("gone.{}.{}", t.slot, t.id),
        |svc| svc.container_name(t),
    )
}

fn state_of(t: &Task) -> ContainerSummaryStateEnum {
    match t.status.state {
        TaskState::Running => ContainerSummaryStateEnum::RUNNING,
        TaskState::Complete
        | TaskState::Failed
        | TaskState::Shutdown
        | TaskState::Rejected
        | TaskState::Orphaned => ContainerSummaryStateEnum::EXITED,
        _ => ContainerSummaryStateEnum::CREATED,
    }
}

/// docker's `Status` column: "Up 3 minutes", "Exited (1) 2 seconds ago", "Created".
fn status_text(t: &Task, now: Time) -> String {
    let since = human(now - t.status.timestamp);
    match state_of(t) {
        ContainerSummaryStateEnum::RUNNING => format!("Up {since}"),
        ContainerSummaryStateEnum::EXITED => format!(
            "Exited ({}) {since} ago",
            t.status
                .exit_code
                .unwrap_or(if t.status.state == TaskState::Complete {
                    0
                } else {
                    137
                })
        ),
        _ => "Created".into(),
    }
}

/// docker's go-units HumanDuration, to the precision its tables show.
fn human(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 2 * 3600 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

fn labels(s: &StoreState, t: &Task) -> HashMap<String, String> {
    let mut l = HashMap::new();
    if let Some(svc) = s.services.get(&t.service_id) {
        if let Some(c) = svc
            .spec
            .task_template
            .as_ref()
            .and_then(|tt| tt.container_spec.as_ref())
        {
            l.extend(c.labels.clone().unwrap_or_default());
        }
        if let Some(stack) = svc
            .spec
            .labels
            .as_ref()
            .and_then(|x| x.get("com.docker.stack.namespace"))
        {
            l.insert("com.docker.stack.namespace".into(), stack.clone());
        }
        l.insert("com.docker.swarm.service.name".into(), svc.name.clone());
    }
    l.insert("com.docker.swarm.node.id".into(), t.node_id.clone());
    l.insert("com.docker.swarm.service.id".into(), t.service_id.clone());
    l.insert("com.docker.swarm.task".into(), String::new());
    l.insert("com.docker.swarm.task.id".into(), t.id.clone());
    l.insert("com.docker.swarm.task.name".into(), container_name(s, t));
    l
}

fn networks(s: &StoreState, t: &Task) -> HashMap<String, EndpointSettings> {
    t.attachments
        .iter()
        .filter_map(|a| {
            let n = s.networks.get(&a.network_id)?;
            Some((
                n.name.clone(),
                EndpointSettings {
                    network_id: Some(n.id.clone()),
                    ip_address: Some(a.addr.addr().to_string()),
                    ip_prefix_len: Some(a.addr.prefix_len() as i64),
                    ..Default::default()
                },
            ))
        })
        .collect()
}

/// Host-mode published ports of a running task: what `docker ps` on the node shows (the
/// routing mesh's ports belong to no one container, as in docker).
fn ports(s: &StoreState, t: &Task) -> Vec<PortSummary> {
    if t.status.state != TaskState::Running {
        return Vec::new();
    }
    s.services
        .get(&t.service_id)
        .into_iter()
        .flat_map(|svc| svc.ports.iter())
        .filter(|p| p.mode == crate::model::PublishMode::Host)
        .map(|p| PortSummary {
            ip: Some("0.0.0.0".into()),
            private_port: p.target,
            public_port: Some(p.published),
            typ: Some(match p.protocol {
                crate::model::Protocol::Tcp => PortSummaryTypeEnum::TCP,
                crate::model::Protocol::Udp => PortSummaryTypeEnum::UDP,
            }),
        })
        .collect()
}

fn command(s: &StoreState, t: &Task) -> String {
    let c = s
        .services
        .get(&t.service_id)
        .and_then(|svc| svc.spec.task_template.as_ref())
        .and_then(|tt| tt.container_spec.as_ref());
    let mut argv: Vec<String> = c.and_then(|c| c.command.clone()).unwrap_or_default();
    argv.extend(c.and_then(|c| c.args.clone()).unwrap_or_default());
    argv.join(" ")
}

fn summary(s: &StoreState, t: &Task, now: Time) -> ContainerSummary {
    let image = s
        .services
        .get(&t.service_id)
        .map(|svc| svc.image())
        .unwrap_or_default();
    ContainerSummary {
        id: Some(t.id.clone()),
        names: Some(vec![format!("/{}", container_name(s, t))]),
        image: Some(image),
        command: Some(command(s, t)),
        created: Some(t.created.timestamp()),
        labels: Some(labels(s, t)),
        state: Some(state_of(t)),
        status: Some(status_text(t, now)),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(networks(s, t)),
        }),
        ports: Some(ports(s, t)),
        mounts: Some(Vec::new()),
        ..Default::default()
    }
}

/// The node's tasks that are or were containers there (not the ones still waiting for it).
fn containers<'a>(s: &'a StoreState, node_id: &str) -> Vec<&'a Task> {
    let mut ts: Vec<&Task> = s
        .tasks
        .values()
        .filter(|t| t.node_id == node_id && t.status.state >= TaskState::Starting)
        .collect();
    ts.sort_by_key(|t| std::cmp::Reverse(t.created));
    ts
}

fn find<'a>(s: &'a StoreState, node_id: &str, key: &str) -> ApiResult<&'a Task> {
    let key = key.trim_start_matches('/');
    let mine = containers(s, node_id);
    if let Some(t) = mine
        .iter()
        .find(|t| t.id == key || container_name(s, t) == key)
    {
        return Ok(t);
    }
    let mut prefixed = mine
        .iter()
        .filter(|t| !key.is_empty() && t.id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some(t), None) => Ok(t),
        (Some(_), Some(_)) => Err(ApiError::NotFound(format!(
            "container {key} is ambiguous: give more of its ID"
        ))),
        _ => Err(ApiError::NotFound(format!(
            "No such container: {key} (this node's socket shows the tasks placed on it)"
        ))),
    }
}

#[derive(Deserialize, Default)]
struct ListQuery {
    all: Option<String>,
    filters: Option<String>,
}

async fn list(
    State(v): State<NodeView>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ContainerSummary>>> {
    let all = matches!(q.all.as_deref(), Some("1") | Some("true") | Some("True"));
    let filters = Filters::parse(
        q.filters.as_deref(),
        &["id", "name", "label", "status", "is-task"],
    )?;
    let s = v.m.store.snapshot();
    let now = Utc::now();
    Ok(Json(
        containers(&s, &v.node_id)
            .into_iter()
            .map(|t| summary(&s, t, now))
            .filter(|c| all || c.state == Some(ContainerSummaryStateEnum::RUNNING))
            .filter(|c| {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .cloned()
                    .unwrap_or_default();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                filters.matches(|k| match k {
                    "id" => Field::Prefix(c.id.clone().unwrap_or_default().into()),
                    "name" => Field::Test(Box::new({
                        let name = name.clone();
                        move |want: &str| name.trim_start_matches('/').contains(want)
                    })),
                    "label" => Field::Labels(c.labels.as_ref()),
                    "status" => Field::Exact(state.clone().into()),
                    "is-task" => Field::Exact("true".into()),
                    _ => Field::Any,
                })
            })
            .collect(),
    ))
}

async fn inspect(
    State(v): State<NodeView>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = v.m.store.snapshot();
    let t = find(&s, &v.node_id, &id)?;
    let svc = s.services.get(&t.service_id);
    let c = svc
        .and_then(|svc| svc.spec.task_template.as_ref())
        .and_then(|tt| tt.container_spec.clone())
        .unwrap_or_default();
    let state = state_of(t);
    let running = state == ContainerSummaryStateEnum::RUNNING;
    let argv: Vec<String> = command(&s, t)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let when = |x: Time| x.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    Ok(Json(serde_json::json!({
        "Id": t.id,
        "Created": when(t.created),
        "Path": argv.first().cloned().unwrap_or_default(),
        "Args": argv.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": state.to_string(),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": if running { t.status.pid.unwrap_or(0) } else { 0 },
            "ExitCode": t.status.exit_code.unwrap_or(0),
            "Error": t.status.err.clone().unwrap_or_default(),
            "StartedAt": when(t.created),
            "FinishedAt": if running { "0001-01-01T00:00:00Z".to_string() } else { when(t.status.timestamp) },
        },
        "Image": svc.map(|x| x.image()).unwrap_or_default(),
        "Name": format!("/{}", container_name(&s, t)),
        "RestartCount": 0,
        "Driver": "swarmkit",
        "Platform": "linux",
        "Config": {
            "Hostname": svc
                .map(|svc| crate::dispatch::hostname_of(&s, svc, &c, t))
                .unwrap_or_default(),
            "User": c.user.clone().unwrap_or_default(),
            "Env": c.env.clone().unwrap_or_default(),
            "Cmd": argv,
            "Image": svc.map(|x| x.image()).unwrap_or_default(),
            "WorkingDir": c.dir.clone().unwrap_or_default(),
            "Labels": labels(&s, t),
        },
        "HostConfig": { "NetworkMode": "default" },
        "NetworkSettings": { "Networks": networks(&s, t) },
        "Mounts": [],
    })))
}

async fn logs(
    State(v): State<NodeView>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let task_id = {
        let s = v.m.store.snapshot();
        find(&s, &v.node_id, &id)?.id.clone()
    };
    super::logs::logs_of_task(v.m.clone(), task_id, &q).await
}

/// `docker system df`: the node's containers (its tasks); no images, volumes or build cache
/// are kept on a swarmkit node.
async fn disk_usage(State(v): State<NodeView>) -> ApiResult<Json<serde_json::Value>> {
    let s = v.m.store.snapshot();
    let now = Utc::now();
    let containers: Vec<ContainerSummary> = containers(&s, &v.node_id)
        .into_iter()
        .map(|t| ContainerSummary {
            size_rw: Some(0),
            size_root_fs: Some(0),
            ..summary(&s, t, now)
        })
        .collect();
    Ok(Json(serde_json::json!({
        "LayersSize": 0,
        "Images": [],
        "Containers": containers,
        "Volumes": [],
        "BuildCache": [],
    })))
}

/// The volumes the node's containers mount, as its local driver keeps them (made on a
/// task's first start there, kept after it).
fn volumes(s: &StoreState, node_id: &str) -> Vec<bollard::models::Volume> {
    use crate::plan::MountKind;
    use sha2::Digest;
    let hostname = s.nodes.get(node_id).map_or("", |n| n.hostname.as_str());
    let dir = crate::paths::ClusterPaths::new(&s.meta.cluster_name).node_volumes(hostname);
    let mut out: std::collections::BTreeMap<String, bollard::models::Volume> = Default::default();
    for t in containers(s, node_id) {
        let Some(container) = s
            .services
            .get(&t.service_id)
            .and_then(|svc| svc.spec.task_template.as_ref())
            .and_then(|tt| tt.container_spec.as_ref())
        else {
            continue;
        };
        let given: HashMap<&str, HashMap<String, String>> = container
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let labels = m.volume_options.as_ref().and_then(|v| v.labels.clone());
                Some((m.target.as_deref()?, labels.unwrap_or_default()))
            })
            .collect();
        let mounts = crate::plan::mounts_of(container).unwrap_or_default();
        for m in mounts.iter().filter(|m| m.kind == MountKind::Volume) {
            let name = if m.source.is_empty() {
                hex::encode(sha2::Sha256::digest(format!("{}\0{}", t.id, m.target)))
            } else {
                m.source.clone()
            };
            let created = t.created;
            let entry = out
                .entry(name.clone())
                .or_insert_with(|| bollard::models::Volume {
                    name: name.clone(),
                    driver: "local".into(),
                    mountpoint: dir.join(&name).join("_data").display().to_string(),
                    created_at: Some(created),
                    labels: given.get(m.target.as_str()).cloned().unwrap_or_default(),
                    scope: Some(bollard::models::VolumeScopeEnum::LOCAL),
                    options: HashMap::new(),
                    ..Default::default()
                });
            if entry.created_at.as_ref().is_some_and(|c| *c > created) {
                entry.created_at = Some(created);
            }
        }
    }
    out.into_values().collect()
}

async fn volume_list(
    State(v): State<NodeView>,
) -> ApiResult<Json<bollard::models::VolumeListResponse>> {
    let s = v.m.store.snapshot();
    Ok(Json(bollard::models::VolumeListResponse {
        volumes: Some(volumes(&s, &v.node_id)),
        warnings: Some(vec![]),
    }))
}

async fn volume_inspect(
    State(v): State<NodeView>,
    Path(name): Path<String>,
) -> ApiResult<Json<bollard::models::Volume>> {
    let s = v.m.store.snapshot();
    volumes(&s, &v.node_id)
        .into_iter()
        .find(|vol| vol.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("get {name}: no such volume")))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ExecConfig {
    #[serde(default)]
    attach_stdin: bool,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    privileged: bool,
}

/// `POST /containers/{id}/exec`: an exec instance for a running task on this node.
async fn exec_create(
    State(v): State<NodeView>,
    Path(key): Path<String>,
    super::extract::Json(c): super::extract::Json<ExecConfig>,
) -> ApiResult<(axum::http::StatusCode, Json<serde_json::Value>)> {
    let argv = c.cmd.unwrap_or_default();
    if argv.is_empty() {
        return Err(ApiError::BadRequest(
            "no command given: docker exec CONTAINER COMMAND [ARG...]".into(),
        ));
    }
    let refused: Vec<&str> = [
        (c.tty, "-t"),
        (c.user.as_deref().is_some_and(|u| !u.is_empty()), "-u"),
        (
            c.working_dir.as_deref().is_some_and(|w| !w.is_empty()),
            "-w",
        ),
        (c.privileged, "--privileged"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    if !refused.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "swarmkit's docker exec does not do {} yet: leave {} out (the command runs as the \
             task's user, in its working directory)",
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "them" }
        )));
    }
    let s = v.m.store.snapshot();
    let t = find(&s, &v.node_id, &key)?;
    if t.status.state != TaskState::Running {
        return Err(ApiError::Conflict(format!(
            "container {} is not running ({})",
            container_name(&s, t),
            t.status.state.as_str()
        )));
    }
    let id = v.m.execs.create(
        &v.node_id,
        &t.id,
        argv,
        c.env.unwrap_or_default(),
        c.attach_stdin,
    );
    Ok((
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({ "Id": id })),
    ))
}

async fn exec_start(
    State(v): State<NodeView>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    super::exec::start(v.m.clone(), &v.node_id, id, req).await
}

async fn exec_inspect(
    State(v): State<NodeView>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    super::exec::inspect(&v.m, &v.node_id, &id).map(Json)
}

async fn refused() -> ApiError {
    ApiError::NotFound(
        "a node's socket answers docker ps, inspect, logs, exec, system df and volume ls for the tasks on that \
         node; drive the cluster through the manager (DOCKER_HOST=unix:///run/swarmkit/<cluster>/manager.sock)"
            .into(),
    )
}

fn router(m: Shared, node_id: String) -> Router {
    Router::new()
        .route("/_ping", get(super::system::ping).head(super::system::ping))
        .route("/version", get(super::system::version))
        .route("/containers/json", get(list))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/logs", get(logs))
        .route("/system/df", get(disk_usage))
        .route("/containers/{id}/exec", axum::routing::post(exec_create))
        .route("/exec/{id}/start", axum::routing::post(exec_start))
        .route("/exec/{id}/json", get(exec_inspect))
        .route("/volumes", get(volume_list))
        .route("/volumes/{name}", get(volume_inspect))
        .fallback(refused)
        .with_state(NodeView { m, node_id })
}

/// The directory of the nodes' sockets, beside the manager's (see
/// `ClusterPaths::node_docker_socket`).
pub fn sockets_dir(manager_socket: &FsPath) -> PathBuf {
    manager_socket.with_file_name("nodes")
}

/// Keeps one socket per node hostname in `dir`, following the store: a node that registers
/// gets one (a hostname registered again by a new node is handed to the newest), a removed
/// node's goes.
pub async fn serve_nodes(m: Shared, dir: PathBuf) {
    use tower::Layer;
    if let Err(e) = crate::paths::create_private_dir(&dir) {
        tracing::warn!("no per-node Docker sockets: {}: {e}", dir.display());
        return;
    }
    let mut changed = m.store.subscribe();
    // Hostname -> the node served there, and its server.
    let mut served: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let s = m.store.snapshot();
        let mut newest: HashMap<&str, &crate::model::Node> = HashMap::new();
        for n in s.nodes.values() {
            let e = newest.entry(n.hostname.as_str()).or_insert(n);
            if n.created > e.created {
                *e = n;
            }
        }
        served.retain(|hostname, (id, task)| {
            let keep = newest.get(hostname.as_str()).is_some_and(|n| &n.id == id);
            if !keep {
                task.abort();
                if !newest.contains_key(hostname.as_str()) {
                    let _ = std::fs::remove_file(dir.join(format!("{hostname}.sock")));
                }
            }
            keep
        });
        for (hostname, n) in newest {
            if served.contains_key(hostname) {
                continue;
            }
            let path = dir.join(format!("{hostname}.sock"));
            match super::bind_private(&path) {
                Ok(listener) => {
                    let app = axum::middleware::map_request(super::strip_version)
                        .layer(router(m.clone(), n.id.clone()));
                    let task = tokio::spawn(super::listen::serve(
                        listener,
                        app,
                        None,
                        super::listen::Limits::default(),
                    ));
                    served.insert(hostname.to_string(), (n.id.clone(), task));
                }
                Err(e) => tracing::warn!("{}: {e}", path.display()),
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}
