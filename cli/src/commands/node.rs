//! `swarmkit node ...`

use ::testbed::Fault;
use bollard::models::{Node, NodeSpecAvailabilityEnum, NodeSpecRoleEnum};
use bollard::query_parameters::{DeleteNodeOptions, ListNodesOptions, UpdateNodeOptions};
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use crate::api::{Api, ApiError, ApiResult, hostname, print_error};
use crate::render;
use crate::template::{Format, Printer};

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes in the cluster
    #[command(visible_alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided (KEY=VALUE): id, name, role, membership,
        /// availability, label (engine labels), node.label; e.g. node.label=zone=east
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::parse_filter)]
        filter: Vec<(String, String)>,
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
    },
    /// Display detailed information on one or more nodes
    Inspect {
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
        /// Format the output using the given Go template
        #[arg(short, long, value_parser = crate::template::parse, conflicts_with = "pretty")]
        format: Option<Format>,
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
    },
    /// Update a node
    Update {
        /// Availability of the node
        #[arg(long, value_enum)]
        availability: Option<Availability>,
        /// Role of the node (a cluster of several managers promotes and demotes)
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Add or update a node label (KEY=VALUE)
        #[arg(long, value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a node label if exists
        #[arg(long, value_name = "KEY")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Promote one or more nodes to manager in the swarm; returns once each manager is
    /// reachable
    Promote {
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager in the swarm; returns once each has left
    Demote {
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm {
        /// Force remove a node from the swarm
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Run a command inside a node's namespaces
    Exec {
        /// Run in one of the node's sandboxes instead of the node itself: `ingress_sbox`
        /// (the routing mesh's load balancer) or `1-<network id>` (an overlay's bridge)
        #[arg(long, value_name = "SANDBOX")]
        netns: Option<String>,
        node: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Crash a node (testbed): its agent and tasks die, its underlay link goes down; a QEMU
    /// guest is killed
    Kill { node: String },
    /// Bring a killed node back (testbed): link up, agent started or guest booted; returns
    /// once the node is ready
    Start { node: String },
    /// Cut a node off the underlay, control channel included (testbed); nothing is killed
    Isolate { node: String },
    /// Undo `node isolate`
    Heal { node: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Worker,
    Manager,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

pub async fn run(cluster: &str, cmd: NodeCmd) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::Update {
            availability,
            role,
            label_add,
            label_rm,
            node,
        } => {
            let change = Change {
                availability,
                role,
                label_add: &label_add,
                label_rm: &label_rm,
            };
            update(cluster, &node, &change).await?;
            println!("{node}");
            Ok(0)
        }
        NodeCmd::Promote { nodes } => change_roles(cluster, &nodes, RoleArg::Manager).await,
        NodeCmd::Demote { nodes } => change_roles(cluster, &nodes, RoleArg::Worker).await,
        NodeCmd::Rm { force, nodes } => {
            let api = Api::connect(cluster)?;
            let api = &api;
            super::for_each_name(&nodes, |name| async move {
                api.docker
                    .delete_node(&name, Some(DeleteNodeOptions { force }))
                    .await
                    .api(api)?;
                Ok(name)
            })
            .await
        }
        NodeCmd::Ls {
            quiet,
            filter,
            format,
        } => ls(cluster, quiet, &filter, format).await,
        NodeCmd::Inspect {
            nodes,
            pretty,
            format,
        } => inspect(cluster, &nodes, pretty, format).await,
        NodeCmd::Exec {
            netns,
            node,
            command,
        } => Ok(::testbed::lifecycle::node_exec(cluster, &node, netns.as_deref(), &command).await?),
        NodeCmd::Kill { node } => fault(cluster, &node, Fault::Kill).await,
        NodeCmd::Start { node } => fault(cluster, &node, Fault::Start).await,
        NodeCmd::Isolate { node } => fault(cluster, &node, Fault::Isolate).await,
        NodeCmd::Heal { node } => fault(cluster, &node, Fault::Heal).await,
    }
}

async fn fault(cluster: &str, node: &str, fault: Fault) -> anyhow::Result<i32> {
    ::testbed::inject(cluster, node, fault).await?;
    let done = match fault {
        Fault::Kill => "killed",
        Fault::Start => "started",
        Fault::Isolate => "isolated",
        Fault::Heal => "healed",
    };
    println!("{node} {done}");
    Ok(0)
}

/// The manager answers for its own node, and that node is the leader; docker marks the
/// node it talks to with `*`.
fn is_self(n: &Node) -> bool {
    n.manager_status
        .as_ref()
        .and_then(|m| m.leader)
        .unwrap_or(false)
}

struct Row {
    id: String,
    is_self: bool,
    hostname: String,
    status: String,
    availability: String,
    manager_status: String,
    engine_version: String,
}

fn row(n: &Node) -> Row {
    let manager_status = match &n.manager_status {
        Some(m) if m.leader == Some(true) => "Leader".to_string(),
        Some(m) => render::pretty(&m.reachability.map(|r| r.to_string()).unwrap_or_default()),
        None => String::new(),
    };
    Row {
        id: n.id.clone().unwrap_or_default(),
        is_self: is_self(n),
        hostname: hostname(n),
        status: render::pretty(
            &n.status
                .as_ref()
                .and_then(|s| s.state)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        availability: render::pretty(
            &n.spec
                .as_ref()
                .and_then(|s| s.availability)
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ),
        manager_status,
        engine_version: n
            .description
            .as_ref()
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.engine_version.clone())
            .unwrap_or_default(),
    }
}

async fn ls(
    cluster: &str,
    quiet: bool,
    filter: &[(String, String)],
    format: Format,
) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    let opts = ListNodesOptions {
        filters: super::filters(filter),
    };
    let mut nodes = api.docker.list_nodes(Some(opts)).await.api(&api)?;
    nodes.sort_by(|a, b| render::natural_cmp(&hostname(a), &hostname(b)));
    let rows: Vec<Row> = nodes.iter().map(row).collect();
    if quiet {
        // Node IDs are never truncated by docker, not even in tables.
        rows.iter().for_each(|r| println!("{}", r.id));
        return Ok(0);
    }
    let mut out = Printer::new(
        &format,
        &[
            "Availability",
            "EngineVersion",
            "Hostname",
            "ID",
            "ManagerStatus",
            "Self",
            "Status",
            "TLSStatus",
        ],
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
    );
    for r in rows {
        out.row(
            vec![
                r.availability.clone().into(),
                r.engine_version.clone().into(),
                r.hostname.clone().into(),
                r.id.clone().into(),
                r.manager_status.clone().into(),
                Value::Bool(r.is_self),
                r.status.clone().into(),
                "Unknown".into(),
            ],
            vec![
                format!("{} {}", r.id, if r.is_self { "*" } else { " " }),
                r.hostname,
                r.status,
                r.availability,
                r.manager_status,
                r.engine_version,
            ],
        )?;
    }
    out.finish()?;
    Ok(0)
}

async fn inspect(
    cluster: &str,
    names: &[String],
    pretty: bool,
    format: Option<Format>,
) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match api.docker.inspect_node(name).await.api(&api) {
            Ok(n) => found.push(n),
            Err(e @ ApiError::Daemon(_)) => errors.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    if !pretty {
        return super::print_inspect(&found, errors, &format.unwrap_or(Format::Json));
    }
    for n in &found {
        print!("{}", pretty_node(n));
    }
    let code = if errors.is_empty() { 0 } else { 1 };
    errors.into_iter().for_each(|e| print_error(&e.into()));
    Ok(code)
}

/// A subset of docker's `node inspect --pretty` template, same labels and tab layout.
fn pretty_node(n: &Node) -> String {
    let r = row(n);
    let mut out = format!("ID:\t\t\t{}\n", r.id);
    out += &format!("Hostname:              \t{}\n", r.hostname);
    if let Some(created) = n.created_at {
        out += &format!("Joined at:             \t{}\n", created.to_rfc3339());
    }
    out += "Status:\n";
    out += &format!(" State:\t\t\t{}\n", r.status);
    out += &format!(" Availability:         \t{}\n", r.availability);
    if let Some(addr) = n.status.as_ref().and_then(|s| s.addr.as_deref()) {
        out += &format!(" Address:\t\t{addr}\n");
    }
    if let Some(m) = &n.manager_status {
        out += "Manager Status:\n";
        out += &format!(" Address:\t\t{}\n", m.addr.clone().unwrap_or_default());
        out += &format!(
            " Raft Status:\t\t{}\n",
            render::pretty(&m.reachability.map(|r| r.to_string()).unwrap_or_default())
        );
        let leader = if m.leader == Some(true) { "Yes" } else { "No" };
        out += &format!(" Leader:\t\t{leader}\n");
    }
    let platform = n.description.as_ref().and_then(|d| d.platform.as_ref());
    out += "Platform:\n";
    out += &format!(
        " Operating System:\t{}\n",
        platform.and_then(|p| p.os.clone()).unwrap_or_default()
    );
    out += &format!(
        " Architecture:\t\t{}\n",
        platform
            .and_then(|p| p.architecture.clone())
            .unwrap_or_default()
    );
    out += &format!("Engine Version:\t\t{}\n", r.engine_version);
    out
}

/// docker's `node update`: read the spec, change what the flags name, send it back at the
/// version read (a concurrent change makes the manager refuse, and the edit is replayed).
/// What `node update` changes.
struct Change<'a> {
    availability: Option<Availability>,
    role: Option<RoleArg>,
    label_add: &'a [String],
    label_rm: &'a [String],
}

impl Change<'_> {
    fn role(role: RoleArg) -> Change<'static> {
        Change {
            availability: None,
            role: Some(role),
            label_add: &[],
            label_rm: &[],
        }
    }
}

async fn update(cluster: &str, name: &str, change: &Change<'_>) -> anyhow::Result<()> {
    for l in change.label_add {
        if l.split_once('=')
            .map_or(l.is_empty(), |(k, _)| k.is_empty())
        {
            anyhow::bail!(
                "invalid label {l:?}: use KEY=VALUE (or KEY), e.g. --label-add zone=east"
            );
        }
    }
    let mut api = Api::connect(cluster)?;
    const ATTEMPTS: usize = 20;
    for attempt in 1..=ATTEMPTS {
        let node = api.docker.inspect_node(name).await.api(&api)?;
        let id = node.id.clone().unwrap_or_else(|| name.to_string());
        let version = node.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = node.spec.unwrap_or_default();
        if let Some(a) = change.availability {
            spec.availability = Some(match a {
                Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
                Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
                Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
            });
        }
        if let Some(r) = change.role {
            spec.role = Some(match r {
                RoleArg::Manager => NodeSpecRoleEnum::MANAGER,
                RoleArg::Worker => NodeSpecRoleEnum::WORKER,
            });
        }
        let labels = spec.labels.get_or_insert_with(Default::default);
        for k in change.label_rm {
            labels.remove(k);
        }
        for l in change.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            labels.insert(k.to_string(), v.to_string());
        }
        let opts = UpdateNodeOptions {
            version: i64::try_from(version).unwrap_or(i64::MAX),
        };
        match api.docker.update_node(&id, spec, opts).await {
            Ok(()) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if attempt < ATTEMPTS => continue,
            // The manager asked went away mid-request (a manager being demoted stops): the
            // next attempt asks whichever answers now.
            Err(
                bollard::errors::Error::HyperResponseError { .. }
                | bollard::errors::Error::HyperLegacyError { .. },
            ) if attempt < ATTEMPTS => {
                api = Api::connect(cluster)?;
                continue;
            }
            Err(e) => return Err(Err::<(), _>(e).api(&api).unwrap_err().into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// How long a promoted manager may take to become reachable, or a demoted one to leave.
const ROLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `node promote` / `node demote`: docker's words, once the managers agree.
async fn change_roles(cluster: &str, nodes: &[String], role: RoleArg) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    let api = &api;
    super::for_each_name(nodes, |name| async move {
        let node = api.docker.inspect_node(&name).await.api(api)?;
        let is_manager = node
            .spec
            .as_ref()
            .and_then(|s| s.role)
            .is_some_and(|r| r == NodeSpecRoleEnum::MANAGER);
        let promote = role == RoleArg::Manager;
        if is_manager == promote {
            return Ok(if promote {
                format!("Node {name} is already a manager.")
            } else {
                format!("Node {name} is already a worker.")
            });
        }
        update(cluster, &name, &Change::role(role)).await?;
        let settled = cluster::wait::until(
            Some(ROLE_TIMEOUT),
            cluster::wait::Pace::every(std::time::Duration::from_millis(200)),
            || async {
                // Only the leader knows how every manager stands: a demoted manager that
                // has not stopped yet answers for itself alone. Asked anew each time: the
                // manager first asked may be the one demoted, and gone.
                let Ok(now) = Api::connect(cluster) else {
                    return cluster::wait::Check::NotYet("no manager answers");
                };
                let Ok(all) = now.docker.list_nodes(None::<ListNodesOptions>).await else {
                    return cluster::wait::Check::NotYet("the managers did not answer");
                };
                let leads = |n: &Node| n.manager_status.as_ref().is_some_and(|m| m.leader == Some(true));
                let Some(n) = all.iter().find(|n| hostname(n) == name || n.id.as_deref() == Some(&name)) else {
                    return cluster::wait::Check::NotYet("the node is not listed");
                };
                let reachable = n.manager_status.as_ref().is_some_and(|m| {
                    m.leader == Some(true)
                        || m.reachability == Some(bollard::models::Reachability::REACHABLE)
                });
                let done = all.iter().any(leads)
                    && if promote { reachable } else { n.manager_status.is_none() };
                if done {
                    cluster::wait::Check::Ready(())
                } else {
                    cluster::wait::Check::NotYet(if promote {
                        "its manager is not reachable yet"
                    } else {
                        "it is still a manager"
                    })
                }
            },
        )
        .await;
        if let Err(w) = settled {
            anyhow::bail!(
                "{name}'s role changed, but {} within {ROLE_TIMEOUT:?}: see its manager's log ({}) and docker node ls",
                w.into_reason(),
                cluster::paths::ClusterPaths::new(cluster).replica_log(&name).display()
            );
        }
        Ok(if promote {
            format!("Node {name} promoted to a manager in the swarm.")
        } else {
            format!("Manager {name} demoted in the swarm.")
        })
    })
    .await
}
