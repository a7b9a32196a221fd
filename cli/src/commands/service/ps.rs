//! `swarmkit service ps`: the tasks of services, history indented under each slot, as
//! docker prints them.

use std::collections::HashMap;

use bollard::models::Task;
use bollard::query_parameters::ListTasksOptions;
use clap::Args;

use super::spec::service_name;
use crate::api::{self, Api, ApiResult};
use crate::render::{self, Table};
use crate::template::{Format, Printer};

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
    /// Only display task IDs
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Filter output based on conditions provided (KEY=VALUE), e.g. label=com.docker.stack.namespace=demo
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = crate::commands::parse_filter)]
    filter: Vec<(String, String)>,
    /// Output format
    #[arg(long, default_value = "table", value_parser = crate::template::parse)]
    format: Format,
}

/// One task as `service ps` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub name: String,
    pub image: String,
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
    pub ports: String,
}

/// The NODE column's name for each node ID: its spec name where it has one, else its
/// hostname, as docker's `service ps` and `stack ps` show it.
pub async fn node_names(api: &Api) -> anyhow::Result<HashMap<String, String>> {
    Ok(api
        .docker
        .list_nodes(None)
        .await
        .api(api)?
        .into_iter()
        .map(|n| {
            let name = n
                .spec
                .as_ref()
                .and_then(|s| s.name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| api::hostname(&n));
            (n.id.unwrap_or_default(), name)
        })
        .collect())
}

pub async fn ps(api: &Api, args: PsArgs) -> anyhow::Result<i32> {
    let mut services = Vec::new();
    for name in &args.services {
        services.push(api.docker.inspect_service(name, None).await.api(api)?);
    }
    let mut tasks = Vec::new();
    for s in &services {
        let id = s.id.clone().unwrap_or_default();
        let mut filters = crate::commands::filters(&args.filter).unwrap_or_default();
        filters.insert("service".to_string(), vec![id]);
        let opts = ListTasksOptions {
            filters: Some(filters),
        };
        tasks.extend(api.docker.list_tasks(Some(opts)).await.api(api)?);
    }
    let nodes = node_names(api).await?;
    let names: HashMap<String, String> = services
        .iter()
        .map(|s| (s.id.clone().unwrap_or_default(), service_name(s)))
        .collect();
    let rows = task_rows(
        tasks,
        &names,
        &nodes,
        !args.no_trunc,
        args.format == Format::Table,
        chrono::Utc::now(),
    );
    if args.quiet {
        rows.iter().for_each(|r| println!("{}", r.id));
        return Ok(0);
    }
    if args.format == Format::Table {
        print_table(rows)?;
        return Ok(0);
    }
    let mut out = Printer::new(
        &args.format,
        &[
            "CurrentState",
            "DesiredState",
            "Error",
            "ID",
            "Image",
            "Name",
            "Node",
            "Ports",
        ],
        &[],
    );
    for r in rows {
        out.row(
            vec![
                r.current.into(),
                r.desired.into(),
                r.error.into(),
                r.id.into(),
                r.image.into(),
                r.name.into(),
                r.node.into(),
                r.ports.into(),
            ],
            Vec::new(),
        )?;
    }
    out.finish()?;
    Ok(0)
}

pub fn print_table(rows: Vec<TaskRow>) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]);
    for r in rows {
        table.row(vec![
            r.id, r.name, r.image, r.node, r.desired, r.current, r.error, r.ports,
        ]);
    }
    table.print()
}

/// Sorts and names tasks like docker/cli's task.Print: `svc.slot` (or `svc.node` for global
/// services), newest first within a slot, older ones indented as ` \_ svc.slot`.
pub fn task_rows(
    tasks: Vec<Task>,
    service_names: &HashMap<String, String>,
    node_names: &HashMap<String, String>,
    trunc: bool,
    indent: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<TaskRow> {
    let mut named: Vec<(String, Task)> = tasks
        .into_iter()
        .map(|t| {
            let sid = t.service_id.clone().unwrap_or_default();
            let svc = service_names.get(&sid).cloned().unwrap_or(sid);
            let name = match t.slot {
                Some(slot) if slot != 0 => format!("{svc}.{slot}"),
                _ => format!("{svc}.{}", t.node_id.clone().unwrap_or_default()),
            };
            (name, t)
        })
        .collect();
    named.sort_by(|(na, a), (nb, b)| {
        render::natural_cmp(na, nb).then_with(|| b.created_at.cmp(&a.created_at))
    });
    let mut prev = String::new();
    let mut rows = Vec::new();
    for (name, t) in named {
        let shown = if indent && name == prev {
            format!(" \\_ {name}")
        } else {
            name.clone()
        };
        prev = name;
        let status = t.status.clone().unwrap_or_default();
        let id = t.id.clone().unwrap_or_default();
        let image = t
            .spec
            .as_ref()
            .and_then(|s| s.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let age = status
            .timestamp
            .map(|ts| (now - ts).to_std().unwrap_or_default())
            .unwrap_or_default();
        let err = status.err.clone().unwrap_or_default();
        let err = if trunc {
            render::ellipsis(&err, 30)
        } else {
            err
        };
        let ports: Vec<String> = status
            .port_status
            .and_then(|p| p.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                format!(
                    "*:{}->{}/{}",
                    p.published_port.unwrap_or(0),
                    p.target_port.unwrap_or(0),
                    p.protocol.map(|x| x.to_string()).unwrap_or_default()
                )
            })
            .collect();
        rows.push(TaskRow {
            id: if trunc { render::truncate_id(&id) } else { id },
            name: shown,
            image: if trunc {
                render::display_image(&image)
            } else {
                image
            },
            node: t
                .node_id
                .as_ref()
                .map(|n| node_names.get(n).cloned().unwrap_or_else(|| n.clone()))
                .unwrap_or_default(),
            desired: render::pretty(&t.desired_state.map(|s| s.to_string()).unwrap_or_default()),
            current: format!(
                "{} {} ago",
                render::pretty(&status.state.map(|s| s.to_string()).unwrap_or_default()),
                render::human_duration(age).to_lowercase()
            ),
            error: if err.is_empty() {
                err
            } else {
                format!("\"{err}\"")
            },
            ports: ports.join(","),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{TaskState, TaskStatus};
    use chrono::TimeZone;

    fn task(id: &str, slot: i64, created: i64, desired: TaskState, state: TaskState) -> Task {
        let at = |s| chrono::Utc.timestamp_opt(s, 0).single();
        Task {
            id: Some(id.into()),
            service_id: Some("svc".into()),
            node_id: Some("n1".into()),
            slot: Some(slot),
            created_at: at(created),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                timestamp: at(created),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ps_names_sorts_and_indents_like_docker() {
        use TaskState::*;
        let tasks = vec![
            task("aaaaaaaaaaaaaaaaaaaaaaaaa", 10, 1000, RUNNING, RUNNING),
            task("bbbbbbbbbbbbbbbbbbbbbbbbb", 1, 900, SHUTDOWN, FAILED),
            task("ccccccccccccccccccccccccc", 1, 1000, RUNNING, RUNNING),
            task("ddddddddddddddddddddddddd", 2, 1000, RUNNING, STARTING),
        ];
        let names = HashMap::from([("svc".to_string(), "web".to_string())]);
        let nodes = HashMap::from([("n1".to_string(), "node-1".to_string())]);
        let now = chrono::Utc
            .timestamp_opt(1027, 0)
            .single()
            .unwrap_or_default();
        let rows = task_rows(tasks, &names, &nodes, true, true, now);
        let got: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.desired.as_str(), r.current.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("web.1", "Running", "Running 27 seconds ago"),
                (" \\_ web.1", "Shutdown", "Failed 2 minutes ago"),
                ("web.2", "Running", "Starting 27 seconds ago"),
                ("web.10", "Running", "Running 27 seconds ago"),
            ]
        );
        assert_eq!(rows[0].id, "cccccccccccc");
        assert_eq!(rows[0].node, "node-1");
    }
}
