//! A minimal HTTP/1 client over the manager's unix socket, for agents and for the lifecycle
//! commands (the CLI's resource commands use bollard instead).

use std::path::{Path, PathBuf};

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
    #[error("manager answered {status} to {method} {uri}: {message}")]
    Status {
        status: StatusCode,
        method: Method,
        uri: String,
        message: String,
    },
}

#[derive(Clone, Debug)]
pub struct ManagerClient {
    socket: PathBuf,
}

impl ManagerClient {
    pub fn new(socket: &Path) -> Self {
        ManagerClient {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
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
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("Host", "swarmkit")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
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
        let body = if body.is_empty() { &b"null"[..] } else { &body[..] };
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
