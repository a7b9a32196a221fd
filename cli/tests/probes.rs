//! Who may do what on the control plane, probed as an attacker would: from a worker node's
//! namespace (where any local user could run curl) and from inside a task, against the
//! manager's agent listener on the underlay (192.168.0.1:2377), over plain HTTP, over TLS
//! without a certificate, with the worker's own certificate asking for what is not its own,
//! with another cluster's certificate, with an expired one, with a removed node's one, and
//! joining with a rotated token. Every probe is refused, and the store is as it was.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Cluster;

const MANAGER: &str = "192.168.0.1:2377";

/// A node's credentials, where its agent keeps them on the host (netns nodes share the
/// host's filesystem).
fn creds(c: &Cluster, node: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/swarmkit/{}/nodes/{node}", c.name))
}

/// Copies a node's credentials aside, so that they outlive what the agent does with its own.
fn keep_creds(c: &Cluster, node: &str, tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("sk-probe-{}-{tag}", c.name));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["key.pem", "cert.pem", "ca.pem"] {
        std::fs::copy(creds(c, node).join(f), to.join(f)).unwrap();
    }
    to
}

#[derive(Clone, Copy)]
enum As<'a> {
    /// No TLS at all.
    Plain,
    /// TLS, the manager checked against this root, no client certificate.
    Anonymous(&'a Path),
    /// TLS with the key and certificate in this directory (and its ca.pem as the root).
    Holder(&'a Path),
}

/// One request from `node`'s namespace: curl's exit code and the HTTP status (0: none).
fn probe(c: &Cluster, node: &str, who: As, method: &str, path: &str, body: &str) -> (i32, u16) {
    let tls = |root: &Path| {
        format!(
            "--resolve swarm-manager:2377:192.168.0.1 --cacert {}",
            root.display()
        )
    };
    let (opts, url) = match who {
        As::Plain => (String::new(), format!("http://{MANAGER}{path}")),
        As::Anonymous(root) => (tls(root), format!("https://swarm-manager:2377{path}")),
        As::Holder(dir) => (
            format!(
                "{} --cert {d}/cert.pem --key {d}/key.pem",
                tls(&dir.join("ca.pem")),
                d = dir.display()
            ),
            format!("https://swarm-manager:2377{path}"),
        ),
    };
    let data = if body.is_empty() {
        String::new()
    } else {
        format!("-H 'Content-Type: application/json' --data-binary '{body}'")
    };
    let r = c.node(
        node,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -X {method} {opts} {data} '{url}'"),
    );
    (r.code, r.stdout.trim().parse().unwrap_or(0))
}

/// Everything a probe could have changed: services, nodes and tasks as the API shows them.
fn state(c: &Cluster) -> String {
    let nodes: Vec<_> = c
        .api("/nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["ID"].clone(),
                n["Description"]["Hostname"].clone(),
                n["Spec"].clone(),
                n["Status"]["Addr"].clone(),
            )
        })
        .collect();
    let services: Vec<_> = c
        .api("/services")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["ID"].clone(), s["Version"].clone()))
        .collect();
    let tasks: Vec<_> = c
        .api("/tasks")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["ID"].clone(),
                t["NodeID"].clone(),
                t["Status"]["State"].clone(),
            )
        })
        .collect();
    let mut nodes = nodes;
    nodes.sort_by_key(|n| n.0.to_string());
    format!("{nodes:?}\n{services:?}\n{tasks:?}")
}

fn refused(what: &str, (code, status): (i32, u16)) -> Option<String> {
    (code == 0 && (200..300).contains(&status))
        .then(|| format!("{what}: answered {status}, not refused"))
}

#[test]
fn every_probe_of_the_control_plane_from_a_worker_or_a_task_is_refused() {
    require_root!();
    let c = Cluster::up("probe", 3);
    c.service_create(&["--name", "web", "--replicas", "3", "whoami"])
        .ok();
    c.eventually("web's 3 tasks running", Duration::from_secs(30), || {
        c.running_tasks("web").len() == 3
    });
    let node1 = c
        .api("/nodes")
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Description"]["Hostname"] == "node1")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let node1_task = c
        .api_tasks("web")
        .into_iter()
        .find(|t| t["NodeID"] == node1.as_str())
        .expect("a task of web on node1")["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let worker = creds(&c, "node2");
    let root = worker.join("ca.pem");
    let swarm = c.api("/swarm");
    let old_token = swarm["JoinTokens"]["Worker"].as_str().unwrap().to_string();
    let before = state(&c);

    // What an attacker would want: the Engine API and the admin routes (a service is a root
    // command on a node; /swarm carries the join tokens; keys decrypt encrypted overlays),
    // another node's plan, registering as another node, reporting and logging for its task.
    let create = r#"{"Name":"evil","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#;
    let admin: &[(&str, &str, &str)] = &[
        ("GET", "/services", ""),
        ("POST", "/services/create", create),
        ("GET", "/v1.50/nodes", ""),
        ("GET", "/swarm", ""),
        ("POST", "/swarm/update?rotateWorkerToken=true", "{}"),
        (
            "POST",
            "/swarmkit/v1/client-cert",
            r#"{"name":"x","csr_pem":"x"}"#,
        ),
        ("GET", "/swarmkit/v1/agents", ""),
        ("GET", &format!("/swarmkit/v1/agents/{node1}/plan")[..], ""),
    ];
    let register_as_node1 =
        r#"{"hostname":"node1","addr":"192.168.0.66","lb_driver":"nftables","kernel":"x"}"#;
    let report_node1 = format!(
        r#"{{"applied_version":null,"tasks":[{{"id":"{node1_task}","state":"failed","message":"probe","err":"probe","pid":1,"exit_code":1}}]}}"#
    );
    let logs_node1 = format!(
        r#"{{"records":[{{"task_id":"{node1_task}","stream":1,"time":"2026-01-01T00:00:00Z","line":"PROBE-MARKER"}}]}}"#
    );
    let agent: &[(&str, &str, &str)] = &[
        ("GET", "/swarmkit/v1/agent/plan", ""),
        ("POST", "/swarmkit/v1/agent/register", register_as_node1),
        ("POST", "/swarmkit/v1/agent/report", &report_node1),
        ("POST", "/swarmkit/v1/agent/logs", &logs_node1),
        ("POST", "/swarmkit/v1/agent/renew", r#"{"csr_pem":"x"}"#),
    ];

    let mut failures = Vec::new();
    let mut check = |what: String, r: (i32, u16)| {
        eprintln!("{what:<70} curl {} HTTP {}", r.0, r.1);
        failures.extend(refused(&what, r));
    };
    for (m, p, b) in admin.iter().chain(agent) {
        check(
            format!("plain {m} {p}"),
            probe(&c, "node2", As::Plain, m, p, b),
        );
        check(
            format!("no certificate {m} {p}"),
            probe(&c, "node2", As::Anonymous(&root), m, p, b),
        );
    }
    for (m, p, b) in admin {
        check(
            format!("worker certificate {m} {p}"),
            probe(&c, "node2", As::Holder(&worker), m, p, b),
        );
    }
    // The worker's own channel serves it, but only as itself.
    check(
        "worker registers as node1".into(),
        probe(
            &c,
            "node2",
            As::Holder(&worker),
            "POST",
            "/swarmkit/v1/agent/register",
            register_as_node1,
        ),
    );
    // A report or log push naming another node's task is taken and ignored (the agent of a
    // node that joined anew may still report what it adopted): the state check below and
    // the logs check prove nothing of it landed.
    probe(
        &c,
        "node2",
        As::Holder(&worker),
        "POST",
        "/swarmkit/v1/agent/report",
        &report_node1,
    );
    probe(
        &c,
        "node2",
        As::Holder(&worker),
        "POST",
        "/swarmkit/v1/agent/logs",
        &logs_node1,
    );

    // Another cluster's node: its certificate chains to a root this manager does not trust.
    let other = Cluster::up("probe-other", 1);
    let foreign = keep_creds(&other, "node1", "foreign");
    // Checking the manager against our root, so that the refusal is the manager's.
    std::fs::copy(&root, foreign.join("ca.pem")).unwrap();
    check(
        "another cluster's certificate GET plan".into(),
        probe(
            &c,
            "node2",
            As::Holder(&foreign),
            "GET",
            "/swarmkit/v1/agent/plan",
            "",
        ),
    );
    drop(other);

    // Joining: a malformed token, another cluster's, and after a rotation the old one.
    let join = |token: &str, host: &str| {
        let (_key, csr) = cluster::pki::ca::new_key_and_request().unwrap();
        serde_json::json!({"token": token, "csr_pem": csr,
            "node": {"hostname": host, "addr": "192.168.0.66", "lb_driver": "nftables", "kernel": "x"}})
        .to_string()
    };
    check(
        "join with a made-up token".into(),
        probe(
            &c,
            "node2",
            As::Anonymous(&root),
            "POST",
            "/swarmkit/v1/agent/join",
            &join("SWMTKN-1-abc-def", "evil"),
        ),
    );
    // Rotated as a user would (POST /swarm/update with rotateWorkerToken, as docker's does).
    c.sk(&["cluster", "join-token", "worker", "--rotate", "-q"])
        .ok();
    assert_ne!(
        c.api("/swarm")["JoinTokens"]["Worker"].as_str().unwrap(),
        old_token
    );
    check(
        "join with the rotated-out token".into(),
        probe(
            &c,
            "node2",
            As::Anonymous(&root),
            "POST",
            "/swarmkit/v1/agent/join",
            &join(&old_token, "evil"),
        ),
    );

    // From inside a task: no route to the manager at all, or the same refusals.
    let task = c
        .running_tasks("web")
        .into_iter()
        .find(|t| t.node == "node2")
        .expect("a task of web on node2");
    for url in [
        format!("http://{MANAGER}/services"),
        format!("https://{MANAGER}/services"),
    ] {
        let r = c.task(
            &task.id,
            &format!("curl -sk -o /dev/null -w '%{{http_code}}' --max-time 3 {url}"),
        );
        check(
            format!("from a task {url}"),
            (r.code, r.stdout.trim().parse().unwrap_or(0)),
        );
    }

    // Nothing any probe sent changed a thing.
    assert_eq!(state(&c), before, "the store changed under the probes");
    let node1_task_state = c.api(&format!("/tasks/{node1_task}"))["Status"]["State"].clone();
    assert_eq!(
        node1_task_state, "running",
        "a worker's report moved node1's task"
    );

    // The clients' TLS listener (loopback, on the manager's machine) serves the Engine API,
    // but a worker's certificate gets docker's answer, and no certificate no connection.
    let env = c.sk(&["cluster", "env", "--tls"]).ok().stdout;
    let host = env
        .lines()
        .find_map(|l| l.strip_prefix("export DOCKER_HOST=tcp://"))
        .expect("env --tls prints DOCKER_HOST")
        .trim()
        .to_string();
    let client = |cert: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--max-time", "10", "--cacert"])
            .arg(&root)
            .args(cert)
            .arg(format!("https://{host}/services"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let cert = worker.join("cert.pem");
    let key = worker.join("key.pem");
    let (code, out) = client(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(
        code == 0 && out.ends_with("403") && out.contains("not a swarm manager"),
        "a worker's certificate on the clients' listener: {code} {out}"
    );
    let (code, out) = client(&[]);
    assert_ne!(code, 0, "no certificate on the clients' listener: {out}");

    // A removed node's certificate is refused at once.
    let node3 = keep_creds(&c, "node3", "removed");
    c.sk(&["node", "kill", "node3"]).ok();
    c.eventually("node3 down", Duration::from_secs(20), || {
        c.api("/nodes")
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["Description"]["Hostname"] == "node3" && n["Status"]["State"] == "down")
    });
    c.sk(&["node", "rm", "node3"]).ok();
    check(
        "removed node's certificate GET plan".into(),
        probe(
            &c,
            "node2",
            As::Holder(&node3),
            "GET",
            "/swarmkit/v1/agent/plan",
            "",
        ),
    );
    let logs = c.sk(&["service", "logs", "web"]);
    assert!(
        !logs.stdout.contains("PROBE-MARKER"),
        "a worker wrote into another node's task's logs"
    );
    let _ = std::fs::remove_dir_all(&node3);
    let _ = std::fs::remove_dir_all(&foreign);
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
}

/// Certificates expire: an agent that was down past its certificate's life holds an expired
/// one, which the manager refuses in the handshake; started again, the agent joins anew with
/// the token and the node is back.
#[test]
fn an_expired_certificate_is_refused_and_its_agent_joins_again() {
    require_root!();
    let c = Cluster::up_with_env("expiry", 2, &[], &[("SWARMKIT_CERT_EXPIRY_SECS", "10")]);
    c.eventually("node2 ready", Duration::from_secs(20), || {
        c.sk(&["node", "ls"])
            .stdout
            .lines()
            .filter(|l| l.contains("Ready"))
            .count()
            == 2
    });
    c.sk(&["node", "kill", "node2"]).ok();
    let kept = keep_creds(&c, "node2", "expired");
    let not_after = cluster::pki::identity::Identity::from_pem(
        &std::fs::read_to_string(kept.join("cert.pem")).unwrap(),
    )
    .unwrap()
    .not_after;
    // The certificate lives 10 s: wait for the clock to pass its end, then a little.
    testkit::eventually_true(
        "node2's certificate to expire",
        Duration::from_secs(20),
        || chrono::Utc::now() > not_after + chrono::Duration::seconds(1),
    );
    let r = probe(
        &c,
        "node1",
        As::Holder(&kept),
        "GET",
        "/swarmkit/v1/agent/plan",
        "",
    );
    let _ = std::fs::remove_dir_all(&kept);
    assert!(refused("expired certificate", r).is_none(), "{r:?}");
    c.sk(&["node", "start", "node2"]).ok();
    c.eventually("node2 ready again", Duration::from_secs(30), || {
        c.sk(&["node", "ls"])
            .stdout
            .lines()
            .any(|l| l.contains("node2") && l.contains("Ready"))
    });
}
