//! Runs the swarmkit binary against a canned Docker Engine API served on the cluster's
//! manager socket, so parsing, requests and rendering are checked without a cluster.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Canned answers: (method, path without version and query) -> (status, body).
type Routes = Vec<(&'static str, &'static str, u16, String)>;

/// A fake manager on /run/swarmkit/<name>/manager.sock, removed on drop.
struct FakeManager {
    name: String,
    dir: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeManager {
    fn start(tag: &str, routes: Routes) -> FakeManager {
        let name = format!("sktest-cli-{}-{tag}", std::process::id());
        let dir = PathBuf::from("/run/swarmkit").join(&name);
        std::fs::create_dir_all(&dir).expect("create run dir");
        let listener = UnixListener::bind(dir.join("manager.sock")).expect("bind socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let Some((line, body)) = read_request(&mut conn) else {
                    continue;
                };
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let target = parts.next().unwrap_or("").to_string();
                let path = target.split('?').next().unwrap_or("");
                // Drop the /v1.NN version prefix bollard sends.
                let path = match path.strip_prefix("/v1.") {
                    Some(rest) => &rest[rest.find('/').unwrap_or(0)..],
                    None => path,
                };
                if let Ok(mut l) = log.lock() {
                    l.push(format!("{method} {target} {body}"));
                }
                let (status, body) = routes
                    .iter()
                    .find(|(m, p, _, _)| *m == method && *p == path)
                    .map(|(_, _, s, b)| (*s, b.clone()))
                    .unwrap_or((404, r#"{"message":"page not found"}"#.into()));
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        FakeManager {
            name,
            dir,
            requests,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_swarmkit"))
            .arg("--cluster")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run swarmkit")
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FakeManager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_request(conn: &mut std::os::unix::net::UnixStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(conn);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut len = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
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
    reader.read_exact(&mut body).ok()?;
    Some((
        first.trim_end().to_string(),
        String::from_utf8_lossy(&body).into(),
    ))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into()
}

fn swarmkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmkit"))
        .args(args)
        .env_remove("SWARMKIT_CLUSTER")
        .output()
        .expect("run swarmkit")
}

#[test]
fn help_hides_daemon_entry_points() {
    let out = swarmkit(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("service"), "{text}");
    assert!(!text.contains("__manager"), "{text}");
}

#[test]
fn missing_manager_says_how_to_start_it() {
    let out = swarmkit(&["--cluster", "sktest-nosuch", "service", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        "Error: cannot reach the manager of cluster \"sktest-nosuch\" at \
         /run/swarmkit/sktest-nosuch/manager.sock: is the cluster up? \
         (swarmkit cluster up --name sktest-nosuch)"
    );
}

#[test]
fn bad_flags_name_the_flag_and_the_fix() {
    let out = swarmkit(&["service", "create", "--replicas", "-1", "img"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--replicas") && err.contains("cannot be negative"),
        "{err}"
    );

    let out = swarmkit(&["service", "create", "-p", "80:http", "img"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--publish") && err.contains("8080:80"),
        "{err}"
    );

    let out = swarmkit(&["service", "scale", "web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("SERVICE=REPLICAS"));
}

#[test]
fn cluster_env_prints_docker_host() {
    let out = swarmkit(&["cluster", "env", "demo"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "export DOCKER_HOST=unix:///run/swarmkit/demo/manager.sock\n"
    );
}

const SEARCH: &str = r#"{"ID":"x1y2z3a4b5c6d7e8f9g0h1i2j","Version":{"Index":12},
  "Spec":{"Name":"search","Mode":{"Replicated":{"Replicas":3}},
          "TaskTemplate":{"ContainerSpec":{"Image":"elasticsearch:7"}}},
  "Endpoint":{"Ports":[{"Protocol":"tcp","TargetPort":9200,"PublishedPort":9200,"PublishMode":"ingress"}],
              "VirtualIPs":[{"NetworkID":"netid","Addr":"10.0.0.2/24"}]},
  "ServiceStatus":{"RunningTasks":3,"DesiredTasks":3}}"#;

const PSQL: &str = r#"{"ID":"a1b2c3d4e5f6g7h8i9j0k1l2m","Version":{"Index":7},
  "Spec":{"Name":"psql","Mode":{"Replicated":{"Replicas":1}},
          "TaskTemplate":{"ContainerSpec":{"Image":"postgres:latest"}}},
  "Endpoint":{},
  "ServiceStatus":{"RunningTasks":1,"DesiredTasks":1}}"#;

#[test]
fn service_ls_renders_like_docker() {
    let fake = FakeManager::start(
        "ls",
        vec![("GET", "/services", 200, format!("[{SEARCH},{PSQL}]"))],
    );
    let out = fake.run(&["service", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ID             NAME      MODE         REPLICAS   IMAGE             PORTS\n\
         a1b2c3d4e5f6   psql      replicated   1/1        postgres:latest   \n\
         x1y2z3a4b5c6   search    replicated   3/3        elasticsearch:7   *:9200->9200/tcp\n"
    );
    assert!(fake.requests()[0].contains("status=true"));

    let out = fake.run(&["service", "ls", "--format", "json"]);
    let first = stdout(&out).lines().next().unwrap_or_default().to_string();
    assert_eq!(
        first,
        r#"{"ID":"a1b2c3d4e5f6","Image":"postgres:latest","Mode":"replicated","Name":"psql","Ports":"","Replicas":"1/1"}"#
    );
}

#[test]
fn daemon_errors_print_like_docker() {
    let fake = FakeManager::start(
        "err",
        vec![(
            "POST",
            "/services/create",
            400,
            r#"{"message":"network nope not found"}"#.into(),
        )],
    );
    let out = fake.run(&["service", "create", "--name", "web", "img"]);
    assert_eq!(out.status.code(), Some(1));
    // Before it, docker's warning that `img` has no digest to pin (the fake has no registry).
    assert!(
        stderr(&out).ends_with("\n\nError response from daemon: network nope not found\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn create_waits_for_convergence() {
    let service = r#"{"ID":"svcid0000000000000000000","Version":{"Index":3},
        "Spec":{"Name":"web","Mode":{"Replicated":{"Replicas":2}},
                "TaskTemplate":{"ContainerSpec":{"Image":"whoami","Args":["-v"]}}}}"#;
    let task = |slot: u32| {
        format!(
            r#"{{"ID":"task{slot}","ServiceID":"svcid0000000000000000000","Slot":{slot},
            "DesiredState":"running","Spec":{{"ContainerSpec":{{"Image":"whoami","Args":["-v"]}}}},
            "Status":{{"State":"running","Timestamp":"2024-01-01T00:00:00Z"}}}}"#
        )
    };
    let fake = FakeManager::start(
        "create",
        vec![
            (
                "POST",
                "/services/create",
                201,
                r#"{"ID":"svcid0000000000000000000"}"#.into(),
            ),
            (
                "GET",
                "/services/svcid0000000000000000000",
                200,
                service.into(),
            ),
            ("GET", "/tasks", 200, format!("[{},{}]", task(1), task(2))),
        ],
    );
    let out = fake.run(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "-e",
        "A=1",
        "whoami",
        "-v",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bar = "[==================================================>]";
    assert_eq!(
        stdout(&out),
        format!(
            "svcid0000000000000000000\n\
             overall progress: 2 out of 2 tasks\n\
             1/2: running   {bar}\n\
             2/2: running   {bar}\n\
             verify: Service converged\n"
        )
    );
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.starts_with("POST"))
        .unwrap_or_default();
    let body: serde_json::Value =
        serde_json::from_str(create.splitn(3, ' ').nth(2).unwrap_or("{}")).unwrap_or_default();
    assert_eq!(body["Name"], "web");
    assert_eq!(body["Mode"]["Replicated"]["Replicas"], 2);
    assert_eq!(body["TaskTemplate"]["ContainerSpec"]["Args"][0], "-v");
    assert_eq!(body["TaskTemplate"]["ContainerSpec"]["Env"][0], "A=1");
    assert_eq!(body["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    assert_eq!(body["EndpointSpec"]["Ports"][0]["TargetPort"], 80);
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.starts_with("GET") && r.contains("/tasks?filters="))
    );
}

#[test]
fn service_inspect_prints_docker_shaped_json() {
    let fake = FakeManager::start(
        "inspect",
        vec![("GET", "/services/search", 200, SEARCH.into())],
    );
    let out = fake.run(&["service", "inspect", "search", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(
            "            \"VirtualIPs\": [\n                {\n                    \"NetworkID\": \"netid\",\n                    \"Addr\": \"10.0.0.2/24\"\n                }\n            ]"
        ),
        "{text}"
    );
    assert!(
        text.starts_with("[\n    {\n        \"ID\": \"x1y2z3a4b5c6d7e8f9g0h1i2j\","),
        "{text}"
    );
    assert_eq!(stderr(&out), "Error response from daemon: page not found\n");
}

#[test]
fn node_ls_filter_is_sent_as_docker_sends_it() {
    let node = r#"{"ID":"n2id00000000000000000000","Spec":{"Role":"worker","Availability":"active"},
      "Description":{"Hostname":"node2"},"Status":{"State":"ready"}}"#;
    let fake = FakeManager::start(
        "nodefilter",
        vec![("GET", "/nodes", 200, format!("[{node}]"))],
    );
    let out = fake.run(&[
        "node",
        "ls",
        "--filter",
        "node.label=zone=east",
        "-f",
        "role=worker",
        "--format",
        "{{.Hostname}}",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "node2\n");
    let req = &fake.requests()[0];
    assert!(
        req.starts_with("GET")
            && req.contains("/nodes?filters=")
            && req.contains("node.label")
            && req.contains("zone%3Deast")
            && req.contains("worker"),
        "{req}"
    );

    let out = fake.run(&["node", "ls", "--filter", "worker"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected name=value"),
        "{}",
        stderr(&out)
    );
}
