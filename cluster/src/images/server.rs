//! Running a built-in image's server in a task: the accept loop (bounded, stopping gracefully
//! on SIGTERM), postgres's SSL handshake, and the HTTP connections, answered by `replies`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::context::TaskContext;
use super::http::{Request, Response, head_end, http_date};
use super::reference::{Builtin, resolve, unknown_image_error};
use super::replies::respond;

/// An idle client (between requests or mid-request) is dropped after this.
const IDLE: Duration = Duration::from_secs(30);
/// Postgres clients are held open this long without traffic, like a server waiting for auth.
const PG_IDLE: Duration = Duration::from_secs(60);
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Caps open connections so a flood cannot exhaust the task's file descriptors.
const MAX_CONNS: usize = 4096;

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
