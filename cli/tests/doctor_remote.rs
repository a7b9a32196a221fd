//! `swarmkit doctor` reaching a real Docker Swarm the remote ways (Debian's docker.io, three
//! dockerds in network namespaces; skipped with the reason where dockerd or dropbear is
//! missing): the Engine API over TLS as the docker CLI speaks it (`DOCKER_TLS_VERIFY`,
//! `DOCKER_CERT_PATH`), and nodes' kernels read over SSH from an inventory with pinned host
//! keys. Both listen on the lab's underlay only, so doctor runs inside node 1's namespace.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use testkit::docker_swarm::{DockerSwarm, Options, ssh_unavailable, unavailable};

/// `swarmkit doctor ARGS` in node `node`'s namespace, with exactly the Docker variables
/// `env` gives (none of the caller's).
fn doctor_in(
    swarm: &DockerSwarm,
    node: usize,
    env: &[(&str, &str)],
    args: &[&str],
) -> testkit::Run {
    let bin = testkit::bin().expect("the swarmkit binary");
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120", "ip", "netns", "exec"])
        .arg(&swarm.nodes()[node].netns)
        .arg(&bin)
        .arg("doctor")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("SWARMKIT_REACH")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    testkit::Run::from(cmd.output().expect("running swarmkit doctor"))
}

fn reach_all(swarm: &DockerSwarm) -> String {
    swarm.lab().reach()
}

fn json(r: &testkit::Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --format json: {e}\n{}\n{}", r.stdout, r.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn doctor_speaks_tls_to_a_docker_engine_as_the_docker_cli_does() {
    testkit::skip_unless!(unavailable());
    testkit::skip_unless!(testkit::needs_bin());
    let swarm = DockerSwarm::up_with(
        "dtls",
        3,
        &Options {
            tls: true,
            ..Options::default()
        },
    );
    let tcp = swarm.tcp_host(0).expect("a TLS endpoint");
    assert_eq!(tcp, format!("tcp://{}:2376", swarm.nodes()[0].addr));
    let certs = swarm.tls_dir().expect("a DOCKER_CERT_PATH");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(certs.join(f).is_file(), "{f} in {}", certs.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the client key is private");
    swarm.web(3, &[]);
    let reach = reach_all(&swarm);
    let args = ["--docker-host", &tcp, "--reach", &reach];

    // docker's own CLI takes the same certificates: the lab serves TLS as docker expects.
    let cli = swarm.in_node(
        1,
        &[
            "env",
            "DOCKER_TLS_VERIFY=1",
            &format!("DOCKER_CERT_PATH={}", path(&certs)),
            "docker",
            "-H",
            &tcp,
            "node",
            "ls",
            "--format",
            "{{.Hostname}}",
        ],
    );
    assert!(cli.success(), "docker --tlsverify: {}", cli.text());
    assert_eq!(cli.stdout.lines().count(), 3, "{}", cli.text());

    let start = std::time::Instant::now();
    let tls_env = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", path(&certs)),
    ];
    let r = doctor_in(&swarm, 0, &tls_env, &args);
    eprintln!("doctor over TLS in {:?}:\n{}", start.elapsed(), r.text());
    assert_eq!(r.code, 0, "a healthy swarm over TLS:\n{}", r.text());
    assert!(
        r.stdout.contains("healthy: no problem found"),
        "{}",
        r.text()
    );
    let mut json_args = args.to_vec();
    json_args.extend(["--format", "json"]);
    let v = json(&doctor_in(&swarm, 0, &tls_env, &json_args));
    assert_eq!(v["flavor"], "docker");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v:#}");

    // A CA the lab's dockerds were not issued by: doctor refuses the server's certificate
    // (and the server would refuse the client's).
    let wrong = std::env::temp_dir().join(format!("sktest-wrong-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&wrong);
    testbed::docker_lab::access::make_tls("wrong", &wrong, &[]).expect("a throwaway CA");
    let r = doctor_in(
        &swarm,
        0,
        &[
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", path(&wrong)),
        ],
        &args,
    );
    let _ = std::fs::remove_dir_all(&wrong);
    eprintln!("doctor with another CA:\n{}", r.text());
    assert_ne!(r.code, 0, "{}", r.text());
    let said = r.text().to_lowercase();
    assert!(
        said.contains("certificate") && (said.contains("unknownissuer") || said.contains("issuer")),
        "a TLS error naming the certificate's issuer:\n{}",
        r.text()
    );

    // The TLS port without DOCKER_TLS_VERIFY: plain HTTP, which dockerd turns away.
    let r = doctor_in(&swarm, 0, &[], &args);
    eprintln!("doctor without DOCKER_TLS_VERIFY:\n{}", r.text());
    assert_ne!(r.code, 0, "{}", r.text());
    assert!(
        r.text().contains("HTTP request to an HTTPS server"),
        "a clear error:\n{}",
        r.text()
    );
}

#[test]
fn doctor_reads_nodes_over_ssh_with_pinned_host_keys() {
    testkit::skip_unless!(unavailable());
    testkit::skip_unless!(ssh_unavailable());
    testkit::skip_unless!(testkit::needs_bin());
    let swarm = DockerSwarm::up_with(
        "dssh",
        3,
        &Options {
            ssh: true,
            ..Options::default()
        },
    );
    let host = |i: usize| swarm.nodes()[i].hostname.clone();
    let inventory = swarm.inventory().expect("an inventory");
    let text = std::fs::read_to_string(&inventory).unwrap();
    for n in swarm.nodes() {
        assert!(
            text.contains(&format!("name = \"{}\"", n.hostname))
                && text.contains(&format!("address = \"{}:22\"", n.addr)),
            "{text}"
        );
    }
    // The lab's authorized_keys is its own: the host's root has none of the lab's keys.
    let host_keys = std::fs::read_to_string("/root/.ssh/authorized_keys").unwrap_or_default();
    assert!(!host_keys.contains("swarm-lab"), "{host_keys}");
    swarm.web(3, &[]);

    let socket = swarm.nodes()[0].host();
    let args = [
        "--docker-host",
        socket.as_str(),
        "--inventory",
        path(&inventory),
        "--format",
        "json",
    ];
    let start = std::time::Instant::now();
    let r = doctor_in(&swarm, 0, &[], &args);
    eprintln!("doctor over SSH in {:?}:\n{}", start.elapsed(), r.stderr);
    let v = json(&r);
    assert_eq!(r.code, 0, "a healthy swarm over SSH:\n{v:#}");
    for i in 1..3 {
        let node = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host(i))
            .unwrap_or_else(|| panic!("{} listed:\n{v:#}", host(i)));
        assert_eq!(
            node["read_through"],
            format!("ssh root@{}:22", swarm.nodes()[i].addr),
            "{v:#}"
        );
    }

    // VXLAN dropped on node 2: named there, read over SSH.
    swarm
        .in_node(
            1,
            &["sh", "-c", "nft add table inet fault && nft add chain inet fault in '{ type filter hook input priority 0; }' && nft add rule inet fault in udp dport 4789 drop"],
        )
        .ok();
    let r = doctor_in(&swarm, 0, &[], &args);
    let v = json(&r);
    assert_eq!(r.code, 1, "{v:#}");
    let found = testkit::doctor_findings(&v);
    assert!(
        found.contains(&("firewall-vxlan".to_string(), host(1))),
        "firewall-vxlan on {} not named:\n{v:#}",
        host(1)
    );
    assert!(
        !found
            .iter()
            .any(|(c, n)| c == "firewall-vxlan" && n != &host(1)),
        "firewall-vxlan only on {}:\n{v:#}",
        host(1)
    );

    // An inventory whose pin for node 2 is node 3's key: doctor refuses to talk to node 2.
    let pin = |t: &str, name: &str| -> String {
        let block = t
            .split("[[host]]")
            .find(|b| b.contains(&format!("name = \"{name}\"")))
            .unwrap();
        block
            .lines()
            .find_map(|l| l.strip_prefix("host_key = "))
            .unwrap()
            .to_string()
    };
    let tampered_text = text.replace(&pin(&text, &host(1)), &pin(&text, &host(2)));
    assert_ne!(tampered_text, text);
    let tampered = swarm.dir().join("tampered.toml");
    std::fs::write(&tampered, tampered_text).unwrap();
    let r = doctor_in(
        &swarm,
        0,
        &[],
        &[
            "--docker-host",
            socket.as_str(),
            "--inventory",
            path(&tampered),
        ],
    );
    eprintln!("doctor with a wrong pin:\n{}", r.text());
    assert_ne!(r.code, 0, "{}", r.text());
    assert!(
        r.text().contains("does not match the key pinned")
            && r.text().contains(&format!("{}:22", swarm.nodes()[1].addr)),
        "a host key mismatch on node 2:\n{}",
        r.text()
    );
}

/// Over SSH, each node's sandboxes must be its own dockerd's: a stale FDB entry in node 2's
/// overlay sandbox is named on node 2. In a lab every dockerd shares the host's PID namespace,
/// so over SSH doctor must take the dockerd of the session's own network namespace, not the
/// host's oldest (node 1's).
#[test]
fn doctor_over_ssh_reads_each_nodes_own_sandboxes() {
    testkit::skip_unless!(unavailable());
    testkit::skip_unless!(ssh_unavailable());
    testkit::skip_unless!(testkit::needs_bin());
    let swarm = DockerSwarm::up_with(
        "dsshsb",
        3,
        &Options {
            ssh: true,
            ..Options::default()
        },
    );
    swarm.web(3, &[]);
    let sandbox = swarm
        .sandboxes(1)
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("1-"))
        })
        .expect("node 2 has an overlay sandbox");
    let stale = "bridge fdb add 02:42:0a:00:00:63 dev $(ip -br link show type vxlan | cut -d@ -f1 | head -n1) dst 10.231.7.99 self permanent";
    let r = Command::new("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .args(["sh", "-c", stale])
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    let inventory = swarm.inventory().unwrap();
    let socket = swarm.nodes()[0].host();
    let r = doctor_in(
        &swarm,
        0,
        &[],
        &[
            "--docker-host",
            socket.as_str(),
            "--inventory",
            path(&inventory),
            "--format",
            "json",
        ],
    );
    let v = json(&r);
    let found = testkit::doctor_findings(&v);
    let node2 = swarm.nodes()[1].hostname.clone();
    assert!(
        found.contains(&("stale-fdb".to_string(), node2.clone())),
        "stale-fdb on {node2} not named:\n{v:#}"
    );
    assert!(
        !found.iter().any(|(c, n)| c == "stale-fdb" && n != &node2),
        "stale-fdb only on {node2}:\n{v:#}"
    );
}
