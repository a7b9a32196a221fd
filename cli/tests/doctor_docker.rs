//! `swarmkit doctor` on a real Docker Swarm (Debian's docker.io, three dockerds in network
//! namespaces; skipped with the reason where dockerd is not installed): its healthy overlay
//! checks pass; every fault injected for real is named with evidence and a fix; this host's
//! missing IPVS is named where a VIP needs it; and nothing on the swarm changes while
//! doctor reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::docker_swarm::{DockerSwarm, unavailable};

const STALE_VTEP: &str = "10.231.7.99";
const STALE_MAC: &str = "02:42:0a:00:00:63";

fn doctor(swarm: &DockerSwarm) -> (Value, i32, String) {
    let mut args: Vec<String> = vec!["doctor".into(), "--docker-host".into(), swarm.host()];
    for n in swarm.nodes() {
        args.push("--reach".into());
        args.push(format!("{}=netns:{}", n.hostname, n.netns));
    }
    let text = testkit::swarmkit(&args.iter().map(String::as_str).collect::<Vec<_>>()).stdout;
    args.extend(["--format".into(), "json".into()]);
    let r = testkit::swarmkit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --format json: {e}\n{}\n{}", r.stdout, r.stderr));
    (v, r.code, text)
}

/// The overlay sandbox of node `i` (`1-<network id prefix>`), as a path the host can enter.
fn overlay_sandbox(swarm: &DockerSwarm, i: usize) -> PathBuf {
    swarm
        .sandboxes(i)
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("1-"))
        })
        .unwrap_or_else(|| panic!("node {i} has an overlay sandbox"))
}

fn in_sandbox(path: &Path, cmd: &str) -> testkit::Run {
    testkit::Run::from(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap(),
    )
}

/// What doctor must not change: each node's firewall (nft without counters, which probes
/// move, and iptables-save without its timestamp), links, IPVS listing and the FDB entries
/// dockerd programmed in each overlay.
fn swarm_state(swarm: &DockerSwarm) -> Vec<String> {
    (0..swarm.nodes().len())
        .map(|i| {
            let nft = swarm.in_node(i, &["nft", "-s", "list", "ruleset"]).stdout;
            let ipt = swarm
                .in_node(i, &["sh", "-c", "iptables-save | grep -v '^#'"])
                .stdout;
            let links = swarm
                .in_node(i, &["sh", "-c", "ip -o link show | sed 's/ state .*//'"])
                .stdout;
            let ipvs = swarm.in_node(i, &["sh", "-c", "ipvsadm -Ln 2>&1"]).stdout;
            let fdb: Vec<String> = swarm
                .sandboxes(i)
                .iter()
                .filter(|p| p.to_string_lossy().contains("/1-"))
                .map(|p| in_sandbox(p, "bridge fdb show | grep permanent").stdout)
                .collect();
            format!("{nft}\n{ipt}\n{links}\n{ipvs}\n{}", fdb.join("\n"))
        })
        .collect()
}

/// Whether this machine's kernel can balance with IPVS (these machines cannot).
fn host_has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists() || host_has("ip_vs")
}

/// Whether this machine's kernel has module `m`, loaded or loadable.
fn host_has(m: &str) -> bool {
    std::path::Path::new("/sys/module").join(m).exists()
        || std::process::Command::new("modprobe")
            .args(["-n", m])
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn doctor_on_a_real_docker_swarm_names_each_injected_fault_and_changes_nothing() {
    testkit::skip_unless!(unavailable());
    let swarm = DockerSwarm::up("ddoc", 3);
    let host = |i: usize| swarm.nodes()[i].hostname.clone();
    // dnsrr and host-mode ports: what works on a kernel without IPVS.
    swarm.web(3, &["--publish", "mode=host,target=80,published=8080"]);

    let (v, code, text) = doctor(&swarm);
    eprintln!("{text}");
    assert_eq!(code, 0, "a healthy swarm:\n{text}");
    assert_eq!(v["flavor"], "docker");
    assert!(text.contains("healthy: no problem found"), "{text}");
    let passed: Vec<&str> = v["passed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["check"].as_str())
        .collect();
    for check in [
        "overlay-reach",
        "gossip-reach",
        "stale-fdb",
        "task-listens",
        "underlay-mtu",
        "firewall-vxlan",
    ] {
        assert!(
            passed.contains(&check),
            "{check} looked at something:\n{text}"
        );
    }

    // Faults, for real: VXLAN dropped on node 2, gossip on node 3, node 1's underlay MTU
    // lowered and a stale FDB entry in its overlay, a service bound to loopback on node 1,
    // and a VIP service, which this kernel cannot balance.
    swarm
        .in_node(
            1,
            &["sh", "-c", "nft add table inet fault && nft add chain inet fault in '{ type filter hook input priority 0; }' && nft add rule inet fault in udp dport 4789 drop"],
        )
        .ok();
    swarm
        .in_node(
            2,
            &["sh", "-c", "nft add table inet fault && nft add chain inet fault in '{ type filter hook input priority 0; }' && nft add rule inet fault in tcp dport 7946 drop"],
        )
        .ok();
    let addr = &swarm.nodes()[0].addr;
    let underlay = swarm
        .in_node(
            0,
            &[
                "sh",
                "-c",
                &format!("ip -o addr show to {addr} | awk '{{print $2}}'"),
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    swarm
        .in_node(0, &["ip", "link", "set", &underlay, "mtu", "1400"])
        .ok();
    let sandbox = overlay_sandbox(&swarm, 0);
    in_sandbox(
        &sandbox,
        &format!("bridge fdb add {STALE_MAC} dev $(ip -br link show type vxlan | cut -d@ -f1 | head -n1) dst {STALE_VTEP} self permanent"),
    )
    .ok();
    swarm.create_service(
        &[
            "--name",
            "lo",
            "--network",
            "ov",
            "--endpoint-mode",
            "dnsrr",
            "--constraint",
            &format!("node.hostname=={}", host(0)),
            "--publish",
            "mode=host,target=80,published=8081",
        ],
        "mkdir -p /www && echo lo > /www/index.html && exec httpd -f -p 127.0.0.1:80 -h /www",
    );
    swarm.create_service(&["--name", "vip", "--network", "ov"], "exec sleep 100000");
    swarm.wait_running("lo", 1);
    swarm.wait_running("vip", 1);
    // An encrypted overlay, which this kernel (no ESP) cannot carry.
    swarm
        .docker(
            0,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--opt",
                "encrypted",
                "sec",
            ],
        )
        .ok();

    let before = swarm_state(&swarm);
    let (v, code, text) = doctor(&swarm);
    eprintln!("{text}");
    assert_eq!(before, swarm_state(&swarm), "doctor changed the swarm");
    assert_eq!(code, 1, "{text}");
    assert_eq!(v["healthy"], false);
    let found = testkit::doctor_findings(&v);
    let mut want = vec![
        ("firewall-vxlan", host(1)),
        ("firewall-gossip", host(2)),
        ("gossip-reach", host(0)),
        ("gossip-reach", host(1)),
        ("underlay-mtu", host(0)),
        ("stale-fdb", host(0)),
        ("task-listens", host(0)),
    ];
    if !host_has_ipvs() {
        want.extend((0..3).map(|i| ("kernel-ipvs", host(i))));
    }
    if !host_has("esp4") {
        want.extend((0..3).map(|i| ("kernel-esp", host(i))));
    }
    for (check, node) in &want {
        assert!(
            found.contains(&(check.to_string(), node.clone())),
            "{check} on {node} not named:\n{text}"
        );
    }
    for f in v["findings"].as_array().unwrap() {
        assert!(!f["evidence"].as_str().unwrap().is_empty(), "{f:#}");
        assert!(!f["fix"].as_str().unwrap().is_empty(), "{f:#}");
    }
    let by = |check: &str| -> Vec<&Value> {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == check)
            .collect()
    };
    assert!(
        by("stale-fdb")[0]["evidence"]
            .as_str()
            .unwrap()
            .contains(STALE_VTEP)
    );
    assert!(
        by("underlay-mtu")[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("mtu 1400")
    );
    assert!(
        by("task-listens")[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:80")
    );
    if !host_has_ipvs() {
        assert!(
            by("kernel-ipvs")[0]["problem"]
                .as_str()
                .unwrap()
                .contains("vip"),
            "names the service that needs it:\n{text}"
        );
    }
    let unreachable = by("overlay-reach");
    assert!(
        !unreachable.is_empty(),
        "node 2's tasks are cut off:\n{text}"
    );
    for f in unreachable {
        assert!(
            f["fix"].as_str().unwrap().contains("firewall-vxlan"),
            "{f:#}"
        );
    }

    // Run on a node, doctor reads that node from its own namespaces, and says which nodes it
    // could not read and how to reach them.
    let n1 = &swarm.nodes()[0];
    let r = testkit::Run::from(
        std::process::Command::new("ip")
            .args(["netns", "exec", &n1.netns])
            .arg(testkit::bin().unwrap())
            .args(["doctor", "--docker-host", &swarm.host(), "--format", "json"])
            .output()
            .unwrap(),
    );
    let local: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    let lf = testkit::doctor_findings(&local);
    assert!(lf.contains(&("underlay-mtu".into(), host(0))), "{local:#}");
    assert!(lf.contains(&("node-unread".into(), host(1))), "{local:#}");
    assert!(
        !lf.iter().any(|f| f.0 == "firewall-vxlan"),
        "node 2 was not read: {local:#}"
    );
    let unread = local["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "node-unread")
        .unwrap();
    assert!(
        unread["fix"].as_str().unwrap().contains("--reach"),
        "{unread:#}"
    );

    // Faults removed: the swarm recovers, and only what is the application's (loopback) and
    // the kernel's (IPVS) is left.
    swarm.docker(0, &["network", "rm", "sec"]).ok();
    swarm
        .in_node(1, &["nft", "delete", "table", "inet", "fault"])
        .ok();
    swarm
        .in_node(2, &["nft", "delete", "table", "inet", "fault"])
        .ok();
    swarm
        .in_node(0, &["ip", "link", "set", &underlay, "mtu", "1500"])
        .ok();
    in_sandbox(
        &sandbox,
        &format!("bridge fdb del {STALE_MAC} dev $(ip -br link show type vxlan | cut -d@ -f1 | head -n1) dst {STALE_VTEP} self"),
    )
    .ok();
    let mut left: Vec<(String, String)> = vec![("task-listens".into(), host(0))];
    if !host_has_ipvs() {
        left.extend((0..3).map(|i| ("kernel-ipvs".to_string(), host(i))));
    }
    left.sort();
    testkit::eventually_true(
        "only the loopback and IPVS findings left",
        Duration::from_secs(60),
        || testkit::doctor_findings(&doctor(&swarm).0) == left,
    );
}

/// `graph` and `trace` on the same kind of real swarm: the picture names its nodes,
/// networks and services; a task-to-task connection across the overlay is followed hop by
/// hop to the task that accepted it; and the routing mesh, which this kernel cannot
/// balance, is followed as far as the kernels' records go, and the trace says why it ends.
#[test]
fn graph_and_trace_read_a_real_docker_swarm() {
    testkit::skip_unless!(unavailable());
    let swarm = DockerSwarm::up("dgraph", 3);
    let mut reach: Vec<String> = vec!["--docker-host".into(), swarm.host()];
    for n in swarm.nodes() {
        reach.push("--reach".into());
        reach.push(format!("{}=netns:{}", n.hostname, n.netns));
    }
    let sk = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(reach.iter().map(String::as_str));
        testkit::swarmkit(&all)
    };
    swarm.web(2, &[]);
    swarm.create_service(
        &["--name", "mesh", "--network", "ov", "--publish", "8082:80"],
        "exec httpd -f -p 80",
    );
    swarm.wait_running("mesh", 1);

    let text = sk(&["graph"]).ok().stdout;
    for n in swarm.nodes() {
        assert!(text.contains(&n.hostname), "{text}");
    }
    for name in ["web", "mesh", "ov", "ingress"] {
        assert!(text.contains(name), "{name} in the picture:\n{text}");
    }
    // Each node's ingress sandbox endpoint, read from its kernel.
    assert!(text.contains("lb-ingress"), "{text}");
    let svg = sk(&["graph", "--format", "svg"]).ok().stdout;
    roxmltree::Document::parse(&svg).expect("the SVG parses");

    // web.1 to web.2's overlay address: across nodes, to the task that accepted it.
    let addrs: Vec<String> = api_task_addrs(&swarm, "web");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let r = sk(&["trace", "--task", "web.1", &format!("{}:80", addrs[1])]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("accepted"), "{}", r.stdout);
    assert!(r.stdout.contains("VXLAN"), "the overlay hop: {}", r.stdout);

    // The live picture of the same swarm: `swarmkit ui` serves it on 127.0.0.1.
    let mut ui_args: Vec<String> = vec!["ui".into()];
    ui_args.extend(reach.iter().cloned());
    let mut ui = std::process::Command::new(testkit::bin().unwrap())
        .args(&ui_args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ui.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .map(str::to_string);
    let graph = url.as_ref().map(|u| {
        testkit::Run::from(
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "10", &format!("{u}graph")])
                .output()
                .unwrap(),
        )
    });
    let _ = ui.kill();
    let _ = ui.wait();
    assert!(line.contains("Docker Swarm"), "{line}");
    let graph: Value = serde_json::from_str(&graph.expect("ui printed its address").stdout)
        .expect("GET /graph answers JSON");
    for n in swarm.nodes() {
        assert!(
            graph["nodes"].to_string().contains(&n.hostname),
            "{graph:#}"
        );
    }

    // The routing mesh from node 1: DNAT into the ingress sandbox, where no IPVS balances.
    let r = sk(&[
        "trace",
        "--node",
        &swarm.nodes()[0].hostname,
        "localhost:8082",
    ]);
    eprintln!("{}", r.stdout);
    if !host_has_ipvs() {
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        // dockerd gives up on the mesh without IPVS (no DNAT at all), or programs it and
        // the ingress sandbox has nothing to balance with: either way the trace says IPVS.
        assert!(r.stdout.contains("IPVS"), "{}", r.stdout);
    }
}

/// The overlay addresses of a service's tasks, web.1's first, from the manager's API.
fn api_task_addrs(swarm: &DockerSwarm, service: &str) -> Vec<String> {
    let ids = swarm
        .docker(
            0,
            &[
                "service",
                "ps",
                service,
                "-q",
                "--filter",
                "desired-state=running",
            ],
        )
        .ok()
        .stdout;
    let mut found: Vec<(i64, String)> = ids
        .lines()
        .filter_map(|id| {
            let t: Value = serde_json::from_str(
                &swarm
                    .docker(
                        0,
                        &["inspect", "--type", "task", id, "--format", "{{json .}}"],
                    )
                    .ok()
                    .stdout,
            )
            .ok()?;
            let addr = t["NetworksAttachments"]
                .as_array()?
                .iter()
                .find(|a| a["Network"]["Spec"]["Name"] == "ov")?["Addresses"][0]
                .as_str()?
                .split('/')
                .next()?
                .to_string();
            Some((t["Slot"].as_i64()?, addr))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, a)| a).collect()
}
