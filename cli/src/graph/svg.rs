//! The graph as SVG, laid out by hand rather than by a general graph layout: nodes are
//! columns holding their tasks, each overlay is a bar under the columns it spans (its VTEPs),
//! published ports enter at the top of every column, services are a legend whose colours the
//! tasks wear. That layout stays readable at 10 nodes and 30 services, where a force or
//! layered layout of the same graph turns into a hairball. A trace is drawn over it.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::model::{GNetwork, GNode, GTask, Topology};

const MARGIN: f64 = 20.0;
const COL_W: f64 = 210.0;
const COL_GAP: f64 = 24.0;
const HEADER_H: f64 = 58.0;
const LINE_H: f64 = 14.0;
const PORTS_H: f64 = 56.0;
const NET_H: f64 = 24.0;
const NET_GAP: f64 = 18.0;
const SVC_W: f64 = 330.0;
const SVC_H: f64 = 62.0;

const PALETTE: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#393b79", "#637939",
];
const NET_PALETTE: [&str; 6] = [
    "#5b6abf", "#2a9d8f", "#c77d1a", "#8e44ad", "#b03a48", "#3d7ea6",
];

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn cx(&self) -> f64 {
        self.x + self.w / 2.0
    }
    pub fn cy(&self) -> f64 {
        self.y + self.h / 2.0
    }
}

/// Where everything landed, for drawing a trace over the picture.
#[derive(Debug, Default)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub nodes: BTreeMap<String, Rect>,
    pub ports: BTreeMap<String, Rect>,
    pub tasks: BTreeMap<String, Rect>,
    /// (network, node) -> the VTEP's point on the network's bar.
    pub vteps: BTreeMap<(String, String), (f64, f64)>,
    pub services: BTreeMap<String, Rect>,
}

/// A point of a drawn path.
#[derive(Clone, Debug, PartialEq)]
pub enum Anchor {
    /// Where published ports enter a node.
    Port(String),
    Node(String),
    /// The node's ingress sandbox (the routing mesh's load balancer).
    Sandbox(String),
    Task(String),
    /// A network's VTEP on a node.
    Vtep(String, String),
    Service(String),
}

impl Layout {
    pub fn point(&self, a: &Anchor) -> Option<(f64, f64)> {
        match a {
            Anchor::Port(n) => self.ports.get(n).map(|r| (r.x + 30.0, r.y + 4.0)),
            Anchor::Node(n) => self.nodes.get(n).map(|r| (r.cx(), r.y + 30.0)),
            Anchor::Sandbox(n) => self.nodes.get(n).map(|r| (r.x + r.w - 40.0, r.y + 48.0)),
            Anchor::Task(t) => self.tasks.get(t).map(|r| (r.cx(), r.cy())),
            Anchor::Vtep(net, n) => self.vteps.get(&(net.clone(), n.clone())).copied(),
            Anchor::Service(s) => self.services.get(s).map(|r| (r.x + 10.0, r.cy())),
        }
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn task_h(t: &GTask) -> f64 {
    20.0 + LINE_H * t.addresses.len().max(1) as f64
}

pub fn service_colour(t: &Topology, service: &str) -> &'static str {
    let i = t
        .services
        .iter()
        .position(|s| s.name == service)
        .unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn net_colour(t: &Topology, net: &str) -> &'static str {
    let i = t.networks.iter().position(|n| n.name == net).unwrap_or(0);
    NET_PALETTE[i % NET_PALETTE.len()]
}

/// The published ports as they are written above a node's column, wrapped to its width:
/// the routing mesh's, then the host-mode ports of the node's own tasks.
fn port_lines(t: &Topology, n: &GNode) -> Vec<String> {
    let ports: Vec<String> = t
        .published()
        .iter()
        .map(|(_, p)| format!(":{}", p.published))
        .chain(
            t.host_ports(n)
                .iter()
                .map(|(_, p)| format!(":{}(host)", p.published)),
        )
        .collect();
    if ports.is_empty() {
        return Vec::new();
    }
    wrap(&format!("published {}", ports.join(" ")), 26)
}

/// The height of one load-balancer endpoint's line under a node's tasks.
const LB_LINE_H: f64 = 16.0;

pub fn layout(t: &Topology) -> Layout {
    let mut l = Layout::default();
    let most = t
        .nodes
        .iter()
        .map(|n| port_lines(t, n).len())
        .max()
        .unwrap_or(0);
    let ports_h = (24.0 + 16.0 * most as f64).max(PORTS_H);
    let cols = t.nodes.len().max(1) as f64;
    let content_w = cols * COL_W + (cols - 1.0) * COL_GAP;
    let width = (MARGIN * 2.0 + content_w).max(MARGIN * 2.0 + 2.0 * SVC_W);
    let top = 44.0 + ports_h;
    let node_h = t
        .nodes
        .iter()
        .map(|n| {
            HEADER_H
                + n.tasks.iter().map(|t| task_h(t) + 8.0).sum::<f64>()
                + LB_LINE_H * n.lb_endpoints.len() as f64
                + 8.0
        })
        .fold(HEADER_H + 30.0, f64::max);
    for (i, n) in t.nodes.iter().enumerate() {
        let x = MARGIN + i as f64 * (COL_W + COL_GAP);
        l.nodes.insert(
            n.hostname.clone(),
            Rect {
                x,
                y: top,
                w: COL_W,
                h: node_h,
            },
        );
        l.ports.insert(
            n.hostname.clone(),
            Rect {
                x,
                y: 44.0,
                w: COL_W,
                h: ports_h - 8.0,
            },
        );
        let mut y = top + HEADER_H;
        for task in &n.tasks {
            let h = task_h(task);
            l.tasks.insert(
                task.name.clone(),
                Rect {
                    x: x + 10.0,
                    y,
                    w: COL_W - 20.0,
                    h,
                },
            );
            y += h + 8.0;
        }
    }
    let nets_top = top + node_h + 30.0;
    for (j, net) in t.networks.iter().enumerate() {
        let y = nets_top + j as f64 * (NET_H + NET_GAP);
        for host in &net.nodes {
            if let Some(r) = l.nodes.get(host) {
                let x = r.x + r.w - 24.0 - j as f64 * 14.0;
                l.vteps.insert((net.name.clone(), host.clone()), (x, y));
            }
        }
    }
    let svc_top = nets_top + t.networks.len() as f64 * (NET_H + NET_GAP) + 30.0;
    let per_row = ((width - 2.0 * MARGIN) / SVC_W).floor().max(1.0) as usize;
    for (k, s) in t.services.iter().enumerate() {
        l.services.insert(
            s.name.clone(),
            Rect {
                x: MARGIN + (k % per_row) as f64 * SVC_W,
                y: svc_top + 22.0 + (k / per_row) as f64 * SVC_H,
                w: SVC_W - 12.0,
                h: SVC_H - 10.0,
            },
        );
    }
    let rows = t.services.len().div_ceil(per_row) as f64;
    l.width = width;
    l.height = svc_top + 22.0 + rows * SVC_H + MARGIN;
    l
}

/// A path to draw over the graph: hops in order, each with the anchors it passes and its
/// label.
pub struct Overlay {
    pub title: String,
    pub hops: Vec<(Vec<Anchor>, String)>,
}

/// The picture: the frame and heading, then each node's column (published ports above it,
/// its tasks inside), the overlays under the columns, the service legend, and the trace
/// drawn over all of it with its hops listed below.
pub fn render(t: &Topology, overlay: Option<&Overlay>) -> String {
    let l = layout(t);
    let chars = ((l.width - 2.0 * MARGIN) / 7.0) as usize;
    let extra = overlay
        .map(|o| {
            let lines: usize = o
                .hops
                .iter()
                .map(|(_, label)| wrap(label, chars).len())
                .sum();
            30.0 + 16.0 * lines as f64
        })
        .unwrap_or(0.0);
    let height = l.height + extra;
    let mut o = String::new();
    draw_frame(&mut o, t, l.width, height);
    for n in &t.nodes {
        let (Some(r), Some(pr)) = (l.nodes.get(&n.hostname), l.ports.get(&n.hostname)) else {
            continue;
        };
        let port_lines = port_lines(t, n);
        if !port_lines.is_empty() {
            draw_ports(&mut o, r, pr, &port_lines);
        }
        draw_node(&mut o, n, r);
        let mut below = r.y + HEADER_H;
        for task in &n.tasks {
            if let Some(tr) = l.tasks.get(&task.name) {
                draw_task(&mut o, t, task, tr);
                below = tr.y + tr.h + 8.0;
            }
        }
        for (i, lb) in n.lb_endpoints.iter().enumerate() {
            let _ = writeln!(
                o,
                r##"<text class="lb-endpoint" x="{}" y="{}" font-size="11" fill="{}">lb-{} {}</text>"##,
                r.x + 12.0,
                below + 12.0 + LB_LINE_H * i as f64,
                net_colour(t, &lb.network),
                esc(&lb.network),
                esc(&lb.addr)
            );
        }
    }
    // Labels go over every network's bar and attachment lines, so no line crosses one.
    let mut labels = String::new();
    for net in &t.networks {
        draw_network(&mut o, &mut labels, t, &l, net);
    }
    o += &labels;
    draw_services(&mut o, t, &l);
    if let Some(ov) = overlay {
        draw_overlay(&mut o, &l, ov, chars);
    }
    o += "</svg>\n";
    o
}

/// The SVG element, its title and arrow markers, the white background and the heading.
fn draw_frame(o: &mut String, t: &Topology, width: f64, height: f64) {
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#,
        w = width,
        h = height
    );
    let whose = if t.nodes.iter().any(|n| n.engine == "docker") {
        "Docker Swarm at"
    } else {
        "swarmkit cluster"
    };
    let _ = writeln!(o, "<title>{whose} {}</title>", esc(&t.cluster));
    *o += r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker><marker id="trace-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#e4002b"/></marker></defs>"##;
    *o += "\n";
    let _ = writeln!(
        o,
        r##"<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>"##,
        width, height
    );
    let _ = writeln!(
        o,
        r##"<text x="{MARGIN}" y="28" font-size="18" font-weight="bold" fill="#222">{} — {} nodes, {} overlays, {} services, {} tasks</text>"##,
        esc(&heading(t)),
        t.nodes.len(),
        t.networks.len(),
        t.services.len(),
        t.tasks().count()
    );
}

/// What the picture is of: a swarmkit cluster by name, or a Docker Swarm (whose engine's
/// address is too long for a heading and says little).
fn heading(t: &Topology) -> String {
    if t.nodes.iter().any(|n| n.engine == "docker") {
        "Docker Swarm".into()
    } else {
        format!("cluster {}", t.cluster)
    }
}

/// The published ports written above a node's column `r` (in `pr`), with an arrow into it.
fn draw_ports(o: &mut String, r: &Rect, pr: &Rect, port_lines: &[String]) {
    let _ = write!(
        o,
        r##"<g class="ports"><line x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" stroke="#555" stroke-width="2" marker-end="url(#arrow)"/>"##,
        x = pr.x + 30.0,
        y1 = pr.y,
        y2 = r.y - 2.0,
    );
    for (i, line) in port_lines.iter().enumerate() {
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" font-size="12" fill="#333" xml:space="preserve">{}</text>"##,
            pr.x + 40.0,
            pr.y + 16.0 + 16.0 * i as f64,
            esc(line)
        );
    }
    *o += "</g>\n";
}

/// A node's column: its name, underlay address (and state when not ready, dashed), its
/// load-balancer driver and where its routing mesh balances.
fn draw_node(o: &mut String, n: &GNode, r: &Rect) {
    let down = n.state != "ready";
    let _ = writeln!(
        o,
        r##"<g class="node" data-node="{name}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="#444" stroke-width="1.5"{dash}/><text x="{tx}" y="{t1}" font-size="16" font-weight="bold" fill="#111">{name}</text><text x="{tx}" y="{t2}" font-size="12" fill="#333">{addr}{state}</text><text x="{tx}" y="{t3}" font-size="11" fill="#555">lb {lb} · mesh {mesh}</text></g>"##,
        name = esc(&n.hostname),
        x = r.x,
        y = r.y,
        w = r.w,
        h = r.h,
        fill = if down { "#f3e5e5" } else { "#f4f6f8" },
        dash = if down {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        },
        tx = r.x + 10.0,
        t1 = r.y + 20.0,
        t2 = r.y + 36.0,
        t3 = r.y + 50.0,
        addr = esc(&n.addr),
        state = if down {
            format!(" — {}", esc(&n.state))
        } else {
            String::new()
        },
        lb = esc(if n.lb_driver.is_empty() {
            "-"
        } else {
            &n.lb_driver
        }),
        mesh = esc(if n.mesh.is_empty() { "-" } else { &n.mesh }),
    );
}

/// A task in its service's colour, its state when not running, and its addresses in their
/// networks' colours.
fn draw_task(o: &mut String, t: &Topology, task: &GTask, tr: &Rect) {
    let c = service_colour(t, &task.service);
    let _ = write!(
        o,
        r##"<g class="task" data-task="{name}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="5" fill="{c}" fill-opacity="0.12" stroke="{c}" stroke-width="1.5"/><text x="{tx}" y="{t1}" font-size="12" font-weight="bold" fill="{c}">{name}</text>"##,
        name = esc(&task.name),
        x = tr.x,
        y = tr.y,
        w = tr.w,
        h = tr.h,
        tx = tr.x + 8.0,
        t1 = tr.y + 15.0,
    );
    if task.state != "running" {
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end" fill="#a00">{}</text>"##,
            tr.x + tr.w - 6.0,
            tr.y + 15.0,
            esc(&task.state)
        );
    }
    for (i, a) in task.addresses.iter().enumerate() {
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" font-size="11" fill="{}">{} {}</text>"##,
            tr.x + 8.0,
            tr.y + 15.0 + LINE_H * (i as f64 + 1.0),
            net_colour(t, &a.network),
            esc(&a.addr),
            esc(&a.network)
        );
    }
    *o += "</g>\n";
}

/// An overlay: a bar under the columns it spans (dashed when encrypted), a line up to each
/// node's VTEP, and its name, VNI and subnet.
fn draw_network(o: &mut String, labels: &mut String, t: &Topology, l: &Layout, net: &GNetwork) {
    // A node the layout has no column for has no VTEP on the bar.
    let vteps: Vec<(&String, (f64, f64))> = net
        .nodes
        .iter()
        .filter_map(|h| Some((h, *l.vteps.get(&(net.name.clone(), h.clone()))?)))
        .collect();
    let Some(&(_, (_, y))) = vteps.first() else {
        return;
    };
    let x0 = t
        .nodes
        .iter()
        .find(|n| net.nodes.first() == Some(&n.hostname))
        .and_then(|n| l.nodes.get(&n.hostname))
        .map(|r| r.x)
        .unwrap_or(MARGIN);
    let x1 = net
        .nodes
        .last()
        .and_then(|h| l.nodes.get(h))
        .map(|r| r.x + r.w)
        .unwrap_or(x0 + COL_W);
    let c = net_colour(t, &net.name);
    let mut dots = Vec::new();
    let _ = write!(
        o,
        r##"<g class="network" data-network="{name}"><rect x="{x0}" y="{y}" width="{w}" height="{NET_H}" rx="12" fill="{c}" fill-opacity="0.15" stroke="{c}" stroke-width="2"{dash}/>"##,
        name = esc(&net.name),
        w = x1 - x0,
        dash = if net.encrypted {
            r#" stroke-dasharray="8 4""#
        } else {
            ""
        },
    );
    for (host, (vx, vy)) in vteps {
        let bottom = l.nodes.get(host).map(|r| r.y + r.h).unwrap_or(vy);
        let _ = write!(
            o,
            r##"<line x1="{vx}" y1="{bottom}" x2="{vx}" y2="{vy}" stroke="{c}" stroke-width="2"/>"##,
        );
        dots.push((vx, vy + NET_H / 2.0));
    }
    let label = format!(
        "{}  ·  VNI {}  ·  {}{}{}",
        net.name,
        net.vni,
        net.subnet,
        if net.ingress {
            "  ·  routing mesh"
        } else {
            ""
        },
        if net.encrypted {
            "  ·  encrypted (ESP)"
        } else {
            ""
        }
    );
    // The VTEPs sit on the bar; the label goes just above it, in the gap, on a backing as
    // wide as the label (12px bold averages under 6.6px a character) that hides the lines
    // crossing the gap there.
    for (cx, cy) in dots {
        let _ = write!(o, r##"<circle cx="{cx}" cy="{cy}" r="5" fill="{c}"/>"##);
    }
    o.push_str("</g>\n");
    let _ = write!(
        labels,
        r##"<rect x="{}" y="{}" width="{}" height="15" rx="3" fill="#ffffff"/>"##,
        x0 + 10.0,
        y - 16.0,
        label.chars().count() as f64 * 6.6 + 8.0,
    );
    let _ = writeln!(
        labels,
        r##"<text class="network-label" data-network="{}" x="{}" y="{}" font-size="12" font-weight="bold" fill="{c}">{}</text>"##,
        esc(&net.name),
        x0 + 14.0,
        y - 4.5,
        esc(&label)
    );
}

/// The service legend: each service in its colour with its mode, replicas, VIPs and ports.
fn draw_services(o: &mut String, t: &Topology, l: &Layout) {
    if let Some(first) = l.services.values().map(|r| r.y).reduce(f64::min) {
        let _ = writeln!(
            o,
            r##"<text x="{MARGIN}" y="{}" font-size="14" font-weight="bold" fill="#222">services</text>"##,
            first - 8.0
        );
    }
    for s in &t.services {
        let Some(r) = l.services.get(&s.name) else {
            continue;
        };
        let c = service_colour(t, &s.name);
        let replicas = match s.desired {
            Some(d) => format!("{}/{d}", s.running),
            None => format!("{} global", s.running),
        };
        let vips = s
            .vips
            .iter()
            .map(|v| format!("{} {}", v.addr, v.network))
            .collect::<Vec<_>>()
            .join(", ");
        let ports = s
            .ports
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            o,
            r##"<g class="service" data-service="{name}"><rect x="{x}" y="{y}" width="14" height="{h}" rx="3" fill="{c}"/><text x="{tx}" y="{t1}" font-size="13" font-weight="bold" fill="{c}">{name}</text><text x="{tx2}" y="{t1}" font-size="11" fill="#555">{mode} {replicas}</text><text x="{tx}" y="{t2}" font-size="11" fill="#333">VIP {vips}</text><text x="{tx}" y="{t3}" font-size="11" fill="#333">{ports}</text></g>"##,
            name = esc(&s.name),
            x = r.x,
            y = r.y,
            h = r.h,
            tx = r.x + 22.0,
            tx2 = r.x + 30.0 + 8.0 * s.name.chars().count() as f64,
            t1 = r.y + 14.0,
            t2 = r.y + 30.0,
            t3 = r.y + 45.0,
            mode = esc(&s.mode),
            vips = esc(if vips.is_empty() { "none" } else { &vips }),
            ports = esc(&ports),
        );
    }
}

/// Splits `s` at spaces into lines of at most `max` characters (a longer word stays whole).
fn wrap(s: &str, max: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in s.split(' ') {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > max {
            lines.push(format!("    {word}"));
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

fn draw_overlay(o: &mut String, l: &Layout, ov: &Overlay, chars: usize) {
    // Every anchor in order; a hop's number sits on its first anchor.
    let pts: Vec<(Option<usize>, (f64, f64))> = ov
        .hops
        .iter()
        .enumerate()
        .flat_map(|(i, (anchors, _))| {
            anchors
                .iter()
                .filter_map(|a| l.point(a))
                .enumerate()
                .map(move |(k, p)| ((k == 0).then_some(i + 1), p))
        })
        .collect();
    *o += r#"<g class="trace">"#;
    for w in pts.windows(2) {
        let ((x1, y1), (x2, y2)) = (w[0].1, w[1].1);
        if (x1, y1) == (x2, y2) {
            continue;
        }
        let _ = write!(
            o,
            r##"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#e4002b" stroke-width="3" stroke-opacity="0.85" marker-end="url(#trace-arrow)"/>"##
        );
    }
    for (n, (x, y)) in &pts {
        let Some(n) = n else { continue };
        let _ = write!(
            o,
            r##"<circle cx="{x}" cy="{y}" r="9" fill="#e4002b"/><text x="{x}" y="{ty}" font-size="11" font-weight="bold" text-anchor="middle" fill="#fff">{n}</text>"##,
            ty = y + 4.0
        );
    }
    let mut y = l.height + 8.0;
    let _ = write!(
        o,
        r##"<text x="{MARGIN}" y="{y}" font-size="14" font-weight="bold" fill="#e4002b">{}</text>"##,
        esc(&ov.title)
    );
    for (i, (_, label)) in ov.hops.iter().enumerate() {
        for line in wrap(&format!("{}. {label}", i + 1), chars) {
            y += 16.0;
            let _ = write!(
                o,
                r##"<text x="{MARGIN}" y="{y}" font-size="12" fill="#222" xml:space="preserve">{}</text>"##,
                esc(&line)
            );
        }
    }
    *o += "</g>\n";
}
