//! `swarmkit doctor` on swarmkit's own clusters: a healthy cluster says so and exits 0;
//! faults injected for real into the nodes' kernels (a firewall dropping VXLAN, a lowered
//! underlay MTU, a stale FDB entry, an application bound to loopback) are each named with
//! evidence and a fix; and doctor changes nothing it reads. The real Docker Swarm side is
//! in `doctor_docker.rs`.

mod common;

use std::time::Duration;

use common::Cluster;
use serde_json::Value;

const REGISTRY: &str = "192.168.0.1:5000";

/// What doctor must leave as it found it on a node: the firewall (without counters, which
/// its own probes move) and the FDB entries the engine programmed (learned ones come and go
/// with any traffic).
fn kernel_state(c: &Cluster, node: &str, overlay: &str) -> String {
    let rules = c.node(node, "nft -s list ruleset").ok().stdout;
    let fdb = c
        .sk(&[
            "node",
            "exec",
            "--netns",
            overlay,
            node,
            "--",
            "sh",
            "-c",
            "bridge fdb show | grep permanent",
        ])
        .ok()
        .stdout;
    let links = c
        .node(node, "ip -o link show | sed 's/ state .*//'")
        .ok()
        .stdout;
    format!("{rules}\n{fdb}\n{links}")
}

fn doctor(c: &Cluster) -> (Value, i32) {
    let r = c.sk(&["doctor", "--format", "json"]);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --format json: {e}\n{}\n{}", r.stdout, r.stderr));
    (v, r.code)
}

#[test]
fn doctor_passes_a_healthy_cluster_and_names_each_injected_fault() {
    require_root!();
    testkit::skip_unless!(testkit::registry::needs_registry());
    let c = Cluster::up_with("doctor", 3, &["--insecure-registry", REGISTRY]);
    let registry = testkit::registry::Registry::builder()
        .netns(&format!("{}underlay", c.ns_prefix()))
        .addr(REGISTRY.parse().unwrap())
        .start();
    // An application that listens on loopback only: the classic "published port refused".
    let built = testkit::image::OciLayout::new()
        .layer(testkit::image::Layer::busybox(&[
            "sh", "httpd", "ping", "cat",
        ]))
        .layer(testkit::image::Layer::new().file("/srv/index.html", "lo\n", 0o644))
        .entrypoint(&["httpd", "-f", "-p", "127.0.0.1:80", "-h", "/srv"])
        .write(&std::env::temp_dir().join(format!("{}-lo", c.name)), "1");
    registry.push(&built, "lo:1");

    c.sk(&["network", "create", "-d", "overlay", "net1"]).ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "net1",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();
    let net = c
        .sk(&["network", "inspect", "net1", "--format", "{{.Id}}"])
        .ok()
        .stdout;
    let overlay = format!("1-{}", &net.trim()[..10]);

    let (v, code) = doctor(&c);
    assert_eq!(code, 0, "a healthy cluster: {v:#}");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["flavor"], "swarmkit");
    let passed: Vec<&str> = v["passed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["check"].as_str())
        .collect();
    for check in [
        "overlay-reach",
        "task-listens",
        "firewall-vxlan",
        "underlay-mtu",
    ] {
        assert!(
            passed.contains(&check),
            "{check} looked at something: {v:#}"
        );
    }
    let text = c.sk(&["doctor"]).ok().stdout;
    assert!(text.contains("healthy: no problem found"), "{text}");

    // Faults, each for real in a node's kernel.
    c.node(
        "node2",
        "nft add table inet fault && nft add chain inet fault in '{ type filter hook input priority 0; }' && nft add rule inet fault in udp dport 4789 drop",
    )
    .ok();
    c.node("node3", "ip link set eth0 mtu 1400").ok();
    // A forwarding firewall that refuses the published port on node3, and node3 sending to
    // node1 from a second address (a data-path address on the wrong interface, as it were).
    c.node(
        "node3",
        "nft add table inet fwdfault && nft add chain inet fwdfault forwarded '{ type filter hook forward priority 0; }' && nft add rule inet fwdfault forwarded tcp dport 8080 drop",
    )
    .ok();
    c.node(
        "node3",
        "ip addr add 192.168.0.99/24 dev eth0 && ip route add 192.168.0.11/32 dev eth0 src 192.168.0.99",
    )
    .ok();
    c.sk(&[
        "node", "exec", "--netns", &overlay, "node1", "--", "sh", "-c",
        "bridge fdb add 02:42:0a:00:00:63 dev $(ip -br link show type vxlan | cut -d@ -f1 | head -n1) dst 192.168.0.99 self permanent",
    ])
    .ok();
    c.service_create(&[
        "--name",
        "lo",
        "--network",
        "net1",
        "-p",
        "8081:80",
        &registry.image("lo:1"),
    ])
    .ok();
    let lo_node = c.running_tasks("lo")[0].node.clone();
    // The balancer on node1 sends web's second slot to an address no task has.
    let vip = c
        .sk(&[
            "service",
            "inspect",
            "web",
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.NetworkID}} {{.Addr}}\n{{end}}",
        ])
        .ok()
        .stdout
        .lines()
        .find(|l| l.starts_with(net.trim()))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string();
    // Once all three of its backends are there, one of them is swapped for a stray.
    let backends = |c: &Cluster| {
        c.sk(&[
            "node", "exec", "--netns", &overlay, "node1", "--", "nft", "list", "map", "ip",
            "swarmkit", "backends",
        ])
        .ok()
        .stdout
        .split([',', '{', '}'])
        .filter_map(|e| {
            let (key, _) = e.trim().split_once(" : ")?;
            key.starts_with(&format!("{vip} . "))
                .then(|| key.to_string())
        })
        .collect::<Vec<String>>()
    };
    c.eventually(
        "web's three backends on node1",
        Duration::from_secs(20),
        || backends(&c).len() == 3,
    );
    let key = backends(&c).pop().unwrap();
    c.sk(&[
        "node", "exec", "--netns", &overlay, "node1", "--", "sh", "-c",
        &format!("nft delete element ip swarmkit backends {{ {key} }} && nft add element ip swarmkit backends {{ {key} : 10.0.0.250 }}"),
    ])
    .ok();

    let before: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| kernel_state(&c, n, &overlay))
        .collect();
    let (v, code) = doctor(&c);
    let after: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| kernel_state(&c, n, &overlay))
        .collect();
    assert_eq!(before, after, "doctor changed what it read");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["healthy"], false);
    let found = testkit::doctor_findings(&v);
    for want in [
        ("firewall-vxlan", "node2"),
        ("underlay-mtu", "node3"),
        ("stale-fdb", "node1"),
        ("task-listens", lo_node.as_str()),
        ("lb-backends", "node1"),
        ("firewall-forward", "node3"),
        ("node-address", "node3"),
    ] {
        assert!(
            found.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not named: {v:#}"
        );
    }
    // Each names its evidence and a fix; the unreachable tasks point at the firewall.
    for f in v["findings"].as_array().unwrap() {
        assert!(!f["evidence"].as_str().unwrap().is_empty(), "{f:#}");
        assert!(!f["fix"].as_str().unwrap().is_empty(), "{f:#}");
    }
    let vxlan = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "firewall-vxlan")
        .unwrap();
    assert!(
        vxlan["evidence"]
            .as_str()
            .unwrap()
            .contains("udp dport 4789 drop")
    );
    assert!(
        vxlan["fix"]
            .as_str()
            .unwrap()
            .contains("nft delete rule inet fault in handle")
    );
    let lo = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "task-listens")
        .unwrap();
    assert!(
        lo["problem"].as_str().unwrap().contains("loopback only"),
        "{lo:#}"
    );
    assert!(
        lo["evidence"].as_str().unwrap().contains("127.0.0.1:80"),
        "{lo:#}"
    );
    let unreachable: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "overlay-reach")
        .collect();
    assert!(!unreachable.is_empty(), "node2's tasks are cut off: {v:#}");
    for f in unreachable {
        assert!(
            f["fix"]
                .as_str()
                .unwrap()
                .contains("firewall-vxlan on node2"),
            "{f:#}"
        );
    }

    // Faults removed: healthy again, except the loopback-bound service, which is the
    // application's own.
    c.node("node2", "nft delete table inet fault").ok();
    c.node("node3", "ip link set eth0 mtu 1500").ok();
    c.node("node3", "nft delete table inet fwdfault").ok();
    c.node(
        "node3",
        "ip route del 192.168.0.11/32 dev eth0 src 192.168.0.99 && ip addr del 192.168.0.99/24 dev eth0",
    )
    .ok();
    c.sk(&[
        "node", "exec", "--netns", &overlay, "node1", "--", "sh", "-c",
        "bridge fdb del 02:42:0a:00:00:63 dev $(ip -br link show type vxlan | cut -d@ -f1 | head -n1) dst 192.168.0.99 self",
    ])
    .ok();
    // The balancer's fix: node1's agent, restarted by its supervisor, programs it anew.
    common::sigkill(common::pid_of(&c, "node1"));
    c.eventually(
        "only the loopback finding is left",
        Duration::from_secs(20),
        || {
            let (v, _) = doctor(&c);
            testkit::doctor_findings(&v) == vec![("task-listens".to_string(), lo_node.clone())]
        },
    );
}

#[test]
fn doctor_explains_a_cluster_that_is_not_up() {
    let r = common::swarmkit(&["--cluster", "doctor-nosuch", "doctor"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("cluster up"), "{}", r.stderr);
    let r = common::swarmkit(&["doctor", "--docker-host", "ssh://me@host"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unix://"), "{}", r.stderr);
}

/// The same checks inside QEMU guests (their own kernels, IPVS and busybox tools beside
/// iproute2's): healthy, then a guest's firewall dropping VXLAN is named.
#[test]
fn doctor_reads_qemu_guests() {
    testkit::skip_unless!(testkit::needs_qemu());
    let c = Cluster::up_with("qdoctor", 2, &["--backend", "qemu"]);
    c.sk(&["network", "create", "-d", "overlay", "net1"]).ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "net1",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();
    let (v, code) = doctor(&c);
    assert_eq!(code, 0, "{v:#}");
    let passed: Vec<&str> = v["passed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["check"].as_str())
        .collect();
    for check in ["overlay-reach", "kernel-ipvs", "stale-fdb", "underlay-mtu"] {
        assert!(
            passed.contains(&check),
            "{check} looked at something: {v:#}"
        );
    }
    c.node(
        "node2",
        "nft add table inet fault && nft add chain inet fault in '{ type filter hook input priority 0; }' && nft add rule inet fault in udp dport 4789 drop",
    )
    .ok();
    let (v, code) = doctor(&c);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        testkit::doctor_findings(&v).contains(&("firewall-vxlan".into(), "node2".into())),
        "{v:#}"
    );
}
