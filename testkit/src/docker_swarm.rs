//! A real Docker Swarm (Debian's `docker.io`, dockerd 20.10) to compare swarmkit against: one
//! dockerd per network namespace, on an underlay bridge in a namespace of its own, all named
//! after the fixture and all removed when the guard drops (at the end of the test, or while a
//! failed assertion unwinds). Nothing runs in, or changes, the host's own network namespace.
//!
//! Layout for a fixture named `NAME` ([`unique_name`](crate::unique_name) of the tag):
//! - namespaces `NAME-ul` (the bridge `br0`), `NAME-n1`, `NAME-n2`, ... (each with `eth0`, a
//!   veth to the bridge, [`UNDERLAY`]`.(10+i)/24`, MTU 1500);
//! - each dockerd runs under `ip netns exec NAME-nI unshare --uts`, with hostname `NAME-nI`,
//!   the host's cgroup hierarchies remounted (`ip netns exec` mounts a fresh sysfs, which
//!   hides them), a tmpfs on each of `/run/containerd`, `/run/docker` and `/var/lib/docker`
//!   (which the shims, dockerd and libnetwork write to whatever their roots),
//!   its own `--data-root`, `--exec-root`, `--pidfile`, socket and trust key under
//!   `$TMPDIR/NAME-dockerswarm/nI/`, and `--cgroup-parent /NAME-nI`; dockerd starts its own
//!   containerd;
//! - node 0 is the manager (`swarm init`), the others join as workers;
//! - one image, made with `docker import` from busybox-static and carried to the other nodes
//!   with `docker save` / `docker load` (no registry is reachable), referenced by its ID.
//!
//! Each dockerd mounts its sandboxes' namespaces inside its own mount namespace, at
//! `EXEC_ROOT/netns/<sandbox>`: from the host's mount namespace they are reached through the
//! dockerd's root, `/proc/<dockerd pid>/root/EXEC_ROOT/netns/<sandbox>` ([`DockerSwarm::sandboxes`]),
//! e.g. with `nsenter --net=<that path>`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Run;

/// The underlay's first three octets: node `i` is `UNDERLAY.(10+i)/24`. The underlay lives in
/// namespaces of its own, so it cannot collide with the host's networks; it stays clear of
/// docker's own pools (172.17/16 and up, 10.0.0.0/8 in /24s from 10.0.0.0) all the same.
pub const UNDERLAY: &str = "10.231.7";

/// Where dockerd, containerd or the shims write whatever their roots are: a tmpfs over each,
/// inside each node.
const PRIVATE_DIRS: [&str; 3] = ["/run/containerd", "/run/docker", "/var/lib/docker"];

/// How long one docker command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a real Docker Swarm cannot be brought up here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::needs_root() {
        return Some(why);
    }
    if let Some(why) = crate::needs_tools(&[
        (&["/usr/sbin/dockerd", "/usr/bin/dockerd"], "docker.io"),
        (&["/usr/bin/containerd"], "containerd"),
        (
            &["/usr/bin/containerd-shim-runc-v2"],
            "containerd (containerd-shim-runc-v2)",
        ),
        (&["/usr/bin/docker", "/usr/local/bin/docker"], "docker.io"),
        (&["/usr/bin/unshare"], "util-linux"),
        (&["/usr/bin/nsenter"], "util-linux"),
        (&["/usr/bin/timeout"], "coreutils"),
        (&["/usr/bin/ip", "/sbin/ip", "/bin/ip"], "iproute2"),
    ]) {
        return Some(why);
    }
    match busybox() {
        Some(_) => None,
        None => Some("no static busybox for the image (apt-get install busybox-static)".into()),
    }
}

/// A statically linked busybox (busybox-static's `/bin/busybox`): the one binary of the image.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::read(p).is_ok_and(|elf| is_static_elf(&elf)))
}

/// Whether `elf` is a 64-bit ELF executable with no program interpreter (no PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != 3)
    })
}

/// The docker CLI: docker.io's own (the daemon's version), else whichever is on the PATH.
fn docker_cli() -> PathBuf {
    crate::find_tool(&["/usr/bin/docker"]).unwrap_or_else(|| PathBuf::from("docker"))
}

/// One dockerd of the swarm.
#[derive(Clone, Debug)]
pub struct SwarmNode {
    /// Its network namespace, `NAME-nI`.
    pub netns: String,
    /// Its hostname (its own UTS namespace), as `docker node ls` shows it: `NAME-nI`.
    pub hostname: String,
    /// Its underlay IPv4 address, without the prefix.
    pub addr: String,
    /// The dockerd's unix socket.
    pub socket: PathBuf,
    pub dockerd_pid: u32,
    /// The dockerd's `--exec-root`: sandboxes' namespaces are mounted under `netns/` there,
    /// in the dockerd's mount namespace only.
    pub exec_root: PathBuf,
}

/// A real Docker Swarm of dockerds in namespaces; dropping it removes every trace.
pub struct DockerSwarm {
    name: String,
    dir: PathBuf,
    nodes: Vec<SwarmNode>,
    image: String,
    /// The `ip netns exec … dockerd` processes, reaped on drop.
    children: Vec<Child>,
}

impl DockerSwarm {
    /// A swarm of `nodes` dockerds named after [`unique_name`](crate::unique_name)`(tag)`:
    /// node 0 the manager, the others workers, all Ready, the image loaded on each. Fails the
    /// test if it cannot; the guard exists from the start, so a half-built swarm is removed.
    /// Swarms up at once in one process need tags of their own (whatever an earlier process
    /// of the same pid left under the name is removed first). Takes 2-4 s for 3 nodes here.
    pub fn up(tag: &str, nodes: usize) -> DockerSwarm {
        assert!((1..=200).contains(&nodes), "1 to 200 nodes, not {nodes}");
        let name = crate::unique_name(tag);
        let dir = std::env::temp_dir().join(format!("{name}-dockerswarm"));
        let mut swarm = DockerSwarm {
            name,
            dir,
            nodes: Vec::new(),
            image: String::new(),
            children: Vec::new(),
        };
        // Leftovers of an earlier process with the same pid and tag.
        swarm.teardown();
        std::fs::create_dir_all(&swarm.dir).expect("the fixture's directory");
        swarm.underlay(nodes);
        swarm.start_daemons(nodes);
        swarm.form_swarm();
        swarm
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fixture's directory (`$TMPDIR/NAME-dockerswarm`): each node's data and exec roots,
    /// socket, daemon.json and dockerd.log under `nI/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn nodes(&self) -> &[SwarmNode] {
        &self.nodes
    }

    /// The ID (`sha256:…`) of the busybox-static image loaded on every node: every busybox
    /// applet (httpd, nc, ping, wget, nslookup, sleep, ...) is in `/bin`; there is no default
    /// command. Give it as a service's image with `--no-resolve-image` (the node then takes
    /// it by ID and pulls nothing). Debian 12's static busybox `wget -T` segfaults: bound a
    /// wget with `timeout N wget ...` instead.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// `unix://SOCKET` of the manager (node 0), for `DOCKER_HOST` or `-H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.nodes[0].socket.display())
    }

    /// The docker CLI against node `node`'s dockerd, bounded by a timeout.
    pub fn docker(&self, node: usize, args: &[&str]) -> Run {
        docker_at(&self.nodes[node].socket, args)
    }

    /// `argv` in node `node`'s network namespace (`ip netns exec`), bounded by a timeout.
    pub fn in_node(&self, node: usize, argv: &[&str]) -> Run {
        let mut all = vec!["ip", "netns", "exec", self.nodes[node].netns.as_str()];
        all.extend_from_slice(argv);
        run(&all)
    }

    /// `argv` in node `node`'s dockerd's network, mount and UTS namespaces (`nsenter -t PID
    /// -n -m -u`): where its sandboxes' namespace mounts and its cgroups are visible.
    pub fn in_dockerd(&self, node: usize, argv: &[&str]) -> Run {
        let pid = self.nodes[node].dockerd_pid.to_string();
        let mut all = vec!["nsenter", "-t", pid.as_str(), "-n", "-m", "-u", "--"];
        all.extend_from_slice(argv);
        run(&all)
    }

    /// The sandbox namespaces of node `node`'s dockerd (containers' and the overlays' own,
    /// `1-<network id prefix>`), as paths that work from the host's mount namespace:
    /// `/proc/<dockerd pid>/root/<exec-root>/netns/<sandbox>`, for `nsenter --net=<path>`.
    pub fn sandboxes(&self, node: usize) -> Vec<PathBuf> {
        let n = &self.nodes[node];
        let dir = PathBuf::from(format!("/proc/{}/root", n.dockerd_pid))
            .join(n.exec_root.strip_prefix("/").unwrap_or(&n.exec_root))
            .join("netns");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    /// The namespaces of the fixture: `NAME-ul`, `NAME-n1`, ...: what exists now of them.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_of(&self.name)
    }

    /// The processes of the fixture that run now (see [`processes_of`]).
    pub fn processes(&self) -> Vec<u32> {
        processes_of(&self.name, &self.dir)
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    /// The bridge in `NAME-ul` and a veth from it into each node's namespace.
    fn underlay(&mut self, nodes: usize) {
        let ul = self.ns("ul");
        ip(&["netns", "add", &ul]);
        ip(&["-n", &ul, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &ul, "link", "add", "br0", "mtu", "1500", "type", "bridge",
        ]);
        ip(&["-n", &ul, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = self.ns(&format!("n{}", i + 1));
            let port = format!("n{}", i + 1);
            let addr = format!("{UNDERLAY}.{}", 10 + i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &ul, "link", "add", &port, "mtu", "1500", "type", "veth", "peer", "name",
                "eth0", "mtu", "1500", "netns", &ns,
            ]);
            ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            let node_dir = self.dir.join(format!("n{}", i + 1));
            self.nodes.push(SwarmNode {
                hostname: ns.clone(),
                netns: ns,
                addr,
                socket: node_dir.join("docker.sock"),
                dockerd_pid: 0,
                exec_root: node_dir.join("exec"),
            });
        }
    }

    /// Starts every dockerd at once and waits until each answers `/_ping`.
    fn start_daemons(&mut self, nodes: usize) {
        // Some paths are fixed whatever the daemons' roots: the shims' sockets go to
        // /run/containerd/s, dockerd makes /run/docker/plugins, and libnetwork writes its load
        // balancers' hosts and resolv.conf under /var/lib/docker/network/files. A tmpfs over
        // each, inside each node, keeps them off the host (which keeps only the empty
        // directories, made here if missing, as mount points).
        for d in PRIVATE_DIRS {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        let private: String = PRIVATE_DIRS
            .iter()
            .map(|d| format!("mount -t tmpfs -o mode=0711 private {d}\n"))
            .collect();
        let cgroups = cgroup_mounts();
        for i in 0..nodes {
            let node_dir = self.dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node_dir).expect("a node's directory");
            let n = &self.nodes[i];
            let d = node_dir.display();
            // The trust key would go to /etc/docker/key.json, on the host; only the config
            // file moves it.
            let config = format!(r#"{{"deprecated-key-path": "{d}/key.json"}}"#);
            std::fs::write(node_dir.join("daemon.json"), config).expect("daemon.json");
            let script = format!(
                "set -e\n\
                 hostname {host}\n\
                 {cgroups}\
                 {private}\
                 exec dockerd --data-root {d}/data --exec-root {exec} --pidfile {d}/dockerd.pid \
                 -H unix://{sock} --config-file {d}/daemon.json --cgroup-parent /{host} \
                 --log-level info\n",
                host = n.hostname,
                exec = n.exec_root.display(),
                sock = n.socket.display(),
            );
            let log = std::fs::File::create(node_dir.join("dockerd.log")).expect("dockerd.log");
            let child = Command::new("ip")
                .args([
                    "netns", "exec", &n.netns, "unshare", "--uts", "sh", "-c", &script,
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dockerd.log"))
                .stderr(log)
                .spawn()
                .expect("starting dockerd");
            self.nodes[i].dockerd_pid = child.id();
            self.children.push(child);
        }
        for i in 0..nodes {
            let socket = self.nodes[i].socket.clone();
            let pid_file = self.dir.join(format!("n{}/dockerd.pid", i + 1));
            let ready = crate::eventually(
                &format!("dockerd of {} to answer /_ping", self.nodes[i].netns),
                Duration::from_secs(60),
                || {
                    if let Ok(Some(status)) = self.children[i].try_wait() {
                        return Some(Err(status));
                    }
                    ping(&socket).then_some(Ok(()))
                },
            );
            if let Err(status) = ready {
                panic!(
                    "dockerd of {} exited ({status}):\n{}",
                    self.nodes[i].netns,
                    tail(&self.dir.join(format!("n{}/dockerd.log", i + 1)), 30)
                );
            }
            let pid = std::fs::read_to_string(&pid_file).expect("dockerd's pid file");
            self.nodes[i].dockerd_pid = pid.trim().parse().expect("a pid");
        }
    }

    /// `swarm init` on node 0, the image made there and carried to the others, the others
    /// joined as workers; waits until the manager lists every node Ready.
    fn form_swarm(&mut self) {
        let manager = &self.nodes[0];
        docker_at(
            &manager.socket,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                &manager.addr,
                "--listen-addr",
                &format!("{}:2377", manager.addr),
            ],
        )
        .ok();
        let token = docker_at(&manager.socket, &["swarm", "join-token", "-q", "worker"])
            .ok()
            .stdout
            .trim()
            .to_string();
        let join_to = format!("{}:2377", manager.addr);
        let image = std::thread::scope(|s| {
            let joins: Vec<_> = self.nodes[1..]
                .iter()
                .map(|n| {
                    let (token, join_to) = (&token, &join_to);
                    s.spawn(move || {
                        docker_at(
                            &n.socket,
                            &[
                                "swarm",
                                "join",
                                "--token",
                                token,
                                "--advertise-addr",
                                &n.addr,
                                "--listen-addr",
                                &format!("{}:2377", n.addr),
                                join_to,
                            ],
                        )
                    })
                })
                .collect();
            let image = self.make_image();
            for (n, j) in self.nodes[1..].iter().zip(joins) {
                let r = j.join().expect("a join thread");
                assert!(r.success(), "{} joining: {}", n.netns, r.text());
            }
            image
        });
        self.image = image;
        let want = self.nodes.len();
        let manager = self.nodes[0].socket.clone();
        crate::eventually_true(
            &format!("{want} Ready nodes in docker node ls"),
            Duration::from_secs(60),
            || {
                let r = docker_at(&manager, &["node", "ls", "--format", "{{.Status}}"]);
                r.success() && r.stdout.lines().filter(|l| l.trim() == "Ready").count() == want
            },
        );
    }

    /// The busybox-static image: imported on node 0, saved, and loaded on the others at once.
    fn make_image(&self) -> String {
        let rootfs = rootfs_tar();
        let mut import = Command::new("timeout")
            .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
            .arg(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.nodes[0].socket.display()))
            .args(["import", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker import");
        import
            .stdin
            .take()
            .expect("stdin")
            .write_all(&rootfs)
            .expect("feeding docker import");
        let r = Run::from(import.wait_with_output().expect("docker import")).ok();
        let id = r.stdout.trim().to_string();
        assert!(id.starts_with("sha256:"), "docker import said {id:?}");
        if self.nodes.len() > 1 {
            let saved = self.dir.join("image.tar");
            let saved_s = saved.to_str().expect("a UTF-8 path");
            docker_at(&self.nodes[0].socket, &["save", "-o", saved_s, &id]).ok();
            std::thread::scope(|s| {
                for n in &self.nodes[1..] {
                    s.spawn(|| docker_at(&n.socket, &["load", "-q", "-i", saved_s]).ok());
                }
            });
            let _ = std::fs::remove_file(&saved);
        }
        id
    }

    /// Everything of the fixture, whatever state it is in: its processes killed (containers
    /// first, then each dockerd asked to stop, then whatever is left), mounts under its
    /// directory detached, its namespaces, cgroups and directory removed.
    fn teardown(&mut self) {
        // Containers first (their cgroups are under /NAME-nI): their shims reap them, and the
        // dockerds then stop without waiting out each container's stop timeout.
        kill_all(
            &cgroup_members(&self.name),
            nix::sys::signal::Signal::SIGKILL,
        );
        let dockerds: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| n.dockerd_pid)
            .filter(|p| *p != 0)
            .collect();
        kill_all(&dockerds, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            self.reap();
            if dockerds.iter().all(|p| !crate::alive(*p as i32)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left (a dockerd that did not stop, containerd, shims, a container the
        // swarm restarted meanwhile): SIGKILL until none is left.
        let start = Instant::now();
        loop {
            self.reap();
            let left = processes_of(&self.name, &self.dir);
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                eprintln!("docker swarm {}: processes left: {left:?}", self.name);
                break;
            }
            kill_all(&left, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reap();
        self.children.clear();
        // Nothing of the nodes' mount namespaces reaches the host's (ip netns exec makes
        // them slaves); detach anything that did all the same.
        for mnt in mounts_under(&self.dir).into_iter().rev() {
            let _ = nix::mount::umount2(mnt.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for ns in namespaces_of(&self.name) {
            let r = run(&["ip", "netns", "delete", &ns]);
            if !r.success() {
                eprintln!("ip netns delete {ns}: {}", r.stderr.trim());
            }
        }
        remove_cgroups(&self.name);
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }

    fn reap(&mut self) {
        for c in &mut self.children {
            let _ = c.try_wait();
        }
    }

    /// The last lines of each dockerd's log, for a failed test.
    fn print_logs(&self) {
        for i in 0..self.nodes.len() {
            let log = self.dir.join(format!("n{}/dockerd.log", i + 1));
            eprintln!("--- {} (last 30 lines)", log.display());
            eprintln!("{}", tail(&log, 30));
        }
    }
}

impl Drop for DockerSwarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.teardown();
    }
}

/// The namespaces of fixture `name` that exist now: `NAME-ul` and `NAME-n<digits>`, sorted.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut found: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_ours(name, n))
        .collect();
    found.sort();
    found
}

/// Whether `ns` is one of fixture `name`'s names: `NAME-ul` or `NAME-n<digits>`.
fn is_ours(name: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    rest == "ul"
        || rest
            .strip_prefix('n')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The processes of fixture `name` (directory `dir`) that run now: every process in one of
/// its network namespaces (dockerd, containerd, shims), in one of its cgroups (containers),
/// or whose command line names its directory.
pub fn processes_of(name: &str, dir: &Path) -> Vec<u32> {
    let netns: Vec<String> = namespaces_of(name)
        .iter()
        .filter_map(|ns| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(format!("/run/netns/{ns}")).ok()?;
            Some(format!("net:[{}]", m.ino()))
        })
        .collect();
    let dir = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| pid != me && crate::alive(pid as i32))
        .filter(|&pid| {
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            netns.contains(&net) || cmdline.contains(&dir) || in_cgroups_of(name, pid)
        })
        .collect();
    found.sort();
    found
}

/// The processes in fixture `name`'s cgroups (`/NAME-nI/...`): its containers.
fn cgroup_members(name: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| in_cgroups_of(name, pid))
        .collect()
}

fn in_cgroups_of(name: &str, pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
        c.lines().any(|l| {
            l.splitn(3, ':')
                .nth(2)
                .and_then(|path| path.strip_prefix('/'))
                .is_some_and(|p| is_ours(name, p.split('/').next().unwrap_or("")))
        })
    })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_all(pids: &[u32], signal: nix::sys::signal::Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// Removes the cgroups `/NAME-nI` (and what dockerd made under them) from every hierarchy.
fn remove_cgroups(name: &str) {
    fn remove(dir: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                remove(&e.path())?;
            }
        }
        std::fs::remove_dir(dir)
    }
    let mut roots: Vec<PathBuf> = cgroup_mounts_raw()
        .into_iter()
        .map(|m| PathBuf::from(m.mountpoint))
        .collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let ours = e.file_name().to_str().is_some_and(|n| is_ours(name, n));
            if !ours {
                continue;
            }
            // A cgroup is busy for a moment after its last task exits.
            let start = Instant::now();
            while let Err(err) = remove(&e.path()) {
                if start.elapsed() > Duration::from_secs(5) {
                    eprintln!("removing cgroup {}: {err}", e.path().display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One cgroup filesystem the host mounts under /sys/fs/cgroup.
struct CgroupMount {
    mountpoint: String,
    fstype: String,
    options: String,
}

/// The host's cgroup mounts (v1 hierarchies, the v2 one, and the tmpfs that holds them), in
/// mount order, from /proc/self/mountinfo.
fn cgroup_mounts_raw() -> Vec<CgroupMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split(' ').nth(4)?.to_string();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let options = post.nth(1).unwrap_or("").to_string();
            let under = mountpoint == "/sys/fs/cgroup" || mountpoint.starts_with("/sys/fs/cgroup/");
            (under && ["tmpfs", "cgroup", "cgroup2"].contains(&fstype.as_str())).then_some(
                CgroupMount {
                    mountpoint,
                    fstype,
                    options,
                },
            )
        })
        .filter(|m| m.fstype != "tmpfs" || m.mountpoint == "/sys/fs/cgroup")
        .collect()
}

/// Shell lines that mount the host's cgroup hierarchies again inside a node (whose fresh
/// sysfs hides them), v1 hierarchies by their controllers and name.
fn cgroup_mounts() -> String {
    let mut script = String::new();
    for m in cgroup_mounts_raw() {
        let line = match m.fstype.as_str() {
            "tmpfs" => format!("mount -t tmpfs -o mode=0755 cgroup {}\n", m.mountpoint),
            "cgroup2" => format!("mount -t cgroup2 cgroup2 {}\n", m.mountpoint),
            _ => {
                let opts: Vec<&str> = m
                    .options
                    .split(',')
                    .filter(|o| !["rw", "ro"].contains(o) && !o.starts_with("release_agent="))
                    .collect();
                let named_only = opts.iter().all(|o| o.starts_with("name="));
                let opts = if named_only {
                    format!("none,{}", opts.join(","))
                } else {
                    opts.join(",")
                };
                format!("mount -t cgroup -o {opts} cgroup {}\n", m.mountpoint)
            }
        };
        if m.mountpoint != "/sys/fs/cgroup" {
            script.push_str(&format!("mkdir -p {}\n", m.mountpoint));
        }
        script.push_str(&line);
    }
    script
}

/// Mount points in the host's mount namespace under `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(dir.as_ref()))
        .collect()
}

/// A tar of the image's root: busybox-static at /bin/busybox, a link to it for every applet,
/// and the usual empty directories.
fn rootfs_tar() -> Vec<u8> {
    let busybox = busybox().expect("a static busybox (check unavailable() first)");
    let applets = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty())
            .expect("a directory");
    };
    for d in [
        "bin", "dev", "etc", "proc", "sys", "root", "var", "www", "usr", "usr/bin", "sbin",
    ] {
        dir(&mut tar, d, 0o755);
    }
    dir(&mut tar, "tmp", 0o1777);
    tar.append_path_with_name(&busybox, "bin/busybox")
        .expect("busybox into the image");
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("an applet link");
    }
    let mut files = |path: &str, body: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        tar.append_data(&mut h, path, body.as_bytes())
            .expect("a file");
    };
    files("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    files("etc/group", "root:x:0:\n");
    tar.into_inner().expect("the image's tar")
}

/// The docker CLI against `socket`, bounded by [`COMMAND_TIMEOUT`].
fn docker_at(socket: &Path, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
        .arg(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the docker CLI");
    Run::from(out)
}

/// `argv` bounded by [`COMMAND_TIMEOUT`].
fn run(argv: &[&str]) -> Run {
    let out = Command::new("timeout")
        .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", argv.join(" ")));
    Run::from(out)
}

/// Runs `ip ARGS`, failing the test with its stderr unless it succeeds.
fn ip(args: &[&str]) {
    let r = run(&[&["ip"], args].concat());
    assert!(r.success(), "ip {}: {}", args.join(" "), r.stderr.trim());
}

/// Whether the dockerd at `socket` answers `GET /_ping` with OK.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_owns_exactly_its_names() {
        assert!(is_ours("t1-sw", "t1-sw-ul"));
        assert!(is_ours("t1-sw", "t1-sw-n1"));
        assert!(is_ours("t1-sw", "t1-sw-n12"));
        assert!(!is_ours("t1-sw", "t1-sw-n"));
        assert!(!is_ours("t1-sw", "t1-sw-x-n1"));
        assert!(!is_ours("t1-sw", "t1-sw2-n1"));
        assert!(!is_ours("t1-sw", "t1-sw"));
    }

    #[test]
    fn a_static_busybox_has_no_interpreter() {
        if let Some(bb) = busybox() {
            assert!(is_static_elf(&std::fs::read(bb).unwrap()));
        }
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh), "/bin/sh is dynamically linked");
    }
}
