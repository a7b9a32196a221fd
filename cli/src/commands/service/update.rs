//! `swarmkit service update`, `scale` and `rollback`: read the spec, change what the flags
//! name, send it back at the version read.

use bollard::models::{
    EndpointPortConfig, EndpointSpec, NetworkAttachmentConfig, ServiceSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::UpdateServiceOptions;
use clap::Args;

use super::policy::PolicyArgs;
use super::spec::{env_entry, network_id, parse_replicas, ports_of, warn};
use crate::api::{Api, ApiResult, print_error};
use crate::progress;
use crate::publish::PublishSpec;

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Number of tasks
    #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
    replicas: Option<u64>,
    /// Number of job tasks to run concurrently
    #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
    max_concurrent: Option<u64>,
    /// Service image tag
    #[arg(long)]
    image: Option<String>,
    /// Add or update an environment variable
    #[arg(long, value_name = "KEY=VALUE")]
    env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long, value_name = "KEY")]
    env_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long, value_name = "SPEC")]
    publish_add: Vec<PublishSpec>,
    /// Remove a published port by its target port
    #[arg(long, value_name = "TARGET[/PROTO]")]
    publish_rm: Vec<String>,
    /// Add a network
    #[arg(long, value_name = "NETWORK")]
    network_add: Vec<String>,
    /// Remove a network
    #[arg(long, value_name = "NETWORK")]
    network_rm: Vec<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    force: bool,
    /// Roll back to the previous specification
    #[arg(long)]
    rollback: bool,
    /// Add or update a placement constraint
    #[arg(long, value_name = "EXPR")]
    constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long, value_name = "EXPR")]
    constraint_rm: Vec<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    /// Do not query the registry to resolve image digest and supported platforms
    #[arg(long)]
    no_resolve_image: bool,
    /// Send registry authentication details to swarm agents
    #[arg(long)]
    with_registry_auth: bool,
    service: String,
}

/// GETs the service, lets `edit` change its spec, and POSTs it back at the version read. If
/// another client changed the service in between, the manager refuses (409, out of
/// sequence) and the edit is replayed on the fresh spec, so concurrent updates all land and
/// none overwrites another.
async fn modify(
    api: &Api,
    name: &str,
    edit: impl Fn(&mut ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    modify_or_rollback(api, name, false, None, edit).await
}

/// `modify`, or with `rollback` the manager's own rollback to the previous spec (the spec
/// sent is then ignored, as dockerd does); with `credentials` (`--with-registry-auth`) the
/// service's registry credentials are replaced, else it keeps those it has.
async fn modify_or_rollback(
    api: &Api,
    name: &str,
    rollback: bool,
    credentials: Option<bollard::auth::DockerCredentials>,
    edit: impl Fn(&mut ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    const ATTEMPTS: usize = 20;
    for attempt in 1..=ATTEMPTS {
        let service = api.docker.inspect_service(name, None).await.api(api)?;
        let id = service.id.clone().unwrap_or_else(|| name.to_string());
        let version = service.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = service.spec.unwrap_or_default();
        edit(&mut spec)?;
        let opts = UpdateServiceOptions {
            version: i32::try_from(version).unwrap_or(i32::MAX),
            rollback: rollback.then(|| "previous".to_string()),
            ..Default::default()
        };
        match api
            .docker
            .update_service(&id, spec, opts, credentials.clone())
            .await
        {
            Ok(resp) => {
                warn(resp.warnings);
                return Ok(id);
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(Err::<(), _>(e).api(api).unwrap_err().into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// The replicas of a replicated service, or a replicated job's total completions, as
/// docker's `scale` and `update --replicas` set them; a global service has none.
fn set_replicas(spec: &mut ServiceSpec, name: &str, replicas: u64) -> anyhow::Result<()> {
    let replicas = Some(i64::try_from(replicas).unwrap_or(i64::MAX));
    let mode = spec.mode.get_or_insert_with(Default::default);
    if let Some(replicated) = mode.replicated.as_mut() {
        replicated.replicas = replicas;
    } else if let Some(job) = mode.replicated_job.as_mut() {
        job.total_completions = replicas;
    } else {
        anyhow::bail!(
            "{name}: scale can only be used with replicated or replicated-job mode (a global service runs one task per eligible node)"
        );
    }
    Ok(())
}

/// A replicated job's `--max-concurrent`, as docker's `update` sets it.
fn set_max_concurrent(spec: &mut ServiceSpec, name: &str, n: u64) -> anyhow::Result<()> {
    let Some(job) = spec.mode.as_mut().and_then(|m| m.replicated_job.as_mut()) else {
        anyhow::bail!("{name}: max-concurrent can only be used with replicated-job mode");
    };
    job.max_concurrent = Some(i64::try_from(n).unwrap_or(i64::MAX));
    Ok(())
}

pub async fn scale(api: &Api, targets: Vec<(String, u64)>, detach: bool) -> anyhow::Result<i32> {
    let mut code = 0;
    let mut scaled = Vec::new();
    for (name, replicas) in targets {
        match modify(api, &name, |spec| set_replicas(spec, &name, replicas)).await {
            Ok(id) => {
                println!("{name} scaled to {replicas}");
                scaled.push(id);
            }
            Err(err) => {
                print_error(&err);
                code = 1;
            }
        }
    }
    if !detach {
        for id in scaled {
            progress::converge(api, &id, false).await?;
        }
    }
    Ok(code)
}

pub async fn update(api: &Api, args: UpdateArgs) -> anyhow::Result<i32> {
    let mut add_networks = Vec::new();
    for net in &args.network_add {
        add_networks.push(network_id(api, net).await?);
    }
    let mut rm_networks = Vec::new();
    for net in &args.network_rm {
        rm_networks.push(network_id(api, net).await?);
    }
    let name = args.service.clone();
    // As docker: the credentials are for the image the update leaves (the new one, else the
    // service's own), and a new image is pinned to its digest unless told not to.
    let credentials = if args.with_registry_auth {
        let image = match &args.image {
            Some(i) => i.clone(),
            None => current_image(api, &name).await?,
        };
        super::create::registry_credentials(&image)
    } else {
        None
    };
    let image = match &args.image {
        Some(i) if !args.no_resolve_image => Some(
            super::create::pin_image(api, i, credentials.clone())
                .await
                .0,
        ),
        other => other.clone(),
    };
    let id = modify_or_rollback(api, &name, args.rollback, credentials, |spec| {
        args.policy.apply(spec);
        if !args.constraint_add.is_empty() || !args.constraint_rm.is_empty() {
            let placement = spec
                .task_template
                .get_or_insert_with(Default::default)
                .placement
                .get_or_insert_with(Default::default);
            let list = placement.constraints.get_or_insert_with(Vec::new);
            list.retain(|c| !args.constraint_rm.contains(c));
            for c in &args.constraint_add {
                if !list.contains(c) {
                    list.push(c.clone());
                }
            }
        }
        if let Some(r) = args.replicas {
            set_replicas(spec, &name, r)?;
        }
        if let Some(n) = args.max_concurrent {
            set_max_concurrent(spec, &name, n)?;
        }
        let task = spec.task_template.get_or_insert_with(Default::default);
        if args.force {
            task.force_update = Some(task.force_update.unwrap_or(0) + 1);
        }
        let container = task.container_spec.get_or_insert_with(Default::default);
        if let Some(image) = &image {
            container.image = Some(image.clone());
        }
        // Only touch what the flags name, so an untouched field keeps its exact value.
        if !args.env_add.is_empty() || !args.env_rm.is_empty() {
            update_env(container, &args.env_add, &args.env_rm);
        }
        if !add_networks.is_empty() || !rm_networks.is_empty() {
            let nets = task.networks.get_or_insert_with(Vec::new);
            nets.retain(|n| !rm_networks.iter().any(|r| n.target.as_ref() == Some(r)));
            for net in &add_networks {
                if !nets.iter().any(|n| n.target.as_ref() == Some(net)) {
                    nets.push(NetworkAttachmentConfig {
                        target: Some(net.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        if !args.publish_add.is_empty() || !args.publish_rm.is_empty() {
            let endpoint = spec.endpoint_spec.get_or_insert_with(Default::default);
            update_ports(
                endpoint,
                ports_of(args.publish_add.clone()),
                &args.publish_rm,
            );
        }
        Ok(())
    })
    .await?;
    println!("{}", args.service);
    if !args.detach {
        progress::converge(api, &id, args.quiet).await?;
    }
    Ok(0)
}

pub async fn rollback(api: &Api, name: &str, detach: bool, quiet: bool) -> anyhow::Result<i32> {
    let id = modify_or_rollback(api, name, true, None, |_| Ok(())).await?;
    println!("{name}");
    if !detach {
        progress::converge(api, &id, quiet).await?;
    }
    Ok(0)
}

async fn current_image(api: &Api, name: &str) -> anyhow::Result<String> {
    let service = api.docker.inspect_service(name, None).await.api(api)?;
    Ok(service
        .spec
        .and_then(|s| s.task_template)
        .and_then(|t| t.container_spec)
        .and_then(|c| c.image)
        .unwrap_or_default())
}

fn update_env(container: &mut TaskSpecContainerSpec, add: &[String], rm: &[String]) {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| !rm.contains(&key(e)));
    for kv in add.iter().map(|kv| env_entry(kv)) {
        env.retain(|e| key(e) != key(&kv));
        env.push(kv);
    }
}

/// `--publish-rm 80` or `80/udp` drops by target port; an added port replaces one with the
/// same published port and protocol.
fn update_ports(endpoint: &mut EndpointSpec, add: Vec<EndpointPortConfig>, rm: &[String]) {
    let ports = endpoint.ports.get_or_insert_with(Vec::new);
    for r in rm {
        let (target, proto) = r.split_once('/').unwrap_or((r, "tcp"));
        ports.retain(|p| {
            let same_proto = p
                .protocol
                .map(|x| x.to_string())
                .unwrap_or_else(|| "tcp".into())
                == proto;
            !(same_proto && p.target_port.map(|t| t.to_string()).as_deref() == Some(target))
        });
    }
    for new in add {
        ports.retain(|p| {
            new.published_port == Some(0)
                || !(p.published_port == new.published_port && p.protocol == new.protocol)
        });
        ports.push(new);
    }
}

/// `service scale`'s `SERVICE=REPLICAS`.
pub fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let Some((name, replicas)) = s.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        return Err("use SERVICE=REPLICAS, e.g. web=3".into());
    };
    let replicas =
        parse_replicas(replicas).map_err(|e| format!("invalid replicas for {name}: {e}"))?;
    Ok((name.to_string(), replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_updates_replace_by_key() {
        let mut c = TaskSpecContainerSpec {
            env: Some(vec!["A=1".into(), "B=2".into()]),
            ..Default::default()
        };
        update_env(&mut c, &["A=3".into(), "C=4".into()], &["B".into()]);
        assert_eq!(c.env, Some(vec!["A=3".into(), "C=4".into()]));
    }

    #[test]
    fn port_updates() {
        let spec = |s: &str| crate::publish::parse(s).unwrap_or_default();
        let mut e = EndpointSpec {
            ports: Some(spec("80:80")),
            ..Default::default()
        };
        update_ports(&mut e, spec("80:8080"), &[]);
        update_ports(&mut e, spec("9200:9200"), &[]);
        assert_eq!(e.ports.as_ref().map(Vec::len), Some(2));
        update_ports(&mut e, vec![], &["9200".into()]);
        assert_eq!(e.ports, Some(spec("80:8080")));
    }

    #[test]
    fn replicas_and_scale_parsing() {
        assert_eq!(parse_replicas("3"), Ok(3));
        assert!(parse_replicas("-1").unwrap_err().contains("negative"));
        assert!(
            parse_replicas("three")
                .unwrap_err()
                .contains("--replicas 3")
        );
        assert_eq!(parse_scale("web=5"), Ok(("web".into(), 5)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("=3").is_err());
        assert!(parse_scale("web=x").unwrap_err().contains("web"));
    }
}
