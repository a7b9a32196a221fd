//! The embedded resolver answering real clients (dig, glibc via getent) inside namespaces.
//! Needs root; skipped otherwise.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use netcore::dns::{Answer, Resolver, View};
use netcore::netns::NetNs;
use testkit::netns::Namespaces;

/// A namespace with lo up and an /etc/netns/NAME/resolv.conf pointing at 127.0.0.11, both
/// removed on drop (the namespace by testkit's guard).
struct TestNs {
    ns: NetNs,
    etc: PathBuf,
    _guard: Namespaces,
}

impl TestNs {
    fn new(tag: &str) -> TestNs {
        let names = Namespaces::new(&format!("dns-{tag}"));
        let name = names.create("ns");
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = NetNs::open(&name).expect("open namespace");
        let guard = TestNs {
            ns,
            etc,
            _guard: names,
        };
        std::fs::create_dir_all(&guard.etc).expect("create /etc/netns dir");
        std::fs::write(
            guard.etc.join("resolv.conf"),
            "nameserver 127.0.0.11\noptions ndots:0 timeout:1 attempts:1\n",
        )
        .expect("write resolv.conf");
        guard
    }

    fn name(&self) -> &str {
        self.ns.name()
    }

    async fn exec(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).args(args);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), cmd.output())
            .await
            .expect("command timed out")
            .expect("run command");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn dig(&self, name: &str) -> Vec<String> {
        let out = self
            .exec(&["dig", "@127.0.0.11", "+short", "+tries=1", "+time=2", name])
            .await;
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn view(vip: Ipv4Addr, tasks: &[Ipv4Addr]) -> View {
    let names = HashMap::from([
        (
            "search".to_string(),
            Answer {
                ips: vec![vip],
                rotate: false,
            },
        ),
        (
            "tasks.search".to_string(),
            Answer {
                ips: tasks.to_vec(),
                rotate: true,
            },
        ),
    ]);
    View { names }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_resolve_per_scope() {
    testkit::require_root!();
    let a = TestNs::new("a");
    let b = TestNs::new("b");
    let resolver = Resolver::new();
    let tasks: Vec<Ipv4Addr> = (6..9).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    resolver.set_view("task-a", view(Ipv4Addr::new(10, 0, 0, 5), &tasks));
    resolver.set_view("task-b", view(Ipv4Addr::new(10, 0, 1, 5), &[]));
    let _serve_a = resolver
        .serve_in("task-a", &a.ns, vec![])
        .expect("serve in a");
    let serve_b = resolver
        .serve_in("task-b", &b.ns, vec![])
        .expect("serve in b");

    assert_eq!(a.dig("search").await, vec!["10.0.0.5"]);
    assert_eq!(a.dig("SEARCH.").await, vec!["10.0.0.5"]);
    assert_eq!(b.dig("search").await, vec!["10.0.1.5"]);

    let first = a.dig("tasks.search").await;
    let second = a.dig("tasks.search").await;
    assert_eq!(first.len(), 3, "all task IPs: {first:?}");
    let mut rotated = first.clone();
    rotated.rotate_left(1);
    assert_eq!(second, rotated, "tasks.search rotates per query");

    let nx = a
        .exec(&["dig", "@127.0.0.11", "+tries=1", "+time=2", "nosuch"])
        .await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let tcp = a
        .exec(&["dig", "@127.0.0.11", "+tcp", "+short", "+tries=1", "search"])
        .await;
    assert_eq!(tcp.trim(), "10.0.0.5");

    // glibc through /etc/resolv.conf, as a task's processes resolve.
    let hosts = a.exec(&["getent", "hosts", "search"]).await;
    assert!(hosts.starts_with("10.0.0.5"), "getent in a: {hosts:?}");
    let hosts = b.exec(&["getent", "hosts", "search"]).await;
    assert!(hosts.starts_with("10.0.1.5"), "getent in b: {hosts:?}");
    let hosts = b.exec(&["getent", "hosts", "nosuch"]).await;
    assert!(hosts.is_empty(), "unknown name: {hosts:?}");

    // Views change without re-serving; dropping the handle stops answers.
    resolver.set_view("task-b", view(Ipv4Addr::new(10, 0, 1, 9), &[]));
    assert_eq!(b.dig("search").await, vec!["10.0.1.9"]);
    drop(serve_b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = b.dig("search").await;
        if out.iter().all(|l| !l.starts_with("10.")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still served: {out:?}"
        );
    }
}

/// A real DNS server (dnsmasq) in a namespace of its own, reached from the task's namespace
/// over a veth: names the view does not hold are forwarded there over UDP and TCP, names it
/// holds are still answered here, and a dead upstream is SERVFAIL (not NXDOMAIN) in bounded
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_not_owned_are_forwarded_from_the_task_namespace() {
    testkit::require_root!();
    let task = TestNs::new("fwd");
    let up_names = Namespaces::new("dns-up");
    let upstream = NetNs::open(&up_names.create("up")).unwrap();
    netcore::underlay::link_pair(
        &upstream,
        "up0",
        "10.99.0.1/24".parse().unwrap(),
        &task.ns,
        "eth9",
        "10.99.0.2/24".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut dnsmasq = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            upstream.name(),
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args([
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args([
            "--listen-address=10.99.0.1",
            "--address=/db.outside.test/10.99.0.7",
        ])
        .args(["--pid-file="])
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base; scripts/setup installs it)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dnsmasq = Kill(&mut dnsmasq);
    let resolver = Resolver::new();
    resolver.set_view("t", view(Ipv4Addr::new(10, 0, 0, 5), &[]));
    let _serve = resolver
        .serve_in("t", &task.ns, vec!["10.99.0.1:53".parse().unwrap()])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while task.dig("db.outside.test").await != ["10.99.0.7"] {
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq never answered through the forwarder"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tcp = task
        .exec(&[
            "dig",
            "@127.0.0.11",
            "+tcp",
            "+short",
            "+tries=1",
            "db.outside.test",
        ])
        .await;
    assert_eq!(tcp.trim(), "10.99.0.7");
    assert_eq!(task.dig("search").await, ["10.0.0.5"], "an owned name");
    let hosts = task.exec(&["getent", "hosts", "db.outside.test"]).await;
    assert!(hosts.starts_with("10.99.0.7"), "{hosts:?}");

    // dig waits 4 s: the forwarder gives up on a dead upstream sooner, and says so.
    drop(dnsmasq);
    let out = task
        .exec(&[
            "dig",
            "@127.0.0.11",
            "+tries=1",
            "+time=4",
            "db.outside.test",
        ])
        .await;
    assert!(out.contains("status: SERVFAIL"), "{out}");
}
