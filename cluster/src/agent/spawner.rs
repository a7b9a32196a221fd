//! Task processes are started by a small process of the agent's own, `swarmkit __spawner`,
//! not by the agent. A fork copies the forking process's page tables and descriptor table, and
//! the exec that follows tears both down again: the agent holds ~100 MB and five descriptors
//! per task it runs (its output FIFOs, its DNS sockets, its pidfd), so at 1700 tasks on a node
//! a start forked from the agent spent most of its CPU there (a third of an agent's CPU while
//! services were created at 2400-3000). The spawner stays a few MB with a handful of
//! descriptors however many tasks run, so a start costs the same at 5000 as at 0.
//!
//! The agent sends a request (the task's plan, its run directory and argv, with its network
//! namespace, output FIFOs and the tasks' mount template as descriptors) on one socket, and
//! reads the answer (the pid, or why not) there; the spawner, the processes' parent, reports
//! each exit (pid and code) on a second socket as it reaps it. The spawner ends when the agent
//! does (its request socket closes).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::process::{self, Launch, ProcessError};
use crate::plan::TaskPlan;

/// The descriptors the spawner finds its sockets at.
const REQUESTS_FD: RawFd = 3;
const EXITS_FD: RawFd = 4;
/// Descriptors a request carries at most: network namespace, stdout, stderr, mount template.
const MAX_FDS: usize = 4;

#[derive(Serialize, Deserialize)]
struct Request {
    task: TaskPlan,
    dir: PathBuf,
    cluster: String,
    argv: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Started { pid: u32 },
    Failed { message: String },
}

#[derive(Serialize, Deserialize)]
struct Exit {
    pid: u32,
    code: Option<i32>,
}

/// Writes one frame: its length (with `fds` attached), then its bytes.
fn send_frame(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let len = (bytes.len() as u32).to_le_bytes();
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&len)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    // A 4-byte write to a stream socket is not split; the descriptors went with it.
    if sent != len.len() {
        return Err(std::io::Error::other("a short write of a frame's length"));
    }
    (&*sock).write_all(bytes)
}

/// Reads one frame and the descriptors sent with it. None: the other end closed.
fn recv_frame(sock: &UnixStream) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < len.len() {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut len[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(rights) = c {
                // SAFETY: the kernel just installed these descriptors for us; nothing else owns them.
                fds.extend(
                    rights
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        got += msg.bytes;
    }
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    (&*sock).read_exact(&mut bytes)?;
    Ok(Some((bytes, fds)))
}

/// The agent's handle on its spawner.
pub struct Spawner {
    requests: Mutex<Link>,
    /// Named in its command line, as everything of a cluster's is.
    cluster: String,
}

/// One spawner process: its request socket and the exits it reports.
struct Link {
    sock: UnixStream,
    child: std::process::Child,
    exits: Arc<Exits>,
}

/// A process a spawner started, and where its exit will be reported.
pub struct Spawned {
    pub pid: u32,
    exits: Arc<Exits>,
}

/// Exits the spawner reported, and who waits for which.
#[derive(Default)]
struct Exits {
    state: Mutex<ExitState>,
}

#[derive(Default)]
struct ExitState {
    waiting: HashMap<u32, oneshot::Sender<Option<i32>>>,
    /// Reported before anyone asked.
    early: HashMap<u32, Option<i32>>,
    /// The spawner that started these is gone: nobody will report their exits.
    orphaned: bool,
}

impl Exits {
    fn report(&self, e: Exit) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.waiting.remove(&e.pid) {
            Some(tx) => drop(tx.send(e.code)),
            None => drop(s.early.insert(e.pid, e.code)),
        }
    }

    fn orphan(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.orphaned = true;
        // Dropping the senders wakes the waiters, which watch the processes themselves.
        s.waiting.clear();
    }
}

impl Spawner {
    /// Starts the spawner (the agent's child, in the agent's mount namespace) and the task
    /// that reads its exit reports.
    pub fn start(cluster: &str) -> std::io::Result<Spawner> {
        Ok(Spawner {
            requests: Mutex::new(Self::launch(cluster)?),
            cluster: cluster.to_string(),
        })
    }

    fn launch(cluster: &str) -> std::io::Result<Link> {
        let exits = Arc::new(Exits::default());
        let (ours, theirs) = UnixStream::pair()?;
        let (exits_ours, exits_theirs) = UnixStream::pair()?;
        let (req, ex) = (theirs.as_raw_fd(), exits_theirs.as_raw_fd());
        let mut cmd = std::process::Command::new(crate::paths::OWN_BINARY);
        cmd.args(["--cluster", cluster, "__spawner"])
            .stdin(std::process::Stdio::null());
        // SAFETY: dup2 is async-signal-safe and the descriptors outlive the fork.
        unsafe {
            cmd.pre_exec(move || {
                for (from, to) in [(req, REQUESTS_FD), (ex, EXITS_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop((theirs, exits_theirs));
        let reported = Arc::clone(&exits);
        std::thread::Builder::new()
            .name("spawner-exits".into())
            .spawn(move || {
                while let Ok(Some((bytes, _))) = recv_frame(&exits_ours) {
                    match serde_json::from_slice::<Exit>(&bytes) {
                        Ok(e) => reported.report(e),
                        Err(e) => tracing::warn!("the spawner's exit report: {e}"),
                    }
                }
                reported.orphan();
            })?;
        Ok(Link {
            sock: ours,
            child,
            exits,
        })
    }

    /// Starts a task's process through the spawner; returns its pid. A spawner that is gone
    /// is started again (its processes run on; their exits are watched by pidfd).
    pub fn spawn(
        &self,
        launch: &Launch<'_>,
        outputs: [OwnedFd; 2],
    ) -> Result<Spawned, ProcessError> {
        let task = launch.task;
        let request = serde_json::to_vec(&Request {
            task: task.clone(),
            dir: launch.dir.to_path_buf(),
            cluster: launch.cluster.to_string(),
            argv: launch.argv.to_vec(),
        })
        .map_err(|e| failed(task, std::io::Error::other(e)))?;
        let mut fds = vec![
            launch.net.as_raw_fd(),
            outputs[0].as_raw_fd(),
            outputs[1].as_raw_fd(),
        ];
        fds.extend(launch.mounts.map(|m| m.as_raw_fd()));
        let mut link = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let mut answer = ask(&link.sock, &request, &fds);
        if answer.is_err() {
            // Gone (or broken): reap it and start another, once.
            let _ = link.child.kill();
            let _ = link.child.wait();
            answer = Self::launch(&self.cluster).and_then(|l| {
                *link = l;
                ask(&link.sock, &request, &fds)
            });
        }
        let exits = Arc::clone(&link.exits);
        drop(link);
        let failed = match answer {
            Ok(Reply::Started { pid }) => return Ok(Spawned { pid, exits }),
            Ok(Reply::Failed { message }) => ProcessError::Spawner { message },
            Err(e) => failed(task, e),
        };
        // The spawner made the task's cgroup; its process never joined it.
        super::cgroup::remove(launch.cluster, &task.id, std::time::Duration::ZERO);
        Err(failed)
    }
}

impl Spawned {
    /// Resolves with the process's exit code (None: killed by a signal, or its spawner went
    /// away and the code is lost).
    pub async fn exited(self) -> Option<i32> {
        let pid = self.pid;
        let rx = {
            let mut s = self.exits.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(code) = s.early.remove(&pid) {
                return code;
            }
            let (tx, rx) = oneshot::channel();
            if !s.orphaned {
                s.waiting.insert(pid, tx);
            }
            rx
        };
        match rx.await {
            Ok(code) => code,
            Err(_) => {
                // No report will come: watch the process itself.
                let _ = super::adopt::exited(pid).await;
                None
            }
        }
    }
}

fn failed(task: &TaskPlan, e: std::io::Error) -> ProcessError {
    ProcessError::Prepare {
        task: task.name.clone(),
        what: "a request to the agent's spawner",
        source: e,
    }
}

fn ask(sock: &UnixStream, request: &[u8], fds: &[RawFd]) -> std::io::Result<Reply> {
    send_frame(sock, request, fds)?;
    let (bytes, _) =
        recv_frame(sock)?.ok_or_else(|| std::io::Error::other("the spawner closed its socket"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// `swarmkit __spawner`: serves the agent's requests until its socket closes, reaping the
/// processes it started and reporting their exits. One thread, started before any runtime:
/// it forks, and it reaps only between starts, so no reap takes a child that a failed start
/// is still waiting for.
pub fn serve() -> i32 {
    match serve_until_closed() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("swarmkit __spawner: {e}");
            1
        }
    }
}

fn serve_until_closed() -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    // SAFETY: the agent put our sockets at these descriptors (see `Spawner::launch`), and
    // nothing else here owns them.
    let (requests, exits) = unsafe {
        (
            UnixStream::from_raw_fd(REQUESTS_FD),
            UnixStream::from_raw_fd(EXITS_FD),
        )
    };
    for sock in [&requests, &exits] {
        // Not for the tasks.
        nix::fcntl::fcntl(
            sock,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    // Exits arrive as reads (a child's signal mask is reset before it execs).
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    children.thread_block()?;
    let signals = SignalFd::with_flags(&children, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    loop {
        let mut ready = [
            PollFd::new(requests.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut ready, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let request = ready[0].any().unwrap_or(true);
        let reaped = ready[1].any().unwrap_or(true);
        if reaped {
            while let Ok(Some(_)) = signals.read_signal() {}
            reap(&exits)?;
        }
        if request {
            let Some((bytes, fds)) = recv_frame(&requests)? else {
                // The agent is gone.
                return Ok(());
            };
            let reply = match start(&bytes, fds) {
                Ok(pid) => Reply::Started { pid },
                Err(message) => Reply::Failed { message },
            };
            send_frame(&requests, &serde_json::to_vec(&reply)?, &[])?;
        }
    }
}

fn start(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<u32, String> {
    let req: Request = serde_json::from_slice(bytes)
        .map_err(|e| format!("a request the spawner could not read: {e}"))?;
    let mut fds = fds.into_iter();
    let (Some(net), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) else {
        return Err(format!(
            "task {}: a request without its descriptors",
            req.task.name
        ));
    };
    let mounts = fds.next();
    let launch = Launch {
        task: &req.task,
        net: net.as_fd(),
        mounts: mounts.as_ref().map(|m| m.as_fd()),
        dir: &req.dir,
        cluster: &req.cluster,
        argv: &req.argv,
    };
    let child = process::spawn(&launch, [stdout, stderr]).map_err(|e| format!("{e:#}"))?;
    // Reaped by `reap`, by pid; the handle's own wait is not used.
    Ok(child.id())
}

/// Reaps every child that has ended and reports each.
fn reap(exits: &UnixStream) -> std::io::Result<()> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code)),
            Ok(WaitStatus::Signaled(pid, ..)) => (pid, None),
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let bytes = serde_json::to_vec(&Exit {
            pid: pid.as_raw() as u32,
            code,
        })?;
        send_frame(exits, &bytes, &[])?;
    }
}
