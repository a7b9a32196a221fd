//! Malformed Engine API requests, sent with curl to a real manager on a unix socket: each is
//! answered with docker's JSON error body `{"message": ...}`, the status code the Engine API
//! documents for that case, and no change of state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::manager::Manager;

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    /// None: no Content-Type header at all.
    content_type: Option<&'static str>,
    body: Option<String>,
    status: u16,
    /// Sent to the agents' listener (mutual TLS), not the manager's socket.
    agent: bool,
    /// Extra request headers, `Name: value`.
    headers: Vec<String>,
    /// What the error's message must say, beyond having one.
    says: Option<&'static str>,
    /// Sent to this node's own Docker socket, not the manager's.
    node: Option<&'static str>,
}

fn case(what: &'static str, method: &'static str, path: &str, status: u16) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        content_type: None,
        body: None,
        status,
        agent: false,
        headers: Vec::new(),
        says: None,
        node: None,
    }
}

/// `c` sent to `node`'s own socket (`nodes/<node>.sock`), its message naming `says`.
fn on_node(mut c: Case, node: &'static str, says: &'static str) -> Case {
    c.node = Some(node);
    c.says = Some(says);
    c
}

/// `c` with a request header, its message naming `says`.
fn with_header(mut c: Case, header: &str, says: &'static str) -> Case {
    c.headers.push(header.to_string());
    c.says = Some(says);
    c
}

/// A join to the agents' listener with this cluster's worker token, for `hostname`.
fn join(what: &'static str, srv: &Server, hostname: &str, status: u16) -> Case {
    let mut c = json(
        case(what, "POST", "/swarmkit/v1/agent/join", status),
        &srv.join_body(hostname),
    );
    c.agent = true;
    c
}

fn json(mut c: Case, body: &str) -> Case {
    c.content_type = Some("application/json");
    c.body = Some(body.to_string());
    c
}

fn typed(mut c: Case, content_type: &'static str, body: &str) -> Case {
    c.content_type = Some(content_type);
    c.body = Some(body.to_string());
    c
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

#[allow(clippy::too_many_arguments)] // curl's own options, one each
fn curl(
    socket: &Path,
    tls_root: Option<&Path>,
    dir: &Path,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Option<&str>,
    headers: &[String],
) -> Answer {
    let out_file = dir.join("answer");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{content_type}"]);
    // curl adds a form content type to any body unless told otherwise.
    cmd.arg("-H").arg(match ct {
        Some(ct) => format!("Content-Type: {ct}"),
        None => "Content-Type:".to_string(),
    });
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    if let Some(b) = body {
        let body_file = dir.join("body");
        std::fs::write(&body_file, b).expect("write the request body");
        cmd.arg("--data-binary")
            .arg(format!("@{}", body_file.display()));
    }
    match tls_root {
        // The manager's certificate names it swarm-manager, whatever socket it is reached by.
        Some(root) => cmd
            .arg("--cacert")
            .arg(root)
            .arg(format!("https://swarm-manager{path}")),
        None => cmd.arg(format!("http://localhost{path}")),
    };
    let out = cmd.output().expect("curl is installed (scripts/setup)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, content_type) = meta.split_once(' ').unwrap_or((&meta, ""));
    Answer {
        status: code.parse().expect("an HTTP status"),
        content_type: content_type.to_string(),
        body: std::fs::read_to_string(&out_file).unwrap_or_default(),
    }
}

struct Server {
    dir: PathBuf,
    socket: PathBuf,
    manager: cluster::manager::Shared,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    /// A manager of its own for each test (`tag` names its directory).
    fn start(tag: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("sk-api-errors-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("manager.sock");
        let manager = Manager::open("apierrors", &dir.join("state.redb")).expect("open the store");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (m, s) = (manager.clone(), socket.clone());
        rt.spawn(async move { cluster::manager::serve(m, &s, None).await });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(socket.exists()
            && curl(&socket, None, &dir, "GET", "/_ping", None, None, &[]).status == 200)
        {
            assert!(
                Instant::now() < deadline,
                "the manager did not answer /_ping within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            dir,
            socket,
            manager,
            _rt: rt,
        }
    }

    fn call(&self, method: &str, path: &str, ct: Option<&str>, body: Option<&str>) -> Answer {
        self.call_with(method, path, ct, body, &[])
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: Option<&str>,
        headers: &[String],
    ) -> Answer {
        curl(
            &self.socket,
            None,
            &self.dir,
            method,
            path,
            ct,
            body,
            headers,
        )
    }

    /// The cluster's CA and tokens, which the manager made on its first start.
    fn trust(&self) -> cluster::pki::trust::Trust {
        (self.manager.store.snapshot().meta.trust.clone()).expect("a CA")
    }

    /// A request to the agents' listener beside the manager's socket, in TLS checked
    /// against the cluster's root (no client certificate: a node joining has none yet).
    fn call_agent(&self, method: &str, path: &str, ct: Option<&str>, body: Option<&str>) -> Answer {
        let root = self.dir.join("root.pem");
        std::fs::write(&root, &self.trust().root.cert_pem).expect("write the root");
        let socket = self.socket.with_file_name("agents.sock");
        curl(&socket, Some(&root), &self.dir, method, path, ct, body, &[])
    }

    /// What a node joining as `hostname` with the worker token sends.
    fn join_body(&self, hostname: &str) -> String {
        let trust = self.trust();
        let (_key, csr) = cluster::pki::ca::new_key_and_request().expect("a CSR");
        serde_json::json!({
            "token": trust.worker_token,
            "csr_pem": csr,
            "node": {"hostname": hostname, "addr": "192.168.0.2", "lb_driver": "nftables",
                     "kernel": "test"},
        })
        .to_string()
    }

    fn ok(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let a = self.call(method, path, Some("application/json"), Some(body));
        assert!(a.status < 300, "{method} {path}: {} {}", a.status, a.body);
        serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null)
    }

    /// Everything a client can observe changing: the store's version and its contents.
    fn state(&self) -> (u64, String) {
        let s = self.manager.store.snapshot();
        let services: Vec<_> = s.services.values().map(|x| (&x.id, x.version)).collect();
        let networks: Vec<_> = s.networks.values().map(|x| (&x.id, x.version)).collect();
        let tasks: Vec<_> = s.tasks.values().map(|x| (&x.id, x.version)).collect();
        let secrets: Vec<_> = s.secrets.values().map(|x| (&x.id, x.version)).collect();
        let configs: Vec<_> = s.configs.values().map(|x| (&x.id, x.version)).collect();
        (
            s.version,
            format!("{services:?} {networks:?} {tasks:?} {secrets:?} {configs:?}"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SPEC: &str = r#"{"Name":"api2","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#;

#[test]
fn malformed_requests_get_json_errors_with_documented_statuses_and_change_nothing() {
    let srv = Server::start("malformed");
    // A node to schedule on (its agent never comes, which no case here needs), a network and
    // a service for the cases that name existing objects.
    let joined = srv.call_agent(
        "POST",
        "/swarmkit/v1/agent/join",
        Some("application/json"),
        Some(&srv.join_body("node1")),
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    let node: serde_json::Value = serde_json::from_str(&joined.body).expect("JSON");
    srv.ok(
        "POST",
        "/v1.50/networks/create",
        r#"{"Name":"front","Driver":"overlay"}"#,
    );
    let created = srv.ok(
        "POST",
        "/v1.50/services/create",
        r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
    );
    let web = created["ID"].as_str().expect("an ID").to_string();
    let version = srv.manager.store.snapshot().services[&web].version;
    let web_task = srv
        .manager
        .store
        .snapshot()
        .tasks
        .values()
        .find(|t| t.service_id == web)
        .map(|t| t.id.clone())
        .expect("a task of web");
    let update = |q: &str| format!("/v1.50/services/{web}/update{q}");
    // A secret (base64 of "s3cret"), a config, and a service that uses the secret.
    let pw = srv.ok(
        "POST",
        "/v1.50/secrets/create",
        r#"{"Name":"pw","Data":"czNjcmV0"}"#,
    )["ID"]
        .as_str()
        .expect("an ID")
        .to_string();
    let pw_version = srv.manager.store.snapshot().secrets[&pw].version;
    srv.ok(
        "POST",
        "/v1.50/configs/create",
        r#"{"Name":"conf","Data":"czNjcmV0"}"#,
    );
    srv.ok(
        "POST",
        "/v1.50/services/create",
        &format!(
            r#"{{"Name":"usespw","TaskTemplate":{{"ContainerSpec":{{"Image":"whoami","Secrets":[{{"SecretID":"{pw}","SecretName":"pw","File":{{"Name":"pw"}}}}]}}}}}}"#
        ),
    );
    let big = format!(
        r#"{{"Name":"big","Labels":{{"x":"{}"}}}}"#,
        "a".repeat(2 * 1024 * 1024)
    );

    let cases = vec![
        // Bad JSON.
        json(
            case("truncated JSON", "POST", "/v1.50/services/create", 400),
            "{",
        ),
        json(
            case("empty body", "POST", "/v1.50/services/create", 400),
            "",
        ),
        json(
            case("trailing garbage", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"x"} x"#,
        ),
        json(
            case("lone surrogate", "POST", "/v1.50/networks/create", 400),
            r#"{"Name":"\ud800"}"#,
        ),
        json(
            case("not JSON at all", "POST", "/v1.50/networks/create", 400),
            "Name=front2",
        ),
        json(
            case(
                "bad JSON on update",
                "POST",
                &update(&format!("?version={version}")),
                400,
            ),
            "{]",
        ),
        // Valid JSON of the wrong type.
        json(
            case("array for a spec", "POST", "/v1.50/services/create", 400),
            "[1,2]",
        ),
        json(
            case("null for a network", "POST", "/v1.50/networks/create", 400),
            "null",
        ),
        json(
            case("number for a name", "POST", "/v1.50/networks/create", 400),
            r#"{"Name":5}"#,
        ),
        // A node's hostname names it in tables, files and logs: only a hostname joins.
        join("a path for a hostname", &srv, "../node1", 400),
        join("control characters in a hostname", &srv, "n\u{1b}[2Jx", 400),
        // Its name is taken by an up node.
        join("the name of an up node", &srv, "node1", 409),
        json(
            case("string for labels", "POST", "/v1.50/networks/create", 400),
            r#"{"Name":"n","Labels":"x"}"#,
        ),
        json(
            case("string for replicas", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"w","Mode":{"Replicated":{"Replicas":"three"}},"TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
        ),
        json(
            case("string for a port", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}},"EndpointSpec":{"Ports":[{"TargetPort":"eighty"}]}}"#,
        ),
        json(
            case("negative replicas", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"w","Mode":{"Replicated":{"Replicas":-1}},"TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
        ),
        json(
            case(
                "replicas past the cap",
                "POST",
                "/v1.50/services/create",
                400,
            ),
            r#"{"Name":"w","Mode":{"Replicated":{"Replicas":10001}},"TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
        ),
        json(
            case(
                "scale past the cap",
                "POST",
                &update(&format!("?version={version}")),
                400,
            ),
            r#"{"Name":"web","Mode":{"Replicated":{"Replicas":10001}},"TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
        ),
        json(
            case("no image", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"w"}"#,
        ),
        // Wrong content type.
        typed(
            case("text/plain spec", "POST", "/v1.50/services/create", 400),
            "text/plain",
            SPEC,
        ),
        typed(
            case("XML network", "POST", "/v1.50/networks/create", 400),
            "application/xml",
            r#"{"Name":"n2"}"#,
        ),
        typed(
            case(
                "form update",
                "POST",
                &update(&format!("?version={version}")),
                400,
            ),
            "application/x-www-form-urlencoded",
            SPEC,
        ),
        {
            let mut c = case(
                "no content type with a body",
                "POST",
                "/v1.50/networks/create",
                400,
            );
            c.body = Some(r#"{"Name":"n3"}"#.into());
            c
        },
        // Bad query strings.
        case(
            "filters not JSON",
            "GET",
            "/v1.50/services?filters=notjson",
            400,
        ),
        case(
            "filters an array",
            "GET",
            "/v1.50/services?filters=%5B1%5D",
            400,
        ),
        case(
            "unknown filter",
            "GET",
            "/v1.50/tasks?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
            400,
        ),
        case(
            "number in filter values",
            "GET",
            "/v1.50/networks?filters=%7B%22name%22%3A%5B1%5D%7D",
            400,
        ),
        case(
            "filter value a number",
            "GET",
            "/v1.50/tasks?filters=%7B%22desired-state%22%3A5%7D",
            400,
        ),
        case(
            "status not a bool",
            "GET",
            "/v1.50/services?status=maybe",
            400,
        ),
        case(
            "unknown node filter",
            "GET",
            "/v1.50/nodes?filters=%7B%22color%22%3A%5B%22red%22%5D%7D",
            400,
        ),
        case(
            "node role filter neither manager nor worker",
            "GET",
            "/v1.50/nodes?filters=%7B%22role%22%3A%5B%22boss%22%5D%7D",
            400,
        ),
        case(
            "node filters not JSON",
            "GET",
            "/v1.50/nodes?filters=%7B",
            400,
        ),
        case(
            "secrets filter unknown",
            "GET",
            "/v1.50/secrets?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D",
            400,
        ),
        json(
            case("version not a number", "POST", &update("?version=abc"), 400),
            SPEC,
        ),
        json(
            case("negative version", "POST", &update("?version=-1"), 400),
            SPEC,
        ),
        json(
            case("update without version", "POST", &update(""), 400),
            SPEC,
        ),
        case(
            "logs tail not a number",
            "GET",
            &format!("/v1.50/services/{web}/logs?stdout=1&tail=lots"),
            400,
        ),
        case(
            "logs without a stream",
            "GET",
            &format!("/v1.50/services/{web}/logs"),
            400,
        ),
        case(
            "service logs since non-ASCII",
            "GET",
            &format!("/v1.50/services/{web}/logs?stdout=1&since=1.12345678%C3%A9"),
            400,
        ),
        case(
            "task logs since full-width digits",
            "GET",
            &format!("/v1.50/tasks/{web_task}/logs?stdout=1&since=%EF%BC%91%EF%BC%92%EF%BC%93"),
            400,
        ),
        // Unknown IDs.
        case("unknown service", "GET", "/v1.50/services/nosuch", 404),
        case(
            "remove unknown service",
            "DELETE",
            "/v1.50/services/nosuch",
            404,
        ),
        json(
            case(
                "update unknown service",
                "POST",
                "/v1.50/services/nosuch/update?version=1",
                404,
            ),
            SPEC,
        ),
        case("unknown network", "GET", "/v1.50/networks/nosuch", 404),
        case(
            "remove unknown network",
            "DELETE",
            "/v1.50/networks/nosuch",
            404,
        ),
        case("unknown task", "GET", "/v1.50/tasks/nosuch", 404),
        case("unknown node", "GET", "/v1.50/nodes/nosuch", 404),
        case(
            "logs of unknown service",
            "GET",
            "/v1.50/services/nosuch/logs?stdout=1",
            404,
        ),
        case(
            "logs of unknown task",
            "GET",
            "/v1.50/tasks/nosuch/logs?stdout=1",
            404,
        ),
        json(
            case(
                "service on unknown network",
                "POST",
                "/v1.50/services/create",
                404,
            ),
            r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"whoami"},"Networks":[{"Target":"nosuch"}]}}"#,
        ),
        // Unknown paths and methods answer as dockerd does: 404, page not found.
        case("unknown path", "GET", "/v1.50/nosuch", 404),
        case(
            "containers are not served",
            "GET",
            "/v1.50/containers/json",
            404,
        ),
        case("method the path lacks", "PUT", "/v1.50/services/web", 404),
        case("patch a network", "PATCH", "/v1.50/networks/front", 404),
        // Forbidden operations on docker's pre-defined networks.
        case(
            "remove a pre-defined network",
            "DELETE",
            "/v1.50/networks/bridge",
            403,
        ),
        json(
            case(
                "create a pre-defined name",
                "POST",
                "/v1.50/networks/create",
                403,
            ),
            r#"{"Name":"host"}"#,
        ),
        // Oversized bodies.
        json(
            case("2 MiB service spec", "POST", "/v1.50/services/create", 400),
            &big,
        ),
        json(
            case("2 MiB network", "POST", "/v1.50/networks/create", 400),
            &big,
        ),
        // Secrets and configs.
        json(
            case("truncated secret", "POST", "/v1.50/secrets/create", 400),
            r#"{"Name":"x""#,
        ),
        json(
            case(
                "secret data not base64",
                "POST",
                "/v1.50/secrets/create",
                400,
            ),
            r#"{"Name":"x","Data":"%%%"}"#,
        ),
        json(
            case("secret without data", "POST", "/v1.50/secrets/create", 400),
            r#"{"Name":"x"}"#,
        ),
        json(
            case("secret named badly", "POST", "/v1.50/secrets/create", 400),
            r#"{"Name":"a b","Data":"eA=="}"#,
        ),
        json(
            case("secret name taken", "POST", "/v1.50/secrets/create", 409),
            r#"{"Name":"pw","Data":"eA=="}"#,
        ),
        json(
            case("secret driver", "POST", "/v1.50/secrets/create", 400),
            r#"{"Name":"x","Data":"eA==","Driver":{"Name":"vault"}}"#,
        ),
        case("no such secret", "GET", "/v1.50/secrets/nosuch", 404),
        case("secret in use", "DELETE", "/v1.50/secrets/pw", 400),
        json(
            case(
                "secret update, no version",
                "POST",
                "/v1.50/secrets/pw/update",
                400,
            ),
            r#"{"Name":"pw","Labels":{"a":"b"}}"#,
        ),
        json(
            case(
                "secret update, stale version",
                "POST",
                "/v1.50/secrets/pw/update?version=999999",
                409,
            ),
            r#"{"Name":"pw","Labels":{"a":"b"}}"#,
        ),
        json(
            case(
                "secret update, new data",
                "POST",
                &format!("/v1.50/secrets/pw/update?version={pw_version}"),
                400,
            ),
            r#"{"Name":"pw","Data":"eA=="}"#,
        ),
        json(
            case(
                "service with a missing secret",
                "POST",
                "/v1.50/services/create",
                400,
            ),
            r#"{"Name":"s9","TaskTemplate":{"ContainerSpec":{"Image":"whoami","Secrets":[{"SecretName":"nosuch"}]}}}"#,
        ),
        json(
            case("config outside /run", "POST", "/v1.50/services/create", 400),
            r#"{"Name":"s9","TaskTemplate":{"ContainerSpec":{"Image":"whoami","Configs":[{"ConfigName":"conf","File":{"Name":"/etc/conf"}}]}}}"#,
        ),
        json(
            case(
                "secret target escaping",
                "POST",
                "/v1.50/services/create",
                400,
            ),
            r#"{"Name":"s9","TaskTemplate":{"ContainerSpec":{"Image":"whoami","Secrets":[{"SecretName":"pw","File":{"Name":"../../etc/x"}}]}}}"#,
        ),
        // Images and registry credentials.
        with_header(
            json(
                case(
                    "malformed image reference",
                    "POST",
                    "/v1.50/services/create",
                    400,
                ),
                r#"{"Name":"s9","TaskTemplate":{"ContainerSpec":{"Image":"Not A/Reference!!"}}}"#,
            ),
            "X-Test: none",
            "Not A/Reference!!",
        ),
        with_header(
            json(
                case(
                    "registry auth that does not decode",
                    "POST",
                    "/v1.50/services/create",
                    400,
                ),
                SPEC,
            ),
            "X-Registry-Auth: %%%not-base64",
            "X-Registry-Auth",
        ),
        with_header(
            json(
                case(
                    "registry auth on update that does not decode",
                    "POST",
                    &update(&format!("?version={version}")),
                    400,
                ),
                r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
            ),
            "X-Registry-Auth: bm90IGpzb24",
            "X-Registry-Auth",
        ),
        with_header(
            json(
                case(
                    "registryAuthFrom unknown",
                    "POST",
                    &update(&format!("?version={version}&registryAuthFrom=elsewhere")),
                    400,
                ),
                r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#,
            ),
            "X-Test: none",
            "registryAuthFrom",
        ),
        case(
            "distribution of a malformed reference",
            "GET",
            "/v1.50/distribution/Not%20A%20Reference/json",
            400,
        ),
        // A node's own socket: docker exec and volumes on the tasks placed there.
        on_node(
            json(
                case(
                    "exec in no container",
                    "POST",
                    "/v1.50/containers/nosuch/exec",
                    404,
                ),
                r#"{"Cmd":["true"]}"#,
            ),
            "node1",
            "No such container",
        ),
        on_node(
            json(
                case(
                    "exec without a command",
                    "POST",
                    "/v1.50/containers/x/exec",
                    400,
                ),
                r#"{"Cmd":[]}"#,
            ),
            "node1",
            "no command given",
        ),
        on_node(
            json(
                case("exec with a tty", "POST", "/v1.50/containers/x/exec", 400),
                r#"{"Cmd":["sh"],"Tty":true}"#,
            ),
            "node1",
            "-t",
        ),
        on_node(
            json(
                case(
                    "exec body that is not JSON",
                    "POST",
                    "/v1.50/containers/x/exec",
                    400,
                ),
                "{nope",
            ),
            "node1",
            "",
        ),
        on_node(
            json(
                case("start no exec", "POST", "/v1.50/exec/nosuch/start", 404),
                r#"{"Detach":false,"Tty":false}"#,
            ),
            "node1",
            "No such exec instance",
        ),
        on_node(
            json(
                case("start detached", "POST", "/v1.50/exec/nosuch/start", 400),
                r#"{"Detach":true}"#,
            ),
            "node1",
            "-d",
        ),
        on_node(
            case("inspect no exec", "GET", "/v1.50/exec/nosuch/json", 404),
            "node1",
            "No such exec instance",
        ),
        on_node(
            case("inspect no volume", "GET", "/v1.50/volumes/nosuch", 404),
            "node1",
            "no such volume",
        ),
        on_node(
            case("a manager route on a node", "GET", "/v1.50/services", 404),
            "node1",
            "drive the cluster through the manager",
        ),
    ];
    assert!(cases.len() >= 30);

    let before = srv.state();
    let mut failures = Vec::new();
    let node_id = node["node_id"].as_str().expect("a node ID").to_string();
    for c in &cases {
        // The node's agent is this test: it stays live, so no case sees it marked down.
        srv.manager.touch(&node_id);
        let a = if c.agent {
            srv.call_agent(c.method, &c.path, c.content_type, c.body.as_deref())
        } else if let Some(node) = c.node {
            let socket = srv.dir.join("nodes").join(format!("{node}.sock"));
            let deadline = Instant::now() + Duration::from_secs(10);
            // Made by the manager once the node has joined.
            while !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            curl(
                &socket,
                None,
                &srv.dir,
                c.method,
                &c.path,
                c.content_type,
                c.body.as_deref(),
                &c.headers,
            )
        } else {
            srv.call_with(
                c.method,
                &c.path,
                c.content_type,
                c.body.as_deref(),
                &c.headers,
            )
        };
        let message = serde_json::from_str::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from));
        let why = if a.status != c.status {
            Some(format!("status {} (want {})", a.status, c.status))
        } else if !a.content_type.starts_with("application/json") {
            Some(format!("content type {:?}", a.content_type))
        } else if message.as_deref().is_none_or(str::is_empty) {
            Some("no message".to_string())
        } else if let Some(says) = c.says
            && !message.as_deref().unwrap_or_default().contains(says)
        {
            Some(format!("the message does not say {says:?}"))
        } else if srv.state() != before {
            Some("the state changed".to_string())
        } else {
            None
        };
        match why {
            Some(why) => failures.push(format!(
                "{} ({} {}): {why}; body {}",
                c.what,
                c.method,
                c.path,
                a.body.chars().take(300).collect::<String>()
            )),
            None => eprintln!(
                "{:<32} {} {}",
                c.what,
                a.status,
                message.unwrap_or_default()
            ),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `--with-registry-auth`: the credentials sent with a service stay with it (through an
/// update that sends none, replaced by one that sends new ones, back with a rollback) and
/// never come back out of the API, as dockerd strips them.
#[test]
fn registry_auth_is_kept_with_the_service_and_never_shown() {
    let creds = |password: &str| oci::Credentials {
        username: "deploy".into(),
        password: password.into(),
        server: "192.168.0.1:5000".into(),
    };
    let (first, second) = (
        oci::encode_registry_auth(&creds("first-hunter2")),
        oci::encode_registry_auth(&creds("second-hunter2")),
    );
    let srv = Server::start("auth");
    // A node to place the tasks on (its agent never comes).
    let joined = srv.call_agent(
        "POST",
        "/swarmkit/v1/agent/join",
        Some("application/json"),
        Some(&srv.join_body("node1")),
    );
    assert_eq!(joined.status, 200, "{}", joined.body);
    let header = |h: &str| vec![format!("X-Registry-Auth: {h}")];
    let spec = r#"{"Name":"private","TaskTemplate":{"ContainerSpec":{"Image":"whoami"}}}"#;
    let created = srv.call_with(
        "POST",
        "/v1.50/services/create",
        Some("application/json"),
        Some(spec),
        &header(&first),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = serde_json::from_str::<serde_json::Value>(&created.body).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = || {
        let s = srv.manager.store.snapshot();
        s.services[&id].registry_auth.clone()
    };
    assert_eq!(auth().current.as_deref(), Some(first.as_str()));
    let shown = || {
        [
            "/v1.50/services",
            &format!("/v1.50/services/{id}"),
            "/v1.50/tasks",
        ]
        .iter()
        .map(|p| srv.call("GET", p, None, None).body)
        .collect::<String>()
    };
    let update = |headers: &[String], query: &str| {
        let version = srv.manager.store.snapshot().services[&id].version;
        let a = srv.call_with(
            "POST",
            &format!("/v1.50/services/{id}/update?version={version}{query}"),
            Some("application/json"),
            Some(&spec.replace("whoami", "whoami:v2")),
            headers,
        );
        assert_eq!(a.status, 200, "{}", a.body);
    };
    // An update without credentials keeps them; one with new ones replaces them.
    update(&[], "");
    assert_eq!(auth().current.as_deref(), Some(first.as_str()));
    update(&header(&second), "");
    assert_eq!(auth().current.as_deref(), Some(second.as_str()));
    assert_eq!(auth().previous.as_deref(), Some(first.as_str()));
    // A rollback takes back the previous spec's.
    update(&[], "&rollback=previous");
    assert_eq!(auth().current.as_deref(), Some(first.as_str()));
    let all = shown();
    for leak in [first.as_str(), second.as_str(), "hunter2", "RegistryAuth"] {
        assert!(!all.contains(leak), "the API shows {leak}: {all}");
    }
}
