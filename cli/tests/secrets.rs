//! `docker secret` and `docker config` against a swarmkit cluster, with the stock docker CLI:
//! created, listed, inspected (a secret's data never shown again), used by a service and read
//! from inside its task, sealed in the manager's store, sent only to the node that runs the
//! task, written to no disk, and refused removal while in use.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::Cluster;

/// `docker ARGS` with `input` on its stdin.
fn docker_in(c: &Cluster, args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = std::process::Command::new("timeout")
        .args(["--kill-after=5", "120", "docker"])
        .args(args)
        .env(
            "DOCKER_HOST",
            format!("unix:///run/swarmkit/{}/manager.sock", c.name),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the docker CLI is installed (scripts/setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node's plan as its agent receives it: fetched with the node's own certificate from the
/// node's namespace.
fn plan_of(c: &Cluster, node: &str) -> String {
    let d = format!("/var/lib/swarmkit/{}/nodes/{node}", c.name);
    let r = c.node(
        node,
        &format!(
            "curl -s --max-time 5 --resolve swarm-manager:2377:192.168.0.1 --cacert {d}/ca.pem \
             --cert {d}/cert.pem --key {d}/key.pem https://swarm-manager:2377/swarmkit/v1/agent/plan"
        ),
    );
    assert!(r.success(), "{}", r.stderr);
    r.stdout
}

/// Whether `needle` occurs in any file under `dir` (recursively).
fn found_under(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            hits.extend(found_under(&path, needle));
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path);
        }
    }
    hits
}

#[test]
fn secrets_and_configs_reach_only_their_tasks_and_no_disk() {
    require_root!();
    let c = Cluster::up("secrets", 2);
    let value = format!("s3cr3t-{}", c.name);
    let (code, id, err) = docker_in(&c, &["secret", "create", "db_pass", "-"], &value);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = docker_in(
        &c,
        &["config", "create", "app.conf", "-"],
        "listen = 8080\n",
    );
    assert_eq!(code, 0, "{err}");
    let ls = c.docker(&["secret", "ls", "--format", "{{.Name}}"]);
    assert_eq!(ls.stdout.trim(), "db_pass", "{}", ls.stderr);
    let inspect = c.docker(&["secret", "inspect", "db_pass"]);
    assert!(inspect.stdout.contains(id.trim()), "{}", inspect.stdout);
    assert!(!inspect.stdout.contains("Data"), "{}", inspect.stdout);
    let conf = c.docker(&["config", "inspect", "--pretty", "app.conf"]);
    assert!(conf.stdout.contains("listen = 8080"), "{}", conf.stdout);
    let (code, _, err) = docker_in(&c, &["secret", "create", "db_pass", "-"], "again");
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    let r = c.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "app",
        "--constraint",
        "node.hostname==node1",
        "--secret",
        "db_pass",
        "--secret",
        "source=db_pass,target=other,mode=0400",
        "--config",
        "source=app.conf,target=/run/app/app.conf",
        "whoami",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A config where swarmkit cannot put it is refused up front, naming the fix.
    let bad = c.docker(&[
        "service", "create", "--detach", "--name", "bad", "--config", "app.conf", "whoami",
    ]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("target under /run"), "{}", bad.stderr);
    c.eventually("app running", Duration::from_secs(30), || {
        c.running_tasks("app").len() == 1
    });

    let r = c.task(
        "app.1",
        "cat /run/secrets/db_pass; echo; stat -c '%a %U' /run/secrets/db_pass /run/secrets/other; \
         cat /run/app/app.conf; echo x > /run/secrets/db_pass 2>/dev/null && echo writable; \
         echo x > /run/app/app.conf 2>/dev/null && echo writable; \
         grep -c ' /run/secrets tmpfs ro' /proc/self/mounts",
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [value.as_str(), "444 root", "400 root", "listen = 8080", "1"],
        "{}",
        r.stderr
    );

    // Only node1, which runs the task, is sent the secret.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
    assert!(plan_of(&c, "node1").contains(&encoded));
    assert!(!plan_of(&c, "node2").contains(&encoded));
    // Sealed in the store, and on no disk of the nodes (netns nodes share the host's).
    for dir in [
        format!("/var/lib/swarmkit/{}", c.name),
        format!("/run/swarmkit/{}", c.name),
    ] {
        let hits = found_under(std::path::Path::new(&dir), value.as_bytes());
        assert!(hits.is_empty(), "the secret's value is in {hits:?}");
    }

    let rm = c.docker(&["secret", "rm", "db_pass"]);
    assert_ne!(rm.code, 0);
    assert!(rm.stderr.contains("in use"), "{}", rm.stderr);
    c.docker(&["service", "rm", "app"]);
    let rm = c.docker(&["secret", "rm", "db_pass"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    let rm = c.docker(&["config", "rm", "app.conf"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
}

/// A stack's `secrets:` and `configs:` (from files) are created with it, reach its tasks,
/// and go with `stack rm`.
#[test]
fn a_stack_brings_its_secrets_and_configs() {
    require_root!();
    let c = Cluster::up("stacksec", 1);
    let dir = std::env::temp_dir().join(format!("sktest-{}", c.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token.txt"), "tok-123").unwrap();
    std::fs::write(dir.join("web.conf"), "mode = stack\n").unwrap();
    std::fs::write(
        dir.join("stack.yml"),
        "version: \"3.8\"\nservices:\n  web:\n    image: whoami\n    secrets: [token]\n    \
         configs:\n      - source: conf\n        target: /run/web.conf\n\
         secrets:\n  token:\n    file: ./token.txt\n\
         configs:\n  conf:\n    file: ./web.conf\n",
    )
    .unwrap();
    let compose = dir.join("stack.yml");
    let r = c.docker(&["stack", "deploy", "-c", compose.to_str().unwrap(), "st"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.eventually("st_web running", Duration::from_secs(30), || {
        c.running_tasks("st_web").len() == 1
    });
    let r = c.task(
        "st_web.1",
        "cat /run/secrets/token; echo; cat /run/web.conf",
    );
    assert_eq!(r.stdout, "tok-123\nmode = stack\n", "{}", r.stderr);
    let r = c.docker(&["stack", "rm", "st"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    c.eventually("the stack's secret gone", Duration::from_secs(30), || {
        let ls = c.docker(&["secret", "ls", "-q"]);
        ls.success() && ls.stdout.trim().is_empty()
    });
    let _ = std::fs::remove_dir_all(&dir);
}
