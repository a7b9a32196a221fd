//! The manager's listeners and what each one may serve. A connection is accepted under a cap,
//! its TLS handshake (where the listener speaks TLS) has a deadline, and every request it
//! carries is tagged with the [`Peer`] the handshake proved: routes decide from that, never
//! from what the request says about itself.
//!
//! The manager listens on `manager.sock` (plain, 0600: local root, the whole API), on
//! `agents.sock` and, on netns clusters, the underlay's TCP port (mutual TLS, the agent
//! channel only), and on a loopback port for remote clients (mutual TLS, the Engine API to a
//! client or manager certificate); `manager::trust` builds their TLS configurations.

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::pki::identity::Identity;

/// Who is on the other end of a request's connection, as its listener established it.
#[derive(Clone, Debug)]
pub enum Peer {
    /// Local root, through the manager's 0600 unix socket.
    Local,
    /// A TLS peer, with the identity its certificate proved (none: it showed no certificate,
    /// which only joining needs).
    Tls(Option<Arc<Identity>>),
}

/// What one listener lets a connection take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request's header must arrive within this, and an idle kept connection is closed
    /// after it (hyper starts the clock whenever it waits for a request).
    pub header_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The TLS configuration a listener presents; replaced while it runs (a CA rotation, a
/// renewed manager certificate), each connection taking the one current at its accept.
pub type TlsConfig = watch::Receiver<Arc<rustls::ServerConfig>>;

/// Serves `app` on `listener` until the process ends: plain HTTP, every request from
/// `Peer::Local` (the unix socket), or TLS under `tls`.
pub async fn serve<L, S>(mut listener: L, app: S, tls: Option<TlsConfig>, limits: Limits)
where
    L: axum::serve::Listener,
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (io, _) = listener.accept().await;
        let app = app.clone();
        let tls = tls.as_ref().map(|t| t.borrow().clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(io, app, Peer::Local, limits).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let accepted =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await;
                    let Ok(Ok(stream)) = accepted else {
                        tracing::debug!("TLS handshake failed or timed out");
                        return;
                    };
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| Identity::from_der(leaf).ok())
                        .map(Arc::new);
                    connection(stream, app, Peer::Tls(identity), limits).await
                }
            }
        });
    }
}

async fn connection<I, S>(io: I, app: S, peer: Peer, limits: Limits)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // Upgrades: `docker exec`'s stream on the nodes' sockets and the agents' end of it.
    if let Err(e) = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        tracing::debug!("connection ended: {e}");
    }
}

/// Raises this process's open-file limit to its hard limit: every agent holds a kept
/// connection or two, and the default soft limit (1024) would cap a large cluster.
pub fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("could not raise the open-file limit from {soft} to {hard}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::Extension;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;
    use crate::pki::Role;
    use crate::pki::ca::{RootCa, Subject, new_key_and_request};
    use crate::pki::tls::{ClientAuth, client_config, manager_name, server_config};

    /// Echoes who the listener says is calling.
    fn who() -> Router {
        Router::new().route(
            "/who",
            get(|Extension(peer): Extension<Peer>| async move {
                match peer {
                    Peer::Local => "local".to_string(),
                    Peer::Tls(None) => "anonymous".to_string(),
                    Peer::Tls(Some(id)) => format!("{} {:?}", id.name, id.role),
                }
            }),
        )
    }

    fn socket_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("swarmkit-listen-{tag}-{}.sock", std::process::id()))
    }

    fn listen_on(tag: &str) -> (tokio::net::UnixListener, std::path::PathBuf) {
        let path = socket_path(tag);
        let _ = std::fs::remove_file(&path);
        (tokio::net::UnixListener::bind(&path).unwrap(), path)
    }

    /// Sends one request and reads the answer until the server closes the connection.
    async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> String {
        s.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn the_unix_socket_tags_requests_as_local() {
        let (listener, path) = listen_on("local");
        tokio::spawn(serve(listener, who(), None, Limits::default()));
        let out = ask(UnixStream::connect(&path).await.unwrap()).await;
        let _ = std::fs::remove_file(&path);
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("local"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_is_closed() {
        let (listener, path) = listen_on("silent");
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        tokio::spawn(serve(listener, who(), None, limits));
        let mut silent = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 64];
        // Generous against a loaded machine: the point is that it ends, not when.
        let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await;
        let _ = std::fs::remove_file(&path);
        let n = read
            .expect("the server closed the silent connection")
            .unwrap_or(0);
        assert!(!buf[..n].starts_with(b"HTTP/1.1 200"), "nothing was served");
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let (listener, path) = listen_on("cap");
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        tokio::spawn(serve(listener, who(), None, limits));
        let holder = UnixStream::connect(&path).await.unwrap();
        // The first connection is accepted and holds the only slot: wait until the server
        // has taken it (a request on it is answered), then keep it open.
        let mut holder = holder;
        holder
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = holder.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let second = tokio::spawn(ask(UnixStream::connect(&path).await.unwrap()));
        // While the slot is held, the second request stays unanswered.
        let early = tokio::time::timeout(Duration::from_millis(300), async {
            while !second.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            early.is_err(),
            "a second connection was served past the cap of one"
        );
        drop(holder);
        let out = second.await.unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(out.ends_with("local"), "{out}");
    }

    #[tokio::test]
    async fn a_tls_peer_is_known_by_its_certificate() {
        let ca = RootCa::generate("c").unwrap();
        let (manager, manager_key) = ca
            .issue_manager("c", &[], Duration::from_secs(3600))
            .unwrap();
        let chain = format!("{}{}", manager.cert_pem, ca.cert_pem);
        let server =
            server_config(&[&ca.cert_pem], &chain, &manager_key, ClientAuth::Optional).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(server));
        let (listener, path) = listen_on("tls");
        tokio::spawn(serve(listener, who(), Some(rx), Limits::default()));

        let (key, csr) = new_key_and_request().unwrap();
        let subject = Subject {
            name: "node-a",
            role: Role::Worker,
            cluster_id: "c",
        };
        let cert = ca
            .sign_request(&csr, &subject, Duration::from_secs(3600))
            .unwrap();
        let connect = |identity: Option<(String, String)>| {
            let path = path.clone();
            let ca = ca.cert_pem.clone();
            async move {
                let ids = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
                let config = client_config(&[&ca], ids).unwrap();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tcp = UnixStream::connect(&path).await.unwrap();
                ask(connector.connect(manager_name(), tcp).await.unwrap()).await
            }
        };
        let named = connect(Some((cert.cert_pem.clone(), key))).await;
        let anonymous = connect(None).await;
        let _ = std::fs::remove_file(&path);
        assert!(named.ends_with("node-a Worker"), "{named}");
        assert!(anonymous.ends_with("anonymous"), "{anonymous}");
    }
}
