//! The stock docker CLI drives a swarmkit cluster: `eval "$(swarmkit cluster env)"` and the
//! usual commands work, without warnings caused by swarmkit.

mod common;

use std::process::Command;

use common::Cluster;

struct Docker<'a> {
    c: &'a Cluster,
    host: String,
}

impl Docker<'_> {
    fn run(&self, args: &[&str]) -> common::Run {
        let out = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .output()
            .expect("the docker CLI is installed (scripts/setup)");
        let r = common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let _ = self.c;
        r
    }
}

#[test]
fn docker_cli_commands_work_against_a_swarmkit_cluster() {
    require_root!();
    let c = Cluster::up("docker", 3);
    let env = c.sk(&["cluster", "env"]).ok().stdout;
    let host = env
        .trim()
        .strip_prefix("export DOCKER_HOST=")
        .expect("cluster env prints an export line")
        .to_string();
    assert_eq!(
        host,
        format!("unix:///run/swarmkit/{}/manager.sock", c.name)
    );
    let d = Docker { c: &c, host };

    let v = d.run(&["version"]).ok();
    assert!(
        v.stdout.contains("Server: swarmkit") && v.stdout.contains("API version:      1.50"),
        "{}",
        v.stdout
    );
    let info = d.run(&["info"]).ok();
    assert!(
        info.stdout.contains("Swarm: active") && info.stdout.contains("Nodes: 3"),
        "{}",
        info.stdout
    );

    let nodes = d.run(&["node", "ls"]).ok().stdout;
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{nodes}"
    );

    d.run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.60.0.0/24",
        "front",
    ])
    .ok();
    let ls = d.run(&["network", "ls"]).ok().stdout;
    for row in [
        "bridge",
        "docker_gwbridge",
        "host",
        "ingress",
        "front",
        "none",
    ] {
        assert!(ls.contains(&format!(" {row} ")), "{row} missing: {ls}");
    }
    let inspect = d.run(&["network", "inspect", "front"]).ok().stdout;
    assert!(
        inspect.contains("\"Subnet\": \"10.60.0.0/24\""),
        "{inspect}"
    );

    let created = d.run(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "2",
        "--env",
        "GREETING=hi",
        "-p",
        "8080:80",
        "whoami",
    ]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let all = format!("{}{}", created.stdout, created.stderr);
    assert!(
        all.contains("verify: Service") && all.contains("converged"),
        "{all}"
    );
    assert!(
        !all.to_lowercase().contains("warning"),
        "swarmkit caused a warning: {all}"
    );
    let rr = d
        .run(&[
            "service",
            "create",
            "--name",
            "rr",
            "--network",
            "front",
            "--endpoint-mode",
            "dnsrr",
            "-d",
            "whoami",
        ])
        .ok();
    assert!(
        !rr.stderr.to_lowercase().contains("warning"),
        "{}",
        rr.stderr
    );

    let ls = d.run(&["service", "ls"]).ok().stdout;
    assert!(
        ls.contains("web") && ls.contains("2/2") && ls.contains("*:8080->80/tcp"),
        "{ls}"
    );
    let ps = d.run(&["service", "ps", "web"]).ok().stdout;
    assert_eq!(
        ps.lines().filter(|l| l.contains(" Running ")).count(),
        2,
        "{ps}"
    );
    let inspect = d.run(&["service", "inspect", "web"]).ok().stdout;
    assert!(
        inspect.contains("\"VirtualIPs\"") && inspect.contains("GREETING=hi"),
        "{inspect}"
    );

    let scaled = d.run(&["service", "scale", "web=3"]);
    assert_eq!(scaled.code, 0, "{}", scaled.stderr);
    let ls = d.run(&["service", "ls"]).ok().stdout;
    assert!(ls.contains("3/3"), "{ls}");
    let out = c
        .node("node2", "curl -s --max-time 5 localhost:8080")
        .ok()
        .stdout;
    assert!(out.contains("Name: web."), "{out}");

    d.run(&["service", "rm", "web", "rr"]).ok();
    d.run(&["network", "rm", "front"]).ok();
    assert!(!d.run(&["network", "ls"]).ok().stdout.contains(" front "));
    // A bad request comes back as docker prints daemon errors.
    let bad = d.run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "secret",
    ]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("Error response from daemon: encrypted overlay networks"),
        "{}",
        bad.stderr
    );
}

#[test]
fn concurrent_updates_from_many_clients_all_land() {
    require_root!();
    let c = Cluster::up("concurrent", 1);
    c.service_create(&["--name", "web", "--replicas", "0", "-d", "whoami"])
        .ok();
    let name = c.name.clone();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let name = name.clone();
            std::thread::spawn(move || {
                common::swarmkit(&[
                    "--cluster",
                    &name,
                    "service",
                    "update",
                    "-d",
                    "--env-add",
                    &format!("K{i}=v{i}"),
                    "web",
                ])
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap().ok();
    }
    let inspect = c.sk(&["service", "inspect", "web"]).ok().stdout;
    for i in 0..8 {
        assert!(
            inspect.contains(&format!("K{i}=v{i}")),
            "update {i} was lost:\n{inspect}"
        );
    }
}

/// `node ls --filter` through swarmkit's CLI and the stock docker CLI: the same keys, the same
/// rows, and the same refusal of a key dockerd does not know.
#[test]
fn node_ls_filters_alike_in_both_clis() {
    require_root!();
    let c = Cluster::up("nodefilter", 3);
    let d = Docker {
        c: &c,
        host: format!("unix:///run/swarmkit/{}/manager.sock", c.name),
    };
    c.sk(&["node", "update", "--label-add", "zone=east", "node2"])
        .ok();
    c.sk(&["node", "update", "--label-add", "zone=west", "node3"])
        .ok();
    c.sk(&["node", "update", "--availability", "drain", "node3"])
        .ok();
    let leader = c
        .sk(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"])
        .ok()
        .stdout
        .lines()
        .find_map(|l| l.strip_suffix(" Leader").map(str::to_string))
        .expect("one node is the leader");
    let mut workers: Vec<String> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != leader)
        .map(String::from)
        .collect();
    workers.sort();
    let node2_id = c
        .sk(&["node", "inspect", "--format", "{{.ID}}", "node2"])
        .ok()
        .stdout
        .trim()
        .to_string();

    let id_filter = format!("id={}", &node2_id[..8]);
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec!["node.label=zone=east"], vec!["node2".into()]),
        (
            vec!["node.label=zone"],
            vec!["node2".into(), "node3".into()],
        ),
        (
            vec!["node.label=zone", "role=worker", "availability=active"],
            workers.iter().filter(|w| *w == "node2").cloned().collect(),
        ),
        (vec!["availability=drain"], vec!["node3".into()]),
        (vec!["role=manager"], vec![leader.clone()]),
        (vec!["role=worker"], workers.clone()),
        (
            vec!["name=node2", "name=node3"],
            vec!["node2".into(), "node3".into()],
        ),
        (vec![&id_filter], vec!["node2".into()]),
        // docker's `label` is the engine's labels.
        (
            vec!["label=swarmkit.dataplane=ready"],
            vec!["node1".into(), "node2".into(), "node3".into()],
        ),
        (
            vec!["membership=accepted", "name=node1"],
            vec!["node1".into()],
        ),
        (vec!["membership=pending"], vec![]),
    ];
    for (filters, want) in cases {
        let mut sk = vec!["node", "ls", "--format", "{{.Hostname}}"];
        let mut dk = sk.clone();
        for f in &filters {
            sk.extend(["--filter", f]);
            dk.extend(["--filter", f]);
        }
        let got = |out: String| {
            let mut v: Vec<String> = out.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(got(c.sk(&sk).ok().stdout), want, "swarmkit {filters:?}");
        assert_eq!(got(d.run(&dk).ok().stdout), want, "docker {filters:?}");
    }
    // -q lists IDs of the filtered rows only.
    let q = c
        .sk(&["node", "ls", "-q", "--filter", "node.label=zone=east"])
        .ok()
        .stdout;
    assert_eq!(q.trim(), node2_id);

    for (filter, words) in [
        ("color=red", ["invalid filter 'color'", "node.label"]),
        (
            "role=boss",
            ["invalid filter 'role=boss'", "manager, worker"],
        ),
        (
            "availability=gone",
            ["invalid filter 'availability=gone'", "drain"],
        ),
    ] {
        for (who, r) in [
            ("swarmkit", c.sk(&["node", "ls", "--filter", filter])),
            ("docker", d.run(&["node", "ls", "--filter", filter])),
        ] {
            assert_ne!(r.code, 0, "{who} {filter}: {}", r.stdout);
            assert!(
                words.iter().all(|w| r.stderr.contains(w)),
                "{who} {filter}: {}",
                r.stderr
            );
            assert!(r.stdout.is_empty(), "{who} {filter}: {}", r.stdout);
        }
    }
    let r = d.run(&["node", "ls", "--filter", "color=red"]);
    assert!(
        r.stderr
            .contains("Error response from daemon: invalid filter"),
        "{}",
        r.stderr
    );
}
