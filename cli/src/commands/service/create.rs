//! `swarmkit service create`: the spec docker's CLI would send for the same flags, the
//! image pinned to its digest, then the wait for convergence.

use std::collections::HashMap;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob, TaskSpec, TaskSpecContainerSpec,
};
use clap::{Args, ValueEnum};

use super::policy::PolicyArgs;
use super::spec::{env_entry, network_id, parse_replicas, ports_of, warn};
use crate::api::{Api, ApiResult};
use crate::progress;
use crate::publish::PublishSpec;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum Mode {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Network attachments
    #[arg(long = "network", value_name = "NETWORK")]
    networks: Vec<String>,
    /// Number of tasks
    #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
    replicas: Option<u64>,
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Publish a port as a node port: [PUBLISHED:]TARGET[/PROTO] or published=P,target=T
    #[arg(short, long = "publish", value_name = "SPEC")]
    publish: Vec<PublishSpec>,
    /// Placement constraint, e.g. node.hostname!=node3
    #[arg(long = "constraint", value_name = "EXPR")]
    constraints: Vec<String>,
    /// Attach a filesystem mount, e.g. type=volume,source=data,target=/data (registry images)
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<crate::mount::MountSpec>,
    /// Endpoint mode
    #[arg(long, value_enum)]
    endpoint_mode: Option<EndpointMode>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Service mode ("replicated", "global", "replicated-job" or "global-job")
    #[arg(long, value_enum, default_value = "replicated")]
    mode: Mode,
    /// Number of job tasks to run concurrently (default equal to --replicas)
    #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
    max_concurrent: Option<u64>,
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
    image: String,
    /// Command and arguments passed to the image
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The mode as docker's CLI sends it, refusing the counts a mode has no use for with
/// docker's words: a replicated job runs `--replicas` tasks in all, `--max-concurrent` (by
/// default all of them) at a time.
fn mode_spec(
    mode: Mode,
    replicas: Option<u64>,
    max_concurrent: Option<u64>,
) -> anyhow::Result<ServiceSpecMode> {
    if replicas.is_some() && matches!(mode, Mode::Global | Mode::GlobalJob) {
        anyhow::bail!(
            "replicas can only be used with replicated or replicated-job mode: drop --replicas, a global service runs one task per eligible node"
        );
    }
    if max_concurrent.is_some() && mode != Mode::ReplicatedJob {
        anyhow::bail!(
            "max-concurrent can only be used with replicated-job mode: add --mode replicated-job, or drop --max-concurrent"
        );
    }
    let count = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    Ok(match mode {
        Mode::Replicated => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: count(replicas),
            }),
            ..Default::default()
        },
        Mode::Global => ServiceSpecMode {
            global: Some(HashMap::new()),
            ..Default::default()
        },
        Mode::ReplicatedJob => ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: count(max_concurrent.or(replicas)),
                total_completions: count(replicas),
            }),
            ..Default::default()
        },
        Mode::GlobalJob => ServiceSpecMode {
            global_job: Some(HashMap::new()),
            ..Default::default()
        },
    })
}

pub async fn create(api: &Api, args: CreateArgs) -> anyhow::Result<i32> {
    let mut networks = Vec::new();
    for net in &args.networks {
        networks.push(NetworkAttachmentConfig {
            target: Some(network_id(api, net).await?),
            ..Default::default()
        });
    }
    let mode = mode_spec(args.mode, args.replicas, args.max_concurrent)?;
    let ports = ports_of(args.publish);
    let endpoint_spec = Some(EndpointSpec {
        mode: Some(match args.endpoint_mode {
            Some(EndpointMode::Dnsrr) => EndpointSpecModeEnum::DNSRR,
            _ => EndpointSpecModeEnum::VIP,
        }),
        ports: (!ports.is_empty()).then_some(ports),
    });
    // Only with --with-registry-auth, as docker: the credentials then go with the service to
    // every node that pulls its image.
    let credentials = args
        .with_registry_auth
        .then(|| registry_credentials(&args.image))
        .flatten();
    let (image, platforms) = if args.no_resolve_image {
        (args.image.clone(), None)
    } else {
        pin_image(api, &args.image, credentials.clone()).await
    };
    // The same spec docker's CLI sends, so `service inspect` reads the same whichever client
    // created the service.
    let mut spec = ServiceSpec {
        name: args.name,
        labels: Some(HashMap::new()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image),
                // Like docker, words after the image are the image's arguments, not an
                // entrypoint override.
                args: (!args.args.is_empty()).then_some(args.args),
                env: (!args.env.is_empty())
                    .then(|| args.env.iter().map(|e| env_entry(e)).collect()),
                init: Some(false),
                dns_config: Some(Default::default()),
                mounts: (!args.mounts.is_empty())
                    .then(|| args.mounts.into_iter().map(|m| m.0).collect()),
                ..Default::default()
            }),
            resources: Some(bollard::models::TaskSpecResources {
                limits: Some(Default::default()),
                reservations: Some(Default::default()),
                ..Default::default()
            }),
            placement: (platforms.is_some() || !args.constraints.is_empty()).then(|| {
                bollard::models::TaskSpecPlacement {
                    constraints: (!args.constraints.is_empty()).then_some(args.constraints),
                    platforms,
                    ..Default::default()
                }
            }),
            networks: (!networks.is_empty()).then_some(networks),
            force_update: Some(0),
            ..Default::default()
        }),
        mode: Some(mode),
        endpoint_spec,
        ..Default::default()
    };
    args.policy.apply(&mut spec);
    let created = api
        .docker
        .create_service(spec, credentials)
        .await
        .api(api)?;
    warn(created.warnings);
    let id = created.id.unwrap_or_default();
    println!("{id}");
    if !args.detach {
        progress::converge(api, &id, args.quiet).await?;
    }
    Ok(0)
}

/// The credentials `docker login` left for the registry of `image`, as `X-Registry-Auth`
/// carries them.
pub fn registry_credentials(image: &str) -> Option<bollard::auth::DockerCredentials> {
    let c = oci::docker_config_credentials(image)?;
    Some(bollard::auth::DockerCredentials {
        username: Some(c.username),
        password: Some(c.password),
        serveraddress: Some(c.server),
        ..Default::default()
    })
}

/// Pins the image to the digest the manager's distribution endpoint reports, as docker does;
/// an image it cannot resolve runs unpinned, with docker's warning.
pub async fn pin_image(
    api: &Api,
    image: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> (String, Option<Vec<bollard::models::Platform>>) {
    let familiar = familiar_reference(image);
    match api
        .docker
        .inspect_registry_image(&familiar, credentials)
        .await
    {
        Ok(d) if !image.contains('@') => {
            let digest = d.descriptor.digest.unwrap_or_default();
            let platforms = d
                .platforms
                .into_iter()
                .map(|p| bollard::models::Platform {
                    architecture: p.architecture,
                    os: p.os,
                })
                .collect::<Vec<_>>();
            // A registry's answer names no platforms; docker's CLI then leaves the placement
            // alone.
            let platforms = (!platforms.is_empty()).then_some(platforms);
            (format!("{familiar}@{digest}"), platforms)
        }
        Ok(_) => (image.to_string(), None),
        Err(_) => {
            eprintln!("{}", digest_warning(image));
            (image.to_string(), None)
        }
    }
}

/// dockerd's words (`digestWarning`) for an image that runs unpinned.
pub fn digest_warning(image: &str) -> String {
    format!(
        "image {image} could not be accessed on a registry to record\nits digest. Each node will access {image} independently,\npossibly leading to different nodes running different\nversions of the image.\n"
    )
}

/// `postgres` -> `postgres:latest`: docker's familiar form with an explicit tag.
fn familiar_reference(image: &str) -> String {
    let name_part = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || name_part.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_take_the_counts_docker_gives_them_and_refuse_the_others() {
        let job = mode_spec(Mode::ReplicatedJob, Some(3), None).unwrap();
        let job = job.replicated_job.unwrap();
        // As docker's CLI sends it: all at once unless --max-concurrent says otherwise.
        assert_eq!(
            (job.max_concurrent, job.total_completions),
            (Some(3), Some(3))
        );
        let job = mode_spec(Mode::ReplicatedJob, Some(3), Some(1)).unwrap();
        let job = job.replicated_job.unwrap();
        assert_eq!(
            (job.max_concurrent, job.total_completions),
            (Some(1), Some(3))
        );
        assert!(
            mode_spec(Mode::Global, None, None)
                .unwrap()
                .global
                .is_some()
        );
        assert!(
            mode_spec(Mode::GlobalJob, None, None)
                .unwrap()
                .global_job
                .is_some()
        );

        for mode in [Mode::Global, Mode::GlobalJob] {
            let e = mode_spec(mode, Some(2), None).unwrap_err().to_string();
            assert!(
                e.contains("replicas can only be used with replicated"),
                "{e}"
            );
        }
        for mode in [Mode::Replicated, Mode::Global, Mode::GlobalJob] {
            let e = mode_spec(mode, None, Some(2)).unwrap_err().to_string();
            assert!(
                e.contains("max-concurrent can only be used with replicated-job"),
                "{e}"
            );
        }
    }
}
