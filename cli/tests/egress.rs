//! Egress as Docker builds it, seen from inside tasks: a leg on the node's docker_gwbridge with
//! the default route, masqueraded out of the node, and the embedded DNS forwarding names it does
//! not own to the node's resolvers (or `--dns`). On the netns backend the outside is the
//! cluster's underlay: the servers here are real ones (busybox httpd, dnsmasq) in its namespace.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Cluster;

/// Processes started in the cluster's underlay namespace, killed when the test ends however it
/// ends.
struct Outside(Vec<Child>);

impl Outside {
    fn start(&mut self, c: &Cluster, argv: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}underlay", c.ns_prefix())])
            .args(argv)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{argv:?}: {e} (scripts/setup installs it)"));
        self.0.push(child);
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn dnsmasq(listen: &str, answer: &str) -> Vec<String> {
    [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        &format!("--listen-address={listen}"),
        &format!("--address=/db.outside.test/{answer}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn tasks_reach_the_underlay_by_name_and_address_and_internal_ones_do_not() {
    require_root!();
    let c = Cluster::up("egress", 2);
    let mut outside = Outside(Vec::new());
    let site = std::env::temp_dir().join(format!("sktest-egress-{}", c.name));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from outside\n").unwrap();
    outside.start(
        &c,
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "192.168.0.1:8089",
            "-h",
            site.to_str().unwrap(),
        ],
    );
    // The nodes' resolver is the underlay's 192.168.0.1; a second server on an address of its
    // own answers differently, for `--dns`.
    let underlay = format!("{}underlay", c.ns_prefix());
    let added = Command::new("ip")
        .args([
            "-n",
            &underlay,
            "addr",
            "add",
            "192.168.0.2/24",
            "dev",
            "br0",
        ])
        .status()
        .unwrap();
    assert!(added.success());
    let first = dnsmasq("192.168.0.1", "192.168.0.1");
    outside.start(&c, &first.iter().map(String::as_str).collect::<Vec<_>>());
    let other = dnsmasq("192.168.0.2", "10.1.2.3");
    outside.start(&c, &other.iter().map(String::as_str).collect::<Vec<_>>());

    for args in [
        &["network", "create", "-d", "overlay", "front"][..],
        &["network", "create", "-d", "overlay", "--internal", "back"],
        &[
            "service",
            "create",
            "--name",
            "out",
            "--network",
            "front",
            "--replicas",
            "2",
            "whoami",
        ],
        &[
            "service",
            "create",
            "--name",
            "shut",
            "--network",
            "back",
            "whoami",
        ],
        &[
            "service",
            "create",
            "--name",
            "viadns",
            "--network",
            "front",
            "--dns",
            "192.168.0.2",
            "whoami",
        ],
    ] {
        let r = c.docker(args);
        assert_eq!(r.code, 0, "docker {args:?}: {}", r.stderr);
    }
    let inspect = c.docker(&["network", "inspect", "back", "--format", "{{.Internal}}"]);
    assert_eq!(inspect.stdout.trim(), "true", "{}", inspect.stderr);
    for (service, n) in [("out", 2), ("shut", 1), ("viadns", 1)] {
        c.eventually(
            &format!("{service} running"),
            Duration::from_secs(30),
            || c.running_tasks(service).len() == n,
        );
    }
    let nodes: std::collections::BTreeSet<String> =
        c.running_tasks("out").into_iter().map(|t| t.node).collect();
    assert_eq!(nodes.len(), 2, "out spreads over both nodes: {nodes:?}");

    for slot in [1, 2] {
        let task = format!("out.{slot}");
        // By address and by name, through the leg and the node's masquerade.
        let r = c.task(
            &task,
            "curl -s -m 5 http://192.168.0.1:8089/ && curl -s -m 5 http://db.outside.test:8089/ \
             && ip -4 route show default && getent hosts out",
        );
        assert_eq!(r.code, 0, "{task}: {} {}", r.stdout, r.stderr);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[..2], ["hello from outside"; 2], "{task}: {lines:?}");
        assert!(
            lines[2].starts_with("default via 172.18.0.1 dev eth"),
            "{task}: {lines:?}"
        );
        // A name of its own network is still answered by the embedded DNS, not forwarded.
        assert!(lines[3].starts_with("10."), "{task}: {lines:?}");
    }
    // `--dns` is where this task's names go instead of the node's resolvers.
    let r = c.task("viadns.1", "dig +short +tries=1 +time=3 db.outside.test");
    assert_eq!(r.stdout.trim(), "10.1.2.3", "{}", r.stderr);

    // Internal only: no leg, no default route, no forwarding.
    let r = c.task(
        "shut.1",
        "ip -4 route show default; ip -o -4 addr show | grep -c 172.18.; \
         curl -s -m 3 http://192.168.0.1:8089/ || echo unreachable; \
         dig +tries=1 +time=3 db.outside.test | grep -o 'status: [A-Z]*'",
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        ["0", "unreachable", "status: NXDOMAIN"],
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&site);
}
