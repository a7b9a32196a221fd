//! `swarmkit service ...`

use std::collections::HashMap;

use bollard::models::{
    EndpointPortConfig, EndpointSpec, EndpointSpecModeEnum, NetworkAttachmentConfig, Service,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::ListServicesOptions;
use clap::{Args, Subcommand, ValueEnum};

use crate::api::{Api, ApiError, ApiResult, print_error};
use crate::progress;
use crate::publish::PublishSpec;
use crate::render;
use crate::template::{Format, Printer};

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided (KEY=VALUE), e.g. label=com.docker.stack.namespace=demo
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::parse_filter)]
        filter: Vec<(String, String)>,
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
    },
    /// List the tasks of one or more services
    Ps(super::service_ps::PsArgs),
    /// Fetch the logs of a service or task
    Logs(super::service_logs::LogsArgs),
    /// Display detailed information on one or more services
    Inspect {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
        /// Format the output using the given Go template
        #[arg(short, long, value_parser = crate::template::parse, conflicts_with = "pretty")]
        format: Option<Format>,
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
    },
    /// Scale one or multiple replicated services
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
        targets: Vec<(String, u64)>,
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
    },
    /// Update a service
    Update(Box<super::service_update::UpdateArgs>),
    /// Revert changes to a service's configuration
    Rollback {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Replicated,
    Global,
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
    /// Endpoint mode
    #[arg(long, value_enum)]
    endpoint_mode: Option<EndpointMode>,
    #[command(flatten)]
    policy: super::service_policy::PolicyArgs,
    /// Service mode
    #[arg(long, value_enum, default_value = "replicated")]
    mode: Mode,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    image: String,
    /// Command and arguments passed to the image
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub(super) fn parse_replicas(s: &str) -> Result<u64, String> {
    if s.trim_start().starts_with('-') {
        return Err("replicas cannot be negative: use 0 or more, e.g. --replicas 3".into());
    }
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not a number of replicas: use a whole number, e.g. --replicas 3")
    })
}

fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let Some((name, replicas)) = s.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        return Err("use SERVICE=REPLICAS, e.g. web=3".into());
    };
    let replicas =
        parse_replicas(replicas).map_err(|e| format!("invalid replicas for {name}: {e}"))?;
    Ok((name.to_string(), replicas))
}

/// docker's ValidateEnv: a bare `KEY` takes its value from this shell, if set there.
pub(super) fn env_entry(kv: &str) -> String {
    if kv.contains('=') {
        return kv.to_string();
    }
    match std::env::var(kv) {
        Ok(v) => format!("{kv}={v}"),
        Err(_) => kv.to_string(),
    }
}

pub async fn run(cluster: &str, cmd: ServiceCmd) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    match cmd {
        ServiceCmd::Create(args) => create(&api, *args).await,
        ServiceCmd::Ls {
            quiet,
            filter,
            format,
        } => ls(&api, quiet, &filter, format).await,
        ServiceCmd::Ps(args) => super::service_ps::ps(&api, args).await,
        ServiceCmd::Logs(args) => super::service_logs::logs(&api, args).await,
        ServiceCmd::Inspect {
            services,
            pretty,
            format,
        } => inspect(&api, &services, pretty, format).await,
        ServiceCmd::Scale { targets, detach } => {
            super::service_update::scale(&api, targets, detach).await
        }
        ServiceCmd::Update(args) => super::service_update::update(&api, *args).await,
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => super::service_update::rollback(&api, &service, detach, quiet).await,
        ServiceCmd::Rm { services } => {
            let api = &api;
            super::for_each_name(&services, |name| async move {
                api.docker.delete_service(&name).await.api(api)?;
                Ok(name)
            })
            .await
        }
    }
}

/// docker resolves network names to IDs before creating the service, so the spec (and
/// `service inspect`) always carries IDs.
pub(super) async fn network_id(api: &Api, name: &str) -> Result<String, ApiError> {
    let net = api.docker.inspect_network(name, None).await.api(api)?;
    Ok(net.id.unwrap_or_else(|| name.to_string()))
}

pub(super) fn ports_of(specs: Vec<PublishSpec>) -> Vec<EndpointPortConfig> {
    specs.into_iter().flat_map(|p| p.0).collect()
}

async fn create(api: &Api, args: CreateArgs) -> anyhow::Result<i32> {
    let mut networks = Vec::new();
    for net in &args.networks {
        networks.push(NetworkAttachmentConfig {
            target: Some(network_id(api, net).await?),
            ..Default::default()
        });
    }
    let mode = match args.mode {
        Mode::Replicated => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: args.replicas.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
            }),
            ..Default::default()
        },
        Mode::Global => ServiceSpecMode {
            global: Some(HashMap::new()),
            ..Default::default()
        },
    };
    let ports = ports_of(args.publish);
    let endpoint_spec = Some(EndpointSpec {
        mode: Some(match args.endpoint_mode {
            Some(EndpointMode::Dnsrr) => EndpointSpecModeEnum::DNSRR,
            _ => EndpointSpecModeEnum::VIP,
        }),
        ports: (!ports.is_empty()).then_some(ports),
    });
    let (image, platforms) = pin_image(api, &args.image).await;
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
    let created = api.docker.create_service(spec, None).await.api(api)?;
    warn(created.warnings);
    let id = created.id.unwrap_or_default();
    println!("{id}");
    if !args.detach {
        progress::converge(api, &id, args.quiet).await?;
    }
    Ok(0)
}

/// Pins the image to the digest the manager's distribution endpoint reports, as docker does;
/// an image it cannot resolve runs unpinned, with docker's warning.
async fn pin_image(api: &Api, image: &str) -> (String, Option<Vec<bollard::models::Platform>>) {
    let familiar = familiar_reference(image);
    match api.docker.inspect_registry_image(&familiar, None).await {
        Ok(d) if !image.contains('@') => {
            let digest = d.descriptor.digest.unwrap_or_default();
            let platforms = d
                .platforms
                .into_iter()
                .map(|p| bollard::models::Platform {
                    architecture: p.architecture,
                    os: p.os,
                })
                .collect();
            (format!("{familiar}@{digest}"), Some(platforms))
        }
        Ok(_) => (image.to_string(), None),
        Err(_) => {
            eprintln!(
                "image {image} could not be accessed on a registry to record\nits digest. Each node will access {image} independently,\npossibly leading to different nodes running different\nversions of the image.\n"
            );
            (image.to_string(), None)
        }
    }
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

pub(super) fn warn(warnings: Option<Vec<String>>) {
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

fn image_of(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn mode_of(s: &Service) -> &'static str {
    match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(m) if m.global.is_some() => "global",
        Some(m) if m.replicated.is_some() => "replicated",
        Some(m) if m.replicated_job.is_some() => "replicated job",
        Some(m) if m.global_job.is_some() => "global job",
        _ => "",
    }
}

async fn ls(
    api: &Api,
    quiet: bool,
    filter: &[(String, String)],
    format: Format,
) -> anyhow::Result<i32> {
    let opts = ListServicesOptions {
        status: Some(!quiet),
        filters: super::filters(filter),
    };
    let mut services = api.docker.list_services(Some(opts)).await.api(api)?;
    services.sort_by(|a, b| render::natural_cmp(&service_name(a), &service_name(b)));
    if quiet {
        for s in &services {
            println!("{}", render::truncate_id(s.id.as_deref().unwrap_or("")));
        }
        return Ok(0);
    }
    let counted = if services.iter().any(|s| s.service_status.is_none()) {
        count_tasks(api).await?
    } else {
        HashMap::new()
    };
    let mut out = Printer::new(
        &format,
        &["ID", "Image", "Mode", "Name", "Ports", "Replicas"],
        &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
    );
    for s in &services {
        let (running, desired) = match &s.service_status {
            Some(st) => (st.running_tasks.unwrap_or(0), st.desired_tasks.unwrap_or(0)),
            None => {
                let (running, active) = counted
                    .get(s.id.as_deref().unwrap_or(""))
                    .copied()
                    .unwrap_or((0, 0));
                let replicas = s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.mode.as_ref())
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas)
                    .and_then(|r| u64::try_from(r).ok());
                (running, replicas.unwrap_or(active))
            }
        };
        let replicas = format!("{running}/{desired}");
        let ports = s
            .endpoint
            .as_ref()
            .and_then(|e| e.ports.as_deref())
            .map(render::service_ports)
            .unwrap_or_default();
        let id = render::truncate_id(s.id.as_deref().unwrap_or(""));
        let (name, image) = (service_name(s), render::display_image(&image_of(s)));
        out.row(
            vec![
                id.clone().into(),
                image.clone().into(),
                mode_of(s).into(),
                name.clone().into(),
                ports.clone().into(),
                replicas.clone().into(),
            ],
            vec![id, name, mode_of(s).to_string(), replicas, image, ports],
        )?;
    }
    out.finish()?;
    Ok(0)
}

/// Per service: (tasks running, tasks meant to run). docker computes REPLICAS this way
/// when the manager does not fill in ServiceStatus.
async fn count_tasks(api: &Api) -> Result<HashMap<String, (u64, u64)>, ApiError> {
    use bollard::models::TaskState;
    let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
    for t in api.docker.list_tasks(None).await.api(api)? {
        if t.desired_state != Some(TaskState::RUNNING) {
            continue;
        }
        let entry = counts
            .entry(t.service_id.clone().unwrap_or_default())
            .or_default();
        entry.1 += 1;
        if t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING) {
            entry.0 += 1;
        }
    }
    Ok(counts)
}

async fn inspect(
    api: &Api,
    names: &[String],
    pretty: bool,
    format: Option<Format>,
) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match api.docker.inspect_service(name, None).await.api(api) {
            Ok(s) => found.push(s),
            Err(e @ ApiError::Daemon(_)) => errors.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    if !pretty {
        return super::print_inspect(&found, errors, &format.unwrap_or(Format::Json));
    }
    for s in &found {
        print!("{}", super::service_ps::pretty_service(s));
    }
    let code = if errors.is_empty() { 0 } else { 1 };
    errors.into_iter().for_each(|e| print_error(&e.into()));
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

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
