//! The cluster's trust from the command line: join tokens printed and rotated, a client
//! certificate the stock docker CLI uses over mutual TLS (and without which the listener
//! refuses), and a root CA rotation the agents follow. The live tests need root and a
//! manager that serves JoinTokens, TLSInfo, /swarm/update and /swarmkit/v1/client-cert; the
//! others check the requests and the errors against a scripted manager, or none.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Run};

/// `export K=V` lines, as `cluster env` prints them, by K.
fn exports(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The stock docker CLI with exactly `env` pointing it somewhere, bounded by a timeout so a
/// hung handshake fails the test instead of stalling it.
fn docker(env: &HashMap<String, String>, args: &[&str]) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "60", "docker"]).args(args);
    for k in [
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env);
    Run::from(
        cmd.output()
            .expect("the docker CLI is installed (scripts/setup)"),
    )
}

fn ready_nodes(node_ls: &str) -> usize {
    node_ls.lines().filter(|l| l.contains(" Ready ")).count()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// A token's secret goes, its pin of the root (the part before the secret) stays.
fn pin(token: &str) -> &str {
    token.rsplit_once('-').expect("a dashed token").0
}

#[test]
fn join_tokens_print_and_rotate_one_role_at_a_time() {
    require_root!();
    let c = Cluster::up("jtok", 2);
    let token = |role: &str| {
        c.sk(&["cluster", "join-token", role, "-q"])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let worker = token("worker");
    let manager = token("manager");
    for t in [&worker, &manager] {
        assert!(t.starts_with("SWMTKN-1-"), "{t}");
    }
    assert_ne!(worker, manager);

    let full = c.sk(&["cluster", "join-token", "worker"]).ok().stdout;
    assert!(
        full.starts_with("To add a worker to this swarm") && full.contains(&worker),
        "{full}"
    );

    let rotated = c
        .sk(&["cluster", "join-token", "worker", "--rotate"])
        .ok()
        .stdout;
    assert!(
        rotated.starts_with("Successfully rotated worker join token.\n\n"),
        "{rotated}"
    );
    let new_worker = token("worker");
    assert_ne!(new_worker, worker);
    assert!(
        rotated.contains(&new_worker) && !rotated.contains(&worker),
        "{rotated}"
    );
    assert_eq!(pin(&new_worker), pin(&worker), "same root, new secret");
    assert_eq!(
        token("manager"),
        manager,
        "a worker rotation left the manager token"
    );

    let quiet = c
        .sk(&["cluster", "join-token", "manager", "--rotate", "-q"])
        .ok()
        .stdout;
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
    let new_manager = quiet.trim();
    assert!(new_manager.starts_with("SWMTKN-1-") && new_manager != manager);
    assert_eq!(token("manager"), new_manager);
    assert_eq!(
        token("worker"),
        new_worker,
        "a manager rotation left the worker token"
    );
}

#[test]
fn docker_cli_speaks_mutual_tls_with_the_credentials_env_tls_writes() {
    require_root!();
    let c = Cluster::up("tls", 2);
    let vars = exports(&c.sk(&["cluster", "env", "--tls"]).ok().stdout);
    let host = vars.get("DOCKER_HOST").expect("DOCKER_HOST").clone();
    assert!(host.starts_with("tcp://127.0.0.1:"), "{host}");
    assert_eq!(vars.get("DOCKER_TLS_VERIFY").map(String::as_str), Some("1"));
    let dir = PathBuf::from(vars.get("DOCKER_CERT_PATH").expect("DOCKER_CERT_PATH"));
    assert_eq!(
        dir,
        PathBuf::from(format!("/var/lib/swarmkit/{}/client", c.name))
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    for f in ["cert.pem", "ca.pem"] {
        let pem = std::fs::read_to_string(dir.join(f)).expect(f);
        assert!(pem.contains("BEGIN CERTIFICATE"), "{f}: {pem}");
    }

    docker(&vars, &["service", "ls"]).ok();
    let nodes = docker(&vars, &["node", "ls"]).ok().stdout;
    assert_eq!(ready_nodes(&nodes), 2, "{nodes}");

    let url = format!("{}/services", host.replacen("tcp://", "https://", 1));
    let ca = dir.join("ca.pem");
    let curl = |extra: &[&Path]| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(&ca);
        if let [cert, key] = extra {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        Run::from(cmd.arg(&url).output().expect("curl"))
    };
    let anonymous = curl(&[]);
    assert!(
        !anonymous.success() || anonymous.stdout != "200",
        "the listener answered a client without a certificate: {} {}",
        anonymous.code,
        anonymous.stdout
    );
    // The same request with the certificate gets through: the refusal above was for the
    // missing certificate, not a wrong address.
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let with_cert = curl(&[&cert, &key]);
    assert_eq!(with_cert.stdout, "200", "exit {}", with_cert.code);
}

#[test]
fn ca_rotation_returns_a_new_root_that_every_agent_follows() {
    require_root!();
    let c = Cluster::up("carot", 3);
    let before = c.sk(&["cluster", "ca"]).ok().stdout;
    assert!(
        before.starts_with("-----BEGIN CERTIFICATE-----"),
        "{before}"
    );

    let started = Instant::now();
    let rotated = c.sk(&["cluster", "ca", "--rotate", "-q"]).ok().stdout;
    // The command's own deadline is 120 s; it must have ended by it, not by the kit's kill.
    assert!(started.elapsed() < Duration::from_secs(125));
    assert!(
        rotated.starts_with("-----BEGIN CERTIFICATE-----"),
        "{rotated}"
    );
    assert_ne!(rotated, before);
    assert_eq!(c.sk(&["cluster", "ca"]).ok().stdout, rotated);
    assert_eq!(c.api("/swarm")["RootRotationInProgress"], false);

    let unix = exports(&c.sk(&["cluster", "env"]).ok().stdout);
    let nodes = docker(&unix, &["node", "ls"]).ok().stdout;
    assert_eq!(ready_nodes(&nodes), 3, "{nodes}");
    // Ready could be an old heartbeat's word; a task started on each node (create waits for
    // it to run) needs every agent to take orders under the new root.
    for node in ["node1", "node2", "node3"] {
        let constraint = format!("node.hostname=={node}");
        c.service_create(&[
            "--name",
            &format!("on-{node}"),
            "--constraint",
            &constraint,
            "whoami",
        ])
        .ok();
    }
}

#[test]
fn bad_input_names_the_problem_and_the_fix() {
    testkit::skip_unless!(testkit::needs_bin());
    let r = common::swarmkit(&["cluster", "join-token", "admin"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("admin") && r.stderr.contains("worker, manager"),
        "{}",
        r.stderr
    );

    let r = common::swarmkit(&["cluster", "ca", "--detach"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--rotate"), "{}", r.stderr);

    let r = common::swarmkit(&["cluster", "env", "--tls", "../etc"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("../etc"), "{}", r.stderr);

    for args in [
        &["cluster", "join-token", "worker", "sktest-nosuch"][..],
        &["cluster", "ca", "sktest-nosuch"],
        &["cluster", "env", "--tls", "sktest-nosuch"],
    ] {
        let r = common::swarmkit(args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(
            r.stderr
                .contains("is the cluster up? (swarmkit cluster up --name sktest-nosuch)"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

/// A scripted manager on /run/swarmkit/<name>/manager.sock, answering each request from a
/// function of (method, target, body), and recording what it was asked; removed on drop.
struct Scripted {
    name: String,
    dir: PathBuf,
    asked: Arc<Mutex<Vec<String>>>,
}

type Answer = (u16, String);

impl Scripted {
    fn start(tag: &str, answer: impl FnMut(&str, &str, &str) -> Answer + Send + 'static) -> Self {
        // Short: `env --tls` checks it as a cluster name (at most 24 characters).
        let name = format!("skt{}-{tag}", std::process::id() % 100000);
        let dir = PathBuf::from("/run/swarmkit").join(&name);
        std::fs::create_dir_all(&dir).expect("create run dir");
        let listener = UnixListener::bind(dir.join("manager.sock")).expect("bind socket");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let answer: Arc<Script> = Arc::new(Mutex::new(answer));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                let answer = answer.clone();
                // A connection per thread: bollard and the manager client keep theirs open.
                std::thread::spawn(move || serve(conn, &log, &answer));
            }
        });
        Scripted { name, dir, asked }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--cluster", self.name.as_str()];
        all.extend_from_slice(args);
        common::swarmkit(&all)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Script = Mutex<dyn FnMut(&str, &str, &str) -> Answer + Send>;

fn serve(conn: UnixStream, log: &Mutex<Vec<String>>, answer: &Script) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        // bollard sends /v1.NN/...; the contract's paths are without it.
        let target = match target.strip_prefix("/v1.") {
            Some(rest) => rest[rest.find('/').unwrap_or(0)..].to_string(),
            None => target,
        };
        if let Ok(mut l) = log.lock() {
            l.push(format!("{method} {target} {body}"));
        }
        let (status, reply) = match answer.lock() {
            Ok(mut f) => f(&method, &target, &body),
            Err(_) => return,
        };
        let out = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if reader.get_mut().write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

const ROOT_A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
const ROOT_B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";

/// Docker's Swarm object as the contract has it.
fn swarm(index: u64, worker: &str, root: &str, rotating: bool, force: u64) -> String {
    serde_json::json!({
        "ID": "cluster1",
        "Version": {"Index": index},
        "JoinTokens": {"Worker": worker, "Manager": "SWMTKN-1-m"},
        "TLSInfo": {"TrustRoot": root},
        "RootRotationInProgress": rotating,
        "Spec": {
            "Name": "default",
            "Dispatcher": {"HeartbeatPeriod": 500000000},
            "CAConfig": {"NodeCertExpiry": 7776000000000000u64, "ForceRotate": force},
        },
    })
    .to_string()
}

#[test]
fn join_token_rotation_sends_the_spec_back_at_its_version() {
    testkit::skip_unless!(testkit::needs_root().or_else(testkit::needs_bin));
    let rotated = Arc::new(Mutex::new(false));
    let r = rotated.clone();
    let fake = Scripted::start("jt", move |method, target, _| {
        let mut done = r.lock().expect("lock");
        match (method, target.split('?').next().unwrap_or("")) {
            ("GET", "/swarm") if *done => (200, swarm(8, "SWMTKN-1-w2", ROOT_A, false, 0)),
            ("GET", "/swarm") => (200, swarm(7, "SWMTKN-1-w1", ROOT_A, false, 0)),
            ("POST", "/swarm/update") => {
                *done = true;
                (200, String::new())
            }
            _ => (404, r#"{"message":"page not found"}"#.into()),
        }
    });
    let out = fake.run(&["cluster", "join-token", "worker", "--rotate"]);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "Successfully rotated worker join token.\n\nTo add a worker to this swarm, start its \
         agent with this join token:\n\n    SWARMKIT_JOIN_TOKEN=SWMTKN-1-w2\n\n"
    );
    let update = fake
        .asked()
        .into_iter()
        .find(|a| a.starts_with("POST /swarm/update"))
        .expect("an update");
    let (line, body) = update
        .split_once(' ')
        .map(|(_, r)| r)
        .and_then(|r| r.split_once(' '))
        .expect("target and body");
    for q in [
        "version=7",
        "rotateWorkerToken=true",
        "rotateManagerToken=false",
    ] {
        assert!(line.contains(q), "{line}");
    }
    let spec: serde_json::Value = serde_json::from_str(body).expect("a JSON spec");
    assert_eq!(spec["Name"], "default");
    assert_eq!(spec["CAConfig"]["ForceRotate"], 0);
    assert_eq!(spec["Dispatcher"]["HeartbeatPeriod"], 500000000);
}

#[test]
fn ca_rotation_bumps_force_rotate_and_waits_for_the_new_root() {
    testkit::skip_unless!(testkit::needs_root().or_else(testkit::needs_bin));
    // Polls after the update: the old root with no rotation in progress (a manager that has
    // not started yet), then in progress, then done on the new root.
    let polls = Arc::new(Mutex::new(None::<u32>));
    let p = polls.clone();
    let fake = Scripted::start("ca", move |method, target, _| {
        let mut n = p.lock().expect("lock");
        match (method, target.split('?').next().unwrap_or("")) {
            ("GET", "/swarm") => match *n {
                None => (200, swarm(3, "SWMTKN-1-w", ROOT_A, false, 4)),
                Some(k) => {
                    *n = Some(k + 1);
                    match k {
                        0 => (200, swarm(4, "SWMTKN-1-w", ROOT_A, false, 5)),
                        1 | 2 => (200, swarm(4, "SWMTKN-1-w", ROOT_A, true, 5)),
                        _ => (200, swarm(5, "SWMTKN-1-w", ROOT_B, false, 5)),
                    }
                }
            },
            ("POST", "/swarm/update") => {
                *n = Some(0);
                (200, String::new())
            }
            _ => (404, r#"{"message":"page not found"}"#.into()),
        }
    });
    let out = fake.run(&["cluster", "ca"]);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout, ROOT_A);

    let out = fake.run(&["cluster", "ca", "--rotate"]);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout, ROOT_B);
    let update = fake
        .asked()
        .into_iter()
        .find(|a| a.starts_with("POST /swarm/update"))
        .expect("an update");
    assert!(update.contains("version=3"), "{update}");
    let body = &update[update.find('{').expect("a body")..];
    let spec: serde_json::Value = serde_json::from_str(body).expect("a JSON spec");
    assert_eq!(spec["CAConfig"]["ForceRotate"], 5);
    assert_eq!(spec["CAConfig"]["NodeCertExpiry"], 7776000000000000u64);
}

#[test]
fn env_tls_writes_what_the_manager_issued_and_prints_dockers_variables() {
    testkit::skip_unless!(testkit::needs_root().or_else(testkit::needs_bin));
    let asked_for = Arc::new(Mutex::new(String::new()));
    let a = asked_for.clone();
    let fake = Scripted::start("env", move |method, target, body| match (method, target) {
        ("POST", "/swarmkit/v1/client-cert") => {
            *a.lock().expect("lock") = body.to_string();
            let reply = serde_json::json!({
                "cert_pem": "CLIENT CERT",
                "root_pem": ROOT_A,
                "docker_host": "tcp://127.0.0.1:40123",
            });
            (200, reply.to_string())
        }
        _ => (404, r#"{"message":"page not found"}"#.into()),
    });
    let state = PathBuf::from("/var/lib/swarmkit").join(&fake.name);
    let out = fake.run(&["cluster", "env", "--tls"]);
    let dir = state.join("client");
    let written = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (key, cert, ca, key_mode) = (
        written("key.pem"),
        written("cert.pem"),
        written("ca.pem"),
        dir.join("key.pem")
            .exists()
            .then(|| mode(&dir.join("key.pem"))),
    );
    let _ = std::fs::remove_dir_all(&state);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "export DOCKER_HOST=tcp://127.0.0.1:40123\nexport DOCKER_TLS_VERIFY=1\n\
             export DOCKER_CERT_PATH={}\n",
            dir.display()
        )
    );
    assert!(key.contains("BEGIN PRIVATE KEY"), "{key}");
    assert_eq!(key_mode, Some(0o600));
    assert_eq!((cert.as_str(), ca.as_str()), ("CLIENT CERT", ROOT_A));
    let request: serde_json::Value =
        serde_json::from_str(&asked_for.lock().expect("lock")).expect("a JSON request");
    assert!(
        request["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("client-")),
        "{request}"
    );
    let csr = request["csr_pem"].as_str().unwrap_or_default();
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{request}");
    assert!(!csr.contains("PRIVATE KEY"), "the key stays here");
}

#[test]
fn an_older_manager_gets_a_message_saying_what_it_lacks() {
    testkit::skip_unless!(testkit::needs_root().or_else(testkit::needs_bin));
    let fake = Scripted::start("old", |method, target, _| {
        match (method, target.split('?').next().unwrap_or("")) {
            // Today's manager: a Swarm object without the PKI's fields, no client-cert route.
            ("GET", "/swarm") => (
                200,
                r#"{"ID":"c","Version":{"Index":1},"Spec":{"Name":"default"}}"#.into(),
            ),
            _ => (404, r#"{"message":"page not found"}"#.into()),
        }
    });
    for (args, field) in [
        (&["cluster", "join-token", "worker"][..], "JoinTokens"),
        (
            &["cluster", "join-token", "manager", "--rotate"],
            "JoinTokens",
        ),
        (&["cluster", "ca", "--rotate"], "TLSInfo.TrustRoot"),
        (&["cluster", "ca"], "TLSInfo.TrustRoot"),
        (&["cluster", "env", "--tls"], "client certificates"),
    ] {
        let r = fake.run(args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(
            r.stderr.contains(field) && r.stderr.contains("up again with this swarmkit"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(
        !fake
            .asked()
            .iter()
            .any(|a| a.starts_with("POST /swarm/update")),
        "nothing sent to change a swarm that cannot say what it has"
    );
    let state = PathBuf::from("/var/lib/swarmkit").join(&fake.name);
    assert!(
        !state.join("client").exists(),
        "nothing written on a refusal"
    );
}
