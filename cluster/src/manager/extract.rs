//! Request extractors that answer like dockerd when a request is malformed: a 400 with JSON
//! `{"message": ...}` naming the problem, instead of axum's plain-text rejections (415 for a
//! content type, 422 for a body of the wrong shape); and the middleware that puts what no
//! handler answered (unknown paths, methods, bodies over the limit) in the same shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{self, ApiError};

/// The largest request body the manager reads; a service spec is a few KiB.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON request body.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection, content_type.as_deref())),
        }
    }
}

fn json_rejection(r: JsonRejection, content_type: Option<&str>) -> ApiError {
    let text = r.body_text();
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(format!(
            "unsupported Content-Type header ({}): must be 'application/json'",
            content_type.unwrap_or("none")
        )),
        JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest(format!(
            "invalid JSON in the request body: {}",
            text.trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        JsonRejection::JsonDataError(_) => ApiError::BadRequest(format!(
            "the request body does not fit the API's type: {}",
            text.trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        )),
        JsonRejection::BytesRejection(ref b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        _ => ApiError::BadRequest(format!("cannot read the request body: {text}")),
    }
}

pub fn too_large() -> ApiError {
    ApiError::BadRequest(format!(
        "request body too large: the manager reads at most {} KiB",
        BODY_LIMIT / 1024
    ))
}

/// A query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(query_rejection(&r)),
        }
    }
}

fn query_rejection(r: &QueryRejection) -> ApiError {
    ApiError::BadRequest(format!(
        "invalid query string: {}",
        r.body_text()
            .trim_start_matches("Failed to deserialize query string: ")
    ))
}

/// What an error answered by something other than a handler (an unknown path, a method
/// the path does not have, a body over the limit) means in the Engine API's terms.
/// dockerd answers a method it does not route as it answers an unknown path.
fn from_plain(status: StatusCode, text: &str) -> Option<ApiError> {
    match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            Some(ApiError::NotFound("page not found".into()))
        }
        StatusCode::PAYLOAD_TOO_LARGE => Some(too_large()),
        s if s.is_client_error() => Some(ApiError::BadRequest(if text.is_empty() {
            s.canonical_reason().unwrap_or("bad request").to_string()
        } else {
            text.to_string()
        })),
        _ => None,
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
    match from_plain(status, &text) {
        Some(e) => e.into_response(),
        None => error::body(status, &text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent's log push the manager refused for its size would be retried for ever.
    #[test]
    fn a_full_log_push_fits_in_a_body() {
        const { assert!(crate::tasklog::PUSH_BATCH_MAX < BODY_LIMIT) }
    }
}
