//! The qemu backend end to end: guests boot, agents register over SSH tunnels, IPVS carries a
//! published port, pinned host keys are enforced, and `cluster down` leaves nothing behind.
//! Needs root, qemu-system-x86_64, the Debian kernel package (or a cached one) and a built
//! `swarmkit` binary next to the test binary; each missing piece skips with a printed reason.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::paths::ClusterPaths;
use testbed::ssh::{self, SshError, Target};
use testkit::{Cluster, eventually};

/// Every command is bounded, so a hang fails the test instead of stalling CI.
fn sk(args: &[&str]) -> Output {
    testkit::command(args).output().expect("running swarmkit")
}

fn ok(args: &[&str]) -> String {
    testkit::swarmkit(args).ok().stdout
}

/// `swarmkit --cluster C ARGS`, which must succeed: its stdout.
fn on(c: &Cluster, args: &[&str]) -> String {
    c.sk(args).ok().stdout
}

/// What still runs for the cluster, by name, for the failure message.
fn owned_live_processes(cluster: &str) -> Vec<String> {
    testbed::procs::owned(cluster)
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect()
}

/// Every test here that boots guests holds this: under TCG, two multi-guest clusters at once
/// on a 2-core machine starve each other's managers and agents (elections time out), which
/// tests the machine, not swarmkit.
fn one_cluster_of_guests_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GUESTS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn three_guests_ipvs_pinned_keys_and_clean_teardown() {
    testkit::skip_unless!(testkit::needs_qemu());
    let _alone = one_cluster_of_guests_at_a_time();
    a_cached_image_build_is_instant();
    let t = Instant::now();
    let c = Cluster::up_with("qt", 3, &["--backend", "qemu"]);
    eprintln!("3 qemu guests ready: {:.2}s", t.elapsed().as_secs_f64());
    let nodes = on(&c, &["node", "ls"]);
    assert_eq!(nodes.matches("Ready").count(), 3, "{nodes}");
    exec_reaches_the_guest_with_a_pinned_key(&c);
    ipvs_carries_the_mesh(&c);
    let missing = c.sk(&[
        "node",
        "exec",
        "--netns",
        "no_such_sbox",
        "node1",
        "--",
        "true",
    ]);
    let err = &missing.stderr;
    assert_ne!(missing.code, 0, "{err}");
    assert!(
        err.contains("no sandbox \"no_such_sbox\"; it has:") && err.contains("ingress_sbox"),
        "{err}"
    );
    down_leaves_nothing(&c);
}

fn a_cached_image_build_is_instant() {
    let t = Instant::now();
    ok(&["vm", "build"]);
    eprintln!("vm build: {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    ok(&["vm", "build"]);
    let rebuild = t.elapsed();
    eprintln!("vm build, nothing changed: {:.3}s", rebuild.as_secs_f64());
    assert!(
        rebuild < Duration::from_secs(1),
        "a cached image build must be instant"
    );
}

/// node exec goes over SSH, into the guest's own kernel, and brings back exit codes; a
/// changed host key is refused.
fn exec_reaches_the_guest_with_a_pinned_key(c: &Cluster) {
    let uname = on(c, &["node", "exec", "node2", "--", "hostname"]);
    assert_eq!(uname.trim(), "node2");
    let out = c.sk(&["node", "exec", "node1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code, 7, "remote exit codes come back");

    let paths = ClusterPaths::new(&c.name);
    let node = testbed::vm::node::load_node(&paths, "node1").unwrap();
    let key = Arc::new(ssh::ensure_client_key(&node.key_file).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wrong = Target {
        addr: node.ssh.clone(),
        user: "root".into(),
        host_key: ssh::generate_host_key().public,
    };
    let err = rt
        .block_on(ssh::connect(&wrong, key.clone(), Duration::from_secs(30)))
        .err()
        .expect("a changed host key must be refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
}

/// A published port becomes an IPVS virtual service with one backend per task, in the
/// node's own IPVS, serving a neighbour and the node's own localhost.
fn ipvs_carries_the_mesh(c: &Cluster) {
    c.service_create(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "traefik/whoami",
    ])
    .ok();
    // On a guest the mesh balances in the node's own IPVS, so plain `ipvsadm -Ln` shows it.
    let exec = |node: &str, cmd: &[&str]| {
        let mut args = vec!["node", "exec", node, "--"];
        args.extend_from_slice(cmd);
        on(c, &args)
    };
    let ipvs = eventually(
        "three IPVS backends on node1",
        Duration::from_secs(60),
        || {
            let out = c.sk(&["node", "exec", "node1", "--", "ipvsadm", "-Ln"]);
            (out.stdout.matches("Masq").count() == 3).then_some(out.stdout)
        },
    );
    eprintln!("node1 ipvsadm -Ln:\n{ipvs}");
    assert!(ipvs.contains("FWM"), "{ipvs}");
    let sandbox_ipvs = on(
        c,
        &[
            "node",
            "exec",
            "--netns",
            "ingress_sbox",
            "node1",
            "--",
            "ipvsadm",
            "-Ln",
        ],
    );
    assert!(
        !sandbox_ipvs.contains("FWM"),
        "the sandbox only routes in this layout:\n{sandbox_ipvs}"
    );

    // That table serves both paths into the mesh, round-robin over the three tasks: a
    // neighbour calling node1's address, and node1's own localhost (hairpinned through the
    // sandbox).
    let paths = ClusterPaths::new(&c.name);
    let addr_of = |node: &str| {
        testbed::vm::node::load_node(&paths, node)
            .unwrap()
            .addr
            .addr()
            .to_string()
    };
    let node1_addr = addr_of("node1");
    let hostnames = |out: String| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("Hostname: "))
            .map(str::to_string)
            .collect()
    };
    let three_calls =
        |url: String| format!("for i in 1 2 3; do curl -s -m 10 {url} || exit 1; done");
    let mut remote = hostnames(exec(
        "node2",
        &[
            "sh",
            "-c",
            &three_calls(format!("http://{node1_addr}:8080/")),
        ],
    ));
    let mut local = hostnames(exec(
        "node1",
        &["sh", "-c", &three_calls("http://127.0.0.1:8080/".into())],
    ));
    for calls in [&mut remote, &mut local] {
        calls.sort();
        calls.dedup();
        assert_eq!(calls.len(), 3, "each call a different task: {calls:?}");
    }
    let conns = exec("node1", &["ipvsadm", "-Lnc"]);
    eprintln!("node1 ipvsadm -Lnc:\n{conns}");
    let node2_addr = addr_of("node2");
    for from in [format!("{node2_addr}:"), "172.18.255.254:".to_string()] {
        assert_eq!(
            conns.matches(&from).count(),
            3,
            "three connections from {from} in node1's IPVS:\n{conns}"
        );
    }
}

/// `cluster down` leaves no process, namespace, tap or run directory of the cluster.
fn down_leaves_nothing(c: &Cluster) {
    let paths = ClusterPaths::new(&c.name);
    let t = Instant::now();
    ok(&["cluster", "down", &c.name]);
    eprintln!("cluster down: {:.2}s", t.elapsed().as_secs_f64());
    assert!(
        owned_live_processes(&c.name).is_empty(),
        "{:?}",
        owned_live_processes(&c.name)
    );
    let prefix = paths.ns_prefix();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    // Taps live only in the cluster's underlay namespace, so its absence proves theirs.
    assert!(!paths.run_dir().exists());
}

/// Where dropbear may be installed.
const DROPBEAR: &[&str] = &["/usr/sbin/dropbear", "/usr/bin/dropbear"];

/// Pinning without a guest: a dropbear on loopback with a key made the way guests get
/// theirs. The right pin gets past the host-key check (and is then refused login, since our
/// key is not authorized on this host); a wrong pin is refused before authentication.
#[test]
fn changed_host_key_is_refused() {
    testkit::skip_unless!(testkit::needs_tools(&[(DROPBEAR, "dropbear-bin")]));
    let dropbear = testkit::find_tool(DROPBEAR).expect("checked");
    let dir = std::env::temp_dir().join(format!("sktest-ssh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hk = ssh::generate_host_key();
    let key_path = dir.join("host_key");
    std::fs::write(&key_path, &hk.dropbear).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(dropbear)
        .args(["-F", "-E", "-s", "-r"])
        .arg(&key_path)
        .args(["-p", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child, PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _guard = Kill(server, dir.clone());
    let addr = format!("127.0.0.1:{port}");
    eventually("dropbear to listen", Duration::from_secs(10), || {
        testbed::vm::reach::banner(&addr).then_some(())
    });
    let client = Arc::new(ssh::ensure_client_key(&dir.join("id_ed25519")).unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("id_ed25519"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "client keys are private");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let connect = |pin| {
        let target = Target {
            addr: addr.clone(),
            user: "sktest-nobody".into(),
            host_key: pin,
        };
        rt.block_on(ssh::connect(
            &target,
            client.clone(),
            Duration::from_secs(20),
        ))
    };
    match connect(hk.public.clone()) {
        Err(SshError::AuthRejected { .. }) => {}
        Err(e) => panic!("the pinned key should pass the host check: {e}"),
        Ok(_) => panic!("login should be refused for an unknown user"),
    }
    match connect(ssh::generate_host_key().public) {
        Err(SshError::HostKeyMismatch { .. }) => {}
        Err(e) => panic!("expected a host key mismatch, got: {e}"),
        Ok(_) => panic!("a changed host key must be refused"),
    }
}

/// The ssh backend against qemu guests treated as plain hosts: an inventory with their
/// addresses, key and pinned host keys; the binary is uploaded, agents register, the nft
/// tables the agent makes in a host's own namespace carry the cluster's name, and `cluster
/// down` cleans the hosts over SSH: agents, namespaces, those tables, and the sysctls put
/// back as they were.
#[test]
fn ssh_backend_on_bare_guests() {
    testkit::skip_unless!(testkit::needs_qemu());
    let _alone = one_cluster_of_guests_at_a_time();
    let machines = Cluster::up_with_env(
        "qm",
        2,
        &["--backend", "qemu"],
        &[(testbed::backend::qemu::ENV_BARE, "1")],
    );
    // Dropped before the machines, whose hosts its `cluster down` cleans.
    let c = Cluster::guard(&testkit::unique_name("qs"));
    let host = Host(&machines);
    host.set_aside_its_own_state();
    let t = Instant::now();
    ssh_cluster_up(&c, &machines, &[]);
    eprintln!(
        "ssh backend, 2 hosts (with upload): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let nodes = on(&c, &["node", "ls"]);
    assert_eq!(nodes.matches("Ready").count(), 2, "{nodes}");
    let hostname = on(&c, &["node", "exec", "node1", "--", "hostname"]);
    assert_eq!(hostname.trim(), "node1");
    the_agent_changes_the_host(&c, &host);
    ok(&["cluster", "down", &c.name]);
    down_restores_the_host(&c, &host);
    // The hosts were cleaned over SSH: no agent, no namespaces of that cluster.
    let left = host.sh(&format!(
        "ls /run/netns | grep -c '^sk-{}\\.' ; ps | grep -c -e '[_]_agent' -e '[_]_relay'; true",
        c.name
    ));
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "{left}"
    );
}

/// `cluster up` of `c` on the ssh backend over the bare guests of `machines`, with `flags`;
/// it must succeed.
fn ssh_cluster_up(c: &Cluster, machines: &Cluster, flags: &[&str]) {
    let inv_path = std::env::temp_dir().join(format!("sktest-inventory-{}.toml", c.name));
    std::fs::write(&inv_path, inventory(machines)).unwrap();
    let mut args = vec!["cluster", "up", "--name", &c.name, "--backend", "ssh"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--inventory", inv_path.to_str().unwrap()]);
    let out = sk(&args);
    let _ = std::fs::remove_file(&inv_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The inventory of the bare guests of `machines`, as the ssh backend reads it.
fn inventory(machines: &Cluster) -> String {
    let mut inv = String::new();
    for n in testbed::vm::node::load_nodes(&ClusterPaths::new(&machines.name)) {
        inv.push_str(&format!(
            "[[host]]\nname = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nhost_key = \"{}\"\nnode_addr = \"{}\"\n\n",
            n.name,
            n.ssh,
            n.key_file.display(),
            n.host_key,
            n.addr
        ));
    }
    inv
}

/// The first bare guest, as the host the ssh backend's node1 runs on.
struct Host<'a>(&'a Cluster);

const SYSCTLS: &str =
    "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/all/route_localnet";

impl Host<'_> {
    /// A shell command on the host, which must succeed: its stdout.
    fn sh(&self, cmd: &str) -> String {
        on(self.0, &["node", "exec", "node1", "--", "sh", "-c", cmd])
    }

    fn xfrm(&self, what: &str) -> String {
        self.sh(&format!("{} xfrm {what}", testbed::vm::image::IPROUTE2_IP))
    }

    /// The cluster's nft tables on the host, sorted.
    fn tables_of(&self, cluster: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .sh("nft list tables")
            .lines()
            .filter(|l| l.contains(&format!("swarmkit_{cluster}_")))
            .map(|l| l.trim().to_string())
            .collect();
        t.sort();
        t
    }

    /// The host's own settings before the cluster: both sysctls off, so that turning them
    /// on shows; and its own IPsec, which the cluster must leave alone: an SA and a policy
    /// of an address nothing sends to, the policy also only for marked packets.
    fn set_aside_its_own_state(&self) {
        self.sh(&format!(
            "echo 0 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/conf/all/route_localnet; {SYSCTLS}"
        ));
        self.sh(&format!(
            "{ip} xfrm state add src 10.99.0.1 dst 10.99.0.2 proto esp spi 0x5c5c reqid 7 \
             mode transport aead 'rfc4106(gcm(aes))' 0x{key} 64 && \
             {ip} xfrm policy add src 10.99.0.1/32 dst 10.99.0.2/32 dir out mark 0x77 \
             tmpl src 10.99.0.1 dst 10.99.0.2 proto esp reqid 7 mode transport",
            ip = testbed::vm::image::IPROUTE2_IP,
            key = "ab".repeat(20),
        ));
    }
}

/// A routing-mesh port and a host-mode port on node1: the agent makes its tables in the
/// host's own namespace, named after the cluster, and turns the sysctls on. An encrypted
/// network with a task on each host: the cluster's SAs and policies in the host's namespace
/// carry its reqid, the marking table its name.
fn the_agent_changes_the_host(c: &Cluster, host: &Host) {
    let name = &c.name;
    c.service_create(&[
        "--name",
        "web",
        "--constraint",
        "node.hostname==node1",
        "--publish",
        "8080:80",
        "--publish",
        "published=8081,target=80,mode=host",
        "whoami",
    ])
    .ok();
    let made = eventually(
        "the cluster's tables on the host",
        Duration::from_secs(60),
        || {
            let t = host.tables_of(name);
            (t.len() == 3).then_some(t)
        },
    );
    assert_eq!(
        made,
        [
            format!("table ip swarmkit_{name}_gateway"),
            format!("table ip swarmkit_{name}_hostports"),
            format!("table ip swarmkit_{name}_ingress"),
        ]
    );
    // The control path ends in a root-only socket of this cluster's, not a loopback port.
    assert_eq!(
        host.sh(&format!(
            "stat -c %a /run/swarmkit/{name}/agents.sock /run/swarmkit/{name}"
        ))
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["600", "700"]
    );
    // route_localnet goes on the mesh's own links, never on all of the host's interfaces
    // (CVE-2020-8558), and both tables drop 127.0.0.0/8 arriving from anywhere but lo.
    assert_eq!(
        host.sh(SYSCTLS).split_whitespace().collect::<Vec<_>>(),
        ["1", "0"]
    );
    assert_eq!(
        host.sh("cat /proc/sys/net/ipv4/conf/docker_gwbridge/route_localnet")
            .trim(),
        "1"
    );
    for table in ["hostports", "ingress"] {
        let rules = host.sh(&format!("nft list table ip swarmkit_{name}_{table}"));
        assert!(
            rules.contains("iifname != \"lo\" ip daddr 127.0.0.0/8 drop"),
            "{table}: {rules}"
        );
    }

    on(
        c,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--opt",
            "encrypted",
            "sec",
        ],
    );
    for node in ["node1", "node2"] {
        c.service_create(&[
            "--name",
            &format!("sec-{node}"),
            "--network",
            "sec",
            "--constraint",
            &format!("node.hostname=={node}"),
            "whoami",
        ])
        .ok();
    }
    let reqid = format!("reqid {} ", netcore::xfrm::shared_reqid(name));
    let with_reqid = |listing: &str| listing.matches(&reqid).count();
    // Inbound and outbound SAs towards node2, and the outbound policy.
    eventually(
        "the cluster's SAs and policy on the host",
        Duration::from_secs(120),
        || {
            (with_reqid(&host.xfrm("state")) >= 2 && with_reqid(&host.xfrm("policy")) >= 1)
                .then_some(())
        },
    );
    let tables = host.tables_of(name);
    assert!(
        tables.contains(&format!("table ip swarmkit_{name}_ipsec")),
        "{tables:?}"
    );
}

/// Everything the agent changed in the host's namespace is undone, and the host's own state
/// is left as it was.
fn down_restores_the_host(c: &Cluster, host: &Host) {
    assert_eq!(host.tables_of(&c.name), Vec::<String>::new());
    // The gateway bridge the cluster made on the host went with it.
    assert_eq!(
        host.sh("ls /sys/class/net | grep -c '^docker_gwbridge$'; true")
            .trim(),
        "0"
    );
    let reqid = format!("reqid {} ", netcore::xfrm::shared_reqid(&c.name));
    let with_reqid = |listing: &str| listing.matches(&reqid).count();
    let (states, policies) = (host.xfrm("state"), host.xfrm("policy"));
    assert_eq!(
        with_reqid(&states),
        0,
        "the cluster's SAs are left:\n{states}"
    );
    assert_eq!(
        with_reqid(&policies),
        0,
        "the cluster's policies are left:\n{policies}"
    );
    assert!(
        states.contains("spi 0x00005c5c") && states.contains("reqid 7 "),
        "the host's own SA went with the cluster's:\n{states}"
    );
    assert!(
        policies.contains("10.99.0.2/32") && policies.contains("reqid 7 "),
        "the host's own policy went with the cluster's:\n{policies}"
    );
    assert_eq!(
        host.sh(SYSCTLS).split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "the sysctls the agent set were not restored"
    );
}

/// SWARMKIT_VM_IMAGE (a prebuilt image directory, what flake.nix hands over) is read: a
/// directory without a kernel is refused by name, and nothing of the cluster is left.
#[test]
fn a_prebuilt_image_directory_is_checked() {
    testkit::skip_unless!(testkit::needs_qemu());
    let name = testkit::unique_name("qimg");
    let out = testkit::command(&[
        "cluster",
        "up",
        "--name",
        &name,
        "--backend",
        "qemu",
        "--nodes",
        "1",
    ])
    .env(testbed::vm::image::ENV_IMAGE_DIR, "/nonexistent-sk-image")
    .output()
    .expect("running swarmkit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "came up without an image");
    assert!(
        stderr.contains("SWARMKIT_VM_IMAGE") && stderr.contains("/nonexistent-sk-image/kernel"),
        "{stderr}"
    );
    assert!(!ClusterPaths::new(&name).run_dir().exists());
    assert!(!ClusterPaths::new(&name).state_dir().exists());
}

/// On guests: `--lb ipvs` is judged by the guests' kernel (this host may lack IPVS), `exec
/// TASK` enters the task from inside its node, and the fault verbs crash, reboot, cut and heal
/// a guest.
#[test]
fn guests_take_ipvs_exec_tasks_and_take_faults() {
    testkit::skip_unless!(testkit::needs_qemu());
    let _alone = one_cluster_of_guests_at_a_time();
    let cl = Cluster::up_with("qf", 2, &["--backend", "qemu", "--lb", "ipvs"]);
    let c = |args: &[&str]| on(&cl, args);
    let inspect = c(&["node", "inspect", "node1"]);
    assert!(
        inspect.contains("\"swarmkit.lb-driver\": \"ipvs\""),
        "{inspect}"
    );

    c(&[
        "service", "create", "--name", "sleeper", "whoami", "sleep", "300",
    ]);
    let hostname = eventually("the task to run", Duration::from_secs(60), || {
        let out = cl.sk(&["exec", "sleeper.1", "--", "hostname"]);
        out.success().then(|| out.stdout.trim().to_string())
    });
    assert!(
        !hostname.is_empty() && !hostname.starts_with("node"),
        "{hostname:?}"
    );

    let ping = |from: &str, to: &str| {
        cl.sk(&["node", "exec", from, "--", "ping", "-c1", "-W1", to])
            .success()
    };
    // The control path ends in the cluster's agent socket on the node (the relay's), in a
    // root-only directory; nothing listens on a TCP port for it.
    let agents = format!("/run/swarmkit/{}/agents.sock", cl.name);
    let manager = |from: &str| {
        cl.sk(&[
            "node",
            "exec",
            from,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            // The agents' listener speaks TLS; any answer (a 404 here) means it was reached.
            "-k",
            "--unix-socket",
            &agents,
            "https://swarm-manager/_ping",
        ])
        .success()
    };
    assert!(ping("node1", "192.168.0.12"));
    c(&["node", "isolate", "node2"]);
    assert!(!ping("node1", "192.168.0.12"), "data path not cut");
    assert!(!manager("node2"), "control channel not cut");
    assert!(manager("node1"));
    c(&["node", "heal", "node2"]);
    eventually(
        "node2 to reach the manager",
        Duration::from_secs(10),
        || manager("node2").then_some(()),
    );
    assert!(ping("node1", "192.168.0.12"));

    // The guest's forward ends at the agents' listener: plain HTTP gets no answer, TLS
    // without the node's certificate none of the Engine API, a made-up token no join.
    let http = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "node",
            "exec",
            "node2",
            "--",
            "curl",
            "-s",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        args.extend_from_slice(&["--unix-socket", &agents]);
        args.extend_from_slice(extra);
        args.push(url);
        let r = cl.sk(&args);
        (r.code, r.stdout.trim().to_string())
    };
    let modes = cl.sk(&[
        "node",
        "exec",
        "node2",
        "--",
        "stat",
        "-c",
        "%a",
        &agents,
        agents.trim_end_matches("/agents.sock"),
    ]);
    assert_eq!(
        modes.stdout.split_whitespace().collect::<Vec<_>>(),
        ["600", "700"],
        "{modes:?}"
    );
    let tcp = cl.sk(&["node", "exec", "node2", "--", "cat", "/proc/net/tcp"]);
    assert!(tcp.success());
    // 2377 is 0949 in /proc/net/tcp's hex; 0A is LISTEN.
    assert!(
        !tcp.stdout
            .lines()
            .any(|l| l.contains(":0949 ") && l.split_whitespace().nth(3) == Some("0A")),
        "something listens on 2377 in the guest: {}",
        tcp.stdout
    );
    let (code, _) = http("http://swarm-manager/services", &[]);
    assert_ne!(code, 0, "plain HTTP answered on the agents' socket");
    assert_eq!(http("https://swarm-manager/services", &[]).1, "404");
    assert_eq!(http("https://swarm-manager/swarm", &[]).1, "404");
    assert_eq!(
        http("https://swarm-manager/swarmkit/v1/agent/plan", &[]).1,
        "401"
    );
    let join = r#"{"token":"SWMTKN-1-abc-def","csr_pem":"x","node":{"hostname":"evil","addr":"192.168.0.66","lb_driver":"nftables","kernel":"x"}}"#;
    assert_eq!(
        http(
            "https://swarm-manager/swarmkit/v1/agent/join",
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                join
            ]
        )
        .1,
        "401"
    );

    let paths = ClusterPaths::new(&cl.name);
    let guest = testbed::vm::node::load_node(&paths, "node2")
        .unwrap()
        .pid
        .unwrap();
    c(&["node", "kill", "node2"]);
    assert!(testbed::procs::dead(guest as i32), "the guest survived");
    assert!(!ping("node1", "192.168.0.12"));
    c(&["node", "start", "node2"]);
    assert!(ping("node1", "192.168.0.12"));
    let nodes = c(&["node", "ls"]);
    assert_eq!(nodes.matches("Ready").count(), 2, "{nodes}");
}

/// Issue 24 on machines: three guests each run a manager (started by its agent, its store
/// and Raft log on the guest's own disk), reached from this host through each guest's SSH
/// session. The leader's guest killed: another leads and takes writes, and the guest started
/// again comes back from its disk as a follower; the leader cut off: the majority takes
/// writes, the cut-off manager refuses them in docker's words, and after the heal the three
/// stores are the same bytes, each write in them once. A demoted and re-promoted manager is
/// reached from this host again; two guests lost, the third is recovered as the only manager.
#[test]
fn guest_managers_survive_a_killed_guest_and_a_cut() {
    testkit::skip_unless!(testkit::needs_qemu());
    let _alone = one_cluster_of_guests_at_a_time();
    let cl = Cluster::up_with("qgm", 3, &["--backend", "qemu", "--managers", "3"]);
    let status = || -> Vec<(String, String)> {
        let out = cl.sk(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
        out.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(h, s)| (h.to_string(), s.trim().to_string()))
            .collect()
    };
    let leader = || {
        status()
            .into_iter()
            .find(|(_, s)| s == "Leader")
            .map(|(h, _)| h)
    };
    let first = eventually("a leader", Duration::from_secs(30), leader);
    let managers = status();
    assert_eq!(
        managers.iter().filter(|(_, s)| s == "Reachable").count(),
        2,
        "{managers:?}"
    );
    // Each manager is its guest's: its store is on the guest's disk, its socket here is the
    // relay's.
    let mounts = on(&cl, &["node", "exec", "node1", "--", "cat", "/proc/mounts"]);
    assert!(
        mounts.contains(&format!("/var/lib/swarmkit/{} ext4", cl.name)),
        "{mounts}"
    );
    let replica = |node: &str| -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--unix-socket"])
            .arg(
                ClusterPaths::new(&cl.name)
                    .replica_run_dir(node)
                    .join("manager.sock"),
            )
            .arg("http://swarmkit/swarmkit/v1/replica")
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    // A create whose answer was lost in a failover may have been applied: its retry then
    // meets the name taken, which is the write having landed once.
    let create = |name: &str| {
        let r = cl.sk(&["service", "create", "--detach", "--name", name, "whoami"]);
        r.success() || r.stderr.contains("is already in use by service")
    };
    assert!(create("before"));

    let guest = |node: &str| {
        testbed::vm::node::load_node(&ClusterPaths::new(&cl.name), node)
            .unwrap()
            .pid
            .unwrap() as i32
    };
    let pid = guest(&first);
    on(&cl, &["node", "kill", &first]);
    assert!(testbed::procs::dead(pid), "the leader's guest survived");
    let t = Instant::now();
    eventually(
        "a write after the leader's guest died",
        Duration::from_secs(20),
        || create("after-kill").then_some(()),
    );
    eprintln!(
        "leader's guest killed -> first accepted write: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let second = leader().expect("a new leader");
    assert_ne!(second, first);
    on(&cl, &["node", "start", &first]);
    eventually(
        "the restarted manager to follow, caught up",
        Duration::from_secs(60),
        || {
            let s = status();
            let back = s.iter().any(|(h, st)| *h == first && st == "Reachable");
            (back && replica(&first)?["leader"] == false).then_some(())
        },
    );

    on(&cl, &["node", "isolate", &second]);
    eventually(
        "a write while the leader is cut off",
        Duration::from_secs(20),
        || create("after-cut").then_some(()),
    );
    let refused = Command::new("docker")
        .env(
            "DOCKER_HOST",
            format!(
                "unix://{}",
                ClusterPaths::new(&cl.name)
                    .replica_run_dir(&second)
                    .join("manager.sock")
                    .display()
            ),
        )
        .args([
            "service", "create", "--detach", "--name", "minority", "whoami",
        ])
        .output()
        .expect("running docker");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("The swarm does not have a leader"), "{said}");
    on(&cl, &["node", "heal", &second]);
    let digests = eventually("the three stores to agree", Duration::from_secs(60), || {
        let d: Vec<_> = ["node1", "node2", "node3"]
            .iter()
            .map(|n| replica(n).map(|r| r["digest"].clone()))
            .collect::<Option<Vec<_>>>()?;
        (d.iter().all(|x| *x == d[0])).then_some(d)
    });
    eprintln!("stores agree: {}", digests[0]);
    let services = on(&cl, &["service", "ls", "--format", "{{.Name}}"]);
    let mut names: Vec<&str> = services.lines().collect();
    names.sort();
    assert_eq!(names, ["after-cut", "after-kill", "before"], "{services}");

    // A manager demoted through the API leaves this host's list of managers; promoted again,
    // its new manager on its guest is reached from here once more, caught up.
    let lead = leader().expect("a leader");
    let other = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| *n != lead)
        .unwrap();
    let dir = ClusterPaths::new(&cl.name).replica_run_dir(other);
    on(&cl, &["node", "demote", other]);
    eventually("its socket withdrawn here", Duration::from_secs(30), || {
        (!dir.exists()).then_some(())
    });
    let promoted = cl.sk(&["node", "promote", other]);
    if !promoted.success() {
        // The promoted manager's and agent's logs are on its guest.
        let logs = cl.sk(&[
            "node",
            "exec",
            other,
            "--",
            "sh",
            "-c",
            &format!(
                "tail -n 30 /run/swarmkit/{c}/manager-{other}.log; tail -n 30 /run/swarmkit/{c}/agent.log",
                c = cl.name
            ),
        ]);
        panic!("promoting {other}: {}\n{}", promoted.stderr, logs.stdout);
    }
    eventually(
        "the promoted manager reached here, caught up",
        Duration::from_secs(90),
        || {
            let theirs = replica(other)?;
            let leaders = replica(&lead)?;
            (theirs["digest"] == leaders["digest"] && theirs["leader"] == false).then_some(())
        },
    );

    // Two of three guests die: no quorum, writes refused; the survivor is made the only
    // manager from its own disk, and takes writes again.
    let survivor = leader().expect("a leader");
    for n in ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != survivor)
    {
        on(&cl, &["node", "kill", n]);
    }
    eventually(
        "writes refused without a quorum",
        Duration::from_secs(30),
        || {
            let r = cl.sk(&["service", "create", "--detach", "--name", "lost", "whoami"]);
            r.stderr
                .contains("The swarm does not have a leader")
                .then_some(())
        },
    );
    on(
        &cl,
        &[
            "cluster",
            "recover",
            "--force-new-cluster",
            "--from",
            &survivor,
        ],
    );
    eventually(
        "a write after the recovery",
        Duration::from_secs(30),
        || create("after-recover").then_some(()),
    );
    let managers = status();
    assert_eq!(
        managers
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .collect::<Vec<_>>(),
        [&(survivor.clone(), "Leader".to_string())],
        "{managers:?}"
    );
    down_leaves_nothing(&cl);
}

/// Issue 24 on hosts someone owns: the first three hosts of an ssh inventory each run a
/// manager (their copies of the seed sent over SSH, their Raft traffic between the addresses
/// the inventory gives), this host reaches each through its SSH session, a write through a
/// follower lands once in every store, and `cluster down` removes the managers and their
/// stores from the hosts.
#[test]
fn ssh_hosts_run_the_managers() {
    testkit::skip_unless!(testkit::needs_qemu());
    let _alone = one_cluster_of_guests_at_a_time();
    let machines = Cluster::up_with_env(
        "qh",
        3,
        &["--backend", "qemu"],
        &[(testbed::backend::qemu::ENV_BARE, "1")],
    );
    let c = Cluster::guard(&testkit::unique_name("qsm"));
    ssh_cluster_up(&c, &machines, &["--managers", "3"]);
    eventually(
        "a leader and two followers",
        Duration::from_secs(30),
        || {
            let s = on(&c, &["node", "ls", "--format", "{{.ManagerStatus}}"]);
            (s.contains("Leader") && s.matches("Reachable").count() == 2).then_some(())
        },
    );
    let paths = ClusterPaths::new(&c.name);
    let follower = on(
        &c,
        &["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"],
    )
    .lines()
    .find(|l| l.ends_with(" Reachable"))
    .and_then(|l| l.split_whitespace().next())
    .expect("a follower")
    .to_string();
    let via = |node: &str, args: &[&str]| {
        Command::new("docker")
            .env(
                "DOCKER_HOST",
                format!(
                    "unix://{}",
                    paths.replica_run_dir(node).join("manager.sock").display()
                ),
            )
            .args(args)
            .output()
            .expect("running docker")
    };
    let created = via(
        &follower,
        &["service", "create", "--detach", "--name", "web", "whoami"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    eventually("every manager to list it", Duration::from_secs(20), || {
        ["node1", "node2", "node3"]
            .iter()
            .all(|n| {
                let ls = via(n, &["service", "ls", "--format", "{{.Name}}"]);
                String::from_utf8_lossy(&ls.stdout).trim() == "web"
            })
            .then_some(())
    });
    let stores = on(
        &machines,
        &[
            "node",
            "exec",
            "node2",
            "--",
            "ls",
            &paths.replica_dir("node2").display().to_string(),
        ],
    );
    assert!(stores.contains("state.redb"), "{stores}");
    ok(&["cluster", "down", &c.name]);
    for n in ["node1", "node2", "node3"] {
        let left = on(
            &machines,
            &[
                "node",
                "exec",
                n,
                "--",
                "sh",
                "-c",
                &format!(
                    "ls -d {} 2>/dev/null; ps | grep -c '[_]_manager'; true",
                    paths.state_dir().display()
                ),
            ],
        );
        assert_eq!(left.trim(), "0", "{n} kept: {left}");
    }
}
