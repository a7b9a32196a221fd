//! `swarmkit stack deploy`: the stock `docker stack deploy` creates networks, secrets and
//! configs first and services last, so a service the manager refuses leaves half a stack.
//! Here everything that can be checked is checked before the first create: the files are read
//! and converted (refusing what swarmkit does not do, by name), the external networks,
//! secrets and configs are looked up, each image is pinned at the manager (unreachable: a
//! warning, as with docker), and the whole deploy is run by the manager on a copy of its state
//! (`POST /swarmkit/v1/stacks/check`) through the very functions its create and update routes
//! use. Only then are the objects made, in docker's order; if one still fails (a race), what
//! was made is named, with how to remove it.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use bollard::models::{ConfigSpec, SecretSpec, ServiceSpec};
use bollard::query_parameters::{
    ListConfigsOptions, ListNetworksOptions, ListSecretsOptions, UpdateConfigOptions,
    UpdateSecretOptions, UpdateServiceOptions,
};
use clap::{Args, ValueEnum};

use super::convert::{IMAGE_LABEL, Payload, Plan};
use crate::api::{Api, ApiResult};
use crate::commands::service::{pin_image, registry_credentials};

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum ResolveImage {
    Always,
    Changed,
    Never,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Path to a Compose file (given more than once, later files override earlier ones)
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    compose_files: Vec<PathBuf>,
    /// Prune services that are no longer referenced
    #[arg(long)]
    prune: bool,
    /// Query the registry to resolve image digest and supported platforms
    #[arg(long, value_enum, default_value = "always")]
    resolve_image: ResolveImage,
    /// Send registry authentication details to Swarm agents
    #[arg(long)]
    with_registry_auth: bool,
    stack: String,
}

/// A service of the stack as it is now, if it exists.
struct Existing {
    id: String,
    version: u64,
    spec: ServiceSpec,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn payload_json(p: &Payload) -> serde_json::Value {
    serde_json::json!({ "Name": p.name, "Labels": p.labels, "Data": b64(&p.data) })
}

pub async fn deploy(cluster: &str, api: &Api, args: DeployArgs) -> anyhow::Result<i32> {
    let stack = args.stack.clone();
    let refused = |e: anyhow::Error| e.context(format!("stack {stack}: nothing was created"));
    let loaded = super::compose::load(&args.compose_files).map_err(refused)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let mut plan = super::convert::convert(&stack, loaded).map_err(refused)?;

    // What the cluster must already have.
    let mut missing = Vec::new();
    for n in &plan.external_networks {
        if api.docker.inspect_network(n, None).await.is_err() {
            missing.push(format!(
                "network {n:?} is declared as external, but could not be found: create it first (swarmkit network create --driver overlay {n})"
            ));
        }
    }
    for s in &plan.external_secrets {
        if api.docker.inspect_secret(s).await.is_err() {
            missing.push(format!(
                "secret {s:?} is declared as external, but could not be found: create it first (docker secret create {s} FILE)"
            ));
        }
    }
    for c in &plan.external_configs {
        if api.docker.inspect_config(c).await.is_err() {
            missing.push(format!(
                "config {c:?} is declared as external, but could not be found: create it first (docker config create {c} FILE)"
            ));
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("{}. Nothing was created", missing.join("; "));
    }

    let existing = existing_services(api, &stack).await?;
    let existing_networks: Vec<String> = api
        .docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .api(api)?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    plan.networks
        .retain(|n| !existing_networks.contains(&n.name));

    // Images pinned as `service create` pins them (docker's warning when unreachable).
    for (_, spec) in plan.services.iter_mut() {
        pin(
            api,
            spec,
            &existing,
            args.resolve_image,
            args.with_registry_auth,
        )
        .await;
    }

    check(cluster, &plan, &existing).await?;
    create(api, &stack, plan, &existing, &args).await
}

async fn existing_services(api: &Api, stack: &str) -> anyhow::Result<HashMap<String, Existing>> {
    let opts = bollard::query_parameters::ListServicesOptions {
        filters: super::convert::filters(stack),
        ..Default::default()
    };
    let mut out = HashMap::new();
    for s in api.docker.list_services(Some(opts)).await.api(api)? {
        let spec = s.spec.unwrap_or_default();
        out.insert(
            spec.name.clone().unwrap_or_default(),
            Existing {
                id: s.id.unwrap_or_default(),
                version: s.version.and_then(|v| v.index).unwrap_or_default(),
                spec,
            },
        );
    }
    Ok(out)
}

async fn pin(
    api: &Api,
    spec: &mut ServiceSpec,
    existing: &HashMap<String, Existing>,
    resolve: ResolveImage,
    with_registry_auth: bool,
) {
    let name = spec.name.clone().unwrap_or_default();
    let Some(container) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    else {
        return;
    };
    let image = container.image.clone().unwrap_or_default();
    let current = existing.get(&name).map(|e| &e.spec);
    let unchanged = current
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(IMAGE_LABEL))
        .is_some_and(|i| *i == image);
    match resolve {
        ResolveImage::Never => {}
        // docker's `changed`: an image the service already runs keeps the digest it has.
        ResolveImage::Changed if unchanged => {
            if let Some(pinned) = current
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
            {
                container.image = Some(pinned);
            }
        }
        ResolveImage::Always | ResolveImage::Changed => {
            let credentials = with_registry_auth
                .then(|| registry_credentials(&image))
                .flatten();
            let (pinned, platforms) = pin_image(api, &image, credentials).await;
            container.image = Some(pinned);
            if let Some(platforms) = platforms
                && let Some(t) = spec.task_template.as_mut()
            {
                t.placement.get_or_insert_with(Default::default).platforms = Some(platforms);
            }
        }
    }
}

/// The whole deploy, run by the manager on a copy of its state.
async fn check(
    cluster: &str,
    plan: &Plan,
    existing: &HashMap<String, Existing>,
) -> anyhow::Result<()> {
    use ::cluster::client::{ClientError, ManagerClient};
    let services: Vec<serde_json::Value> = plan
        .services
        .iter()
        .map(|(_, spec)| {
            let name = spec.name.clone().unwrap_or_default();
            match existing.get(&name) {
                Some(e) => serde_json::json!({ "Spec": spec, "ID": e.id, "Version": e.version }),
                None => serde_json::json!({ "Spec": spec }),
            }
        })
        .collect();
    let body = serde_json::json!({
        "Networks": plan.networks,
        "Secrets": plan.secrets.iter().map(payload_json).collect::<Vec<_>>(),
        "Configs": plan.configs.iter().map(payload_json).collect::<Vec<_>>(),
        "Services": services,
    });
    let client = ManagerClient::of_cluster(&::cluster::paths::ClusterPaths::new(cluster));
    let checked: Result<serde_json::Value, _> =
        client.post("/swarmkit/v1/stacks/check", &body).await;
    match checked {
        Ok(_) => Ok(()),
        Err(ClientError::Status { message, .. }) => {
            Err(crate::api::ApiError::Daemon(format!("{message}. Nothing was created")).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("checking the stack with the manager")),
    }
}

/// What a deploy made so far, to name if a later step fails.
#[derive(Default)]
struct Made(Vec<String>);

impl Made {
    fn fail(&self, stack: &str, err: crate::api::ApiError) -> anyhow::Error {
        let made = if self.0.is_empty() {
            "nothing was created or changed".to_string()
        } else {
            format!(
                "created or changed before it: {}; remove the stack with swarmkit stack rm {stack} (or deploy it again once the cause is fixed)",
                self.0.join(", ")
            )
        };
        anyhow::Error::new(err).context(format!(
            "stack {stack}: a step failed after every check had passed (the cluster changed meanwhile?); {made}"
        ))
    }
}

async fn create(
    api: &Api,
    stack: &str,
    plan: Plan,
    existing: &HashMap<String, Existing>,
    args: &DeployArgs,
) -> anyhow::Result<i32> {
    let mut made = Made::default();
    for n in plan.networks {
        println!("Creating network {}", n.name);
        let name = n.name.clone();
        api.docker
            .create_network(n)
            .await
            .api(api)
            .map_err(|e| made.fail(stack, e))?;
        made.0.push(format!("network {name}"));
    }
    let secret_ids = put_all(api, stack, Stored::Secret, plan.secrets, &mut made).await?;
    let config_ids = put_all(api, stack, Stored::Config, plan.configs, &mut made).await?;

    let wanted: Vec<String> = plan
        .services
        .iter()
        .filter_map(|(_, s)| s.name.clone())
        .collect();
    for (_, mut spec) in plan.services {
        let name = spec.name.clone().unwrap_or_default();
        fill_ids(&mut spec, &secret_ids, &config_ids);
        let credentials = if args.with_registry_auth {
            spec.task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.as_deref())
                .and_then(registry_credentials)
        } else {
            None
        };
        match existing.get(&name) {
            Some(e) => {
                println!("Updating service {name} (id: {})", e.id);
                // docker keeps the service's force-update counter across a redeploy.
                if let Some(t) = spec.task_template.as_mut() {
                    t.force_update = e.spec.task_template.as_ref().and_then(|t| t.force_update);
                }
                let opts = UpdateServiceOptions {
                    version: i32::try_from(e.version).unwrap_or(i32::MAX),
                    ..Default::default()
                };
                let r = api
                    .docker
                    .update_service(&e.id, spec, opts, credentials)
                    .await
                    .api(api)
                    .map_err(|err| made.fail(stack, err))?;
                crate::commands::service::warn(r.warnings);
                made.0.push(format!("service {name} (updated)"));
            }
            None => {
                println!("Creating service {name}");
                let r = api
                    .docker
                    .create_service(spec, credentials)
                    .await
                    .api(api)
                    .map_err(|err| made.fail(stack, err))?;
                crate::commands::service::warn(r.warnings);
                made.0.push(format!("service {name}"));
            }
        }
    }
    if args.prune {
        let mut gone: Vec<(&String, &Existing)> = existing
            .iter()
            .filter(|(n, _)| !wanted.contains(n))
            .collect();
        gone.sort_by_key(|(n, _)| n.as_str());
        for (name, e) in gone {
            println!("Removing service {name}");
            api.docker
                .delete_service(&e.id)
                .await
                .api(api)
                .map_err(|err| made.fail(stack, err))?;
        }
    }
    Ok(0)
}

/// Secret references by ID as well as name, as docker's CLI sends them.
fn fill_ids(
    spec: &mut ServiceSpec,
    secrets: &HashMap<String, String>,
    configs: &HashMap<String, String>,
) {
    let Some(c) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    else {
        return;
    };
    for r in c.secrets.iter_mut().flatten() {
        if let Some(id) = r.secret_name.as_ref().and_then(|n| secrets.get(n)) {
            r.secret_id = Some(id.clone());
        }
    }
    for r in c.configs.iter_mut().flatten() {
        if let Some(id) = r.config_name.as_ref().and_then(|n| configs.get(n)) {
            r.config_id = Some(id.clone());
        }
    }
}

/// What a stack stores by name before its services refer to it.
#[derive(Clone, Copy)]
enum Stored {
    Secret,
    Config,
}

impl Stored {
    fn noun(self) -> &'static str {
        match self {
            Stored::Secret => "secret",
            Stored::Config => "config",
        }
    }

    /// Every one by name: (ID, version).
    async fn index(self, api: &Api) -> anyhow::Result<HashMap<String, (String, u64)>> {
        let entries: Vec<(Option<String>, Option<String>, Option<u64>)> = match self {
            Stored::Secret => api
                .docker
                .list_secrets(None::<ListSecretsOptions>)
                .await
                .api(api)?
                .into_iter()
                .map(|s| {
                    let name = s.spec.and_then(|s| s.name);
                    (name, s.id, s.version.and_then(|v| v.index))
                })
                .collect(),
            Stored::Config => api
                .docker
                .list_configs(None::<ListConfigsOptions>)
                .await
                .api(api)?
                .into_iter()
                .map(|c| {
                    let name = c.spec.and_then(|s| s.name);
                    (name, c.id, c.version.and_then(|v| v.index))
                })
                .collect(),
        };
        Ok(entries
            .into_iter()
            .map(|(name, id, version)| {
                (
                    name.unwrap_or_default(),
                    (id.unwrap_or_default(), version.unwrap_or_default()),
                )
            })
            .collect())
    }

    /// Creates `p`, or updates the one with `existing` (ID, version) in place.
    async fn put(
        self,
        api: &Api,
        p: &Payload,
        existing: Option<&(String, u64)>,
    ) -> Result<(), bollard::errors::Error> {
        let (name, labels, data) = (
            Some(p.name.clone()),
            Some(p.labels.clone()),
            Some(b64(&p.data)),
        );
        let version = |v: &u64| i64::try_from(*v).unwrap_or(i64::MAX);
        match self {
            Stored::Secret => {
                let spec = SecretSpec {
                    name,
                    labels,
                    data,
                    ..Default::default()
                };
                match existing {
                    Some((id, v)) => {
                        let opts = UpdateSecretOptions {
                            version: version(v),
                        };
                        api.docker.update_secret(id, spec, opts).await
                    }
                    None => api.docker.create_secret(spec).await.map(drop),
                }
            }
            Stored::Config => {
                let spec = ConfigSpec {
                    name,
                    labels,
                    data,
                    ..Default::default()
                };
                match existing {
                    Some((id, v)) => {
                        let opts = UpdateConfigOptions {
                            version: version(v),
                        };
                        api.docker.update_config(id, spec, opts).await
                    }
                    None => api.docker.create_config(spec).await.map(drop),
                }
            }
        }
    }
}

/// Creates the stack's secrets or configs, or updates those that exist (docker's way); then
/// the ID of every one by name, external ones included.
async fn put_all(
    api: &Api,
    stack: &str,
    kind: Stored,
    payloads: Vec<Payload>,
    made: &mut Made,
) -> anyhow::Result<HashMap<String, String>> {
    let before = kind.index(api).await?;
    for p in payloads {
        let existing = before.get(&p.name);
        if existing.is_none() {
            println!("Creating {} {}", kind.noun(), p.name);
        }
        kind.put(api, &p, existing)
            .await
            .api(api)
            .map_err(|e| made.fail(stack, e))?;
        if existing.is_none() {
            made.0.push(format!("{} {}", kind.noun(), p.name));
        }
    }
    Ok(kind
        .index(api)
        .await?
        .into_iter()
        .map(|(name, (id, _))| (name, id))
        .collect())
}
