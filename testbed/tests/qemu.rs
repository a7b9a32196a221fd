//! The qemu backend end to end: guests boot, agents register over SSH tunnels, IPVS carries a
//! published port, pinned host keys are enforced, and `cluster down` leaves nothing behind.
//! Needs root, qemu-system-x86_64, the Debian kernel package (or a cached one) and a built
//! `swarmkit` binary next to the test binary; each missing piece skips with a printed reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::paths::ClusterPaths;
use testbed::ssh::{self, SshError, Target};
use testkit::eventually;

fn skip_reason() -> Option<String> {
    testkit::needs_qemu()
}

/// Every command is bounded, so a hang fails the test instead of stalling CI.
fn sk(args: &[&str]) -> Output {
    testkit::command(args).output().expect("running swarmkit")
}

fn ok(args: &[&str]) -> String {
    testkit::swarmkit(args).ok().stdout
}

/// What still runs for the cluster, by name, for the failure message.
fn owned_live_processes(cluster: &str) -> Vec<String> {
    testbed::procs::owned(cluster)
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect()
}

#[test]
fn three_guests_ipvs_pinned_keys_and_clean_teardown() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let name = format!("qt{}", std::process::id());
    let _down = testkit::Cluster::guard(&name);

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

    let t = Instant::now();
    ok(&[
        "cluster",
        "up",
        "--name",
        &name,
        "--backend",
        "qemu",
        "--nodes",
        "3",
    ]);
    eprintln!("3 qemu guests ready: {:.2}s", t.elapsed().as_secs_f64());
    let nodes = ok(&["--cluster", &name, "node", "ls"]);
    assert_eq!(nodes.matches("Ready").count(), 3, "{nodes}");

    // node exec goes over SSH, into the guest's own kernel with IPVS loaded.
    let uname = ok(&[
        "--cluster",
        &name,
        "node",
        "exec",
        "node2",
        "--",
        "hostname",
    ]);
    assert_eq!(uname.trim(), "node2");
    let out = sk(&[
        "--cluster",
        &name,
        "node",
        "exec",
        "node1",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "remote exit codes come back");

    // A changed host key is refused.
    let paths = ClusterPaths::new(&name);
    let node = testbed::vm::node::load_node(&paths, "node1").unwrap();
    let key = Arc::new(ssh::ensure_client_key(&node.key_file).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wrong = Target {
        addr: node.ssh.clone(),
        user: "root".into(),
        host_key: ssh::generate_host_key().public,
    };
    let err = rt
        .block_on(ssh::connect(
            &wrong,
            key.clone(),
            None,
            Duration::from_secs(30),
        ))
        .err()
        .expect("a changed host key must be refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");

    // IPVS: a published port becomes an IPVS virtual service with one backend per task.
    ok(&[
        "--cluster",
        &name,
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "traefik/whoami",
    ]);
    // On a guest the mesh balances in the node's own IPVS, so plain `ipvsadm -Ln` shows it.
    let exec = |node: &str, cmd: &[&str]| {
        let mut args = vec!["--cluster", &name, "node", "exec", node, "--"];
        args.extend_from_slice(cmd);
        ok(&args)
    };
    let ipvs = eventually(
        "three IPVS backends on node1",
        Duration::from_secs(60),
        || {
            let out = sk(&[
                "--cluster",
                &name,
                "node",
                "exec",
                "node1",
                "--",
                "ipvsadm",
                "-Ln",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.matches("Masq").count() == 3).then_some(text)
        },
    );
    eprintln!("node1 ipvsadm -Ln:\n{ipvs}");
    assert!(ipvs.contains("FWM"), "{ipvs}");
    let sandbox_ipvs = ok(&[
        "--cluster",
        &name,
        "node",
        "exec",
        "--netns",
        "ingress_sbox",
        "node1",
        "--",
        "ipvsadm",
        "-Ln",
    ]);
    assert!(
        !sandbox_ipvs.contains("FWM"),
        "the sandbox only routes in this layout:\n{sandbox_ipvs}"
    );

    // That table serves both paths into the mesh, round-robin over the three tasks: a
    // neighbour calling node1's address, and node1's own localhost (hairpinned through the
    // sandbox).
    let node1_addr = node.addr.addr().to_string();
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
    let node2_addr = testbed::vm::node::load_node(&paths, "node2")
        .unwrap()
        .addr
        .addr()
        .to_string();
    for from in [format!("{node2_addr}:"), "172.18.255.254:".to_string()] {
        assert_eq!(
            conns.matches(&from).count(),
            3,
            "three connections from {from} in node1's IPVS:\n{conns}"
        );
    }
    let missing = sk(&[
        "--cluster",
        &name,
        "node",
        "exec",
        "--netns",
        "no_such_sbox",
        "node1",
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_ne!(missing.status.code(), Some(0), "{err}");
    assert!(
        err.contains("no sandbox \"no_such_sbox\"; it has:") && err.contains("ingress_sbox"),
        "{err}"
    );
    let t = Instant::now();
    ok(&["cluster", "down", &name]);
    eprintln!("cluster down: {:.2}s", t.elapsed().as_secs_f64());
    assert!(
        owned_live_processes(&name).is_empty(),
        "{:?}",
        owned_live_processes(&name)
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

/// Pinning without a guest: a dropbear on loopback with a key made the way guests get
/// theirs. The right pin gets past the host-key check (and is then refused login, since our
/// key is not authorized on this host); a wrong pin is refused before authentication.
#[test]
fn changed_host_key_is_refused() {
    let dropbear = ["/usr/sbin/dropbear", "/usr/bin/dropbear"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(dropbear) = dropbear else {
        eprintln!("skipped: dropbear is not installed (apt-get install dropbear-bin)");
        return;
    };
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
            None,
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
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let machines = format!("qm{}", std::process::id());
    let name = format!("qs{}", std::process::id());
    let _down_machines = testkit::Cluster::guard(&machines);
    let _down = testkit::Cluster::guard(&name);
    let bin = testkit::bin().unwrap();
    let out = Command::new(&bin)
        .args([
            "cluster",
            "up",
            "--name",
            &machines,
            "--backend",
            "qemu",
            "--nodes",
            "2",
        ])
        .env(testbed::backend::qemu::ENV_BARE, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mpaths = ClusterPaths::new(&machines);
    let mut inv = String::new();
    for n in testbed::vm::node::load_nodes(&mpaths) {
        inv.push_str(&format!(
            "[[host]]\nname = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nhost_key = \"{}\"\nnode_addr = \"{}\"\n\n",
            n.name,
            n.ssh,
            n.key_file.display(),
            n.host_key,
            n.addr
        ));
    }
    // The host's own settings before the cluster: both off, so that turning them on shows.
    let on_host = |cmd: &str| {
        ok(&[
            "--cluster",
            &machines,
            "node",
            "exec",
            "node1",
            "--",
            "sh",
            "-c",
            cmd,
        ])
    };
    let sysctls = "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/all/route_localnet";
    on_host(&format!(
        "echo 0 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/conf/all/route_localnet; {sysctls}"
    ));
    // The host's own IPsec, which the cluster must leave alone: an SA and a policy of an
    // address nothing sends to, the policy also only for marked packets.
    on_host(&format!(
        "{ip} xfrm state add src 10.99.0.1 dst 10.99.0.2 proto esp spi 0x5c5c reqid 7 \
         mode transport aead 'rfc4106(gcm(aes))' 0x{key} 64 && \
         {ip} xfrm policy add src 10.99.0.1/32 dst 10.99.0.2/32 dir out mark 0x77 \
         tmpl src 10.99.0.1 dst 10.99.0.2 proto esp reqid 7 mode transport",
        ip = testbed::vm::image::IPROUTE2_IP,
        key = "ab".repeat(20),
    ));
    let inv_path = std::env::temp_dir().join(format!("sktest-inventory-{name}.toml"));
    std::fs::write(&inv_path, &inv).unwrap();
    let t = Instant::now();
    let out = sk(&[
        "cluster",
        "up",
        "--name",
        &name,
        "--backend",
        "ssh",
        "--inventory",
        inv_path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&inv_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "ssh backend, 2 hosts (with upload): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let nodes = ok(&["--cluster", &name, "node", "ls"]);
    assert_eq!(nodes.matches("Ready").count(), 2, "{nodes}");
    let host = ok(&[
        "--cluster",
        &name,
        "node",
        "exec",
        "node1",
        "--",
        "hostname",
    ]);
    assert_eq!(host.trim(), "node1");

    // A routing-mesh port and a host-mode port on node1: the agent makes its tables in the
    // host's own namespace, named after the cluster, and turns the sysctls on.
    ok(&[
        "--cluster",
        &name,
        "service",
        "create",
        "--name",
        "web",
        "--constraint",
        "node.hostname==node1",
        "--publish",
        "8080:80",
        "--publish",
        "published=8081,target=80,mode=host",
        "whoami",
    ]);
    let ours = |tables: &str| {
        let mut t: Vec<String> = tables
            .lines()
            .filter(|l| l.contains(&format!("swarmkit_{name}_")))
            .map(|l| l.trim().to_string())
            .collect();
        t.sort();
        t
    };
    let made = eventually(
        "the cluster's tables on the host",
        Duration::from_secs(60),
        || {
            let t = ours(&on_host("nft list tables"));
            (t.len() == 2).then_some(t)
        },
    );
    assert_eq!(
        made,
        [
            format!("table ip swarmkit_{name}_hostports"),
            format!("table ip swarmkit_{name}_ingress"),
        ]
    );
    assert_eq!(
        on_host(sysctls).split_whitespace().collect::<Vec<_>>(),
        ["1", "1"]
    );

    // An encrypted network with a task on each host: the cluster's SAs and policies in the
    // host's namespace carry its reqid, the marking table its name.
    ok(&[
        "--cluster",
        &name,
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "sec",
    ]);
    for node in ["node1", "node2"] {
        ok(&[
            "--cluster",
            &name,
            "service",
            "create",
            "--name",
            &format!("sec-{node}"),
            "--network",
            "sec",
            "--constraint",
            &format!("node.hostname=={node}"),
            "whoami",
        ]);
    }
    let reqid = format!("reqid {} ", netcore::xfrm::shared_reqid(&name));
    let xfrm = |what: &str| on_host(&format!("{} xfrm {what}", testbed::vm::image::IPROUTE2_IP));
    let with_reqid = |listing: &str| listing.matches(&reqid).count();
    // Inbound and outbound SAs towards node2, and the outbound policy.
    eventually(
        "the cluster's SAs and policy on the host",
        Duration::from_secs(120),
        || (with_reqid(&xfrm("state")) >= 2 && with_reqid(&xfrm("policy")) >= 1).then_some(()),
    );
    let tables = ours(&on_host("nft list tables"));
    assert!(
        tables.contains(&format!("table ip swarmkit_{name}_ipsec")),
        "{tables:?}"
    );

    ok(&["cluster", "down", &name]);
    // Everything the agent changed in the host's namespace is undone.
    assert_eq!(ours(&on_host("nft list tables")), Vec::<String>::new());
    let (states, policies) = (xfrm("state"), xfrm("policy"));
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
        on_host(sysctls).split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "the sysctls the agent set were not restored"
    );
    // The hosts were cleaned over SSH: no agent, no namespaces of that cluster.
    let left = ok(&[
        "--cluster",
        &machines,
        "node",
        "exec",
        "node1",
        "--",
        "sh",
        "-c",
        &format!("ls /run/netns | grep -c '^sk-{name}\\.' ; ps | grep -c '[_]_agent'; true"),
    ]);
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "{left}"
    );
}

/// SWARMKIT_VM_IMAGE (a prebuilt image directory, what flake.nix hands over) is read: a
/// directory without a kernel is refused by name, and nothing of the cluster is left.
#[test]
fn a_prebuilt_image_directory_is_checked() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let name = format!("qimg{}", std::process::id() % 100000);
    let out = Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(testkit::bin().expect("checked by skip_reason"))
        .args([
            "cluster",
            "up",
            "--name",
            &name,
            "--backend",
            "qemu",
            "--nodes",
            "1",
        ])
        .env("SWARMKIT_VM_IMAGE", "/nonexistent-sk-image")
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
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let name = format!("qf{}", std::process::id() % 100000);
    let _down = testkit::Cluster::guard(&name);
    ok(&[
        "cluster",
        "up",
        "--name",
        &name,
        "--backend",
        "qemu",
        "--nodes",
        "2",
        "--lb",
        "ipvs",
    ]);
    let c = |args: &[&str]| {
        let mut all = vec!["--cluster", name.as_str()];
        all.extend_from_slice(args);
        ok(&all)
    };
    let inspect = c(&["node", "inspect", "node1"]);
    assert!(
        inspect.contains("\"swarmkit.lb-driver\": \"ipvs\""),
        "{inspect}"
    );

    c(&[
        "service", "create", "--name", "sleeper", "busybox", "sleep", "300",
    ]);
    let hostname = eventually("the task to run", Duration::from_secs(60), || {
        let out = sk(&["--cluster", &name, "exec", "sleeper.1", "--", "hostname"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert!(
        !hostname.is_empty() && !hostname.starts_with("node"),
        "{hostname:?}"
    );

    let ping = |from: &str, to: &str| {
        sk(&[
            "--cluster",
            &name,
            "node",
            "exec",
            from,
            "--",
            "ping",
            "-c1",
            "-W1",
            to,
        ])
        .status
        .success()
    };
    let manager = |from: &str| {
        sk(&[
            "--cluster",
            &name,
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
            "http://127.0.0.1:2377/_ping",
        ])
        .status
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

    let paths = ClusterPaths::new(&name);
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
