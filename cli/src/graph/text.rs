//! The graph as words: `text` for people, `dot` for Graphviz, `mermaid` for Markdown pages.

use std::fmt::Write;

use super::model::{GNode, GTask, Topology};
use crate::render::Table;

pub fn text(t: &Topology) -> String {
    let tasks = t.tasks().count();
    let mut out = format!(
        "{} nodes, {} overlay networks, {} services, {} tasks\n",
        t.nodes.len(),
        t.networks.len(),
        t.services.len(),
        tasks
    );
    out += "\nNODES (underlay address = VTEP)\n";
    for n in &t.nodes {
        let _ = writeln!(
            out,
            "  {}  {}  {}  lb {}  mesh {}",
            n.hostname,
            n.addr,
            n.state,
            or_dash(&n.lb_driver),
            or_dash(&n.mesh)
        );
        let mut table = Table::new(&["TASK", "STATE", "ADDRESSES"]);
        for task in &n.tasks {
            table.row(vec![task.name.clone(), task.state.clone(), addresses(task)]);
        }
        for lb in &n.lb_endpoints {
            table.row(vec![
                format!("lb-{}", lb.network),
                "endpoint".into(),
                format!("{} {}", lb.network, lb.addr),
            ]);
        }
        if n.tasks.is_empty() && n.lb_endpoints.is_empty() {
            out += "      (no tasks)\n";
        } else {
            // Skip the header row: the node line above says what follows.
            for line in table.render().lines().skip(1) {
                let _ = writeln!(out, "      {}", line.trim_end());
            }
        }
    }
    out += "\nOVERLAY NETWORKS\n";
    let mut table = Table::new(&["  NAME", "VNI", "SUBNET", "SPANS", "NOTES"]);
    for net in &t.networks {
        let mut notes = Vec::new();
        if net.ingress {
            notes.push("routing mesh");
        }
        if net.encrypted {
            notes.push("encrypted (IPsec ESP)");
        }
        table.row(vec![
            format!("  {}", net.name),
            net.vni.clone(),
            net.subnet.clone(),
            if net.nodes.is_empty() {
                "-".into()
            } else {
                net.nodes.join(",")
            },
            notes.join(", "),
        ]);
    }
    out += &trimmed(&table.render());
    out += "\nSERVICES\n";
    let mut table = Table::new(&[
        "  NAME",
        "MODE",
        "REPLICAS",
        "VIPS",
        "PUBLISHED (at every node)",
    ]);
    for s in &t.services {
        table.row(vec![
            format!("  {}", s.name),
            s.mode.clone(),
            match s.desired {
                Some(d) => format!("{}/{d}", s.running),
                None => format!("{} (global)", s.running),
            },
            s.vips
                .iter()
                .map(|v| format!("{} {}", v.network, v.addr))
                .collect::<Vec<_>>()
                .join(", "),
            s.ports
                .iter()
                .map(|p| p.label())
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    out += &trimmed(&table.render());
    out
}

fn trimmed(s: &str) -> String {
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

pub fn addresses(task: &GTask) -> String {
    task.addresses
        .iter()
        .map(|a| format!("{} {}", a.network, a.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn node_label(n: &GNode) -> String {
    format!(
        "{}\\n{}\\nlb {} / mesh {}",
        n.hostname,
        n.addr,
        or_dash(&n.lb_driver),
        or_dash(&n.mesh)
    )
}

pub fn dot(t: &Topology) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph {} {{", q(&format!("swarmkit {}", t.cluster)));
    o += "  graph [rankdir=LR, fontname=\"Helvetica\", nodesep=0.3, ranksep=1.2];\n";
    o += "  node [fontname=\"Helvetica\", fontsize=11, shape=box, style=rounded];\n";
    o += "  edge [fontname=\"Helvetica\", fontsize=9];\n";
    for (s, p) in t.published() {
        let _ = writeln!(
            o,
            "  {} [shape=cds, label={}];",
            q(&format!("port:{}/{}", p.published, p.protocol)),
            q(&format!("{} ({})", p.label(), s.name))
        );
    }
    for n in &t.nodes {
        let _ = writeln!(o, "  subgraph {} {{", q(&format!("cluster_{}", n.hostname)));
        let _ = writeln!(o, "    label={};", q(&n.hostname));
        let _ = writeln!(
            o,
            "    {} [shape=box3d, style=solid, label=\"{}\"];",
            q(&format!("node:{}", n.hostname)),
            node_label(n)
        );
        for task in &n.tasks {
            let _ = writeln!(
                o,
                "    {} [label={}];",
                q(&format!("task:{}", task.name)),
                q(&format!("{} ({})", task.name, task.state))
            );
        }
        o += "  }\n";
    }
    for net in &t.networks {
        let mut label = format!("{}\\nVNI {}\\n{}", net.name, net.vni, net.subnet);
        if net.encrypted {
            label += "\\nencrypted";
        }
        let _ = writeln!(
            o,
            "  {} [shape=ellipse, style={}, label=\"{}\"];",
            q(&format!("net:{}", net.name)),
            if net.encrypted {
                "\"bold,dashed\""
            } else {
                "solid"
            },
            label
        );
    }
    for s in &t.services {
        let vips: String = s
            .vips
            .iter()
            .map(|v| format!("\\nVIP {} {}", v.network, v.addr))
            .collect();
        let _ = writeln!(
            o,
            "  {} [shape=component, style=solid, label=\"{} ({}){}\"];",
            q(&format!("svc:{}", s.name)),
            s.name,
            s.mode,
            vips
        );
        for v in &s.vips {
            let _ = writeln!(
                o,
                "  {} -> {} [style=dotted, label={}];",
                q(&format!("svc:{}", s.name)),
                q(&format!("net:{}", v.network)),
                q(&format!("VIP {}", v.addr))
            );
        }
    }
    for (_, p) in t.published() {
        for n in &t.nodes {
            let _ = writeln!(
                o,
                "  {} -> {};",
                q(&format!("port:{}/{}", p.published, p.protocol)),
                q(&format!("node:{}", n.hostname))
            );
        }
    }
    for net in &t.networks {
        for host in &net.nodes {
            let _ = writeln!(
                o,
                "  {} -> {} [dir=none, style=dashed, label=\"VTEP\"];",
                q(&format!("node:{host}")),
                q(&format!("net:{}", net.name))
            );
        }
    }
    for task in t.tasks() {
        let _ = writeln!(
            o,
            "  {} -> {};",
            q(&format!("svc:{}", task.service)),
            q(&format!("task:{}", task.name))
        );
        for a in &task.addresses {
            let _ = writeln!(
                o,
                "  {} -> {} [dir=none, label={}];",
                q(&format!("task:{}", task.name)),
                q(&format!("net:{}", a.network)),
                q(&a.addr)
            );
        }
    }
    o += "}\n";
    o
}

/// Mermaid ids may hold only letters, digits and `_`.
fn mid(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}_{clean}")
}

pub fn mermaid(t: &Topology) -> String {
    let mut o = String::from("flowchart LR\n");
    for (s, p) in t.published() {
        let _ = writeln!(
            o,
            "  {}>\"{} ({})\"]",
            mid("port", &format!("{}_{}", p.published, p.protocol)),
            p.label(),
            s.name
        );
    }
    for n in &t.nodes {
        let _ = writeln!(
            o,
            "  subgraph {}[\"{}\"]",
            mid("sg", &n.hostname),
            n.hostname
        );
        let _ = writeln!(
            o,
            "    {}[[\"{}<br>{}<br>lb {} / mesh {}\"]]",
            mid("node", &n.hostname),
            n.hostname,
            n.addr,
            or_dash(&n.lb_driver),
            or_dash(&n.mesh)
        );
        for task in &n.tasks {
            let _ = writeln!(
                o,
                "    {}(\"{}<br>{}\")",
                mid("task", &task.name),
                task.name,
                addresses(task)
            );
        }
        o += "  end\n";
    }
    for net in &t.networks {
        let _ = writeln!(
            o,
            "  {}((\"{}<br>VNI {}<br>{}{}\"))",
            mid("net", &net.name),
            net.name,
            net.vni,
            net.subnet,
            if net.encrypted { "<br>encrypted" } else { "" }
        );
        for host in &net.nodes {
            let _ = writeln!(
                o,
                "  {} -.-|VTEP| {}",
                mid("node", host),
                mid("net", &net.name)
            );
        }
    }
    for s in &t.services {
        let vips: String = s
            .vips
            .iter()
            .map(|v| format!("<br>VIP {} {}", v.network, v.addr))
            .collect();
        let _ = writeln!(
            o,
            "  {}{{\"{} ({}){}\"}}",
            mid("svc", &s.name),
            s.name,
            s.mode,
            vips
        );
    }
    for (_, p) in t.published() {
        for n in &t.nodes {
            let _ = writeln!(
                o,
                "  {} --> {}",
                mid("port", &format!("{}_{}", p.published, p.protocol)),
                mid("node", &n.hostname)
            );
        }
    }
    for task in t.tasks() {
        let _ = writeln!(
            o,
            "  {} --> {}",
            mid("svc", &task.service),
            mid("task", &task.name)
        );
    }
    o
}
