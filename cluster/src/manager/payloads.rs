//! `docker secret` and `docker config`: named payloads, immutable but for their labels, kept
//! sealed in the store (see `sealed`), delivered only inside the plans of the nodes that run a
//! task using them, and put in those tasks on a tmpfs (see the agent's `process`). A secret's
//! data never leaves the manager through the API again; a config's does, as in docker.
//!
//! Both kinds share everything here but their names and that one difference.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use bollard::models::{Config, ConfigSpec, ObjectVersion, Secret, SecretSpec};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{self, Query};
use super::lookup::{Field, Filters, ListQuery, find};
use super::shared::Shared;
use crate::model::Payload;
use crate::names::{self, Named};
use crate::store::State as StoreState;

/// docker's limit on a secret's or config's data.
pub const MAX_DATA: usize = 500 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    pub fn of(self, s: &StoreState) -> &imbl::OrdMap<String, Payload> {
        match self {
            Kind::Secret => &s.secrets,
            Kind::Config => &s.configs,
        }
    }

    fn put(self, s: &mut StoreState, p: Payload) {
        match self {
            Kind::Secret => s.put_secret(p),
            Kind::Config => s.put_config(p),
        }
    }

    fn remove(self, s: &mut StoreState, id: &str) {
        match self {
            Kind::Secret => s.remove_secret(id),
            Kind::Config => s.remove_config(id),
        }
    }

    /// The services whose tasks use payload `p` (referred to by ID, or by name alone).
    fn users(self, s: &StoreState, p: &Payload) -> Vec<String> {
        let (id, name) = (Some(p.id.as_str()), Some(p.name.as_str()));
        s.services
            .values()
            .filter(|svc| {
                let c = svc
                    .spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref());
                match self {
                    Kind::Secret => c.and_then(|c| c.secrets.as_ref()).is_some_and(|r| {
                        r.iter().any(|r| {
                            r.secret_id.as_deref() == id
                                || (r.secret_id.is_none() && r.secret_name.as_deref() == name)
                        })
                    }),
                    Kind::Config => c.and_then(|c| c.configs.as_ref()).is_some_and(|r| {
                        r.iter().any(|r| {
                            r.config_id.as_deref() == id
                                || (r.config_id.is_none() && r.config_name.as_deref() == name)
                        })
                    }),
                }
            })
            .map(|svc| svc.name.clone())
            .collect()
    }
}

/// What both kinds' create and update bodies carry.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Spec {
    name: Option<String>,
    labels: Option<HashMap<String, String>>,
    data: Option<String>,
    driver: Option<serde_json::Value>,
    templating: Option<serde_json::Value>,
}

impl Spec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

fn version(p: &Payload) -> Option<ObjectVersion> {
    Some(ObjectVersion {
        index: Some(p.version),
    })
}

fn labels(p: &Payload) -> Option<HashMap<String, String>> {
    Some(p.labels.clone().into_iter().collect())
}

fn secret_api(p: &Payload) -> Secret {
    Secret {
        id: Some(p.id.clone()),
        version: version(p),
        created_at: Some(p.created),
        updated_at: Some(p.updated),
        // The data is never given back.
        spec: Some(SecretSpec {
            name: Some(p.name.clone()),
            labels: labels(p),
            ..Default::default()
        }),
    }
}

fn config_api(p: &Payload) -> Config {
    Config {
        id: Some(p.id.clone()),
        version: version(p),
        created_at: Some(p.created),
        updated_at: Some(p.updated),
        spec: Some(ConfigSpec {
            name: Some(p.name.clone()),
            labels: labels(p),
            data: Some(base64::engine::general_purpose::STANDARD.encode(&*p.data)),
            ..Default::default()
        }),
    }
}

fn matching<'a>(kind: Kind, s: &'a StoreState, q: &ListQuery) -> ApiResult<Vec<&'a Payload>> {
    let filters = Filters::parse(q.filters.as_deref(), &["id", "name", "label", "names"])?;
    Ok(kind
        .of(s)
        .values()
        .filter(|p| {
            let labels: HashMap<String, String> = p.labels.clone().into_iter().collect();
            filters.matches(|k| match k {
                "id" => Field::Prefix(p.id.as_str().into()),
                "name" | "names" => Field::Prefix(p.name.as_str().into()),
                "label" => Field::Labels(Some(&labels)),
                _ => Field::Any,
            })
        })
        .collect())
}

fn create(m: &Shared, kind: Kind, spec: Spec) -> ApiResult<String> {
    m.update(|s| create_in(s, kind, &spec))
}

/// The payload `spec` asks for, checked and written into the draft `s`.
fn create_in(s: &mut StoreState, kind: Kind, spec: &Spec) -> ApiResult<String> {
    let noun = kind.noun();
    let name = spec.name.clone().unwrap_or_default();
    names::validate(Named::Payload, &name).map_err(ApiError::BadRequest)?;
    if spec.driver.as_ref().is_some_and(|d| !d.is_null())
        || spec.templating.as_ref().is_some_and(|t| !t.is_null())
    {
        return Err(ApiError::BadRequest(format!(
            "{noun} drivers and templating are not supported by swarmkit: give the data itself"
        )));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(spec.data.clone().unwrap_or_default())
        .map_err(|_| ApiError::BadRequest(format!("the {noun}'s Data is not base64")))?;
    if data.is_empty() || data.len() > MAX_DATA {
        return Err(ApiError::BadRequest(format!(
            "a {noun} holds 1 byte to {} KiB of data; {name} has {} bytes",
            MAX_DATA / 1024,
            data.len()
        )));
    }
    let now = chrono::Utc::now();
    if kind.of(s).values().any(|p| p.name == name) {
        return Err(ApiError::Conflict(format!(
            "{noun} {name} already exists: choose another name, or remove it first (docker {noun} rm {name})"
        )));
    }
    let p = Payload {
        id: crate::ids::new_id(),
        name: name.clone(),
        created: now,
        updated: now,
        version: 0,
        labels: spec
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        data: std::sync::Arc::new(data),
    };
    let id = p.id.clone();
    kind.put(s, p);
    Ok(id)
}

/// What a stack deploy does with one of its payloads, on the draft `s`: create it, or, when
/// one of that name exists, update it as docker's CLI does (only its labels may change).
pub fn put_in(s: &mut StoreState, kind: Kind, spec: &Spec) -> ApiResult<()> {
    let name = spec.name.clone().unwrap_or_default();
    match kind.of(s).values().find(|p| p.name == name) {
        Some(p) => {
            let (id, version) = (p.id.clone(), p.version);
            update_in(s, kind, &id, Some(version), spec)
        }
        None => create_in(s, kind, spec).map(drop),
    }
}

fn remove(m: &Shared, kind: Kind, id: &str) -> ApiResult<StatusCode> {
    let noun = kind.noun();
    m.update(|s| {
        let p = find(kind.of(s), id, |p| &p.name, noun)?.clone();
        let users = kind.users(s, &p);
        if !users.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{noun} {} is in use by the following service(s): {}. Remove it from them first \
                 (docker service update --{noun}-rm {} SERVICE)",
                p.name,
                users.join(", "),
                p.name
            )));
        }
        kind.remove(s, &p.id);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct UpdateQuery {
    version: Option<u64>,
}

/// Only the labels change, as in docker; the data and name are the payload's for good.
fn update(m: &Shared, kind: Kind, id: &str, q: UpdateQuery, spec: Spec) -> ApiResult<()> {
    m.update(|s| update_in(s, kind, id, q.version, &spec))
}

fn update_in(
    s: &mut StoreState,
    kind: Kind,
    id: &str,
    version: Option<u64>,
    spec: &Spec,
) -> ApiResult<()> {
    let noun = kind.noun();
    let mut p = find(kind.of(s), id, |p| &p.name, noun)?.clone();
    let Some(version) = version else {
        return Err(ApiError::BadRequest(format!(
            "{noun} update needs ?version=N (the {noun}'s Version.Index)"
        )));
    };
    if version != p.version {
        return Err(ApiError::Conflict(format!(
            "update out of sequence: {noun} {} changed since version {version} (now {}); inspect it again and retry",
            p.name, p.version
        )));
    }
    if spec.name.as_deref().is_some_and(|n| n != p.name) {
        return Err(ApiError::BadRequest(format!(
            "a {noun}'s name cannot change: create another {noun}"
        )));
    }
    let same_data = spec.data.as_deref().is_none_or(|d| {
        base64::engine::general_purpose::STANDARD
            .decode(d)
            .is_ok_and(|d| d == *p.data)
    });
    if !same_data {
        return Err(ApiError::BadRequest(format!(
            "only updates to Labels are allowed: a {noun}'s data cannot change; create a new \
             {noun} and roll the services onto it (docker service update --{noun}-rm OLD --{noun}-add NEW)"
        )));
    }
    p.labels = spec
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    p.updated = chrono::Utc::now();
    kind.put(s, p);
    Ok(())
}

pub async fn secrets(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Secret>>> {
    let s = m.store.snapshot();
    Ok(Json(
        matching(Kind::Secret, &s, &q)?
            .into_iter()
            .map(secret_api)
            .collect(),
    ))
}

pub async fn configs(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Config>>> {
    let s = m.store.snapshot();
    Ok(Json(
        matching(Kind::Config, &s, &q)?
            .into_iter()
            .map(config_api)
            .collect(),
    ))
}

pub async fn secret_create(
    State(m): State<Shared>,
    extract::Json(spec): extract::Json<Spec>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id = create(&m, Kind::Secret, spec)?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "ID": id }))))
}

pub async fn config_create(
    State(m): State<Shared>,
    extract::Json(spec): extract::Json<Spec>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id = create(&m, Kind::Config, spec)?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "ID": id }))))
}

pub async fn secret_inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Secret>> {
    let s = m.store.snapshot();
    Ok(Json(secret_api(find(
        &s.secrets,
        &id,
        |p| &p.name,
        "secret",
    )?)))
}

pub async fn config_inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Config>> {
    let s = m.store.snapshot();
    Ok(Json(config_api(find(
        &s.configs,
        &id,
        |p| &p.name,
        "config",
    )?)))
}

pub async fn secret_remove(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    remove(&m, Kind::Secret, &id)
}

pub async fn config_remove(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    remove(&m, Kind::Config, &id)
}

pub async fn secret_update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<UpdateQuery>,
    extract::Json(spec): extract::Json<Spec>,
) -> ApiResult<StatusCode> {
    update(&m, Kind::Secret, &id, q, spec)?;
    Ok(StatusCode::OK)
}

pub async fn config_update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<UpdateQuery>,
    extract::Json(spec): extract::Json<Spec>,
) -> ApiResult<StatusCode> {
    update(&m, Kind::Config, &id, q, spec)?;
    Ok(StatusCode::OK)
}
