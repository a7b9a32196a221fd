//! The renderers on a made-up cluster at the size the pictures must stay legible at
//! (10 nodes, 30 services), with an encrypted overlay.

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, Network};

use super::model::{Attachment, GNetwork, GNode, GPort, GService, GTask, Topology};
use super::{GraphFormat, render};

fn big() -> Topology {
    let mut t = Topology {
        cluster: "big".into(),
        ..Topology::default()
    };
    for n in 1..=10 {
        t.nodes.push(GNode {
            id: format!("n{n}"),
            hostname: format!("node{n}"),
            addr: format!("192.168.0.{}", 10 + n),
            state: if n == 10 {
                "down".into()
            } else {
                "ready".into()
            },
            availability: "active".into(),
            lb_driver: "nftables".into(),
            engine: "swarmkit".into(),
            mesh: "sandbox".into(),
            tasks: Vec::new(),
            lb_endpoints: Vec::new(),
        });
    }
    t.networks = vec![
        GNetwork {
            name: "ingress".into(),
            vni: "4096".into(),
            subnet: "10.255.0.0/16".into(),
            ingress: true,
            nodes: t.nodes.iter().map(|n| n.hostname.clone()).collect(),
            ..GNetwork::default()
        },
        GNetwork {
            name: "secret".into(),
            vni: "4097".into(),
            subnet: "10.0.0.0/24".into(),
            encrypted: true,
            nodes: t.nodes.iter().map(|n| n.hostname.clone()).collect(),
            ..GNetwork::default()
        },
    ];
    let mut k = 0;
    for s in 1..=30 {
        let name = format!("svc{s}");
        let replicas = s % 3 + 1;
        for slot in 1..=replicas {
            k += 1;
            let node = (k % 10) as usize;
            let hostname = t.nodes[node].hostname.clone();
            t.nodes[node].tasks.push(GTask {
                id: format!("t{k}"),
                name: format!("{name}.{slot}"),
                service: name.clone(),
                node: hostname,
                state: "running".into(),
                addresses: vec![Attachment {
                    network: "secret".into(),
                    addr: format!("10.0.0.{}", 100 + k),
                }],
                container: String::new(),
            });
        }
        t.services.push(GService {
            id: format!("s{s}"),
            name,
            mode: "vip".into(),
            running: replicas,
            desired: Some(replicas as i64),
            vips: vec![Attachment {
                network: "secret".into(),
                addr: format!("10.0.0.{}", 2 + s),
            }],
            ports: if s % 5 == 0 {
                vec![GPort {
                    published: 8000 + s as i64,
                    target: 80,
                    protocol: "tcp".into(),
                    host: false,
                }]
            } else {
                Vec::new()
            },
        });
    }
    t
}

#[test]
fn svg_at_ten_nodes_and_thirty_services_names_everything() {
    let t = big();
    let svg = render(&t, GraphFormat::Svg);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    let words: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .flat_map(str::split_whitespace)
        .collect();
    let names = t
        .nodes
        .iter()
        .map(|n| n.hostname.clone())
        .chain(t.networks.iter().map(|n| n.name.clone()))
        .chain(t.services.iter().map(|s| s.name.clone()))
        .chain(t.tasks().map(|x| x.name.clone()));
    for name in names {
        assert!(words.contains(&name.as_str()), "{name} is drawn");
    }
    // Every column fits in the picture and no two columns overlap.
    let width: f64 = doc
        .root_element()
        .attribute("width")
        .unwrap()
        .parse()
        .unwrap();
    let l = super::svg::layout(&t);
    let mut xs: Vec<(f64, f64)> = l.nodes.values().map(|r| (r.x, r.x + r.w)).collect();
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(xs.windows(2).all(|w| w[0].1 < w[1].0));
    assert!(xs.last().unwrap().1 <= width);
    // The encrypted overlay is marked, the down node too.
    assert!(svg.contains("encrypted (ESP)"));
    assert!(svg.contains("192.168.0.20 — down"));
}

#[test]
fn encrypted_overlays_are_marked_in_every_format() {
    let t = big();
    assert!(render(&t, GraphFormat::Text).contains("encrypted (IPsec ESP)"));
    assert!(render(&t, GraphFormat::Dot).contains("VNI 4097\\n10.0.0.0/24\\nencrypted"));
    assert!(render(&t, GraphFormat::Mermaid).contains("10.0.0.0/24<br>encrypted"));
}

#[test]
fn the_encrypted_option_comes_from_the_network() {
    let net = Network {
        name: Some("secret".into()),
        id: Some("abc".into()),
        driver: Some("overlay".into()),
        options: Some(HashMap::from([
            (
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                "4097".to_string(),
            ),
            ("encrypted".to_string(), String::new()),
        ])),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some("10.0.0.0/24".into()),
                ..IpamConfig::default()
            }]),
            ..Ipam::default()
        }),
        ..Network::default()
    };
    let t = Topology::from_raw(
        "c",
        super::model::Raw {
            nodes: Vec::new(),
            networks: vec![net],
            services: Vec::new(),
            tasks: Vec::new(),
        },
    );
    assert_eq!(t.networks.len(), 1);
    assert!(t.networks[0].encrypted);
    assert_eq!(t.networks[0].vni, "4097");
    assert_eq!(t.networks[0].subnet, "10.0.0.0/24");
}

/// A network that names a node the picture has no column for (the manager's view changed
/// between two reads) is drawn over the nodes it does have, rather than failing.
#[test]
fn svg_draws_a_network_naming_an_unknown_node() {
    let mut t = big();
    t.nodes.truncate(2);
    let svg = render(&t, GraphFormat::Svg);
    assert!(roxmltree::Document::parse(&svg).is_ok());
    assert_eq!(svg.matches(r#"<circle"#).count(), 2 * t.networks.len());
}
