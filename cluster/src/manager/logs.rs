//! Task output: agents push what their tasks print (POST /swarmkit/v1/agents/{id}/logs), the
//! manager keeps it (see `logstore`), and clients read it as
//! docker's daemon serves it: GET /services/{id}/logs and /tasks/{id}/logs, in the
//! multiplexed stream format (8-byte frame headers), with follow, tail, since, timestamps and
//! details. Agents push rather than being asked, so the same path works on every backend
//! (guests and remote hosts reach the manager; the manager cannot reach them).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{self, Query};
use super::lookup::find;
use super::shared::Shared;
use crate::store::State as StoreState;
use crate::tasklog::{LogPush, LogRecord};

/// How often a follower re-checks that what it follows still exists, when nothing is printed.
const FOLLOW_RECHECK: Duration = Duration::from_secs(1);

/// Docker's boolean query values: 1/true/True/... or 0/false/... (empty is false).
fn flag(name: &str, v: &Option<String>) -> ApiResult<bool> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("0") | Some("false") | Some("no") => Ok(false),
        Some("1") | Some("true") | Some("yes") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "invalid value {other:?} for {name}: use 1 or 0 (true or false)"
        ))),
    }
}

#[derive(Deserialize, Default)]
pub struct LogsQuery {
    stdout: Option<String>,
    stderr: Option<String>,
    follow: Option<String>,
    timestamps: Option<String>,
    details: Option<String>,
    tail: Option<String>,
    since: Option<String>,
}

struct Options {
    stdout: bool,
    stderr: bool,
    follow: bool,
    timestamps: bool,
    details: bool,
    tail: Option<usize>,
    since: Option<DateTime<Utc>>,
}

fn options(q: &LogsQuery) -> ApiResult<Options> {
    let o = Options {
        stdout: flag("stdout", &q.stdout)?,
        stderr: flag("stderr", &q.stderr)?,
        follow: flag("follow", &q.follow)?,
        timestamps: flag("timestamps", &q.timestamps)?,
        details: flag("details", &q.details)?,
        tail: match q.tail.as_deref() {
            None | Some("") | Some("all") => None,
            Some(n) => Some(n.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid tail {n:?}: give a number of lines or \"all\""
                ))
            })?),
        },
        since: match q.since.as_deref() {
            None | Some("") | Some("0") => None,
            Some(s) => Some(parse_since(s)?),
        },
    };
    if !o.stdout && !o.stderr {
        return Err(ApiError::BadRequest(
            "Bad parameters: you must choose at least one stream (stdout=1 or stderr=1)".into(),
        ));
    }
    Ok(o)
}

/// `since` as docker's client sends it: Unix seconds with optional nanoseconds (`SECS.NANOS`).
fn parse_since(s: &str) -> ApiResult<DateTime<Utc>> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid since {s:?}: give Unix seconds, optionally with .nanoseconds"
        ))
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    let (secs, nanos) = s.split_once('.').unwrap_or((s, "0"));
    let unsigned = secs.strip_prefix('-').unwrap_or(secs);
    // ASCII digits only, checked before anything is cut at a byte index: `str::parse` would
    // take a sign, and a multi-byte character cannot be cut.
    if !digits(unsigned) || !digits(nanos) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    // Docker's client sends nanoseconds; fewer digits are a fraction, more are cut.
    let nanos: u32 = format!("{nanos:0<9}")[..9].parse().map_err(|_| bad())?;
    DateTime::from_timestamp(secs, nanos).ok_or_else(bad)
}

/// Which tasks a request reads, and the details docker's CLI needs to name each line.
enum Target {
    Service(String),
    Task(String),
}

impl Target {
    fn tasks(&self, s: &StoreState) -> Option<Vec<String>> {
        match self {
            Target::Service(id) => s.services.get(id).map(|_| {
                let mut tasks: Vec<_> = s.tasks_of(id).collect();
                tasks.sort_by_key(|t| (t.slot, t.created));
                tasks.into_iter().map(|t| t.id.clone()).collect()
            }),
            Target::Task(id) => s.tasks.get(id).map(|_| vec![id.clone()]),
        }
    }
}

/// One frame of docker's multiplexed stream: stream type (1 stdout, 2 stderr), three zero
/// bytes, the payload length big-endian, the payload.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A line as dockerd's WriteLogStream writes it: `[TIMESTAMP ][DETAILS ]LINE\n`, details
/// as sorted, query-escaped `key=value` pairs joined by commas.
fn render(s: &StoreState, rec: &LogRecord, o: &Options) -> Vec<u8> {
    let mut line = String::new();
    if o.timestamps {
        line.push_str(&rec.time.to_rfc3339_opts(SecondsFormat::Nanos, true));
        line.push(' ');
    }
    if o.details {
        let (service, node) = s
            .tasks
            .get(&rec.task_id)
            .map(|t| (t.service_id.as_str(), t.node_id.as_str()))
            .unwrap_or_default();
        let attrs = [
            ("com.docker.swarm.node.id", node),
            ("com.docker.swarm.service.id", service),
            ("com.docker.swarm.task.id", rec.task_id.as_str()),
        ];
        let pairs: Vec<String> = attrs
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect();
        line.push_str(&pairs.join(","));
        line.push(' ');
    }
    line.push_str(&rec.line);
    if !line.ends_with('\n') {
        line.push('\n');
    }
    frame(rec.stream, line.as_bytes())
}

/// Go's url.QueryEscape, for the characters IDs and label keys can hold.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' | '~' => vec![c],
            ' ' => vec!['+'],
            _ => format!("%{:02X}", c as u32).chars().collect(),
        })
        .collect()
}

fn wanted(rec: &LogRecord, o: &Options) -> bool {
    (if rec.stream == crate::tasklog::STDERR {
        o.stderr
    } else {
        o.stdout
    }) && o.since.is_none_or(|t| rec.time > t)
}

async fn stream(m: Shared, target: Target, o: Options) -> ApiResult<Response> {
    let s = m.store.snapshot();
    let Some(tasks) = target.tasks(&s) else {
        return Err(ApiError::NotFound("no such service or task".into()));
    };
    let mut newest = m.logs.subscribe();
    let (first, mut seen) = m.logs.read(&tasks, 0, o.tail);
    let mut backlog = Vec::new();
    for (_, rec) in first.iter().filter(|(_, r)| wanted(r, &o)) {
        backlog.extend(render(&s, rec, &o));
    }
    let headers = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.docker.multiplexed-stream"),
    )];
    if !o.follow {
        return Ok((headers, backlog).into_response());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(backlog))).await.is_err() {
            return;
        }
        loop {
            // Wakes on new output, and now and then to notice the target is gone.
            let _ = tokio::time::timeout(FOLLOW_RECHECK, newest.changed()).await;
            let s = m.store.snapshot();
            let Some(tasks) = target.tasks(&s) else {
                return;
            };
            let (fresh, upto) = m.logs.read(&tasks, seen, None);
            seen = upto;
            let mut out = Vec::new();
            for (_, rec) in fresh.iter().filter(|(_, r)| wanted(r, &o)) {
                out.extend(render(&s, rec, &o));
            }
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Ok((headers, body).into_response())
}

pub async fn service_logs(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let o = options(&q)?;
    let id = {
        let s = m.store.snapshot();
        find(&s.services, &id, |x| &x.name, "service")?.id.clone()
    };
    stream(m, Target::Service(id), o).await
}

pub async fn task_logs(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let id = {
        let s = m.store.snapshot();
        find(&s.tasks, &id, |_| "", "task")?.id.clone()
    };
    logs_of_task(m, id, &q).await
}

/// One task's output (a node's `docker logs CONTAINER`, too), as docker streams it.
pub async fn logs_of_task(m: Shared, task_id: String, q: &LogsQuery) -> ApiResult<Response> {
    let o = options(q)?;
    stream(m, Target::Task(task_id), o).await
}

/// Agents push their tasks' output here.
/// `POST /swarmkit/v1/agent/logs`: what the node's tasks printed; records of tasks placed
/// elsewhere are dropped, so a node cannot write into another's logs.
pub async fn push(
    State(m): State<Shared>,
    super::trust::Caller(node): super::trust::Caller,
    extract::Json(mut p): extract::Json<LogPush>,
) -> axum::Json<serde_json::Value> {
    let s = m.store.snapshot();
    p.records.retain(|r| {
        s.tasks
            .get(&r.task_id)
            .is_some_and(|t| t.node_id == node.id)
    });
    m.logs.push(&s, p.records);
    axum::Json(serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_docker_headers() {
        let f = frame(2, b"oops\n");
        assert_eq!(&f[..8], &[2, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(&f[8..], b"oops\n");
    }

    #[test]
    fn since_and_flags_parse_as_docker_sends_them() {
        assert_eq!(
            parse_since("1700000000.5").unwrap(),
            DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap()
        );
        assert!(parse_since("soon").is_err());
        assert_eq!(
            parse_since("12.1234567891").unwrap(),
            DateTime::from_timestamp(12, 123_456_789).unwrap()
        );
        assert!(flag("follow", &Some("1".into())).unwrap());
        assert!(!flag("follow", &Some("false".into())).unwrap());
        assert!(flag("follow", &Some("maybe".into())).is_err());
        assert_eq!(escape("a=b,c d"), "a%3Db%2Cc+d");
    }

    #[test]
    fn malformed_since_is_refused_not_a_panic() {
        for s in [
            "1é",
            "é",
            "１２３",
            "1.é",
            "1.１２３",
            "1.12345678é",
            "12345678.1234567é",
            "+1",
            "1.+5",
            "1.-5",
            "-",
            ".",
            "1.",
            ".5",
            "1.2.3",
            " 1",
            "99999999999999999999",
        ] {
            let r = std::panic::catch_unwind(|| parse_since(s));
            match r {
                Ok(Err(ApiError::BadRequest(m))) => {
                    assert!(m.contains("invalid since"), "{s:?}: {m}")
                }
                Ok(other) => panic!("{s:?} was taken: {:?}", other.ok()),
                Err(_) => panic!("{s:?} panicked"),
            }
        }
    }
}
