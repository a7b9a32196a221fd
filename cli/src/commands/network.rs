//! `swarmkit network ...`

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use clap::{Args, Subcommand};

use crate::api::{Api, ApiError, ApiResult};
use crate::render;
use crate::template::{Format, Printer};

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls {
        /// Only display network IDs
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate the output
        #[arg(long)]
        no_trunc: bool,
        /// Filter output based on conditions provided (KEY=VALUE), e.g. label=com.docker.stack.namespace=demo
        #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = super::parse_filter)]
        filter: Vec<(String, String)>,
        /// Output format
        #[arg(long, default_value = "table", value_parser = crate::template::parse)]
        format: Format,
    },
    /// Display detailed information on one or more networks
    Inspect {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
        /// Format the output using the given Go template
        #[arg(short, long, value_parser = crate::template::parse)]
        format: Option<Format>,
    },
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
    },
    /// Give an encrypted network a new data-path key now; returns once every node sends with it
    RotateKey {
        #[arg(value_name = "NETWORK")]
        network: String,
    },
}

/// How long `rotate-key` waits for every node to take the new key.
const ROTATE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

async fn rotate_key(cluster: &str, network: &str) -> anyhow::Result<i32> {
    use ::cluster::client::{ClientError, ManagerClient};
    use ::cluster::manager::KeyStatus;
    let client = ManagerClient::of_cluster(&::cluster::paths::ClusterPaths::new(cluster));
    let base = format!("/swarmkit/v1/networks/{network}");
    let begun: Result<KeyStatus, _> = client
        .post(&format!("{base}/rotate-key"), &serde_json::json!({}))
        .await;
    let begun = match begun {
        Ok(s) => s,
        Err(ClientError::Status { message, .. }) => {
            eprintln!("Error response from daemon: {message}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let deadline = std::time::Instant::now() + ROTATE_DEADLINE;
    loop {
        let s: KeyStatus = client.get(&format!("{base}/keys")).await?;
        if !s.rotating && s.generation >= begun.generation {
            println!(
                "{}: new key in use on every node (rotation {})",
                s.network, s.generation
            );
            return Ok(0);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "network {}: the new key was handed out but not every node applied it within \
                 {ROTATE_DEADLINE:?}; see `swarmkit node ls` for nodes that are down (the rotation \
                 completes once they are back or removed)",
                s.network
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Driver to manage the network (swarmkit networks are overlays)
    #[arg(short, long, default_value = "overlay")]
    driver: String,
    /// Subnet in CIDR format, e.g. 10.0.9.0/24
    #[arg(long)]
    subnet: Option<String>,
    /// IPv4 gateway for the subnet
    #[arg(long, requires = "subnet")]
    gateway: Option<String>,
    /// Enable manual container attachment
    #[arg(long)]
    attachable: bool,
    /// Create the swarm routing-mesh network
    #[arg(long)]
    ingress: bool,
    /// Restrict external access to the network
    #[arg(long)]
    internal: bool,
    /// Driver specific options (KEY=VALUE)
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
    /// Network metadata (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    name: String,
}

pub async fn run(cluster: &str, cmd: NetworkCmd) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    match cmd {
        NetworkCmd::Create(args) => {
            let created = api
                .docker
                .create_network(create_request(args))
                .await
                .api(&api)?;
            println!("{}", created.id);
            Ok(0)
        }
        NetworkCmd::Ls {
            quiet,
            no_trunc,
            filter,
            format,
        } => {
            let opts = bollard::query_parameters::ListNetworksOptions {
                filters: super::filters(&filter),
            };
            let mut networks = api.docker.list_networks(Some(opts)).await.api(&api)?;
            networks.sort_by(|a, b| {
                render::natural_cmp(
                    a.name.as_deref().unwrap_or_default(),
                    b.name.as_deref().unwrap_or_default(),
                )
            });
            let id = |full: Option<String>| {
                let full = full.unwrap_or_default();
                if no_trunc {
                    full
                } else {
                    render::truncate_id(&full)
                }
            };
            if quiet {
                networks.into_iter().for_each(|n| println!("{}", id(n.id)));
                return Ok(0);
            }
            let mut out = Printer::new(
                &format,
                &[
                    "CreatedAt",
                    "Driver",
                    "ID",
                    "IPv4",
                    "IPv6",
                    "Internal",
                    "Labels",
                    "Name",
                    "Scope",
                ],
                &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
            );
            for n in networks {
                let (nid, name) = (id(n.id.clone()), n.name.clone().unwrap_or_default());
                let driver = n.driver.clone().unwrap_or_default();
                let scope = n.scope.clone().unwrap_or_default();
                out.row(
                    vec![
                        n.created.map(|c| c.to_string()).unwrap_or_default().into(),
                        driver.clone().into(),
                        nid.clone().into(),
                        "true".into(),
                        n.enable_ipv6.unwrap_or(false).to_string().into(),
                        n.internal.unwrap_or(false).to_string().into(),
                        labels_text(n.labels.as_ref()).into(),
                        name.clone().into(),
                        scope.clone().into(),
                    ],
                    vec![nid, name, driver, scope],
                )?;
            }
            out.finish()?;
            Ok(0)
        }
        NetworkCmd::Inspect { networks, format } => {
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for name in &networks {
                match api.docker.inspect_network(name, None).await.api(&api) {
                    Ok(n) => found.push(n),
                    Err(e @ ApiError::Daemon(_)) => errors.push(e),
                    Err(e) => return Err(e.into()),
                }
            }
            super::print_inspect(&found, errors, &format.unwrap_or(Format::Json))
        }
        NetworkCmd::RotateKey { network } => rotate_key(cluster, &network).await,
        NetworkCmd::Rm { networks } => {
            let api = &api;
            super::for_each_name(&networks, |name| async move {
                api.docker.remove_network(&name).await.api(api)?;
                Ok(name)
            })
            .await
        }
    }
}

fn labels_text(labels: Option<&HashMap<String, String>>) -> String {
    let mut pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// docker's map options: `k=v`, or a bare `k` meaning an empty value.
fn key_values(items: Vec<String>) -> Option<HashMap<String, String>> {
    if items.is_empty() {
        return None;
    }
    Some(
        items
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect(),
    )
}

fn create_request(args: CreateArgs) -> NetworkCreateRequest {
    let config = args.subnet.map(|subnet| IpamConfig {
        subnet: Some(subnet),
        gateway: args.gateway,
        ..Default::default()
    });
    NetworkCreateRequest {
        name: args.name,
        driver: Some(args.driver),
        attachable: args.attachable.then_some(true),
        ingress: args.ingress.then_some(true),
        internal: args.internal.then_some(true),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(config.into_iter().collect()),
            options: None,
        }),
        options: key_values(args.opts),
        labels: key_values(args.labels),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: CreateArgs,
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let t = T::try_parse_from([
            "t",
            "--subnet",
            "10.0.9.0/24",
            "--gateway",
            "10.0.9.99",
            "--attachable",
            "-o",
            "encrypted",
            "--opt",
            "com.docker.network.driver.mtu=1400",
            "my-net",
        ]);
        let req = create_request(t.map(|t| t.args).expect("parses"));
        assert_eq!(req.name, "my-net");
        assert_eq!(req.driver.as_deref(), Some("overlay"));
        assert_eq!(req.attachable, Some(true));
        let cfg = &req.ipam.and_then(|i| i.config).unwrap_or_default()[0];
        assert_eq!(cfg.subnet.as_deref(), Some("10.0.9.0/24"));
        assert_eq!(cfg.gateway.as_deref(), Some("10.0.9.99"));
        let opts = req.options.unwrap_or_default();
        assert_eq!(opts.get("encrypted").map(String::as_str), Some(""));
        assert_eq!(
            opts.get("com.docker.network.driver.mtu")
                .map(String::as_str),
            Some("1400")
        );
    }

    #[test]
    fn gateway_needs_subnet() {
        assert!(T::try_parse_from(["t", "--gateway", "10.0.0.1", "n"]).is_err());
    }
}
