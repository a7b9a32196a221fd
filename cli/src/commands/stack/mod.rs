//! `swarmkit stack ...`: docker's stack verbs. A stack is what carries the label
//! `com.docker.stack.namespace=NAME` (services, networks, secrets, configs), exactly as docker's
//! CLI makes and finds them, so either CLI works on the other's stacks. `compose` reads the
//! files, `convert` turns them into the objects (and holds the stack's naming and label
//! rules), `deploy` checks everything with the manager before it creates anything; `ls`,
//! `services`, `ps` and `rm` live here and reuse `service`'s tables. Imports run one way:
//! this file -> `deploy` -> `convert` -> `compose`.

mod compose;
mod convert;
mod deploy;

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::{
    ListConfigsOptions, ListNetworksOptions, ListSecretsOptions, ListServicesOptions,
    ListTasksOptions,
};
use clap::Subcommand;

use crate::api::{Api, ApiResult};
use crate::template::{Format, Printer};
use convert::{NAMESPACE_LABEL, filters, label_filter};

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing stack
    #[command(visible_alias = "up")]
    Deploy(deploy::DeployArgs),
    /// List stacks
    #[command(visible_alias = "list")]
    Ls {
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
    },
    /// List the services in the stack
    Services {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
        stack: String,
    },
    /// List the tasks in the stack
    Ps {
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// Remove one or more stacks
    #[command(visible_aliases = ["remove", "down"])]
    Rm {
        #[arg(required = true, value_name = "STACK")]
        stacks: Vec<String>,
    },
}

pub async fn run(cluster: &str, cmd: StackCmd) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    match cmd {
        StackCmd::Deploy(args) => deploy::deploy(cluster, &api, args).await,
        StackCmd::Ls { format } => ls(&api, format).await,
        StackCmd::Services {
            quiet,
            format,
            stack,
        } => {
            if services_of(&api, &stack).await?.is_empty() {
                return nothing_found(&stack);
            }
            crate::commands::service::ls(&api, quiet, &[label_filter(&stack)], format).await
        }
        StackCmd::Ps {
            no_trunc,
            quiet,
            stack,
        } => ps(&api, &stack, no_trunc, quiet).await,
        StackCmd::Rm { stacks } => {
            let mut code = 0;
            for stack in &stacks {
                code = code.max(rm(&api, stack).await?);
            }
            Ok(code)
        }
    }
}

fn nothing_found(stack: &str) -> anyhow::Result<i32> {
    eprintln!("Nothing found in stack: {stack}");
    Ok(1)
}

async fn services_of(api: &Api, stack: &str) -> anyhow::Result<Vec<bollard::models::Service>> {
    let opts = ListServicesOptions {
        filters: filters(stack),
        ..Default::default()
    };
    Ok(api.docker.list_services(Some(opts)).await.api(api)?)
}

/// `NAME  SERVICES`, as docker counts a stack: the services carrying its label.
async fn ls(api: &Api, format: Format) -> anyhow::Result<i32> {
    let opts = ListServicesOptions {
        filters: crate::commands::filters(&[("label".into(), NAMESPACE_LABEL.into())]),
        ..Default::default()
    };
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for s in api.docker.list_services(Some(opts)).await.api(api)? {
        if let Some(ns) = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(NAMESPACE_LABEL))
        {
            *stacks.entry(ns.clone()).or_default() += 1;
        }
    }
    let mut out = Printer::new(&format, &["Name", "Services"], &["NAME", "SERVICES"]);
    for (name, count) in stacks {
        out.row(
            vec![name.clone().into(), count.into()],
            vec![name, count.to_string()],
        )?;
    }
    out.finish()?;
    Ok(0)
}

async fn ps(api: &Api, stack: &str, no_trunc: bool, quiet: bool) -> anyhow::Result<i32> {
    let services = services_of(api, stack).await?;
    if services.is_empty() {
        return nothing_found(stack);
    }
    let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
    let opts = ListTasksOptions {
        filters: Some(HashMap::from([("service".to_string(), ids)])),
    };
    let tasks = api.docker.list_tasks(Some(opts)).await.api(api)?;
    let names: HashMap<String, String> = services
        .iter()
        .map(|s| {
            let name = s.spec.as_ref().and_then(|s| s.name.clone());
            (s.id.clone().unwrap_or_default(), name.unwrap_or_default())
        })
        .collect();
    let nodes = crate::commands::service::node_names(api).await?;
    let rows = crate::commands::service::task_rows(
        tasks,
        &names,
        &nodes,
        !no_trunc,
        true,
        chrono::Utc::now(),
    );
    if quiet {
        rows.iter().for_each(|r| println!("{}", r.id));
        return Ok(0);
    }
    crate::commands::service::print_tasks(rows)?;
    Ok(0)
}

/// docker's order: services, secrets, configs, then the networks they were on.
async fn rm(api: &Api, stack: &str) -> anyhow::Result<i32> {
    let services = services_of(api, stack).await?;
    let secrets = api
        .docker
        .list_secrets(Some(ListSecretsOptions {
            filters: filters(stack),
        }))
        .await
        .api(api)?;
    let configs = api
        .docker
        .list_configs(Some(ListConfigsOptions {
            filters: filters(stack),
        }))
        .await
        .api(api)?;
    let networks = api
        .docker
        .list_networks(Some(ListNetworksOptions {
            filters: filters(stack),
        }))
        .await
        .api(api)?;
    if services.is_empty() && secrets.is_empty() && configs.is_empty() && networks.is_empty() {
        return nothing_found(stack);
    }
    let mut failed = false;
    let mut report = |what: &str, name: &str, r: Result<(), bollard::errors::Error>| {
        if let Err(e) = r.api(api) {
            eprintln!("Failed to remove {what} {name}: {e}");
            failed = true;
        }
    };
    let mut sorted: Vec<(String, String)> = services
        .iter()
        .map(|s| {
            let name = s.spec.as_ref().and_then(|s| s.name.clone());
            (name.unwrap_or_default(), s.id.clone().unwrap_or_default())
        })
        .collect();
    sorted.sort();
    for (name, id) in sorted {
        println!("Removing service {name}");
        report("service", &name, api.docker.delete_service(&id).await);
    }
    for s in secrets {
        let name = s.spec.and_then(|s| s.name).unwrap_or_default();
        println!("Removing secret {name}");
        let id = s.id.unwrap_or_default();
        report("secret", &name, api.docker.delete_secret(&id).await);
    }
    for c in configs {
        let name = c.spec.and_then(|s| s.name).unwrap_or_default();
        println!("Removing config {name}");
        let id = c.id.unwrap_or_default();
        report("config", &name, api.docker.delete_config(&id).await);
    }
    for n in networks {
        let name = n.name.unwrap_or_default();
        println!("Removing network {name}");
        let id = n.id.unwrap_or_default();
        report("network", &name, api.docker.remove_network(&id).await);
    }
    Ok(if failed { 1 } else { 0 })
}
