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
    /// The peer did not prove who it is, or what it proved is no longer accepted.
    #[error("{0}")]
    Unauthorized(String),
    /// Something of the manager's own failed (not the request's doing).
    #[error("{0}")]
    Internal(String),
    /// An operation the API refuses outright, e.g. on docker's pre-defined networks.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// Something the manager asked of another server (an image registry) failed.
    #[error("{0}")]
    BadGateway(String),
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Schedule(
                ScheduleError::Unsatisfiable(_)
                | ScheduleError::HostPortsFull
                | ScheduleError::InsufficientResources { .. },
            ) => StatusCode::BAD_REQUEST,
            ApiError::Schedule(ScheduleError::Ipam(_)) => StatusCode::BAD_REQUEST,
            ApiError::Schedule(ScheduleError::NoNodes) => StatusCode::SERVICE_UNAVAILABLE,
            // dockerd answers a write without a quorum 503 too: try again when there is one.
            ApiError::Store(StoreError::NoLeader(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Docker's error body: `{"message": "..."}`, which its CLI prints after `Error response from
/// daemon: `.
pub fn body(status: StatusCode, message: &str) -> Response {
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

pub type ApiResult<T> = Result<T, ApiError>;
