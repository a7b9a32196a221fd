//! The control path of whole-machine nodes (QEMU guests, ssh hosts) without a TCP port on
//! the node. A fixed loopback port can be bound by any local user while the session is down
//! and is the same for every cluster on the host; a unix socket in the cluster's root-only
//! run directory is neither. OpenSSH could forward to such a socket itself
//! (streamlocal-forward), but dropbear and many locked-down sshds cannot, so the node's end
//! is our own `swarmkit __relay`: it listens on the cluster's agent socket on the node and
//! carries each connection as a yamux stream over its exec channel's stdin and stdout, which
//! the host side hands to the manager's agent socket. Any sshd that runs a command will do.
//!
//! The relay lives exactly as long as its session: when the channel closes its stdin ends,
//! it exits, and the agent's next connection is refused until `__vmhost` reconnects and
//! starts a new one. Mutual TLS runs inside the streams, end to end between the agent and
//! the manager; the relay only moves bytes.

use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::task::Poll;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use cluster::paths::{ClusterPaths, create_private_dir};

use crate::ssh::shell_quote;

/// The relay's pid on the node, for the isolate fault to pause it.
pub fn pid_file(paths: &ClusterPaths) -> PathBuf {
    paths.run_dir().join("relay.pid")
}

fn config() -> yamux::Config {
    // Agents hold a few connections each (plan polls, reports, logs); the default window
    // per stream is ample for plans of thousands of services.
    yamux::Config::default()
}

/// `swarmkit __relay --cluster C [--node N]`, on the node: serves the cluster's agent socket
/// until stdin ends; with `--node`, the host's streams reach the node's manager socket (a
/// node that runs one of several managers).
pub async fn node_side(paths: &ClusterPaths, node: Option<&str>) -> anyhow::Result<()> {
    let run = paths.run_dir();
    create_private_dir(&run).with_context(|| format!("making {} root-only", run.display()))?;
    let listener = bind(&paths.agent_socket())?;
    std::fs::write(pid_file(paths), std::process::id().to_string())?;
    serve_end(
        tokio::io::join(tokio::io::stdin(), tokio::io::stdout()),
        yamux::Mode::Client,
        Some(&listener),
        node.map(|n| paths.replica_run_dir(n).join("manager.sock")),
    )
    .await
}

/// The command that starts the node's end with the swarmkit at `bin` there, marked as the
/// cluster's (for `cluster down` on the node to find it, as it finds the agent); `manager`
/// names the node when it runs a manager the host reaches through the relay.
pub fn command(bin: &str, cluster: &str, manager: Option<&str>) -> String {
    let node = manager
        .map(|n| format!(" --node {}", shell_quote(n)))
        .unwrap_or_default();
    format!(
        "{}={c} {} --cluster {c} __relay{node}",
        cluster::paths::OWNER_ENV,
        shell_quote(bin),
        c = shell_quote(cluster)
    )
}

/// The host's end, over the exec channel of [`command`]: hands every stream the node's end
/// opens to `agents` (the manager's agent socket), and carries every connection to
/// `manager` (this host's socket for the node's manager, when it runs one) to the node.
/// Returns when the relay or its session ends.
pub async fn serve_host_end<T>(
    channel: T,
    agents: PathBuf,
    manager: Option<&UnixListener>,
) -> anyhow::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    serve_end(channel, yamux::Mode::Server, manager, Some(agents)).await
}

/// Listens on `socket` (owner-only) for connections to a node's manager, replacing what an
/// earlier session left there.
pub fn bind_manager_socket(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        create_private_dir(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    bind(socket)
}

/// One end of the relay: each connection `listener` accepts becomes a stream to the other
/// end, and each stream the other end opens is spliced to a connection to `target` (turned
/// away when there is none, or nothing listens there).
async fn serve_end<T>(
    channel: T,
    mode: yamux::Mode,
    listener: Option<&UnixListener>,
    target: Option<PathBuf>,
) -> anyhow::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = yamux::Connection::new(channel.compat(), config(), mode);
    enum Event {
        Accepted(UnixStream),
        Opened(yamux::Stream),
        Ended(Option<yamux::ConnectionError>),
    }
    loop {
        let event = poll_fn(|cx| {
            if let Some(listener) = listener
                && let Poll::Ready(accepted) = listener.poll_accept(cx)
            {
                match accepted {
                    Ok((local, _)) => return Poll::Ready(Event::Accepted(local)),
                    // A failed accept (out of descriptors) costs that connection, not the
                    // relay; the channel below is still polled and wakes us again.
                    Err(e) => tracing::warn!("accepting a connection to relay: {e}"),
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => Poll::Ready(Event::Opened(stream)),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Event::Ended(Some(e))),
                Poll::Ready(None) => Poll::Ready(Event::Ended(None)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Accepted(local) => {
                let stream = poll_fn(|cx| conn.poll_new_outbound(cx))
                    .await
                    .context("opening a stream to the other end")?;
                tokio::spawn(splice(local, stream));
            }
            Event::Opened(stream) => {
                let Some(target) = target.clone() else {
                    drop(stream);
                    continue;
                };
                tokio::spawn(async move {
                    match UnixStream::connect(&target).await {
                        Ok(local) => splice(local, stream).await,
                        Err(e) => tracing::warn!("relayed connection to {}: {e}", target.display()),
                    }
                });
            }
            Event::Ended(None) => return Ok(()),
            Event::Ended(Some(e)) => return Err(e).context("the session's channel failed"),
        }
    }
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A relay of an earlier session may have left its socket; the directory is ours alone.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn splice(mut local: UnixStream, stream: yamux::Stream) {
    let mut remote = stream.compat();
    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of the multiplexing over an in-memory pipe instead of an SSH channel: many
    /// connections at once each reach their own peer, in both directions, whole.
    #[tokio::test]
    async fn streams_carry_each_connection_to_its_own_peer() {
        let (node_io, host_io) = tokio::io::duplex(64 * 1024);
        let dir = std::env::temp_dir().join(format!("sk-relay-test-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let node_socket = dir.join("node.sock");
        let manager_socket = dir.join("manager.sock");
        let manager = UnixListener::bind(&manager_socket).unwrap();
        // The "manager" answers each connection with what it was sent, upper-cased.
        tokio::spawn(async move {
            loop {
                let (mut c, _) = manager.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = Vec::new();
                    c.read_to_end(&mut buf).await.unwrap();
                    c.write_all(&buf.to_ascii_uppercase()).await.unwrap();
                });
            }
        });
        let listener = bind(&node_socket).unwrap();
        let node_end = tokio::spawn(async move {
            serve_end(node_io, yamux::Mode::Client, Some(&listener), None).await
        });
        let host_end = tokio::spawn(serve_host_end(host_io, manager_socket.clone(), None));
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let node_socket = node_socket.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut c = UnixStream::connect(&node_socket).await.unwrap();
                    let sent = format!("agent {i} ").repeat(2000);
                    c.write_all(sent.as_bytes()).await.unwrap();
                    c.shutdown().await.unwrap();
                    let mut got = String::new();
                    c.read_to_string(&mut got).await.unwrap();
                    assert_eq!(got, sent.to_uppercase());
                })
            })
            .collect();
        for c in clients {
            tokio::time::timeout(std::time::Duration::from_secs(20), c)
                .await
                .expect("a relayed connection stalled")
                .unwrap();
        }
        // The session ends: the node's end sees its channel close and returns.
        host_end.abort();
        tokio::time::timeout(std::time::Duration::from_secs(10), node_end)
            .await
            .expect("the node's end outlived its channel")
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The other direction, over the same channel at once: connections to the host's socket
    /// for the node's manager reach the node's manager socket, while the node's agent
    /// connections still reach the host; a stream to a node whose manager is not listening
    /// is closed at once rather than left hanging.
    #[tokio::test]
    async fn the_host_reaches_the_nodes_manager_through_the_same_channel() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (node_io, host_io) = tokio::io::duplex(64 * 1024);
        let dir = std::env::temp_dir().join(format!("sk-relay-back-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let (agents_node, agents_host) = (dir.join("agents-node.sock"), dir.join("agents.sock"));
        let (manager_node, manager_host) = (dir.join("m/node.sock"), dir.join("m/host.sock"));
        let echo = |socket: &Path, tag: &'static str| {
            let l = bind_manager_socket(socket).unwrap();
            tokio::spawn(async move {
                loop {
                    let (mut c, _) = l.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        c.read_to_end(&mut buf).await.unwrap();
                        c.write_all(tag.as_bytes()).await.unwrap();
                        c.write_all(&buf).await.unwrap();
                    });
                }
            })
        };
        let node_listener = bind(&agents_node).unwrap();
        let host_listener = bind_manager_socket(&manager_host).unwrap();
        let target = manager_node.clone();
        let _node_end = tokio::spawn(async move {
            serve_end(
                node_io,
                yamux::Mode::Client,
                Some(&node_listener),
                Some(target),
            )
            .await
        });
        let _host_end = tokio::spawn(async move {
            serve_host_end(host_io, agents_host, Some(&host_listener)).await
        });
        let ask = |socket: PathBuf, what: &'static str| async move {
            let mut c = UnixStream::connect(&socket).await.unwrap();
            c.write_all(what.as_bytes()).await.unwrap();
            c.shutdown().await.unwrap();
            let mut got = String::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                c.read_to_string(&mut got),
            )
            .await
            .expect("a relayed connection hung")
            .unwrap();
            got
        };
        // Nothing listens on the node's manager socket yet: closed, not hung.
        assert_eq!(ask(manager_host.clone(), "early").await, "");
        let _manager = echo(&manager_node, "manager:");
        let _agents = echo(&dir.join("agents.sock"), "agents:");
        assert_eq!(ask(manager_host.clone(), "ping").await, "manager:ping");
        assert_eq!(ask(agents_node.clone(), "plan").await, "agents:plan");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
