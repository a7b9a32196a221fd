//! `POST /swarmkit/v1/stacks/check`: a whole stack deploy run on a copy of the state and
//! dropped, so that `swarmkit stack deploy` learns of every refusal before it creates
//! anything. Each part goes through exactly what its own route runs (`networks::create_in`,
//! `payloads::put_in`, `services::create_in`/`update_in`), in the order the deploy makes
//! them, so the networks, secrets and configs the stack is about to create count as there
//! for its services, and two services of one stack that clash (a port, a name) are refused
//! as the second real create would be. Nothing is written: the copy is never committed.

use axum::Json;
use axum::extract::State;
use bollard::models::NetworkCreateRequest;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract;
use super::payloads::{self, Kind};
use super::shared::Shared;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    /// The networks the deploy will create (those it finds are not sent).
    #[serde(default)]
    networks: Vec<NetworkCreateRequest>,
    /// The stack's secrets and configs: created, or updated when one of that name exists.
    #[serde(default)]
    secrets: Vec<payloads::Spec>,
    #[serde(default)]
    configs: Vec<payloads::Spec>,
    #[serde(default)]
    services: Vec<CheckedService>,
}

/// A service to create, or with `ID` and `Version` the update of one that exists.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckedService {
    spec: serde_json::Value,
    #[serde(rename = "ID")]
    id: Option<String>,
    version: Option<u64>,
}

/// The error, with the part of the stack it is about in front (`service demo_web: ...`).
fn about(e: ApiError, what: &str) -> ApiError {
    use axum::http::StatusCode;
    let message = format!("{what}: {e}");
    match e.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        StatusCode::CONFLICT => ApiError::Conflict(message),
        StatusCode::FORBIDDEN => ApiError::Forbidden(message),
        s if s.is_server_error() => e,
        _ => ApiError::BadRequest(message),
    }
}

pub async fn check(
    State(m): State<Shared>,
    extract::Json(req): extract::Json<Check>,
) -> ApiResult<Json<serde_json::Value>> {
    // A copy of the committed state; handing it to no `update` is what keeps this a dry run.
    let mut draft = (*m.store.snapshot()).clone();
    for n in &req.networks {
        super::networks::create_in(&mut draft, n)
            .map_err(|e| about(e, &format!("network {}", n.name)))?;
    }
    for (kind, specs) in [(Kind::Secret, &req.secrets), (Kind::Config, &req.configs)] {
        for spec in specs {
            payloads::put_in(&mut draft, kind, spec)
                .map_err(|e| about(e, &format!("{} {}", kind.noun(), spec.name())))?;
        }
    }
    for svc in req.services {
        let name = svc
            .spec
            .get("Name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let what = format!("service {name}");
        let spec = super::options::spec_of(svc.spec).map_err(|e| about(e, &what))?;
        match svc.id {
            Some(id) => {
                super::services::update_in(&mut draft, &id, svc.version, None, spec, None, false)
            }
            None => super::services::create_in(&mut draft, spec, None).map(drop),
        }
        .map_err(|e| about(e, &what))?;
    }
    Ok(Json(serde_json::json!({ "Warnings": null })))
}
