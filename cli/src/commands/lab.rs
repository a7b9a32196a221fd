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
    },
    /// Stop a lab's dockerds and remove everything it made
    Down { name: String },
    /// List labs
    #[command(visible_alias = "list")]
    Ls,
    /// Print shell commands that point docker and swarmkit's doctor, graph, trace and ui at
    /// a lab: `eval "$(swarmkit lab env NAME)"`
    Env { name: String },
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
        } => {
            let start = Instant::now();
            let lab = docker_lab::up(&name, nodes, hostnames.as_deref())?;
            println!(
                "lab {name} up in {:.1}s: {} dockerd(s), manager {}",
                start.elapsed().as_secs_f64(),
                lab.nodes.len(),
                lab.host()
            );
            println!("image {} ({})", lab.image_tag, lab.image);
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
        LabCmd::Env { name } => {
            let lab = docker_lab::load(&name)?;
            println!("export DOCKER_HOST={}", lab.host());
            println!("export SWARMKIT_REACH={}", lab.reach());
            println!(
                "# docker is {}; undo with: unset DOCKER_HOST SWARMKIT_REACH",
                docker_lab::docker_cli().display()
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
