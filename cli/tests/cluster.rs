//! Foundation behaviour on the netns backend: clusters come up and go away cleanly, overlays
//! carry real VXLAN traffic and stay isolated, services spread and restart, bad input is
//! refused without side effects.

mod common;

use std::time::Duration;

use common::{Cluster, namespaces, owned_processes, swarmkit};

fn task_ip(c: &Cluster, task: &str) -> String {
    let out = c.task(task, "hostname -i").ok();
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn vxlan_counter(c: &Cluster, node: &str, network: &str, counter: &str) -> u64 {
    let inspect = c.sk(&["network", "inspect", network]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(inspect.trim()).expect("inspect JSON");
    let net_id = v[0]["Id"].as_str().expect("network id").to_string();
    let ns = format!("{}{node}.1-{}", c.ns_prefix(), &net_id[..10]);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg(format!("cat /sys/class/net/vx-*/statistics/{counter}"))
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn up_then_down_leaves_nothing_behind() {
    require_root!();
    let c = Cluster::up("lifecycle", 3);
    let ls = c.sk(&["node", "ls"]).ok().stdout;
    assert!(ls.starts_with("ID "), "{ls}");
    assert!(ls.contains("MANAGER STATUS   ENGINE VERSION"), "{ls}");
    assert_eq!(
        ls.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{ls}"
    );
    assert!(ls.contains("Leader"), "{ls}");
    use std::os::unix::fs::PermissionsExt;
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the manager's socket is open to others");
    for dir in [
        format!("/run/swarmkit/{}", c.name),
        format!("/var/lib/swarmkit/{}", c.name),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir} is open to others");
    }
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();
    assert!(
        namespaces(&c.ns_prefix()).len() >= 3 + 1 + 3 + 3,
        "nodes, underlay, sandboxes and tasks exist"
    );
    assert!(
        owned_processes(&c.name).len() >= 1 + 3 + 3,
        "manager, agents and tasks run"
    );

    let name = c.name.clone();
    drop(c);
    assert!(
        namespaces(&format!("sk-{name}.")).is_empty(),
        "namespaces left: {:?}",
        namespaces(&format!("sk-{name}."))
    );
    assert!(
        owned_processes(&name).is_empty(),
        "processes left: {:?}",
        owned_processes(&name)
    );
    assert!(!std::path::Path::new(&format!("/run/swarmkit/{name}")).exists());
    assert!(!std::path::Path::new(&format!("/var/lib/swarmkit/{name}")).exists());
    assert!(!swarmkit(&["cluster", "ls"]).ok().stdout.contains(&name));
}

#[test]
fn tasks_on_different_nodes_talk_over_vxlan() {
    require_root!();
    let c = Cluster::up("vxlan", 2);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "app",
        "--replicas",
        "2",
        "whoami",
    ])
    .ok();
    let tasks = c.tasks("web");
    let nodes: Vec<&str> = tasks
        .iter()
        .map(|t| t["Node"].as_str().unwrap_or(""))
        .collect();
    assert!(
        nodes.contains(&"node1") && nodes.contains(&"node2"),
        "{nodes:?}"
    );
    let ip2 = task_ip(&c, "web.2");
    let tx_before = vxlan_counter(&c, "node1", "app", "tx_packets");
    let rx_before = vxlan_counter(&c, "node2", "app", "rx_packets");
    let out = c
        .task("web.1", &format!("curl -s --max-time 5 http://{ip2}/"))
        .ok();
    assert!(out.stdout.contains("Name: web.2."), "{}", out.stdout);
    assert!(
        vxlan_counter(&c, "node1", "app", "tx_packets") > tx_before,
        "node1's vxlan sent nothing"
    );
    assert!(
        vxlan_counter(&c, "node2", "app", "rx_packets") > rx_before,
        "node2's vxlan received nothing"
    );
}

#[test]
fn overlays_are_isolated() {
    require_root!();
    let c = Cluster::up("isolated", 2);
    c.sk(&["network", "create", "--driver", "overlay", "red"])
        .ok();
    c.sk(&["network", "create", "--driver", "overlay", "blue"])
        .ok();
    c.service_create(&["--name", "r", "--network", "red", "whoami"])
        .ok();
    c.service_create(&["--name", "b", "--network", "blue", "whoami"])
        .ok();
    let blue_ip = task_ip(&c, "b.1");
    let red_ip = task_ip(&c, "r.1");
    assert!(
        c.task("b.1", &format!("curl -s --max-time 2 http://{blue_ip}/"))
            .ok()
            .stdout
            .contains("Name: b.1")
    );
    let cross = c.task("r.1", &format!("curl -s --max-time 2 http://{blue_ip}/"));
    assert_ne!(cross.code, 0, "red reached blue: {}", cross.stdout);
    let cross = c.task("b.1", &format!("curl -s --max-time 2 http://{red_ip}/"));
    assert_ne!(cross.code, 0, "blue reached red: {}", cross.stdout);
    assert_ne!(
        c.task("r.1", "getent hosts b").code,
        0,
        "red resolves blue's service"
    );
}

#[test]
fn replicas_spread_and_failed_tasks_are_replaced() {
    require_root!();
    let c = Cluster::up("restart", 3);
    c.service_create(&["--name", "s", "--replicas", "3", "whoami"])
        .ok();
    let mut nodes: Vec<String> = c
        .tasks("s")
        .iter()
        .map(|t| t["Node"].as_str().unwrap_or("").to_string())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2", "node3"]);

    let pid = c.task("s.1", "echo $PPID").ok();
    // `sh -c` runs as a child of nothing we own; find the task process through the API.
    let _ = pid;
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let tasks = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", &socket, "http://swarmkit/tasks"])
        .output()
        .expect("curl");
    let tasks: Vec<serde_json::Value> = serde_json::from_slice(&tasks.stdout).expect("tasks JSON");
    let first = tasks
        .iter()
        .find(|t| t["Slot"] == 1 && t["DesiredState"] == "running")
        .expect("slot 1");
    let old_id = first["ID"].as_str().unwrap().to_string();
    let pid = first["Status"]["ContainerStatus"]["PID"]
        .as_i64()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    c.eventually("a replacement for s.1", Duration::from_secs(10), || {
        let rows = c.tasks("s");
        rows.iter().any(|t| {
            t["Name"] == "s.1"
                && t["DesiredState"] == "Running"
                && t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
                && !old_id.starts_with(t["ID"].as_str().unwrap_or(""))
        }) && rows.iter().any(|t| {
            t["Name"].as_str().unwrap_or("").contains("s.1")
                && t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Failed")
        })
    });
    assert!(
        c.task("s.1", "curl -s localhost")
            .ok()
            .stdout
            .contains("Name: s.1")
    );
}

fn expect_refused(c: &Cluster, args: &[&str], message: &str) {
    let before = (
        c.sk(&["network", "ls"]).ok().stdout,
        c.sk(&["service", "ls", "-q"]).ok().stdout,
    );
    let r = c.sk(args);
    assert_ne!(r.code, 0, "{args:?} was accepted: {}", r.stdout);
    assert!(
        r.stderr.contains(message),
        "{args:?}: expected {message:?} in the error, got: {}",
        r.stderr
    );
    let after = (
        c.sk(&["network", "ls"]).ok().stdout,
        c.sk(&["service", "ls", "-q"]).ok().stdout,
    );
    assert_eq!(before, after, "{args:?} changed state although refused");
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() {
    require_root!();
    let c = Cluster::up("badinput", 2);
    c.sk(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.9.0.0/24",
        "app",
    ])
    .ok();
    c.service_create(&[
        "--name",
        "web",
        "--network",
        "app",
        "-p",
        "8080:80",
        "whoami",
    ])
    .ok();

    expect_refused(
        &c,
        &["network", "create", "--driver", "overlay", "app"],
        "already exists",
    );
    expect_refused(
        &c,
        &[
            "network", "create", "--driver", "overlay", "--subnet", "banana", "x",
        ],
        "invalid subnet",
    );
    expect_refused(
        &c,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.9.0.0/16",
            "x",
        ],
        "overlaps network app",
    );
    expect_refused(
        &c,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.8.0.0/24",
            "--gateway",
            "10.7.0.1",
            "x",
        ],
        "invalid gateway",
    );
    expect_refused(
        &c,
        &["network", "create", "--driver", "bridge", "x"],
        "use --driver overlay",
    );
    expect_refused(
        &c,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--opt",
            "encrypted",
            "x",
        ],
        // This host's kernel has no ESP: the refusal names the missing feature.
        "IPsec ESP (CONFIG_INET_ESP, module esp4)",
    );
    expect_refused(
        &c,
        &["service", "create", "--name", "web", "whoami"],
        "already in use",
    );
    expect_refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "x",
            "--network",
            "nope",
            "whoami",
        ],
        "network nope not found",
    );
    // Any image a registry could serve is taken; a reference that cannot be one is not.
    expect_refused(
        &c,
        &["service", "create", "--name", "x", "Not/A Reference"],
        "invalid reference format",
    );
    expect_refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "x",
            "--replicas",
            "-1",
            "whoami",
        ],
        "replicas",
    );
    expect_refused(
        &c,
        &[
            "service", "create", "--name", "x", "-p", "8080:80", "whoami",
        ],
        "already published by service web",
    );
    expect_refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "x",
            "--constraint",
            "node.hostname==node9",
            "whoami",
        ],
        "no ready node satisfies",
    );
    expect_refused(&c, &["network", "rm", "app"], "in use by service web");
    let r = c.sk(&["node", "exec", "node9", "--", "true"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no node \"node9\""), "{}", r.stderr);
    let r = c.sk(&["node", "exec", "--netns", "lb_x", "node1", "--", "true"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no sandbox \"lb_x\"") && r.stderr.contains("ingress_sbox"),
        "{}",
        r.stderr
    );

    // The API itself refuses negative replicas with a 4xx, whatever the client.
    let socket = format!("/run/swarmkit/{}/manager.sock", c.name);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", &socket, "-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"Name":"neg","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}},"Mode":{"Replicated":{"Replicas":-2}}}"#)
        .arg("http://swarmkit/v1.50/services/create")
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

#[test]
fn built_in_images_given_a_command_run_it_from_the_node_filesystem() {
    require_root!();
    let c = Cluster::up("command", 1);
    c.service_create(&["--name", "sleeper", "whoami", "sleep", "300"])
        .ok();
    let ps = c.sk(&["service", "ps", "sleeper"]).ok().stdout;
    assert!(ps.contains(" Running "), "{ps}");
    let pid = c.task_pid("sleeper", 1);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x00300\x00");
}

#[test]
fn lb_override_is_checked_against_the_kernel() {
    require_root!();
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("skipped: this kernel has IPVS");
        return;
    }
    let r = swarmkit(&["cluster", "up", "--name", "noipvs", "--lb", "ipvs"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no IPVS"), "{}", r.stderr);
    assert!(namespaces("sk-noipvs.").is_empty());
}

#[test]
fn without_root_the_error_says_so() {
    require_root!();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_swarmkit"),
            "cluster",
            "up",
            "--name",
            "nonroot",
        ])
        .output()
        .expect("setpriv");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
    assert!(namespaces("sk-nonroot.").is_empty());
}

/// A task's mount namespace holds its own hosts, resolv.conf and hostname, and none of the
/// mounts that keep the host's network namespaces (every task's and sandbox's on a netns
/// testbed).
#[test]
fn a_task_has_its_own_files_and_none_of_the_hosts_namespace_mounts() {
    require_root!();
    let c = Cluster::up("taskmounts", 1);
    c.sk(&["network", "create", "--driver", "overlay", "app"])
        .ok();
    c.service_create(&[
        "--name",
        "box",
        "--network",
        "app",
        "whoami",
        "sleep",
        "600",
    ])
    .ok();
    let out = c
        .task(
            "box.1",
            "hostname; cat /etc/hostname /etc/resolv.conf; \
             echo netns mounts: $(grep -c ' /run/netns/' /proc/self/mountinfo)",
        )
        .ok()
        .stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], lines[1], "/etc/hostname is the task's: {out}");
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    assert!(out.contains("netns mounts: 0"), "{out}");
    assert!(
        !namespaces(&c.ns_prefix()).is_empty(),
        "the host has the cluster's namespace mounts all the same"
    );
}
