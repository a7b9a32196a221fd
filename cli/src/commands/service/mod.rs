//! `swarmkit service ...`: the subcommands' arguments and where each one runs. Imports run
//! one way: this file dispatches to the subcommand modules, which share [`spec`] (flag
//! parsers and readers of a service) and [`policy`] (restart, update and rollback flags),
//! and never import this file or each other.

mod create;
mod inspect;
mod logs;
mod ls;
mod policy;
mod ps;
mod spec;
mod update;

// What `stack` shares with `service`: the image pinning, the environment's and tasks'
// readers and the tables.
pub use create::{pin_image, registry_credentials};
pub use ls::ls;
pub use ps::{node_names, print_table as print_tasks, task_rows};
pub use spec::{env_entry, warn};

use clap::Subcommand;

use crate::api::{Api, ApiResult};
use crate::template::Format;

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<create::CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided (KEY=VALUE), e.g. label=com.docker.stack.namespace=demo
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = crate::commands::parse_filter)]
        filter: Vec<(String, String)>,
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
    },
    /// List the tasks of one or more services
    Ps(ps::PsArgs),
    /// Fetch the logs of a service or task
    Logs(logs::LogsArgs),
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
        #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = update::parse_scale)]
        targets: Vec<(String, u64)>,
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
    },
    /// Update a service
    Update(Box<update::UpdateArgs>),
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

pub async fn run(cluster: &str, cmd: ServiceCmd) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    match cmd {
        ServiceCmd::Create(args) => create::create(&api, *args).await,
        ServiceCmd::Ls {
            quiet,
            filter,
            format,
        } => ls::ls(&api, quiet, &filter, format).await,
        ServiceCmd::Ps(args) => ps::ps(&api, args).await,
        ServiceCmd::Logs(args) => logs::logs(&api, args).await,
        ServiceCmd::Inspect {
            services,
            pretty,
            format,
        } => inspect::inspect(&api, &services, pretty, format).await,
        ServiceCmd::Scale { targets, detach } => update::scale(&api, targets, detach).await,
        ServiceCmd::Update(args) => update::update(&api, *args).await,
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => update::rollback(&api, &service, detach, quiet).await,
        ServiceCmd::Rm { services } => {
            let api = &api;
            crate::commands::for_each_name(&services, |name| async move {
                api.docker.delete_service(&name).await.api(api)?;
                Ok(name)
            })
            .await
        }
    }
}
