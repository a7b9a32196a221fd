//! The real Docker Swarm fixture: three dockerds in namespaces form a swarm, a dnsrr service
//! on an attachable overlay runs one task on each of two nodes, and one task fetches a page
//! from the other across the overlay; dropping the fixture leaves no namespace, process or
//! directory behind.

use std::time::{Duration, Instant};

use testkit::docker_swarm::{DockerSwarm, namespaces_of, processes_of, unavailable};

#[test]
fn a_real_swarm_carries_a_dnsrr_service_across_nodes_and_leaves_nothing_behind() {
    testkit::skip_unless!(unavailable());
    let start = Instant::now();
    let swarm = DockerSwarm::up("dsw", 3);
    eprintln!("3-node swarm up in {:.1?}", start.elapsed());
    let name = swarm.name().to_string();
    let dir = swarm.dir().to_path_buf();

    // Every dockerd runs in its node's namespace, none in the test's (the host's).
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    for n in swarm.nodes() {
        let net = std::fs::read_link(format!("/proc/{}/ns/net", n.dockerd_pid)).unwrap();
        assert_ne!(
            net, host_net,
            "{}'s dockerd runs in the host's namespace",
            n.netns
        );
    }
    let mut hostnames: Vec<String> = swarm
        .docker(0, &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
        .ok()
        .stdout
        .lines()
        .map(|l| l.trim_end_matches(" Ready").to_string())
        .collect();
    hostnames.sort();
    let mut want: Vec<String> = swarm.nodes().iter().map(|n| n.hostname.clone()).collect();
    want.sort();
    assert_eq!(hostnames, want, "docker node ls");

    swarm.web(2, &[]);

    // Both tasks running, on two nodes: (node index, container ID) of each.
    let tasks: Vec<(usize, String)> =
        testkit::eventually("both tasks of web running", Duration::from_secs(60), || {
            let found: Vec<(usize, String)> = (0..swarm.nodes().len())
                .flat_map(|i| {
                    let r = swarm.docker(
                        i,
                        &[
                            "ps",
                            "-q",
                            "--no-trunc",
                            "--filter",
                            "label=com.docker.swarm.service.name=web",
                            "--filter",
                            "status=running",
                        ],
                    );
                    r.stdout
                        .lines()
                        .map(|c| (i, c.to_string()))
                        .collect::<Vec<_>>()
                })
                .collect();
            (found.len() == 2).then_some(found)
        });
    assert_ne!(
        tasks[0].0, tasks[1].0,
        "the two tasks share a node: {tasks:?}"
    );
    let overlay_ip = |(node, id): &(usize, String)| {
        swarm
            .docker(
                *node,
                &[
                    "inspect",
                    "-f",
                    "{{(index .NetworkSettings.Networks \"ov\").IPAddress}}",
                    id,
                ],
            )
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let hostname = |(node, id): &(usize, String)| {
        swarm
            .docker(*node, &["exec", id, "hostname"])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let (a, b) = (&tasks[0], &tasks[1]);
    let b_ip = overlay_ip(b);
    let b_host = hostname(b);
    assert!(!b_ip.is_empty(), "{b:?} has no address on ov");
    let url = format!("http://{b_ip}/");
    let page = testkit::eventually(
        &format!("{a:?} fetching {url} across the overlay"),
        Duration::from_secs(30),
        || {
            // Debian 12's static busybox wget segfaults with -T: bounded by timeout instead.
            let r = swarm.docker(a.0, &["exec", &a.1, "timeout", "3", "wget", "-qO-", &url]);
            r.success().then_some(r.stdout)
        },
    );
    assert_eq!(page.trim(), format!("served-by-{b_host}"));
    // And by the service's name: dnsrr answers with the tasks' own addresses.
    let r = swarm
        .docker(a.0, &["exec", &a.1, "nslookup", "tasks.web"])
        .ok();
    assert!(r.stdout.contains(&b_ip), "tasks.web: {}", r.stdout);

    // The sandboxes are reachable from the host's mount namespace through the dockerd's root.
    let sandboxes = swarm.sandboxes(a.0);
    assert!(!sandboxes.is_empty(), "no sandbox on node {}", a.0);
    let a_ip = overlay_ip(a);
    let seen = sandboxes.iter().any(|sb| {
        let r = testkit::Run::from(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", sb.display()))
                .args(["ip", "-br", "addr"])
                .output()
                .unwrap(),
        );
        r.stdout.contains(&format!("{a_ip}/"))
    });
    assert!(seen, "no sandbox of {sandboxes:?} holds {a_ip}");

    let processes = swarm.processes();
    assert!(
        processes.len() >= 9,
        "dockerd, containerd, shims: {processes:?}"
    );
    let start = Instant::now();
    drop(swarm);
    eprintln!("torn down in {:.1?}", start.elapsed());
    assert_eq!(
        namespaces_of(&name),
        Vec::<String>::new(),
        "namespaces left"
    );
    assert_eq!(
        processes_of(&name, &dir),
        Vec::<u32>::new(),
        "processes left"
    );
    for pid in processes {
        assert!(!testkit::alive(pid as i32), "{pid} still runs");
    }
    assert!(!dir.exists(), "{} left", dir.display());
}
