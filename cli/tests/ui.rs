//! `swarmkit ui` in headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the page shows every node and task, and redraws by itself when a service is
//! scaled, without a reload. And with curl, as any other page or program would reach it:
//! it answers only its own Host and Origin, and runs a trace only on a POST carrying the
//! served page's token, one trace at a time.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::Cluster;
use serde_json::{Value, json};

/// A child process killed (and reaped) when the test ends, however it ends.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `swarmkit ui` on `c`, and the address it printed (`http://127.0.0.1:PORT/`).
fn start_ui(c: &Cluster) -> (Owned, String) {
    let mut ui = Owned(
        Command::new(env!("CARGO_BIN_EXE_swarmkit"))
            .args(["--cluster", &c.name, "ui"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("swarmkit ui starts"),
    );
    // The line comes once the listener is bound, so the server is reachable from then on.
    let mut line = String::new();
    BufReader::new(ui.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ui prints its address");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("an address on 127.0.0.1 in {line:?}"))
        .to_string();
    (ui, url)
}

/// curl with `args`, under a deadline longer than any trace: the status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    answer(
        Command::new("curl")
            .args(["-s", "--max-time", "90", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs"),
    )
}

/// A `curl` that was spawned: the status and the body, from its output.
fn answer(out: Output) -> (u16, String) {
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `curl` arguments that ask for a trace as the page does: a POST with the token header
/// (when given) and the JSON body.
fn trace_args(url: &str, token: Option<&str>, from: &str, target: &str) -> Vec<String> {
    let mut args = vec!["-X".to_string(), "POST".to_string()];
    if let Some(t) = token {
        args.extend(["-H".to_string(), format!("X-Swarmkit-Token: {t}")]);
    }
    args.extend([
        "-H".to_string(),
        "Content-Type: application/json".to_string(),
        "--data".to_string(),
        json!({"from": from, "target": target}).to_string(),
        format!("{url}trace"),
    ]);
    args
}

/// A trace from node1 asked for in the background, for a test that holds its connection;
/// [`answer`] reads what came back.
fn spawn_trace(url: &str, token: &str, target: &str) -> Child {
    Command::new("curl")
        .args(["-s", "--max-time", "90", "-w", "\n%{http_code}"])
        .args(trace_args(url, Some(token), "node:node1", target))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs")
}

fn post_trace(url: &str, token: Option<&str>, from: &str, target: &str) -> (u16, String) {
    let args = trace_args(url, token, from, target);
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The token the served page carries, as a page would read it.
fn page_token(url: &str) -> String {
    let (code, page) = curl(&[url]);
    assert_eq!(code, 200, "{page}");
    let token = page
        .split_once(r#"<meta name="swarmkit-token" content=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| panic!("a token in the page: {page}"));
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token:?}"
    );
    token
}

fn http_get(url: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// One page, driven over the DevTools protocol.
struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true, "awaitPromise": true}});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send to chromium");
        loop {
            let m = self.ws.read().expect("read from chromium");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                return v["result"]["result"]["value"].clone();
            }
        }
    }

    fn words(&mut self, expression: &str) -> Vec<String> {
        self.eval(expression)
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

#[test]
fn ui_shows_every_node_and_task_and_follows_a_scale_and_a_failure() {
    require_root!();
    if Command::new("chromium").arg("--version").output().is_err() {
        panic!("chromium is not installed: run scripts/setup");
    }
    let c = Cluster::up("ui", 3);
    c.service_create(&[
        "--quiet",
        "--name",
        "search",
        "--replicas",
        "3",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();

    let (_ui, url) = start_ui(&c);

    let profile = std::env::temp_dir().join(format!("sk-ui-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let chromium = Owned(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts"),
    );
    // Chromium writes the port it picked into the profile.
    let port = common::eventually("chromium's DevTools port", Duration::from_secs(30), || {
        std::fs::read_to_string(profile.join("DevToolsActivePort"))
            .ok()?
            .lines()
            .next()?
            .parse::<u16>()
            .ok()
    });
    let ws_url = common::eventually("the page target", Duration::from_secs(30), || {
        let list = http_get(&format!("http://127.0.0.1:{port}/json/list"))?;
        list.as_array()?
            .iter()
            .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(&url)))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
    });
    let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools websocket");
    let mut page = Page { ws, next_id: 0 };

    let svg_text = "Array.from(document.querySelectorAll('#graph svg text')).map(t => t.textContent).join(' ')";
    let before = common::eventually(
        "the page to draw three tasks",
        Duration::from_secs(30),
        || {
            let tasks = page.words("document.body.dataset.tasks || ''");
            (tasks.len() == 3).then_some(tasks)
        },
    );
    let drawn = page.words(svg_text);
    for name in [
        "node1", "node2", "node3", "search.1", "search.2", "search.3", "search", "ingress",
    ] {
        assert!(
            drawn.iter().any(|w| w == name),
            "the page draws {name}: {drawn:?}"
        );
    }

    c.sk(&["service", "scale", "search=5"]).ok();
    common::eventually(
        "the page to redraw five tasks",
        Duration::from_secs(30),
        || {
            let tasks = page.words("document.body.dataset.tasks || ''");
            (tasks.len() == 5).then_some(())
        },
    );
    let drawn = page.words(svg_text);
    for name in ["search.4", "search.5"] {
        assert!(
            drawn.iter().any(|w| w == name),
            "the page draws {name}: {drawn:?}"
        );
    }
    // Same page, no reload: it still remembers the tasks it saw first.
    assert_eq!(page.words("document.body.dataset.firstTasks"), before);

    // A trace on request, from the page's own form, draws the path over the graph.
    page.eval(
        "document.getElementById('from').value = 'node:node2'; \
         document.getElementById('target').value = 'localhost:9200'; \
         document.getElementById('trace-form').requestSubmit(); 'submitted'",
    );
    let text = common::eventually("the page to show a trace", Duration::from_secs(60), || {
        let text = page.eval("document.getElementById('trace-text').textContent");
        let text = text.as_str()?.to_string();
        text.contains("replica: ").then_some(text)
    });
    assert!(text.contains("replica: search."), "{text}");
    assert_eq!(
        page.eval("document.querySelector('#graph svg g.trace') !== null"),
        Value::Bool(true)
    );
    // Back to the live picture; a node fails: the same page draws it down once the manager
    // counts it down (missed heartbeats).
    page.eval("document.getElementById('live').click(); 'live'");
    c.sk(&["node", "kill", "node3"]).ok();
    common::eventually(
        "the page to draw node3 down",
        Duration::from_secs(90),
        || {
            let down = page.words("document.body.dataset.down || ''");
            let drawn = page.words(svg_text);
            (down == ["node3"] && drawn.iter().any(|w| w == "down")).then_some(())
        },
    );

    drop(chromium);
    let _ = std::fs::remove_dir_all(&profile);
}

/// A listener on 127.0.0.1 inside node1's namespace, where a trace from node1 connects, and
/// its port. Nonblocking, so a test can poll it under a deadline and see that nothing came.
fn listen_in_node1(c: &Cluster) -> (TcpListener, u16) {
    let node =
        netcore::netns::NetNs::open(&format!("{}node1", c.ns_prefix())).expect("node1's namespace");
    let listener = node
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("enter node1")
        .expect("listen in node1");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[test]
fn ui_answers_only_its_own_host_and_origin_and_traces_only_on_a_post_with_the_page_token() {
    require_root!();
    let c = Cluster::up("ui-gate", 2);
    c.service_create(&[
        "--quiet",
        "--name",
        "search",
        "--replicas",
        "2",
        "-p",
        "9200:9200",
        "elasticsearch:2",
    ])
    .ok();
    let (_ui, url) = start_ui(&c);
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .to_string();

    // Its own names, with or without its own page's Origin, are answered.
    let (code, body) = curl(&[&format!("{url}status")]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[
        "-H",
        &format!("Origin: http://localhost:{port}"),
        &format!("http://localhost:{port}/status"),
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&["-D", "-", &url]);
    assert_eq!(code, 200, "{body}");
    let head = body.to_ascii_lowercase();
    assert!(head.contains("frame-ancestors 'none'"), "{body}");
    assert!(head.contains("cache-control: no-store"), "{body}");

    // A DNS-rebinding page: its own name, resolved to 127.0.0.1.
    let rebound = format!("http://rebind.example:{port}/");
    let (code, body) = curl(&[
        "--resolve",
        &format!("rebind.example:{port}:127.0.0.1"),
        &format!("{rebound}graph"),
    ]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("Host header") && body.contains("rebind.example"),
        "{body}"
    );

    // Another site's page, addressed correctly.
    let (code, body) = curl(&["-H", "Origin: http://evil.example", &format!("{url}graph")]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("Origin header") && body.contains("evil.example"),
        "{body}"
    );

    // GET runs no trace, whatever it asks.
    let (code, body) = curl(&[&format!("{url}trace?from=node:node1&target=localhost:9200")]);
    assert_eq!(code, 405, "{body}");

    let token = page_token(&url);
    let from = "node:node1";
    let (code, body) = post_trace(&url, None, from, "localhost:9200");
    assert_eq!(code, 403, "no token: {body}");
    assert!(body.contains("X-Swarmkit-Token"), "{body}");
    let wrong: String = token
        .chars()
        .map(|ch| if ch == '0' { '1' } else { '0' })
        .collect();
    let (code, body) = post_trace(&url, Some(&wrong), from, "localhost:9200");
    assert_eq!(code, 403, "a wrong token: {body}");
    assert!(body.contains("X-Swarmkit-Token"), "{body}");
    let (code, body) = post_trace(&url, Some(&token[..32]), from, "localhost:9200");
    assert_eq!(code, 403, "half the token: {body}");
    // The right token from another site's page is still refused.
    let mut args = trace_args(&url, Some(&token), from, "localhost:9200");
    args.extend(["-H".to_string(), "Origin: http://evil.example".to_string()]);
    let (code, body) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin header"), "{body}");

    // The page's token runs a real trace: through the routing mesh to a replica.
    let (code, body) = post_trace(&url, Some(&token), from, "localhost:9200");
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let text = t["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("trace: node1 -> localhost:9200"), "{text}");
    assert!(text.contains("replica: search."), "{text}");
    assert!(
        t["replica"]
            .as_str()
            .is_some_and(|r| r.starts_with("search.")),
        "{t}"
    );
    assert!(t["svg"].as_str().is_some_and(|s| s.contains("<svg")), "{t}");
}

/// While one trace runs, a second is refused with 429 (the server's choice over queueing);
/// once the first has finished, the next runs. The first is held running by a server in
/// node1 that accepts its connection and answers only when the test says.
#[test]
fn ui_runs_one_trace_at_a_time_and_refuses_a_second_meanwhile() {
    require_root!();
    let c = Cluster::up("ui-one", 1);
    let (_ui, url) = start_ui(&c);
    let token = page_token(&url);

    let (listener, port) = listen_in_node1(&c);
    let target = format!("127.0.0.1:{port}");

    // A trace whose connection the test holds open, so it runs until the test lets go.
    let held_trace = || {
        let child = spawn_trace(&url, &token, &target);
        let held = common::eventually(
            "the trace's connection in node1",
            Duration::from_secs(30),
            || listener.accept().ok().map(|(conn, _)| conn),
        );
        (child, held)
    };

    let (first, held) = held_trace();
    let (code, body) = post_trace(&url, Some(&token), "node:node1", &target);
    assert_eq!(code, 429, "a second trace while the first runs: {body}");
    assert!(body.contains("already running"), "{body}");
    drop(held);
    let (code, body) = answer(first.wait_with_output().expect("the first trace's curl"));
    assert_eq!(code, 200, "the first trace: {body}");
    let t: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let text = t["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(&format!("trace: node1 -> {target}")),
        "{text}"
    );

    // The first one's turn is over: the next trace runs.
    let (next, held) = held_trace();
    drop(held);
    let (code, body) = answer(next.wait_with_output().expect("the next trace's curl"));
    assert_eq!(code, 200, "the trace after the first: {body}");
}

/// The target is the user's text, handed to curl in a trace: curl must take it as one URL.
/// Read as a glob, `{127.0.0.1,127.0.0.1}` would be two connections to the listener; taken
/// literally it is a host name that does not resolve, so the trace connects nowhere.
#[test]
fn ui_trace_takes_the_target_literally_not_as_a_curl_glob() {
    require_root!();
    let c = Cluster::up("ui-glob", 1);
    let (_ui, url) = start_ui(&c);
    let token = page_token(&url);
    let (listener, port) = listen_in_node1(&c);

    let target = format!("{{127.0.0.1,127.0.0.1}}:{port}");
    let (code, body) = post_trace(&url, Some(&token), "node:node1", &target);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("did not connect"), "{body}");
    // The trace's curl has exited by the time the answer came, so any connection it made
    // is already waiting to be accepted.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the glob reached the listener: {other:?}"),
    }

    // The same listener, named plainly, is reached: the refusal above was the glob's.
    let target = format!("127.0.0.1:{port}");
    let child = spawn_trace(&url, &token, &target);
    drop(common::eventually(
        "the plain target's connection in node1",
        Duration::from_secs(30),
        || listener.accept().ok().map(|(conn, _)| conn),
    ));
    let (code, body) = answer(child.wait_with_output().expect("the trace's curl"));
    assert_eq!(code, 200, "{body}");
}
