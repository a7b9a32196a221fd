//! `docker exec` on a node's socket, as dockerd runs it: the client creates an exec instance
//! for a container (a task on that node), starts it with an HTTP upgrade to a raw stream, and
//! asks for its exit code once the stream ends. The process runs on the node: its agent
//! long-polls the sessions started there (`protocol::EXECS`), runs each inside the task and
//! attaches with an upgrade of its own; the manager splices the two streams, passing docker's
//! stdout/stderr frames through and keeping the exit status the agent sends last.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{ApiError, ApiResult};
use super::execstore::Phase;
use super::shared::Shared;
use super::trust::Caller;
use crate::protocol::{EXEC_EXIT_FRAME, ExecRequest, exec_frame};

/// How long a started session waits for its node's agent to take it.
const TAKE_DEADLINE: Duration = Duration::from_secs(20);
use crate::protocol::EXECS_HOLD as POLL_HOLD;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StartBody {
    #[serde(default)]
    detach: bool,
    #[serde(default)]
    tty: bool,
}

fn switching() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(
            header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )
        .body(Body::empty())
        .expect("static response")
}

/// `POST /exec/{id}/start` on a node's socket: the client's end, upgraded; queued for the
/// node's agent, failed with a message on stderr if the agent does not take it in time.
pub async fn start(m: Shared, node_id: &str, id: String, mut req: Request) -> ApiResult<Response> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the exec start request: {e}")))?;
    let body: StartBody = if bytes.is_empty() {
        StartBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the exec start body: {e}")))?
    };
    if body.detach {
        return Err(ApiError::BadRequest(
            "docker exec -d is not supported on a swarmkit node yet: leave out -d".into(),
        ));
    }
    if body.tty {
        return Err(ApiError::BadRequest(
            "swarmkit's docker exec has no TTY yet: leave out -t".into(),
        ));
    }
    {
        let s = m.execs.sessions();
        match s.get(&id) {
            Some(x) if x.node_id == node_id && x.phase == Phase::Created => {}
            Some(x) if x.node_id == node_id => {
                return Err(ApiError::Conflict(format!(
                    "exec {id} has already been started"
                )));
            }
            _ => return Err(ApiError::NotFound(format!("No such exec instance: {id}"))),
        }
    }
    let m2 = m.clone();
    tokio::spawn(async move {
        let client = match on_upgrade.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("exec {id}: the client's upgrade failed: {e}");
                m2.execs.end(&id, None);
                return;
            }
        };
        if let Some(s) = m2.execs.sessions().get_mut(&id) {
            s.client = Some(client);
            s.phase = Phase::Queued;
        }
        m2.execs.bump();
        tokio::time::sleep(TAKE_DEADLINE).await;
        let left = {
            let mut s = m2.execs.sessions();
            s.get_mut(&id)
                .filter(|x| x.phase == Phase::Queued)
                .and_then(|x| x.client.take())
        };
        if let Some(client) = left {
            m2.execs.end(&id, Some(126));
            let mut io = TokioIo::new(client);
            let why = format!(
                "the node's agent did not take this exec within {}s: is the node up? \
                 (swarmkit node ls)\n",
                TAKE_DEADLINE.as_secs()
            );
            let _ = io.write_all(&exec_frame(2, why.as_bytes())).await;
            let _ = io.shutdown().await;
        }
    });
    Ok(switching())
}

/// `GET /exec/{id}/json`: what docker's CLI reads the exit code from.
pub fn inspect(m: &Shared, node_id: &str, id: &str) -> ApiResult<serde_json::Value> {
    let s = m.execs.sessions();
    let x = s
        .get(id)
        .filter(|x| x.node_id == node_id)
        .ok_or_else(|| ApiError::NotFound(format!("No such exec instance: {id}")))?;
    Ok(serde_json::json!({
        "ID": id,
        "Running": matches!(x.phase, Phase::Queued | Phase::Running),
        "ExitCode": x.exit_code,
        "ProcessConfig": {
            "tty": false,
            "entrypoint": x.argv.first(),
            "arguments": x.argv.get(1..).unwrap_or_default(),
            "privileged": false,
        },
        "OpenStdin": x.stdin,
        "OpenStderr": true,
        "OpenStdout": true,
        "CanRemove": false,
        "ContainerID": x.task_id,
        "DetachKeys": "",
        "Pid": 0,
    }))
}

/// `GET EXECS`: the sessions queued for the calling node, held until there is one.
pub async fn poll(State(m): State<Shared>, Caller(node): Caller) -> Json<Vec<ExecRequest>> {
    let deadline = tokio::time::Instant::now() + POLL_HOLD;
    loop {
        let mut woken = m.execs.wake();
        let taken: Vec<ExecRequest> = {
            let mut s = m.execs.sessions();
            s.iter_mut()
                .filter(|(_, x)| x.node_id == node.id && x.phase == Phase::Queued)
                .map(|(id, x)| {
                    x.phase = Phase::Running;
                    ExecRequest {
                        session: id.clone(),
                        task_id: x.task_id.clone(),
                        argv: x.argv.clone(),
                        env: x.env.clone(),
                        stdin: x.stdin,
                    }
                })
                .collect()
        };
        if !taken.is_empty() {
            return Json(taken);
        }
        if tokio::time::timeout_at(deadline, woken.changed())
            .await
            .is_err()
        {
            return Json(Vec::new());
        }
    }
}

/// `POST EXECS/{session}`: the agent's end of a session it took, upgraded and spliced to the
/// client's.
pub async fn attach(
    State(m): State<Shared>,
    Caller(node): Caller,
    Path(id): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let client = {
        let mut s = m.execs.sessions();
        let x = s
            .get_mut(&id)
            .filter(|x| x.node_id == node.id && x.phase == Phase::Running)
            .ok_or_else(|| ApiError::NotFound(format!("no exec session {id} for this node")))?;
        x.client
            .take()
            .ok_or_else(|| ApiError::Conflict(format!("exec session {id} is attached already")))?
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(agent) => {
                splice(TokioIo::new(client), TokioIo::new(agent), |code| {
                    m.execs.end(&id, code)
                })
                .await
            }
            Err(e) => {
                tracing::debug!("exec {id}: the agent's upgrade failed: {e}");
                m.execs.end(&id, None);
            }
        }
    });
    Ok(switching().into_response())
}

/// Client stdin to the agent as it comes; the agent's frames to the client, but for the exit
/// status, which is the session's: handed to `ended` once the agent's end closes, before the
/// client's does (the client asks for it as soon as its stream ends).
async fn splice<C, A>(client: C, agent: A, ended: impl FnOnce(Option<i64>))
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut agent_rx, mut agent_tx) = tokio::io::split(agent);
    let stdin = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut agent_tx).await;
        // The client closed its write side (stdin's end): so does the process's stdin.
        let _ = agent_tx.shutdown().await;
    });
    let mut code = None;
    let mut header = [0u8; 8];
    while agent_rx.read_exact(&mut header).await.is_ok() {
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut data = vec![0u8; len];
        if agent_rx.read_exact(&mut data).await.is_err() {
            break;
        }
        if header[0] == EXEC_EXIT_FRAME {
            code = data
                .get(..4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64);
            break;
        }
        if client_tx
            .write_all(&exec_frame(header[0], &data))
            .await
            .is_err()
        {
            break;
        }
    }
    stdin.abort();
    ended(code);
    let _ = client_tx.shutdown().await;
}
