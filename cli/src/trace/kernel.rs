//! Reading kernel state inside nodes, sandboxes and tasks: conntrack entries, IPVS
//! connection entries, neighbour and FDB entries and link counters. Every read runs the
//! usual tool through `swarmkit node exec` / `swarmkit exec`, the same machinery a person
//! would use, so it works on every backend and shows nothing the kernel did not say.

use anyhow::{Context, bail};
use serde_json::Value;

pub use crate::reach::{Place, Swarm};

/// Runs `argv` at `place` and returns its stdout; a non-zero exit is an error carrying stderr.
pub async fn run(swarm: &Swarm, place: &Place, argv: &[&str]) -> anyhow::Result<String> {
    let out = swarm.output(place, argv).await?;
    if !out.ok {
        bail!(
            "{} at {place} failed: {}",
            argv.join(" "),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// Runs `argv` at `place` and returns its stdout whatever its exit status.
pub async fn run_status(swarm: &Swarm, place: &Place, argv: &[&str]) -> anyhow::Result<String> {
    Ok(swarm.output(place, argv).await?.stdout)
}

/// One direction of a conntrack tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: String,
    pub state: String,
    pub orig: Tuple,
    pub reply: Tuple,
}

impl CtEntry {
    /// The destination was rewritten (DNAT, REDIRECT or an IPVS/nft balancing decision).
    pub fn dnat(&self) -> bool {
        self.reply.src != self.orig.dst || self.reply.sport != self.orig.dport
    }

    /// The tuple the next hop sees as its original direction, read off this entry's reply
    /// direction (so any SNAT or masquerade on the way is followed, not assumed).
    pub fn onward(&self) -> Tuple {
        Tuple {
            src: self.reply.dst.clone(),
            sport: self.reply.dport,
            dst: self.reply.src.clone(),
            dport: self.reply.sport,
        }
    }
}

/// Parses `conntrack -L` lines: the first src/dst/sport/dport are the original direction,
/// the second the reply.
pub fn parse_conntrack(out: &str) -> Vec<CtEntry> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().peekable();
            // /proc/net/nf_conntrack starts each line with the family: `ipv4 2 tcp 6 ...`.
            if words.peek().is_some_and(|w| w.starts_with("ipv")) {
                words.next();
                words.next();
            }
            let proto = words.next()?.to_string();
            let mut e = CtEntry {
                proto,
                ..CtEntry::default()
            };
            let mut seen = [0usize; 4];
            for w in words {
                if let Some((k, v)) = w.split_once('=') {
                    let i = match k {
                        "src" => 0,
                        "dst" => 1,
                        "sport" => 2,
                        "dport" => 3,
                        _ => continue,
                    };
                    let t = if seen[i] == 0 {
                        &mut e.orig
                    } else {
                        &mut e.reply
                    };
                    seen[i] += 1;
                    match i {
                        0 => t.src = v.to_string(),
                        1 => t.dst = v.to_string(),
                        2 => t.sport = v.parse().ok()?,
                        _ => t.dport = v.parse().ok()?,
                    }
                } else if w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && e.state.is_empty()
                    && seen == [0; 4]
                {
                    e.state = w.to_string();
                }
            }
            (seen == [2; 4]).then_some(e)
        })
        .collect()
}

/// The conntrack entries at `place` whose original direction matches `want` (empty fields
/// and zero ports match anything).
pub async fn conntrack(
    swarm: &Swarm,
    place: &Place,
    proto: &str,
    want: &Tuple,
) -> anyhow::Result<Vec<CtEntry>> {
    let mut argv = vec![
        "conntrack".to_string(),
        "-L".into(),
        "-p".into(),
        proto.into(),
    ];
    if want.sport != 0 {
        argv.extend(["--orig-port-src".into(), want.sport.to_string()]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = match run(swarm, place, &argv).await {
        Ok(out) => out,
        // A host without the conntrack tool: its kernel lists the same table in /proc.
        Err(err) if missing_tool(&format!("{err:#}"), "conntrack") => {
            run(swarm, place, &["cat", "/proc/net/nf_conntrack"]).await?
        }
        Err(err) => return Err(err),
    };
    Ok(parse_conntrack(&out)
        .into_iter()
        .filter(|e| {
            e.proto == proto
                && (want.sport == 0 || e.orig.sport == want.sport)
                && (want.src.is_empty() || e.orig.src == want.src)
                && (want.dst.is_empty() || e.orig.dst == want.dst)
                && (want.dport == 0 || e.orig.dport == want.dport)
        })
        .collect())
}

/// The table that turns connection tracking on in a task's namespace: the kernel tracks only
/// in a namespace whose rules use it. It filters nothing.
const TRACKING: &str = "swarmkit-conntrack";

/// Turns connection tracking on at `place` (a task) for a trace's own connection. Some(true)
/// where this call turned it on (and [`untrack`] should turn it off again), Some(false) where
/// it already was, None where it could not be (the walk then reads the hops around the task).
pub async fn track(swarm: &Swarm, place: &Place) -> Option<bool> {
    if run(swarm, place, &["nft", "list", "table", "ip", TRACKING])
        .await
        .is_ok()
    {
        return Some(false);
    }
    let on = format!(
        "add table ip {TRACKING}; \
         add chain ip {TRACKING} track {{ type filter hook prerouting priority -300; policy accept; }}; \
         add rule ip {TRACKING} track ct state established,related accept"
    );
    run(swarm, place, &["nft", &on]).await.ok().map(|_| true)
}

/// Turns off the tracking [`track`] turned on at `place`.
pub async fn untrack(swarm: &Swarm, place: &Place) -> anyhow::Result<()> {
    run(swarm, place, &["nft", "delete", "table", "ip", TRACKING])
        .await
        .map(|_| ())
}

/// What `host` resolves to at `place` (a task: its resolver is the embedded DNS at
/// 127.0.0.11), and the tool that asked.
pub async fn resolve(
    swarm: &Swarm,
    place: &Place,
    host: &str,
) -> anyhow::Result<(Vec<String>, &'static str)> {
    match run(
        swarm,
        place,
        // -q: a service named like a record type (srv, mx, any) is still the name asked.
        &["dig", "+short", "+time=2", "+tries=2", "-q", host],
    )
    .await
    {
        Ok(out) => Ok((
            out.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            "dig @127.0.0.11",
        )),
        // QEMU guests have busybox's nslookup, not dig (whose libraries would double the
        // guest volume). It exits non-zero for a name with no answer: no addresses.
        Err(err) if missing_tool(&format!("{err:#}"), "dig") => {
            let out = run_status(swarm, place, &["nslookup", host]).await?;
            Ok((parse_nslookup(&out), "nslookup @127.0.0.11"))
        }
        Err(err) => Err(err),
    }
}

/// busybox nslookup: the server's lines, then `Name: HOST` and an `Address: IP` per answer.
pub fn parse_nslookup(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// The shell's or nsenter's words for a program that is not installed.
fn missing_tool(err: &str, tool: &str) -> bool {
    err.contains(&format!("{tool}: not found"))
        || err.contains(&format!("can't execute '{tool}': No such file"))
}

/// One line of `ipvsadm -Lnc`: the connection IPVS balanced and where it sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsConn {
    pub state: String,
    pub source: String,
    pub virtual_: String,
    pub destination: String,
}

pub fn parse_ipvs_conns(out: &str) -> Vec<IpvsConn> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 6 && matches!(w[0], "TCP" | "UDP")).then(|| IpvsConn {
                state: w[2].to_string(),
                source: w[3].to_string(),
                virtual_: w[4].to_string(),
                destination: w[5].to_string(),
            })
        })
        .collect()
}

/// IPVS connection entries at `place` from source port `sport`; empty where the place has
/// no IPVS (the nftables driver), which is not an error.
pub async fn ipvs_conns(swarm: &Swarm, place: &Place, sport: u16) -> Vec<IpvsConn> {
    match run(swarm, place, &["ipvsadm", "-Lnc"]).await {
        Ok(out) => parse_ipvs_conns(&out)
            .into_iter()
            .filter(|c| c.source.rsplit(':').next() == Some(&sport.to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Where IPVS should balance at `place` but the kernel has none: what says so (the
/// kernel's missing `/proc/net/ip_vs`, and the marks the engine set for it in the mangle
/// table). None where IPVS is there, or where that cannot be told.
pub async fn ipvs_missing(swarm: &Swarm, place: &Place) -> Option<String> {
    let probe = "if [ -e /proc/net/ip_vs ]; then echo present; else echo absent; fi";
    let out = run(swarm, place, &["sh", "-c", probe]).await.ok()?;
    if out.trim() != "absent" {
        return None;
    }
    let marks = run_status(swarm, place, &["iptables", "-t", "mangle", "-S"])
        .await
        .unwrap_or_default();
    let marks: Vec<&str> = marks
        .lines()
        .filter(|l| l.contains("MARK"))
        .take(3)
        .collect();
    Some(if marks.is_empty() {
        "no /proc/net/ip_vs".to_string()
    } else {
        format!(
            "no /proc/net/ip_vs; mangle marks it for IPVS: {}",
            marks.join("; ")
        )
    })
}

/// On a Docker node, whether its nat table lacks the routing mesh's DNAT for `port` (the
/// DOCKER-INGRESS chain): what says so, or None where the rule is there.
pub async fn docker_mesh_missing(swarm: &Swarm, place: &Place, port: u16) -> Option<String> {
    let rules = run(swarm, place, &["iptables", "-t", "nat", "-S"])
        .await
        .ok()?;
    let dport = format!("--dport {port} ");
    let dnat = rules
        .lines()
        .any(|l| l.contains(&dport) && l.contains("DNAT"));
    (!dnat).then(|| {
        format!(
            "conntrack -L; iptables -t nat -S: no DNAT for dport {port}{}",
            if rules.contains("DOCKER-INGRESS") {
                ""
            } else {
                ", no DOCKER-INGRESS chain at all"
            }
        )
    })
}

/// The VXLAN hop towards `addr` as a network sandbox's kernel has it: the permanent
/// neighbour entry, the FDB entry naming the remote VTEP, the device's VNI and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanHop {
    pub device: String,
    pub mac: String,
    /// None when the MAC sits on a local bridge port: the peer runs on this node.
    pub remote_vtep: Option<String>,
    pub vni: Option<u64>,
    pub tx_packets: Option<u64>,
    /// No `bridge` tool where the hop was read, so no FDB entry either.
    pub fdb_unreadable: bool,
}

/// `ip -j ARGS` at `place`, parsed.
async fn ip_json(swarm: &Swarm, place: &Place, args: &[&str]) -> anyhow::Result<Value> {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = run(swarm, place, &argv).await?;
    serde_json::from_str(&out).with_context(|| format!("{} at {place}: not JSON", argv.join(" ")))
}

pub async fn vxlan_hop(swarm: &Swarm, sandbox: &Place, addr: &str) -> anyhow::Result<VxlanHop> {
    let neigh = ip_json(swarm, sandbox, &["neigh", "show", "to", addr]).await?;
    // A host without iproute2's `bridge` (an SSH node set up by hand): the hop then says the
    // FDB could not be read.
    let fdb: Option<Value> = run(swarm, sandbox, &["bridge", "-j", "fdb", "show"])
        .await
        .ok()
        .map(|out| serde_json::from_str(&out).unwrap_or(Value::Null));
    let mac = neigh
        .as_array()
        .and_then(|a| a.iter().find_map(|n| n["lladdr"].as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| netcore_mac(addr));
    let Some(fdb) = fdb else {
        return Ok(VxlanHop {
            device: neigh[0]["dev"].as_str().unwrap_or_default().to_string(),
            mac,
            fdb_unreadable: true,
            ..VxlanHop::default()
        });
    };
    // A remote peer's MAC has a `dst` (the VTEP) on the vxlan device; a local one sits on
    // a bridge port with no `dst`.
    let entries = fdb.as_array().cloned().unwrap_or_default();
    let same_mac = |e: &&Value| e["mac"].as_str() == Some(mac.as_str());
    let entry = entries
        .iter()
        .filter(same_mac)
        .find(|e| e["dst"].is_string())
        .or_else(|| {
            entries
                .iter()
                .filter(same_mac)
                .find(|e| !e["master"].is_null())
        })
        .cloned()
        .unwrap_or(Value::Null);
    let device = entry["ifname"].as_str().unwrap_or_default().to_string();
    let mut hop = VxlanHop {
        remote_vtep: entry["dst"].as_str().map(str::to_string),
        device: device.clone(),
        mac,
        ..VxlanHop::default()
    };
    if hop.remote_vtep.is_some() && !device.is_empty() {
        let link = ip_json(
            swarm,
            sandbox,
            &["-s", "-d", "link", "show", "dev", &device],
        )
        .await?;
        hop.vni = link[0]["linkinfo"]["info_data"]["id"].as_u64();
        hop.tx_packets = link[0]["stats64"]["tx"]["packets"].as_u64();
    }
    Ok(hop)
}

/// Tasks' MACs are derived from their addresses (`02:42:<ip>`), as Docker's are; used only to
/// find a local bridge port when no neighbour entry names the address.
fn netcore_mac(addr: &str) -> String {
    let octets: Vec<u8> = addr.split('.').filter_map(|o| o.parse().ok()).collect();
    let mut mac = String::from("02:42");
    for o in octets {
        mac += &format!(":{o:02x}");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_give_both_directions() {
        let out = "tcp      6 119 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=41001 dport=9200 src=172.18.0.2 dst=172.18.0.1 sport=9200 dport=41001 [ASSURED] mark=0 use=1\n\
                   udp      17 29 src=10.0.0.3 dst=10.0.0.2 sport=5353 dport=53 src=10.0.0.9 dst=10.0.0.3 sport=53 dport=5353 mark=0 use=1\n\
                   conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n";
        let e = parse_conntrack(out);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].state, "TIME_WAIT");
        assert_eq!(e[0].orig.dst, "127.0.0.1");
        assert_eq!(e[0].reply.src, "172.18.0.2");
        assert!(e[0].dnat());
        assert_eq!(
            e[0].onward(),
            Tuple {
                src: "172.18.0.1".into(),
                sport: 41001,
                dst: "172.18.0.2".into(),
                dport: 9200
            }
        );
        assert_eq!(e[1].state, "");
        assert_eq!(e[1].reply.src, "10.0.0.9");
        let proc_line = "ipv4     2 tcp      6 117 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=35346 dport=9200 src=10.255.0.6 dst=172.18.255.254 sport=9200 dport=35346 [ASSURED] mark=0 zone=0 use=2";
        let e = parse_conntrack(proc_line);
        assert_eq!(e[0].proto, "tcp");
        assert_eq!(e[0].state, "TIME_WAIT");
        assert_eq!(e[0].reply.src, "10.255.0.6");
    }

    #[test]
    fn ipvs_connection_entries_parse() {
        let out = "IPVS connection entries\npro expire state       source             virtual            destination\nTCP 01:57  TIME_WAIT   127.0.0.1:41001    127.0.0.1:9200     10.255.0.8:9200\n";
        let c = parse_ipvs_conns(out);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].destination, "10.255.0.8:9200");
        assert_eq!(c[0].source, "127.0.0.1:41001");
    }

    #[test]
    fn nslookup_answers_parse() {
        let out = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\nName:\tsearch\nAddress: 10.0.0.2\n\nName:\tsearch\nAddress: 10.0.0.7\n";
        assert_eq!(parse_nslookup(out), ["10.0.0.2", "10.0.0.7"]);
        assert!(parse_nslookup("Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\n** server can't find nope: NXDOMAIN\n").is_empty());
    }

    #[test]
    fn task_macs_follow_docker() {
        assert_eq!(netcore_mac("10.255.0.10"), "02:42:0a:ff:00:0a");
    }
}
