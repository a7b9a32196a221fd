//! Encrypted overlay networks on QEMU guests (whose kernel has ESP and GCM), proven on the wire.
//! One cluster of three guests, with VXLAN moved to data port 7789, carries every check, since
//! guests are slow to boot under emulation:
//! - capture: tcpdump on the underlay bridge (in the cluster's underlay namespace on the host)
//!   sees only ESP between the nodes for the encrypted network, no VXLAN of its VNI, and plain
//!   VXLAN for an unencrypted network in the same cluster; nothing on 4789;
//! - injection: a crafted cleartext VXLAN frame for the encrypted VNI, sent on the underlay, is
//!   dropped by the nft rule (its counter shows it) and never reaches the task, while the same
//!   frame for the plain VNI does (so the frame itself is right);
//! - rotation under load: `network rotate-key` during pings and HTTP requests loses nothing,
//!   and the outbound SPIs change;
//! - membership: scaling onto a third node installs its SAs on every peer, scaling away
//!   removes them everywhere;
//! - node loss: a guest killed outright (`swarmkit node kill`) is marked down by its missed
//!   heartbeats, its task is replaced on a live guest, every peer drops its SAs, and once it
//!   is started again no slot runs twice.
//!
//! Needs root, qemu-system-x86_64, the Debian kernel package (or a cached one), tcpdump,
//! python3 and a built `swarmkit` binary next to the test binary; each missing piece skips.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cluster::paths::ClusterPaths;
use testkit::{Cluster, Run, RunningTask, eventually};

const DATA_PORT: &str = "7789";

/// The tests here each boot guests; two at once would only starve each other on small hosts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the QEMU suites need, and the capture and the crafted frames on top.
fn needs() -> Option<String> {
    testkit::needs_qemu().or_else(|| {
        testkit::needs_tools(&[
            (&["/usr/bin/tcpdump"], "tcpdump"),
            (&["/usr/bin/python3"], "python3"),
        ])
    })
}

/// A command's stdout then stderr.
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `swarmkit --cluster C ARGS`, which must succeed: its stdout.
fn sk(c: &Cluster, args: &[&str]) -> String {
    c.sk(args).ok().stdout
}

/// A shell command on a node, which must succeed: its stdout.
fn on_node(c: &Cluster, node: &str, cmd: &str) -> String {
    let out = c.node(node, cmd);
    assert!(out.success(), "{node}: {cmd}:\n{}", out.text());
    out.stdout
}

/// `cmd` inside a task's network namespace on its guest (with the guest's tools).
fn in_task(c: &Cluster, t: &RunningTask, cmd: &str) -> Run {
    let ns = format!("/run/netns/{}", ClusterPaths::new(&c.name).task_ns(&t.id));
    c.node(&t.node, &format!("nsenter --net={ns} sh -c '{cmd}'"))
}

/// The SPIs of our ESP states on `node`, as iproute2 lists them, by direction.
fn spis(c: &Cluster, node: &str) -> Vec<String> {
    let out = on_node(
        c,
        node,
        &format!("{} xfrm state", testbed::vm::image::IPROUTE2_IP),
    );
    out.lines()
        .filter(|l| l.starts_with("src "))
        .map(|l| l.to_string())
        .zip(
            out.lines()
                .filter(|l| l.trim_start().starts_with("proto esp spi"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string()),
        )
        .map(|(addrs, spi)| format!("{addrs} {spi}"))
        .collect()
}

/// A node's underlay address (its VTEP).
fn node_addr(c: &Cluster, node: &str) -> String {
    testbed::vm::node::load_node(&ClusterPaths::new(&c.name), node)
        .expect("node record")
        .addr
        .addr()
        .to_string()
}

/// nsenter's argument into the cluster's underlay namespace on the host.
fn underlay(c: &Cluster) -> String {
    format!(
        "--net=/run/netns/{}",
        ClusterPaths::new(&c.name).underlay_ns()
    )
}

/// tcpdump on the underlay bridge, into a file, until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
    /// Kept open: tcpdump dies of SIGPIPE on its next message if nobody reads its stderr.
    _stderr: std::process::ChildStderr,
}

impl Capture {
    fn start(c: &Cluster, file: PathBuf) -> Capture {
        let mut child = Command::new("nsenter")
            .args([
                &underlay(c),
                "timeout",
                "120",
                "tcpdump",
                "--immediate-mode",
                "-i",
                "br0",
                "-n",
                "-U",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says so on stderr once it is capturing.
        let mut stderr = child.stderr.take().expect("piped");
        let mut seen = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tcpdump did not start"
            );
            let n = stderr.read(&mut buf).expect("tcpdump stderr");
            assert!(n > 0, "tcpdump exited: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        Capture {
            child,
            file,
            _stderr: stderr,
        }
    }

    /// Stops the capture and counts the packets matching each filter.
    fn stop_and_count(mut self, filters: &[&str]) -> Vec<usize> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        filters
            .iter()
            .map(|f| {
                let out = Command::new("tcpdump")
                    .args(["-r"])
                    .arg(&self.file)
                    .args(["-nn", f])
                    .output()
                    .expect("tcpdump -r");
                String::from_utf8_lossy(&out.stdout).lines().count()
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A VXLAN frame as an attacker on the underlay would craft it: to `dst_mac`/`dst_ip` on the
/// overlay, UDP to `port`, carrying `payload`, sent in cleartext to `vtep`'s data port.
fn inject(c: &Cluster, vtep: &str, vni: u32, dst_ip: &str, port: u16, payload: &str) {
    let script = format!(
        r#"
import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
dst = socket.inet_aton('{dst_ip}')
src = dst[:3] + bytes([250])
data = b'{payload}'
udp = struct.pack('!HHHH', 40000, {port}, 8 + len(data), 0) + data
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = bytes([2, 0x42]) + dst + bytes([2, 0x42]) + src + b'\x08\x00'
vxlan = struct.pack('!II', 0x08000000, {vni} << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(vxlan + eth + ip + udp, ('{vtep}', {DATA_PORT}))
"#
    );
    // The attacker's address on the underlay bridge (the nodes use .10 and up).
    let addr = Command::new("nsenter")
        .args([
            &underlay(c),
            "ip",
            "addr",
            "replace",
            "192.168.0.250/24",
            "dev",
            "br0",
        ])
        .output()
        .expect("ip");
    assert!(addr.status.success(), "{}", text(&addr));
    let out = Command::new("nsenter")
        .args([&underlay(c), "python3", "-c", &script])
        .output()
        .expect("python3");
    assert!(out.status.success(), "injecting: {}", text(&out));
}

fn vni_of(c: &Cluster, network: &str) -> u32 {
    let inspect = sk(c, &["network", "inspect", network]);
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect JSON");
    v[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a VNI")
}

/// The service's two first tasks, on two guests, and the VNIs of its two networks.
struct Setup {
    sec_vni: u32,
    plain_vni: u32,
    a: RunningTask,
    b: RunningTask,
}

#[test]
fn encrypted_overlay_on_the_wire_rotation_injection_and_membership() {
    testkit::skip_unless!(needs());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    testkit::swarmkit(&["vm", "build"]).ok();
    let t = Instant::now();
    let c = Cluster::up_with(
        "qe",
        3,
        &["--backend", "qemu", "--data-path-port", DATA_PORT],
    );
    eprintln!("3 qemu guests ready: {:.2}s", t.elapsed().as_secs_f64());
    let s = create(&c);
    capture(&c, &s);
    injection(&c, &s);
    rotation_under_load(&c, &s);
    membership(&c, &s);
    node_loss(&c);
}

/// Encrypted and plain side by side, docker's shape in inspect, a service on both with its
/// two replicas on two guests, and each task's MTUs.
fn create(c: &Cluster) -> Setup {
    // The stock docker CLI where there is one: it sends docker's own request shape.
    let docker_host = ClusterPaths::new(&c.name).docker_host();
    let docker = |args: &[&str]| -> Option<String> {
        let out = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &docker_host)
            .output()
            .ok()?;
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let create = [
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "sec",
    ];
    if docker(&create).is_none() {
        sk(c, &create);
    }
    sk(c, &["network", "create", "--driver", "overlay", "plain"]);
    let inspect = docker(&["network", "inspect", "sec"])
        .unwrap_or_else(|| sk(c, &["network", "inspect", "sec"]));
    assert!(inspect.contains("\"encrypted\": \"\""), "{inspect}");
    let (sec_vni, plain_vni) = (vni_of(c, "sec"), vni_of(c, "plain"));
    c.service_create(&[
        "--name",
        "app",
        "--network",
        "sec",
        "--network",
        "plain",
        "--replicas",
        "2",
        "whoami",
    ])
    .ok();
    let tasks = eventually("two running tasks", Duration::from_secs(120), || {
        let t = c.running_tasks("app");
        (t.len() == 2).then_some(t)
    });
    let (a, b) = (tasks[0].clone(), tasks[1].clone());
    assert_ne!(
        a.node, b.node,
        "the replicas spread over two nodes: {tasks:?}"
    );
    // Through netlink: /sys shows the namespace that mounted it, not the task's.
    let mtu = in_task(c, &a, "ip -o link show eth0; ip -o link show eth1");
    let out = mtu.text();
    let words: Vec<&str> = out.split_whitespace().collect();
    let mtus: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "mtu")
        .map(|w| w[1])
        .collect();
    assert_eq!(mtus, ["1424", "1450"], "{}", mtu.text());
    Setup {
        sec_vni,
        plain_vni,
        a,
        b,
    }
}

/// ESP only for `sec`, VXLAN for `plain`, nothing on 4789.
fn capture(c: &Cluster, s: &Setup) {
    let (a, b) = (&s.a, &s.b);
    let (b_sec, b_plain) = (&b.addrs["sec"], &b.addrs["plain"]);
    let pcap = std::env::temp_dir().join(format!("{}-capture.pcap", c.name));
    let capture = Capture::start(c, pcap);
    let ping = |to: &str| {
        let out = in_task(c, a, &format!("ping -c 5 -i 0.2 -W 2 {to}"));
        assert!(out.text().contains(" 0% packet loss"), "{}", out.text());
    };
    ping(b_sec);
    let http = in_task(c, a, &format!("curl -s -m 10 http://{b_sec}/"));
    assert!(http.text().contains("Hostname:"), "{}", http.text());
    ping(b_plain);
    let vni_filter = |vni: u32| {
        format!(
            "udp dst port {DATA_PORT} and (udp[12:4] & 0xffffff00) = {:#x}",
            vni << 8
        )
    };
    let counts = capture.stop_and_count(&[
        "esp",
        &vni_filter(s.sec_vni),
        &vni_filter(s.plain_vni),
        "udp port 4789",
    ]);
    eprintln!(
        "capture: esp={} sec-vxlan={} plain-vxlan={} 4789={}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(
        counts[0] >= 10,
        "pings and curl on sec travel in ESP: {counts:?}"
    );
    assert_eq!(
        counts[1], 0,
        "no cleartext VXLAN of the encrypted VNI: {counts:?}"
    );
    assert!(
        counts[2] >= 10,
        "the plain network stays plain VXLAN: {counts:?}"
    );
    assert_eq!(
        counts[3], 0,
        "VXLAN moved to the data path port: {counts:?}"
    );
}

/// The cleartext frame for `sec` is dropped by nft; for `plain` it arrives.
fn injection(c: &Cluster, s: &Setup) {
    let (b, sec_vni) = (&s.b, s.sec_vni);
    let b_vtep = node_addr(c, &b.node);
    let counter = |node: &str| -> u64 {
        let t = on_node(c, node, "nft list table ip swarmkit_ipsec");
        t.lines()
            .find(|l| l.contains(&format!("cleartext vni {sec_vni}")))
            .and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "packets")
                    .and_then(|i| w.get(i + 1)?.parse().ok())
            })
            .unwrap_or_else(|| panic!("no cleartext rule for {sec_vni}:\n{t}"))
    };
    // The frames go to a UDP port nobody listens on in the task: each one that arrives
    // counts in the task namespace's Udp NoPorts (and draws an ICMP error).
    let noports = || -> u64 {
        let out = in_task(c, b, "cat /proc/net/snmp").text();
        let udp: Vec<&str> = out.lines().filter(|l| l.starts_with("Udp:")).collect();
        let col = udp[0].split_whitespace().position(|w| w == "NoPorts");
        col.and_then(|i| udp[1].split_whitespace().nth(i)?.parse().ok())
            .unwrap_or_else(|| panic!("no Udp NoPorts in:\n{out}"))
    };
    let dropped_before = counter(&b.node);
    let arrived_before = noports();
    inject(c, &b_vtep, sec_vni, &b.addrs["sec"], 9901, "INJECTED-SEC");
    // Control: the same frame for the plain VNI is delivered, so the frame itself is right.
    inject(
        c,
        &b_vtep,
        s.plain_vni,
        &b.addrs["plain"],
        9902,
        "INJECTED-PLAIN",
    );
    let arrived = eventually(
        "the control frames in the task",
        Duration::from_secs(20),
        || {
            let n = noports() - arrived_before;
            (n >= 3).then_some(n)
        },
    );
    let dropped = counter(&b.node) - dropped_before;
    assert_eq!(dropped, 3, "the nft counter shows each injected frame");
    assert_eq!(
        arrived, 3,
        "only the 3 plain control frames reached the task, none of the cleartext ones for sec"
    );
    eprintln!(
        "injection: {dropped} cleartext frames for the encrypted VNI dropped on {} (nft \
         counter), none reached the task; the 3 plain control frames did",
        b.node
    );
}

/// `network rotate-key` under pings and HTTP requests loses nothing, and new SPIs go out.
fn rotation_under_load(c: &Cluster, s: &Setup) {
    let (a, b_sec) = (&s.a, &s.b.addrs["sec"]);
    let before = spis(c, &a.node);
    let load = {
        let ns = format!("/run/netns/{}", ClusterPaths::new(&c.name).task_ns(&a.id));
        let bin = testkit::bin().expect("checked");
        Command::new("timeout")
            .args(["-k", "5", "120"])
            .arg(bin)
            .args(["--cluster", &c.name, "node", "exec", &a.node, "--", "sh", "-c"])
            .arg(format!(
                "nsenter --net={ns} sh -c 'ping -c 150 -i 0.1 -W 2 {b_sec} > /tmp/ping.out & \
                 f=0; for i in $(seq 150); do curl -s -m 5 -o /dev/null http://{b_sec}/ || f=$((f+1)); done; \
                 wait; tail -2 /tmp/ping.out; echo TCP-ERRORS $f'"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("load")
    };
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let rotated = sk(c, &["network", "rotate-key", "sec"]);
    eprintln!(
        "rotate-key: {} in {:.2}s",
        rotated.trim(),
        t.elapsed().as_secs_f64()
    );
    let load = load.wait_with_output().expect("load output");
    let report = text(&load);
    eprintln!("under rotation:\n{report}");
    assert!(
        report.contains("150 packets transmitted, 150 packets received"),
        "{report}"
    );
    assert!(report.contains("TCP-ERRORS 0"), "{report}");
    let after = spis(c, &a.node);
    let a_vtep = node_addr(c, &a.node);
    let out_of = |spis: &[String]| -> Vec<String> {
        spis.iter()
            .filter(|l| l.starts_with(&format!("src {a_vtep} ")))
            .cloned()
            .collect()
    };
    assert_eq!(out_of(&before).len(), 1, "{before:?}");
    assert_ne!(out_of(&before), out_of(&after), "sending with the new key");
    assert_eq!(
        after.len(),
        3,
        "in with both keys, out with the new: {after:?}"
    );
}

/// A third node joins the network's peers everywhere, then leaves them.
fn membership(c: &Cluster, s: &Setup) {
    let (a, b) = (&s.a, &s.b);
    sk(c, &["service", "scale", "app=3"]);
    let third = eventually("three running tasks", Duration::from_secs(120), || {
        let t = c.running_tasks("app");
        (t.len() == 3).then_some(t)
    });
    let newcomer = third
        .iter()
        .find(|t| t.node != a.node && t.node != b.node)
        .expect("a task on the third node")
        .node
        .clone();
    let n_vtep = node_addr(c, &newcomer);
    for t in [a, b] {
        let spis = eventually("SAs with the newcomer", Duration::from_secs(60), || {
            let s = spis(c, &t.node);
            (s.iter().filter(|l| l.contains(&n_vtep)).count() >= 2).then_some(s)
        });
        eprintln!("{} after scale-up: {spis:?}", t.node);
    }
    let mine = spis(c, &newcomer);
    assert!(!mine.is_empty(), "the newcomer has SAs: {mine:?}");
    sk(c, &["service", "scale", "app=1"]);
    let left = eventually("one running task", Duration::from_secs(120), || {
        let t = c.running_tasks("app");
        (t.len() == 1).then_some(t)
    });
    for node in ["node1", "node2", "node3"] {
        let spis = eventually("no stale SAs", Duration::from_secs(60), || {
            let s = spis(c, node);
            s.is_empty().then_some(s)
        });
        assert!(
            spis.is_empty(),
            "{node} keeps {spis:?} with one task on {}",
            left[0].node
        );
    }
    eprintln!("membership: SAs followed the scale to 3 and back to 1");
}

/// A guest dies; its SAs leave every peer, its task comes back elsewhere, and once the guest
/// is started again no slot runs twice.
fn node_loss(c: &Cluster) {
    sk(c, &["service", "scale", "app=3"]);
    let three = eventually("three running tasks", Duration::from_secs(120), || {
        let t = c.running_tasks("app");
        (t.len() == 3).then_some(t)
    });
    // The scale-down before may have removed `a`: the client is one of the three running now.
    let keeper = three[0].clone();
    let victim = three
        .iter()
        .map(|t| t.node.clone())
        .find(|n| *n != keeper.node)
        .expect("a task on another node");
    let v_vtep = node_addr(c, &victim);
    let node_down = |node: &str| {
        sk(c, &["node", "ls"])
            .lines()
            .any(|l| l.contains(node) && l.contains("Down"))
    };
    let t = Instant::now();
    sk(c, &["node", "kill", &victim]);
    eventually(
        "the killed guest marked down",
        Duration::from_secs(30),
        || node_down(&victim).then_some(()),
    );
    let down_after = t.elapsed();
    let replaced = eventually(
        "three running tasks, none on the dead guest",
        Duration::from_secs(120),
        || {
            let t = c.running_tasks("app");
            (t.len() == 3 && t.iter().all(|t| t.node != victim)).then_some(t)
        },
    );
    let replaced_after = t.elapsed();
    let survivors: Vec<&str> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != victim)
        .collect();
    for node in &survivors {
        eventually("no SA with the dead guest", Duration::from_secs(30), || {
            let s = spis(c, node);
            (!s.iter().any(|l| l.contains(&v_vtep))).then_some(())
        });
    }
    let sas_gone_after = t.elapsed();
    // The replacement is reachable through ESP from the first task.
    let moved = replaced
        .iter()
        .find(|r| !three.iter().any(|o| o.id == r.id))
        .expect("a replacement task");
    let mut last = String::new();
    let reached = Instant::now();
    while !last.contains("200") {
        assert!(
            reached.elapsed() < Duration::from_secs(30),
            "the replacement {moved:?} does not answer {}: {last}",
            keeper.node
        );
        last = in_task(
            c,
            &keeper,
            &format!(
                "curl -s -m 5 -o /dev/null -w %{{http_code}} http://{}/",
                moved.addrs["sec"]
            ),
        )
        .text();
    }
    let answers_after = t.elapsed();
    eprintln!(
        "node loss on qemu: {victim} down after {:.2}s, task replaced after {:.2}s, its SAs gone \
         from {survivors:?} after {:.2}s, the replacement answers through ESP after {:.2}s",
        down_after.as_secs_f64(),
        replaced_after.as_secs_f64(),
        sas_gone_after.as_secs_f64(),
        answers_after.as_secs_f64()
    );
    sk(c, &["node", "start", &victim]);
    eventually("the guest ready again", Duration::from_secs(180), || {
        sk(c, &["node", "ls"])
            .lines()
            .any(|l| l.contains(&victim) && l.contains("Ready"))
            .then_some(())
    });
    let after = c.running_tasks("app");
    assert_eq!(
        after.len(),
        3,
        "no slot runs twice after the guest is back: {after:?}"
    );
}

/// The routing walkthrough, unchanged except that `mydrupal` is created encrypted: drupal and
/// postgres then talk through ESP between the guests, and every step still reads the same.
#[test]
fn routing_walkthrough_with_mydrupal_encrypted() {
    testkit::skip_unless!(needs());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("sk-encrypted-routing-{}", std::process::id()));
    let (plans, snaps) = (dir.join("plans"), dir.join("snapshots"));
    std::fs::create_dir_all(&plans).expect("plans dir");
    std::fs::create_dir_all(&snaps).expect("snapshots dir");
    let plain = "docker network create --driver overlay mydrupal";
    let encrypted = "docker network create --driver overlay --opt encrypted mydrupal";
    for (from, to) in [
        (root.join("testplans/routing.md"), plans.join("routing.md")),
        (
            root.join("snapshots/routing.snap"),
            snaps.join("routing.snap"),
        ),
    ] {
        let text = std::fs::read_to_string(&from).expect("walkthrough file");
        assert!(
            text.contains(plain),
            "{} no longer creates mydrupal as expected",
            from.display()
        );
        std::fs::write(&to, text.replace(plain, encrypted)).expect("copy");
    }
    testkit::swarmkit(&["vm", "build"]).ok();
    let out = testkit::command(&[
        "walkthrough",
        "routing",
        "--backend",
        "qemu",
        "--plans",
        plans.to_str().expect("utf-8"),
        "--snapshots",
        snaps.to_str().expect("utf-8"),
    ])
    .output()
    .expect("running swarmkit");
    let _ = std::fs::remove_dir_all(&dir);
    let report = text(&out);
    eprintln!("{}", report.lines().last().unwrap_or_default());
    assert!(out.status.success(), "{report}");
}
