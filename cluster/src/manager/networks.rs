//! /networks: overlay networks in Swarm's shapes, next to docker's local default rows.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bollard::models::{Ipam, IpamConfig, Network as ApiNetwork, NetworkCreateRequest};

use super::error::{ApiError, ApiResult};
use super::extract::{self, Query};
use super::lookup::{Field, Filters, ListQuery, find};
use super::shared::Shared;
use crate::ipam;
use crate::keys::Keyring;
use crate::model::{ENCRYPTED_OPTION, Network};
use crate::names::{self, Named};
use crate::store::State as StoreState;

const LOCAL: [(&str, &str); 4] = [
    ("bridge", "bridge"),
    ("docker_gwbridge", "bridge"),
    ("host", "host"),
    ("none", "null"),
];

pub fn to_api(n: &Network) -> ApiNetwork {
    let mut options = HashMap::from([(
        "com.docker.network.driver.overlay.vxlanid_list".to_string(),
        n.vni.to_string(),
    )]);
    options.extend(n.options.clone());
    ApiNetwork {
        name: Some(n.name.clone()),
        id: Some(n.id.clone()),
        created: Some(n.created),
        scope: Some("swarm".into()),
        driver: Some("overlay".into()),
        enable_ipv4: Some(true),
        enable_ipv6: Some(false),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(n.subnet.to_string()),
                gateway: Some(n.gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        internal: Some(n.internal),
        attachable: Some(n.attachable),
        ingress: Some(n.ingress),
        config_only: Some(false),
        options: Some(options),
        labels: Some(n.labels.clone().into_iter().collect()),
        ..Default::default()
    }
}

fn local_rows(s: &StoreState) -> Vec<ApiNetwork> {
    LOCAL
        .iter()
        .map(|(name, driver)| ApiNetwork {
            name: Some(name.to_string()),
            id: s.meta.local_networks.get(*name).cloned(),
            created: s.meta.created,
            scope: Some("local".into()),
            driver: Some(driver.to_string()),
            enable_ipv4: Some(true),
            enable_ipv6: Some(false),
            internal: Some(false),
            attachable: Some(false),
            ingress: Some(false),
            config_only: Some(false),
            options: Some(HashMap::new()),
            labels: Some(HashMap::new()),
            ..Default::default()
        })
        .collect()
}

fn matches(n: &ApiNetwork, filters: &Filters) -> bool {
    fn text(f: &Option<String>) -> Cow<'_, str> {
        Cow::Borrowed(f.as_deref().unwrap_or_default())
    }
    filters.matches(|k| match k {
        "name" => Field::Prefix(text(&n.name)),
        "id" => Field::Prefix(text(&n.id)),
        "driver" => Field::Exact(text(&n.driver)),
        "scope" => Field::Exact(text(&n.scope)),
        "type" => Field::Exact(if n.scope.as_deref() == Some("local") {
            "builtin".into()
        } else {
            "custom".into()
        }),
        "label" => Field::Labels(n.labels.as_ref()),
        _ => Field::Any,
    })
}

pub async fn list(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ApiNetwork>>> {
    let filters = Filters::parse(
        q.filters.as_deref(),
        &["id", "name", "label", "driver", "scope", "type", "dangling"],
    )?;
    let s = m.store.snapshot();
    let mut all = local_rows(&s);
    all.extend(s.networks.values().map(to_api));
    all.retain(|n| matches(n, &filters));
    Ok(Json(all))
}

pub async fn inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiNetwork>> {
    let s = m.store.snapshot();
    if let Some(row) = local_rows(&s)
        .into_iter()
        .find(|n| n.name.as_deref() == Some(&id) || n.id.as_deref() == Some(&id))
    {
        return Ok(Json(row));
    }
    Ok(Json(to_api(find(
        &s.networks,
        &id,
        |n| &n.name,
        "network",
    )?)))
}

/// Refuses an encrypted network unless every node's kernel proved (by its agent's probe) that
/// it can carry ESP with AES-GCM, so nothing is created that could never encrypt.
fn check_ipsec(s: &StoreState) -> ApiResult<()> {
    let mut lacking: Vec<String> = Vec::new();
    for n in s.nodes.values() {
        match &n.ipsec_missing {
            Some(missing) if missing.is_empty() => {}
            Some(missing) => lacking.push(format!(
                "{} (kernel {}) lacks {}",
                n.hostname,
                n.kernel,
                missing.join(" and ")
            )),
            None => lacking.push(format!(
                "{} has not reported whether its kernel can encrypt (an agent from an older swarmkit)",
                n.hostname
            )),
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "encrypted overlay networks need IPsec ESP with AES-GCM ({}) in every node's kernel: {}. \
         Nothing was created. Use a cluster whose nodes boot such a kernel \
         (swarmkit cluster up --backend qemu), or drop --opt encrypted",
        netcore::xfrm::AEAD_ALG,
        lacking.join("; ")
    )))
}

pub async fn create(
    State(m): State<Shared>,
    extract::Json(req): extract::Json<NetworkCreateRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id = m.update(|s| create_in(s, &req))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "Id": id, "Warning": "" })),
    ))
}

/// The network `req` asks for, checked and written into the draft `s` (also what a stack's
/// check runs on a draft it then drops).
pub fn create_in(s: &mut StoreState, req: &NetworkCreateRequest) -> ApiResult<String> {
    names::validate(Named::Network, &req.name).map_err(ApiError::BadRequest)?;
    let driver = req.driver.clone().unwrap_or_else(|| "overlay".into());
    if driver != "overlay" {
        return Err(ApiError::BadRequest(format!(
            "network driver {driver:?} is not supported by a swarmkit manager: use --driver overlay"
        )));
    }
    let options: std::collections::BTreeMap<String, String> = req
        .options
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let encrypted = options.contains_key(ENCRYPTED_OPTION);
    if encrypted {
        check_ipsec(s)?;
    }
    if req.enable_ipv6 == Some(true) {
        return Err(ApiError::BadRequest(
            "IPv6 overlay networks are not supported: drop --ipv6".into(),
        ));
    }
    if req.ingress == Some(true) {
        return Err(ApiError::Conflict(
            "an ingress network already exists; swarmkit keeps exactly one".into(),
        ));
    }
    let configs = req
        .ipam
        .as_ref()
        .and_then(|i| i.config.clone())
        .unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::BadRequest(
            "only one IPAM config (one --subnet) per network is supported".into(),
        ));
    }
    let config = configs.into_iter().next().unwrap_or_default();
    let subnet = config
        .subnet
        .as_deref()
        .map(ipam::parse_subnet)
        .transpose()?;
    if config.gateway.is_some() && subnet.is_none() {
        return Err(ApiError::BadRequest(
            "--gateway needs --subnet: give the subnet the gateway belongs to".into(),
        ));
    }
    let gateway = match (&config.gateway, subnet) {
        (Some(g), Some(sub)) => Some(ipam::parse_gateway(g, sub)?),
        _ => None,
    };
    if LOCAL.iter().any(|(n, _)| *n == req.name) {
        return Err(ApiError::Forbidden(format!(
            "{} is a pre-defined network and cannot be created: choose another name",
            req.name
        )));
    }
    let taken = s.networks.values().any(|n| n.name == req.name);
    if taken {
        return Err(ApiError::Conflict(format!(
            "network with name {} already exists: choose another name or remove it first",
            req.name
        )));
    }
    let subnet = match subnet {
        Some(sub) => {
            ipam::check_overlap(s, sub)?;
            sub
        }
        None => ipam::allocate_subnet(s)?,
    };
    let gateway = gateway.unwrap_or_else(|| subnet.hosts().next().expect("prefix <= /29"));
    let n = Network {
        id: crate::ids::new_id(),
        name: req.name.clone(),
        created: chrono::Utc::now(),
        version: 0,
        subnet,
        gateway,
        vni: ipam::allocate_vni(s)?,
        attachable: req.attachable.unwrap_or(false),
        internal: req.internal.unwrap_or(false),
        ingress: false,
        labels: req.labels.clone().unwrap_or_default().into_iter().collect(),
        options: options.clone(),
        keyring: if encrypted {
            Some(Keyring::new(chrono::Utc::now())?)
        } else {
            None
        },
    };
    let id = n.id.clone();
    s.put_network(n);
    Ok(id)
}

pub async fn remove(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if LOCAL.iter().any(|(n, _)| *n == id) {
        return Err(ApiError::Forbidden(format!(
            "{id} is a pre-defined network and cannot be removed"
        )));
    }
    m.update(|s| {
        let n = find(&s.networks, &id, |n| &n.name, "network")?.clone();
        if let Some(svc) = s.services.values().find(|svc| svc.networks.contains(&n.id)) {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by service {}: remove the service first (swarmkit service rm {})",
                n.name, svc.name, svc.name
            )));
        }
        if n.ingress {
            return Err(ApiError::Conflict(
                "the ingress network cannot be removed: the routing mesh needs it".into(),
            ));
        }
        s.remove_network(&n.id);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
