//! A minimal HTTP/1 client of the manager, for agents (mutual TLS, over TCP or a forwarded
//! unix socket) and for the lifecycle commands (plain, over the manager's 0600 unix socket;
//! the CLI's resource commands use bollard instead).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the manager at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manager request {method} {uri} failed: {message}")]
    Http {
        method: Method,
        uri: String,
        message: String,
    },
    #[error("manager request {method} {uri}: no answer within {after:?}")]
    Timeout {
        method: Method,
        uri: String,
        after: std::time::Duration,
    },
    #[error("manager answered {status} to {method} {uri}: {message}")]
    Status {
        status: StatusCode,
        method: Method,
        uri: String,
        message: String,
    },
}

impl ClientError {
    /// Whether asking another manager may help: this one is gone, stalled, or answered
    /// that it does not lead (503).
    pub fn another_manager_may_answer(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout { .. } => true,
            ClientError::Status { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Http { .. } => false,
        }
    }
}

impl Endpoint {
    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp(a) => a.clone(),
        }
    }
}

/// Where the manager listens: its unix socket on the host, or a TCP port that an SSH tunnel
/// forwards to that socket (agents inside guests).
#[derive(Clone, Debug)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
type Io = Box<dyn Stream>;

/// The TLS configuration every clone of a client dials with; a renewal replaces it for all.
type SharedTls = Arc<RwLock<Arc<rustls::ClientConfig>>>;

#[derive(Debug)]
pub struct ManagerClient {
    /// Every manager this client may ask; one unless the cluster has several. Shared by
    /// every clone, and replaced when the managers change (an agent hears of them).
    endpoints: Arc<RwLock<Endpoints>>,
    /// The one it asks now, shared by every clone: when one clone finds a manager gone or
    /// not leading, the others move with it.
    current: Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<SharedTls>,
    /// Who the TLS peer must prove to be; the manager unless told otherwise.
    server_name: rustls::pki_types::ServerName<'static>,
    /// The connection the last request used (to the endpoint at that slot), kept for the
    /// next: an agent long-polls its plan every heartbeat, and a connection per poll (a TCP
    /// handshake and teardown across the underlay each time) was most of an idle cluster's
    /// CPU.
    idle: std::sync::Mutex<Option<(Slot, Sender)>>,
}

#[derive(Debug)]
/// The managers a client asks, stamped anew whenever they are replaced: an index into an
/// older list is stale.
struct Endpoints {
    list: Arc<[Endpoint]>,
    generation: u64,
}

/// Which endpoint: its list's generation and its index there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    generation: u64,
    index: usize,
}

/// A clone has its own connection: a long poll holds one for its whole wait.
impl Clone for ManagerClient {
    fn clone(&self) -> Self {
        ManagerClient {
            endpoints: self.endpoints.clone(),
            current: self.current.clone(),
            tls: self.tls.clone(),
            server_name: self.server_name.clone(),
            idle: std::sync::Mutex::new(None),
        }
    }
}

/// Longer than the manager's plan long-poll (5 s) with room for a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// With other managers to ask, how long one may take before the next is asked: well past a
/// plan long-poll (a heartbeat), and short enough that agents reach a new leader inside its
/// reconnect grace when theirs died with its connections stalled.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(4);

impl ManagerClient {
    fn of(endpoints: Vec<Endpoint>) -> Self {
        assert!(!endpoints.is_empty(), "a client needs a manager to ask");
        ManagerClient {
            endpoints: Arc::new(RwLock::new(Endpoints {
                list: endpoints.into(),
                generation: 0,
            })),
            current: Default::default(),
            tls: None,
            server_name: crate::pki::tls::manager_name(),
            idle: std::sync::Mutex::new(None),
        }
    }

    pub fn new(socket: &Path) -> Self {
        ManagerClient::of(vec![Endpoint::Unix(socket.to_path_buf())])
    }

    pub fn tcp(addr: &str) -> Self {
        ManagerClient::of(vec![Endpoint::Tcp(addr.to_string())])
    }

    /// A client of several managers' sockets: it asks one, and moves to the next when that
    /// one is gone, does not answer in time, or answers that it does not lead.
    pub fn any_of(sockets: &[PathBuf]) -> Self {
        ManagerClient::of(sockets.iter().cloned().map(Endpoint::Unix).collect())
    }

    /// Every manager of `cluster` (see [`crate::paths::ClusterPaths::manager_sockets`]).
    pub fn of_cluster(paths: &crate::paths::ClusterPaths) -> Self {
        ManagerClient::any_of(&paths.manager_sockets())
    }

    /// [`ManagerClient::any_of`] over TCP addresses (agents dialling managers across the
    /// underlay).
    pub fn tcp_any_of(addrs: &[String]) -> Self {
        ManagerClient::of(addrs.iter().cloned().map(Endpoint::Tcp).collect())
    }

    fn at(&self) -> (Slot, Endpoint) {
        let e = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed) % e.list.len();
        let slot = Slot {
            generation: e.generation,
            index,
        };
        (slot, e.list[index].clone())
    }

    fn endpoint_count(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .len()
    }

    /// Moves every clone from endpoint `from` to the next (unless one already moved them, or
    /// the list was replaced meanwhile).
    fn move_on(&self, from: Slot) {
        let e = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        if e.generation == from.generation {
            let next = (from.index + 1) % e.list.len();
            let _ = self.current.compare_exchange(
                from.index,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        drop(e);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Asks these TCP addresses from now on, in this client and every clone (the managers
    /// changed: one promoted, one demoted). The manager asked now stays the one asked, if it
    /// is still among them.
    pub fn set_tcp_endpoints(&self, addrs: &[String]) {
        if addrs.is_empty() {
            return;
        }
        let mut e = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        // A client of unix sockets (an SSH forward's end) has no use for the managers'
        // underlay addresses.
        if e.list.iter().any(|have| matches!(have, Endpoint::Unix(_))) {
            return;
        }
        let same = e.list.len() == addrs.len()
            && e.list
                .iter()
                .zip(addrs)
                .all(|(have, want)| matches!(have, Endpoint::Tcp(a) if a == want));
        if same {
            return;
        }
        let asked = e.list[self.current.load(std::sync::atomic::Ordering::Relaxed) % e.list.len()]
            .describe();
        let index = addrs.iter().position(|a| *a == asked).unwrap_or(0);
        e.list = addrs.iter().cloned().map(Endpoint::Tcp).collect();
        e.generation += 1;
        self.current
            .store(index, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(managers = ?addrs, "the managers changed");
    }

    /// The same endpoint in TLS under `config` (the manager is checked against its roots and
    /// asked for as `pki::MANAGER_NAME`).
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(Arc::new(RwLock::new(Arc::new(config))));
        self.idle = std::sync::Mutex::new(None);
        self
    }

    /// TLS to a server other than a swarmkit manager (a Docker engine), checked as `name`.
    pub fn with_tls_to(
        mut self,
        config: rustls::ClientConfig,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.server_name = name;
        self.with_tls(config)
    }

    /// Dials with `config` from now on, in this client and every clone of it (a renewed
    /// certificate); connections already open keep theirs until the manager refuses them.
    pub fn set_tls(&self, config: rustls::ClientConfig) {
        if let Some(tls) = &self.tls {
            *tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn connect_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            path: match self.at().1 {
                Endpoint::Unix(p) => p,
                Endpoint::Tcp(a) => PathBuf::from(format!("tcp:{a}")),
            },
            source,
        }
    }

    /// A new connection to the manager, in TLS where the client has it.
    async fn dial(&self) -> Result<Io, ClientError> {
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone());
        async fn secured<S>(
            io: S,
            tls: Option<Arc<rustls::ClientConfig>>,
            name: rustls::pki_types::ServerName<'static>,
        ) -> std::io::Result<Io>
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            Ok(match tls {
                None => Box::new(io),
                Some(config) => Box::new(
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, io)
                        .await?,
                ),
            })
        }
        let connect = |e| self.connect_error(e);
        Ok(match self.at().1 {
            Endpoint::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(&p).await.map_err(connect)?;
                secured(stream, tls, self.server_name.clone())
                    .await
                    .map_err(connect)?
            }
            Endpoint::Tcp(a) => {
                let stream = tokio::net::TcpStream::connect(&a).await.map_err(connect)?;
                secured(stream, tls, self.server_name.clone())
                    .await
                    .map_err(connect)?
            }
        })
    }

    async fn handshake(&self) -> Result<Sender, ClientError> {
        let io = self.dial().await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| ClientError::Http {
                    method: Method::GET,
                    uri: String::new(),
                    message: e.to_string(),
                })?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// `POST uri` upgraded to a raw stream (an exec session's agent end), on a connection of
    /// its own.
    pub async fn upgrade(
        &self,
        uri: &str,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let http = |message: String| ClientError::Http {
            method: Method::POST,
            uri: uri.to_string(),
            message,
        };
        let io = self.dial().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("Host", "swarmkit")
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "tcp")
            .body(Full::new(Bytes::new()))
            .map_err(|e| http(e.to_string()))?;
        let resp = send_within(&mut sender, req).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Status {
                status,
                method: Method::POST,
                uri: uri.to_string(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| http(e.to_string()))?;
        Ok(hyper_util::rt::TokioIo::new(upgraded))
    }

    /// `POST uri` with a JSON body on a connection of its own, answered as it streams: the
    /// status and headers within [`REQUEST_TIMEOUT`], the body for as long as the server
    /// sends it (a followed log). Any status is returned, not turned into an error.
    pub async fn post_streaming<B: Serialize>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let http = |message: String| ClientError::Http {
            method: Method::POST,
            uri: uri.to_string(),
            message,
        };
        let bytes = serde_json::to_vec(body).map_err(|e| http(e.to_string()))?;
        let mut sender = self.handshake().await?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("Host", "swarmkit")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| http(e.to_string()))?;
        send_within(&mut sender, req).await
    }

    /// One request, given up after [`REQUEST_TIMEOUT`]: a connection that stalls (seen once
    /// through an SSH forward into a guest, with both ends still established) must cost an
    /// agent one retry, not its plan updates for good.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call_held(method, uri, body, Duration::ZERO).await
    }

    /// A long poll the manager holds up to `hold` before it answers: it is given that much
    /// longer before another manager is asked.
    pub async fn get_held<T: DeserializeOwned>(
        &self,
        uri: &str,
        hold: Duration,
    ) -> Result<T, ClientError> {
        self.call_held::<(), T>(Method::GET, uri, None, hold).await
    }

    async fn call_held<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
        hold: Duration,
    ) -> Result<T, ClientError> {
        let several = self.endpoint_count() > 1;
        let within = hold
            + if several {
                FAILOVER_TIMEOUT
            } else {
                REQUEST_TIMEOUT
            };
        let mut attempts = self.endpoint_count();
        loop {
            let (at, _) = self.at();
            let answer = tokio::time::timeout(within, self.call_once(method.clone(), uri, body))
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout {
                        method: method.clone(),
                        uri: uri.to_string(),
                        after: within,
                    })
                });
            attempts -= 1;
            // A write that timed out may still be applied: asking another manager could apply
            // it twice. Only a read, or what never reached a leader, moves on.
            let moves_on = |e: &ClientError| {
                e.another_manager_may_answer()
                    && (method == Method::GET || !matches!(e, ClientError::Timeout { .. }))
            };
            match answer {
                Err(e) if several && moves_on(&e) => {
                    self.move_on(at);
                    // A manager away or not leading is routine with several; one that took
                    // a request and went silent is worth seeing.
                    let next = self.at().1.describe();
                    if matches!(e, ClientError::Timeout { .. }) {
                        tracing::warn!("{e}; asking the next manager ({next})");
                    } else {
                        tracing::debug!("{e}; asking the next manager ({next})");
                    }
                    if attempts == 0 {
                        return Err(e);
                    }
                }
                answer => return answer,
            }
        }
    }

    async fn call_once<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let http = |message: String| ClientError::Http {
            method: method.clone(),
            uri: uri.to_string(),
            message,
        };
        let bytes = Bytes::from(match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(e.to_string()))?,
            None => Vec::new(),
        });
        let request = || {
            Request::builder()
                .method(method.clone())
                .uri(uri)
                .header("Host", "swarmkit")
                .header("Content-Type", "application/json")
                .body(Full::new(bytes.clone()))
                .map_err(|e| http(e.to_string()))
        };
        let (at, _) = self.at();
        let kept = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(to, s)| *to == at && !s.is_closed())
            .map(|(_, s)| s);
        let answered = match kept {
            // The manager may have closed it meanwhile (it restarted, say): then once more on
            // a new one.
            Some(mut sender) => send(&mut sender, request()?)
                .await
                .ok()
                .map(|resp| (sender, resp)),
            None => None,
        };
        let answered = match answered {
            // A kept connection speaks with the certificate it was opened with, which a
            // renewal since may have retired: once more on a new one, with the current one.
            Some((_, resp)) if resp.status() == StatusCode::UNAUTHORIZED && self.tls.is_some() => {
                None
            }
            answered => answered,
        };
        let (mut sender, resp) = match answered {
            Some(answered) => answered,
            None => {
                let mut sender = self.handshake().await?;
                let resp = send(&mut sender, request()?).await.map_err(http)?;
                (sender, resp)
            }
        };
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        if sender.ready().await.is_ok() {
            *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, sender));
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                status,
                method,
                uri: uri.to_string(),
                message,
            });
        }
        let body = if body.is_empty() {
            &b"null"[..]
        } else {
            &body[..]
        };
        serde_json::from_slice(body).map_err(|e| http(e.to_string()))
    }

    pub async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, uri, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        uri: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, uri, Some(body)).await
    }
}

/// [`send`] on a connection of its own, given up after [`REQUEST_TIMEOUT`] without the
/// answer's head.
async fn send_within(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let (method, uri) = (req.method().clone(), req.uri().to_string());
    match tokio::time::timeout(REQUEST_TIMEOUT, send(sender, req)).await {
        Err(_) => Err(ClientError::Timeout {
            method,
            uri,
            after: REQUEST_TIMEOUT,
        }),
        Ok(Err(message)) => Err(ClientError::Http {
            method,
            uri,
            message,
        }),
        Ok(Ok(answer)) => Ok(answer),
    }
}

async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}
