//! `swarmkit service ls`: docker's table (or `--format`), REPLICAS counted from the tasks
//! when the manager does not report them.

use std::collections::HashMap;

use bollard::models::Service;
use bollard::query_parameters::ListServicesOptions;

use super::spec::service_name;
use crate::api::{Api, ApiError, ApiResult};
use crate::render;
use crate::template::{Format, Printer};

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

pub async fn ls(
    api: &Api,
    quiet: bool,
    filter: &[(String, String)],
    format: Format,
) -> anyhow::Result<i32> {
    let opts = ListServicesOptions {
        status: Some(!quiet),
        filters: crate::commands::filters(filter),
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
        let completed = s
            .service_status
            .as_ref()
            .and_then(|st| st.completed_tasks)
            .unwrap_or(0);
        let replicas = replicas_column(s, running, desired, completed);
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

/// REPLICAS as docker prints it: running/desired, and for a job how far it got (a global
/// job's desired tasks are those still to complete, so its total adds the completed ones).
fn replicas_column(s: &Service, running: u64, desired: u64, completed: u64) -> String {
    let mode = s.spec.as_ref().and_then(|sp| sp.mode.as_ref());
    if let Some(job) = mode.and_then(|m| m.replicated_job.as_ref()) {
        let total = job.total_completions.unwrap_or(0);
        format!("{running}/{desired} ({completed}/{total} completed)")
    } else if mode.is_some_and(|m| m.global_job.is_some()) {
        let total = desired + completed;
        format!("{running}/{desired} ({completed}/{total} completed)")
    } else {
        format!("{running}/{desired}")
    }
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
