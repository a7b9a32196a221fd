//! A real Docker Swarm (Debian's `docker.io`, dockerd 20.10) to compare swarmkit against, owned
//! by one test: a [`testbed::docker_lab`] lab (dockerds in namespaces, on an underlay bridge in
//! a namespace of its own; see there for the layout) named after the test process and tag,
//! removed when the guard drops (at the end of the test, or while a failed assertion
//! unwinds). Nothing runs in, or changes, the host's own network namespace.
//!
//! Each dockerd mounts its sandboxes' namespaces inside its own mount namespace: from the
//! host's they are reached through the dockerd's root ([`DockerSwarm::sandboxes`]), e.g. with
//! `nsenter --net=<that path>`.

use std::path::{Path, PathBuf};

use testbed::docker_lab::{self, Lab};

use crate::Run;

pub use testbed::docker_lab::{Options, UNDERLAY, namespaces_of, processes_of};

/// One dockerd of the swarm: its namespace, hostname (`NAME-nI`), underlay address, socket,
/// pid and exec root.
pub type SwarmNode = docker_lab::LabNode;

/// Why a real Docker Swarm cannot be brought up here, if it cannot.
pub fn unavailable() -> Option<String> {
    docker_lab::unavailable()
}

/// Why a swarm's nodes cannot run SSH servers here (no dropbear), if they cannot.
pub fn ssh_unavailable() -> Option<String> {
    testbed::docker_lab::access::ssh_unavailable()
}

/// A real Docker Swarm of dockerds in namespaces; dropping it removes every trace.
pub struct DockerSwarm {
    lab: Lab,
}

impl DockerSwarm {
    /// A swarm of `nodes` dockerds named after [`unique_name`](crate::unique_name)`(tag)`:
    /// node 0 the manager, the others workers, all Ready, the image loaded on each. Fails the
    /// test if it cannot (a half-built swarm is removed first). Swarms up at once in one
    /// process need tags of their own (whatever an earlier process of the same pid left under
    /// the name is removed first). Takes 2-4 s for 3 nodes here.
    pub fn up(tag: &str, nodes: usize) -> DockerSwarm {
        DockerSwarm::up_with(tag, nodes, &docker_lab::Options::default())
    }

    /// [`DockerSwarm::up`], with what `options` ask for besides: the Engine API over TLS on
    /// each node ([`DockerSwarm::tcp_host`], [`DockerSwarm::tls_dir`]), an SSH server on each
    /// ([`DockerSwarm::inventory`]; see [`ssh_unavailable`] first).
    pub fn up_with(tag: &str, nodes: usize, options: &docker_lab::Options) -> DockerSwarm {
        let name = crate::unique_name(tag);
        // Leftovers of an earlier process with the same pid and tag.
        if let Err(e) = docker_lab::down(&name) {
            panic!("{e}");
        }
        match docker_lab::up_with(&name, nodes, options) {
            Ok(lab) => DockerSwarm { lab },
            Err(e) => panic!("{e}"),
        }
    }

    pub fn name(&self) -> &str {
        &self.lab.name
    }

    /// The lab's directory (`/run/swarm-labs/NAME`): its record, and each node's data
    /// and exec roots, socket, daemon.json and dockerd.log under `nI/`.
    pub fn dir(&self) -> &Path {
        &self.lab.dir
    }

    pub fn nodes(&self) -> &[SwarmNode] {
        &self.lab.nodes
    }

    /// The lab underneath, for what the guard does not wrap.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The ID (`sha256:…`) of the busybox-static image loaded on every node (also tagged
    /// `busybox:lab` there): every busybox applet (httpd, nc, ping, wget, nslookup, sleep,
    /// ...) is in `/bin`; there is no default command. Give it as a service's image with
    /// `--no-resolve-image` (the node then takes it by ID and pulls nothing). Debian 12's
    /// static busybox `wget -T` segfaults: bound a wget with `timeout N wget ...` instead.
    pub fn image(&self) -> &str {
        &self.lab.image
    }

    /// `unix://SOCKET` of the manager (node 0), for `DOCKER_HOST` or `-H`.
    pub fn host(&self) -> String {
        self.lab.host()
    }

    /// With TLS: `tcp://ADDR:2376` of node `node`, reachable from inside the swarm's
    /// namespaces only.
    pub fn tcp_host(&self, node: usize) -> Option<String> {
        self.lab.tcp_host(node)
    }

    /// With TLS: the client's `DOCKER_CERT_PATH` (ca.pem, cert.pem, key.pem).
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.lab.tls_dir()
    }

    /// With SSH: the inventory of the nodes' SSH servers, host keys pinned.
    pub fn inventory(&self) -> Option<PathBuf> {
        self.lab.inventory()
    }

    /// The docker CLI against node `node`'s dockerd, bounded by a timeout.
    /// `docker service create --detach --no-resolve-image ARGS <lab image> sh -c CMD` on the
    /// manager (the image is every node's already: nothing to pull).
    pub fn create_service(&self, args: &[&str], cmd: &str) -> Run {
        let mut all = vec!["service", "create", "--detach", "--no-resolve-image"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[self.image(), "sh", "-c", cmd]);
        self.docker(0, &all).ok()
    }

    /// The tests' usual workload: an attachable overlay `ov` and a dnsrr service `web` of
    /// `replicas` busybox httpds on it, at most one per node, each serving
    /// `served-by-<its hostname>`, with `extra` service flags (a published port...). Returns
    /// once they run.
    pub fn web(&self, replicas: usize, extra: &[&str]) {
        self.docker(
            0,
            &["network", "create", "-d", "overlay", "--attachable", "ov"],
        )
        .ok();
        let replicas_s = replicas.to_string();
        let mut args = vec![
            "--name",
            "web",
            "--network",
            "ov",
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            &replicas_s,
            "--replicas-max-per-node",
            "1",
        ];
        args.extend_from_slice(extra);
        self.create_service(
            &args,
            "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www",
        );
        self.wait_running("web", replicas);
    }

    /// Waits (up to 90 s) until exactly `replicas` tasks of service `name` run.
    pub fn wait_running(&self, name: &str, replicas: usize) {
        crate::eventually_true(
            &format!("{replicas} task(s) of {name} running"),
            std::time::Duration::from_secs(90),
            || {
                let r = self.docker(
                    0,
                    &[
                        "service",
                        "ps",
                        name,
                        "--filter",
                        "desired-state=running",
                        "--format",
                        "{{.CurrentState}}",
                    ],
                );
                let states: Vec<&str> = r.stdout.lines().collect();
                states.len() == replicas && states.iter().all(|s| s.starts_with("Running"))
            },
        );
    }

    pub fn docker(&self, node: usize, args: &[&str]) -> Run {
        Run::from(self.lab.docker(node, args).expect("running the docker CLI"))
    }

    /// `argv` in node `node`'s network namespace (`ip netns exec`), bounded by a timeout.
    pub fn in_node(&self, node: usize, argv: &[&str]) -> Run {
        Run::from(
            self.lab
                .in_node(node, argv)
                .unwrap_or_else(|e| panic!("running {}: {e}", argv.join(" "))),
        )
    }

    /// `argv` in node `node`'s dockerd's network, mount and UTS namespaces (`nsenter -t PID
    /// -n -m -u`): where its sandboxes' namespace mounts and its cgroups are visible.
    pub fn in_dockerd(&self, node: usize, argv: &[&str]) -> Run {
        Run::from(
            self.lab
                .in_dockerd(node, argv)
                .unwrap_or_else(|e| panic!("running {}: {e}", argv.join(" "))),
        )
    }

    /// The sandbox namespaces of node `node`'s dockerd (containers' and the overlays' own,
    /// `1-<network id prefix>`), as paths that work from the host's mount namespace:
    /// `/proc/<dockerd pid>/root/<exec-root>/netns/<sandbox>`, for `nsenter --net=<path>`.
    pub fn sandboxes(&self, node: usize) -> Vec<PathBuf> {
        self.lab.sandboxes(node)
    }

    /// The namespaces of the swarm: `NAME-ul`, `NAME-n1`, ...: what exists now of them.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_of(&self.lab.name)
    }

    /// The processes of the swarm that run now (see [`processes_of`]).
    pub fn processes(&self) -> Vec<u32> {
        processes_of(&self.lab.name, &self.lab.dir)
    }
}

impl Drop for DockerSwarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.lab.log_tails(30));
        }
        if let Err(e) = docker_lab::down(&self.lab.name) {
            eprintln!("{e}");
        }
    }
}
