//! A task's options, given with the stock docker CLI: each one swarmkit honours is seen from
//! inside the running task, and each one it does not is refused by name with nothing created
//! (docker Swarm would accept and ignore them).

mod common;

use std::time::Duration;

use common::Cluster;

fn docker(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let r = c.docker(args);
    (r.code, r.stdout, r.stderr)
}

/// A field of /proc/PID/status, e.g. "Uid".
fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn hostname_user_workdir_and_sysctls_reach_the_task() {
    require_root!();
    let c = Cluster::up("opts", 2);
    let (code, _, err) = docker(
        &c,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--replicas",
            "2",
            "--hostname",
            "{{.Service.Name}}-{{.Task.Slot}}",
            "--user",
            "nobody",
            "--workdir",
            "/tmp",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--host",
            "db:10.0.9.20",
            "--dns-search",
            "example.internal",
            "--dns-option",
            "timeout:2",
            "--read-only",
            "-p",
            "8080:80",
            "whoami",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for slot in [1u64, 2] {
        let pid = c.task_pid("app", slot);
        // The task's own process: its uid and gid, its working directory.
        assert_eq!(
            status_field(pid, "Uid"),
            "65534",
            "slot {slot} runs as nobody"
        );
        assert_eq!(status_field(pid, "Gid"), "65534");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
            std::path::Path::new("/tmp")
        );
        // Its UTS and network namespaces, as a shell in them sees them.
        let task = format!("app.{slot}");
        let r = c.task(
            &task,
            "hostname; cat /proc/sys/net/ipv4/ip_forward; grep -w db /etc/hosts",
        );
        assert_eq!(
            r.stdout,
            format!("app-{slot}\n1\n10.0.9.20\tdb\n"),
            "{}",
            r.stderr
        );
        let r = c.task(&task, "grep -E '^(search|options)' /etc/resolv.conf");
        assert_eq!(
            r.stdout, "search example.internal\noptions ndots:0 timeout:2\n",
            "{}",
            r.stderr
        );
        // Its root is read-only in its own mount namespace, the node's stays writable.
        let probe = format!("/sk-ro-{}-{slot}", c.name);
        let r = c.task(&task, &format!("touch {probe} 2>&1; echo rc=$?"));
        assert!(r.stdout.contains("Read-only file system"), "{}", r.stdout);
        assert!(!std::path::Path::new(&probe).exists());
    }
    // A task that is not root still serves on port 80 (docker's unprivileged port start),
    // and answers through the mesh with its templated hostname.
    let body = common::eventually("the mesh to answer", Duration::from_secs(20), || {
        c.curl("node1", "http://localhost:8080")
    });
    assert!(body.contains("Hostname: app-"), "{body}");
}

/// `--stop-signal`: the task is asked to stop with that signal, not SIGTERM.
#[test]
fn a_task_is_stopped_with_its_stop_signal() {
    require_root!();
    let c = Cluster::up("optsig", 1);
    let marker = std::env::temp_dir().join(format!("{}-stopped", c.name));
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "trap 'echo USR1 > {m}; exit 0' USR1; trap 'echo TERM > {m}; exit 0' TERM; \
         while true; do sleep 0.1; done",
        m = marker.display()
    );
    let (code, _, err) = docker(
        &c,
        &[
            "service",
            "create",
            "--name",
            "sig",
            "--stop-signal",
            "SIGUSR1",
            "whoami",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = docker(&c, &["service", "scale", "sig=0"]);
    assert_eq!(code, 0, "{err}");
    let got = common::eventually(
        "the task to record its stop signal",
        Duration::from_secs(20),
        || std::fs::read_to_string(&marker).ok(),
    );
    let _ = std::fs::remove_file(&marker);
    assert_eq!(got.trim(), "USR1");
}

#[test]
fn options_swarmkit_does_not_do_are_refused_by_name_and_create_nothing() {
    require_root!();
    let c = Cluster::up("optsno", 1);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--mount", "type=volume,source=v,target=/data"],
            "--mount needs an image from a registry",
        ),
        (
            &["--mount", "type=bind,source=rel/path,target=/data"],
            "needs an absolute node path",
        ),
        (
            &["--mount", "type=volume,source=v,target=data"],
            "give an absolute path inside the container",
        ),
        (
            &["--health-cmd", "true", "--health-interval", "1us"],
            "invalid healthcheck",
        ),
        (&["--ulimit", "nofile=10:10"], "--ulimit"),
        (&["--tty"], "--tty"),
        (&["--limit-memory", "1m"], "invalid --limit-memory"),
        (
            &["--cap-add", "NET_FLY"],
            "invalid --cap-add \"CAP_NET_FLY\"",
        ),
        (&["--group", "a b"], "invalid --group"),
        (&["--stop-signal", "SIGNOPE"], "invalid --stop-signal"),
        (&["--dns", "fe80::1"], "invalid --dns"),
        (
            &["--dns-option", "a b"],
            "invalid --dns-search or --dns-option",
        ),
        (&["--sysctl", "kernel.shmmax=1"], "only network sysctls"),
        (&["--user", "a b"], "invalid --user"),
        (&["--hostname", "not a host"], "invalid --hostname"),
    ];
    for (options, named) in cases {
        let mut args = vec!["service", "create", "--detach", "--name", "x"];
        args.extend_from_slice(options);
        args.push("whoami");
        let (code, _, err) = docker(&c, &args);
        assert_ne!(code, 0, "{options:?} was accepted");
        assert!(err.contains(named), "{options:?}: {err}");
    }
    let (_, out, _) = docker(&c, &["service", "ls", "-q"]);
    assert_eq!(out.trim(), "", "a refused service was created");
    // The same through an update: refused, the service as it was.
    let (code, _, err) = docker(
        &c,
        &["service", "create", "--detach", "--name", "y", "whoami"],
    );
    assert_eq!(code, 0, "{err}");
    let before = c.api("/services/y")["Version"]["Index"].clone();
    let (code, _, err) = docker(
        &c,
        &["service", "update", "--ulimit-add", "nofile=10:10", "y"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--ulimit"), "{err}");
    assert_eq!(c.api("/services/y")["Version"]["Index"], before);
}
