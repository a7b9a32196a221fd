//! `swarmkit service inspect`: docker's JSON array (or `--format`), or with `--pretty` the
//! human-readable subset of docker's template.

use bollard::models::Service;

use crate::api::{Api, ApiError, ApiResult, print_error};
use crate::template::Format;

pub async fn inspect(
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
        return crate::commands::print_inspect(&found, errors, &format.unwrap_or(Format::Json));
    }
    for s in &found {
        print!("{}", pretty_service(s));
    }
    let code = if errors.is_empty() { 0 } else { 1 };
    errors.into_iter().for_each(|e| print_error(&e.into()));
    Ok(code)
}

/// A subset of docker's `service inspect --pretty` template, same labels and layout.
fn pretty_service(s: &Service) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let mut out = format!("\nID:\t\t{}\n", s.id.clone().unwrap_or_default());
    out += &format!("Name:\t\t{}\n", spec.name.clone().unwrap_or_default());
    if let Some(labels) = spec.labels.as_ref().filter(|l| !l.is_empty()) {
        out += "Labels:\n";
        let mut pairs: Vec<_> = labels.iter().collect();
        pairs.sort();
        for (k, v) in pairs {
            out += &format!(" {k}={v}\n");
        }
    }
    let mode = spec.mode.clone().unwrap_or_default();
    if mode.global.is_some() {
        out += "Service Mode:\tGlobal\n";
    } else if let Some(r) = mode.replicated {
        out += "Service Mode:\tReplicated\n";
        if let Some(n) = r.replicas {
            out += &format!(" Replicas:\t{n}\n");
        }
    } else if let Some(job) = mode.replicated_job {
        out += "Service Mode:\tReplicated Job\n";
        if let Some(n) = job.max_concurrent {
            out += &format!(" Max Concurrent:\t{n}\n");
        }
        if let Some(n) = job.total_completions {
            out += &format!(" Total Completions:\t{n}\n");
        }
    } else if mode.global_job.is_some() {
        out += "Service Mode:\tGlobal Job\n";
    }
    out += "Placement:\n";
    let task = spec.task_template.clone().unwrap_or_default();
    let container = task.container_spec.clone().unwrap_or_default();
    out += "ContainerSpec:\n";
    out += &format!(" Image:\t\t{}\n", container.image.unwrap_or_default());
    if let Some(args) = container.args.filter(|a| !a.is_empty()) {
        out += &format!(" Args:\t\t{} \n", args.join(" "));
    }
    if let Some(env) = container.env.filter(|e| !e.is_empty()) {
        out += " Env:\t\t";
        out += &env.join(" ");
        out += "\n";
    }
    if let Some(nets) = task.networks.filter(|n| !n.is_empty()) {
        out += "Networks:";
        for n in nets {
            out += &format!(" {} ", n.target.unwrap_or_default());
        }
        out += "\n";
    }
    let endpoint = spec.endpoint_spec.unwrap_or_default();
    let mode = endpoint.mode.map(|m| m.to_string()).unwrap_or_default();
    out += &format!(
        "Endpoint Mode:\t{}\n",
        if mode.is_empty() { "vip".into() } else { mode }
    );
    if let Some(ports) = endpoint.ports.filter(|p| !p.is_empty()) {
        out += "Ports:\n";
        for p in ports {
            out += &format!(" PublishedPort = {}\n", p.published_port.unwrap_or(0));
            out += &format!(
                "  Protocol = {}\n",
                p.protocol.map(|x| x.to_string()).unwrap_or_default()
            );
            out += &format!("  TargetPort = {}\n", p.target_port.unwrap_or(0));
            out += &format!(
                "  PublishMode = {}\n",
                p.publish_mode.map(|x| x.to_string()).unwrap_or_default()
            );
        }
    }
    out
}
