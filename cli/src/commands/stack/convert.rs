//! A compose file as the objects `docker stack deploy` makes of it (docker/cli's `convert`
//! package): networks, secrets and configs named `STACK_name` and services `STACK_service`,
//! all labelled `com.docker.stack.namespace=STACK`, network aliases the service's short name.
//! What has no place in a swarm service is refused naming the service and field. No I/O but
//! reading the files a compose file names (secrets, configs, `env_file`) and the environment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, Ipam, IpamConfig, Mount, MountType,
    MountVolumeOptions, MountVolumeOptionsDriverConfig, NetworkAttachmentConfig,
    NetworkCreateRequest, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecModeReplicatedJob, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecConfigs, TaskSpecContainerSpecDnsConfig, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecSecrets, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use compose_spec::service::deploy::resources::{Limits, Reservations};
use compose_spec::service::deploy::{self, Deploy};
use compose_spec::service::{self, ports, volumes};
use compose_spec::{ListOrMap, Resource, ShortOrLong};

use super::compose::{Loaded, RawDeploy};

pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// A secret or config the stack creates (or updates, when one of that name exists).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub data: Vec<u8>,
}

/// Everything a deploy makes, and what it expects to find.
#[derive(Debug, Default)]
pub struct Plan {
    /// The stack's own networks, created when missing.
    pub networks: Vec<NetworkCreateRequest>,
    pub external_networks: Vec<String>,
    pub secrets: Vec<Payload>,
    pub external_secrets: Vec<String>,
    pub configs: Vec<Payload>,
    pub external_configs: Vec<String>,
    /// Named volumes declared external: they must exist on the nodes (docker's local driver),
    /// which the manager cannot see; noted, not checked.
    pub external_volumes: Vec<String>,
    /// By the service's short name, in the file's order.
    pub services: Vec<(String, ServiceSpec)>,
}

/// docker's rule for a stack's name, which prefixes every object's: a valid name start, and no
/// characters the objects' names cannot carry.
pub fn check_namespace(name: &str) -> anyhow::Result<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        anyhow::bail!(
            "invalid stack name {name:?}: use letters, digits, '_', '-' and '.', starting with a letter or digit"
        );
    }
    Ok(())
}

pub fn label_filter(stack: &str) -> (String, String) {
    ("label".into(), format!("{NAMESPACE_LABEL}={stack}"))
}

pub fn filters(stack: &str) -> Option<HashMap<String, Vec<String>>> {
    crate::commands::filters(&[label_filter(stack)])
}

fn scope(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

fn stack_labels(namespace: &str, mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.insert(NAMESPACE_LABEL.into(), namespace.into());
    labels
}

/// `labels:` in either form; list entries without `=` have an empty value, as in docker.
fn labels_of(l: ListOrMap) -> anyhow::Result<HashMap<String, String>> {
    Ok(l.into_map_split_on(&['='])?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
        .collect())
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

pub fn convert(namespace: &str, loaded: Loaded) -> anyhow::Result<Plan> {
    check_namespace(namespace)?;
    let Loaded {
        compose, dir, raw, ..
    } = loaded;
    let mut plan = Plan::default();

    // Networks the services name; `default` is every service's without `networks:`.
    let mut used_networks: Vec<String> = Vec::new();
    for (_, svc) in &compose.services {
        for name in service_network_names(svc) {
            if !used_networks.contains(&name) {
                used_networks.push(name);
            }
        }
    }
    let mut network_names: HashMap<String, String> = HashMap::new();
    for name in &used_networks {
        let declared = compose
            .networks
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.clone());
        match declared {
            None if name != "default" => bail!(
                "service network {name} is not declared: add it under the top-level networks:"
            ),
            Some(Some(Resource::External { name: external })) => {
                let real = external.unwrap_or_else(|| name.clone());
                plan.external_networks.push(real.clone());
                network_names.insert(name.clone(), real);
            }
            declared => {
                let settings = match declared {
                    Some(Some(Resource::Compose(n))) => Some(n),
                    _ => None,
                };
                let req = network_request(namespace, name, settings)?;
                network_names.insert(name.clone(), req.name.clone());
                plan.networks.push(req);
            }
        }
    }

    let mut secret_names = HashMap::new();
    for (key, secret) in &compose.secrets {
        let key = key.as_str();
        match secret {
            Resource::External { name } => {
                let real = name.clone().unwrap_or_else(|| key.to_string());
                plan.external_secrets.push(real.clone());
                secret_names.insert(key.to_string(), real);
            }
            Resource::Compose(s) => {
                let data = match &s.source {
                    compose_spec::secret::Source::File(f) => read_file(&dir, f, "secret", key)?,
                    compose_spec::secret::Source::Environment(var) => from_env(var, "secret", key)?,
                };
                if s.driver.is_some() || !s.driver_opts.is_empty() {
                    bail!(
                        "secret {key}: secret drivers are not done by swarmkit: give file: or environment:"
                    );
                }
                let name = scope(namespace, key);
                secret_names.insert(key.to_string(), name.clone());
                plan.secrets.push(Payload {
                    name,
                    labels: stack_labels(namespace, labels_of(s.labels.clone())?),
                    data,
                });
            }
        }
    }
    let mut config_names = HashMap::new();
    for (key, config) in &compose.configs {
        let key = key.as_str();
        match config {
            Resource::External { name } => {
                let real = name.clone().unwrap_or_else(|| key.to_string());
                plan.external_configs.push(real.clone());
                config_names.insert(key.to_string(), real);
            }
            Resource::Compose(c) => {
                let data = match &c.source {
                    compose_spec::config::Source::File(f) => read_file(&dir, f, "config", key)?,
                    compose_spec::config::Source::Environment(var) => from_env(var, "config", key)?,
                    compose_spec::config::Source::Content(text) => text.clone().into_bytes(),
                };
                let name = scope(namespace, key);
                config_names.insert(key.to_string(), name.clone());
                plan.configs.push(Payload {
                    name,
                    labels: stack_labels(namespace, labels_of(c.labels.clone())?),
                    data,
                });
            }
        }
    }

    let mut volumes: HashMap<String, VolumeDecl> = HashMap::new();
    for (key, v) in &compose.volumes {
        let key = key.as_str().to_string();
        let decl = match v {
            Some(Resource::External { name }) => {
                let real = name.clone().unwrap_or_else(|| key.clone());
                plan.external_volumes.push(real.clone());
                VolumeDecl {
                    name: real,
                    external: true,
                    volume: None,
                }
            }
            Some(Resource::Compose(vol)) => VolumeDecl {
                name: vol.name.clone().unwrap_or_else(|| scope(namespace, &key)),
                external: false,
                volume: Some(vol.clone()),
            },
            None => VolumeDecl {
                name: scope(namespace, &key),
                external: false,
                volume: None,
            },
        };
        volumes.insert(key, decl);
    }

    let refs = Refs {
        networks: &network_names,
        secrets: &secret_names,
        configs: &config_names,
        volumes: &volumes,
        dir: &dir,
    };
    for (name, svc) in compose.services {
        let name = name.as_str().to_string();
        let raw = raw.get(&name).cloned().unwrap_or_default();
        let spec = service_spec(namespace, &name, svc, &raw, &refs)
            .with_context(|| format!("service {name}"))?;
        plan.services.push((name, spec));
    }
    Ok(plan)
}

struct VolumeDecl {
    name: String,
    external: bool,
    volume: Option<compose_spec::Volume>,
}

/// The stack's names for what a service refers to, by the file's keys.
struct Refs<'a> {
    networks: &'a HashMap<String, String>,
    secrets: &'a HashMap<String, String>,
    configs: &'a HashMap<String, String>,
    volumes: &'a HashMap<String, VolumeDecl>,
    dir: &'a Path,
}

fn service_network_names(svc: &compose_spec::Service) -> Vec<String> {
    match &svc.network_config {
        Some(service::NetworkConfig::Networks(ShortOrLong::Short(list))) => {
            list.iter().map(|n| n.as_str().to_string()).collect()
        }
        Some(service::NetworkConfig::Networks(ShortOrLong::Long(map))) => {
            map.keys().map(|n| n.as_str().to_string()).collect()
        }
        _ => vec!["default".to_string()],
    }
}

fn network_request(
    namespace: &str,
    key: &str,
    n: Option<compose_spec::Network>,
) -> anyhow::Result<NetworkCreateRequest> {
    let n = n.unwrap_or_default();
    let driver = match &n.driver {
        None => "overlay".to_string(),
        Some(compose_spec::network::Driver::Other(d)) => d.clone(),
        Some(d) => bail!(
            "network {key}: driver {d:?} is not a swarm network: use driver: overlay (or leave driver out)"
        ),
    };
    let ipam = match n.ipam {
        None => None,
        Some(ipam) => {
            if ipam.driver.as_deref().is_some_and(|d| d != "default") || !ipam.options.is_empty() {
                bail!(
                    "network {key}: swarmkit allocates addresses itself: drop ipam.driver and ipam.options"
                );
            }
            let mut config = Vec::new();
            for c in ipam.config {
                if c.ip_range.is_some() || !c.aux_addresses.is_empty() {
                    bail!(
                        "network {key}: ip_range and aux_addresses are not done by swarmkit: give subnet (and gateway) only"
                    );
                }
                config.push(IpamConfig {
                    subnet: c.subnet.map(|s| s.to_string()),
                    gateway: c.gateway.map(|g| g.to_string()),
                    ..Default::default()
                });
            }
            Some(Ipam {
                driver: Some("default".into()),
                config: Some(config),
                options: None,
            })
        }
    };
    Ok(NetworkCreateRequest {
        name: n.name.unwrap_or_else(|| scope(namespace, key)),
        driver: Some(driver),
        scope: Some("swarm".into()),
        internal: Some(n.internal),
        attachable: Some(n.attachable),
        enable_ipv6: n.enable_ipv6.then_some(true),
        ipam,
        options: Some(
            n.driver_opts
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        labels: Some(stack_labels(namespace, labels_of(n.labels)?)),
        ..Default::default()
    })
}

fn read_file(dir: &Path, file: &Path, what: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(file);
    std::fs::read(&path).with_context(|| {
        format!(
            "{what} {key}: cannot read its file {}: give an existing file (relative to the first compose file)",
            path.display()
        )
    })
}

fn from_env(var: &str, what: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    std::env::var(var).map(String::into_bytes).map_err(|_| {
        anyhow::anyhow!("{what} {key}: its environment variable {var} is not set: export it")
    })
}

/// docker's words for a command given as one string: split as a shell would, without running
/// one.
pub fn shell_words(s: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unterminated ' in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("unterminated \" in {s:?}"),
                        },
                        Some(c) => word.push(c),
                        None => bail!("unterminated \" in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn command_of(c: service::Command) -> anyhow::Result<Vec<String>> {
    match c {
        service::Command::String(s) => shell_words(&s),
        service::Command::List(l) => Ok(l),
    }
}

/// `KEY=VALUE` lines of an env file: comments and blank lines skipped, a bare `KEY` taken from
/// this shell as `environment:` does.
fn env_file_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("env_file {}: cannot read it", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(crate::commands::service::env_entry)
        .collect())
}

/// The environment as docker sends it: `KEY=VALUE`, sorted, `environment:` over `env_file`.
fn environment(
    env_file: Option<service::EnvFile>,
    env: ListOrMap,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        vars.insert(key, entry);
    };
    if let Some(files) = env_file {
        for f in files.into_list() {
            let path = match f {
                ShortOrLong::Short(p) => dir.join(p),
                ShortOrLong::Long(c) => dir.join(c.path),
            };
            for line in env_file_lines(&path)? {
                put(line);
            }
        }
    }
    match env {
        ListOrMap::List(list) => list
            .into_iter()
            .for_each(|e| put(crate::commands::service::env_entry(&e))),
        ListOrMap::Map(map) => {
            for (k, v) in map {
                match v {
                    Some(v) => put(format!("{k}={v}")),
                    None => put(crate::commands::service::env_entry(k.as_str())),
                }
            }
        }
    }
    Ok(vars.into_values().collect())
}

fn port_of(p: ports::Port) -> anyhow::Result<EndpointPortConfig> {
    if p.host_ip.is_some() {
        bail!(
            "ports: a swarm service publishes on every address of its nodes: drop the host IP from {}",
            p.target
        );
    }
    if p.app_protocol.is_some() {
        bail!("ports: app_protocol is not done by swarmkit: remove it");
    }
    let published = match p.published {
        None => None,
        Some(r) if r.end().is_none() => Some(i64::from(r.start())),
        Some(r) => bail!(
            "ports: a published range ({r}) for one target port cannot be: publish one port per target"
        ),
    };
    let protocol = match p.protocol.as_ref().map(|p| p.as_str()) {
        None | Some("tcp") => EndpointPortConfigProtocolEnum::TCP,
        Some("udp") => EndpointPortConfigProtocolEnum::UDP,
        Some(other) => bail!("ports: protocol {other:?} is not done: use tcp or udp"),
    };
    let mode = match p.mode {
        Some(ports::Mode::Host) => EndpointPortConfigPublishModeEnum::HOST,
        _ => EndpointPortConfigPublishModeEnum::INGRESS,
    };
    Ok(EndpointPortConfig {
        name: p.name,
        protocol: Some(protocol),
        target_port: Some(i64::from(p.target)),
        published_port: published,
        publish_mode: Some(mode),
    })
}

fn ports_of(list: ports::Ports) -> anyhow::Result<Vec<EndpointPortConfig>> {
    let mut out = Vec::new();
    for p in list {
        match p {
            ShortOrLong::Short(short) => {
                for long in short.into_long_iter() {
                    out.push(port_of(long)?);
                }
            }
            ShortOrLong::Long(long) => out.push(port_of(long)?),
        }
    }
    Ok(out)
}

fn volume_options(decl: Option<&VolumeDecl>, namespace: &str) -> Option<MountVolumeOptions> {
    let vol = decl.and_then(|d| d.volume.as_ref());
    Some(MountVolumeOptions {
        labels: (!decl.is_some_and(|d| d.external))
            .then(|| stack_labels(namespace, Default::default())),
        driver_config: vol
            .filter(|v| v.driver.is_some())
            .map(|v| MountVolumeOptionsDriverConfig {
                name: v.driver.clone(),
                options: Some(
                    v.driver_opts
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
        ..Default::default()
    })
}

fn host_path(dir: &Path, p: &Path) -> String {
    let full: PathBuf = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::path::absolute(dir.join(p)).unwrap_or_else(|_| dir.join(p))
    };
    full.to_string_lossy().into_owned()
}

fn mounts_of(
    list: volumes::Volumes,
    tmpfs: Option<compose_spec::ItemOrList<volumes::AbsolutePath>>,
    namespace: &str,
    refs: &Refs,
) -> anyhow::Result<Vec<Mount>> {
    let named = |source: &str| -> anyhow::Result<(String, Option<MountVolumeOptions>)> {
        let decl = refs.volumes.get(source).ok_or_else(|| {
            anyhow::anyhow!(
                "volumes: named volume {source} is not declared: add it under the top-level volumes:"
            )
        })?;
        Ok((decl.name.clone(), volume_options(Some(decl), namespace)))
    };
    let mut out = Vec::new();
    for v in list {
        let mount = match v {
            ShortOrLong::Short(short) => {
                let target = short
                    .container_path
                    .as_path()
                    .to_string_lossy()
                    .into_owned();
                match short.options {
                    None => Mount {
                        target: Some(target),
                        typ: Some(MountType::VOLUME),
                        volume_options: volume_options(None, namespace),
                        ..Default::default()
                    },
                    Some(o) => {
                        if o.selinux.is_some() {
                            bail!("volumes: :z and :Z are not done by swarmkit: remove them");
                        }
                        let (typ, source, volume_options) = match o.source {
                            volumes::Source::HostPath(p) => {
                                (MountType::BIND, host_path(refs.dir, p.as_path()), None)
                            }
                            volumes::Source::Volume(id) => {
                                let (name, options) = named(id.as_str())?;
                                (MountType::VOLUME, name, options)
                            }
                        };
                        Mount {
                            target: Some(target),
                            source: Some(source),
                            typ: Some(typ),
                            read_only: o.read_only.then_some(true),
                            volume_options,
                            ..Default::default()
                        }
                    }
                }
            }
            ShortOrLong::Long(long) => long_mount(long, refs, &named)?,
        };
        out.push(mount);
    }
    if let Some(tmpfs) = tmpfs {
        for path in tmpfs.into_list() {
            out.push(Mount {
                target: Some(path.as_path().to_string_lossy().into_owned()),
                typ: Some(MountType::TMPFS),
                ..Default::default()
            });
        }
    }
    Ok(out)
}

type Named<'a> = dyn Fn(&str) -> anyhow::Result<(String, Option<MountVolumeOptions>)> + 'a;

fn long_mount(m: volumes::Mount, refs: &Refs, named: &Named) -> anyhow::Result<Mount> {
    use volumes::mount;
    let common = |c: &mount::Common| -> anyhow::Result<(String, Option<bool>)> {
        if c.consistency.is_some() {
            bail!("volumes: consistency is not done by swarmkit: remove it");
        }
        Ok((
            c.target.as_path().to_string_lossy().into_owned(),
            c.read_only.then_some(true),
        ))
    };
    Ok(match m {
        mount::Mount::Volume(v) => {
            let (target, read_only) = common(&v.common)?;
            let (source, mut options) = match &v.source {
                Some(s) => {
                    let (n, o) = named(s.as_str())?;
                    (Some(n), o)
                }
                None => (None, None),
            };
            if let Some(o) = &v.volume {
                if o.subpath.is_some() {
                    bail!("volumes: volume.subpath is not done by swarmkit: remove it");
                }
                if o.nocopy {
                    options.get_or_insert_with(Default::default).no_copy = Some(true);
                }
            }
            Mount {
                target: Some(target),
                source,
                typ: Some(MountType::VOLUME),
                read_only,
                volume_options: options,
                ..Default::default()
            }
        }
        mount::Mount::Bind(b) => {
            let (target, read_only) = common(&b.common)?;
            if b.bind.as_ref().is_some_and(|o| {
                o.propagation.is_some() || o.selinux.is_some() || o.create_host_path
            }) {
                bail!(
                    "volumes: bind options (propagation, selinux, create_host_path) are not done by swarmkit: remove them"
                );
            }
            Mount {
                target: Some(target),
                source: Some(host_path(refs.dir, b.source.as_path())),
                typ: Some(MountType::BIND),
                read_only,
                ..Default::default()
            }
        }
        mount::Mount::Tmpfs(t) => {
            let (target, read_only) = common(&t.common)?;
            let options = t.tmpfs.map(|o| bollard::models::MountTmpfsOptions {
                size_bytes: o.size.and_then(bytes).map(|b| b as i64),
                mode: o.mode.map(i64::from),
                ..Default::default()
            });
            Mount {
                target: Some(target),
                typ: Some(MountType::TMPFS),
                read_only,
                tmpfs_options: options,
                ..Default::default()
            }
        }
        mount::Mount::NamedPipe(_) | mount::Mount::Cluster(_) => {
            bail!("volumes: npipe and cluster volumes are not done by swarmkit: remove them")
        }
    })
}

/// A byte count as docker reads memory sizes (binary units: `64m` is 64 MiB).
fn bytes(v: service::ByteValue) -> Option<u64> {
    let text = v.to_string();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = text[digits.len()..].to_ascii_lowercase();
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

fn file_refs(
    list: Vec<ShortOrLong<compose_spec::Identifier, service::ConfigOrSecret>>,
    names: &HashMap<String, String>,
    what: &str,
) -> anyhow::Result<Vec<(String, TaskSpecContainerSpecFile)>> {
    let mut out = Vec::new();
    for r in list {
        let r = match r {
            ShortOrLong::Short(source) => service::ConfigOrSecret {
                source,
                target: None,
                uid: None,
                gid: None,
                mode: None,
                extensions: Default::default(),
            },
            ShortOrLong::Long(l) => l,
        };
        let key = r.source.as_str();
        let name = names.get(key).ok_or_else(|| {
            anyhow::anyhow!(
                "{what}s: {key} is not declared: add it under the top-level {what}s: (with file: or external: true)"
            )
        })?;
        let target = r
            .target
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|| key.to_string());
        out.push((
            name.clone(),
            TaskSpecContainerSpecFile {
                name: Some(target),
                uid: Some(r.uid.unwrap_or(0).to_string()),
                gid: Some(r.gid.unwrap_or(0).to_string()),
                mode: Some(r.mode.unwrap_or(0o444)),
            },
        ));
    }
    Ok(out)
}

fn healthcheck(h: service::Healthcheck) -> HealthConfig {
    use service::healthcheck::{Healthcheck, Test};
    match h {
        Healthcheck::Disable => HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        },
        Healthcheck::Command(c) => HealthConfig {
            test: c.test.map(|t| match t {
                Test::Command(words) => words,
                Test::ShellCommand(s) => vec!["CMD-SHELL".into(), s],
            }),
            interval: c.interval.map(nanos),
            timeout: c.timeout.map(nanos),
            retries: c.retries.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
            start_period: c.start_period.map(nanos),
            start_interval: c.start_interval.map(nanos),
        },
    }
}

fn mode_of(raw: &RawDeploy, replicas: Option<u64>) -> anyhow::Result<ServiceSpecMode> {
    let replicas = replicas.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let mode = raw.mode.as_deref().unwrap_or("replicated");
    if replicas.is_some() && matches!(mode, "global" | "global-job") {
        bail!(
            "deploy.replicas can only be used with replicated or replicated-job mode: drop replicas, a global service runs one task per eligible node"
        );
    }
    Ok(match mode {
        "replicated" => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas }),
            ..Default::default()
        },
        "global" => ServiceSpecMode {
            global: Some(HashMap::new()),
            ..Default::default()
        },
        "replicated-job" => ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: replicas,
                total_completions: replicas,
            }),
            ..Default::default()
        },
        "global-job" => ServiceSpecMode {
            global_job: Some(HashMap::new()),
            ..Default::default()
        },
        other => bail!(
            "deploy.mode {other:?} is not a mode: use replicated, global, replicated-job or global-job"
        ),
    })
}

fn restart_policy(
    d: Option<deploy::RestartPolicy>,
    restart: Option<service::Restart>,
) -> anyhow::Result<Option<TaskSpecRestartPolicy>> {
    use TaskSpecRestartPolicyConditionEnum as C;
    if let Some(p) = d {
        return Ok(Some(TaskSpecRestartPolicy {
            condition: p.condition.map(|c| match c {
                deploy::RestartCondition::None => C::NONE,
                deploy::RestartCondition::OnFailure => C::ON_FAILURE,
                deploy::RestartCondition::Any => C::ANY,
            }),
            delay: p.delay.map(nanos),
            max_attempts: p.max_attempts.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            window: p.window.map(nanos),
        }));
    }
    // docker maps the container-level `restart:` when deploy.restart_policy is absent.
    let Some(r) = restart else { return Ok(None) };
    let policy = |condition, max_attempts| TaskSpecRestartPolicy {
        condition: Some(condition),
        max_attempts,
        ..Default::default()
    };
    Ok(Some(match r {
        service::Restart::No => policy(C::NONE, None),
        service::Restart::Always | service::Restart::UnlessStopped => policy(C::ANY, None),
        service::Restart::OnFailure => policy(C::ON_FAILURE, None),
    }))
}

fn update_config(c: deploy::UpdateOrRollbackConfig, ratio: Option<f64>) -> ServiceSpecUpdateConfig {
    ServiceSpecUpdateConfig {
        parallelism: c.parallelism.map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
        delay: c.delay.map(nanos),
        failure_action: c.failure_action.map(|a| match a {
            deploy::FailureAction::Continue => ServiceSpecUpdateConfigFailureActionEnum::CONTINUE,
            deploy::FailureAction::Pause => ServiceSpecUpdateConfigFailureActionEnum::PAUSE,
        }),
        monitor: c.monitor.map(nanos),
        max_failure_ratio: ratio,
        order: c.order.map(|o| match o {
            deploy::Order::StopFirst => ServiceSpecUpdateConfigOrderEnum::STOP_FIRST,
            deploy::Order::StartFirst => ServiceSpecUpdateConfigOrderEnum::START_FIRST,
        }),
    }
}

fn rollback_config(
    c: deploy::UpdateOrRollbackConfig,
    ratio: Option<f64>,
) -> ServiceSpecRollbackConfig {
    let u = update_config(c, ratio);
    ServiceSpecRollbackConfig {
        parallelism: u.parallelism,
        delay: u.delay,
        failure_action: u.failure_action.map(|a| match a {
            ServiceSpecUpdateConfigFailureActionEnum::CONTINUE => {
                ServiceSpecRollbackConfigFailureActionEnum::CONTINUE
            }
            _ => ServiceSpecRollbackConfigFailureActionEnum::PAUSE,
        }),
        monitor: u.monitor,
        max_failure_ratio: u.max_failure_ratio,
        order: u.order.map(|o| match o {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST => {
                ServiceSpecRollbackConfigOrderEnum::START_FIRST
            }
            _ => ServiceSpecRollbackConfigOrderEnum::STOP_FIRST,
        }),
    }
}

fn resources(r: Option<deploy::Resources>) -> anyhow::Result<TaskSpecResources> {
    let r = r.unwrap_or_default();
    let cpus = |c: Option<deploy::resources::Cpus>| c.map(|c| (c.into_inner() * 1e9) as i64);
    let limits = r.limits.map(|l: Limits| {
        Ok::<_, anyhow::Error>(bollard::models::Limit {
            nano_cpus: cpus(l.cpus),
            memory_bytes: memory(l.memory)?,
            pids: l.pids.map(|p| match p {
                service::Limit::Value(v) => i64::from(v),
                service::Limit::Unlimited => 0,
            }),
        })
    });
    let reservations = r.reservations.map(|l: Reservations| {
        Ok::<_, anyhow::Error>(bollard::models::ResourceObject {
            nano_cpus: cpus(l.cpus),
            memory_bytes: memory(l.memory)?,
            ..Default::default()
        })
    });
    Ok(TaskSpecResources {
        limits: Some(limits.transpose()?.unwrap_or_default()),
        reservations: Some(reservations.transpose()?.unwrap_or_default()),
        ..Default::default()
    })
}

fn memory(v: Option<service::ByteValue>) -> anyhow::Result<Option<i64>> {
    v.map(|v| {
        let text = v.to_string();
        bytes(v)
            .and_then(|b| i64::try_from(b).ok())
            .ok_or_else(|| anyhow::anyhow!("memory {text} is out of range"))
    })
    .transpose()
}

fn placement(p: Option<deploy::Placement>) -> anyhow::Result<Option<TaskSpecPlacement>> {
    let Some(p) = p else { return Ok(None) };
    let mut preferences = Vec::new();
    for pref in p.preferences {
        let Some(spread) = pref.spread else {
            bail!("deploy.placement.preferences: give spread: LABEL (the only kind swarm has)");
        };
        preferences.push(TaskSpecPlacementPreferences {
            spread: Some(TaskSpecPlacementSpread {
                spread_descriptor: Some(spread),
            }),
        });
    }
    Ok(Some(TaskSpecPlacement {
        constraints: (!p.constraints.is_empty()).then_some(p.constraints),
        preferences: (!preferences.is_empty()).then_some(preferences),
        max_replicas: p
            .max_replicas_per_node
            .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        ..Default::default()
    }))
}

fn service_spec(
    namespace: &str,
    name: &str,
    svc: compose_spec::Service,
    raw: &RawDeploy,
    refs: &Refs,
) -> anyhow::Result<ServiceSpec> {
    let image = svc
        .image
        .as_ref()
        .map(|i| i.to_string())
        .ok_or_else(|| anyhow::anyhow!("image: a stack runs images; give image:"))?;
    let networks = match svc.network_config.clone() {
        Some(service::NetworkConfig::Networks(ShortOrLong::Long(map))) => map
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect(),
        _ => service_network_names(&svc)
            .into_iter()
            .map(|n| (n, None))
            .collect::<Vec<_>>(),
    };
    let mut attachments = Vec::new();
    for (key, settings) in networks {
        let target = refs
            .networks
            .get(&key)
            .cloned()
            .unwrap_or_else(|| scope(namespace, &key));
        let mut aliases: Vec<String> = Vec::new();
        if let Some(s) = settings {
            if s.ipv4_address.is_some()
                || s.ipv6_address.is_some()
                || s.mac_address.is_some()
                || !s.link_local_ips.is_empty()
                || !s.driver_opts.is_empty()
                || s.priority.is_some()
            {
                bail!(
                    "networks.{key}: swarm allocates a task's addresses: give aliases only (no ipv4_address, mac_address, priority, ...)"
                );
            }
            aliases.extend(s.aliases.iter().map(|a| a.to_string()));
        }
        aliases.push(name.to_string());
        attachments.push(NetworkAttachmentConfig {
            target: Some(target),
            aliases: Some(aliases),
            ..Default::default()
        });
    }
    attachments.sort_by(|a, b| a.target.cmp(&b.target));

    let deploy = svc.deploy.unwrap_or_default();
    let Deploy {
        endpoint_mode,
        labels: deploy_labels,
        mode: _,
        placement: deploy_placement,
        replicas,
        resources: deploy_resources,
        restart_policy: deploy_restart,
        rollback_config: deploy_rollback,
        update_config: deploy_update,
        extensions: _,
    } = deploy;
    let mut service_labels = stack_labels(namespace, labels_of(deploy_labels)?);
    service_labels.insert(IMAGE_LABEL.into(), image.clone());
    let secrets = file_refs(svc.secrets, refs.secrets, "secret")?
        .into_iter()
        .map(|(name, file)| TaskSpecContainerSpecSecrets {
            file: Some(file),
            secret_name: Some(name),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let configs = file_refs(svc.configs, refs.configs, "config")?
        .into_iter()
        .map(|(name, file)| TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: file.name,
                uid: file.uid,
                gid: file.gid,
                mode: file.mode,
            }),
            config_name: Some(name),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let mounts = mounts_of(svc.volumes, svc.tmpfs, namespace, refs)?;
    let env = environment(svc.env_file, svc.environment, refs.dir)?;
    let dns = TaskSpecContainerSpecDnsConfig {
        nameservers: svc
            .dns
            .map(|d| d.into_list().into_iter().map(|ip| ip.to_string()).collect()),
        search: svc
            .dns_search
            .map(|d| d.into_list().into_iter().map(|h| h.to_string()).collect()),
        options: (!svc.dns_opt.is_empty()).then(|| svc.dns_opt.into_iter().collect()),
    };
    let sysctls: HashMap<String, String> = svc
        .sysctls
        .into_map_split_on(&['='])?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
        .collect();
    let hosts: Vec<String> = svc
        .extra_hosts
        .into_iter()
        .map(|(host, ip)| format!("{ip} {host}"))
        .collect();
    let container = TaskSpecContainerSpec {
        image: Some(image),
        labels: Some(stack_labels(namespace, labels_of(svc.labels)?)),
        command: svc.entrypoint.map(command_of).transpose()?,
        args: svc.command.map(command_of).transpose()?,
        hostname: svc.hostname.map(|h| h.to_string()),
        env: (!env.is_empty()).then_some(env),
        dir: svc
            .working_dir
            .map(|d| d.as_path().to_string_lossy().into_owned()),
        user: svc.user.map(|u| u.to_string()),
        groups: (!svc.group_add.is_empty())
            .then(|| svc.group_add.iter().map(|g| g.to_string()).collect()),
        read_only: svc.read_only.then_some(true),
        init: Some(svc.init),
        mounts: (!mounts.is_empty()).then_some(mounts),
        stop_signal: svc.stop_signal,
        stop_grace_period: svc.stop_grace_period.map(nanos),
        health_check: svc.healthcheck.map(healthcheck),
        hosts: (!hosts.is_empty()).then_some(hosts),
        dns_config: Some(dns),
        secrets: (!secrets.is_empty()).then_some(secrets),
        configs: (!configs.is_empty()).then_some(configs),
        sysctls: (!sysctls.is_empty()).then_some(sysctls),
        capability_add: (!svc.cap_add.is_empty()).then(|| svc.cap_add.into_iter().collect()),
        capability_drop: (!svc.cap_drop.is_empty()).then(|| svc.cap_drop.into_iter().collect()),
        ..Default::default()
    };
    let ports = ports_of(svc.ports)?;
    let endpoint_mode = match endpoint_mode {
        Some(deploy::EndpointMode::DnsRR) => EndpointSpecModeEnum::DNSRR,
        Some(deploy::EndpointMode::VIp) | None => EndpointSpecModeEnum::VIP,
        Some(other) => bail!("deploy.endpoint_mode {other} is not a mode: use vip or dnsrr"),
    };
    Ok(ServiceSpec {
        name: Some(scope(namespace, name)),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: Some(resources(deploy_resources)?),
            restart_policy: restart_policy(deploy_restart, svc.restart)?,
            placement: placement(deploy_placement)?,
            networks: (!attachments.is_empty()).then_some(attachments),
            force_update: Some(0),
            ..Default::default()
        }),
        mode: Some(mode_of(raw, replicas)?),
        update_config: deploy_update.map(|c| update_config(c, raw.update_failure_ratio)),
        rollback_config: deploy_rollback.map(|c| rollback_config(c, raw.rollback_failure_ratio)),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(endpoint_mode),
            ports: (!ports.is_empty()).then_some(ports),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> anyhow::Result<Plan> {
        let (compose, raw) = super::super::compose::parse(serde_yaml::from_str(yaml)?)?;
        convert(
            "vote",
            Loaded {
                compose,
                dir: PathBuf::from("/srv/app"),
                raw,
                warnings: Vec::new(),
            },
        )
    }

    fn only(p: &Plan) -> &ServiceSpec {
        &p.services[0].1
    }

    fn container(s: &ServiceSpec) -> &TaskSpecContainerSpec {
        s.task_template
            .as_ref()
            .unwrap()
            .container_spec
            .as_ref()
            .unwrap()
    }

    #[test]
    fn names_labels_and_aliases_are_dockers() {
        let p = plan(
            "services:\n  web: {image: whoami, networks: {front: {aliases: [www]}}}\n  db: {image: postgres}\nnetworks:\n  front: {attachable: true, ipam: {config: [{subnet: 10.9.0.0/24}]}}\n",
        )
        .unwrap();
        let names: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["vote_front", "vote_default"]);
        let front = &p.networks[0];
        assert_eq!(front.driver.as_deref(), Some("overlay"));
        assert_eq!(front.attachable, Some(true));
        assert_eq!(front.labels.as_ref().unwrap()[NAMESPACE_LABEL], "vote");
        let subnet = front.ipam.as_ref().unwrap().config.as_ref().unwrap()[0]
            .subnet
            .clone();
        assert_eq!(subnet.as_deref(), Some("10.9.0.0/24"));
        let web = only(&p);
        assert_eq!(web.name.as_deref(), Some("vote_web"));
        let labels = web.labels.as_ref().unwrap();
        assert_eq!(labels[NAMESPACE_LABEL], "vote");
        assert_eq!(labels[IMAGE_LABEL], "whoami");
        let nets = web
            .task_template
            .as_ref()
            .unwrap()
            .networks
            .clone()
            .unwrap();
        assert_eq!(nets[0].target.as_deref(), Some("vote_front"));
        assert_eq!(nets[0].aliases.clone().unwrap(), ["www", "web"]);
        let db = &p.services[1].1;
        let nets = db.task_template.as_ref().unwrap().networks.clone().unwrap();
        assert_eq!(nets[0].target.as_deref(), Some("vote_default"));
    }

    #[test]
    fn ports_short_and_long() {
        let p = plan(
            "services:\n  web:\n    image: whoami\n    ports: ['8080:80', '53:53/udp', '9000', {target: 81, published: 8081, mode: host}]\n",
        )
        .unwrap();
        let ports = only(&p).endpoint_spec.clone().unwrap().ports.unwrap();
        let got: Vec<(i64, Option<i64>, String, String)> = ports
            .iter()
            .map(|p| {
                (
                    p.target_port.unwrap(),
                    p.published_port,
                    p.protocol.unwrap().to_string(),
                    p.publish_mode.unwrap().to_string(),
                )
            })
            .collect();
        let want = |t, p: Option<i64>, proto: &str, mode: &str| {
            (t, p, proto.to_string(), mode.to_string())
        };
        assert_eq!(
            got,
            [
                want(80, Some(8080), "tcp", "ingress"),
                want(53, Some(53), "udp", "ingress"),
                want(9000, None, "tcp", "ingress"),
                want(81, Some(8081), "tcp", "host"),
            ]
        );
        let e =
            plan("services:\n  web: {image: whoami, ports: ['127.0.0.1:80:80']}\n").unwrap_err();
        assert!(format!("{e:#}").contains("service web"), "{e:#}");
    }

    #[test]
    fn volumes_named_bind_and_tmpfs() {
        let p = plan(
            "services:\n  web:\n    image: whoami\n    volumes: ['data:/data:ro', './html:/html', {type: tmpfs, target: /cache, tmpfs: {size: 1m}}]\nvolumes:\n  data:\n",
        )
        .unwrap();
        let mounts = container(only(&p)).mounts.clone().unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("vote_data"));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].source.as_deref(), Some("/srv/app/html"));
        assert_eq!(mounts[2].typ, Some(MountType::TMPFS));
        assert_eq!(
            mounts[2].tmpfs_options.as_ref().unwrap().size_bytes,
            Some(1 << 20)
        );
        let e = plan("services:\n  web: {image: whoami, volumes: ['nope:/x']}\n").unwrap_err();
        assert!(format!("{e:#}").contains("nope is not declared"), "{e:#}");
    }

    #[test]
    fn environment_as_list_or_map_sorted() {
        let list = plan("services:\n  w: {image: whoami, environment: [B=2, A=1]}\n").unwrap();
        assert_eq!(container(only(&list)).env.clone().unwrap(), ["A=1", "B=2"]);
        let map = plan("services:\n  w: {image: whoami, environment: {B: 2, A: x y}}\n").unwrap();
        assert_eq!(container(only(&map)).env.clone().unwrap(), ["A=x y", "B=2"]);
    }

    #[test]
    fn deploy_fields() {
        let p = plan(
            "services:\n  w:\n    image: whoami\n    command: sh -c 'echo hi'\n    deploy:\n      replicas: 3\n      endpoint_mode: dnsrr\n      labels: [tier=front]\n      resources: {limits: {cpus: '0.5', memory: 64m, pids: 100}, reservations: {memory: 32M}}\n      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}\n      update_config: {parallelism: 2, order: start-first, max_failure_ratio: 0.5}\n      placement: {constraints: [node.role==manager], max_replicas_per_node: 1}\n",
        )
        .unwrap();
        let s = only(&p);
        assert_eq!(
            s.mode.clone().unwrap().replicated.unwrap().replicas,
            Some(3)
        );
        assert_eq!(
            s.endpoint_spec.clone().unwrap().mode,
            Some(EndpointSpecModeEnum::DNSRR)
        );
        assert_eq!(s.labels.as_ref().unwrap()["tier"], "front");
        assert_eq!(container(s).args.clone().unwrap(), ["sh", "-c", "echo hi"]);
        let t = s.task_template.clone().unwrap();
        let r = t.resources.unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(limits.pids, Some(100));
        assert_eq!(r.reservations.unwrap().memory_bytes, Some(32 << 20));
        let rp = t.restart_policy.unwrap();
        assert_eq!(
            rp.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(rp.delay, Some(2_000_000_000));
        assert_eq!(rp.max_attempts, Some(3));
        let u = s.update_config.clone().unwrap();
        assert_eq!(u.parallelism, Some(2));
        assert_eq!(u.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        assert_eq!(u.max_failure_ratio, Some(0.5));
        let placement = t.placement.unwrap();
        assert_eq!(placement.constraints.unwrap(), ["node.role==manager"]);
        assert_eq!(placement.max_replicas, Some(1));

        let job =
            plan("services:\n  j: {image: whoami, deploy: {mode: replicated-job, replicas: 2}}\n")
                .unwrap();
        let job = only(&job).mode.clone().unwrap().replicated_job.unwrap();
        assert_eq!(
            (job.max_concurrent, job.total_completions),
            (Some(2), Some(2))
        );
        let e = plan("services:\n  g: {image: whoami, deploy: {mode: global, replicas: 2}}\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("service g"), "{e:#}");
    }

    #[test]
    fn secrets_and_configs_by_stack_name_or_external() {
        let p = plan(
            "services:\n  w:\n    image: whoami\n    secrets: [{source: pw, target: db_pw, mode: 0400}]\n    configs: [ext]\nsecrets:\n  pw: {environment: HOME}\nconfigs:\n  ext: {external: true}\n",
        )
        .unwrap();
        assert_eq!(p.secrets[0].name, "vote_pw");
        assert_eq!(p.external_configs, ["ext"]);
        let c = container(only(&p));
        let s = &c.secrets.as_ref().unwrap()[0];
        assert_eq!(s.secret_name.as_deref(), Some("vote_pw"));
        assert_eq!(s.file.as_ref().unwrap().name.as_deref(), Some("db_pw"));
        assert_eq!(s.file.as_ref().unwrap().mode, Some(0o400));
        assert_eq!(
            c.configs.as_ref().unwrap()[0].config_name.as_deref(),
            Some("ext")
        );
        let e = plan("services:\n  w: {image: whoami, secrets: [nope]}\n").unwrap_err();
        assert!(format!("{e:#}").contains("nope is not declared"), "{e:#}");
    }

    #[test]
    fn shell_words_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"sh -c "echo \"a b\"" 'c d' e\ f"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "c d", "e f"]
        );
        assert!(shell_words("'open").is_err());
    }
}
