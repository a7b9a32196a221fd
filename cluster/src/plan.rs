//! The per-node plan: everything one node must make true, computed by the manager from the
//! desired and observed state (see `crate::dispatch`), sent to the node's agent as deltas
//! and applied through netcore. Plan objects (networks, peers, tasks, services, ingress
//! ports) are the unit of a delta: each has a key, and a delta puts or deletes whole objects.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{EndpointMode, Protocol, Task, TaskState, Time};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    /// Store version this plan reflects; the agent acks it once applied.
    pub version: u64,
    pub node_id: String,
    pub hostname: String,
    pub vtep: Option<Ipv4Addr>,
    pub lb_driver: String,
    pub networks: Vec<NetworkPlan>,
    /// By key, shared with the plan state they came from: a plan is made for every change,
    /// and neither the maps (persistent, so a copy is a pointer) nor their thousands of
    /// unchanged objects are copied (nor compared, see `Arc::ptr_eq`).
    pub tasks: Objects<TaskPlan>,
    pub services: Objects<ServicePlan>,
    pub ingress: Option<IngressPlan>,
    /// UDP port of all VXLAN traffic (0 in plans from before it existed: 4789).
    #[serde(default)]
    pub data_port: u16,
}

/// Plan objects by key.
pub type Objects<T> = imbl::OrdMap<String, Arc<T>>;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyringPlan {
    /// Every key the node receives with.
    pub keys: Vec<netcore::xfrm::Key>,
    /// Tag of the key it sends with.
    pub primary: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkPlan {
    pub id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub ingress: bool,
    /// VXLAN of this network travels in ESP between nodes (`--opt encrypted`).
    #[serde(default)]
    pub encrypted: bool,
    /// The keys of an encrypted network; a rotation re-sends the network, never its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<KeyringPlan>,
    /// Endpoints of this network on other nodes.
    pub peers: Vec<PeerPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerPlan {
    pub ip: Ipv4Addr,
    pub vtep: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskPlan {
    pub id: String,
    /// `service.slot.id`, docker's container name for the task.
    pub name: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub image: String,
    /// The service's command followed by its args: what a built-in image's task runs instead
    /// of its server, from the node's filesystem.
    pub args: Vec<String>,
    /// How many of `args` are the service's command (docker's `Command`, which replaces a
    /// registry image's ENTRYPOINT; the rest replace its CMD).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub command_len: usize,
    /// `--mount`: volumes, binds and tmpfs in a registry image's container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountPlan>,
    pub env: Vec<String>,
    pub hostname: String,
    pub attachments: Vec<AttachmentPlan>,
    pub start_after: Option<Time>,
    /// Ports published in host mode: this node forwards them to this task directly.
    pub host_ports: Vec<HostPortPlan>,
    /// Between SIGTERM and SIGKILL when the task stops (`--stop-grace-period`).
    #[serde(default)]
    pub stop_grace_ms: u64,
    /// `--user`: `user[:group]`, names resolved on the node; empty: root. (Empty options are
    /// left out of the plan's bytes, which every node receives for every task.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `--workdir`; empty: `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `--sysctl`: network sysctls set in the task's namespace before it starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `--stop-signal`; empty: SIGTERM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// `--host`: extra `/etc/hosts` lines, `IP name [alias...]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `--read-only`: the task's root is mounted read-only (in its own mount namespace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `--dns-search` and `--dns-option`: written into its resolv.conf, as docker does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// `--dns`: where its embedded DNS forwards names it does not own; empty: the node's
    /// resolvers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<std::net::Ipv4Addr>,
    /// Every network it is on is `--internal`: no leg on the node's gateway bridge, no way
    /// out of its overlays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// `--health-cmd` and its timings: the task serves only once healthy and is failed when
    /// unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthPlan>,
    /// `--no-healthcheck`: not even the image's HEALTHCHECK runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health_disabled: bool,
    /// `--secret` and `--config`: files put on a tmpfs in the task, from memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TaskFile>,
    /// `--limit-cpu`, `--limit-memory`, `--limit-pids` and `--reserve-memory`: what the task's
    /// own cgroup holds it to.
    #[serde(default, skip_serializing_if = "TaskLimits::is_none")]
    pub limits: TaskLimits,
    /// `--init`: its process runs under a minimal init that reaps and forwards signals.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// `--cap-add` and `--cap-drop`, as given: the node computes the set from docker's default
    /// (see `crate::capabilities`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `--group`: supplementary groups, names resolved on the node, after `--user`'s group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `--with-registry-auth`: the service's `X-Registry-Auth` (base64url JSON), what the node
    /// pulls the image with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<String>,
}

/// One `--mount`, checked: what the node makes of it (see [`mounts_of`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountPlan {
    pub kind: MountKind,
    /// A volume's name (empty: an anonymous volume of the task's own), a bind's node path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// tmpfs: its size in bytes (0: the kernel's default, half the memory) and mode.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub tmpfs_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A volume name as docker's local driver takes them.
fn volume_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The service's `--mount`s as its tasks get them, or what is wrong with one and how to fix
/// it (the API's 400). Checked once, when the spec is taken.
pub fn mounts_of(c: &bollard::models::TaskSpecContainerSpec) -> Result<Vec<MountPlan>, String> {
    use bollard::models::MountType;
    let mut out: Vec<MountPlan> = Vec::new();
    for m in c.mounts.iter().flatten() {
        let target = m.target.clone().unwrap_or_default();
        if !target.starts_with('/') || !clean(&target) {
            return Err(format!(
                "--mount target {target:?}: give an absolute path inside the container (dst=/data)"
            ));
        }
        if out.iter().any(|o| o.target == target) {
            return Err(format!(
                "--mount target {target} is given twice: each mount needs a target of its own"
            ));
        }
        let source = m.source.clone().unwrap_or_default();
        let kind = match m.typ {
            Some(MountType::VOLUME) | None => {
                if !source.is_empty() && !volume_name_ok(&source) {
                    return Err(format!(
                        "--mount source {source:?}: not a volume name (letters, digits, _ . -, starting with a letter or digit); for a node path use type=bind"
                    ));
                }
                if let Some(driver) = m
                    .volume_options
                    .as_ref()
                    .and_then(|v| v.driver_config.as_ref())
                    .and_then(|d| d.name.as_deref())
                    .filter(|d| !d.is_empty() && *d != "local")
                {
                    return Err(format!(
                        "--mount volume-driver={driver}: swarmkit's nodes have the local driver only; leave volume-driver out"
                    ));
                }
                MountKind::Volume
            }
            Some(MountType::BIND) => {
                if !source.starts_with('/') || !clean(&source) {
                    return Err(format!(
                        "--mount type=bind needs an absolute node path as source, not {source:?}"
                    ));
                }
                MountKind::Bind
            }
            Some(MountType::TMPFS) => {
                if !source.is_empty() {
                    return Err("--mount type=tmpfs takes no source: leave src out".into());
                }
                MountKind::Tmpfs
            }
            Some(other) => {
                return Err(format!(
                    "--mount type={other}: swarmkit mounts volume, bind and tmpfs; use one of those"
                ));
            }
        };
        let tmpfs = m.tmpfs_options.as_ref();
        out.push(MountPlan {
            kind,
            source,
            target,
            read_only: m.read_only.unwrap_or(false),
            tmpfs_size: tmpfs
                .and_then(|t| t.size_bytes)
                .filter(|s| *s > 0)
                .map_or(0, |s| s as u64),
            tmpfs_mode: tmpfs.and_then(|t| t.mode).map(|m| m as u32),
        });
    }
    Ok(out)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A secret or config file in a task: under `/run/secrets` (a read-only tmpfs) for a secret,
/// under `/run` (a tmpfs, the file itself read-only) for a config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskFile {
    /// Absolute, inside the task.
    pub path: String,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub secret: bool,
}

/// Where a task's `--secret`s go unless their target is absolute (docker's place).
pub const SECRETS_DIR: &str = "/run/secrets";
/// The tmpfs a task's configs (and the secrets' directory) live on.
pub const FILES_ROOT: &str = "/run";

/// The files a container spec's `--secret`s and `--config`s put in its tasks, from the
/// payloads in `state`; an error names the reference that cannot be honoured and the fix.
/// The API refuses such a spec with it; the dispatcher then never meets one.
pub fn task_files(
    state: &crate::store::State,
    c: &bollard::models::TaskSpecContainerSpec,
) -> Result<Vec<TaskFile>, String> {
    let registry_image = crate::images::resolve(c.image.as_deref().unwrap_or_default()).is_none();
    let mut files = Vec::new();
    for r in c.secrets.iter().flatten() {
        let p = payload(
            &state.secrets,
            "secret",
            r.secret_id.as_deref(),
            r.secret_name.as_deref(),
        )?;
        let f = r.file.clone().unwrap_or_default();
        let target = f
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.name.clone());
        let path = if target.starts_with('/') {
            target.clone()
        } else {
            format!("{SECRETS_DIR}/{target}")
        };
        if !path.starts_with(&format!("{SECRETS_DIR}/")) || !clean(&path) {
            return Err(format!(
                "secret {} cannot go to {target:?}: a secret's target is a file name (or a path \
                 under {SECRETS_DIR}), e.g. --secret source={},target=db_password",
                p.name, p.name
            ));
        }
        files.push(TaskFile {
            path,
            data: p.data.to_vec(),
            uid: id_of(f.uid.as_deref(), "uid")?,
            gid: id_of(f.gid.as_deref(), "gid")?,
            mode: f.mode.unwrap_or(0o444) & 0o777,
            secret: true,
        });
    }
    for r in c.configs.iter().flatten() {
        let p = payload(
            &state.configs,
            "config",
            r.config_id.as_deref(),
            r.config_name.as_deref(),
        )?;
        if r.runtime.is_some() {
            return Err(format!(
                "config {} is asked for as a runtime (credential spec) config, which swarmkit \
                 does not do: give it a file target",
                p.name
            ));
        }
        let f = r.file.clone().unwrap_or_default();
        let target = f
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.name.clone());
        // A registry image's container takes a config anywhere, `/NAME` by default as in
        // docker; a built-in image's task shares its node's root, so its configs stay on the
        // task's own tmpfs at /run.
        let target = if registry_image && !target.starts_with('/') {
            format!("/{target}")
        } else {
            target
        };
        let allowed = if registry_image {
            target.len() > 1
        } else {
            target.starts_with(&format!("{FILES_ROOT}/"))
        };
        if !allowed || target.starts_with(&format!("{SECRETS_DIR}/")) || !clean(&target) {
            return Err(if registry_image {
                format!(
                    "config {} cannot go to {target:?}: give an absolute file path outside \
                     {SECRETS_DIR}, e.g. --config source={},target=/etc/{}",
                    p.name, p.name, p.name
                )
            } else {
                format!(
                    "config {} cannot go to {target:?}: a built-in image's task shares its \
                     node's root filesystem, so its configs go on a tmpfs at {FILES_ROOT}: give \
                     an absolute target under {FILES_ROOT}, e.g. --config \
                     source={},target={FILES_ROOT}/{} (a registry image takes any target)",
                    p.name, p.name, p.name
                )
            });
        }
        files.push(TaskFile {
            path: target,
            data: p.data.to_vec(),
            uid: id_of(f.uid.as_deref(), "uid")?,
            gid: id_of(f.gid.as_deref(), "gid")?,
            mode: f.mode.unwrap_or(0o444) & 0o777,
            secret: false,
        });
    }
    let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    paths.sort();
    if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "two secrets or configs go to {}: give each its own target",
            w[0]
        ));
    }
    Ok(files)
}

fn payload<'a>(
    all: &'a imbl::OrdMap<String, crate::model::Payload>,
    noun: &str,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<&'a crate::model::Payload, String> {
    let found = match id.filter(|i| !i.is_empty()) {
        Some(id) => all.get(id),
        None => name.and_then(|n| all.values().find(|p| p.name == n)),
    };
    found.ok_or_else(|| {
        let what = id.or(name).unwrap_or_default();
        format!("{noun} not found: {what}: create it first (docker {noun} create {what} FILE)")
    })
}

/// A path with no empty, `.` or `..` components.
fn clean(path: &str) -> bool {
    path.split('/')
        .skip(1)
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn id_of(v: Option<&str>, what: &str) -> Result<u32, String> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| format!("invalid {what} {v:?}: give a number")),
    }
}

/// Bytes as base64 in JSON, as the Engine API carries them (an array of numbers is 4x larger).
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// A task's resource limits in docker's units; 0: none.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskLimits {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// `--reserve-memory`: the cgroup's soft limit, as docker sets it.
    pub memory_reservation: u64,
}

impl TaskLimits {
    pub fn is_none(&self) -> bool {
        *self == TaskLimits::default()
    }

    /// From a spec's `Resources`; what is unset, zero or negative is no limit.
    pub fn from_spec(r: Option<&bollard::models::TaskSpecResources>) -> TaskLimits {
        let positive = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(0) as u64;
        let limits = r.and_then(|r| r.limits.as_ref());
        let reserve = r.and_then(|r| r.reservations.as_ref());
        TaskLimits {
            nano_cpus: positive(limits.and_then(|l| l.nano_cpus)),
            memory_bytes: positive(limits.and_then(|l| l.memory_bytes)),
            pids: positive(limits.and_then(|l| l.pids)),
            memory_reservation: positive(reserve.and_then(|r| r.memory_bytes)),
        }
    }
}

/// A healthcheck with docker's defaults filled in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthPlan {
    /// The command, run in the task's namespaces as its user (`CMD-SHELL` through `/bin/sh -c`).
    pub argv: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy.
    pub retries: u32,
    /// Failures in this window after the start do not count, until the first success.
    pub start_period_ms: u64,
    /// Between checks during the start period.
    pub start_interval_ms: u64,
}

impl HealthPlan {
    /// From the spec's healthcheck; None for none (absent, empty or `NONE`).
    pub fn from_spec(h: &bollard::models::HealthConfig) -> Option<HealthPlan> {
        let argv = match h.test.as_deref().unwrap_or_default() {
            [kind, rest @ ..] if kind == "CMD" => rest.to_vec(),
            [kind, cmd] if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), cmd.clone()]
            }
            _ => return None,
        };
        // docker's defaults: 30 s, 30 s, 3, 0, 5 s.
        let ms = |ns: Option<i64>, default_ms: u64| match ns {
            Some(ns) if ns > 0 => (ns as u64 / 1_000_000).max(1),
            _ => default_ms,
        };
        Some(HealthPlan {
            argv,
            interval_ms: ms(h.interval, 30_000),
            timeout_ms: ms(h.timeout, 30_000),
            retries: match h.retries {
                Some(r) if r > 0 => r as u32,
                _ => 3,
            },
            start_period_ms: ms(h.start_period, 0),
            start_interval_ms: ms(h.start_interval, 5_000),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostPortPlan {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachmentPlan {
    pub network_id: String,
    pub ifname: String,
    pub addr: Ipv4Net,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServicePlan {
    pub id: String,
    pub name: String,
    pub endpoint_mode: EndpointMode,
    /// network id -> (vip, fwmark)
    pub vips: BTreeMap<String, (Ipv4Addr, u32)>,
    /// network id -> addresses of running tasks, in slot order (the round-robin order).
    pub backends: BTreeMap<String, Vec<Ipv4Addr>>,
    /// network id -> extra DNS names of the service on that network (`Networks[].Aliases`).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngressPlan {
    pub network_id: String,
    /// This node's ingress sandbox address on the ingress network.
    pub sandbox_addr: Ipv4Net,
    pub ports: Vec<IngressPort>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngressPort {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
    pub service_id: String,
    /// Ingress addresses of the service's running tasks, in slot order.
    pub backends: Vec<Ipv4Addr>,
}

/// Whether a task must still be running on its node: desired running, or draining until
/// every node has applied its removal from the load balancers.
pub fn keeps_running(t: &Task, min_ack: u64) -> bool {
    match t.desired {
        TaskState::Running => true,
        _ => {
            !t.status.state.is_terminal()
                && t.status.state >= TaskState::Starting
                && t.drain_version.is_some_and(|v| min_ack < v)
        }
    }
}

/// A task receives traffic only while desired running and observed running.
pub fn serves_traffic(t: &Task) -> bool {
    t.desired == TaskState::Running && t.status.state == TaskState::Running
}

/// The spec's network aliases by network ID, from both places a spec may list networks
/// (TaskTemplate.Networks and the deprecated top-level Networks), targets by ID or name.
pub fn aliases_of(
    state: &crate::store::State,
    s: &crate::model::Service,
) -> BTreeMap<String, Vec<String>> {
    let mut targets = s
        .spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.clone())
        .unwrap_or_default();
    #[allow(deprecated)]
    targets.extend(s.spec.networks.clone().unwrap_or_default());
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in targets {
        let Some(target) = t.target.as_deref() else {
            continue;
        };
        let Some(net) = state
            .networks
            .get(target)
            .or_else(|| state.networks.values().find(|n| n.name == target))
        else {
            continue;
        };
        let list = out.entry(net.id.clone()).or_default();
        for a in t.aliases.unwrap_or_default() {
            if !a.is_empty() && !list.contains(&a) {
                list.push(a);
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// A plan object's identity within one node's plan: a delta puts or deletes it whole.
pub trait Keyed {
    type Key: Ord + Clone + Serialize + for<'de> Deserialize<'de> + std::fmt::Debug;
    fn key(&self) -> Self::Key;
}

impl Keyed for NetworkPlan {
    type Key = String;
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl Keyed for TaskPlan {
    type Key = String;
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl Keyed for ServicePlan {
    type Key = String;
    fn key(&self) -> String {
        self.id.clone()
    }
}

pub type PortKey = (Protocol, u16);

impl Keyed for IngressPort {
    type Key = PortKey;
    fn key(&self) -> PortKey {
        (self.protocol, self.published)
    }
}

/// One remote endpoint of one overlay, travelling on its own so that a task starting on a
/// big network costs every node one entry, not the network's whole peer list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkPeer {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub vtep: Ipv4Addr,
}

pub type PeerKey = (String, Ipv4Addr);

impl Keyed for NetworkPeer {
    type Key = PeerKey;
    fn key(&self) -> PeerKey {
        (self.network_id.clone(), self.ip)
    }
}

/// The node-level part of a plan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeHeader {
    pub node_id: String,
    pub hostname: String,
    pub vtep: Option<Ipv4Addr>,
    pub lb_driver: String,
    /// The ingress network and this node's sandbox address on it.
    pub ingress: Option<(String, Ipv4Net)>,
    /// UDP port of all VXLAN traffic.
    #[serde(default)]
    pub data_port: u16,
}

/// Puts and deletes of one kind of plan object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(bound(deserialize = "T: Keyed + Deserialize<'de>"))]
pub struct Changes<T: Keyed> {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put: Vec<T>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub del: Vec<T::Key>,
}

impl<T: Keyed> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            put: Vec::new(),
            del: Vec::new(),
        }
    }
}

impl<T: Keyed> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.del.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.del.len()
    }

    /// Applies these changes to `map`, keeping `digest` (see [`PlanState::digest`]) current.
    fn apply_to(&self, map: &mut imbl::OrdMap<T::Key, Arc<T>>, kind: u8, digest: &mut u64)
    where
        T: Clone + Serialize,
    {
        for k in &self.del {
            if let Some(old) = map.remove(k) {
                *digest = digest.wrapping_sub(object_hash(kind, &*old));
            }
        }
        for v in &self.put {
            *digest = digest.wrapping_add(object_hash(kind, v));
            if let Some(old) = map.insert(v.key(), Arc::new(v.clone())) {
                *digest = digest.wrapping_sub(object_hash(kind, &*old));
            }
        }
    }
}

/// What a node's plan gained and lost since the version its agent has, or (`full`) all of
/// it. Networks travel without their peers; peers are objects of their own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanDelta {
    /// Replace the whole plan (the agent is new, restarted or fell behind).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NodeHeader>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub networks: Changes<NetworkPlan>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub peers: Changes<NetworkPeer>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub tasks: Changes<TaskPlan>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub services: Changes<ServicePlan>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub ports: Changes<IngressPort>,
}

impl PlanDelta {
    /// Objects put or deleted (the header counts as one).
    pub fn len(&self) -> usize {
        usize::from(self.header.is_some())
            + self.networks.len()
            + self.peers.len()
            + self.tasks.len()
            + self.services.len()
            + self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.len() == 0
    }
}

/// A node's plan keyed by object, as the manager maintains it and the agent accumulates it.
/// Maps and objects are shared, so the plans made from it cost pointers, not copies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanState {
    pub header: NodeHeader,
    pub networks: imbl::OrdMap<String, Arc<NetworkPlan>>,
    pub peers: imbl::OrdMap<PeerKey, Arc<NetworkPeer>>,
    pub tasks: Objects<TaskPlan>,
    pub services: Objects<ServicePlan>,
    pub ports: imbl::OrdMap<PortKey, Arc<IngressPort>>,
}

/// A stable hash of one plan object (same binary, same value, same hash).
pub(crate) fn object_hash<T: Serialize>(kind: u8, v: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    kind.hash(&mut h);
    serde_json::to_vec(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

pub(crate) const HEADER: u8 = 0;
pub(crate) const NETWORKS: u8 = 1;
pub(crate) const PEERS: u8 = 2;
pub(crate) const TASKS: u8 = 3;
pub(crate) const SERVICES: u8 = 4;
pub(crate) const PORTS: u8 = 5;

impl PlanState {
    /// Applies a delta; returns the new digest given the digest before (kept up to date in
    /// time proportional to the delta).
    pub fn apply(&mut self, delta: &PlanDelta, digest: u64) -> u64 {
        let mut d = digest;
        if delta.full {
            *self = PlanState::default();
            d = 0;
        }
        if let Some(h) = &delta.header {
            if !delta.full {
                d = d.wrapping_sub(object_hash(HEADER, &self.header));
            }
            d = d.wrapping_add(object_hash(HEADER, h));
            self.header = h.clone();
        }
        delta
            .networks
            .apply_to(&mut self.networks, NETWORKS, &mut d);
        delta.peers.apply_to(&mut self.peers, PEERS, &mut d);
        delta.tasks.apply_to(&mut self.tasks, TASKS, &mut d);
        delta
            .services
            .apply_to(&mut self.services, SERVICES, &mut d);
        delta.ports.apply_to(&mut self.ports, PORTS, &mut d);
        d
    }

    /// An order-independent digest of the whole plan: the sum of its objects' hashes, so an
    /// agent keeps it current per delta and the manager can tell whether an agent holds
    /// exactly the plan it holds for the node.
    pub fn digest(&self) -> u64 {
        fn sum<'a, T: Serialize + 'a>(kind: u8, it: impl Iterator<Item = &'a Arc<T>>) -> u64 {
            it.fold(0u64, |d, v| d.wrapping_add(object_hash(kind, &**v)))
        }
        object_hash(HEADER, &self.header)
            .wrapping_add(sum(NETWORKS, self.networks.values()))
            .wrapping_add(sum(PEERS, self.peers.values()))
            .wrapping_add(sum(TASKS, self.tasks.values()))
            .wrapping_add(sum(SERVICES, self.services.values()))
            .wrapping_add(sum(PORTS, self.ports.values()))
    }

    /// The whole plan as one delta (a full resync).
    pub fn to_full_delta(&self) -> PlanDelta {
        fn all<T: Keyed + Clone>(m: &imbl::OrdMap<T::Key, Arc<T>>) -> Changes<T> {
            Changes {
                put: m.values().map(|v| (**v).clone()).collect(),
                del: Vec::new(),
            }
        }
        PlanDelta {
            full: true,
            header: Some(self.header.clone()),
            networks: all(&self.networks),
            peers: all(&self.peers),
            tasks: all(&self.tasks),
            services: all(&self.services),
            ports: all(&self.ports),
        }
    }

    /// The plan in the shape the agent's reconcile reads: objects in key order, each network
    /// with its peers.
    pub fn to_plan(&self, version: u64) -> NodePlan {
        let h = &self.header;
        NodePlan {
            version,
            node_id: h.node_id.clone(),
            hostname: h.hostname.clone(),
            vtep: h.vtep,
            lb_driver: h.lb_driver.clone(),
            data_port: h.data_port,
            networks: self
                .networks
                .values()
                .map(|n| {
                    let lo = (n.id.clone(), Ipv4Addr::UNSPECIFIED);
                    let hi = (n.id.clone(), Ipv4Addr::BROADCAST);
                    let mut n = (**n).clone();
                    n.peers = self
                        .peers
                        .range(lo..=hi)
                        .map(|(_, p)| PeerPlan {
                            ip: p.ip,
                            vtep: p.vtep,
                        })
                        .collect();
                    n
                })
                .collect(),
            tasks: self.tasks.clone(),
            services: self.services.clone(),
            ingress: h.ingress.as_ref().map(|(id, addr)| IngressPlan {
                network_id: id.clone(),
                sandbox_addr: *addr,
                ports: self.ports.values().map(|p| (**p).clone()).collect(),
            }),
        }
    }
}
