//! Service discovery, VIPs and the ingress routing mesh, checked with real clients (curl,
//! dig, getent) against real servers in tasks.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Cluster, es_names};

/// `n` answers as a rotation: exactly `distinct` names, each equally often, repeating in the
/// same order, never the same twice in a row.
fn assert_round_robin(names: &[String], distinct: usize, context: &str) {
    let set: BTreeSet<&String> = names.iter().collect();
    assert_eq!(set.len(), distinct, "{context}: {names:?}");
    for (i, n) in names.iter().enumerate() {
        if i >= distinct {
            assert_eq!(
                n,
                &names[i - distinct],
                "{context}: not a rotation: {names:?}"
            );
        }
        if i > 0 {
            assert_ne!(
                n,
                &names[i - 1],
                "{context}: same replica twice in a row: {names:?}"
            );
        }
    }
}

fn curls(c: &Cluster, node: &str, url: &str, n: usize) -> Vec<String> {
    let out = c
        .node(
            node,
            &format!("for i in $(seq {n}); do curl -s --max-time 5 {url}; done"),
        )
        .ok();
    es_names(&out.stdout)
}

#[test]
fn routing_mesh_answers_round_robin_on_every_node() {
    require_root!();
    let c = Cluster::up("mesh", 3);
    // Three replicas on two nodes, so node3 runs none and still answers.
    c.service_create(&[
        "--name",
        "search",
        "--replicas",
        "3",
        "-p",
        "9200:9200",
        "--constraint",
        "node.hostname!=node3",
        "elasticsearch:2",
    ])
    .ok();
    let nodes: BTreeSet<String> = c
        .tasks("search")
        .iter()
        .map(|t| t["Node"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["node1".to_string(), "node2".to_string()])
    );
    let ls = c.sk(&["service", "ls"]).ok().stdout;
    assert!(ls.contains("*:9200->9200/tcp"), "{ls}");
    // The mesh's load balancer lives in each node's ingress sandbox, as in Docker; node exec
    // can look inside it. Every task's ingress address is a backend there, even on node3.
    let ingress_addrs: Vec<String> = c
        .api_tasks("search")
        .iter()
        .filter(|t| t["DesiredState"] == "running")
        .filter_map(|t| {
            let a = t["NetworksAttachments"][0]["Addresses"][0].as_str()?;
            Some(a.split('/').next()?.to_string())
        })
        .collect();
    assert_eq!(ingress_addrs.len(), 3, "{ingress_addrs:?}");
    let rules = c
        .sk(&[
            "node",
            "exec",
            "--netns",
            "ingress_sbox",
            "node3",
            "--",
            "nft",
            "list",
            "ruleset",
        ])
        .ok()
        .stdout;
    for a in &ingress_addrs {
        assert!(
            rules.contains(a.as_str()),
            "{a} not in node3's ingress sandbox:\n{rules}"
        );
    }
    for node in ["node1", "node2", "node3"] {
        assert_round_robin(&curls(&c, node, "localhost:9200", 6), 3, node);
        // The node's own underlay address answers too.
        let addr = format!("192.168.0.{}:9200", 10 + node[4..].parse::<u8>().unwrap());
        assert_eq!(curls(&c, node, &addr, 3).len(), 3, "{node} via {addr}");
    }
    // And another node's address, across the underlay.
    assert_round_robin(
        &curls(&c, "node3", "192.168.0.11:9200", 6),
        3,
        "node3 -> node1",
    );
}

#[test]
fn vip_round_robin_and_dns_from_a_task() {
    require_root!();
    let c = Cluster::up("vip", 3);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.sk(&["network", "create", "--driver", "overlay", "other"])
        .ok();
    c.service_create(&[
        "--name",
        "search",
        "--network",
        "app",
        "--replicas",
        "3",
        "elasticsearch:2",
    ])
    .ok();
    c.service_create(&[
        "--name",
        "rr",
        "--network",
        "app",
        "--replicas",
        "3",
        "--endpoint-mode",
        "dnsrr",
        "whoami",
    ])
    .ok();
    c.service_create(&["--name", "client", "--network", "app", "whoami"])
        .ok();
    c.service_create(&["--name", "stranger", "--network", "other", "whoami"])
        .ok();

    let out = c
        .task(
            "client.1",
            "for i in 1 2 3 4 5 6; do curl -s --max-time 5 search:9200; done",
        )
        .ok();
    assert_round_robin(&es_names(&out.stdout), 3, "client.1 -> search VIP");

    // The service name is its VIP on the shared network, as `service inspect` says.
    let inspect: serde_json::Value =
        serde_json::from_str(&c.sk(&["service", "inspect", "search"]).ok().stdout).unwrap();
    let vip = inspect[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .unwrap();
    let vip = vip.split('/').next().unwrap();
    assert_eq!(
        c.task("client.1", "dig +short search").ok().stdout.trim(),
        vip
    );
    assert!(
        c.task("client.1", "getent hosts search")
            .ok()
            .stdout
            .starts_with(vip)
    );

    // tasks.NAME: every task address.
    let tasks: BTreeSet<String> = c
        .task("client.1", "dig +short tasks.search")
        .ok()
        .stdout
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    let direct: BTreeSet<String> = (1..=3)
        .map(|i| {
            c.task(&format!("search.{i}"), "hostname -i")
                .ok()
                .stdout
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(tasks, direct);

    // dnsrr: no VIP; the name answers with the task addresses in rotating order.
    let first = c.task("client.1", "dig +short rr").ok().stdout;
    let second = c.task("client.1", "dig +short rr").ok().stdout;
    assert_eq!(first.lines().count(), 3, "{first}");
    assert_ne!(first, second, "dnsrr answers do not rotate");
    let inspect: serde_json::Value =
        serde_json::from_str(&c.sk(&["service", "inspect", "rr"]).ok().stdout).unwrap();
    assert!(
        inspect[0]["Endpoint"]["VirtualIPs"].is_null(),
        "dnsrr has no VIP"
    );

    // Answers are scoped to shared networks.
    assert_ne!(c.task("stranger.1", "getent hosts search").code, 0);
    assert!(
        c.task("stranger.1", "dig +short search")
            .ok()
            .stdout
            .trim()
            .is_empty()
    );
}

#[test]
fn scaling_changes_the_answering_set_to_exactly_the_live_replicas() {
    require_root!();
    let c = Cluster::up("scale", 3);
    c.service_create(&[
        "--name",
        "search",
        "--replicas",
        "3",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();
    for replicas in [3usize, 5, 1] {
        c.sk(&["service", "scale", &format!("search={replicas}")])
            .ok();
        let names = curls(&c, "node1", "localhost:9200", 2 * replicas);
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            distinct.len(),
            replicas,
            "after scaling to {replicas}: {names:?}"
        );
        let mut counts: HashMap<&String, usize> = HashMap::new();
        names
            .iter()
            .for_each(|n| *counts.entry(n).or_default() += 1);
        assert!(
            counts.values().all(|n| *n == 2),
            "uneven after scaling to {replicas}: {names:?}"
        );
    }
    let ls = c.sk(&["service", "ls"]).ok().stdout;
    assert!(ls.contains(" 1/1 "), "{ls}");
}

#[test]
fn ports_without_a_number_come_from_the_dynamic_range() {
    require_root!();
    let c = Cluster::up("dynport", 2);
    c.service_create(&["--name", "web", "-p", "80", "drupal"])
        .ok();
    let inspect: serde_json::Value =
        serde_json::from_str(&c.sk(&["service", "inspect", "web"]).ok().stdout).unwrap();
    let published = inspect[0]["Endpoint"]["Ports"][0]["PublishedPort"]
        .as_u64()
        .unwrap();
    assert!((30000..=32767).contains(&published), "{published}");
    let out = c
        .node("node2", &format!("curl -sI localhost:{published}"))
        .ok();
    assert!(
        out.stdout.starts_with("HTTP/1.1 302 Found"),
        "{}",
        out.stdout
    );
}

#[test]
fn node_inspect_names_the_load_balancer_driver() {
    require_root!();
    let c = Cluster::up("lbdriver", 1);
    let out = c.sk(&["node", "inspect", "node1"]).ok().stdout;
    let expected = if std::path::Path::new("/proc/net/ip_vs").exists() {
        "ipvs"
    } else {
        "nftables"
    };
    assert!(
        out.contains(&format!("\"swarmkit.lb-driver\": \"{expected}\"")),
        "{out}"
    );
}

#[test]
fn host_mode_publishes_on_the_tasks_node_only_and_keeps_the_client_address() {
    require_root!();
    let c = Cluster::up("hostmode", 3);
    c.service_create(&[
        "--name",
        "web",
        "--replicas",
        "2",
        "--publish",
        "published=8080,target=80,mode=host",
        "whoami",
    ])
    .ok();
    let ps = c.sk(&["service", "ps", "web"]).ok().stdout;
    assert_eq!(ps.matches("*:8080->80/tcp").count(), 2, "{ps}");
    // node1 runs web.1: from node3 its address answers, and sees node3's own address.
    let out = c
        .node("node3", "curl -s --max-time 5 192.168.0.11:8080")
        .ok()
        .stdout;
    assert!(out.contains("Name: web.1."), "{out}");
    assert!(
        out.contains("RemoteAddr: 192.168.0.13:"),
        "client address lost: {out}"
    );
    assert!(
        c.node("node1", "curl -s --max-time 5 localhost:8080")
            .ok()
            .stdout
            .contains("Name: web.1.")
    );
    // node3 runs no replica: nothing listens there.
    assert_ne!(
        c.node("node3", "curl -s --max-time 2 localhost:8080").code,
        0
    );
    let r = c.sk(&["service", "scale", "web=4"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("one replica per node"), "{}", r.stderr);
}

#[test]
fn scaling_down_drains_backends_before_tasks_stop() {
    require_root!();
    let c = Cluster::up("drain", 3);
    c.service_create(&[
        "--name",
        "search",
        "--replicas",
        "3",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();
    let name = c.name.clone();
    // A bounded stream of new connections through the mesh while the service shrinks and
    // grows; every one of them must be answered.
    let load = std::thread::spawn(move || {
        common::swarmkit(&[
            "--cluster",
            &name,
            "node",
            "exec",
            "node1",
            "--",
            "sh",
            "-c",
            "for i in $(seq 400); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 localhost:9200; done",
        ])
    });
    for replicas in ["1", "3", "2", "3", "1"] {
        c.sk(&["service", "scale", &format!("search={replicas}")])
            .ok();
    }
    let out = load.join().unwrap().ok();
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(codes.len(), 400);
    let failed = codes.iter().filter(|c| **c != "200").count();
    assert_eq!(
        failed, 0,
        "{failed} of 400 connections failed during scaling: {codes:?}"
    );
}

#[test]
fn service_update_replaces_tasks_and_reprograms_backends() {
    require_root!();
    let c = Cluster::up("update", 3);
    c.service_create(&[
        "--name",
        "search",
        "--replicas",
        "3",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();
    let before: BTreeSet<String> = c
        .tasks("search")
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    c.sk(&["service", "update", "--env-add", "GREETING=hello", "search"])
        .ok();
    let running: BTreeSet<String> = c
        .tasks("search")
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(running.len(), 3);
    assert!(running.is_disjoint(&before), "tasks were not replaced");
    let pid = c.task_pid("search", 1);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.split(|b| *b == 0).any(|kv| kv == b"GREETING=hello"),
        "the replacement task runs without the new environment"
    );
    assert_round_robin(&curls(&c, "node2", "localhost:9200", 6), 3, "after update");
}

/// A VIP is balanced in its network's sandbox, once per node: the tasks hold no load-balancer
/// rules of their own, backends see the client's own address, and a task balanced onto itself
/// is answered too (hairpin through its bridge port).
#[test]
fn vips_are_balanced_in_the_network_sandbox_keeping_the_client_address() {
    require_root!();
    let c = Cluster::up("vipsbox", 2);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    for (name, replicas) in [("web", "2"), ("client", "1")] {
        c.service_create(&[
            "--name",
            name,
            "--network",
            "app",
            "--replicas",
            replicas,
            "whoami",
        ])
        .ok();
    }
    let strip = |a: &str| a.split('/').next().unwrap_or_default().to_string();
    let client = &c.api_tasks("client")[0];
    let client_addr = strip(
        client["NetworksAttachments"][0]["Addresses"][0]
            .as_str()
            .expect("the client's address"),
    );
    let web = c.api("/services/web");
    let vip = strip(
        web["Endpoint"]["VirtualIPs"]
            .as_array()
            .expect("VIPs")
            .iter()
            .find_map(|v| v["Addr"].as_str())
            .expect("web's VIP"),
    );
    let network_id = web["Endpoint"]["VirtualIPs"][0]["NetworkID"]
        .as_str()
        .expect("network ID")
        .to_string();

    let answers = |task: &str| {
        let out = c
            .task(
                task,
                "for i in 1 2 3 4; do curl -s --max-time 5 http://web/ || echo FAILED; done",
            )
            .ok()
            .stdout;
        assert!(!out.contains("FAILED"), "{task} -> web:\n{out}");
        out
    };
    let field = |out: &str, key: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let out = answers("client.1");
    let hosts: BTreeSet<String> = field(&out, "Hostname:").into_iter().collect();
    assert_eq!(hosts.len(), 2, "both replicas answer:\n{out}");
    for remote in field(&out, "RemoteAddr:") {
        assert_eq!(
            remote.rsplit_once(':').map(|(h, _)| h),
            Some(client_addr.as_str()),
            "the backend sees the client's own address:\n{out}"
        );
    }
    // web.1 reaching its own service is balanced onto itself every other time.
    let own = answers("web.1");
    let hosts: BTreeSet<String> = field(&own, "Hostname:").into_iter().collect();
    assert_eq!(
        hosts.len(),
        2,
        "web.1 reaches both replicas, itself too:\n{own}"
    );

    let tables = c.task("client.1", "nft list tables").ok().stdout;
    assert_eq!(
        tables.trim(),
        "",
        "a task holds no load balancer, and tracks connections only during a trace"
    );
    let short = &network_id[..10];
    for node in ["node1", "node2"] {
        let addrs = c
            .sk(&[
                "node",
                "exec",
                "--netns",
                &format!("1-{short}"),
                node,
                "--",
                "ip",
                "-br",
                "addr",
            ])
            .ok()
            .stdout;
        assert!(
            addrs.contains(&format!("{vip}/32")),
            "{node}'s sandbox answers for the VIP {vip}:\n{addrs}"
        );
    }
}

/// A VIP whose service has no task serving refuses at once (a reset from the network
/// sandbox, which holds the VIP), rather than leaving the client to time out; its first task
/// makes it answer, and scaling back to none makes it refuse again.
#[test]
fn a_vip_without_tasks_refuses_and_answers_once_a_task_serves() {
    require_root!();
    let c = Cluster::up("vipempty", 2);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "0",
        "whoami",
    ])
    .ok();
    c.service_create(&[
        "--name",
        "client",
        "--network",
        "app",
        "whoami",
        "sleep",
        "600",
    ])
    .ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    // curl's exit code 7 is "connection refused"; a blackholed VIP would give 28 (timeout).
    let probe = "curl -s -o /dev/null -m 3 http://web/; echo rc=$?";
    let refused = c.task("client.1", probe).ok().stdout;
    assert!(refused.contains("rc=7"), "no tasks: {refused}");
    c.sk(&["service", "scale", "web=1"]).ok();
    let served = c.task("client.1", probe).ok().stdout;
    assert!(served.contains("rc=0"), "one task: {served}");
    c.sk(&["service", "scale", "web=0"]).ok();
    c.eventually("every agent in sync", Duration::from_secs(20), || {
        c.all_in_sync()
    });
    let refused = c.task("client.1", probe).ok().stdout;
    assert!(refused.contains("rc=7"), "scaled back to none: {refused}");
}
