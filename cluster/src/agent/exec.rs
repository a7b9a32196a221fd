//! The node's end of `docker exec`: the agent long-polls the sessions started on its node's
//! socket, has the loop that owns the tasks make each command inside its task (as a
//! healthcheck's: its namespaces, cgroup, user and capabilities, or the container's runtime),
//! attaches to the manager with an upgrade of its own, and pumps: the client's stdin in,
//! stdout and stderr out as docker's frames, the exit status last.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::event::Event;
use crate::client::ManagerClient;
use crate::protocol::{EXEC_EXIT_FRAME, EXECS, EXECS_HOLD, ExecRequest, exec_frame};

/// Status of an exec whose command could not be made or started (docker's "cannot invoke").
const CANNOT_RUN: i32 = 126;

pub async fn serve(client: ManagerClient, events: mpsc::UnboundedSender<Event>) {
    loop {
        match client.get_held::<Vec<ExecRequest>>(EXECS, EXECS_HOLD).await {
            Ok(sessions) => {
                for r in sessions {
                    tokio::spawn(run_one(client.clone(), events.clone(), r));
                }
            }
            Err(e) => {
                tracing::debug!("exec poll: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_one(client: ManagerClient, events: mpsc::UnboundedSender<Event>, r: ExecRequest) {
    let (reply, made) = oneshot::channel();
    let _ = events.send(Event::Exec {
        task_id: r.task_id.clone(),
        argv: r.argv.clone(),
        env: r.env.clone(),
        reply,
    });
    let made = made
        .await
        .unwrap_or_else(|_| Err("the agent is stopping".into()));
    let io = match client.upgrade(&format!("{EXECS}/{}", r.session)).await {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(session = r.session, "attaching an exec: {e}");
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(io);
    let failed = |why: String| {
        let mut out = exec_frame(2, format!("{why}\n").as_bytes());
        out.extend(exec_frame(EXEC_EXIT_FRAME, &CANNOT_RUN.to_be_bytes()));
        out
    };
    let mut cmd = match made {
        Ok(cmd) => cmd,
        Err(why) => {
            let _ = to_client.write_all(&failed(why)).await;
            let _ = to_client.shutdown().await;
            return;
        }
    };
    cmd.stdin(if r.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("exec {:?}: {e}", r.argv.first().unwrap_or(&String::new()));
            let _ = to_client.write_all(&failed(why)).await;
            let _ = to_client.shutdown().await;
            return;
        }
    };
    let stdin = child.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
            // Dropped: the process sees its stdin end.
        })
    });
    let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(16);
    let pumps: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .zip([1u8, 2u8])
    .filter_map(|(out, kind)| out.map(|o| (o, kind)))
    .map(|(mut out, kind)| {
        let tx = frames_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 || tx.send(exec_frame(kind, &buf[..n])).await.is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(frames_tx);
    while let Some(frame) = frames.recv().await {
        if to_client.write_all(&frame).await.is_err() {
            // The client went: so does the command (killed on drop).
            return;
        }
    }
    for p in pumps {
        let _ = p.await;
    }
    let status = child.wait().await;
    if let Some(s) = stdin {
        s.abort();
    }
    use std::os::unix::process::ExitStatusExt;
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(_) => CANNOT_RUN,
    };
    let _ = to_client
        .write_all(&exec_frame(EXEC_EXIT_FRAME, &code.to_be_bytes()))
        .await;
    let _ = to_client.shutdown().await;
}
