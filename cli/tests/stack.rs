//! Compose stacks and logs with the stock docker CLI: `docker stack deploy` of three services on
//! two networks, the app reaching `db` by its short name, the routing mesh, a second deploy
//! that updates, `stack rm` leaving only what was there before, and `docker service logs -f`
//! following a task's output live.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_string).collect()
}

const COMPOSE: &str = "\
services:
  web:
    image: whoami
    ports:
      - \"8080:80\"
    networks: [front]
    deploy:
      replicas: REPLICAS
  app:
    image: whoami
    networks: [front, back]
  db:
    image: postgres
    networks: [back]
networks:
  front:
  back:
";

/// The builtin postgres answers a TLS request with "N", as a server without TLS does: a real
/// exchange with it, by the name given.
const PG_PROBE: &str = "bash -c \"exec 3<>/dev/tcp/db/5432 && printf '\\000\\000\\000\\010\\004\\322\\026\\057' >&3 && head -c1 <&3\"";

#[test]
fn compose_stack_deploys_resolves_aliases_updates_and_is_removed_cleanly() {
    require_root!();
    let c = Cluster::up("stack", 3);
    let dir = std::env::temp_dir().join(format!("{}-compose", c.name));
    std::fs::create_dir_all(&dir).unwrap();
    let compose = dir.join("compose.yml");
    let compose_path = compose.to_string_lossy().into_owned();

    let services_before = c.docker(&["service", "ls", "-q"]).ok().stdout;
    let networks_before = lines(
        &c.docker(&["network", "ls", "--format", "{{.ID}} {{.Name}}"])
            .ok()
            .stdout,
    );
    // Each node's ingress sandbox comes with the node's first plan; wait for all of them.
    c.eventually(
        "every node's ingress sandbox",
        Duration::from_secs(30),
        || {
            common::namespaces(&c.ns_prefix())
                .iter()
                .filter(|n| n.ends_with("ingress_sbox"))
                .count()
                == 3
        },
    );
    let namespaces_before: BTreeSet<String> =
        common::namespaces(&c.ns_prefix()).into_iter().collect();

    std::fs::write(&compose, COMPOSE.replace("REPLICAS", "1")).unwrap();
    let deploy = c
        .docker(&["stack", "deploy", "-c", &compose_path, "demo"])
        .ok();
    for made in [
        "Creating network demo_front",
        "Creating network demo_back",
        "Creating service demo_web",
        "Creating service demo_app",
        "Creating service demo_db",
    ] {
        assert!(deploy.stdout.contains(made), "{}", deploy.stdout);
    }
    let ls = c.docker(&["stack", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["demo", "3"]),
        "{ls}"
    );
    let services = c
        .docker(&["stack", "services", "demo", "--format", "{{.Name}}"])
        .ok()
        .stdout;
    assert_eq!(lines(&services), lines("demo_app\ndemo_db\ndemo_web\n"));
    // How the CLI finds a stack's parts: label filters on services and networks.
    let label = "label=com.docker.stack.namespace=demo";
    let by_label = c
        .docker(&["service", "ls", "--filter", label, "-q"])
        .ok()
        .stdout;
    assert_eq!(by_label.lines().count(), 3, "{by_label}");
    let nets = c
        .docker(&["network", "ls", "--filter", label, "--format", "{{.Name}}"])
        .ok()
        .stdout;
    assert_eq!(lines(&nets), lines("demo_back\ndemo_front\n"));

    c.eventually(
        "every task of the stack running",
        Duration::from_secs(60),
        || {
            let ps = c.docker(&[
                "stack",
                "ps",
                "demo",
                "--format",
                "{{.Name}} {{.CurrentState}}",
            ]);
            ps.code == 0
                && ps
                    .stdout
                    .lines()
                    .filter(|l| l.contains(" Running "))
                    .count()
                    == 3
        },
    );

    // Inside the app: `db` (the compose alias on demo_back) is demo_db's VIP on that network,
    // and a real TCP exchange with postgres by that name works.
    let back_id = c
        .docker(&["network", "inspect", "demo_back", "--format", "{{.Id}}"])
        .ok()
        .stdout;
    let vips: Vec<serde_json::Value> = serde_json::from_str(
        &c.docker(&[
            "service",
            "inspect",
            "demo_db",
            "--format",
            "{{json .Endpoint.VirtualIPs}}",
        ])
        .ok()
        .stdout,
    )
    .expect("VirtualIPs JSON");
    let vip = vips
        .iter()
        .find(|v| v["NetworkID"] == back_id.trim())
        .and_then(|v| v["Addr"].as_str())
        .and_then(|a| a.split('/').next())
        .expect("a VIP on demo_back")
        .to_string();
    assert_eq!(
        c.task("demo_app.1", "dig +short db").ok().stdout.trim(),
        vip
    );
    let tasks_db = c.task("demo_app.1", "dig +short tasks.db").ok().stdout;
    assert_eq!(tasks_db.lines().count(), 1, "{tasks_db}");
    assert_ne!(tasks_db.trim(), vip);
    assert_eq!(c.task("demo_app.1", PG_PROBE).ok().stdout, "N");
    // The alias belongs to demo_back: web, on demo_front only, does not see it.
    assert_eq!(c.task("demo_web.1", "dig +short db").ok().stdout.trim(), "");
    assert_eq!(
        c.task("demo_web.1", "dig +short demo_app")
            .ok()
            .stdout
            .trim()
            .split('.')
            .count(),
        4
    );

    // The routing mesh: the published port answers on every node.
    for node in ["node1", "node2", "node3"] {
        let out = c
            .node(node, "curl -s --max-time 5 localhost:8080")
            .ok()
            .stdout;
        assert!(out.contains("Name: demo_web.1."), "{node}: {out}");
    }

    // A second deploy updates what changed.
    std::fs::write(&compose, COMPOSE.replace("REPLICAS", "2")).unwrap();
    let again = c
        .docker(&["stack", "deploy", "-c", &compose_path, "demo"])
        .ok();
    assert!(
        again.stdout.contains("Updating service demo_web"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("Creating"), "{}", again.stdout);
    c.eventually("demo_web at 2 replicas", Duration::from_secs(60), || {
        let ls = c.docker(&[
            "service",
            "ls",
            "--filter",
            "name=demo_web",
            "--format",
            "{{.Replicas}}",
        ]);
        ls.stdout.trim() == "2/2"
    });
    let answers: BTreeSet<String> = (0..6)
        .map(|_| {
            c.node("node1", "curl -s --max-time 5 localhost:8080")
                .ok()
                .stdout
        })
        .filter_map(|o| {
            o.lines()
                .find(|l| l.starts_with("Name: "))
                .map(String::from)
        })
        .collect();
    assert_eq!(
        answers.len(),
        2,
        "both web replicas answer through the mesh: {answers:?}"
    );

    // stack rm leaves exactly what was there before: services, networks and every namespace.
    let rm = c.docker(&["stack", "rm", "demo"]).ok();
    assert!(
        rm.stdout.contains("Removing network demo_back"),
        "{}",
        rm.stdout
    );
    assert_eq!(
        c.docker(&["service", "ls", "-q"]).ok().stdout,
        services_before
    );
    assert_eq!(
        lines(
            &c.docker(&["network", "ls", "--format", "{{.ID}} {{.Name}}"])
                .ok()
                .stdout
        ),
        networks_before
    );
    c.eventually(
        "the stack's namespaces gone from every node",
        Duration::from_secs(60),
        || {
            common::namespaces(&c.ns_prefix())
                .into_iter()
                .collect::<BTreeSet<_>>()
                == namespaces_before
        },
    );
    let nothing = c.docker(&["stack", "rm", "demo"]);
    assert!(
        format!("{}{}", nothing.stdout, nothing.stderr).contains("Nothing found in stack: demo"),
        "{}{}",
        nothing.stdout,
        nothing.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docker_service_logs_follows_output_live() {
    require_root!();
    let c = Cluster::up("logs", 2);
    c.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "ticker",
        "whoami",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; echo \"oops $i\" >&2; sleep 0.2; done",
    ])
    .ok();
    c.eventually("the first lines", Duration::from_secs(60), || {
        c.docker(&["service", "logs", "ticker"])
            .stdout
            .contains("tick 3")
    });
    let tick = |line: &str| -> Option<u64> {
        line.rsplit_once("| tick ")
            .and_then(|(_, n)| n.trim().parse().ok())
    };
    let before: Vec<u64> = c
        .docker(&["service", "logs", "ticker"])
        .ok()
        .stdout
        .lines()
        .filter_map(tick)
        .collect();
    let newest_before = *before.iter().max().expect("some ticks");
    // Each line names its task as docker does, and stderr stays stderr.
    // --tail counts the task's lines of both streams, as docker's log files do.
    let once = c.docker(&["service", "logs", "--tail", "4", "ticker"]).ok();
    let (out, err) = (once.stdout.lines().count(), once.stderr.lines().count());
    assert!(
        out > 0 && err > 0 && out + err == 4,
        "{}{}",
        once.stdout,
        once.stderr
    );
    assert!(
        once.stdout
            .lines()
            .all(|l| l.starts_with("ticker.1.") && l.contains("@node") && l.contains("| tick ")),
        "{}",
        once.stdout
    );
    assert!(
        once.stderr.lines().all(|l| l.contains("| oops ")),
        "{}",
        once.stderr
    );

    let mut follow = Command::new("docker")
        .args(["service", "logs", "-f", "--tail", "0", "ticker"])
        .env(
            "DOCKER_HOST",
            format!("unix:///run/swarmkit/{}/manager.sock", c.name),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker service logs -f");
    let out = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(30).saturating_sub(started.elapsed())) {
            Ok((at, line)) => seen.push((
                at,
                tick(&line).unwrap_or_else(|| panic!("not a tick: {line}")),
            )),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.len(), 5, "five lines followed within 30 s: {seen:?}");
    // Live: only lines printed after the follow began, consecutive, and arriving over time.
    assert!(seen[0].1 > newest_before, "{seen:?} after {newest_before}");
    assert!(seen.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{seen:?}");
    assert!(seen[4].0 > seen[0].0, "{seen:?}");
}

/// A follower started before a task exists gets its output too: `service logs -f`, through
/// swarmkit's CLI and the stock docker CLI, after a scale-up from 1 to 2 replicas.
#[test]
fn service_logs_follow_takes_in_tasks_started_later() {
    require_root!();
    let c = Cluster::up("logscale", 2);
    c.service_create(&[
        "--name",
        "ticker",
        "whoami",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
    ])
    .ok();
    let follow = |program: &str, env: &[(&str, String)], args: &[&str]| {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("a follower starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (Follower(child), rx)
    };
    let sock = format!("unix:///run/swarmkit/{}/manager.sock", c.name);
    let followers = [
        (
            "swarmkit",
            follow(
                env!("CARGO_BIN_EXE_swarmkit"),
                &[],
                &["--cluster", &c.name, "service", "logs", "-f", "ticker"],
            ),
        ),
        (
            "docker",
            follow(
                "docker",
                &[("DOCKER_HOST", sock)],
                &["service", "logs", "-f", "ticker"],
            ),
        ),
    ];
    // Both follow the first task before the second exists.
    let wait_for = |who: &str, rx: &std::sync::mpsc::Receiver<String>, slot: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(slot) && line.contains("| tick ") => return line,
                Ok(_) => {}
                Err(e) => panic!("{who}: no line of {slot} within 60 s ({e})"),
            }
        }
    };
    for (who, (_, rx)) in &followers {
        wait_for(who, rx, "ticker.1.");
    }
    c.sk(&["service", "scale", "ticker=2"]).ok();
    for (who, (_, rx)) in &followers {
        let line = wait_for(who, rx, "ticker.2.");
        assert!(line.contains("@node"), "{who}: {line}");
    }
}

/// A `logs -f` process, ended however the test ends.
struct Follower(std::process::Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A task starts with its standard streams and nothing else of its agent's: no netlink
/// socket, namespace or other task's descriptor leaks into it.
#[test]
fn a_task_inherits_only_its_standard_streams() {
    require_root!();
    let c = Cluster::up("fds", 1);
    // A busy agent first: a second task's namespace has its own load balancer context.
    c.service_create(&["--name", "web", "whoami"]).ok();
    c.service_create(&[
        "--detach",
        "--name",
        "fds",
        "--restart-condition",
        "none",
        "whoami",
        "sh",
        "-c",
        "exec ls -1 /proc/self/fd",
    ])
    .ok();
    let mut listed = BTreeSet::new();
    c.eventually(
        "the task's descriptors listed",
        Duration::from_secs(30),
        || {
            listed = c
                .sk(&["service", "logs", "--raw", "fds"])
                .ok()
                .stdout
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            listed.len() >= 4
        },
    );
    // 3 is the directory ls reads.
    let expected: BTreeSet<String> = ["0", "1", "2", "3"].map(String::from).into();
    assert_eq!(listed, expected, "the task inherited more than its streams");
}
