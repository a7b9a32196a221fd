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
    c.sk(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "0",
        "-d",
        "whoami",
    ])
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
