//! `swarmkit graph` and `swarmkit trace` against a live cluster built like the routing
//! walkthrough's: the pictures name everything the manager knows, and a trace names the
//! replica that really answered.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, es_names};

/// The routing walkthrough's cluster: mydrupal with psql and drupal (published :80), and
/// three elasticsearch replicas published on :9200.
fn routing_cluster(tag: &str) -> Cluster {
    let c = Cluster::up(tag, 3);
    c.sk(&["network", "create", "--driver", "overlay", "mydrupal"])
        .ok();
    for args in [
        &[
            "--name",
            "psql",
            "--network",
            "mydrupal",
            "-e",
            "POSTGRES_PASSWORD=mypass",
            "postgres",
        ][..],
        &[
            "--name",
            "drupal",
            "--network",
            "mydrupal",
            "-p",
            "80:80",
            "drupal",
        ][..],
        &[
            "--name",
            "search",
            "--replicas",
            "3",
            "-p",
            "9200:9200",
            "elasticsearch:2",
        ][..],
    ] {
        let mut all = vec!["service", "create", "--quiet"];
        all.extend_from_slice(args);
        c.sk(&all).ok();
    }
    c
}

/// Which search slot lands on which node, and so which ingress address it gets, is the
/// scheduler's choice; everything else is deterministic.
fn normalise(s: &str) -> String {
    let slot = regex::Regex::new(r"search\.\d+").expect("regex");
    let addr = regex::Regex::new(r"10\.255\.0\.\d+").expect("regex");
    s.lines()
        .map(|l| {
            if slot.is_match(l) && !l.contains("svc:") {
                addr.replace_all(&slot.replace_all(l, "search.N"), "10.255.0.X")
                    .into_owned()
            } else {
                l.to_string()
            }
        })
        .map(|l| l.replace(&cluster_name_marker(), "<cluster>"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cluster_name_marker() -> String {
    common::unique_name("graph")
}

#[test]
fn graph_draws_the_routing_cluster() {
    require_root!();
    let c = routing_cluster("graph");
    let text = c.sk(&["graph"]).ok().stdout;
    insta::assert_snapshot!("routing_text", normalise(&text));
    let dot = c.sk(&["graph", "--format", "dot"]).ok().stdout;
    insta::assert_snapshot!("routing_dot", normalise(&dot));
    let mermaid = c.sk(&["graph", "--format", "mermaid"]).ok().stdout;
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");

    let dir = std::env::temp_dir().join(format!("sk-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("routing.svg");
    c.sk(&[
        "graph",
        "--format",
        "svg",
        "-o",
        file.to_str().expect("utf-8"),
    ])
    .ok();
    let svg = std::fs::read_to_string(&file).expect("graph wrote the file");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    let named = |name: &str| {
        texts
            .iter()
            .any(|t| t.split_whitespace().any(|w| w == name))
    };
    for name in [
        "node1", "node2", "node3", "ingress", "mydrupal", "psql", "drupal", "search", "psql.1",
        "drupal.1", "search.1", "search.2", "search.3",
    ] {
        assert!(named(name), "the SVG names {name}: {texts:?}");
    }
    // A published port enters at every node; encrypted overlays would be dashed.
    assert_eq!(svg.matches("published :80 :9200").count(), 3, "{svg}");
    let _ = std::fs::remove_dir_all(&dir);

    // Bad input: a clear error, non-zero, nothing written.
    let bad = c.sk(&["graph", "--format", "svg", "-o", "/nonexistent-dir/x.svg"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("does its directory exist"),
        "{}",
        bad.stderr
    );
}

/// The elasticsearch name each replica answers with, asked of the replica itself.
fn replica_names(c: &Cluster, service: &str, port: u16, replicas: u64) -> BTreeMap<String, String> {
    (1..=replicas)
        .map(|slot| {
            let task = format!("{service}.{slot}");
            let out = c
                .task(&task, &format!("curl -s --max-time 5 localhost:{port}"))
                .ok();
            let name = es_names(&out.stdout).pop().expect("the replica answers");
            (task, name)
        })
        .collect()
}

/// `replica: search.2 on node1 (...)` -> `search.2`.
fn traced_replica(trace: &str) -> String {
    trace
        .lines()
        .find_map(|l| l.strip_prefix("replica: "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("the trace names a replica:\n{trace}"))
        .to_string()
}

/// `search` (one replica per node, published on :9200) and `client`, both on `esnet`.
fn search_and_client(c: &Cluster, replicas: u64) {
    c.sk(&["network", "create", "--driver", "overlay", "esnet"])
        .ok();
    c.service_create(&[
        "--quiet",
        "--name",
        "search",
        "--replicas",
        &replicas.to_string(),
        "--network",
        "esnet",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();
    c.service_create(&[
        "--quiet",
        "--name",
        "client",
        "--network",
        "esnet",
        "whoami",
    ])
    .ok();
}

/// The routing mesh from `node`, and a task's VIP connection, several times each: the trace
/// must name the replica whose name came back on that very connection, and show every hop
/// to it: the node's DNAT, the load balancer's choice, the VXLAN hop with its VNI and remote
/// VTEP (from the FDB) for a replica elsewhere, and the replica's own entry accepting it.
fn check_traces(c: &Cluster, node: &str, replicas: u64) {
    let names = replica_names(c, "search", 9200, replicas);
    assert_eq!(
        names
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        replicas as usize,
        "each replica has its own name: {names:?}"
    );
    let mut remote = 0;
    for (i, (from, via, target)) in [
        ("--node", node, "localhost:9200"),
        ("--task", "client.1", "search:9200"),
    ]
    .iter()
    .flat_map(|p| std::iter::repeat_n(*p, 4))
    .enumerate()
    {
        let sport = 42000 + i as u16;
        let curl = format!("curl -s --max-time 5 --local-port {sport} {target}");
        let answer = if from == "--node" {
            c.node(via, &curl).ok()
        } else {
            c.task(via, &curl).ok()
        };
        let answered = es_names(&answer.stdout)
            .pop()
            .expect("an elasticsearch answer");
        let trace = c
            .sk(&["trace", from, via, "--sport", &sport.to_string(), target])
            .ok()
            .stdout;
        let replica = traced_replica(&trace);
        assert_eq!(
            names.get(&replica),
            Some(&answered),
            "connection {i} ({from} {via}) was answered by {answered:?}, the trace says {replica}:\n{trace}"
        );
        if from == "--task" {
            assert!(trace.contains("DNS search -> "), "{trace}");
            assert!(trace.contains("VIP of service search"), "{trace}");
        } else {
            assert!(trace.contains("DNAT 127.0.0.1:"), "{trace}");
            assert!(trace.contains("ingress_sbox"), "{trace}");
        }
        assert!(trace.contains("load balancer chose"), "{trace}");
        assert!(
            trace.contains(&format!("{replica} (")) && trace.contains("accepted "),
            "the replica's own entry ends the trace:\n{trace}"
        );
        // Every replica elsewhere is reached over VXLAN with the right VNI and VTEP.
        if !trace.contains("local bridge port") {
            assert!(trace.contains("VXLAN vx-"), "{trace}");
            assert!(trace.contains(" VNI 4"), "{trace}");
            assert!(trace.contains("at remote VTEP 192.168.0."), "{trace}");
            remote += 1;
        }
    }
    // Round robin over a replica per node: some connections went to another node.
    assert!(remote > 0, "no connection crossed VXLAN");
}

#[test]
fn trace_names_the_replica_that_answered() {
    require_root!();
    let c = Cluster::up("trace", 3);
    search_and_client(&c, 3);
    check_traces(&c, "node3", 3);

    // Without --sport, trace makes its own connection; as SVG it draws the path.
    let svg = c
        .sk(&[
            "trace",
            "--node",
            "node1",
            "--format",
            "svg",
            "localhost:9200",
        ])
        .ok()
        .stdout;
    let doc = roxmltree::Document::parse(&svg).expect("the trace SVG is well-formed XML");
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("trace")),
        "{svg}"
    );

    let bad = c.sk(&["trace", "--node", "node9", "localhost:9200"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("no node \"node9\""), "{}", bad.stderr);
    let bad = c.sk(&["trace", "--node", "node1", "localhost"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("HOST:PORT"), "{}", bad.stderr);
}

/// The same traces on QEMU guests, where the node's own IPVS balances the mesh (the
/// connection hairpins through the ingress sandbox and back) and the guests' tools read the
/// FDB and each task's conntrack table. Skipped (with the reason) where QEMU is not here.
#[test]
fn trace_on_qemu_guests_shows_every_hop() {
    testkit::skip_unless!(testkit::needs_qemu());
    let c = Cluster::up_with("qtrace", 2, &["--backend", "qemu"]);
    search_and_client(&c, 2);
    check_traces(&c, "node1", 2);
    let trace = c
        .sk(&["trace", "--node", "node2", "localhost:9200"])
        .ok()
        .stdout;
    assert!(
        trace.contains("hairpin ") && trace.contains("masquerades "),
        "the guest's mesh: node IPVS behind the sandbox's hairpin:\n{trace}"
    );
}
