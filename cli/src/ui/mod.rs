//! `swarmkit ui`: a page on 127.0.0.1 showing the graph as it changes, with traces on
//! request. One loop reads the cluster from the manager every second and publishes a new
//! picture only when the cluster changed; pages poll it, so any number of viewers cost the
//! manager one request a second.
//!
//! A page on loopback is still reachable from any web page the user opens, so the server
//! answers only requests addressed to itself (Host, against DNS rebinding) from itself
//! (Origin, against cross-site requests), and a trace, which runs commands on the nodes,
//! needs a POST carrying the token only the served page knows, one trace at a time.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use crate::graph::model::{self, Topology};
use crate::trace;

const PAGE: &str = include_str!("page.html");
const REFRESH: Duration = Duration::from_secs(1);
/// Where page.html takes the per-page token.
const TOKEN_SLOT: &str = "{{SWARMKIT_TOKEN}}";
/// The header the page sends its token in. A custom header also makes a cross-origin
/// browser ask first (a CORS preflight), which this server never grants.
const TOKEN_HEADER: &str = "x-swarmkit-token";

#[derive(Args, Debug)]
pub struct UiArgs {
    /// Port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub swarm: crate::reach::SwarmArgs,
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
    swarm: Arc<crate::reach::Swarm>,
    latest: watch::Receiver<Snapshot>,
    served: AtomicU64,
    /// The names this server answers to: `127.0.0.1:PORT` and `localhost:PORT`.
    hosts: Vec<String>,
    token: String,
    /// page.html with the token in it.
    page: String,
    /// Held while a trace runs: each one starts commands on the nodes, so they do not pile up.
    tracing: Mutex<()>,
}

impl App {
    fn new(
        swarm: Arc<crate::reach::Swarm>,
        latest: watch::Receiver<Snapshot>,
        port: u16,
        token: String,
    ) -> App {
        let mut hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        // A browser leaves the default port out of Host and Origin.
        if port == 80 {
            hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        }
        App {
            swarm,
            latest,
            served: AtomicU64::new(0),
            hosts,
            page: PAGE.replace(TOKEN_SLOT, &token),
            token,
            tracing: Mutex::new(()),
        }
    }
}

pub async fn run(cluster: &str, args: UiArgs) -> anyhow::Result<i32> {
    // Fail now, with the usual message, if the cluster is not up.
    let (first, swarm) = model::open(cluster, &args.swarm).await?;
    let swarm = Arc::new(swarm);
    let token = page_token()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}: is the port taken?",
                args.port
            )
        })?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(snapshot(first, 1));
    let app = Arc::new(App::new(swarm.clone(), rx, addr.port(), token));
    tokio::spawn(refresh(
        cluster.to_string(),
        args.swarm.clone(),
        swarm.clone(),
        tx,
    ));
    println!(
        "swarmkit ui for {}: http://{addr}/  (Ctrl-C stops it)",
        if swarm.is_docker() {
            format!("the Docker Swarm at {}", swarm.name)
        } else {
            format!("cluster {cluster}")
        }
    );
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(0)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/graph", get(graph))
        .route("/graph.svg", get(graph_svg))
        .route("/trace", post(trace_route))
        .route("/status", get(status))
        .layer(middleware::from_fn_with_state(app.clone(), same_origin))
        .with_state(app)
}

/// 32 bytes from the kernel's CSPRNG, in hex: the page's token.
fn page_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the page's token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a request not addressed to this listener by name (a DNS-rebound name points a
/// foreign page's requests here under its own origin) or sent from another origin's page.
async fn same_origin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // HTTP/2 carries the name in the URI instead of a Host header.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec());
    let host = match req.headers().get(header::HOST) {
        Some(h) => Some(h.as_bytes()),
        None => authority.as_deref(),
    };
    let origin = req.headers().get(header::ORIGIN).map(|o| o.as_bytes());
    match refusal(&app.hosts, host, origin) {
        Some(why) => (StatusCode::FORBIDDEN, why).into_response(),
        None => next.run(req).await,
    }
}

/// Why a request with this Host (or HTTP/2 authority) and Origin must be refused, if it must.
/// `hosts` are the names the server answers to; a page served under any of them is its own,
/// so its Origin is `http://` and one of them. Browsers send an Origin on every POST and
/// every cross-origin fetch; a request without one is at most a GET another site's page
/// made by a link or an embed, which changes nothing here and whose answer it cannot read.
fn refusal(hosts: &[String], host: Option<&[u8]>, origin: Option<&[u8]>) -> Option<String> {
    let ours = |name: &[u8]| {
        hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
    };
    if !host.is_some_and(ours) {
        let said = match host {
            Some(h) => format!("{:?}", String::from_utf8_lossy(h)),
            None => "no Host header".to_string(),
        };
        return Some(format!(
            "refused: swarmkit ui answers only requests addressed to {} (Host header), not {said}; \
             a foreign name that resolves to 127.0.0.1 is how a DNS-rebinding page reaches it\n",
            hosts.join(" or ")
        ));
    }
    let origin = origin?;
    let own = origin.strip_prefix(b"http://").is_some_and(ours);
    (!own).then(|| {
        format!(
            "refused: a request from origin {:?} (Origin header); swarmkit ui answers only its \
             own page, http://{}\n",
            String::from_utf8_lossy(origin),
            hosts[0]
        )
    })
}

/// Equal byte strings, in time that does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
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

async fn refresh(
    cluster: String,
    args: crate::reach::SwarmArgs,
    swarm: Arc<crate::reach::Swarm>,
    tx: watch::Sender<Snapshot>,
) {
    let mut version = 1;
    loop {
        tokio::time::sleep(REFRESH).await;
        match model::topology(&cluster, &args).await {
            Ok(mut t) => {
                swarm.set_tasks(t.containers());
                model::read_lb_endpoints(&mut t, &swarm).await;
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

async fn page(State(app): State<Arc<App>>) -> Response {
    (
        [
            // The page holds this run's token: a page kept from an earlier run has a stale one.
            (header::CACHE_CONTROL, "no-store"),
            // Framed by another site, the page's own trace button could be clicked for it.
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(app.page.clone()),
    )
        .into_response()
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
        cluster: app.swarm.name.clone(),
        version: app.latest.borrow().version,
        served: app.served.load(Ordering::Relaxed),
    })
}

#[derive(Deserialize)]
struct TraceRequest {
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

async fn trace_route(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let token_ok = headers
        .get(TOKEN_HEADER)
        .is_some_and(|t| same_secret(t.as_bytes(), app.token.as_bytes()));
    if !token_ok {
        return (
            StatusCode::FORBIDDEN,
            "refused: a trace needs the token of the page swarmkit ui serves \
             (header X-Swarmkit-Token); reload the page\n",
        )
            .into_response();
    }
    let q: TraceRequest = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON {{\"from\": \"node:NAME\", \
                     \"target\": \"HOST:PORT\"}}: {err}\n"
                ),
            )
                .into_response();
        }
    };
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
    // A second trace is refused at once rather than queued: a queued one would hold the
    // page's request open for as long as the running trace takes (up to its commands'
    // deadlines), and the user, seeing nothing, clicks again and queues more.
    let Ok(_running) = app.tracing.try_lock() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "a trace is already running (swarmkit ui runs one at a time); \
             try again when it has finished\n",
        )
            .into_response();
    };
    let topo = app.latest.borrow().topology.clone();
    match trace::trace(&app.swarm, &topo, &from, &q.target, None).await {
        Ok(t) => Json(TraceAnswer {
            text: t.text(),
            svg: crate::graph::svg::render(&topo, Some(&t.overlay())),
            replica: t.replica.map(|r| r.name),
        })
        .into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err:#}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["127.0.0.1:8080".into(), "localhost:8080".into()]
    }

    fn refused(host: Option<&str>, origin: Option<&str>) -> Option<String> {
        refusal(&hosts(), host.map(str::as_bytes), origin.map(str::as_bytes))
    }

    #[test]
    fn answers_its_own_names_on_its_own_port() {
        assert_eq!(refused(Some("127.0.0.1:8080"), None), None);
        assert_eq!(refused(Some("LocalHost:8080"), None), None);
    }

    #[test]
    fn refuses_a_foreign_or_missing_host() {
        for host in [
            "rebind.example:8080",
            "127.0.0.1:8081",
            "127.0.0.1",
            "localhost.:8080",
            "127.0.0.1:8080.evil.example",
            "",
        ] {
            let why = refused(Some(host), None).unwrap_or_else(|| panic!("{host:?} answered"));
            assert!(why.contains("Host header"), "{why}");
            assert!(why.contains(&format!("{host:?}")), "{why}");
        }
        let why = refused(None, None).expect("no Host refused");
        assert!(why.contains("no Host header"), "{why}");
    }

    #[test]
    fn takes_its_own_page_under_either_name_as_origin() {
        let host = Some("127.0.0.1:8080");
        assert_eq!(refused(host, Some("http://127.0.0.1:8080")), None);
        assert_eq!(refused(host, Some("http://localhost:8080")), None);
    }

    #[test]
    fn refuses_a_foreign_origin_even_on_its_own_host() {
        for origin in [
            "http://evil.example",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8081",
            "http://127.0.0.1",
            "null",
            "",
        ] {
            let why = refused(Some("127.0.0.1:8080"), Some(origin))
                .unwrap_or_else(|| panic!("origin {origin:?} answered"));
            assert!(why.contains("Origin header"), "{why}");
            assert!(why.contains(&format!("{origin:?}")), "{why}");
        }
    }

    #[test]
    fn a_default_port_server_answers_the_bare_names_a_browser_sends() {
        let (_tx, rx) = watch::channel(Snapshot::default());
        let app = App::new(
            Arc::new(crate::reach::Swarm::swarmkit("c")),
            rx,
            80,
            "t".into(),
        );
        let ok = |h: &str, o: &str| refusal(&app.hosts, Some(h.as_bytes()), Some(o.as_bytes()));
        assert_eq!(ok("localhost", "http://localhost"), None);
        assert_eq!(ok("127.0.0.1:80", "http://127.0.0.1"), None);
    }

    #[test]
    fn same_secret_is_equality() {
        assert!(same_secret(b"00ff", b"00ff"));
        assert!(!same_secret(b"00ff", b"00fe"));
        assert!(!same_secret(b"00ff", b"00ff0"));
        assert!(!same_secret(b"", b"00ff"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn page_tokens_are_fresh_hex_and_fill_the_page() {
        let (a, b) = (page_token().expect("token"), page_token().expect("token"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        let (_tx, rx) = watch::channel(Snapshot::default());
        let app = App::new(
            Arc::new(crate::reach::Swarm::swarmkit("c")),
            rx,
            8080,
            a.clone(),
        );
        assert!(!app.page.contains(TOKEN_SLOT));
        assert!(app.page.contains(&format!("content=\"{a}\"")));
    }
}
