//! A node's own Docker socket, as on a Swarm node: the stock docker CLI's `ps`, `inspect`,
//! `logs`, `exec` and `system df` show the tasks placed on that node as containers, with the
//! `com.docker.swarm.*` labels docker sets, and nothing of the other nodes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Cluster;

/// `docker ARGS` against `node`'s socket, as `swarmkit cluster env --node` points it.
fn docker_on(c: &Cluster, node: &str, args: &[&str]) -> (i32, String, String) {
    docker_on_with(c, node, args, None)
}

/// As [`docker_on`], with `stdin` fed to the CLI.
fn docker_on_with(
    c: &Cluster,
    node: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let env = c.sk(&["cluster", "env", "--node", node]);
    assert!(env.success(), "{}", env.stderr);
    let host = env
        .stdout
        .trim()
        .strip_prefix("export DOCKER_HOST=")
        .expect("an export line")
        .to_string();
    let mut child = Command::new("timeout")
        .args(["--kill-after=5", "60", "docker"])
        .args(args)
        .env("DOCKER_HOST", host)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_nodes_socket_shows_its_tasks_as_containers() {
    require_root!();
    let c = Cluster::up("nodedocker", 2);
    let r = c.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--hostname",
        "talk-{{.Task.Slot}}",
        "--container-label",
        "team=net",
        "--publish",
        "published=8181,target=80,mode=host",
        "whoami",
        "sh",
        "-c",
        "echo hello from $(hostname); exec sleep 600",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.eventually("both running", Duration::from_secs(30), || {
        c.running_tasks("talk").len() == 2
    });
    let mut seen = Vec::new();
    for node in ["node1", "node2"] {
        let (code, out, err) = docker_on(
            &c,
            node,
            &[
                "ps",
                "--format",
                "{{.Names}}|{{.Label \"com.docker.swarm.service.name\"}}|{{.Label \"team\"}}|{{.Status}}|{{.Ports}}",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{node} runs one of the two: {out}");
        let fields: Vec<&str> = lines[0].split('|').collect();
        assert!(fields[0].starts_with("talk."), "{fields:?}");
        assert_eq!(fields[1..3], ["talk", "net"], "{fields:?}");
        assert!(fields[3].starts_with("Up "), "{fields:?}");
        assert_eq!(fields[4], "0.0.0.0:8181->80/tcp", "{fields:?}");
        let name = fields[0].to_string();

        let (code, out, err) = docker_on(
            &c,
            node,
            &[
                "inspect",
                "--format",
                "{{.State.Running}} {{.Config.Hostname}} {{index .Config.Labels \"com.docker.swarm.node.id\"}}",
                &name,
            ],
        );
        assert_eq!(code, 0, "{err}");
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words[0], "true", "{out}");
        assert!(words[1] == "talk-1" || words[1] == "talk-2", "{out}");
        assert!(!words[2].is_empty());

        c.eventually(&format!("{name}'s logs"), Duration::from_secs(20), || {
            let (code, out, _) = docker_on(&c, node, &["logs", &name]);
            code == 0 && out.starts_with("hello from talk-")
        });
        seen.push(name);
    }
    assert_ne!(seen[0], seen[1]);

    // docker exec runs in the task, on its node: its hostname, stdout and stderr apart, its
    // exit status, stdin with -i, -e; another node's container is not this node's.
    let (code, out, err) = docker_on(
        &c,
        "node1",
        &[
            "exec",
            &seen[0],
            "sh",
            "-c",
            "echo out; echo err >&2; hostname; exit 3",
        ],
    );
    assert_eq!(code, 3, "{out} {err}");
    assert!(out.starts_with("out\ntalk-"), "{out}");
    assert_eq!(err.trim(), "err");
    let (code, out, err) = docker_on_with(
        &c,
        "node1",
        &[
            "exec",
            "-i",
            "-e",
            "GREETING=hi",
            &seen[0],
            "sh",
            "-c",
            "echo $GREETING; cat",
        ],
        Some("piped through\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hi\npiped through\n");
    let (code, _, err) = docker_on(&c, "node1", &["exec", &seen[1], "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("No such container"), "{err}");
    let (code, _, err) = docker_on(&c, "node1", &["exec", "-u", "nobody", &seen[0], "id"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not do -u yet"), "{err}");

    let (code, out, err) = docker_on(
        &c,
        "node1",
        &[
            "system",
            "df",
            "--format",
            "{{.Type}} {{.TotalCount}} {{.Active}}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "Containers 1 1"), "{out}");
    // What a node's socket does not do is refused, saying where to go.
    let (code, _, err) = docker_on(&c, "node1", &["network", "ls"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("drive the cluster through the manager"),
        "{err}"
    );
    let bad = c.sk(&["cluster", "env", "--node", "node9"]);
    assert!(!bad.success());
    assert!(bad.stderr.contains("no node node9"), "{}", bad.stderr);
}
