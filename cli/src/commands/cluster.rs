//! `swarmkit cluster ...`: bring local clusters up and down, and hand out their trust (join
//! tokens, the root CA, client certificates; see `trust`).

use std::time::Instant;

use ::cluster::paths::ClusterPaths;
use ::testbed::Backend;
use ::testbed::lifecycle::{self, UpOptions};
use clap::Subcommand;

use crate::duration;
use crate::flags::{self, LbDriver};
use crate::render::{self, Table};

use super::trust::{self, Role};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Create and start a cluster: a manager and agents on their own nodes
    Up {
        /// Cluster name (defaults to the global --cluster)
        #[arg(long)]
        name: Option<String>,
        /// Number of nodes; the first one runs the manager
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Managers replicating the cluster's state through Raft, on the first nodes (as
        /// docker's manager nodes; 3 or 5 survive the loss of 1 or 2); netns backend
        #[arg(long, default_value_t = 1, value_name = "N")]
        managers: usize,
        /// How nodes are built
        #[arg(long, default_value = "netns", value_parser = flags::backend_parser(flags::all_backends()))]
        backend: Backend,
        /// Service load balancer (default: ipvs when the kernel has it, else nftables)
        #[arg(long, value_enum)]
        lb: Option<LbDriver>,
        /// Hosts for --backend ssh: a TOML file of [[host]] address, user, key, host_key
        #[arg(long)]
        inventory: Option<std::path::PathBuf>,
        /// UDP port of every overlay network's VXLAN traffic, as docker swarm init's
        /// (1024-49151; default 4789)
        #[arg(long)]
        data_path_port: Option<u16>,
        /// How often encrypted networks get a new key: seconds, or with s/m/h (default 12h)
        #[arg(long, value_parser = duration::interval)]
        key_rotation: Option<std::time::Duration>,
        /// How often agents report to the manager, as docker swarm init's --dispatcher-heartbeat
        /// (e.g. 500ms, 2s; default 500ms)
        #[arg(long, value_parser = duration::go, value_name = "DURATION")]
        heartbeat_period: Option<std::time::Duration>,
        /// Heartbeats a node may miss before it is marked down and its tasks move (default 3)
        #[arg(long, value_name = "N")]
        heartbeat_misses: Option<u32>,
        /// How long node certificates live, as docker swarm init's (e.g. 2160h, 30m; at least
        /// 10s); agents renew them between half and four fifths of that
        #[arg(long, value_parser = duration::go, value_name = "DURATION")]
        cert_expiry: Option<std::time::Duration>,
        /// A registry reached over plain HTTP, as dockerd's --insecure-registry (repeatable)
        #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = insecure_registry)]
        insecure_registries: Vec<String>,
        /// A certs.d-shaped directory (HOST:PORT/ca.crt) of the CAs registries are trusted
        /// under, as dockerd's /etc/docker/certs.d; copied to nodes on other machines
        #[arg(long, value_name = "DIR", value_parser = certs_dir)]
        registry_certs: Option<std::path::PathBuf>,
    },
    /// List clusters
    #[command(visible_alias = "list")]
    Ls,
    /// Rebuild a cluster of several managers that lost its quorum from one surviving
    /// manager (docker's swarm init --force-new-cluster): it becomes the only manager, with
    /// everything its store holds; promote others again afterwards
    Recover {
        /// Required: the others are dropped for good
        #[arg(long, required = true)]
        force_new_cluster: bool,
        /// The manager node to recover from (default: the first whose node is not killed)
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
    },
    /// Stop a cluster and remove everything it created
    Down {
        /// Cluster name (defaults to the global --cluster)
        name: Option<String>,
    },
    /// Remove what dead clusters left behind (namespaces, processes, QEMU guests, run and
    /// state directories); clusters that run are left alone
    Prune {
        /// Only clusters whose name starts with this
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print shell commands that point docker clients at a cluster's manager
    Env {
        /// Cluster name (defaults to the global --cluster)
        name: Option<String>,
        /// Point them at the manager's mutual-TLS listener instead of its unix socket, with a
        /// new client certificate (run it again after `cluster ca --rotate`)
        #[arg(long)]
        tls: bool,
        /// Point them at one node's own socket instead: `docker ps`, `inspect`, `logs` and
        /// `system df` for the tasks on that node, as on a Swarm node
        #[arg(long, conflicts_with = "tls")]
        node: Option<String>,
    },
    /// Print a join token, or replace it, as docker swarm join-token does
    JoinToken {
        /// Whose token: the one that admits workers or the one that admits managers
        #[arg(value_enum)]
        role: Role,
        /// Cluster name (defaults to the global --cluster)
        name: Option<String>,
        /// Replace the token; the old one no longer admits anyone
        #[arg(long)]
        rotate: bool,
        /// Only print the token
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the cluster's root CA certificate, or replace the root, as docker swarm ca does
    Ca {
        /// Cluster name (defaults to the global --cluster)
        name: Option<String>,
        /// Replace the root CA, then wait until every node has renewed onto it
        #[arg(long)]
        rotate: bool,
        /// Do not draw the wait's progress
        #[arg(short, long)]
        quiet: bool,
        /// Start the rotation and return without waiting for it
        #[arg(short, long, requires = "rotate")]
        detach: bool,
    },
}

pub async fn run(cluster: &str, cmd: ClusterCmd) -> anyhow::Result<i32> {
    match cmd {
        ClusterCmd::Up {
            name,
            nodes,
            managers,
            backend,
            lb,
            inventory,
            data_path_port,
            key_rotation,
            heartbeat_period,
            heartbeat_misses,
            cert_expiry,
            insecure_registries,
            registry_certs,
        } => {
            let name = name.unwrap_or_else(|| cluster.to_string());
            let opts = UpOptions {
                name,
                nodes,
                managers,
                backend,
                lb: lb.map(Into::into),
                inventory,
                data_path_port,
                key_rotation,
                heartbeat: heartbeat_period,
                heartbeat_misses,
                cert_expiry,
                registry: lifecycle::RegistrySettings {
                    insecure: insecure_registries,
                    certs: registry_certs,
                },
            };
            let started = Instant::now();
            let info = lifecycle::up(&opts).await?;
            println!(
                "cluster {:?} up: {} nodes in {:.2}s",
                info.name,
                info.nodes.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        ClusterCmd::Ls => {
            let mut clusters = lifecycle::list()?;
            clusters.sort_by(|a, b| render::natural_cmp(&a.name, &b.name));
            let mut table = Table::new(&["NAME", "BACKEND", "NODES", "STATUS", "CREATED"]);
            for c in clusters {
                table.row(vec![
                    c.name,
                    c.backend.to_string(),
                    c.nodes.len().to_string(),
                    if c.running { "running" } else { "stopped" }.to_string(),
                    format!("{} ago", render::human_duration(render::since(c.created))),
                ]);
            }
            table.print()?;
            Ok(0)
        }
        ClusterCmd::Recover { from, .. } => {
            let node = testbed::managers::recover(cluster, from.as_deref()).await?;
            println!(
                "cluster {cluster:?} recovered from {node}: it is the only manager now; promote \
                 others with swarmkit node promote NODE"
            );
            Ok(0)
        }
        ClusterCmd::Down { name } => {
            let name = name.unwrap_or_else(|| cluster.to_string());
            lifecycle::down(&name).await?;
            println!("cluster {name:?} down");
            Ok(0)
        }
        ClusterCmd::Prune { prefix } => {
            let pruned = ::testbed::lifecycle::prune::prune(&prefix).await;
            for name in &pruned.removed {
                println!("removed {name}");
            }
            for name in &pruned.running {
                println!("left {name} (running)");
            }
            for (name, why) in &pruned.failed {
                eprintln!("could not remove {name}: {why}");
            }
            if pruned.removed.is_empty() && pruned.failed.is_empty() {
                println!("nothing to prune");
            }
            Ok(if pruned.failed.is_empty() { 0 } else { 1 })
        }
        ClusterCmd::Env { name, tls, node } => {
            let name = name.unwrap_or_else(|| cluster.to_string());
            // The line is meant for `eval`; a validated name cannot smuggle shell syntax.
            ::cluster::paths::validate_cluster_name(&name).map_err(anyhow::Error::msg)?;
            if tls {
                return trust::env_tls(&name).await;
            }
            if let Some(node) = node {
                ::cluster::names::validate(::cluster::names::Named::Node, &node)
                    .map_err(anyhow::Error::msg)?;
                let socket = ClusterPaths::new(&name).node_docker_socket(&node);
                if !socket.exists() {
                    anyhow::bail!(
                        "cluster {name} has no node {node} (no {}): see swarmkit node ls",
                        socket.display()
                    );
                }
                println!("export DOCKER_HOST=unix://{}", socket.display());
                return Ok(0);
            }
            println!(
                "export DOCKER_HOST={}",
                ClusterPaths::new(&name).docker_host()
            );
            Ok(0)
        }
        ClusterCmd::JoinToken {
            role,
            name,
            rotate,
            quiet,
        } => {
            let name = name.unwrap_or_else(|| cluster.to_string());
            trust::join_token(&name, role, rotate, quiet).await
        }
        ClusterCmd::Ca {
            name,
            rotate,
            quiet,
            detach,
        } => {
            let name = name.unwrap_or_else(|| cluster.to_string());
            trust::ca(&name, rotate, quiet, detach).await
        }
    }
}

/// `--insecure-registry`: one registry, as the comma-separated list in the agents'
/// environment carries it.
fn insecure_registry(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.contains(',') || s.contains(char::is_whitespace) || s.contains('/') {
        return Err(format!(
            "{s:?} is not a registry: give one HOST:PORT (e.g. 192.168.0.1:5000) per --insecure-registry"
        ));
    }
    Ok(s.to_string())
}

/// `--registry-certs`: an existing directory, made absolute (the manager and agents start
/// elsewhere).
fn certs_dir(s: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::fs::canonicalize(s).map_err(|e| format!("{s}: {e}"))?;
    if !dir.is_dir() {
        return Err(format!(
            "{s} is not a directory: give one holding HOST:PORT/ca.crt for each registry"
        ));
    }
    Ok(dir)
}
