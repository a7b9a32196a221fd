//! Built-in image servers answering real clients (curl) on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use cluster::images::{
    BUILTIN, Builtin, ImageError, TaskContext, canonical, es_cluster_uuid, es_node_name, resolve,
    serve_on, unknown_image_error,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ctx(id: &str) -> TaskContext {
    TaskContext {
        id: id.to_string(),
        name: format!("search.1.{id}"),
        addrs: vec!["10.0.0.7/24".into(), "10.255.0.9/16".into()],
        hostname: "node1-task".into(),
    }
}

async fn start(b: Builtin, ctx: TaskContext) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_on(b, listener, ctx));
    addr
}

async fn curl(args: &[&str]) -> String {
    let run = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("curl timed out")
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn drupal_redirects_like_the_tutorial() {
    let addr = start(Builtin::Drupal, ctx("a")).await;
    let head = curl(&["-I", &format!("http://{addr}/")]).await;
    let names: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    assert!(head.starts_with("HTTP/1.1 302 Found\r\n"), "{head}");
    assert_eq!(
        names,
        [
            "Date",
            "Server",
            "X-Powered-By",
            "Cache-Control",
            "Location",
            "Content-Type"
        ],
        "{head}"
    );
    assert!(head.contains("Server: Apache/2.4.25 (Debian)\r\n"));
    assert!(head.contains("Location: /core/install.php\r\n"));
    let date = head.lines().nth(1).unwrap();
    assert!(date.ends_with(" GMT") && date.len() == "Date: Wed, 29 Apr 2020 04:46:09 GMT".len());

    let get = curl(&[&format!("http://{addr}/node/1")]).await;
    assert!(get.contains("Redirecting to"), "{get}");
    let followed = curl(&["-L", &format!("http://{addr}/")]).await;
    assert!(followed.contains("Choose language"), "{followed}");
    // HTTP/1.0 without keep-alive, as `ab` sends it.
    let ten = curl(&["-i", "-0", &format!("http://{addr}/")]).await;
    assert!(ten.contains("Connection: close\r\n"), "{ten}");
}

#[tokio::test]
async fn elasticsearch_banner_per_task() {
    let id_a = "defhxc6ybd3w6k3jzwc8u1qv0";
    let a = start(Builtin::Elasticsearch, ctx(id_a)).await;
    let b = start(Builtin::Elasticsearch, ctx("ihdzhnatghc3qz0yqk2ax7v5m")).await;
    let a2 = start(Builtin::Elasticsearch, ctx(id_a)).await;
    let get = |addr: SocketAddr| async move {
        let body = curl(&[&format!("http://{addr}/")]).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        (body, v)
    };
    let (body, va) = get(a).await;
    let (_, vb) = get(b).await;
    let (_, va2) = get(a2).await;
    assert!(body.starts_with("{\n  \"name\" : \""), "{body}");
    assert!(body.contains("\n  \"version\" : {\n    \"number\" : \"2.4.6\",\n"));
    assert!(body.ends_with("  \"tagline\" : \"You Know, for Search\"\n}\n"));
    assert_eq!(va["cluster_name"], "elasticsearch");
    assert_eq!(va["version"]["lucene_version"], "5.5.4");
    assert_eq!(va["version"]["build_snapshot"], false);
    assert_eq!(va["cluster_uuid"].as_str().unwrap().len(), 22);
    assert_eq!(va, va2, "stable for one task");
    assert_ne!(va["cluster_uuid"], vb["cluster_uuid"]);
    let missing = curl(&[&format!("http://{a}/nope")]).await;
    assert!(missing.contains("No handler found for uri [/nope]"));
}

#[tokio::test]
async fn whoami_echoes_task_and_request() {
    let addr = start(Builtin::Whoami, ctx("abc")).await;
    let body = curl(&["-H", "X-Test: 1", &format!("http://{addr}/hello")]).await;
    assert!(
        body.starts_with("Hostname: node1-task\nName: search.1.abc\n"),
        "{body}"
    );
    assert!(body.contains("IP: 10.0.0.7\nIP: 10.255.0.9\n"), "{body}");
    assert!(body.contains("RemoteAddr: 127.0.0.1:"), "{body}");
    assert!(body.contains("GET /hello HTTP/1.1\n"), "{body}");
    assert!(body.contains("X-Test: 1\n"), "{body}");
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let addr = start(Builtin::Whoami, ctx("k")).await;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    conn.write_all(req).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut all))
        .await
        .expect("server closes after Connection: close")
        .unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    assert!(all.contains("POST /a HTTP/1.1") && all.contains("GET /b HTTP/1.1"));
}

#[tokio::test]
async fn postgres_accepts_and_declines_tls() {
    let addr = start(Builtin::Postgres, ctx("p")).await;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut reply = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"N");
}

#[test]
fn resolves_references() {
    for img in [
        "drupal",
        "drupal:latest",
        "library/drupal",
        "docker.io/library/drupal:9",
        "index.docker.io/library/drupal@sha256:abcd",
    ] {
        assert_eq!(resolve(img), Some(Builtin::Drupal), "{img}");
    }
    assert_eq!(resolve("elasticsearch:2"), Some(Builtin::Elasticsearch));
    assert_eq!(resolve("postgres:13-alpine"), Some(Builtin::Postgres));
    assert_eq!(resolve("traefik/whoami:v1.10"), Some(Builtin::Whoami));
    assert_eq!(resolve("nginx"), None);
    assert_eq!(resolve("example.com/drupal"), None);
    assert_eq!(resolve("someone/drupal"), None);
}

#[test]
fn canonical_forms() {
    assert_eq!(canonical("postgres"), "postgres:latest");
    assert_eq!(canonical("elasticsearch:2"), "elasticsearch:2");
    assert_eq!(canonical("docker.io/library/drupal"), "drupal:latest");
    assert_eq!(canonical("drupal:9@sha256:ab"), "drupal:9");
    assert_eq!(canonical("localhost:5000/app"), "localhost:5000/app:latest");
    assert_eq!(canonical("traefik/whoami"), "traefik/whoami:latest");
}

#[test]
fn unknown_image_names_the_builtins() {
    let msg = unknown_image_error("nginx");
    assert!(msg.contains("nginx:latest"), "{msg}");
    // Other images come from registries now.
    assert!(!msg.contains("no registry"), "{msg}");
    for b in BUILTIN {
        assert!(msg.contains(b), "{msg}");
    }
    assert_eq!(ImageError::Unknown("nginx".into()).to_string(), msg);
}

#[test]
fn es_identity_is_stable_and_spread() {
    let uuid = es_cluster_uuid("defhxc6ybd3w0000000000000");
    assert_eq!(uuid.len(), 22);
    assert!(
        uuid.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_eq!(uuid, es_cluster_uuid("defhxc6ybd3w0000000000000"));
    assert_ne!(uuid, es_cluster_uuid("defhxc6ybd3w0000000000001"));
    let names: std::collections::HashSet<_> = (0..20)
        .map(|i| es_node_name(&format!("task{i:021}")))
        .collect();
    assert!(names.len() > 10, "names spread: {names:?}");
}

#[test]
fn elasticsearch_replicas_of_one_service_have_distinct_names() {
    let names: std::collections::HashSet<_> = (1..=10)
        .map(|slot| {
            cluster::images::es_node_name_for(&TaskContext {
                id: format!("{slot:025}"),
                name: format!("search.{slot}.{slot:025}"),
                ..Default::default()
            })
        })
        .collect();
    assert_eq!(names.len(), 10);
}
