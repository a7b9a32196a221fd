//! swarmkit: Docker Swarm networking you can run, watch and test.
//!
//! The binary is a client of a cluster's manager (the Docker Engine API on a unix socket),
//! plus the hidden entry points of the daemons `cluster up` starts.
//!
//! What lives where, bottom up (imports only run upward in this list; checked with
//! `python3 tools/modcycles.py cli/src`):
//! - `duration`, `flags`, `publish`: parsing docker's flag values (durations, the
//!   `--backend`/`--lb` choices, `-p` port specs), no I/O.
//! - `api`: the manager's API client (bollard over the unix socket) and `ApiError`, printed
//!   the way docker prints a daemon's answer.
//! - `render` (tables and sizes) and `template` (docker's `--format` Go templates, on `render`);
//!   `progress`: docker's converge bars for service create and update.
//! - `commands`: one module per docker verb group (`cluster`, `network`, `node`, `service/`
//!   with one file per subcommand, `stack/` (compose files read, converted, checked, deployed), `exec`, `vm`, `lab` (a real Docker Swarm in namespaces)), plus `trust` (join tokens, the root CA and
//!   client certificates behind `cluster`); the lifecycle ones call `testbed`.
//! - `reach`: which swarm to look at (a swarmkit cluster, or a Docker engine's swarm) and
//!   running read-only tools on its nodes, in their sandboxes and in tasks.
//! - `graph` (the cluster as a model, drawn as text or SVG), `trace` (a connection followed
//!   through the kernels' tables, drawn on the graph), `ui` (the live page serving both),
//!   `doctor` (what breaks a swarm's networking, each with evidence and fix).
//! - `walkthrough`: documented walkthroughs replayed against a cluster (plan, exec, session,
//!   snapshot), on `testbed` for bringing the cluster up.

mod api;
mod commands;
mod doctor;
mod duration;
mod flags;
mod graph;
mod mount;
mod progress;
mod publish;
mod reach;
mod render;
mod template;
mod trace;
mod ui;
mod walkthrough;

use api::print_error;
use clap::{Parser, Subcommand};

use commands::{
    cluster::ClusterCmd, network::NetworkCmd, node::NodeCmd, service::ServiceCmd, stack::StackCmd,
};

#[derive(Parser, Debug)]
#[command(
    name = "swarmkit",
    version,
    about = "Docker Swarm networking you can run, watch and test"
)]
struct Cli {
    /// Cluster to talk to
    #[arg(
        long,
        global = true,
        env = "SWARMKIT_CLUSTER",
        default_value = "default"
    )]
    cluster: String,
    /// Enable debug logging (RUST_LOG, when set, takes precedence)
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage local clusters
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage cluster nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage services
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage stacks (compose files deployed as services)
    #[command(subcommand)]
    Stack(StackCmd),
    /// Run a command inside a task's namespaces
    Exec(commands::exec::ExecArgs),
    /// Walk through Docker's swarm networking tutorial on a live cluster
    Walkthrough(walkthrough::WalkthroughArgs),
    /// Draw the cluster from its live state (text, dot, mermaid or svg)
    Graph(graph::GraphArgs),
    /// Follow one real connection hop by hop, from the kernels' records
    Trace(trace::TraceArgs),
    /// Find what breaks a swarm's networking (swarmkit's own or a real Docker Swarm), read-only
    Doctor(doctor::DoctorArgs),
    /// Serve a live picture of the cluster on 127.0.0.1, with traces on request
    Ui(ui::UiArgs),
    /// Build guest images for the qemu backend
    #[command(subcommand)]
    Vm(commands::vm::VmCmd),
    /// Run a real Docker Swarm (docker.io's dockerd) in namespaces on this host
    #[command(subcommand)]
    Lab(commands::lab::LabCmd),
    #[command(name = "__manager", hide = true)]
    Manager {
        /// Run the manager of this node, in a cluster of several managers (its agent does; see
        /// the node's replica file).
        #[arg(long)]
        replica: Option<String>,
        /// Only make a new cluster's first store at this path, and exit.
        #[arg(long, conflicts_with = "replica")]
        seed: Option<std::path::PathBuf>,
        /// Rewrite this node's stopped replica as the only manager (`cluster recover`, on
        /// a machine that holds the replica), and exit.
        #[arg(long, requires = "replica")]
        force_new_cluster: bool,
    },
    #[command(name = "__agent", hide = true)]
    Agent {
        #[arg(long)]
        node: String,
    },
    #[command(name = "__vmhost", hide = true)]
    VmHost,
    /// The docker socket of a cluster of several managers (see testbed/src/docker_proxy.rs).
    #[command(name = "__docker_proxy", hide = true)]
    DockerProxy,
    #[command(name = "__relay", hide = true)]
    Relay {
        /// The node, when it runs a manager the host reaches through the relay.
        #[arg(long)]
        node: Option<String>,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise,
    #[command(name = "__image", hide = true)]
    Image { image: String },
    /// What starts an agent's task processes (see cluster/src/agent/spawner.rs).
    #[command(name = "__spawner", hide = true)]
    Spawner,
    /// What a task with `--init` runs under: `__init -- COMMAND...`.
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

/// openraft reports every failed heartbeat to a manager that is down, five times a second,
/// at ERROR: `node ls` says which manager is unreachable; its log need not. Elections and
/// storage errors (openraft::core, openraft::storage) still show.
const QUIET_REPLICATION: &str = "openraft::replication=off,openraft::engine=off";

fn init_tracing(debug: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},{QUIET_REPLICATION}",
            if debug { "debug" } else { "warn" }
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let cluster = cli.cluster.as_str();
    match cli.command {
        Command::Cluster(cmd) => commands::cluster::run(cluster, cmd).await,
        Command::Node(cmd) => commands::node::run(cluster, cmd).await,
        Command::Network(cmd) => commands::network::run(cluster, cmd).await,
        Command::Service(cmd) => commands::service::run(cluster, cmd).await,
        Command::Stack(cmd) => commands::stack::run(cluster, cmd).await,
        Command::Exec(args) => commands::exec::run(cluster, args).await,
        Command::Walkthrough(args) => walkthrough::run(cluster, args).await,
        Command::Graph(args) => graph::run(cluster, args).await,
        Command::Trace(args) => trace::run(cluster, args).await,
        Command::Doctor(args) => doctor::run(cluster, args).await,
        Command::Ui(args) => ui::run(cluster, args).await,
        Command::Vm(cmd) => commands::vm::run(cmd).await,
        Command::Lab(cmd) => commands::lab::run(cmd).await,
        Command::Manager {
            replica,
            seed,
            force_new_cluster,
        } => testbed::lifecycle::run_manager(
            cluster,
            replica.as_deref(),
            seed.as_deref(),
            force_new_cluster,
        )
        .await
        .map(|()| 0),
        Command::Agent { node } => cluster::agent::run(cluster, &node).await.map(|()| 0),
        Command::VmHost => testbed::lifecycle::run_vmhost(cluster).await.map(|()| 0),
        Command::DockerProxy => testbed::docker_proxy::run(cluster).await.map(|()| 0),
        Command::Relay { node } => testbed::vm::relay::node_side(
            &cluster::paths::ClusterPaths::new(cluster),
            node.as_deref(),
        )
        .await
        .map(|()| 0),
        Command::Supervise => testbed::lifecycle::run_supervisor(cluster)
            .await
            .map(|()| 0),
        Command::Image { image } => cluster::images::run(&image).await.map(|()| 0),
        Command::Init { argv } => Ok(cluster::agent::run_init(&argv)),
        Command::Spawner => Ok(cluster::agent::run_spawner()),
    }
}

fn main() {
    let cli = Cli::parse();
    // The init forks: it must run before the runtime starts its threads.
    match &cli.command {
        Command::Init { argv } => std::process::exit(cluster::agent::run_init(argv)),
        Command::Spawner => std::process::exit(cluster::agent::run_spawner()),
        _ => {}
    }
    init_tracing(cli.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            print_error(&anyhow::Error::new(err).context("starting the async runtime"));
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            1
        }
    };
    // Do not wait for stray blocking tasks (a hung request) before exiting.
    runtime.shutdown_background();
    std::process::exit(code);
}
