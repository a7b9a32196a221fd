//! Real images from a real registry: Debian's docker-registry in the cluster's underlay (where
//! the nodes reach it, as they would a registry on their network), images built offline from
//! busybox-static and pushed with skopeo, deployed with the stock docker CLI and run under crun.
//! A stack in the voting app's shape (a web front on `frontend` with a published port, a store
//! on `backend` with a named volume, a worker on both) answers through the routing mesh; its
//! tasks run the digest pinned at deploy; a task killed inside its container is restarted; an
//! image no registry has fails its tasks with the pull's error.

mod common;

use std::time::Duration;

use common::Cluster;
use testkit::image::{Healthcheck, Layer, OciLayout};
use testkit::registry::Registry;

const REGISTRY: &str = "192.168.0.1:5000";

/// One image for the three services: busybox's httpd with a CGI per role. Each hop calls the
/// next by its service name, so a vote crosses both overlays and lands in the store's volume.
fn votekit() -> OciLayout {
    let cgi = |body: &str| format!("#!/bin/sh\necho 'Content-Type: text/plain'\necho\n{body}\n");
    OciLayout::new()
        .layer(Layer::busybox(&[
            "sh", "httpd", "wget", "cat", "echo", "sleep", "kill", "hostname", "id", "ls", "grep",
        ]))
        .layer(
            Layer::new()
                .dir("/srv", 0o755)
                .file("/srv/web/index.html", "vote here\n", 0o644)
                .file(
                    "/srv/web/cgi-bin/vote",
                    cgi("wget -qO- \"http://worker/cgi-bin/relay?$QUERY_STRING\""),
                    0o755,
                )
                .file(
                    "/srv/worker/cgi-bin/relay",
                    cgi("wget -qO- \"http://store/cgi-bin/add?$QUERY_STRING\""),
                    0o755,
                )
                .file(
                    "/srv/store/cgi-bin/add",
                    cgi("echo \"$QUERY_STRING\" >> /data/votes; echo \"stored $QUERY_STRING on $(hostname)\""),
                    0o755,
                )
                .file("/srv/store/index.html", "store\n", 0o644)
                .file("/srv/worker/index.html", "worker\n", 0o644)
                .dir("/data", 0o755),
        )
        .entrypoint(&["httpd", "-f", "-p", "80"])
        .cmd(&["-h", "/srv/web"])
        .expose("80/tcp")
        .healthcheck(Healthcheck {
            test: vec!["CMD".into(), "wget".into(), "-qO-".into(), "http://127.0.0.1/".into()],
            interval_ns: 500_000_000,
            timeout_ns: 2_000_000_000,
            retries: 3,
            start_period_ns: 0,
        })
}

const STACK: &str = "\
services:
  web:
    image: REGISTRY/votekit:1
    ports:
      - \"8080:80\"
    networks: [frontend]
    deploy:
      replicas: 2
  worker:
    image: REGISTRY/votekit:1
    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/srv/worker\"]
    networks: [frontend, backend]
  store:
    image: REGISTRY/votekit:1
    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/srv/store\"]
    networks: [backend]
    volumes:
      - votes:/data
    deploy:
      placement:
        constraints: [node.hostname == node2]
networks:
  frontend:
  backend:
volumes:
  votes:
";

fn registry_in_underlay(c: &Cluster) -> Registry {
    Registry::builder()
        .netns(&format!("{}underlay", c.ns_prefix()))
        .addr(REGISTRY.parse().unwrap())
        .start()
}

fn running(c: &Cluster, service: &str, n: usize) -> bool {
    c.tasks(service)
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .unwrap_or("")
                .starts_with("Running")
        })
        .count()
        == n
}

#[test]
fn a_stack_of_registry_images_deploys_answers_through_the_mesh_and_restarts_killed_tasks() {
    require_root!();
    if let Some(why) = testkit::registry::needs_registry() {
        eprintln!("skipped: {why}");
        return;
    }
    let c = Cluster::up_with("images", 3, &["--insecure-registry", REGISTRY]);
    let registry = registry_in_underlay(&c);
    let built = votekit().write(
        &std::env::temp_dir().join(format!("{}-votekit", c.name)),
        "1",
    );
    registry.push(&built, "votekit:1");
    let pushed = registry.inspect("votekit:1");
    let digest = pushed["Digest"].as_str().unwrap().to_string();

    let compose = std::env::temp_dir().join(format!("{}-stack.yml", c.name));
    std::fs::write(&compose, STACK.replace("REGISTRY", REGISTRY)).unwrap();
    let deploy = c.docker(&["stack", "deploy", "-c", compose.to_str().unwrap(), "vote"]);
    assert!(deploy.success(), "{}", deploy.text());
    c.eventually(
        "every task of the stack running",
        Duration::from_secs(90),
        || {
            running(&c, "vote_web", 2)
                && running(&c, "vote_worker", 1)
                && running(&c, "vote_store", 1)
        },
    );

    // Every node runs the digest pinned at deploy.
    let ps = c
        .docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Image}}",
            "vote_web",
        ])
        .ok()
        .stdout;
    assert!(ps.lines().all(|l| l.ends_with(&digest)), "{ps} vs {digest}");
    let inspect = c.api("/services/vote_web");
    let image = inspect["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(image, format!("{REGISTRY}/votekit:1@{digest}"));

    // A vote from every node, through the mesh, the web front, the worker and the store.
    for (i, node) in ["node1", "node2", "node3"].iter().enumerate() {
        let got = c
            .curl(node, &format!("http://localhost:8080/cgi-bin/vote?cast{i}"))
            .unwrap_or_else(|| panic!("no answer from the mesh on {node}"));
        assert!(got.starts_with(&format!("stored cast{i} on ")), "{got}");
    }
    // The votes are in the store's named volume, on its node.
    let store = &c.tasks("vote_store")[0];
    let node = store["Node"].as_str().unwrap().to_string();
    let host = format!("unix:///run/swarmkit/{}/nodes/{node}.sock", c.name);
    let ls = std::process::Command::new("docker")
        .args(["volume", "ls", "--format", "{{.Name}} {{.Mountpoint}}"])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    let mountpoint = ls
        .lines()
        .find_map(|l| l.strip_prefix("vote_votes "))
        .unwrap_or_else(|| panic!("no vote_votes volume on {node}: {ls}"));
    let votes = std::fs::read_to_string(format!("{mountpoint}/votes")).unwrap();
    assert_eq!(votes, "cast0\ncast1\ncast2\n");
    // docker exec on the node runs in the container: its root, its volume.
    let on_node = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &host)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (_, names) = on_node(&["ps", "--format", "{{.Names}}"]);
    let store_container = names
        .lines()
        .find(|n| n.starts_with("vote_store."))
        .unwrap_or_else(|| panic!("no store container on {node}: {names}"));
    let (code, out) = on_node(&[
        "exec",
        store_container,
        "sh",
        "-c",
        "cat /data/votes; ls /srv",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "cast0\ncast1\ncast2\nstore\nweb\nworker\n");

    // Killed inside its container (its init, from the node), the store is restarted by its
    // policy, on the same node (its constraint) and so the same volume.
    let old = store["ID"].as_str().unwrap().to_string();
    let pid = c.task_pid("vote_store", 1);
    let container_init = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .map(str::to_string)
        .expect("crun's container process");
    testkit::sigkill(container_init.parse().unwrap());
    c.eventually(
        "the store replaced and running",
        Duration::from_secs(60),
        || {
            let ts = c.tasks("vote_store");
            ts.iter().any(|t| {
                t["ID"] != old.as_str()
                    && t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
        },
    );
    let history = c
        .docker(&["service", "ps", "--no-trunc", "vote_store"])
        .ok()
        .stdout;
    assert!(history.contains("non-zero exit (137)"), "{history}");
    let got = c.curl("node1", "http://localhost:8080/cgi-bin/vote?again");
    assert!(got.is_some_and(|g| g.starts_with("stored again")));
    c.eventually(
        "the vote after the restart in the volume",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("{mountpoint}/votes"))
                .is_ok_and(|v| v.ends_with("again\n"))
        },
    );

    // A config anywhere in a registry image's container (here over the image's own page), a
    // secret at /run/secrets; both from the task's tmpfs.
    let created = std::process::Command::new("sh")
        .args(["-c", "printf 'configured page\\n' | docker config create page - && printf s3cret | docker secret create pw -"])
        .env("DOCKER_HOST", format!("unix:///run/swarmkit/{}/manager.sock", c.name))
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    c.docker(&[
        "service",
        "create",
        "--quiet",
        "--name",
        "configured",
        "--config",
        "source=page,target=/srv/web/index.html",
        "--secret",
        "pw",
        "-p",
        "8090:80",
        &format!("{REGISTRY}/votekit:1"),
    ])
    .ok();
    let task = c.tasks("configured")[0]["ID"].as_str().unwrap().to_string();
    assert_eq!(
        c.curl("node3", "http://localhost:8090/").as_deref(),
        Some("configured page\n")
    );
    let inside = c.task(
        &task,
        "cat /run/secrets/pw; grep -c ' /srv/web/index.html ' /proc/self/mountinfo",
    );
    assert_eq!(inside.stdout, "s3cret1\n", "{}", inside.text());

    // --mount from swarmkit's own CLI: a node path bound read-only, a tmpfs of a given size.
    let shared = std::env::temp_dir().join(format!("{}-shared", c.name));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the node\n").unwrap();
    c.service_create(&[
        "--name",
        "mounted",
        "--mount",
        &format!(
            "type=bind,source={},target=/host,readonly",
            shared.display()
        ),
        "--mount",
        "type=tmpfs,target=/cache,tmpfs-size=1m",
        &format!("{REGISTRY}/votekit:1"),
    ])
    .ok();
    let task = c.tasks("mounted")[0]["ID"].as_str().unwrap().to_string();
    let inside = c.task(
        &task,
        "cat /host/hello; touch /host/x 2>/dev/null || echo read-only; grep ' /cache ' /proc/mounts",
    );
    assert!(
        inside
            .stdout
            .starts_with("from the node\nread-only\ntmpfs /cache tmpfs rw,nosuid,nodev")
            && inside.stdout.contains("size=1024k"),
        "{}",
        inside.text()
    );
    let _ = std::fs::remove_dir_all(&shared);

    // --init: the node's tini bound in as docker's docker-init, the container's PID 1.
    c.docker(&[
        "service",
        "create",
        "--quiet",
        "--init",
        "--name",
        "initd",
        &format!("{REGISTRY}/votekit:1"),
    ])
    .ok();
    let task = c.tasks("initd")[0]["ID"].as_str().unwrap().to_string();
    let inside = c.task(&task, "tr '\\0' ' ' < /proc/1/cmdline");
    assert_eq!(
        inside.stdout,
        "/sbin/docker-init -- httpd -f -p 80 -h /srv/web ",
        "{}",
        inside.text()
    );

    // An image no registry has: its tasks fail with the pull's error, nothing else changes.
    let ghost = c.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "ghost",
        &format!("{REGISTRY}/nope:1"),
    ]);
    assert!(ghost.success(), "{}", ghost.text());
    c.eventually(
        "the ghost's pull error in service ps",
        Duration::from_secs(30),
        || {
            let ps = c.docker(&["service", "ps", "--no-trunc", "ghost"]).stdout;
            ps.contains("No such image") || ps.contains("not found")
        },
    );
    assert!(running(&c, "vote_web", 2));
}

/// The same on QEMU guests, whose image carries crun: a registry image's service answers
/// through the mesh from each guest, its tasks under crun inside the guest, the pinned digest
/// pulled by each guest from the registry on the cluster's underlay.
#[test]
fn registry_images_run_on_qemu_guests() {
    testkit::skip_unless!(testkit::needs_qemu());
    if let Some(why) = testkit::registry::needs_registry() {
        eprintln!("skipped: {why}");
        return;
    }
    let c = Cluster::up_with(
        "qimages",
        2,
        &["--backend", "qemu", "--insecure-registry", REGISTRY],
    );
    let registry = registry_in_underlay(&c);
    let built = votekit().write(
        &std::env::temp_dir().join(format!("{}-votekit", c.name)),
        "1",
    );
    registry.push(&built, "votekit:1");
    let digest = registry.inspect("votekit:1")["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    c.service_create(&[
        "--name",
        "web",
        "--mode",
        "global",
        "-p",
        "8080:80",
        &registry.image("votekit:1"),
    ])
    .ok();
    let inspect = c.api("/services/web");
    assert!(
        inspect["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap()
            .ends_with(&digest),
        "{inspect}"
    );
    for node in ["node1", "node2"] {
        let got = c.curl(node, "http://localhost:8080/");
        assert_eq!(got.as_deref(), Some("vote here\n"), "from {node}");
    }
    // Inside the container: its own root and PID namespace, the task's hostname.
    let task = c.tasks("web")[0]["ID"].as_str().unwrap().to_string();
    let inside = c.task(&task, "ls /srv; cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(inside.success(), "{}", inside.text());
    assert!(inside.stdout.contains("store"), "{}", inside.stdout);
    assert!(
        inside.stdout.contains("httpd -f -p 80"),
        "{}",
        inside.stdout
    );
    // docker exec on a guest's socket: the session crosses the guest's relay both ways.
    let on_node1 = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix:///run/swarmkit/{}/nodes/node1.sock", c.name),
            )
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = on_node1(&["ps", "--format", "{{.Names}}"]);
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let out = on_node1(&["exec", "-i", &name, "sh", "-c", "cat; ls /srv; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "store\nweb\nworker\n");
}
