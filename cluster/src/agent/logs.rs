//! Task output on the node: each task's stdout and stderr are pipes the agent reads line by
//! line, stamps with the time and pushes to the manager, which keeps them for `service logs`.
//! Lines wait in a bounded buffer while the manager is away; past the bound the oldest go.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::ManagerClient;
use crate::protocol::PREFIX;
use crate::tasklog::{LogPush, LogRecord, PUSH_PATH, STDERR, STDOUT};

/// docker's json-file driver splits lines at 16 KiB too.
const MAX_LINE: usize = 16 * 1024;
/// What the agent holds for the manager at most; older lines are dropped past it.
const PENDING_MAX: usize = 4 * 1024 * 1024;
/// At most this much goes in one push.
const BATCH_MAX: usize = 256 * 1024;
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogRecord>,
}

impl LogSink {
    /// Starts the pusher; it ends when every sink and reader is gone.
    pub fn start(client: ManagerClient, node_id: String) -> LogSink {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(push(client, node_id, rx));
        LogSink { tx }
    }

    /// Reads the task's output until it closes its ends of the pipes.
    pub fn capture(&self, task_id: &str, child: &mut tokio::process::Child) {
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read(out, task_id.to_string(), STDOUT, self.tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(read(err, task_id.to_string(), STDERR, self.tx.clone()));
        }
    }
}

async fn read(
    mut r: impl AsyncRead + Unpin,
    task_id: String,
    stream: u8,
    tx: mpsc::Sender<LogRecord>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let emit = |bytes: &[u8]| LogRecord {
        task_id: task_id.clone(),
        stream,
        time: chrono::Utc::now(),
        line: String::from_utf8_lossy(bytes).into_owned(),
    };
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(task = task_id, "reading task output: {e}");
                0
            }
        };
        if n == 0 {
            if !buf.is_empty() {
                let _ = tx.send(emit(&buf)).await;
            }
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            // A line can outgrow MAX_LINE between two reads; it is cut like an unended one.
            let body = &line[..pos];
            let pieces: Vec<&[u8]> = if body.is_empty() {
                vec![body]
            } else {
                body.chunks(MAX_LINE).collect()
            };
            for piece in pieces {
                if tx.send(emit(piece)).await.is_err() {
                    return;
                }
            }
        }
        while buf.len() >= MAX_LINE {
            let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
            if tx.send(emit(&piece)).await.is_err() {
                return;
            }
        }
    }
}

async fn push(client: ManagerClient, node_id: String, mut rx: mpsc::Receiver<LogRecord>) {
    let uri = format!("{PREFIX}/{node_id}/{PUSH_PATH}");
    let mut pending: VecDeque<LogRecord> = VecDeque::new();
    let mut bytes = 0usize;
    let mut dropped = 0u64;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    bytes += r.line.len();
                    pending.push_back(r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            bytes += r.line.len();
            pending.push_back(r);
        }
        while bytes > PENDING_MAX
            && let Some(old) = pending.pop_front()
        {
            bytes -= old.line.len();
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!("the manager is not taking task output: dropped {dropped} old lines");
            dropped = 0;
        }
        let mut size = 0;
        let count = pending
            .iter()
            .take_while(|r| {
                size += r.line.len();
                size <= BATCH_MAX
            })
            .count()
            .max(1);
        let batch = LogPush {
            records: pending.iter().take(count).cloned().collect(),
        };
        match client.post::<_, serde_json::Value>(&uri, &batch).await {
            Ok(_) => {
                for r in pending.drain(..count) {
                    bytes -= r.line.len();
                }
            }
            Err(e) => {
                tracing::debug!("pushing task output: {e}");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_splits_into_lines_and_long_lines_into_pieces() {
        let (tx, mut rx) = mpsc::channel(64);
        let long = "y".repeat(MAX_LINE + 10);
        let input = format!("one\ntwo\n{long}\nlast");
        read(input.as_bytes(), "t".into(), STDERR, tx).await;
        let mut lines = Vec::new();
        while let Ok(r) = rx.try_recv() {
            assert_eq!((r.task_id.as_str(), r.stream), ("t", STDERR));
            lines.push(r.line);
        }
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(&lines[..2], &["one", "two"]);
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "y".repeat(10));
        assert_eq!(lines[4], "last");
    }
}
