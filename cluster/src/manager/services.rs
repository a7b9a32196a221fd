//! /services: create, list, inspect, update, delete. Validation happens before anything is
//! written; the service and its tasks change in one transaction.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, NetworkAttachmentConfig, ObjectVersion,
    Service as ApiService, ServiceEndpoint, ServiceEndpointVirtualIps, ServiceJobStatus,
    ServiceServiceStatus, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecModeReplicatedJob, ServiceUpdateStatus, ServiceUpdateStatusStateEnum,
};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use super::lookup::{Field, Filters, ListQuery, find};
use super::shared::Shared;
use crate::model::{
    EndpointMode, Port, Protocol, PublishMode, Service, ServiceMode, TaskState, Vip,
};
use crate::names::{self, Named};
use crate::orchestrator;
use crate::store::State as StoreState;

const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// What a spec asks for, checked against the state but not yet allocated.
struct Checked {
    endpoint_mode: EndpointMode,
    /// Published 0 = allocate one.
    ports: Vec<Port>,
    networks: Vec<String>,
}

fn check_spec(s: &StoreState, spec: &ServiceSpec, self_id: Option<&str>) -> ApiResult<Checked> {
    check_task(s, spec, self_id)?;
    let endpoint = spec.endpoint_spec.clone().unwrap_or_default();
    let endpoint_mode = match endpoint.mode {
        Some(EndpointSpecModeEnum::DNSRR) => EndpointMode::Dnsrr,
        _ => EndpointMode::Vip,
    };
    let ports = check_ports(s, &endpoint, endpoint_mode, self_id)?;
    let networks = check_networks(s, spec, &ports)?;
    Ok(Checked {
        endpoint_mode,
        ports,
        networks,
    })
}

/// The service's name, mode, image and the policies of its tasks.
fn check_task(s: &StoreState, spec: &ServiceSpec, self_id: Option<&str>) -> ApiResult<()> {
    let name = spec.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "a service needs a name: give --name NAME".into(),
        ));
    }
    names::validate(Named::Service, &name).map_err(ApiError::BadRequest)?;
    if let Some(other) = s
        .services
        .values()
        .find(|o| o.name == name && Some(o.id.as_str()) != self_id)
    {
        return Err(ApiError::Conflict(format!(
            "service name {name} is already in use by service {}: choose another --name or remove it (swarmkit service rm {name})",
            &other.id[..12]
        )));
    }
    check_mode(spec)?;
    let container = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.clone())
        .unwrap_or_default();
    let image = container.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(ApiError::BadRequest(
            "a service needs an image: give IMAGE after the options".into(),
        ));
    }
    super::images::check_reference(&image)?;

    orchestrator::constraints_of(spec).map_err(ApiError::BadRequest)?;
    crate::policy::validate(spec).map_err(ApiError::BadRequest)?;
    super::options::check(spec)?;
    crate::plan::task_files(s, &container).map_err(ApiError::BadRequest)?;
    Ok(())
}

/// The service's mode: one of docker's four, with counts in range.
fn check_mode(spec: &ServiceSpec) -> ApiResult<()> {
    let mode = spec.mode.clone().unwrap_or_default();
    let given: Vec<&str> = [
        (mode.replicated.is_some(), "Replicated"),
        (mode.global.is_some(), "Global"),
        (mode.replicated_job.is_some(), "ReplicatedJob"),
        (mode.global_job.is_some(), "GlobalJob"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if given.len() > 1 {
        return Err(ApiError::BadRequest(format!(
            "a service has one mode, and this spec sets {}: give one --mode (replicated, global, replicated-job or global-job)",
            given.join(" and ")
        )));
    }
    let count = |value: Option<i64>, what: &str, flag: &str| -> ApiResult<()> {
        let Some(n) = value else {
            return Ok(());
        };
        if n < 0 {
            return Err(ApiError::BadRequest(format!(
                "invalid {what} {n}: give {flag} 0 or more"
            )));
        }
        if n as u64 > orchestrator::MAX_REPLICAS {
            return Err(ApiError::BadRequest(format!(
                "invalid {what} {n}: swarmkit runs at most {cap} tasks of a service; give {flag} {cap} or fewer, or split the work over several services",
                cap = orchestrator::MAX_REPLICAS,
            )));
        }
        Ok(())
    };
    if let Some(r) = &mode.replicated {
        count(r.replicas, "replicas", "--replicas")?;
    }
    if let Some(job) = &mode.replicated_job {
        count(job.total_completions, "total completions", "--replicas")?;
        count(job.max_concurrent, "max concurrent", "--max-concurrent")?;
        if job.max_concurrent == Some(0) {
            return Err(ApiError::BadRequest(
                "invalid max concurrent 0: a job with no task at a time never runs; give --max-concurrent 1 or more".into(),
            ));
        }
    }
    Ok(())
}

/// The published ports, each valid, published once and by no other service (0: to allocate).
fn check_ports(
    s: &StoreState,
    endpoint: &EndpointSpec,
    endpoint_mode: EndpointMode,
    self_id: Option<&str>,
) -> ApiResult<Vec<Port>> {
    let mut ports = Vec::new();
    for p in endpoint.ports.clone().unwrap_or_default() {
        let target = p.target_port.unwrap_or(0);
        if !(1..=65535).contains(&target) {
            return Err(ApiError::BadRequest(format!(
                "invalid target port {target}: give a port between 1 and 65535"
            )));
        }
        let published = p.published_port.unwrap_or(0);
        if !(0..=65535).contains(&published) {
            return Err(ApiError::BadRequest(format!(
                "invalid published port {published}: give a port between 1 and 65535, or none to get one from 30000-32767"
            )));
        }
        let protocol = match p.protocol {
            Some(EndpointPortConfigProtocolEnum::UDP) => Protocol::Udp,
            Some(EndpointPortConfigProtocolEnum::SCTP) => {
                return Err(ApiError::BadRequest(
                    "sctp ports are not supported: use tcp or udp".into(),
                ));
            }
            _ => Protocol::Tcp,
        };
        let mode = match p.publish_mode {
            Some(EndpointPortConfigPublishModeEnum::HOST) => PublishMode::Host,
            _ => PublishMode::Ingress,
        };
        if mode == PublishMode::Ingress && endpoint_mode == EndpointMode::Dnsrr {
            return Err(ApiError::BadRequest(
                "ports published in ingress mode need a VIP: use --endpoint-mode vip, or publish with mode=host".into(),
            ));
        }
        ports.push(Port {
            protocol,
            target: target as u16,
            published: published as u16,
            mode,
        });
    }
    let mut seen = BTreeSet::new();
    for p in ports.iter().filter(|p| p.published != 0) {
        if !seen.insert((p.protocol, p.published)) {
            return Err(ApiError::BadRequest(format!(
                "port {}/{} is published twice in this service",
                p.published,
                p.protocol.as_str()
            )));
        }
        if let Some(other) = s.services.values().find(|o| {
            Some(o.id.as_str()) != self_id
                && o.ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
        }) {
            return Err(ApiError::BadRequest(format!(
                "port {}/{} is already published by service {}: choose another published port",
                p.published,
                p.protocol.as_str(),
                other.name
            )));
        }
    }
    Ok(ports)
}

/// The networks the service's tasks join, by ID: the ingress first when a port is published
/// through it, then those the spec names.
fn check_networks(s: &StoreState, spec: &ServiceSpec, ports: &[Port]) -> ApiResult<Vec<String>> {
    let mut networks = Vec::new();
    if ports.iter().any(|p| p.mode == PublishMode::Ingress)
        && let Some(ing) = s.networks.values().find(|n| n.ingress)
    {
        networks.push(ing.id.clone());
    }
    let mut targets: Vec<NetworkAttachmentConfig> = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.clone())
        .unwrap_or_default();
    #[allow(deprecated)]
    targets.extend(spec.networks.clone().unwrap_or_default());
    for t in targets {
        let target = t.target.unwrap_or_default();
        let n = find(&s.networks, &target, |n| &n.name, "network").map_err(|_| {
            ApiError::NotFound(format!(
                "network {target} not found: create it first (swarmkit network create --driver overlay {target})"
            ))
        })?;
        if !networks.contains(&n.id) {
            networks.push(n.id.clone());
        }
    }
    Ok(networks)
}

fn allocate_port(s: &StoreState, proto: Protocol, taken_here: &BTreeSet<u16>) -> ApiResult<u16> {
    let used: BTreeSet<u16> = s
        .services
        .values()
        .flat_map(|o| o.ports.iter())
        .filter(|p| p.protocol == proto)
        .map(|p| p.published)
        .collect();
    DYNAMIC_PORTS
        .clone()
        .find(|p| !used.contains(p) && !taken_here.contains(p))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "no free port left in 30000-32767: publish an explicit port".into(),
            )
        })
}

/// Fills in published ports and VIPs, keeping the ones `previous` already holds.
fn allocate(
    s: &mut StoreState,
    checked: Checked,
    previous: Option<&Service>,
) -> ApiResult<(Vec<Port>, Vec<Vip>)> {
    let mut ports = checked.ports;
    let mut taken_here: BTreeSet<u16> = ports.iter().map(|p| p.published).collect();
    for p in ports.iter_mut().filter(|p| p.published == 0) {
        let reuse = previous.and_then(|prev| {
            prev.ports
                .iter()
                .find(|q| q.target == p.target && q.protocol == p.protocol)
                .map(|q| q.published)
        });
        p.published = match reuse {
            Some(r) => r,
            None => allocate_port(s, p.protocol, &taken_here)?,
        };
        taken_here.insert(p.published);
    }
    let mut vips = Vec::new();
    if checked.endpoint_mode == EndpointMode::Vip {
        for net in &checked.networks {
            if let Some(v) = previous.and_then(|p| p.vips.iter().find(|v| &v.network_id == net)) {
                vips.push(v.clone());
                continue;
            }
            let addr = crate::ipam::allocate_address(s, net)?;
            let mut meta = s.meta.clone();
            let fwmark = meta.next_fwmark.max(256);
            meta.next_fwmark = fwmark + 1;
            s.put_meta(meta);
            vips.push(Vip {
                network_id: net.clone(),
                addr,
                fwmark,
            });
        }
    }
    Ok((ports, vips))
}

/// Swarm stores network targets as IDs and fills in the mode's defaults; image references are
/// kept in docker's familiar form with a tag (`postgres` -> `postgres:latest`), as docker's
/// CLI sends them.
fn normalise_spec(s: &StoreState, mut spec: ServiceSpec) -> ServiceSpec {
    if let Some(c) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
        && let Some(image) = c.image.as_mut()
        && !image.contains('@')
    {
        *image = crate::images::canonical(image);
    }
    // Filled in as ServiceMode::of reads them, which docker's CLI relies on: it prints a
    // replicated job's TotalCompletions and would fail on a spec without one.
    let defaults = ServiceMode::of(&spec);
    let mode = spec.mode.get_or_insert_with(ServiceSpecMode::default);
    match defaults {
        ServiceMode::Replicated { replicas } => {
            mode.replicated = Some(ServiceSpecModeReplicated {
                replicas: Some(replicas as i64),
            });
        }
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total,
        } => {
            mode.replicated_job = Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(max_concurrent as i64),
                total_completions: Some(total as i64),
            });
        }
        ServiceMode::Global | ServiceMode::GlobalJob => {}
    }
    if let Some(tt) = spec.task_template.as_mut()
        && let Some(nets) = tt.networks.as_mut()
    {
        for n in nets.iter_mut() {
            if let Some(t) = n.target.as_deref()
                && let Ok(net) = find(&s.networks, t, |n| &n.name, "network")
            {
                n.target = Some(net.id.clone());
            }
        }
    }
    spec
}

fn task_template_changed(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.task_template != b.task_template
}

pub fn create_in(
    s: &mut StoreState,
    spec: ServiceSpec,
    registry_auth: Option<String>,
) -> ApiResult<String> {
    let checked = check_spec(s, &spec, None)?;
    let spec = normalise_spec(s, spec);
    let endpoint_mode = checked.endpoint_mode;
    let networks = checked.networks.clone();
    let now = chrono::Utc::now();
    let mut service = Service {
        id: crate::ids::new_id(),
        name: spec.name.clone().unwrap_or_default(),
        created: now,
        updated: now,
        version: 0,
        spec,
        previous_spec: None,
        spec_generation: 1,
        endpoint_mode,
        ports: Vec::new(),
        networks,
        vips: Vec::new(),
        update_status: None,
        filling: false,
        registry_auth: crate::model::RegistryAuth {
            current: registry_auth,
            previous: None,
        },
    };
    // A service has at most one VIP per network, so its own allocations never collide.
    let (ports, vips) = allocate(s, checked, None)?;
    service.ports = ports;
    service.vips = vips;
    let id = service.id.clone();
    s.put_service(service);
    orchestrator::reconcile(s, &id)?;
    Ok(id)
}

pub async fn create(
    State(m): State<Shared>,
    headers: HeaderMap,
    super::options::Spec(spec): super::options::Spec,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let auth = super::images::service_auth(&headers)?;
    let id = m.update(|s| create_in(s, spec, auth))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "ID": id, "Warnings": null })),
    ))
}

pub fn port_to_api(p: &Port) -> EndpointPortConfig {
    EndpointPortConfig {
        protocol: Some(match p.protocol {
            Protocol::Tcp => EndpointPortConfigProtocolEnum::TCP,
            Protocol::Udp => EndpointPortConfigProtocolEnum::UDP,
        }),
        target_port: Some(p.target as i64),
        published_port: Some(p.published as i64),
        publish_mode: Some(match p.mode {
            PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
            PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
        }),
        ..Default::default()
    }
}

pub fn to_api(s: &StoreState, svc: &Service, min_ack: u64, with_status: bool) -> ApiService {
    let mut endpoint_spec = svc.spec.endpoint_spec.clone().unwrap_or_default();
    if endpoint_spec.mode.is_none() {
        endpoint_spec.mode = Some(EndpointSpecModeEnum::VIP);
    }
    let mode = svc.mode();
    let status = with_status.then(|| service_status(s, svc, min_ack));
    // A job's iteration is its spec generation, bumped by every update (see `update`),
    // which also sets `updated`: when this iteration started.
    let job_status = mode.is_job().then_some(ServiceJobStatus {
        job_iteration: Some(ObjectVersion {
            index: Some(svc.spec_generation),
        }),
        last_execution: Some(svc.updated),
    });
    ApiService {
        id: Some(svc.id.clone()),
        version: Some(ObjectVersion {
            index: Some(svc.version),
        }),
        created_at: Some(svc.created),
        updated_at: Some(svc.updated),
        spec: Some(svc.spec.clone()),
        endpoint: Some(ServiceEndpoint {
            spec: Some(EndpointSpec {
                mode: endpoint_spec.mode,
                ports: endpoint_spec.ports.clone(),
            }),
            ports: (!svc.ports.is_empty()).then(|| svc.ports.iter().map(port_to_api).collect()),
            virtual_ips: (!svc.vips.is_empty()).then(|| {
                svc.vips
                    .iter()
                    .map(|v| ServiceEndpointVirtualIps {
                        network_id: Some(v.network_id.clone()),
                        addr: Some(v.addr.to_string()),
                    })
                    .collect()
            }),
        }),
        service_status: status,
        job_status,
        update_status: svc.update_status.as_ref().map(update_status_to_api),
    }
}

/// Counts as Swarm's ListServiceStatuses makes them, which docker's CLI prints: running
/// tasks; desired, the replicas (a replicated job's MaxConcurrent, or in a global mode the
/// tasks meant to run and not completed); and a job's completed tasks, of its current
/// iteration only.
fn service_status(s: &StoreState, svc: &Service, min_ack: u64) -> ServiceServiceStatus {
    let mode = svc.mode();
    let (mut running, mut desired, mut completed) = (0u64, 0u64, 0u64);
    for t in s.tasks_of(&svc.id) {
        if mode.is_job() && t.spec_generation != svc.spec_generation {
            continue;
        }
        let state = t.visible_state(min_ack);
        if t.desired == TaskState::Running && state == TaskState::Running {
            running += 1;
        }
        if mode.is_job() && state == TaskState::Complete {
            completed += 1;
        }
        if mode.is_global() && t.desired == TaskState::Running && state != TaskState::Complete {
            desired += 1;
        }
    }
    desired = match mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::ReplicatedJob { max_concurrent, .. } => max_concurrent,
        ServiceMode::Global | ServiceMode::GlobalJob => desired,
    };
    ServiceServiceStatus {
        running_tasks: Some(running),
        desired_tasks: Some(desired),
        completed_tasks: Some(completed),
    }
}

fn update_status_to_api(u: &crate::model::UpdateStatus) -> ServiceUpdateStatus {
    use crate::model::UpdateState;
    ServiceUpdateStatus {
        state: Some(match u.state {
            UpdateState::Updating => ServiceUpdateStatusStateEnum::UPDATING,
            UpdateState::Completed => ServiceUpdateStatusStateEnum::COMPLETED,
            UpdateState::RollbackStarted => ServiceUpdateStatusStateEnum::ROLLBACK_STARTED,
            UpdateState::RollbackCompleted => ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED,
        }),
        started_at: Some(u.started),
        completed_at: u.completed,
        message: Some(u.message.clone()),
    }
}

fn matches(svc: &Service, filters: &Filters) -> bool {
    filters.matches(|k| match k {
        "id" => Field::Prefix(svc.id.as_str().into()),
        "name" => Field::Prefix(svc.name.as_str().into()),
        "mode" => Field::Exact(svc.mode().name().into()),
        "label" => Field::Labels(svc.spec.labels.as_ref()),
        _ => Field::Any,
    })
}

pub async fn list(
    State(m): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ApiService>>> {
    let filters = Filters::parse(q.filters.as_deref(), &["id", "name", "label", "mode"])?;
    let s = m.store.snapshot();
    let min_ack = m.min_ack(&s);
    Ok(Json(
        s.services
            .values()
            .filter(|svc| matches(svc, &filters))
            .map(|svc| to_api(&s, svc, min_ack, q.status.unwrap_or(false)))
            .collect(),
    ))
}

pub async fn inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiService>> {
    let s = m.store.snapshot();
    let svc = find(&s.services, &id, |x| &x.name, "service")?;
    Ok(Json(to_api(&s, svc, m.min_ack(&s), false)))
}

#[derive(Deserialize)]
pub struct UpdateQuery {
    version: Option<u64>,
    /// `previous`: roll back to the spec before the last update (what `docker service
    /// rollback` and `service update --rollback` send).
    rollback: Option<String>,
    /// Which registry credentials the service keeps when none are sent: its current spec's
    /// (`spec`, the default) or its previous spec's (`previous-spec`, what docker's CLI
    /// sends with a rollback).
    #[serde(rename = "registryAuthFrom")]
    registry_auth_from: Option<String>,
}

pub async fn update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<UpdateQuery>,
    headers: HeaderMap,
    super::options::Spec(spec): super::options::Spec,
) -> ApiResult<Json<serde_json::Value>> {
    let sent_auth = super::images::service_auth(&headers)?;
    let auth_from_previous = match q.registry_auth_from.as_deref() {
        None | Some("") => q.rollback.as_deref() == Some("previous"),
        Some("spec") => false,
        Some("previous-spec") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid registryAuthFrom {other:?}: give spec or previous-spec"
            )));
        }
    };
    m.update(|s| {
        update_in(
            s,
            &id,
            q.version,
            q.rollback.as_deref(),
            spec,
            sent_auth,
            auth_from_previous,
        )
    })?;
    Ok(Json(serde_json::json!({ "Warnings": null })))
}

/// An update of service `id` to `spec`, checked and written into the draft `s` (also what a
/// stack's check runs for the stack's services that exist).
pub fn update_in(
    s: &mut StoreState,
    id: &str,
    version: Option<u64>,
    rollback: Option<&str>,
    spec: ServiceSpec,
    sent_auth: Option<String>,
    auth_from_previous: bool,
) -> ApiResult<()> {
    let old = find(&s.services, id, |x| &x.name, "service")?.clone();
    let Some(version) = version else {
        return Err(ApiError::BadRequest(
            "service update needs ?version=N (the service's Version.Index)".into(),
        ));
    };
    if version != old.version {
        return Err(ApiError::Conflict(format!(
            "update out of sequence: service {} changed since version {version} (now {}); inspect it again and retry",
            old.name, old.version
        )));
    }
    let rollback = match rollback {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid rollback {other:?}: the only value is \"previous\""
            )));
        }
    };
    // A rollback swaps in the previous spec, and the spec it replaces becomes the one a
    // second rollback returns to, as in Swarm.
    let spec = if rollback {
        old.previous_spec.clone().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "service {} does not have a previous spec to roll back to: it was never updated",
                old.name
            ))
        })?
    } else {
        spec
    };
    if spec.name.as_deref().is_some_and(|n| n != old.name) {
        return Err(ApiError::BadRequest(format!(
            "service {} cannot be renamed: create a new service instead",
            old.name
        )));
    }
    let checked = check_spec(s, &spec, Some(&old.id))?;
    let spec = normalise_spec(s, spec);
    let (was, asked) = (old.mode(), ServiceMode::of(&spec));
    if was.name() != asked.name() {
        return Err(ApiError::BadRequest(format!(
            "service {} is {} and its mode cannot change (docker refuses it too): remove it and create it again with --mode {}",
            old.name,
            was.name(),
            asked.name()
        )));
    }
    let mut svc = old.clone();
    svc.networks = checked.networks.clone();
    svc.endpoint_mode = checked.endpoint_mode;
    let (ports, vips) = allocate(s, checked, Some(&old))?;
    svc.ports = ports;
    if was.is_job() {
        // Every update runs a job again, from its first task, as Swarm's does.
        svc.spec_generation += 1;
    } else if svc.networks != old.networks || task_template_changed(&old.spec, &spec) {
        svc.spec_generation += 1;
        orchestrator::begin_update(&mut svc, rollback);
    }
    svc.vips = vips;
    // Credentials not sent again stay, as with dockerd: an update without
    // --with-registry-auth keeps pulling with what the service had.
    let kept = if auth_from_previous {
        old.registry_auth.previous.clone()
    } else {
        old.registry_auth.current.clone()
    };
    svc.registry_auth = crate::model::RegistryAuth {
        current: sent_auth.clone().or(kept),
        previous: old.registry_auth.current.clone(),
    };
    svc.previous_spec = Some(old.spec.clone());
    svc.spec = spec;
    svc.updated = chrono::Utc::now();
    let id = svc.id.clone();
    s.put_service(svc);
    orchestrator::reconcile(s, &id)?;
    Ok(())
}

pub async fn remove(State(m): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    m.update(|s| {
        let svc = find(&s.services, &id, |x| &x.name, "service")?.clone();
        let tasks: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.service_id == svc.id)
            .map(|t| t.id.clone())
            .collect();
        for t in tasks {
            s.remove_task(&t);
        }
        s.remove_service(&svc.id);
        Ok(())
    })?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: i64) -> ServiceSpec {
        ServiceSpec {
            name: Some("web".into()),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            task_template: Some(bollard::models::TaskSpec {
                container_spec: Some(bollard::models::TaskSpecContainerSpec {
                    image: Some("whoami".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_mode(mode: ServiceSpecMode) -> ServiceSpec {
        ServiceSpec {
            mode: Some(mode),
            ..spec(1)
        }
    }

    fn refusal(spec: &ServiceSpec) -> String {
        match check_task(&StoreState::default(), spec, None) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{:?}: {other:?}", spec.mode),
        }
    }

    #[test]
    fn a_mode_is_one_of_four_with_counts_in_range() {
        let both = with_mode(ServiceSpecMode {
            global: Some(Default::default()),
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(2) }),
            ..Default::default()
        });
        assert!(refusal(&both).contains("Replicated and Global"));
        let job = |max_concurrent, total_completions| {
            with_mode(ServiceSpecMode {
                replicated_job: Some(ServiceSpecModeReplicatedJob {
                    max_concurrent,
                    total_completions,
                }),
                ..Default::default()
            })
        };
        assert!(refusal(&job(Some(0), None)).contains("--max-concurrent 1 or more"));
        assert!(refusal(&job(None, Some(-1))).contains("--replicas 0 or more"));
        let cap = orchestrator::MAX_REPLICAS as i64 + 1;
        assert!(refusal(&job(Some(1), Some(cap))).contains("--replicas"));
        let s = StoreState::default();
        assert!(check_task(&s, &job(None, None), None).is_ok());

        // The daemon's defaults, written into the spec docker's CLI reads back.
        let filled = normalise_spec(&s, job(None, None)).mode.unwrap();
        let filled = filled.replicated_job.unwrap();
        assert_eq!(
            (filled.max_concurrent, filled.total_completions),
            (Some(1), Some(1))
        );
        let filled = normalise_spec(&s, job(Some(4), None)).mode.unwrap();
        assert_eq!(filled.replicated_job.unwrap().total_completions, Some(4));
    }

    #[test]
    fn replicas_past_the_cap_are_refused_naming_it() {
        let s = StoreState::default();
        let cap = orchestrator::MAX_REPLICAS as i64;
        assert!(check_task(&s, &spec(cap), None).is_ok());
        for r in [cap + 1, i64::MAX] {
            match check_task(&s, &spec(r), None) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(m.contains(&cap.to_string()), "{m}");
                    assert!(m.contains("--replicas"), "{m}");
                }
                other => panic!("replicas {r}: {other:?}"),
            }
        }
    }
}
