//! Real-kernel tests of the underlay and overlay plumbing. They need root and build their own
//! namespaces (`sktest-<unique>-ov-<test>-*`), all removed by testkit's guard. Underlay
//! addresses (192.168.77.0/24) and overlay subnets exist only inside those namespaces.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netcore::lb::Driver;
use netcore::link::{self, LinkStats, Links};
use netcore::netns::NetNs;
use netcore::overlay::{self, Endpoint, OverlaySpec, Peer};
use netcore::underlay;
use testkit::netns::Namespaces;

const PORT: u16 = 7777;

struct Node {
    ns: NetNs,
    vtep: Ipv4Addr,
}

/// An underlay switch with `n` nodes plugged in at 192.168.77.(10+i).
async fn nodes(c: &Namespaces, n: u8) -> Vec<Node> {
    let under = NetNs::create(&c.name("underlay")).unwrap();
    underlay::create_switch(&under, "sw0").await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let ns = NetNs::create(&c.name(&format!("node{i}"))).unwrap();
        let vtep = Ipv4Addr::new(192, 168, 77, 10 + i);
        let addr = Ipv4Net::new(vtep, 24).unwrap();
        underlay::plug(&under, "sw0", &format!("p{i}"), &ns, "eth0", addr)
            .await
            .unwrap();
        out.push(Node { ns, vtep });
    }
    out
}

/// Task `i` on a network: 10.0.<net>.(2+i).
fn task_ip(net: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, net, 2 + i as u8)
}

/// The spec node `local` applies: every other node's task is a peer.
fn spec(id: &str, vni: u32, net: u8, nodes: &[Node], local: usize) -> OverlaySpec {
    let peers = (0..nodes.len())
        .filter(|&j| j != local)
        .map(|j| Peer {
            ip: task_ip(net, j),
            mac: overlay::mac_for(task_ip(net, j)),
            vtep: nodes[j].vtep,
        })
        .collect();
    OverlaySpec {
        network_id: id.into(),
        vni,
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 0, net, 0), 24).unwrap(),
        gateway: Ipv4Addr::new(10, 0, net, 1),
        mtu: 1450,
        port: overlay::VXLAN_PORT,
        peers,
    }
}

fn endpoint(net: u8, i: usize) -> Endpoint {
    let ip = task_ip(net, i);
    Endpoint {
        ifname: "eth0".into(),
        addr: Ipv4Net::new(ip, 24).unwrap(),
        mac: overlay::mac_for(ip),
    }
}

/// The network's sandbox on a node, balanced by nftables as on these hosts.
async fn ensure(
    node: &NetNs,
    name: &str,
    vtep: Ipv4Addr,
    s: &OverlaySpec,
) -> Result<NetNs, overlay::OverlayError> {
    overlay::ensure(node, name, vtep, s, Driver::Nftables).await
}

/// Overlay `net` on every node with one task per node; returns (sandboxes, tasks).
async fn overlay_with_tasks(
    c: &Namespaces,
    nodes: &[Node],
    id: &str,
    vni: u32,
    net: u8,
) -> (Vec<NetNs>, Vec<NetNs>) {
    let mut sandboxes = Vec::new();
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let s = spec(id, vni, net, nodes, i);
        let sandbox = ensure(&node.ns, &c.name(&format!("sb{net}-{i}")), node.vtep, &s)
            .await
            .unwrap();
        let task = NetNs::create(&c.name(&format!("task{net}-{i}"))).unwrap();
        overlay::attach(&sandbox, &s, &task, &endpoint(net, i))
            .await
            .unwrap();
        sandboxes.push(sandbox);
        tasks.push(task);
    }
    (sandboxes, tasks)
}

/// A one-shot echo server inside `ns`; it gives up by itself after `wait`.
fn echo_server(
    ns: &NetNs,
    ip: Ipv4Addr,
    wait: Duration,
) -> std::thread::JoinHandle<io::Result<()>> {
    let listener = ns.run(|| TcpListener::bind((ip, PORT))).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + wait;
        let mut conn = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf)
    })
}

/// Connects from inside `ns` and exchanges a few bytes.
fn tcp_hello(ns: &NetNs, ip: Ipv4Addr, timeout: Duration) -> io::Result<()> {
    let addr = SocketAddr::from((ip, PORT));
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, timeout))
        .unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"hello")?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"hello");
    Ok(())
}

fn cross(server: &NetNs, ip: Ipv4Addr, client: &NetNs) -> io::Result<()> {
    let srv = echo_server(server, ip, Duration::from_secs(5));
    let res = tcp_hello(client, ip, Duration::from_secs(3));
    let srv_res = srv.join().unwrap();
    res.and(srv_res)
}

fn observe(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Links, neighbours and FDB of a sandbox, for before/after comparisons.
async fn snapshot(sandbox: &NetNs, s: &OverlaySpec) -> String {
    let l = Links::new(sandbox).unwrap();
    let vx = l.require(&overlay::vxlan_name(s)).await.unwrap();
    let mut names = l.names().await.unwrap();
    names.sort();
    let neigh = l.neighbours(vx).await.unwrap();
    let fdb = l.fdb(vx).await.unwrap();
    format!("{names:?}\n{neigh:?}\n{fdb:?}")
}

/// A device's counters went up both ways between two readings.
fn assert_both_ways(before: LinkStats, after: LinkStats) {
    assert!(
        after.tx_packets > before.tx_packets,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.rx_packets > before.rx_packets,
        "{before:?} -> {after:?}"
    );
}

/// The kernel holds node 0's sandbox of `netaaaa` as made (observed with iproute2, never
/// configured by it): the peer's ARP and FDB entries, the vxlan device as Swarm makes it, and
/// its UDP socket still in the node namespace.
fn assert_iproute2_agrees(sandbox: &NetNs, node: &NetNs, vx: &str) {
    let sb0 = sandbox.name();
    let shown = observe("ip", &["-n", sb0, "neigh", "show", "dev", vx]);
    assert!(
        shown.contains("10.0.0.3 lladdr 02:42:0a:00:00:03 PERMANENT"),
        "{shown}"
    );
    let shown = observe("bridge", &["-n", sb0, "fdb", "show", "dev", vx]);
    let entry = shown
        .lines()
        .find(|l| l.starts_with("02:42:0a:00:00:03 dst 192.168.77.11"))
        .unwrap_or_else(|| panic!("no FDB entry to the peer VTEP in {shown}"));
    assert!(entry.trim_end().ends_with("self permanent"), "{entry}");
    let shown = observe("ip", &["-d", "-n", sb0, "link", "show", vx]);
    for want in [
        "mtu 1450",
        "master ov-001001-netaa",
        "id 4097 local 192.168.77.10",
        "dstport 4789",
        "nolearning",
        "proxy l2miss l3miss",
    ] {
        assert!(shown.contains(want), "{want:?} missing in {shown}");
    }
    let udp = observe("ss", &["-N", node.name(), "-uln"]);
    assert!(udp.contains(":4789"), "{udp}");
}

#[tokio::test]
async fn overlay_crosses_nodes_and_reconciles_peers() {
    testkit::require_root!();
    let c = Namespaces::new("ov-cross");
    let nodes = nodes(&c, 2).await;
    assert!(link::probe_vxlan(&nodes[0].ns).await.unwrap());
    let (sandboxes, tasks) = overlay_with_tasks(&c, &nodes, "netaaaa", 4097, 0).await;
    let vx = overlay::vxlan_name(&spec("netaaaa", 4097, 0, &nodes, 0));
    assert_eq!(vx, "vx-001001-netaa");

    let before0 = link::link_stats(&sandboxes[0], &vx).await.unwrap();
    let before1 = link::link_stats(&sandboxes[1], &vx).await.unwrap();
    cross(&tasks[1], task_ip(0, 1), &tasks[0]).expect("TCP across nodes over VXLAN");
    let after0 = link::link_stats(&sandboxes[0], &vx).await.unwrap();
    let after1 = link::link_stats(&sandboxes[1], &vx).await.unwrap();
    assert_both_ways(before0, after0);
    assert_both_ways(before1, after1);

    // Re-applying changes nothing.
    let s0 = spec("netaaaa", 4097, 0, &nodes, 0);
    let snap = snapshot(&sandboxes[0], &s0).await;
    let again = ensure(&nodes[0].ns, sandboxes[0].name(), nodes[0].vtep, &s0)
        .await
        .unwrap();
    overlay::attach(&again, &s0, &tasks[0], &endpoint(0, 0))
        .await
        .unwrap();
    assert_eq!(snap, snapshot(&sandboxes[0], &s0).await);

    assert_iproute2_agrees(&sandboxes[0], &nodes[0].ns, &vx);

    // Dropping the peer removes its ARP and FDB entries, and traffic stops.
    let mut lonely = s0.clone();
    lonely.peers.clear();
    ensure(&nodes[0].ns, sandboxes[0].name(), nodes[0].vtep, &lonely)
        .await
        .unwrap();
    let l = Links::new(&sandboxes[0]).unwrap();
    let vx_index = l.require(&vx).await.unwrap();
    assert!(l.neighbours(vx_index).await.unwrap().is_empty());
    assert!(l.fdb(vx_index).await.unwrap().is_empty());

    // Restoring it restores connectivity.
    ensure(&nodes[0].ns, sandboxes[0].name(), nodes[0].vtep, &s0)
        .await
        .unwrap();
    assert_eq!(snap, snapshot(&sandboxes[0], &s0).await);
    cross(&tasks[1], task_ip(0, 1), &tasks[0]).expect("TCP after peer restored");

    // The same through the incremental path the agent takes when only peers change.
    assert!(s0.differs_only_in_peers(&lonely));
    overlay::update_peers(&sandboxes[0], &s0, &lonely)
        .await
        .unwrap();
    assert!(l.neighbours(vx_index).await.unwrap().is_empty());
    assert!(l.fdb(vx_index).await.unwrap().is_empty());
    overlay::update_peers(&sandboxes[0], &lonely, &s0)
        .await
        .unwrap();
    assert_eq!(snap, snapshot(&sandboxes[0], &s0).await);
    cross(&tasks[1], task_ip(0, 1), &tasks[0]).expect("TCP after update_peers restored it");
    let mut moved_mtu = s0.clone();
    moved_mtu.mtu = 1400;
    assert!(!s0.differs_only_in_peers(&moved_mtu));

    // Detach and remove are idempotent, and the VNI can be created again afterwards.
    overlay::detach(&tasks[0], "eth0").await.unwrap();
    overlay::detach(&tasks[0], "eth0").await.unwrap();
    assert_eq!(
        Links::new(&tasks[0])
            .unwrap()
            .index_of("eth0")
            .await
            .unwrap(),
        None
    );
    // A changed underlay address rebuilds the tunnel with the new source.
    let moved = Ipv4Addr::new(192, 168, 77, 99);
    ensure(&nodes[0].ns, sandboxes[0].name(), moved, &s0)
        .await
        .unwrap();
    assert_eq!(l.vxlan_local(&vx).await.unwrap(), Some(moved));
    assert!(
        !l.fdb(l.require(&vx).await.unwrap())
            .await
            .unwrap()
            .is_empty()
    );

    let name0 = sandboxes[0].name().to_string();
    drop((sandboxes, again, l));
    overlay::remove(&name0).await.unwrap();
    overlay::remove(&name0).await.unwrap();
    ensure(&nodes[0].ns, &name0, nodes[0].vtep, &s0)
        .await
        .expect("re-create after remove");
}

#[tokio::test]
async fn overlays_are_isolated() {
    testkit::require_root!();
    let c = Namespaces::new("ov-iso");
    let nodes = nodes(&c, 2).await;
    let (sb_a, tasks_a) = overlay_with_tasks(&c, &nodes, "neta", 4100, 1).await;
    let (_sb_b, tasks_b) = overlay_with_tasks(&c, &nodes, "netb", 4101, 2).await;

    // Positive controls: each overlay works on its own.
    cross(&tasks_a[1], task_ip(1, 1), &tasks_a[0]).expect("overlay A");
    cross(&tasks_b[1], task_ip(2, 1), &tasks_b[0]).expect("overlay B");

    // Mis-program overlay A on node 0 so that B's task on node 1 looks like an A peer, and
    // route B's subnet out of the A interface: frames do leave with A's VNI, and must still
    // not reach B.
    let mut a0 = spec("neta", 4100, 1, &nodes, 0);
    let b1 = task_ip(2, 1);
    a0.peers.push(Peer {
        ip: b1,
        mac: overlay::mac_for(b1),
        vtep: nodes[1].vtep,
    });
    ensure(&nodes[0].ns, sb_a[0].name(), nodes[0].vtep, &a0)
        .await
        .unwrap();
    let t = Links::new(&tasks_a[0]).unwrap();
    let eth0 = t.require("eth0").await.unwrap();
    t.add_route_dev("10.0.2.0/24".parse().unwrap(), eth0)
        .await
        .unwrap();

    let vx_a = overlay::vxlan_name(&a0);
    let before = link::link_stats(&sb_a[0], &vx_a).await.unwrap();
    let srv = echo_server(&tasks_b[1], b1, Duration::from_secs(1));
    let res = tcp_hello(&tasks_a[0], b1, Duration::from_millis(700));
    assert!(res.is_err(), "overlay A reached overlay B's task");
    let after = link::link_stats(&sb_a[0], &vx_a).await.unwrap();
    assert!(
        after.tx_packets > before.tx_packets,
        "the SYN left over VNI A"
    );
    assert!(
        srv.join().unwrap().is_err(),
        "B's task must see no connection"
    );
}

#[tokio::test]
async fn link_pair_and_plug_are_idempotent() {
    testkit::require_root!();
    let c = Namespaces::new("ov-pair");
    let a = NetNs::create(&c.name("a")).unwrap();
    let b = NetNs::create(&c.name("b")).unwrap();
    let a_addr: Ipv4Net = "192.168.78.1/30".parse().unwrap();
    let b_addr: Ipv4Net = "192.168.78.2/30".parse().unwrap();
    for _ in 0..2 {
        underlay::link_pair(&a, "gw0", a_addr, &b, "gw1", b_addr)
            .await
            .unwrap();
    }
    cross(&b, b_addr.addr(), &a).expect("TCP over the pair");

    let _ = nodes(&c, 1).await;
    // Plugging the same node twice reuses its port.
    let under = NetNs::open(&c.name("underlay")).unwrap();
    let node = NetNs::open(&c.name("node0")).unwrap();
    let addr: Ipv4Net = "192.168.77.10/24".parse().unwrap();
    underlay::create_switch(&under, "sw0").await.unwrap();
    underlay::plug(&under, "sw0", "p0", &node, "eth0", addr)
        .await
        .unwrap();
    let names = Links::new(&under).unwrap().names().await.unwrap();
    assert_eq!(names.len(), 3, "lo, sw0, p0: {names:?}");
}

#[tokio::test]
async fn three_node_setup_time() {
    testkit::require_root!();
    let c = Namespaces::new("ov-time");
    let t0 = Instant::now();
    let nodes = nodes(&c, 3).await;
    let t_underlay = t0.elapsed();
    let t1 = Instant::now();
    let (_sandboxes, tasks) = overlay_with_tasks(&c, &nodes, "nettime", 4200, 3).await;
    let t_overlay = t1.elapsed();
    let t2 = Instant::now();
    let (_sandboxes, _) = overlay_with_tasks(&c, &nodes, "nettime", 4200, 3).await;
    let t_reapply = t2.elapsed();
    println!(
        "3-node setup: underlay {t_underlay:?}, overlay ensure+attach {t_overlay:?}, \
         re-apply {t_reapply:?}"
    );
    cross(&tasks[2], task_ip(3, 2), &tasks[0]).expect("node 0 -> node 2");
    cross(&tasks[0], task_ip(3, 0), &tasks[1]).expect("node 1 -> node 0");
}

/// Serves one connection in `ns` on `ip`:PORT: answers each line with the address and port it
/// came from, then the line.
fn peer_echo(ns: &NetNs, ip: Ipv4Addr) -> std::thread::JoinHandle<io::Result<()>> {
    let listener = ns.run(|| TcpListener::bind((ip, PORT))).unwrap().unwrap();
    std::thread::spawn(move || {
        let (conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = conn.try_clone()?;
        for line in io::BufRead::lines(io::BufReader::new(conn)) {
            writeln!(out, "{peer} {}", line?)?;
        }
        Ok(())
    })
}

fn conntrack_entries(ns: &NetNs) -> String {
    // /proc/net is the main thread's namespace; this thread's is what it entered.
    ns.run(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack"))
        .unwrap()
        .unwrap_or_default()
}

/// A VIP balanced in node 0's sandbox onto the task on node 1, with br_netfilter off there:
/// the backend sees the client's own address (from a port no direct connection uses) and the
/// client hears the VIP answer, line after line on one connection, because the VIP's replies
/// are lifted into the sandbox's conntrack (`lb::lift`). Plain traffic between the two tasks leaves no conntrack entry in either
/// sandbox: it meets no netfilter hook there.
#[tokio::test]
async fn vip_replies_are_lifted_and_plain_traffic_meets_no_conntrack() {
    use netcore::lb::{self, Frontend, VirtualService};
    testkit::require_root!();
    let c = Namespaces::new("ov-lift");
    let nodes = nodes(&c, 2).await;
    let (sandboxes, tasks) = overlay_with_tasks(&c, &nodes, "netlift", 4099, 3).await;
    for sb in &sandboxes {
        if let Ok(v) = sb.sysctl("net/bridge/bridge-nf-call-iptables") {
            assert_eq!(v, "0", "br_netfilter is left on in {}", sb.name());
        }
    }
    let s0 = spec("netlift", 4099, 3, &nodes, 0);
    let vip = Ipv4Addr::new(10, 0, 3, 200);
    let (client, backend) = (task_ip(3, 0), task_ip(3, 1));
    overlay::reconcile_vips(&sandboxes[0], &s0, None, &[vip].into())
        .await
        .unwrap();
    let mut balancer = lb::new(Driver::Nftables, sandboxes[0].clone());
    balancer
        .apply(&[VirtualService {
            fwmark: 256,
            frontend: Frontend::Vip(vip),
            backends: vec![backend],
        }])
        .unwrap();

    let server = peer_echo(&tasks[1], backend);
    let addr = SocketAddr::from((vip, PORT));
    let conn = tasks[0]
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .expect("a connection to the VIP");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(conn.peer_addr().unwrap(), addr);
    let mut lines = io::BufRead::lines(io::BufReader::new(conn.try_clone().unwrap()));
    for i in 0..3 {
        writeln!(&conn, "line {i}").unwrap();
        let answer = lines.next().expect("an answer").expect("an answer");
        let (peer, line) = answer.split_once(' ').unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(peer.ip(), client, "the backend saw another client");
        // Below the ephemeral range, so it never meets a direct connection's tuple.
        assert!((1024..32768).contains(&peer.port()), "{peer}");
        assert_eq!(line, format!("line {i}"));
    }
    drop(lines);
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    server.join().unwrap().expect("the backend served the VIP");
    let through_vip = format!("src={client} dst={vip} ");
    assert!(
        conntrack_entries(&sandboxes[0]).contains(&through_vip),
        "the VIP's connection is tracked where it was balanced"
    );

    cross(&tasks[1], backend, &tasks[0]).expect("TCP between the tasks");
    let direct = format!("src={client} dst={backend} ");
    for sb in &sandboxes {
        let entries = conntrack_entries(sb);
        assert!(
            !entries.contains(&direct),
            "plain traffic went through conntrack in {}:\n{entries}",
            sb.name()
        );
    }
}
