//! `swarmkit ui`: a page on 127.0.0.1 showing the graph as it changes, with traces on
//! request. One loop reads the cluster from the manager every second and publishes a new
//! picture only when the cluster changed; pages poll it, so any number of viewers cost the
//! manager one request a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::graph::model::{self, Topology};
use crate::trace;

const PAGE: &str = include_str!("page.html");
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct UiArgs {
    /// Port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// What the page shows: the picture and the names in it, with a version that changes
/// exactly when the cluster does.
#[derive(Clone, Debug, Default, Serialize)]
struct Snapshot {
    version: u64,
    /// Set while the manager cannot be reached; the last good picture stays.
    error: Option<String>,
    svg: String,
    text: String,
    nodes: Vec<String>,
    /// Nodes the manager does not count as ready.
    down: Vec<String>,
    tasks: Vec<String>,
    #[serde(skip)]
    topology: Topology,
}

struct App {
    cluster: String,
    latest: watch::Receiver<Snapshot>,
    served: AtomicU64,
}

pub async fn run(cluster: &str, args: UiArgs) -> anyhow::Result<i32> {
    // Fail now, with the usual message, if the cluster is not up.
    let first = model::fetch(cluster).await?;
    let (tx, rx) = watch::channel(snapshot(first, 1));
    let app = Arc::new(App {
        cluster: cluster.to_string(),
        latest: rx,
        served: AtomicU64::new(0),
    });
    tokio::spawn(refresh(cluster.to_string(), tx));
    let router = Router::new()
        .route("/", get(page))
        .route("/graph", get(graph))
        .route("/graph.svg", get(graph_svg))
        .route("/trace", get(trace_route))
        .route("/status", get(status))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}: is the port taken?",
                args.port
            )
        })?;
    let addr = listener.local_addr()?;
    println!("swarmkit ui for cluster {cluster}: http://{addr}/  (Ctrl-C stops it)");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(0)
}

fn snapshot(t: Topology, version: u64) -> Snapshot {
    Snapshot {
        version,
        error: None,
        svg: crate::graph::svg::render(&t, None),
        text: crate::graph::text::text(&t),
        nodes: t.nodes.iter().map(|n| n.hostname.clone()).collect(),
        down: t
            .nodes
            .iter()
            .filter(|n| n.state != "ready")
            .map(|n| n.hostname.clone())
            .collect(),
        tasks: t.tasks().map(|x| x.name.clone()).collect(),
        topology: t,
    }
}

async fn refresh(cluster: String, tx: watch::Sender<Snapshot>) {
    let mut version = 1;
    loop {
        tokio::time::sleep(REFRESH).await;
        match model::fetch(&cluster).await {
            Ok(t) => {
                let changed = {
                    let cur = tx.borrow();
                    cur.topology != t || cur.error.is_some()
                };
                if changed {
                    version += 1;
                    let _ = tx.send(snapshot(t, version));
                }
            }
            Err(err) => {
                let msg = format!("{err:#}");
                tx.send_if_modified(|s| {
                    let new = Some(msg.clone());
                    let changed = s.error != new;
                    if changed {
                        version += 1;
                        s.version = version;
                        s.error = new;
                    }
                    changed
                });
            }
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn graph(State(app): State<Arc<App>>) -> Json<Snapshot> {
    app.served.fetch_add(1, Ordering::Relaxed);
    let mut s = app.latest.borrow().clone();
    s.topology = Topology::default();
    Json(s)
}

async fn graph_svg(State(app): State<Arc<App>>) -> Response {
    let svg = app.latest.borrow().svg.clone();
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

#[derive(Serialize)]
struct Status {
    cluster: String,
    version: u64,
    /// Graph requests served so far: how a test knows a page is watching.
    served: u64,
}

async fn status(State(app): State<Arc<App>>) -> Json<Status> {
    Json(Status {
        cluster: app.cluster.clone(),
        version: app.latest.borrow().version,
        served: app.served.load(Ordering::Relaxed),
    })
}

#[derive(Deserialize)]
struct TraceQuery {
    /// `node:NAME` or `task:NAME`
    from: String,
    target: String,
}

#[derive(Serialize)]
struct TraceAnswer {
    text: String,
    svg: String,
    replica: Option<String>,
}

async fn trace_route(State(app): State<Arc<App>>, Query(q): Query<TraceQuery>) -> Response {
    let from = match q.from.split_once(':') {
        Some(("node", n)) => trace::From::Node(n.to_string()),
        Some(("task", t)) => trace::From::Task(t.to_string()),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!("from={:?}: use node:NAME or task:NAME", q.from),
            )
                .into_response();
        }
    };
    let topo = app.latest.borrow().topology.clone();
    match trace::trace(&app.cluster, &topo, &from, &q.target, None).await {
        Ok(t) => Json(TraceAnswer {
            text: t.text(),
            svg: crate::graph::svg::render(&topo, Some(&t.overlay())),
            replica: t.replica.map(|r| r.name),
        })
        .into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err:#}")).into_response(),
    }
}
