//! Turning a walkthrough line into a process, and running it. `docker ...` lines go to the
//! cluster's manager, through swarmkit's own CLI or through the real docker binary; every
//! other line runs in a shell on the block's node or inside the block's task. On a Docker lab
//! (`engine=docker`) `docker` lines go to the lab's manager through docker.io's CLI,
//! `swarmkit` lines read the lab (DOCKER_HOST and SWARMKIT_REACH), and node lines run in the
//! node's network namespace.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::plan::{Client, Target};
use super::words::split_words;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot create a pipe for the command's output")]
    Pipe(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the output of {program} failed")]
    Read {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A fully resolved process to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub struct Runner {
    pub exe: PathBuf,
    /// The cluster's name, or the Docker lab's.
    pub cluster: String,
    pub client: Client,
    /// `Some(N)`: the walkthrough runs on a Docker lab of N nodes named `cluster`, whose
    /// hostnames are [`LAB_HOSTNAMES`]`1` to `N`, instead of a swarmkit cluster.
    pub lab_nodes: Option<usize>,
}

/// The hostname prefix of a walkthrough's Docker lab: its nodes are `node1`, `node2`, ...,
/// as a swarmkit cluster's are, so the same blocks (`node=node2`) and output read alike.
pub const LAB_HOSTNAMES: &str = "node";

impl Runner {
    /// The swarmkit binary with its cluster selected, followed by `args`.
    pub fn swarmkit(&self, args: &[&str]) -> Invocation {
        let mut all = vec!["--cluster".to_string(), self.cluster.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        Invocation {
            program: self.exe.display().to_string(),
            args: all,
            env: Vec::new(),
        }
    }

    fn docker_host(&self) -> (String, String) {
        (
            "DOCKER_HOST".into(),
            cluster::paths::ClusterPaths::new(&self.cluster).docker_host(),
        )
    }

    /// DOCKER_HOST and SWARMKIT_REACH of the walkthrough's Docker lab of `nodes` nodes.
    fn lab_env(&self, nodes: usize) -> Vec<(String, String)> {
        let reach: Vec<String> = (0..nodes)
            .map(|i| {
                let ns = testbed::docker_lab::node_netns(&self.cluster, i);
                format!("{LAB_HOSTNAMES}{}=netns:{ns}", i + 1)
            })
            .collect();
        let socket = testbed::docker_lab::manager_socket(&self.cluster);
        vec![
            ("DOCKER_HOST".into(), format!("unix://{}", socket.display())),
            ("SWARMKIT_REACH".into(), reach.join(",")),
        ]
    }

    /// A line on the walkthrough's Docker lab of `nodes` nodes.
    fn lab_invocation(&self, nodes: usize, target: &Target, line: &str) -> Invocation {
        let env = self.lab_env(nodes);
        let docker = testbed::docker_lab::docker_cli().display().to_string();
        let words = split_words(line);
        let first = match &words {
            Some(w) => w.first().cloned().unwrap_or_default(),
            None => line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        // `sh -c LINE`, after `pre` (a command that runs it somewhere: `ip netns exec NS`).
        let shell = |pre: &[String], line: &str| {
            let mut argv: Vec<String> = pre.to_vec();
            argv.extend(["sh".into(), "-c".into(), line.into()]);
            Invocation {
                program: argv.remove(0),
                args: argv,
                env: env.clone(),
            }
        };
        let refuse = |why: String| Invocation {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo \"$1\" >&2; exit 2".into(),
                "sh".into(),
                why,
            ],
            env: env.clone(),
        };
        match (first.as_str(), words) {
            ("swarmkit", Some(w)) => Invocation {
                program: self.exe.display().to_string(),
                args: w[1..].to_vec(),
                env: env.clone(),
            },
            ("docker", Some(w)) => Invocation {
                program: docker,
                args: w[1..].to_vec(),
                env: env.clone(),
            },
            // Shell syntax: `docker` (and `swarmkit`) are functions calling the right binary.
            ("docker" | "swarmkit", None) => shell(
                &[],
                &format!(
                    "docker() {{ '{docker}' \"$@\"; }}\nswarmkit() {{ '{}' \"$@\"; }}\n{line}",
                    self.exe.display()
                ),
            ),
            _ => match target {
                Target::Node(node) => {
                    let index = node
                        .strip_prefix(LAB_HOSTNAMES)
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|i| (1..=nodes).contains(i));
                    match index {
                        Some(i) => {
                            let ns = testbed::docker_lab::node_netns(&self.cluster, i - 1);
                            shell(&["ip".into(), "netns".into(), "exec".into(), ns], line)
                        }
                        None => refuse(format!(
                            "no node {node} in the Docker lab: its nodes are {LAB_HOSTNAMES}1 to {LAB_HOSTNAMES}{nodes}"
                        )),
                    }
                }
                Target::Task(task) => refuse(format!(
                    "task={task}: blocks run in tasks on swarmkit clusters only; on a Docker lab use `docker exec` on the task's node"
                )),
                Target::Underlay => {
                    let ns = format!(
                        "--net={}/{}-ul",
                        netcore::netns::NETNS_RUN_DIR,
                        self.cluster
                    );
                    shell(&["nsenter".into(), ns], line)
                }
            },
        }
    }

    pub fn invocation(&self, target: &Target, line: &str) -> Invocation {
        if let Some(nodes) = self.lab_nodes {
            return self.lab_invocation(nodes, target, line);
        }
        let words = split_words(line);
        // swarmkit's own commands (graph, trace) run on this host, whichever client answers
        // `docker` lines.
        if let Some(w) = &words
            && w.first().is_some_and(|w| w == "swarmkit")
        {
            let rest: Vec<&str> = w[1..].iter().map(String::as_str).collect();
            return self.swarmkit(&rest);
        }
        let is_docker = match &words {
            Some(w) => w.first().is_some_and(|w| w == "docker"),
            None => line.split_whitespace().next() == Some("docker"),
        };
        match (is_docker, words, self.client) {
            (true, Some(words), Client::Swarmkit) => {
                let rest: Vec<&str> = words[1..].iter().map(String::as_str).collect();
                self.swarmkit(&rest)
            }
            (true, Some(words), Client::Docker) => Invocation {
                program: "docker".into(),
                args: words[1..].to_vec(),
                env: vec![self.docker_host()],
            },
            // Docker lines with pipes or redirections run in a host shell where `docker` is a
            // function calling the chosen client, so the shell syntax keeps its meaning.
            (true, None, Client::Swarmkit) => Invocation {
                program: "sh".into(),
                args: vec![
                    "-c".into(),
                    format!(
                        "docker() {{ \"$SK_WALK_EXE\" --cluster \"$SK_WALK_CLUSTER\" \"$@\"; }}\n{line}"
                    ),
                ],
                env: vec![
                    ("SK_WALK_EXE".into(), self.exe.display().to_string()),
                    ("SK_WALK_CLUSTER".into(), self.cluster.clone()),
                ],
            },
            (true, None, Client::Docker) => Invocation {
                program: "sh".into(),
                args: vec!["-c".into(), line.to_string()],
                env: vec![self.docker_host()],
            },
            (false, ..) => match target {
                Target::Node(node) => {
                    self.swarmkit(&["node", "exec", node, "--", "sh", "-c", line])
                }
                Target::Task(task) => self.swarmkit(&["exec", task, "--", "sh", "-c", line]),
                Target::Underlay => {
                    let ns = cluster::paths::ClusterPaths::new(&self.cluster).underlay_ns();
                    Invocation {
                        program: "nsenter".into(),
                        args: vec![
                            format!("--net={}/{ns}", netcore::netns::NETNS_RUN_DIR),
                            "sh".into(),
                            "-c".into(),
                            line.to_string(),
                        ],
                        env: vec![("SK_WALK_CLUSTER".into(), self.cluster.clone())],
                    }
                }
            },
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    /// What the command wrote to stdout, then what it wrote to stderr. Keeping the streams
    /// apart makes the transcript the same whether they travel together (a local pipe) or
    /// apart (an SSH session to a VM node), which would interleave them arbitrarily.
    pub output: String,
    /// Exit code; None when killed by a signal or the timeout.
    pub status: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

async fn read_lines(
    fd: OwnedFd,
    program: &str,
    lines: &tokio::sync::mpsc::UnboundedSender<String>,
    text: &std::sync::Mutex<String>,
) -> Result<(), ExecError> {
    let read_err = |source| ExecError::Read {
        program: program.to_string(),
        source,
    };
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(ExecError::Pipe)?;
    let mut reader = BufReader::new(receiver);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await.map_err(read_err)? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        let _ = lines.send(line.trim_end_matches('\n').to_string());
        text.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&line);
    }
}

/// Runs the invocation, handing each line of output to `on_line` as it arrives. The command
/// runs in its own process group so a timeout kills all of it.
pub async fn run(
    inv: &Invocation,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Outcome, ExecError> {
    let started = Instant::now();
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ExecError::Pipe(std::io::Error::from(e)))
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let mut child = {
        let mut cmd = tokio::process::Command::new(&inv.program);
        cmd.args(&inv.args)
            .envs(inv.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write))
            .process_group(0)
            .kill_on_drop(true);
        // The Command owns our copies of the pipes' write ends; it is dropped at the end of
        // this block so that the readers see end-of-file once the command's processes exit.
        cmd.spawn().map_err(|source| ExecError::Spawn {
            program: inv.program.clone(),
            source,
        })?
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let read_err = |source| ExecError::Read {
        program: inv.program.clone(),
        source,
    };

    let (out, err) = (std::sync::Mutex::default(), std::sync::Mutex::default());
    let finished = tokio::time::timeout(timeout, async {
        let both = async {
            let r = tokio::try_join!(
                read_lines(out_read, &inv.program, &tx, &out),
                read_lines(err_read, &inv.program, &tx, &err)
            );
            drop(tx);
            r
        };
        let show = async {
            while let Some(line) = rx.recv().await {
                on_line(&line);
            }
        };
        let (read, ()) = tokio::join!(both, show);
        read?;
        child.wait().await.map_err(read_err)
    })
    .await;

    let (status, timed_out) = match finished {
        Ok(status) => (status?.code(), false),
        Err(_elapsed) => {
            if let Some(pid) = child.id() {
                // Best effort: the group may already be gone.
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            (None, true)
        }
    };
    let text = |m: std::sync::Mutex<String>| m.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(Outcome {
        output: text(out) + &text(err),
        status,
        timed_out,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(client: Client) -> Runner {
        Runner {
            exe: PathBuf::from("/usr/bin/swarmkit"),
            cluster: "wt42".into(),
            client,
            lab_nodes: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn swarmkit_lines_run_on_the_host() {
        let r = Runner {
            exe: PathBuf::from("/usr/bin/swarmkit"),
            cluster: "wt42".into(),
            client: Client::Docker,
            lab_nodes: None,
        };
        let inv = r.invocation(
            &Target::Node("node3".into()),
            "swarmkit graph --format text",
        );
        assert_eq!(inv.program, "/usr/bin/swarmkit");
        assert_eq!(inv.args, ["--cluster", "wt42", "graph", "--format", "text"]);
    }

    #[test]
    fn docker_lines_map_to_swarmkit_cli() {
        let r = runner(Client::Swarmkit);
        let node1 = Target::Node("node1".into());
        assert_eq!(
            r.invocation(&node1, "docker service ls"),
            Invocation {
                program: "/usr/bin/swarmkit".into(),
                args: s(&["--cluster", "wt42", "service", "ls"]),
                env: vec![],
            }
        );
        let inv = r.invocation(&node1, "docker service inspect drupal | grep Addr");
        assert_eq!(inv.program, "sh");
        assert!(inv.args[1].ends_with("\ndocker service inspect drupal | grep Addr"));
        assert!(inv.env.contains(&("SK_WALK_CLUSTER".into(), "wt42".into())));
    }

    #[test]
    fn docker_lines_map_to_docker_cli() {
        let r = runner(Client::Docker);
        let inv = r.invocation(&Target::Node("node2".into()), "docker network ls");
        assert_eq!(inv.program, "docker");
        assert_eq!(inv.args, s(&["network", "ls"]));
        assert_eq!(
            inv.env,
            vec![(
                "DOCKER_HOST".into(),
                "unix:///run/swarmkit/wt42/manager.sock".into()
            )]
        );
    }

    #[test]
    fn other_lines_run_on_the_node_or_in_the_task() {
        let r = runner(Client::Docker);
        assert_eq!(
            r.invocation(
                &Target::Node("node3".into()),
                "curl -I localhost # or the IP"
            )
            .args,
            s(&[
                "--cluster",
                "wt42",
                "node",
                "exec",
                "node3",
                "--",
                "sh",
                "-c",
                "curl -I localhost # or the IP"
            ])
        );
        assert_eq!(
            r.invocation(&Target::Task("web.1".into()), "getent hosts api")
                .args,
            s(&[
                "--cluster",
                "wt42",
                "exec",
                "web.1",
                "--",
                "sh",
                "-c",
                "getent hosts api"
            ])
        );
    }

    #[test]
    fn lines_on_a_docker_lab_go_to_its_manager_its_nodes_and_swarmkit_reads_it() {
        let r = Runner {
            exe: PathBuf::from("/usr/bin/swarmkit"),
            cluster: "doc-wt42".into(),
            client: Client::Swarmkit,
            lab_nodes: Some(3),
        };
        let node2 = Target::Node("node2".into());
        let env = vec![
            (
                "DOCKER_HOST".to_string(),
                "unix:///run/swarm-labs/doc-wt42/n1/docker.sock".to_string(),
            ),
            (
                "SWARMKIT_REACH".to_string(),
                "node1=netns:doc-wt42-n1,node2=netns:doc-wt42-n2,node3=netns:doc-wt42-n3"
                    .to_string(),
            ),
        ];
        let inv = r.invocation(&node2, "docker service ls");
        assert!(inv.program.ends_with("docker"), "{inv:?}");
        assert_eq!((inv.args, &inv.env), (s(&["service", "ls"]), &env));
        let inv = r.invocation(&node2, "swarmkit doctor");
        assert_eq!(
            (inv.program.as_str(), inv.args),
            ("/usr/bin/swarmkit", s(&["doctor"]))
        );
        assert_eq!(inv.env, env);
        let inv = r.invocation(&node2, "nft list ruleset | head");
        assert_eq!(inv.program, "ip");
        assert_eq!(
            inv.args,
            s(&[
                "netns",
                "exec",
                "doc-wt42-n2",
                "sh",
                "-c",
                "nft list ruleset | head"
            ])
        );
        let inv = r.invocation(&Target::Underlay, "ip link");
        assert_eq!(inv.program, "nsenter");
        assert_eq!(inv.args[0], "--net=/run/netns/doc-wt42-ul");
        for nowhere in [Target::Node("node4".into()), Target::Task("web.1".into())] {
            let inv = r.invocation(&nowhere, "true");
            assert_eq!(inv.program, "sh", "{nowhere}: refused with a message");
        }
    }

    #[tokio::test]
    async fn run_keeps_stdout_before_stderr_and_reports_status() {
        let inv = Invocation {
            program: "sh".into(),
            args: s(&["-c", "echo out; echo err >&2; exit 3"]),
            env: vec![],
        };
        let mut seen = Vec::new();
        let o = run(&inv, Duration::from_secs(10), |l| seen.push(l.to_string()))
            .await
            .expect("runs");
        assert_eq!(o.output, "out\nerr\n");
        seen.sort();
        assert_eq!(seen, s(&["err", "out"]), "every line is shown live");
        assert_eq!(o.status, Some(3));
        assert!(!o.timed_out);
    }

    #[tokio::test]
    async fn run_kills_the_whole_group_on_timeout() {
        let inv = Invocation {
            program: "sh".into(),
            args: s(&["-c", "echo start; sleep 30; echo never"]),
            env: vec![],
        };
        let o = run(&inv, Duration::from_millis(300), |_| {})
            .await
            .expect("runs");
        assert!(o.timed_out);
        assert_eq!(o.output, "start\n");
        assert!(o.elapsed < Duration::from_secs(10));
    }
}
