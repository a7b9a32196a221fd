//! `swarmkit service logs SERVICE|TASK`: what the tasks printed, each line prefixed with the
//! task it came from as docker prints it (`web.1.<id>@node1    | ...`).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{Service, Task};
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use clap::Args;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};

use super::spec::service_name;
use crate::api::{self, Api, ApiError, ApiResult};

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

/// How often `-f` on a service looks for tasks that started after it began (a scale-up, a
/// replaced task); each new one is followed from its first line, so nothing it printed is lost.
const RESCAN: Duration = Duration::from_secs(1);

type Lines = BoxStream<'static, (String, Result<LogOutput, bollard::errors::Error>)>;

pub async fn logs(api: &Api, args: LogsArgs) -> anyhow::Result<i32> {
    if args.tail != "all" && args.tail.parse::<u64>().is_err() {
        anyhow::bail!(
            "invalid --tail {:?}: give a number of lines or \"all\"",
            args.tail
        );
    }
    let (service, sources) = sources(api, &args).await?;
    let opts = LogsOptions {
        follow: args.follow,
        stdout: true,
        stderr: true,
        timestamps: args.timestamps,
        tail: args.tail.clone(),
        ..Default::default()
    };
    let mut width = sources.iter().map(|s| s.prefix.len()).max().unwrap_or(0);
    let mut known: HashSet<String> = sources.iter().map(|s| s.task_id.clone()).collect();
    // One stream per task, merged as lines arrive (docker's daemon merges them the same way).
    let mut merged: SelectAll<Lines> = SelectAll::new();
    for s in &sources {
        merged.push(task_lines(api, s, &args, width, opts.clone()));
    }
    // Following a service (not one task) takes in the tasks it gains while followed.
    let mut following = service.filter(|_| args.follow);
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = merged.next(), if !merged.is_empty() => {
                let Some((prefix, item)) = item else { continue };
                let (to_err, message) = match item.api(api)? {
                    LogOutput::StdErr { message } => (true, message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        (false, message)
                    }
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
            _ = rescan.tick(), if following.is_some() => {
                let Some(svc) = &following else { continue };
                match service_tasks(api, svc, &args).await {
                    Ok(now) => {
                        for s in now {
                            if !known.insert(s.task_id.clone()) {
                                continue;
                            }
                            width = width.max(s.prefix.len());
                            let from_start = LogsOptions {
                                tail: "all".into(),
                                ..opts.clone()
                            };
                            merged.push(task_lines(api, &s, &args, width, from_start));
                        }
                    }
                    // The service is gone: what is followed ends as its tasks go.
                    Err(ApiError::Daemon(_)) => following = None,
                    Err(e) => return Err(e.into()),
                }
            }
            else => break,
        }
    }
    Ok(0)
}

/// One task's lines, each with the prefix that names its task.
fn task_lines(api: &Api, s: &Source, args: &LogsArgs, width: usize, opts: LogsOptions) -> Lines {
    let prefix = if args.raw {
        String::new()
    } else {
        format!("{:<width$}    | ", s.prefix)
    };
    api.docker
        .task_logs(&s.task_id, Some(opts))
        .map(move |item| (prefix.clone(), item))
        .boxed()
}

/// The tasks to read: the service's (history included, as docker shows them), or the task
/// named; and the service when it was named.
async fn sources(api: &Api, args: &LogsArgs) -> Result<(Option<Service>, Vec<Source>), ApiError> {
    match api.docker.inspect_service(&args.target, None).await {
        Ok(s) => {
            let sources = service_tasks(api, &s, args).await?;
            Ok((Some(s), sources))
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
            Ok((None, named(api, &service, vec![task], args).await?))
        }
        Err(e) => Err(api.error(e)),
    }
}

/// The tasks the service has now; an error when the service is gone.
async fn service_tasks(
    api: &Api,
    service: &Service,
    args: &LogsArgs,
) -> Result<Vec<Source>, ApiError> {
    let id = service.id.clone().unwrap_or_default();
    api.docker.inspect_service(&id, None).await.api(api)?;
    let opts = ListTasksOptions {
        filters: Some(HashMap::from([("service".to_string(), vec![id])])),
    };
    let tasks = api.docker.list_tasks(Some(opts)).await.api(api)?;
    named(api, service, tasks, args).await
}

/// Each task with the prefix docker prints for it: `web.1.<id>@node1`.
async fn named(
    api: &Api,
    service: &Service,
    mut tasks: Vec<Task>,
    args: &LogsArgs,
) -> Result<Vec<Source>, ApiError> {
    let nodes: HashMap<String, String> = api
        .docker
        .list_nodes(None)
        .await
        .api(api)?
        .into_iter()
        .map(|n| {
            let name = api::hostname(&n);
            (n.id.unwrap_or_default(), name)
        })
        .collect();
    let name = service_name(service);
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
