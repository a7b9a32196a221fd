//! Load balancing and the routing mesh against the real kernel, in namespaces these tests
//! create (named `sktest-<unique>-lb-...`) and testkit's guard removes. Needs root; skipped
//! otherwise.
//!
//! Topology (test-only, built with `ip`):
//!
//! ```text
//!   b0 b1 b2 (10.99.0.10-12, TCP :8080 answering their name)
//!       |            vc (10.99.0.2, VIP client)
//!   [net: br0] ----- sb (10.99.0.3 | 172.31.1.2 gw0) ---- node (172.31.1.1 gw0 | 172.31.2.1 nb0) ---- nb (172.31.2.2)
//! ```

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netcore::ingress::{MeshLayout, NodeIngress, PublishedPort};
use netcore::lb::{self, Driver, Frontend, Protocol, VirtualService};
use netcore::netns::NetNs;
use testkit::netns::Namespaces;

const TARGET: u16 = 8080;
const PUBLISHED: u16 = 8000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 100);

/// Namespace `short` under the test's guard, made by netcore as the agent makes a sandbox
/// (no IPv6 on its links), with its loopback up.
fn create(nss: &Namespaces, short: &str) -> NetNs {
    let ns = NetNs::create(&nss.name(short)).expect("create namespace");
    ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
    ns
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair `a_if` in `a` (with `a_addr`) <-> `b_if` in `b` (with `b_addr`); an empty
/// address leaves that side unaddressed.
fn veth(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ip(&["-n", ns.name(), "addr", "add", addr, "dev", ifname]);
        }
        ip(&["-n", ns.name(), "link", "set", ifname, "up"]);
    }
}

/// A TCP server inside a namespace that answers every connection with its name.
struct Server {
    stop: Arc<AtomicBool>,
    listener: std::os::fd::RawFd,
    ns: NetNs,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &NetNs, reply: &str) -> Self {
        let listener = ns
            .run(|| TcpListener::bind(("0.0.0.0", TARGET)))
            .unwrap()
            .expect("bind backend");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let reply = reply.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(mut conn) = conn {
                    let _ = std::io::Write::write_all(&mut conn, &reply);
                }
            }
        });
        Server {
            stop,
            listener: fd,
            ns: ns.clone(),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept (it fails from then on), whatever the namespace's
        // firewall lets through. The thread holds the listener open until joined below.
        let _ = nix::sys::socket::shutdown(self.listener, nix::sys::socket::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and returns what the server said.
fn fetch(ns: &NetNs, addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    ns.run(|| {
        let target = SocketAddrV4::new(addr, port).into();
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
}

fn fetch_n(ns: &NetNs, addr: Ipv4Addr, port: u16, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| fetch(ns, addr, port).expect("connection through the load balancer"))
        .collect()
}

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + i)
}

struct Mesh {
    _servers: Vec<Server>,
    vc: NetNs,
    sb: NetNs,
    node: NetNs,
    nb: NetNs,
    // Last: namespaces go away after the servers have stopped.
    _ns: Namespaces,
}

fn build_mesh(tag: &str) -> Mesh {
    let nss = Namespaces::new(&format!("lb-{tag}"));
    let net = create(&nss, "net");
    ip(&["-n", net.name(), "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", net.name(), "link", "set", "br0", "up"]);
    let attach = |ns: &NetNs, port: &str, addr: &str| {
        veth(&net, port, "", ns, "eth0", addr);
        ip(&["-n", net.name(), "link", "set", port, "master", "br0"]);
    };
    let mut servers = Vec::new();
    for i in 0..3u8 {
        let b = create(&nss, &format!("b{i}"));
        attach(&b, &format!("pb{i}"), &format!("{}/24", backend(i)));
        servers.push(Server::start(&b, &format!("b{i}")));
    }
    let vc = create(&nss, "vc");
    attach(&vc, "pvc", "10.99.0.2/24");
    // Any route covering the VIP: the connect must get as far as the OUTPUT hook.
    ip(&[
        "-n",
        vc.name(),
        "route",
        "add",
        "10.99.1.0/24",
        "dev",
        "eth0",
    ]);

    let sb = create(&nss, "sb");
    attach(&sb, "psb", "10.99.0.3/24");
    let node = create(&nss, "node");
    veth(&node, "gw0", "172.31.1.1/24", &sb, "gw0", "172.31.1.2/24");
    ip(&[
        "-n",
        sb.name(),
        "route",
        "add",
        "default",
        "via",
        "172.31.1.1",
    ]);
    let nb = create(&nss, "nb");
    veth(&node, "nb0", "172.31.2.1/24", &nb, "eth0", "172.31.2.2/24");
    ip(&[
        "-n",
        nb.name(),
        "route",
        "add",
        "default",
        "via",
        "172.31.2.1",
    ]);
    Mesh {
        _servers: servers,
        vc,
        sb,
        node,
        nb,
        _ns: nss,
    }
}

fn vip_service(backends: &[u8]) -> VirtualService {
    VirtualService {
        fwmark: 256,
        frontend: Frontend::Vip(VIP),
        backends: backends.iter().map(|i| backend(*i)).collect(),
    }
}

/// The published port, balanced over the backends `ids` from the sandbox.
fn published(ids: &[u8]) -> VirtualService {
    VirtualService {
        fwmark: 300,
        frontend: Frontend::Port {
            proto: Protocol::Tcp,
            port: PUBLISHED,
            target: TARGET,
        },
        backends: ids.iter().map(|i| backend(*i)).collect(),
    }
}

fn names(ids: &[u8], rounds: usize) -> Vec<String> {
    (0..rounds)
        .flat_map(|_| ids.iter().map(|i| format!("b{i}")))
        .collect()
}

#[test]
fn vip_round_robin_scaling_and_idempotence() {
    testkit::require_root!();
    let mesh = build_mesh("vip");
    assert_eq!(lb::probe(), Driver::Nftables, "this host has no IPVS");
    let mut lb = lb::new(Driver::Nftables, mesh.vc.clone());

    // (a) six connections walk the backends in order, twice.
    lb.apply(&[vip_service(&[0, 1, 2])]).unwrap();
    assert_eq!(fetch_n(&mesh.vc, VIP, TARGET, 6), names(&[0, 1, 2], 2));

    // (d) the same desired state again sends no batch at all.
    lb.apply(&[vip_service(&[0, 1, 2])]).unwrap();
    assert_eq!(lb.last_apply_commands(), 0);

    // (b) scale 3 -> 1 -> 2: exactly the live set answers.
    lb.apply(&[vip_service(&[1])]).unwrap();
    assert!(lb.last_apply_commands() > 0);
    assert_eq!(fetch_n(&mesh.vc, VIP, TARGET, 4), names(&[1], 4));
    lb.apply(&[vip_service(&[2, 0])]).unwrap();
    assert_eq!(fetch_n(&mesh.vc, VIP, TARGET, 4), names(&[2, 0], 2));

    // No backends: refused at once rather than a hanging connect.
    lb.apply(&[vip_service(&[])]).unwrap();
    let err = fetch(&mesh.vc, VIP, TARGET).expect_err("no backend must refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // Removing the service leaves the VIP unbalanced; teardown removes the table.
    lb.apply(&[]).unwrap();
    lb.teardown().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", mesh.vc.name(), "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("swarmkit"));
    lb.teardown().unwrap();
}

#[test]
fn routing_mesh_from_localhost_and_neighbour() {
    testkit::require_root!();
    let mesh = build_mesh("mesh");
    let mut sandbox_lb = lb::new(Driver::Nftables, mesh.sb.clone());
    let published = published(&[0, 1, 2]);
    sandbox_lb.apply(std::slice::from_ref(&published)).unwrap();
    let mut ingress = NodeIngress::new(
        mesh.node.clone(),
        "sktest_ingress",
        Ipv4Addr::new(172, 31, 1, 2),
        "gw0",
        MeshLayout::Sandbox,
    );
    let ports = [PublishedPort {
        proto: Protocol::Tcp,
        port: PUBLISHED,
    }];
    ingress.apply(&ports).unwrap();

    // (c) localhost on the node and the node's address from a neighbour share one rotation.
    let local = fetch_n(&mesh.node, Ipv4Addr::LOCALHOST, PUBLISHED, 3);
    let remote = fetch_n(&mesh.nb, Ipv4Addr::new(172, 31, 2, 1), PUBLISHED, 3);
    assert_eq!(local, names(&[0, 1, 2], 1));
    assert_eq!(remote, names(&[0, 1, 2], 1));

    // (d) for the node table too.
    ingress.apply(&ports).unwrap();
    assert_eq!(ingress.last_apply_commands(), 0);
    sandbox_lb.apply(std::slice::from_ref(&published)).unwrap();
    assert_eq!(sandbox_lb.last_apply_commands(), 0);

    // Unpublishing stops the node from forwarding the port.
    ingress.apply(&[]).unwrap();
    assert!(fetch(&mesh.nb, Ipv4Addr::new(172, 31, 2, 1), PUBLISHED).is_err());
    ingress.teardown().unwrap();
    sandbox_lb.teardown().unwrap();
}

/// Connects to `addr:port` from inside `ns` until `stop`, counting answers and failures.
fn hammer(
    ns: NetNs,
    addr: Ipv4Addr,
    port: u16,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        ns.run(|| {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let target = SocketAddrV4::new(addr, port).into();
            while !stop.load(Ordering::Relaxed) && ok + (failed.len() as u64) < 20_000 {
                let answer = TcpStream::connect_timeout(&target, Duration::from_secs(2)).and_then(
                    |mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut out = String::new();
                        s.read_to_string(&mut out)?;
                        Ok(out)
                    },
                );
                match answer {
                    Ok(name) if name.starts_with('b') => ok += 1,
                    Ok(other) => failed.push(format!("answered {other:?}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
        .unwrap()
    })
}

/// Backends change while clients connect to a VIP and to a published port through the
/// sandbox: no connection may fail. A change once deleted the old rotation in the
/// transaction that switched to the new one, and a connection arriving during that commit
/// then missed both and was refused by the namespace itself (see the nft module's doc).
#[test]
fn changing_backends_under_load_refuses_nothing() {
    testkit::require_root!();
    let mesh = build_mesh("flip");
    let mut sandbox_lb = lb::new(Driver::Nftables, mesh.sb.clone());
    let mut client_lb = lb::new(Driver::Nftables, mesh.vc.clone());
    let rotations: [&[u8]; 4] = [&[0, 1, 2], &[0, 1], &[1, 2], &[2, 0, 1]];
    sandbox_lb.apply(&[published(rotations[0])]).unwrap();
    client_lb.apply(&[vip_service(rotations[0])]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients = [
        hammer(
            mesh.node.clone(),
            Ipv4Addr::new(172, 31, 1, 2),
            PUBLISHED,
            stop.clone(),
        ),
        hammer(mesh.vc.clone(), VIP, TARGET, stop.clone()),
    ];
    // Bounded by count and time, like every load test here.
    let started = Instant::now();
    let mut flips = 0;
    while flips < 3000 && started.elapsed() < Duration::from_secs(10) {
        let ids = rotations[(flips + 1) % rotations.len()];
        sandbox_lb.apply(&[published(ids)]).unwrap();
        client_lb.apply(&[vip_service(ids)]).unwrap();
        flips += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(u64, Vec<String>)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    eprintln!(
        "{flips} backend changes in {:?}; published port: {} answered, VIP: {} answered",
        started.elapsed(),
        results[0].0,
        results[1].0
    );
    for ((ok, failed), what) in results.iter().zip(["published port", "VIP"]) {
        assert!(*ok > 0, "{what}: no connection got through");
        assert!(
            failed.is_empty(),
            "{what}: {} failed: {failed:?}",
            failed.len()
        );
    }
    sandbox_lb.teardown().unwrap();
    client_lb.teardown().unwrap();
}

/// Connects from `source_port` inside `ns` and returns what the server said.
fn dial_from(
    ns: &NetNs,
    source_port: u16,
    to: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    ns.run(|| {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        let any = SockaddrIn::new(0, 0, 0, 0, source_port);
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any)?;
        let timeval =
            nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
        // A blocking connect gives up after SO_SNDTIMEO.
        setsockopt(&fd, sockopt::SendTimeout, &timeval)?;
        nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))?;
        let mut s = TcpStream::from(fd);
        s.set_read_timeout(Some(timeout))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
}

/// Makes b0 drop or refuse (`how`: an nft verdict) what comes to its port, as the task of a
/// crashed node or a stopped process does.
fn b0_misbehaves(mesh: &Mesh, how: &str) {
    let script = format!(
        "table ip sktest_b0\ndelete table ip sktest_b0\ntable ip sktest_b0 {{\n chain input {{\n  \
         type filter hook input priority 0; policy accept;\n  tcp dport {TARGET} {how}\n }}\n}}\n"
    );
    netcore::nft::run_nft(&mesh._servers[0].ns, &["-f", "-"], Some(script.as_bytes()))
        .expect("b0's rule");
}

/// b0's verdict for a backend that completes the handshake and resets the connection.
const ACCEPT_THEN_RESET: &str = "tcp flags & (syn | ack) == ack reject with tcp reset";

/// What `conntrack -L` lists in `ns` of the entries whose replies come from `backend`.
fn entries_replied_by(ns: &NetNs, backend: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "conntrack", "-L"])
        .args(["--reply-src", &backend.to_string()])
        .output()
        .expect("conntrack");
    assert!(
        out.status.success(),
        "conntrack -L: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A SYN a backend never answered leaves a conntrack entry binding the client's source port
/// to that backend, and NAT is decided once per entry. Once the backend has left, the
/// port's very next connection must reach a live one (a client opening thousands of
/// connections a second is back on its ports within seconds): the driver deletes the
/// departed backend's entries as it applies. Without that, the "drop" cases meet b0 again
/// for the entry's whole timeout (3 s here, `lb::CONNTRACK_TIMEOUTS`; 120 s by default).
///
/// The reset cases pass without the delete too, on 6.18: a reset of a lone SYN deletes its
/// entry at once, and a SYN on the port of a connection the backend reset makes the kernel
/// replace that entry. They keep the README's account of it checked.
#[test]
fn a_client_reusing_its_port_right_after_its_backend_left_is_served() {
    testkit::require_root!();
    let mesh = build_mesh("port");
    let sandbox = SocketAddrV4::new(Ipv4Addr::new(172, 31, 1, 2), PUBLISHED);
    let vip = SocketAddrV4::new(VIP, TARGET);
    // (client, where it balances, what it dials, b0's verdict, source port)
    let cases = [
        (&mesh.node, &mesh.sb, sandbox, "drop", 40123),
        (&mesh.vc, &mesh.vc, vip, "drop", 40124),
        // Accepts, then resets (see above).
        (&mesh.node, &mesh.sb, sandbox, ACCEPT_THEN_RESET, 40125),
        (&mesh.vc, &mesh.vc, vip, ACCEPT_THEN_RESET, 40126),
    ];
    for (client, balancer, to, how, port) in cases {
        let what = format!("{to} from port {port}, b0 doing {how:?}");
        lb::forget_unanswered_quickly(balancer).unwrap();
        let mut lb = lb::new(Driver::Nftables, balancer.clone());
        let service = |ids: &[u8]| {
            if to == vip {
                vip_service(ids)
            } else {
                published(ids)
            }
        };
        lb.apply(&[service(&[0])]).unwrap();
        b0_misbehaves(&mesh, how);
        let first = dial_from(client, port, to, Duration::from_millis(300));
        assert!(first.is_err(), "{what}: b0 answered {first:?}");
        assert!(
            !entries_replied_by(balancer, backend(0)).is_empty(),
            "{what}: no entry binds the port to b0 (nothing to test)"
        );

        lb.apply(&[service(&[1])]).unwrap();
        let started = Instant::now();
        // One attempt: a retry would get a fresh entry anyway once the old one expired.
        let answer = dial_from(client, port, to, Duration::from_secs(2));
        assert_eq!(
            answer.as_deref().map_err(|e| e.to_string()),
            Ok("b1"),
            "{what}: the port's next connection, {:?} after b0 left",
            started.elapsed()
        );
        let left = entries_replied_by(balancer, backend(0));
        assert!(left.is_empty(), "{what}: entries to b0 remain:\n{left}");
        lb.teardown().unwrap();
        b0_misbehaves(&mesh, "accept");
    }
}

/// A TCP connection a backend accepted outlives the backend's leaving: the task drains what
/// is under way during its grace period, so the driver forgets only the entries the departed
/// backend never answered. Deleting this one would send the connection's next packet to b1,
/// which resets it.
#[test]
fn a_departed_backend_drains_the_connections_it_accepted() {
    use std::io::Write;
    testkit::require_root!();
    let mesh = build_mesh("drain");
    const ECHO: u16 = 9000;
    let b0 = &mesh._servers[0].ns;
    let listener = b0
        .run(|| TcpListener::bind(("0.0.0.0", ECHO)))
        .unwrap()
        .expect("bind b0's echo port");
    // Answers one line on one connection, then closes.
    let echo = std::thread::spawn(move || -> std::io::Result<String> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = [0u8; 5];
        conn.read_exact(&mut line)?;
        conn.write_all(&line)?;
        Ok(String::from_utf8_lossy(&line).into_owned())
    });
    let mut lb = lb::new(Driver::Nftables, mesh.vc.clone());
    lb.apply(&[vip_service(&[0])]).unwrap();
    let mut conn = mesh
        .vc
        .run(|| {
            TcpStream::connect_timeout(&SocketAddrV4::new(VIP, ECHO).into(), Duration::from_secs(2))
        })
        .unwrap()
        .expect("connect to b0 through the VIP");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    lb.apply(&[vip_service(&[1])]).unwrap();
    conn.write_all(b"ping\n").unwrap();
    let mut back = [0u8; 5];
    let read = conn.read_exact(&mut back);
    drop(conn);
    let served = echo.join().unwrap();
    read.expect("b0 answers on the connection it accepted before it left");
    assert_eq!(&back, b"ping\n");
    assert_eq!(served.unwrap(), "ping\n");
    lb.teardown().unwrap();
}

/// (e) The work of an apply scales with what changed, not with how much is there: one more
/// service among 1000 sends no more commands than the first one did (which also made the
/// table), and an unchanged apply sends none. Counted in commands, not timed; the times are
/// printed for the curious.
#[test]
fn apply_cost_scales_with_changes() {
    testkit::require_root!();
    let nss = Namespaces::new("lb-bench");
    let ns = create(&nss, "lb");
    let svc = |i: u32| VirtualService {
        fwmark: 256 + i,
        frontend: Frontend::Vip(Ipv4Addr::from(0x0a64_0000 + i)),
        backends: vec![Ipv4Addr::new(10, 99, 0, 10), Ipv4Addr::new(10, 99, 0, 11)],
    };
    let mut lb = lb::new(Driver::Nftables, ns.clone());
    let t = Instant::now();
    lb.apply(&[svc(0)]).unwrap();
    let first = t.elapsed();
    let first_sent = lb.last_apply_commands();

    let mut many: Vec<_> = (0..1000).map(svc).collect();
    let t = Instant::now();
    lb.apply(&many).unwrap();
    let bulk = t.elapsed();

    many.push(svc(1000));
    let t = Instant::now();
    lb.apply(&many).unwrap();
    let one_more = t.elapsed();
    let sent = lb.last_apply_commands();

    let t = Instant::now();
    lb.apply(&many).unwrap();
    let noop = t.elapsed();
    let noop_sent = lb.last_apply_commands();
    eprintln!(
        "nftables apply: first service (with table) {first:?}; +999 services in one batch \
         {bulk:?}; 1 more with 1000 present {one_more:?} ({sent} commands); unchanged {noop:?}"
    );
    assert!(
        sent > 0 && sent <= first_sent,
        "one more service among 1000 sent {sent} commands; the first service sent {first_sent}"
    );
    assert_eq!(noop_sent, 0, "an unchanged apply sent commands");
    lb.teardown().unwrap();
}

/// The IPVS driver cannot run here (no IPVS in this kernel), but its marking rules are plain
/// nftables: check the kernel accepts them and they read back as intended.
#[test]
fn ipvs_marking_rules_load() {
    testkit::require_root!();
    let nss = Namespaces::new("lb-ipvsnft");
    let ns = create(&nss, "lb");
    let services = [
        vip_service(&[0, 1]),
        VirtualService {
            fwmark: 300,
            frontend: Frontend::Port {
                proto: Protocol::Udp,
                port: 53,
                target: 5353,
            },
            backends: vec![backend(0)],
        },
    ];
    let plan = lb::ipvs::IpvsLb::new(ns.clone()).plan(&services).unwrap();
    plan.nft.run(&ns).unwrap();
    let listed = netcore::nft::run_nft(&ns, &["list", "table", "ip", "swarmkit"], None).unwrap();
    for want in [
        "10.99.1.100 : 0x00000100",
        "udp . 53 : 0x0000012c",
        "meta mark set ip daddr map @vip_marks",
        "meta mark set meta l4proto . th dport map @port_marks",
        "meta mark @masq_marks masquerade",
    ] {
        assert!(listed.contains(want), "missing {want:?} in:\n{listed}");
    }
}

/// A table removed behind the driver's back makes the next delta fail; the one after that
/// rebuilds everything.
#[test]
fn recovers_from_external_table_removal() {
    testkit::require_root!();
    let nss = Namespaces::new("lb-recover");
    let ns = create(&nss, "lb");
    let mut lb = lb::new(Driver::Nftables, ns.clone());
    lb.apply(&[vip_service(&[0])]).unwrap();
    netcore::nft::run_nft(&ns, &["delete", "table", "ip", "swarmkit"], None).unwrap();
    assert!(lb.apply(&[vip_service(&[0, 1])]).is_err());
    lb.apply(&[vip_service(&[0, 1])]).unwrap();
    let listed = netcore::nft::run_nft(&ns, &["list", "table", "ip", "swarmkit"], None).unwrap();
    assert!(listed.contains("10.99.0.11"), "{listed}");
}
