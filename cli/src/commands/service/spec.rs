//! What several service subcommands share: the `--replicas` and `--env` parsers, network
//! names resolved to IDs, published ports for the spec, the manager's warnings, and a
//! service's name.

use bollard::models::{EndpointPortConfig, Service};

use crate::api::{Api, ApiError, ApiResult};
use crate::publish::PublishSpec;

pub fn parse_replicas(s: &str) -> Result<u64, String> {
    if s.trim_start().starts_with('-') {
        return Err("replicas cannot be negative: use 0 or more, e.g. --replicas 3".into());
    }
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not a number of replicas: use a whole number, e.g. --replicas 3")
    })
}

/// docker's ValidateEnv: a bare `KEY` takes its value from this shell, if set there.
pub fn env_entry(kv: &str) -> String {
    if kv.contains('=') {
        return kv.to_string();
    }
    match std::env::var(kv) {
        Ok(v) => format!("{kv}={v}"),
        Err(_) => kv.to_string(),
    }
}

/// docker resolves network names to IDs before creating the service, so the spec (and
/// `service inspect`) always carries IDs.
pub async fn network_id(api: &Api, name: &str) -> Result<String, ApiError> {
    let net = api.docker.inspect_network(name, None).await.api(api)?;
    Ok(net.id.unwrap_or_else(|| name.to_string()))
}

pub fn ports_of(specs: Vec<PublishSpec>) -> Vec<EndpointPortConfig> {
    specs.into_iter().flat_map(|p| p.0).collect()
}

/// The manager's warnings, on stderr as docker prints them.
pub fn warn(warnings: Option<Vec<String>>) {
    warnings
        .into_iter()
        .flatten()
        .for_each(|w| eprintln!("{w}"));
}

pub fn service_name(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_default()
}
