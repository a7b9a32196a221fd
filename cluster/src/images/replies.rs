//! What each built-in image answers, the way the real image does in the tutorials: drupal's
//! install redirect, elasticsearch 2's banner (with a node name and cluster UUID stable per
//! task), traefik/whoami's echo.

use std::net::SocketAddr;

use super::context::TaskContext;
use super::http::{Request, Response, http_date};
use super::reference::Builtin;

pub fn respond(b: Builtin, req: &Request, peer: SocketAddr, ctx: &TaskContext) -> Response {
    let path = req.target.split('?').next().unwrap_or("");
    match b {
        Builtin::Drupal => drupal(path),
        Builtin::Elasticsearch => elasticsearch(&req.method, path, ctx),
        _ => whoami(req, peer, ctx),
    }
}

/// A fresh Drupal sends every page to its installer.
fn drupal(path: &str) -> Response {
    let common = |status, extra: Vec<(&'static str, String)>, body: String| {
        let mut headers = vec![
            ("Date", http_date()),
            ("Server", "Apache/2.4.25 (Debian)".to_string()),
            ("X-Powered-By", "PHP/7.3.17".to_string()),
        ];
        headers.extend(extra);
        headers.push(("Content-Type", "text/html; charset=UTF-8".to_string()));
        Response {
            status,
            headers,
            body: body.into_bytes(),
        }
    };
    if path == "/core/install.php" {
        let body = "<!DOCTYPE html>\n<html><head><title>Choose language | Drupal</title></head>\n\
                    <body><h1>Drupal 9</h1><p>Choose language</p></body></html>\n";
        return common("200 OK", vec![], body.to_string());
    }
    let to = "/core/install.php";
    let body = format!(
        "<!DOCTYPE html>\n<html>\n    <head>\n        <meta charset=\"UTF-8\" />\n        \
         <meta http-equiv=\"refresh\" content=\"0;url='{to}'\" />\n\n        \
         <title>Redirecting to {to}</title>\n    </head>\n    <body>\n        \
         Redirecting to <a href=\"{to}\">{to}</a>.\n    </body>\n</html>"
    );
    let extra = vec![
        ("Cache-Control", "no-cache, private".to_string()),
        ("Location", to.to_string()),
    ];
    common("302 Found", extra, body)
}

#[rustfmt::skip]
const ES_NAMES: &[&str] = &[
    "Landslide", "Freedom Ring", "Doctor Anthony Droom", "Abomination", "Agent Zero", "Amphibian",
    "Angel Salvadore", "Aquarian", "Banshee", "Bird-Brain", "Black Bolt", "Blizzard", "Bloodstorm",
    "Boomerang", "Bushwacker", "Caliban", "Captain Universe", "Chamber", "Cloak", "Crimson Dynamo",
    "Cypher", "Dazzler", "Deathlok", "Dust", "Echo", "Electro", "Firestar", "Forge", "Gargoyle",
    "Glob Herman", "Hellcat", "Hepzibah", "Jubilee", "Karma", "Living Lightning", "Longshot",
    "Madrox", "Magma", "Meltdown", "Mirage", "Moonstone", "Nightcrawler", "Omega Red", "Paladin",
    "Phalanx", "Quasar", "Ringer", "Sabra", "Silver Sable", "Speedball", "Starhawk", "Sunfire",
    "Tempest", "Thunderbird", "Vertigo", "Whiplash", "Wonder Man", "Zzzax",
];

/// FNV-1a then a splitmix64 finish: stable across Rust versions (unlike DefaultHasher), and
/// well spread even for ids that differ in one character.
fn stable_hash(salt: &str, data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.bytes().chain([0]).chain(data.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// The node name elasticsearch 2 picks at random, here fixed per task.
pub fn es_node_name(task_id: &str) -> &'static str {
    ES_NAMES[(stable_hash("name", task_id) % ES_NAMES.len() as u64) as usize]
}

/// Replicas of one service must answer with distinct names (the tutorial's rotation shows
/// three different ones), so the name follows the task's slot within its service; a task
/// whose name carries no slot falls back to its id.
pub fn es_node_name_for(ctx: &TaskContext) -> &'static str {
    let mut parts = ctx.name.splitn(3, '.');
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(service), Some(slot)) if !service.is_empty() => {
            let base = stable_hash("name", service);
            ES_NAMES[(base.wrapping_add(slot) % ES_NAMES.len() as u64) as usize]
        }
        _ => es_node_name(&ctx.id),
    }
}

/// 22 url-safe base64 characters (16 bytes), like elasticsearch's cluster UUIDs.
pub fn es_cluster_uuid(task_id: &str) -> String {
    let mut bytes = stable_hash("uuid-hi", task_id).to_be_bytes().to_vec();
    bytes.extend_from_slice(&stable_hash("uuid-lo", task_id).to_be_bytes());
    base64url(&bytes)
}

fn elasticsearch(method: &str, path: &str, ctx: &TaskContext) -> Response {
    let date = ("Date", http_date());
    if path != "/" || !matches!(method, "GET" | "HEAD") {
        let body = format!("No handler found for uri [{path}] and method [{method}]");
        return Response {
            status: "400 Bad Request",
            headers: vec![date, ("Content-Type", "text/plain; charset=UTF-8".into())],
            body: body.into_bytes(),
        };
    }
    let body = format!(
        r#"{{
  "name" : "{name}",
  "cluster_name" : "elasticsearch",
  "cluster_uuid" : "{uuid}",
  "version" : {{
    "number" : "2.4.6",
    "build_hash" : "5376dca9f70f3abef96a77f4bb22720ace8240fd",
    "build_timestamp" : "2017-07-18T12:17:44Z",
    "build_snapshot" : false,
    "lucene_version" : "5.5.4"
  }},
  "tagline" : "You Know, for Search"
}}
"#,
        name = es_node_name_for(ctx),
        uuid = es_cluster_uuid(&ctx.id),
    );
    Response {
        status: "200 OK",
        headers: vec![
            date,
            ("Content-Type", "application/json; charset=UTF-8".into()),
        ],
        body: body.into_bytes(),
    }
}

/// traefik/whoami's echo: who answered, then the request as received.
fn whoami(req: &Request, peer: SocketAddr, ctx: &TaskContext) -> Response {
    let mut body = format!("Hostname: {}\n", ctx.hostname);
    if !ctx.name.is_empty() {
        body += &format!("Name: {}\n", ctx.name);
    }
    body += "IP: 127.0.0.1\n";
    for addr in &ctx.addrs {
        let ip = addr.split('/').next().unwrap_or(addr);
        body += &format!("IP: {ip}\n");
    }
    body += &format!("RemoteAddr: {peer}\n");
    body += &format!("{} {} HTTP/1.{}\n", req.method, req.target, req.minor);
    for (k, v) in &req.headers {
        body += &format!("{k}: {v}\n");
    }
    body += "\n";
    Response {
        status: "200 OK",
        headers: vec![
            ("Date", http_date()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
        ],
        body: body.into_bytes(),
    }
}
