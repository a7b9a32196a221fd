//! A bounded HTTP load from inside a node: a few clients, each opening a new TCP connection
//! per request (as `ab` without -k does) to a published port on the node's localhost, so
//! every request crosses the node's routing mesh. It counts what failed and when.
//! Shared by the heal and failover suites, which read different parts of the report.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The project's bound on every load test.
pub const MAX_REQUESTS: u64 = 20_000;
pub const MAX_TIME: Duration = Duration::from_secs(60);

pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    workers: Vec<JoinHandle<Vec<Outcome>>>,
}

struct Outcome {
    at: Duration,
    error: Option<String>,
}

#[derive(Debug)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    /// Since the load started: when the last failed request began, if any.
    pub last_failure: Option<Duration>,
    pub first_failure: Option<Duration>,
    pub errors: Vec<String>,
    /// Each failed request: when it began, and its error.
    pub failures: Vec<(Duration, String)>,
    pub elapsed: Duration,
}

/// Source ports handed out in turn, none twice within 40 000 requests: thousands of
/// connections a second from kernel-chosen ports come back to a port within seconds, and one
/// whose last connection's conntrack entry still binds it to a backend that left (a SYN never
/// answered, a reset) is sent there again until that entry expires (seconds in the balancing
/// namespaces, see README). The suites test draining and replacement, not that.
static NEXT_SOURCE_PORT: AtomicU64 = AtomicU64::new(0);
const SOURCE_PORTS: std::ops::Range<u64> = 20_000..60_000;

fn connect(port: u16) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let n = NEXT_SOURCE_PORT.fetch_add(1, Ordering::Relaxed);
    let span = SOURCE_PORTS.end - SOURCE_PORTS.start;
    let source = (SOURCE_PORTS.start + n % span) as u16;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, source),
    )?;
    // A blocking connect gives up after SO_SNDTIMEO (with EINPROGRESS).
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )?;
    let to = SockaddrIn::new(127, 0, 0, 1, port);
    match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &to) {
        Ok(()) => Ok(TcpStream::from(fd)),
        Err(nix::errno::Errno::EINPROGRESS) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        )),
        Err(e) => Err(e.into()),
    }
}

fn request(port: u16) -> Result<(), String> {
    let mut conn = connect(port).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: load\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else if body.is_empty() {
        Err("empty answer".into())
    } else {
        Err(format!("answered {head:?}"))
    }
}

impl Load {
    /// Starts `workers` clients in `node`'s namespace of `cluster` against localhost:`port`.
    pub fn start(cluster: &str, node: &str, port: u16, workers: usize) -> Load {
        let ns_name = cluster::paths::ClusterPaths::new(cluster).node_ns(node);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers = (0..workers)
            .map(|_| {
                let (stop, sent, ns_name) = (stop.clone(), sent.clone(), ns_name.clone());
                std::thread::spawn(move || {
                    let ns = netcore::netns::NetNs::open(&ns_name).expect("the node's namespace");
                    ns.run(|| {
                        let mut out = Vec::new();
                        while !stop.load(Ordering::Relaxed)
                            && started.elapsed() < MAX_TIME
                            && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        {
                            // A request is placed on the timeline when it began: one
                            // caught in flight by a crash fails late, but it is not a new
                            // connection that failed.
                            let at = started.elapsed();
                            let error = request(port).err();
                            out.push(Outcome { at, error });
                        }
                        out
                    })
                    .expect("entering the node's namespace")
                })
            })
            .collect();
        Load {
            stop,
            sent,
            started,
            workers,
        }
    }

    /// Requests answered so far (and failed), for waiting until the load is under way.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Time since the load started (to place events on its failure timeline).
    pub fn started_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the load is still running (not cut short by its bounds).
    pub fn running(&self) -> bool {
        self.started.elapsed() < MAX_TIME && self.sent() < MAX_REQUESTS
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.join().expect("load worker"));
        }
        let failures: Vec<&Outcome> = all.iter().filter(|o| o.error.is_some()).collect();
        let mut errors: Vec<String> = failures.iter().filter_map(|o| o.error.clone()).collect();
        errors.sort();
        errors.dedup();
        Report {
            ok: (all.len() - failures.len()) as u64,
            failed: failures.len() as u64,
            first_failure: failures.iter().map(|o| o.at).min(),
            last_failure: failures.iter().map(|o| o.at).max(),
            errors,
            failures: failures
                .iter()
                .filter_map(|o| Some((o.at, o.error.clone()?)))
                .collect(),
            elapsed: self.started.elapsed(),
        }
    }
}
