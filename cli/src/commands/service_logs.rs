//! `swarmkit service logs SERVICE|TASK`: what the tasks printed, each line prefixed with the
//! task it came from as docker prints it (`web.1.<id>@node1    | ...`).

use std::collections::HashMap;
use std::io::Write;

use bollard::container::LogOutput;
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use clap::Args;
use futures::StreamExt;

use super::service::service_name;
use super::{Api, ApiResult, ClientError};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// A service, or one of its tasks
    #[arg(value_name = "SERVICE|TASK")]
    target: String,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    /// Do not include task IDs in output
    #[arg(long)]
    no_task_ids: bool,
    /// Do not neatly format logs (no task prefix)
    #[arg(long)]
    raw: bool,
}

struct Source {
    task_id: String,
    prefix: String,
}

pub async fn logs(api: &Api, args: LogsArgs) -> anyhow::Result<i32> {
    if args.tail != "all" && args.tail.parse::<u64>().is_err() {
        anyhow::bail!(
            "invalid --tail {:?}: give a number of lines or \"all\"",
            args.tail
        );
    }
    let sources = sources(api, &args).await?;
    let opts = LogsOptions {
        follow: args.follow,
        stdout: true,
        stderr: true,
        timestamps: args.timestamps,
        tail: args.tail.clone(),
        ..Default::default()
    };
    let width = sources.iter().map(|s| s.prefix.len()).max().unwrap_or(0);
    // One stream per task, merged as lines arrive (docker's daemon merges them the same way).
    let streams = sources.iter().map(|s| {
        let prefix = if args.raw {
            String::new()
        } else {
            format!("{:<width$}    | ", s.prefix)
        };
        api.docker
            .task_logs(&s.task_id, Some(opts.clone()))
            .map(move |item| (prefix.clone(), item))
            .boxed()
    });
    let mut merged = futures::stream::select_all(streams);
    while let Some((prefix, item)) = merged.next().await {
        let (to_err, message) = match item.api(api)? {
            LogOutput::StdErr { message } => (true, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => (false, message),
            LogOutput::StdIn { .. } => continue,
        };
        let mut line = prefix.into_bytes();
        line.extend_from_slice(&message);
        if to_err {
            std::io::stderr().write_all(&line)?;
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&line)?;
            out.flush()?;
        }
    }
    Ok(0)
}

/// The tasks to read: the service's (history included, as docker shows them), or the task
/// named.
async fn sources(api: &Api, args: &LogsArgs) -> Result<Vec<Source>, ClientError> {
    let (service, tasks) = match api.docker.inspect_service(&args.target, None).await {
        Ok(s) => {
            let filters = HashMap::from([(
                "service".to_string(),
                vec![s.id.clone().unwrap_or_default()],
            )]);
            let opts = ListTasksOptions {
                filters: Some(filters),
            };
            let tasks = api.docker.list_tasks(Some(opts)).await.api(api)?;
            (s, tasks)
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            let task = api.docker.inspect_task(&args.target).await.api(api)?;
            let service = api
                .docker
                .inspect_service(task.service_id.as_deref().unwrap_or_default(), None)
                .await
                .api(api)?;
            (service, vec![task])
        }
        Err(e) => return Err(api.error(e)),
    };
    let nodes: HashMap<String, String> = api
        .docker
        .list_nodes(None)
        .await
        .api(api)?
        .into_iter()
        .map(|n| {
            let name = super::node::hostname(&n);
            (n.id.unwrap_or_default(), name)
        })
        .collect();
    let name = service_name(&service);
    let mut tasks = tasks;
    tasks.sort_by_key(|t| (t.slot, t.created_at));
    Ok(tasks
        .into_iter()
        .map(|t| {
            let id = t.id.clone().unwrap_or_default();
            let slot = t.slot.unwrap_or(0);
            let node = t
                .node_id
                .as_ref()
                .and_then(|n| nodes.get(n).cloned())
                .unwrap_or_default();
            let task = if args.no_task_ids {
                format!("{name}.{slot}")
            } else {
                format!("{name}.{slot}.{}", crate::render::truncate_id(&id))
            };
            Source {
                task_id: id,
                prefix: format!("{task}@{node}"),
            }
        })
        .collect())
}
