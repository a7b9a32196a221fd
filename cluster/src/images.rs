//! Built-in images, served by the swarmkit binary itself so walkthroughs need no registry: the
//! agent starts `swarmkit __image <image>` inside a task's namespaces and these servers answer
//! the way the real images do in the tutorials (drupal's install redirect, elasticsearch 2's
//! banner, a postgres port, traefik/whoami's echo).
//!
//! The HTTP side is a deliberately small HTTP/1.x responder: benchmarks open a new connection
//! per request (`ab -c1`), so what matters is one read, one write and closing promptly.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub const BUILTIN: &[&str] = &["drupal", "postgres", "elasticsearch", "whoami"];

/// An idle client (between requests or mid-request) is dropped after this.
const IDLE: Duration = Duration::from_secs(30);
/// Postgres clients are held open this long without traffic, like a server waiting for auth.
const PG_IDLE: Duration = Duration::from_secs(60);
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Caps open connections so a flood cannot exhaust the task's file descriptors.
const MAX_CONNS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Drupal,
    Postgres,
    Elasticsearch,
    Whoami,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Drupal => "drupal",
            Builtin::Postgres => "postgres",
            Builtin::Elasticsearch => "elasticsearch",
            Builtin::Whoami => "whoami",
        }
    }

    /// The port the real image listens on.
    pub fn port(self) -> u16 {
        match self {
            Builtin::Drupal | Builtin::Whoami => 80,
            Builtin::Postgres => 5432,
            Builtin::Elasticsearch => 9200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", unknown_image_error(.0))]
    Unknown(String),
    #[error("built-in image {image}: listen on port {port}: {source}")]
    Listen {
        image: &'static str,
        port: u16,
        #[source]
        source: io::Error,
    },
}

/// Who the server is, as the agent describes the task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskContext {
    /// 25-character task id.
    pub id: String,
    /// e.g. `search.1.<id>`.
    pub name: String,
    /// CIDRs, e.g. `10.0.0.7/24`.
    pub addrs: Vec<String>,
    pub hostname: String,
}

impl TaskContext {
    /// From SWARMKIT_TASK_ID, SWARMKIT_TASK_NAME, SWARMKIT_TASK_ADDRS and the UTS hostname.
    pub fn from_env() -> TaskContext {
        let var = |k| std::env::var(k).unwrap_or_default();
        let addrs = var("SWARMKIT_TASK_ADDRS")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        TaskContext {
            id: var("SWARMKIT_TASK_ID"),
            name: var("SWARMKIT_TASK_NAME"),
            addrs,
            hostname,
        }
    }
}

/// An image reference split the way docker reads it.
struct Reference<'a> {
    /// None for Docker Hub.
    registry: Option<&'a str>,
    /// Without `library/` for Docker Hub official images.
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn parse_reference(image: &str) -> Reference<'_> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    // A colon after the last slash is a tag; before it, a registry port.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (rest, tag) = match rest[slash..].find(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), path)
        }
        _ => (None, rest),
    };
    let registry = registry
        .filter(|r| !matches!(*r, "docker.io" | "index.docker.io" | "registry-1.docker.io"));
    let path = match registry {
        None => path.strip_prefix("library/").unwrap_or(path),
        Some(_) => path,
    };
    Reference {
        registry,
        path,
        tag,
        digest,
    }
}

/// The built-in behind an image reference, whatever its tag (`elasticsearch:2`,
/// `docker.io/library/drupal:9`, `traefik/whoami`).
pub fn resolve(image: &str) -> Option<Builtin> {
    let r = parse_reference(image.trim());
    if r.registry.is_some() {
        return None;
    }
    match r.path {
        "drupal" => Some(Builtin::Drupal),
        "postgres" => Some(Builtin::Postgres),
        "elasticsearch" => Some(Builtin::Elasticsearch),
        "whoami" | "traefik/whoami" | "containous/whoami" => Some(Builtin::Whoami),
        _ => None,
    }
}

/// Docker's display form (`service ls`, `service ps`): Hub prefixes dropped, `:latest` added
/// when no tag was given, a digest dropped when there is a tag.
pub fn canonical(image: &str) -> String {
    let r = parse_reference(image.trim());
    let name = match r.registry {
        Some(reg) => format!("{reg}/{}", r.path),
        None => r.path.to_string(),
    };
    match (r.tag, r.digest) {
        (Some(tag), _) => format!("{name}:{tag}"),
        (None, Some(digest)) => format!("{name}@{digest}"),
        (None, None) => format!("{name}:latest"),
    }
}

pub fn unknown_image_error(image: &str) -> String {
    format!(
        "image {} is not built in and no command was given (no registry is used); \
         built-in images: {}",
        canonical(image),
        BUILTIN.join(", ")
    )
}

/// Runs the built-in image's server in the current (task) namespaces until killed.
pub async fn run(image: &str) -> anyhow::Result<()> {
    let b = resolve(image).ok_or_else(|| ImageError::Unknown(image.to_string()))?;
    let ctx = TaskContext::from_env();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, b.port()))
        .await
        .map_err(|source| ImageError::Listen {
            image: b.name(),
            port: b.port(),
            source,
        })?;
    // SIGTERM (a task being stopped, after it left every load balancer) ends the server
    // gracefully: requests in progress are answered, then connections close.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::spawn(async move {
        term.recv().await;
        let _ = stop_tx.send(true);
    });
    serve_until(b, listener, ctx, stop)
        .await
        .with_context(|| format!("built-in image {}", b.name()))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `b` on `listener` until the listener fails.
pub async fn serve_on(b: Builtin, listener: TcpListener, ctx: TaskContext) -> io::Result<()> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    serve_until(b, listener, ctx, stop).await
}

/// Serves `b` on `listener` until the listener fails or `stop` turns true; then it accepts
/// nothing more, finishes the requests in progress and returns once every connection closed.
pub async fn serve_until(
    b: Builtin,
    listener: TcpListener,
    ctx: TaskContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let ctx = Arc::new(ctx);
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => {
                drop(slot);
                // Connections already in the backlog were sent here before this task left
                // the load balancers: answer them too.
                loop {
                    let waiting = tokio::select! {
                        biased;
                        a = listener.accept() => a,
                        _ = std::future::ready(()) => break,
                    };
                    let Ok((conn, peer)) = waiting else { break };
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
                    let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
                    tokio::spawn(async move {
                        let _ = serve_conn(b, conn, peer, &ctx, stop).await;
                        drop(slot);
                    });
                }
                drop(listener);
                let _ = slots.acquire_many(MAX_CONNS as u32).await;
                return Ok(());
            }
        };
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                // Out of descriptors or a client that gave up: keep serving the others.
                tracing::debug!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(b, conn, peer, &ctx, stop).await {
                tracing::debug!(%peer, error = %e, "connection");
            }
            drop(slot);
        });
    }
}

async fn serve_conn(
    b: Builtin,
    conn: TcpStream,
    peer: SocketAddr,
    ctx: &TaskContext,
    stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let _ = conn.set_nodelay(true);
    match b {
        Builtin::Postgres => hold_postgres(conn, stop).await,
        _ => serve_http(b, conn, peer, ctx, stop).await,
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
}

/// Answers an SSLRequest with "no" (as a server without TLS does), then holds the connection
/// until the client leaves or goes quiet.
async fn hold_postgres(
    mut conn: TcpStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut buf = [0u8; 1024];
    let mut first = true;
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(PG_IDLE, conn.read(&mut buf)) => r,
            _ = stopped(&mut stop) => return conn.shutdown().await,
        };
        let n = match read {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if first && buf[..n] == SSL_REQUEST {
            conn.write_all(b"N").await?;
        }
        first = false;
    }
}

struct Request {
    method: String,
    target: String,
    /// The minor version: 0 or 1.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(head: &[u8]) -> Option<Request> {
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let mut parts = lines.next()?.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        let minor = match version {
            "HTTP/1.0" => 0,
            "HTTP/1.1" => 1,
            _ => return None,
        };
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Request {
            method: method.to_string(),
            target: target.to_string(),
            minor,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        match self.minor {
            0 => conn.contains("keep-alive"),
            _ => !conn.contains("close"),
        }
    }
}

struct Response {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The wire form. HEAD responses carry no body and, like the tutorial's `curl -I` output,
    /// no Content-Length; keep-alive is only announced where the protocol version needs it.
    fn encode(&self, head_only: bool, minor: u8, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut line = |k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        for (k, v) in &self.headers {
            line(k, v);
        }
        if !head_only {
            line("Content-Length", &self.body.len().to_string());
        }
        match (keep_alive, minor) {
            (false, _) => line("Connection", "close"),
            (true, 0) => line("Connection", "keep-alive"),
            (true, _) => {}
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(4096);
    tokio::time::timeout(IDLE, conn.read_buf(buf))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn serve_http(
    b: Builtin,
    mut conn: TcpStream,
    peer: SocketAddr,
    ctx: &TaskContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut served = 0u64;
    loop {
        let head_len = loop {
            if let Some(n) = head_end(&buf) {
                break n;
            }
            if buf.len() > MAX_HEAD {
                return reject(&mut conn, "431 Request Header Fields Too Large").await;
            }
            // An idle keep-alive connection closes when the server stops; a new one, or one
            // with a request under way, is answered first.
            let read = if buf.is_empty() && served > 0 {
                tokio::select! {
                    r = read_more(&mut conn, &mut buf) => r,
                    _ = stopped(&mut stop) => return conn.shutdown().await,
                }
            } else {
                read_more(&mut conn, &mut buf).await
            };
            if read? == 0 {
                return Ok(());
            }
        };
        let Some(req) = Request::parse(&buf[..head_len]) else {
            return reject(&mut conn, "400 Bad Request").await;
        };
        let body_len = match req.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= MAX_BODY => n,
            Some(_) => return reject(&mut conn, "413 Payload Too Large").await,
        };
        while buf.len() < head_len + body_len {
            if read_more(&mut conn, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head_len + body_len);
        let keep = req.keep_alive() && !*stop.borrow();
        let resp = respond(b, &req, peer, ctx);
        let wire = resp.encode(req.method == "HEAD", req.minor, keep);
        conn.write_all(&wire).await?;
        served += 1;
        if !keep {
            return conn.shutdown().await;
        }
    }
}

async fn reject(conn: &mut TcpStream, status: &'static str) -> io::Result<()> {
    let resp = Response {
        status,
        headers: vec![("Date", http_date())],
        body: Vec::new(),
    };
    conn.write_all(&resp.encode(false, 1, false)).await?;
    conn.shutdown().await
}

fn respond(b: Builtin, req: &Request, peer: SocketAddr, ctx: &TaskContext) -> Response {
    let path = req.target.split('?').next().unwrap_or("");
    match b {
        Builtin::Drupal => drupal(path),
        Builtin::Elasticsearch => elasticsearch(&req.method, path, ctx),
        _ => whoami(req, peer, ctx),
    }
}

/// A fresh Drupal sends every page to its installer.
fn drupal(path: &str) -> Response {
    let common = |status, extra: Vec<(&'static str, String)>, body: String| {
        let mut headers = vec![
            ("Date", http_date()),
            ("Server", "Apache/2.4.25 (Debian)".to_string()),
            ("X-Powered-By", "PHP/7.3.17".to_string()),
        ];
        headers.extend(extra);
        headers.push(("Content-Type", "text/html; charset=UTF-8".to_string()));
        Response {
            status,
            headers,
            body: body.into_bytes(),
        }
    };
    if path == "/core/install.php" {
        let body = "<!DOCTYPE html>\n<html><head><title>Choose language | Drupal</title></head>\n\
                    <body><h1>Drupal 9</h1><p>Choose language</p></body></html>\n";
        return common("200 OK", vec![], body.to_string());
    }
    let to = "/core/install.php";
    let body = format!(
        "<!DOCTYPE html>\n<html>\n    <head>\n        <meta charset=\"UTF-8\" />\n        \
         <meta http-equiv=\"refresh\" content=\"0;url='{to}'\" />\n\n        \
         <title>Redirecting to {to}</title>\n    </head>\n    <body>\n        \
         Redirecting to <a href=\"{to}\">{to}</a>.\n    </body>\n</html>"
    );
    let extra = vec![
        ("Cache-Control", "no-cache, private".to_string()),
        ("Location", to.to_string()),
    ];
    common("302 Found", extra, body)
}

#[rustfmt::skip]
const ES_NAMES: &[&str] = &[
    "Landslide", "Freedom Ring", "Doctor Anthony Droom", "Abomination", "Agent Zero", "Amphibian",
    "Angel Salvadore", "Aquarian", "Banshee", "Bird-Brain", "Black Bolt", "Blizzard", "Bloodstorm",
    "Boomerang", "Bushwacker", "Caliban", "Captain Universe", "Chamber", "Cloak", "Crimson Dynamo",
    "Cypher", "Dazzler", "Deathlok", "Dust", "Echo", "Electro", "Firestar", "Forge", "Gargoyle",
    "Glob Herman", "Hellcat", "Hepzibah", "Jubilee", "Karma", "Living Lightning", "Longshot",
    "Madrox", "Magma", "Meltdown", "Mirage", "Moonstone", "Nightcrawler", "Omega Red", "Paladin",
    "Phalanx", "Quasar", "Ringer", "Sabra", "Silver Sable", "Speedball", "Starhawk", "Sunfire",
    "Tempest", "Thunderbird", "Vertigo", "Whiplash", "Wonder Man", "Zzzax",
];

/// FNV-1a then a splitmix64 finish: stable across Rust versions (unlike DefaultHasher), and
/// well spread even for ids that differ in one character.
fn stable_hash(salt: &str, data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.bytes().chain([0]).chain(data.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// The node name elasticsearch 2 picks at random, here fixed per task.
pub fn es_node_name(task_id: &str) -> &'static str {
    ES_NAMES[(stable_hash("name", task_id) % ES_NAMES.len() as u64) as usize]
}

/// Replicas of one service must answer with distinct names (the tutorial's rotation shows
/// three different ones), so the name follows the task's slot within its service; a task
/// whose name carries no slot falls back to its id.
pub fn es_node_name_for(ctx: &TaskContext) -> &'static str {
    let mut parts = ctx.name.splitn(3, '.');
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(service), Some(slot)) if !service.is_empty() => {
            let base = stable_hash("name", service);
            ES_NAMES[(base.wrapping_add(slot) % ES_NAMES.len() as u64) as usize]
        }
        _ => es_node_name(&ctx.id),
    }
}

/// 22 url-safe base64 characters (16 bytes), like elasticsearch's cluster UUIDs.
pub fn es_cluster_uuid(task_id: &str) -> String {
    let mut bytes = stable_hash("uuid-hi", task_id).to_be_bytes().to_vec();
    bytes.extend_from_slice(&stable_hash("uuid-lo", task_id).to_be_bytes());
    base64url(&bytes)
}

fn elasticsearch(method: &str, path: &str, ctx: &TaskContext) -> Response {
    let date = ("Date", http_date());
    if path != "/" || !matches!(method, "GET" | "HEAD") {
        let body = format!("No handler found for uri [{path}] and method [{method}]");
        return Response {
            status: "400 Bad Request",
            headers: vec![date, ("Content-Type", "text/plain; charset=UTF-8".into())],
            body: body.into_bytes(),
        };
    }
    let body = format!(
        r#"{{
  "name" : "{name}",
  "cluster_name" : "elasticsearch",
  "cluster_uuid" : "{uuid}",
  "version" : {{
    "number" : "2.4.6",
    "build_hash" : "5376dca9f70f3abef96a77f4bb22720ace8240fd",
    "build_timestamp" : "2017-07-18T12:17:44Z",
    "build_snapshot" : false,
    "lucene_version" : "5.5.4"
  }},
  "tagline" : "You Know, for Search"
}}
"#,
        name = es_node_name_for(ctx),
        uuid = es_cluster_uuid(&ctx.id),
    );
    Response {
        status: "200 OK",
        headers: vec![
            date,
            ("Content-Type", "application/json; charset=UTF-8".into()),
        ],
        body: body.into_bytes(),
    }
}

/// traefik/whoami's echo: who answered, then the request as received.
fn whoami(req: &Request, peer: SocketAddr, ctx: &TaskContext) -> Response {
    let mut body = format!("Hostname: {}\n", ctx.hostname);
    if !ctx.name.is_empty() {
        body += &format!("Name: {}\n", ctx.name);
    }
    body += "IP: 127.0.0.1\n";
    for addr in &ctx.addrs {
        let ip = addr.split('/').next().unwrap_or(addr);
        body += &format!("IP: {ip}\n");
    }
    body += &format!("RemoteAddr: {peer}\n");
    body += &format!("{} {} HTTP/1.{}\n", req.method, req.target, req.minor);
    for (k, v) in &req.headers {
        body += &format!("{k}: {v}\n");
    }
    body += "\n";
    Response {
        status: "200 OK",
        headers: vec![
            ("Date", http_date()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
        ],
        body: body.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        let parse = |s: &str| Request::parse(s.as_bytes()).unwrap();
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(Request::parse(b"GET / SPDY/3\r\n\r\n").is_none());
    }
}
