//! `swarmkit lab ...`: a real Docker Swarm on this host (docker.io's dockerds in network
//! namespaces, [`testbed::docker_lab`]), to compare swarmkit with and to point `doctor`,
//! `graph`, `trace` and `ui` at: `eval "$(swarmkit lab env NAME)"` sets DOCKER_HOST and
//! SWARMKIT_REACH, which they read.

use std::time::Instant;

use ::testbed::docker_lab::{self, Lab};
use clap::Subcommand;

use crate::render::Table;

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Bring up a real Docker Swarm (docker.io's dockerd) in network namespaces on this host;
    /// it runs until `swarmkit lab down NAME`
    Up {
        /// Lab name: namespaces NAME-ul, NAME-n1, ...; directory /run/swarm-labs/NAME
        name: String,
        /// Number of dockerds; the first is the manager
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Hostnames PREFIX1, PREFIX2, ... instead of NAME-n1, NAME-n2, ...
        #[arg(long, value_name = "PREFIX")]
        hostnames: Option<String>,
        /// Each dockerd also serves the Engine API over TLS at tcp://ADDR:2376 (--tlsverify),
        /// with a throwaway CA: the client's ca.pem, cert.pem and key.pem in
        /// /run/swarm-labs/NAME/tls (DOCKER_CERT_PATH; see `lab env --tcp`). ADDR is the node's
        /// underlay address, reachable only from inside the lab's namespaces
        /// (`ip netns exec NAME-n1 ...`)
        #[arg(long)]
        tls: bool,
        /// Each node runs an SSH server (dropbear, from dropbear-bin) at ADDR:22 with a host
        /// key of its own, accepting the lab's client key for root (the lab's own
        /// authorized_keys, never the host's), and /run/swarm-labs/NAME/inventory.toml pins
        /// them for `swarmkit doctor --inventory`; reachable only from inside the lab's
        /// namespaces
        #[arg(long)]
        ssh: bool,
    },
    /// Stop a lab's dockerds and remove everything it made
    Down { name: String },
    /// List labs
    #[command(visible_alias = "list")]
    Ls,
    /// Print shell commands that point docker and swarmkit's doctor, graph, trace and ui at
    /// a lab: `eval "$(swarmkit lab env NAME)"`
    Env {
        name: String,
        /// A lab up with --tls: DOCKER_HOST=tcp://ADDR:2376 of its manager, DOCKER_TLS_VERIFY
        /// and DOCKER_CERT_PATH, for a shell inside the lab's namespaces (`ip netns exec
        /// NAME-n1 bash`): the host has no route to the underlay
        #[arg(long)]
        tcp: bool,
    },
    /// Print the ID of the busybox image every node of a lab has (also tagged busybox:lab)
    Image { name: String },
}

pub async fn run(cmd: LabCmd) -> anyhow::Result<i32> {
    // The lab drives ip, docker and dockerd with blocking waits.
    tokio::task::spawn_blocking(move || run_blocking(cmd)).await?
}

fn run_blocking(cmd: LabCmd) -> anyhow::Result<i32> {
    match cmd {
        LabCmd::Up {
            name,
            nodes,
            hostnames,
            tls,
            ssh,
        } => {
            let start = Instant::now();
            let options = docker_lab::Options {
                hostname_prefix: hostnames,
                tls,
                ssh,
            };
            let lab = docker_lab::up_with(&name, nodes, &options)?;
            println!(
                "lab {name} up in {:.1}s: {} dockerd(s), manager {}",
                start.elapsed().as_secs_f64(),
                lab.nodes.len(),
                lab.host()
            );
            println!("image {} ({})", lab.image_tag, lab.image);
            if let (Some(tcp), Some(certs)) = (lab.tcp_host(0), lab.tls_dir()) {
                println!(
                    "TLS: {tcp} (from inside the lab's namespaces), DOCKER_CERT_PATH={}",
                    certs.display()
                );
            }
            if let Some(inventory) = lab.inventory() {
                println!(
                    "SSH: each node at ADDR:22 (from inside the lab's namespaces), inventory {}",
                    inventory.display()
                );
            }
            println!(
                "use it: eval \"$(swarmkit lab env {name})\"; remove it: swarmkit lab down {name}"
            );
            Ok(0)
        }
        LabCmd::Down { name } => {
            if docker_lab::down(&name)? {
                println!("lab {name} removed");
            } else {
                println!("no lab named {name}: nothing to remove");
            }
            Ok(0)
        }
        LabCmd::Ls => {
            let mut table = Table::new(&["NAME", "NODES", "STATUS", "MANAGER"]);
            for (name, lab) in docker_lab::list() {
                let row = match lab {
                    Ok(lab) => vec![name, lab.nodes.len().to_string(), status(&lab), lab.host()],
                    Err(e) => vec![name, "-".into(), format!("broken: {e}"), "-".into()],
                };
                table.row(row);
            }
            table.print()?;
            Ok(0)
        }
        LabCmd::Env { name, tcp } => {
            let lab = docker_lab::load(&name)?;
            if tcp {
                let (Some(host), Some(certs)) = (lab.tcp_host(0), lab.tls_dir()) else {
                    anyhow::bail!(
                        "lab {name} serves no TLS: bring it up with `swarmkit lab up {name} --tls`"
                    );
                };
                println!("export DOCKER_HOST={host}");
                println!("export DOCKER_TLS_VERIFY=1");
                println!("export DOCKER_CERT_PATH={}", certs.display());
                println!("export SWARMKIT_REACH={}", lab.reach());
                println!(
                    "# {host} answers only inside the lab's namespaces: use it in `ip netns exec {} bash`; undo with: unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH SWARMKIT_REACH",
                    lab.nodes[0].netns
                );
                return Ok(0);
            }
            println!("export DOCKER_HOST={}", lab.host());
            if let Some(certs) = lab.tls_dir() {
                // For `docker --tlsverify -H tcp://...` inside the lab; the unix socket
                // above needs no certificate.
                println!("export DOCKER_CERT_PATH={}", certs.display());
            }
            println!("export SWARMKIT_REACH={}", lab.reach());
            if let Some(inventory) = lab.inventory() {
                println!(
                    "# SSH: swarmkit doctor --inventory {} (inside the lab's namespaces: ip netns exec {} ...)",
                    inventory.display(),
                    lab.nodes[0].netns
                );
            }
            println!(
                "# docker is {}; undo with: unset DOCKER_HOST {}SWARMKIT_REACH",
                docker_lab::docker_cli().display(),
                if lab.tls { "DOCKER_CERT_PATH " } else { "" }
            );
            Ok(0)
        }
        LabCmd::Image { name } => {
            let lab = docker_lab::load(&name)?;
            println!("{}", lab.image);
            Ok(0)
        }
    }
}

/// `up`, or how many dockerds are missing.
fn status(lab: &Lab) -> String {
    let running = lab.running();
    if running == lab.nodes.len() && !lab.image.is_empty() {
        "up".into()
    } else if lab.image.is_empty() && running > 0 {
        "coming up".into()
    } else {
        format!(
            "{running} of {} dockerds run (remove it: swarmkit lab down {})",
            lab.nodes.len(),
            lab.name
        )
    }
}
