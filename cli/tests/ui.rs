//! `swarmkit ui` in headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the page shows every node and task, and redraws by itself when a service is
//! scaled, without a reload.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
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

    let mut ui = Owned(
        Command::new(env!("CARGO_BIN_EXE_swarmkit"))
            .args(["--cluster", &c.name, "ui"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("swarmkit ui starts"),
    );
    let mut line = String::new();
    BufReader::new(ui.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ui prints its address");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("an address on 127.0.0.1 in {line:?}"))
        .to_string();

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
