//! API errors: a status code and a message that names the problem and the fix. Docker clients
//! print the message as `Error response from daemon: <message>`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ipam::IpamError;
use crate::keys::RandomError;
use crate::orchestrator::ScheduleError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// An operation the API refuses outright, e.g. on docker's pre-defined networks.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Ipam(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Schedule(ScheduleError::Unsatisfiable(_) | ScheduleError::HostPortsFull) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Schedule(ScheduleError::Ipam(_)) => StatusCode::BAD_REQUEST,
            ApiError::Schedule(ScheduleError::NoNodes) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// What an error answered by something other than a handler (an unknown path, a method
    /// the path does not have, a body over the limit) means in the Engine API's terms.
    /// dockerd answers a method it does not route as it answers an unknown path.
    fn from_plain(status: StatusCode, text: &str) -> Option<ApiError> {
        match status {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                Some(ApiError::NotFound("page not found".into()))
            }
            StatusCode::PAYLOAD_TOO_LARGE => Some(super::extract::too_large()),
            s if s.is_client_error() => Some(ApiError::BadRequest(if text.is_empty() {
                s.canonical_reason().unwrap_or("bad request").to_string()
            } else {
                text.to_string()
            })),
            _ => None,
        }
    }
}

/// Docker's error body: `{"message": "..."}`, which its CLI prints after `Error response from
/// daemon: `.
fn body(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "message": message }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        body(status, &self.to_string())
    }
}

/// Every error leaves the manager in docker's shape, including the ones no handler wrote
/// (axum's rejections and fallbacks, which are plain text or empty).
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    // Rejection texts are a line or two; anything longer is cut, not buffered whole.
    let text = match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    match ApiError::from_plain(status, &text) {
        Some(e) => e.into_response(),
        None => body(status, &text),
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
