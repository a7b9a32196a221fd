//! What doctor knows about a swarm before it judges anything: the manager's view (nodes,
//! networks, services, tasks) and, per node it could read, what that node's kernel said.
//! The readers of the tools' output live here too, so the checks are pure functions of
//! these facts and can be tested on recorded output.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

/// Whose swarm it is: the kernel plumbing differs (IPVS and iptables for Docker, nftables
/// sandboxes for swarmkit), the API does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Docker,
    Swarmkit,
}

#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub nodes: Vec<NodeFacts>,
    pub networks: Vec<NetFacts>,
    pub services: Vec<SvcFacts>,
    pub tasks: Vec<TaskFacts>,
}

#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub id: String,
    pub hostname: String,
    /// The address the node advertises; its VTEP, which peers' FDB entries point at.
    pub addr: String,
    pub ready: bool,
    /// Whether its routing mesh and VIPs need the kernel's IPVS (Docker, or swarmkit's
    /// `--lb ipvs`).
    pub needs_ipvs: bool,
    /// What its kernel said; `Err` says why it could not be read.
    pub kernel: Result<KernelFacts, String>,
}

impl Default for KernelFacts {
    fn default() -> Self {
        KernelFacts {
            ipvs: Module::present("builtin"),
            esp: Module::present("builtin"),
            links: Vec::new(),
            routes_to_peers: Vec::new(),
            drops: Vec::new(),
            overlays: Vec::new(),
            sas: Vec::new(),
            listeners: Vec::new(),
            gossip: Vec::new(),
            probes: Vec::new(),
            mesh_lb: None,
            offload: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub ipvs: Module,
    pub esp: Module,
    pub links: Vec<Link>,
    /// `ip route get PEER` for every other node: (peer address, source the kernel would use).
    pub routes_to_peers: Vec<(String, Result<String, String>)>,
    /// Firewall rules in the node's namespace that drop or reject traffic.
    pub drops: Vec<DropRule>,
    pub overlays: Vec<OverlayFacts>,
    pub sas: Vec<Sa>,
    /// Sockets listening in each local task's namespace, by task ID.
    pub listeners: Vec<(String, Result<Vec<Listener>, String>)>,
    /// TCP 7946 (Docker's gossip) from this node to each other node: (peer, outcome).
    pub gossip: Vec<(String, Result<(), String>)>,
    /// Pings over an overlay from a task on this node to tasks on other nodes.
    pub probes: Vec<Probe>,
    /// The routing mesh's load balancer (swarmkit's nftables driver): where it was read
    /// (the ingress sandbox, or the node itself) and what it balances to.
    pub mesh_lb: Option<(String, LbMaps)>,
    /// The underlay NIC's driver and its offload features as `ethtool -k` lists them.
    pub offload: Option<Offload>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    pub link: String,
    pub driver: String,
    pub features: Vec<(String, bool)>,
}

impl Offload {
    pub fn on(&self, feature: &str) -> bool {
        self.features.iter().any(|(f, on)| f == feature && *on)
    }
}

/// The NIC's driver name (first line, possibly empty) and `ethtool -k` (the rest).
pub fn parse_offload(link: &str, text: &str) -> Offload {
    let mut lines = text.lines();
    let driver = lines.next().unwrap_or_default().trim().to_string();
    Offload {
        link: link.to_string(),
        driver,
        features: lines
            .filter_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                let v = v.trim();
                Some((k.trim().to_string(), v == "on" || v.starts_with("on ")))
            })
            .collect(),
    }
}

/// Whether a kernel feature is there, and what said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub present: bool,
    pub evidence: String,
}

impl Module {
    pub fn present(evidence: &str) -> Module {
        Module {
            present: true,
            evidence: evidence.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<Ipv4Net>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRule {
    /// `family table chain`, as `nft list` names it.
    pub chain: String,
    pub hook: Option<String>,
    pub handle: u64,
    /// The rule as one line, from its expressions.
    pub text: String,
    /// Transport ports it matches (destination or source), with their protocol ("udp",
    /// "tcp" or "th" for either).
    pub ports: Vec<(String, u16)>,
}

#[derive(Clone, Debug, Default)]
pub struct OverlayFacts {
    pub network_id: String,
    /// Where it was read (the sandbox's name).
    pub sandbox: String,
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<Neighbour>,
    pub mtu: Option<u32>,
    /// The sandbox's load balancer (swarmkit's nftables driver), where it was read.
    pub lb: Option<LbMaps>,
}

/// What a swarmkit sandbox balances to: each VIP's backends and each published port's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbMaps {
    /// The tools that said so.
    pub source: String,
    pub vips: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    pub ports: std::collections::BTreeMap<(String, u16), std::collections::BTreeSet<String>>,
}

/// The firewall marks a sandbox puts on each VIP's and published port's traffic for IPVS
/// to balance (swarmkit's `vip_marks`/`port_marks` maps, Docker's mangle MARK rules).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub vips: Vec<(String, u32)>,
    pub ports: Vec<((String, u16), u32)>,
}

impl Marks {
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.ports.is_empty()
    }

    /// Joined with IPVS's firewall-mark services (`ipvsadm -Ln`): what each VIP and port
    /// is balanced to.
    pub fn join(&self, ipvs: &std::collections::BTreeMap<u32, Vec<String>>) -> LbMaps {
        let backends = |mark: &u32| -> std::collections::BTreeSet<String> {
            ipvs.get(mark).into_iter().flatten().cloned().collect()
        };
        LbMaps {
            source: "ipvsadm -Ln, joined by firewall mark with the sandbox's marks".into(),
            vips: self
                .vips
                .iter()
                .map(|(vip, m)| (vip.clone(), backends(m)))
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|(key, m)| (key.clone(), backends(m)))
                .collect(),
        }
    }
}

/// swarmkit's IPVS driver: `vip_marks` (VIP : mark) and `port_marks` (protocol . port : mark)
/// in `nft -j list table ip swarmkit`.
pub fn parse_nft_marks(json: &str) -> Marks {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let mut marks = Marks::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let m = &item["map"];
        let name = m["name"].as_str().unwrap_or_default();
        for e in m["elem"].as_array().into_iter().flatten() {
            let Some(mark) = e[1].as_u64() else { continue };
            match name {
                "vip_marks" => {
                    if let Some(vip) = e[0].as_str() {
                        marks.vips.push((vip.to_string(), mark as u32));
                    }
                }
                "port_marks" => {
                    if let Some(key) = e[0]["concat"].as_array()
                        && let (Some(proto), Some(port)) = (
                            key.first().and_then(Value::as_str),
                            key.get(1).and_then(Value::as_u64),
                        )
                    {
                        marks
                            .ports
                            .push(((proto.to_string(), port as u16), mark as u32));
                    }
                }
                _ => {}
            }
        }
    }
    marks
}

/// Docker's sandboxes: `iptables -t mangle -S` rules that mark a VIP (`-d VIP/32`) or a
/// published port (`-p tcp --dport P`) for IPVS.
pub fn parse_mangle_marks(rules: &str) -> Marks {
    let mut marks = Marks::default();
    for line in rules.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
        let Some(mark) = after("--set-xmark")
            .or_else(|| after("--set-mark"))
            .and_then(|m| m.split('/').next())
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
        else {
            continue;
        };
        if let Some(port) = after("--dport").and_then(|p| p.parse().ok()) {
            let proto = after("-p")
                .map(|p| p.to_string())
                .unwrap_or_else(|| "tcp".into());
            marks.ports.push(((proto, port), mark));
        } else if let Some(dst) = after("-d") {
            marks
                .vips
                .push((dst.trim_end_matches("/32").to_string(), mark));
        }
    }
    marks
}

/// `ipvsadm -Ln`: each firewall-mark service's real servers (addresses without ports).
pub fn parse_ipvs_fwm(text: &str) -> std::collections::BTreeMap<u32, Vec<String>> {
    let mut out: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first() {
            Some(&"FWM") => {
                current = w.get(1).and_then(|m| m.parse().ok());
                if let Some(m) = current {
                    out.entry(m).or_default();
                }
            }
            Some(&"TCP") | Some(&"UDP") | Some(&"SCTP") => current = None,
            Some(&"->") => {
                if let (Some(m), Some(addr)) = (current, w.get(1)) {
                    let ip = addr.rsplit_once(':').map(|(a, _)| a).unwrap_or(addr);
                    out.entry(m).or_default().push(ip.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// `nft -j list table ip swarmkit`: the `backends` map (VIP . slot : backend) and the
/// `port_backends` map (protocol . port . slot : backend).
pub fn parse_lb_maps(json: &str) -> Option<LbMaps> {
    let v: Value = serde_json::from_str(json).ok()?;
    let mut lb = LbMaps {
        source: "nft list table ip swarmkit".into(),
        ..LbMaps::default()
    };
    let mut found = false;
    for item in v["nftables"].as_array()? {
        let m = &item["map"];
        let name = m["name"].as_str().unwrap_or_default();
        if name != "backends" && name != "port_backends" {
            continue;
        }
        found = true;
        for e in m["elem"].as_array().into_iter().flatten() {
            let (Some(key), Some(backend)) = (e[0]["concat"].as_array(), e[1].as_str()) else {
                continue;
            };
            if name == "backends" {
                if let Some(vip) = key.first().and_then(Value::as_str) {
                    lb.vips
                        .entry(vip.to_string())
                        .or_default()
                        .insert(backend.to_string());
                }
            } else if let (Some(proto), Some(port)) = (
                key.first().and_then(Value::as_str),
                key.get(1).and_then(Value::as_u64),
            ) {
                lb.ports
                    .entry((proto.to_string(), port as u16))
                    .or_default()
                    .insert(backend.to_string());
            }
        }
    }
    found.then_some(lb)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: String,
    pub dev: String,
    pub dst: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: String,
    pub mac: String,
    pub dev: String,
    pub permanent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sa {
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub spi: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub network: String,
    pub from_task: String,
    pub to_task: String,
    pub to_addr: String,
    pub outcome: Result<(), String>,
}

#[derive(Clone, Debug, Default)]
pub struct NetFacts {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnets: Vec<Ipv4Net>,
    pub encrypted: bool,
    pub ingress: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SvcFacts {
    pub id: String,
    pub name: String,
    pub vip: bool,
    /// (network ID, VIP without its length)
    pub vips: Vec<(String, String)>,
    /// (published, target, protocol, ingress mode)
    pub ports: Vec<(u16, u16, String, bool)>,
}

#[derive(Clone, Debug, Default)]
pub struct TaskFacts {
    pub id: String,
    /// `service.slot`, as `service ps` names it.
    pub name: String,
    pub service_id: String,
    pub node_id: String,
    pub running: bool,
    pub container_id: String,
    /// (network ID, address without its length)
    pub addrs: Vec<(String, String)>,
}

impl Facts {
    pub fn node(&self, id: &str) -> Option<&NodeFacts> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn service(&self, id: &str) -> Option<&SvcFacts> {
        self.services.iter().find(|s| s.id == id)
    }

    pub fn network(&self, id: &str) -> Option<&NetFacts> {
        self.networks.iter().find(|n| n.id == id)
    }

    pub fn task(&self, id: &str) -> Option<&TaskFacts> {
        self.tasks.iter().find(|t| t.id == id)
    }

    pub fn running(&self) -> impl Iterator<Item = &TaskFacts> {
        self.tasks.iter().filter(|t| t.running)
    }
}

/// `ip -j addr show`: each link's name, MTU and IPv4 addresses.
pub fn parse_links(json: &str) -> Vec<Link> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|l| Link {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            mtu: l["mtu"].as_u64().unwrap_or_default() as u32,
            addrs: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .filter_map(|a| {
                    let ip: Ipv4Addr = a["local"].as_str()?.parse().ok()?;
                    Ipv4Net::new(ip, a["prefixlen"].as_u64()? as u8).ok()
                })
                .collect(),
        })
        .collect()
}

/// `ip -j route get ADDR`: the source address the kernel would send from.
pub fn parse_route_source(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    v[0]["prefsrc"].as_str().map(str::to_string)
}

/// `bridge -j fdb show`: entries that send a MAC to a remote VTEP.
pub fn parse_fdb(json: &str) -> Vec<FdbEntry> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(FdbEntry {
                mac: e["mac"].as_str()?.to_string(),
                dev: e["ifname"].as_str().unwrap_or_default().to_string(),
                dst: e["dst"].as_str()?.to_string(),
            })
        })
        .collect()
}

/// `ip -j neigh show`: IPv4 entries with a link-layer address.
pub fn parse_neighbours(json: &str) -> Vec<Neighbour> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let ip = e["dst"].as_str()?;
            ip.parse::<Ipv4Addr>().ok()?;
            Some(Neighbour {
                ip: ip.to_string(),
                mac: e["lladdr"].as_str()?.to_string(),
                dev: e["dev"].as_str().unwrap_or_default().to_string(),
                permanent: e["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "PERMANENT")),
            })
        })
        .collect()
}

/// `ip xfrm state`: each SA's endpoints, protocol and SPI.
pub fn parse_xfrm_states(text: &str) -> Vec<Sa> {
    let mut sas = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"src") || words.get(2) != Some(&"dst") {
            continue;
        }
        let (src, dst) = (words[1].to_string(), words[3].to_string());
        let Some(next) = lines.peek() else { break };
        let w: Vec<&str> = next.split_whitespace().collect();
        let field = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1))
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        sas.push(Sa {
            src,
            dst,
            proto: field("proto"),
            spi: field("spi"),
        });
    }
    sas
}

/// `/proc/net/tcp` (or tcp6): sockets in LISTEN state.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.get(3) != Some(&"0A") {
                return None;
            }
            let (addr, port) = w.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(Listener {
                addr: proc_addr(addr)?,
                port,
            })
        })
        .collect()
}

/// `/proc/net/tcp` prints an address as the hex of its bytes in host (little-endian) order
/// per 32-bit word.
fn proc_addr(hex: &str) -> Option<String> {
    match hex.len() {
        8 => {
            let n = u32::from_str_radix(hex, 16).ok()?;
            Some(Ipv4Addr::from(n.swap_bytes()).to_string())
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in hex.as_bytes().chunks(8).enumerate() {
                let n = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            })
        }
        _ => None,
    }
}

/// Whether a listener accepts connections that arrive from outside the task.
pub fn listens_beyond_loopback(l: &Listener) -> bool {
    !(l.addr.starts_with("127.") || l.addr == "::1")
}

/// `nft -j list ruleset`: the rules whose verdict is drop or reject, with the ports they
/// match, and the hooks of their chains.
pub fn parse_nft_drops(json: &str) -> Vec<DropRule> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let chain_key = |o: &Value| {
        format!(
            "{} {} {}",
            o["family"].as_str().unwrap_or_default(),
            o["table"].as_str().unwrap_or_default(),
            o["chain"]
                .as_str()
                .or_else(|| o["name"].as_str())
                .unwrap_or_default()
        )
    };
    let hooks: Vec<(String, String)> = items
        .iter()
        .filter_map(|i| {
            let c = &i["chain"];
            Some((chain_key(c), c["hook"].as_str()?.to_string()))
        })
        .collect();
    items
        .iter()
        .filter_map(|i| {
            let r = &i["rule"];
            let exprs = r["expr"].as_array()?;
            let verdict = exprs.iter().find_map(|e| {
                if e.get("drop").is_some() {
                    Some("drop")
                } else if e.get("reject").is_some() {
                    Some("reject")
                } else {
                    None
                }
            })?;
            let key = chain_key(r);
            let ports = exprs.iter().flat_map(matched_ports).collect();
            Some(DropRule {
                hook: hooks
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, h)| h.clone()),
                chain: key,
                handle: r["handle"].as_u64().unwrap_or_default(),
                text: format!("{} {verdict}", describe_matches(exprs)),
                ports,
            })
        })
        .collect()
}

fn matched_ports(e: &Value) -> Vec<(String, u16)> {
    let m = &e["match"];
    let payload = &m["left"]["payload"];
    let field = payload["field"].as_str().unwrap_or_default();
    if m.is_null() || !(field == "dport" || field == "sport") {
        return Vec::new();
    }
    let proto = payload["protocol"].as_str().unwrap_or("th").to_string();
    let right = &m["right"];
    let mut ports = Vec::new();
    let mut add = |v: &Value| {
        if let Some(p) = v.as_u64() {
            ports.push((proto.clone(), p as u16));
        } else if let Some(r) = v["range"].as_array()
            && let (Some(lo), Some(hi)) = (r[0].as_u64(), r[1].as_u64())
        {
            // Only the ports doctor asks about matter; a wide range is named by them.
            for p in [4789u64, 7946] {
                if (lo..=hi).contains(&p) {
                    ports.push((proto.clone(), p as u16));
                }
            }
        }
    };
    match right.get("set").and_then(Value::as_array) {
        Some(set) => set.iter().for_each(&mut add),
        None => add(right),
    }
    ports
}

/// A short rendering of a rule's matches, enough to recognise it in `nft list ruleset`.
fn describe_matches(exprs: &[Value]) -> String {
    let words: Vec<String> = exprs
        .iter()
        .filter_map(|e| {
            let m = e.get("match")?;
            let left = &m["left"];
            let lhs = if let Some(p) = left.get("payload") {
                format!(
                    "{} {}",
                    p["protocol"].as_str().unwrap_or("th"),
                    p["field"].as_str().unwrap_or("?")
                )
            } else if let Some(meta) = left.get("meta") {
                meta["key"].as_str().unwrap_or("meta").to_string()
            } else {
                left.to_string()
            };
            let rhs = match &m["right"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let op = m["op"].as_str().unwrap_or("==");
            Some(if op == "==" {
                format!("{lhs} {rhs}")
            } else {
                format!("{lhs} {op} {rhs}")
            })
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_drop_rules_name_their_ports_and_hooks() {
        let json = r#"{"nftables":[{"metainfo":{}},
          {"table":{"family":"inet","name":"fault","handle":1}},
          {"chain":{"family":"inet","table":"fault","name":"in","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},
          {"rule":{"family":"inet","table":"fault","chain":"in","handle":2,"expr":[
             {"match":{"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":4789}},
             {"drop":null}]}},
          {"rule":{"family":"inet","table":"fault","chain":"in","handle":3,"expr":[
             {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"set":[22,7946]}}},
             {"reject":null}]}},
          {"rule":{"family":"inet","table":"fault","chain":"in","handle":4,"expr":[
             {"match":{"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":{"range":[4000,5000]}}},
             {"accept":null}]}}]}"#;
        let drops = parse_nft_drops(json);
        assert_eq!(drops.len(), 2, "{drops:?}");
        assert_eq!(drops[0].chain, "inet fault in");
        assert_eq!(drops[0].hook.as_deref(), Some("input"));
        assert_eq!(drops[0].ports, vec![("udp".to_string(), 4789)]);
        assert_eq!(drops[0].text, "udp dport 4789 drop");
        assert_eq!(
            drops[1].ports,
            vec![("tcp".to_string(), 22), ("tcp".to_string(), 7946)]
        );
    }

    #[test]
    fn swarmkit_lb_maps_give_backends_per_vip_and_port() {
        let json = r#"{"nftables": [{"metainfo": {}},
          {"map": {"family": "ip", "name": "backends", "table": "swarmkit", "elem": [[{"concat": ["10.0.0.2", 0]}, "10.0.0.3"], [{"concat": ["10.0.0.2", 1]}, "10.0.0.4"]]}},
          {"map": {"family": "ip", "name": "port_backends", "table": "swarmkit", "elem": [[{"concat": ["tcp", 8080, 65536]}, "10.255.0.5"]]}},
          {"map": {"family": "ip", "name": "vips", "table": "swarmkit"}}]}"#;
        let lb = parse_lb_maps(json).unwrap();
        assert_eq!(lb.vips["10.0.0.2"].len(), 2);
        assert!(lb.ports[&("tcp".to_string(), 8080)].contains("10.255.0.5"));
        assert_eq!(parse_lb_maps(r#"{"nftables": []}"#), None);
    }

    #[test]
    fn offload_features_parse() {
        let o = parse_offload(
            "ens192",
            "vmxnet3\nFeatures for ens192:\nrx-checksumming: on\ntx-checksumming: on\n\ttx-checksum-ip-generic: on\n\ttx-udp_tnl-csum-segmentation: off [fixed]\n",
        );
        assert_eq!(o.driver, "vmxnet3");
        assert!(o.on("tx-checksum-ip-generic"));
        assert!(!o.on("tx-udp_tnl-csum-segmentation"));
    }

    #[test]
    fn ipvs_balancers_join_marks_to_real_servers() {
        let ipvs = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nFWM  256 rr\n  -> 10.0.0.3:0                   Masq    1      0          0\n  -> 10.0.0.4:0                   Masq    1      0          0\nFWM  257 rr\nTCP  10.1.1.1:80 rr\n  -> 10.9.9.9:80                  Masq    1      0          0\n";
        let fwm = parse_ipvs_fwm(ipvs);
        assert_eq!(fwm[&256], vec!["10.0.0.3", "10.0.0.4"]);
        assert!(fwm[&257].is_empty());
        assert_eq!(fwm.len(), 2);
        let mangle = "-P PREROUTING ACCEPT\n-A PREROUTING -p tcp -m tcp --dport 9200 -j MARK --set-xmark 0x101/0xffffffff\n-A OUTPUT -d 10.0.1.2/32 -j MARK --set-xmark 0x100/0xffffffff\n";
        let marks = parse_mangle_marks(mangle);
        assert_eq!(marks.vips, vec![("10.0.1.2".to_string(), 256)]);
        assert_eq!(marks.ports, vec![(("tcp".to_string(), 9200), 257)]);
        let lb = marks.join(&fwm);
        assert_eq!(lb.vips["10.0.1.2"].len(), 2);
        assert!(lb.ports[&("tcp".to_string(), 9200)].is_empty());
        let nft = r#"{"nftables":[{"map":{"name":"vip_marks","elem":[["10.0.0.2",256]]}},{"map":{"name":"port_marks","elem":[[{"concat":["tcp",8080]},257]]}}]}"#;
        let m = parse_nft_marks(nft);
        assert_eq!(m.vips, vec![("10.0.0.2".to_string(), 256)]);
        assert_eq!(m.ports, vec![(("tcp".to_string(), 8080), 257)]);
    }

    #[test]
    fn proc_net_tcp_listeners_decode_both_families() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n   2: 0100007F:0050 0200007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let l = parse_proc_net_tcp(v4);
        assert_eq!(
            l,
            vec![
                Listener {
                    addr: "127.0.0.1".into(),
                    port: 80
                },
                Listener {
                    addr: "0.0.0.0".into(),
                    port: 8080
                }
            ]
        );
        assert!(!listens_beyond_loopback(&l[0]));
        assert!(listens_beyond_loopback(&l[1]));
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0\n   1: 00000000000000000000000000000000:0051 00000000000000000000000000000000:0000 0A 0\n";
        let l6 = parse_proc_net_tcp(v6);
        assert_eq!(l6[0].addr, "::1");
        assert_eq!(l6[1].addr, "::");
        assert!(!listens_beyond_loopback(&l6[0]));
    }

    #[test]
    fn xfrm_states_give_endpoints_and_spis() {
        let text = "src 10.0.0.1 dst 10.0.0.2\n\tproto esp spi 0x0000abcd reqid 1 mode transport\n\treplay-window 0\n\taead rfc4106(gcm(aes)) 0x00 64\nsrc 10.0.0.2 dst 10.0.0.1\n\tproto esp spi 0x00001234 reqid 1 mode transport\n";
        let sas = parse_xfrm_states(text);
        assert_eq!(sas.len(), 2);
        assert_eq!(sas[0].src, "10.0.0.1");
        assert_eq!(sas[0].dst, "10.0.0.2");
        assert_eq!(sas[0].proto, "esp");
        assert_eq!(sas[1].spi, "0x00001234");
    }

    #[test]
    fn fdb_neighbours_links_and_routes_parse() {
        let fdb = r#"[{"mac":"02:42:0a:00:01:03","ifname":"vxlan0","dst":"10.9.0.3","flags":[],"state":"permanent"},
                      {"mac":"33:33:00:00:00:01","ifname":"vxlan0","flags":["self"],"state":"permanent"}]"#;
        assert_eq!(
            parse_fdb(fdb),
            vec![FdbEntry {
                mac: "02:42:0a:00:01:03".into(),
                dev: "vxlan0".into(),
                dst: "10.9.0.3".into()
            }]
        );
        let neigh = r#"[{"dst":"10.0.1.3","dev":"vxlan0","lladdr":"02:42:0a:00:01:03","state":["PERMANENT"]},
                        {"dst":"fe80::1","dev":"br0","lladdr":"aa:bb:cc:dd:ee:ff","state":["STALE"]}]"#;
        let n = parse_neighbours(neigh);
        assert_eq!(n.len(), 1);
        assert!(n[0].permanent);
        let links = r#"[{"ifname":"eth0","mtu":1400,"addr_info":[{"family":"inet","local":"10.9.0.2","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let l = parse_links(links);
        assert_eq!(l[0].mtu, 1400);
        assert_eq!(l[0].addrs, vec!["10.9.0.2/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            parse_route_source(
                r#"[{"dst":"10.9.0.3","dev":"eth0","prefsrc":"10.9.0.2","flags":[],"uid":0,"cache":[]}]"#
            ),
            Some("10.9.0.2".into())
        );
    }
}
