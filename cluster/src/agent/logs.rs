//! Task output on the node: each task's stdout and stderr are FIFOs in its run directory that
//! the agent reads line by line, stamps with the time and pushes to the manager, which keeps
//! them for `service logs`. Lines wait in a bounded buffer while the manager is away; past the
//! bound the oldest go.
//!
//! FIFOs rather than pipes, for the agent's restarts: the task holds each FIFO open for reading
//! and writing (as containerd's shims do for docker's live restore), so its writes never fail
//! while no agent reads, and a restarted agent that adopts the task reopens them and reads on
//! where its predecessor stopped, losing and repeating nothing. With no agent for long, a task
//! that fills a FIFO's buffer (64 KiB) waits, as docker's do.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::ManagerClient;
use crate::tasklog::{
    LogPush, LogRecord, PUSH_BATCH_MAX, PUSH_ENVELOPE, STDERR, STDOUT, encoded_len,
};

/// docker's json-file driver splits lines at 16 KiB too.
const MAX_LINE: usize = 16 * 1024;
/// What the agent holds for the manager at most; older lines are dropped past it.
const PENDING_MAX: usize = 4 * 1024 * 1024;
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogRecord>,
}

impl LogSink {
    /// Starts the pusher; it ends when every sink and reader is gone.
    pub fn start(client: ManagerClient) -> LogSink {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(push(client, rx));
        LogSink { tx }
    }

    /// Reads the task's output FIFOs in `dir` until every writer is gone (the task and its
    /// children exited). For a new task, call it between [`outputs`] and the spawn, while the
    /// agent's own ends keep the FIFOs open.
    pub fn follow(&self, task_id: &str, dir: &Path) -> std::io::Result<()> {
        for (file, stream) in STREAMS {
            let r = tokio::net::unix::pipe::OpenOptions::new().open_receiver(dir.join(file))?;
            tokio::spawn(read(r, task_id.to_string(), stream, self.tx.clone()));
        }
        Ok(())
    }
}

const STREAMS: [(&str, u8); 2] = [("stdout", STDOUT), ("stderr", STDERR)];

/// Makes the task's output FIFOs in `dir` (anew: a stale one may hold a dead task's lines)
/// and opens each for reading and writing: what the task gets as stdout and stderr.
pub fn outputs(dir: &Path) -> std::io::Result<[OwnedFd; 2]> {
    std::fs::create_dir_all(dir)?;
    let open = |file: &str| -> std::io::Result<OwnedFd> {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        // Opening a FIFO for reading and writing never waits for the other side (Linux).
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(f.into())
    };
    Ok([open(STREAMS[0].0)?, open(STREAMS[1].0)?])
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

/// Lines waiting for the manager, oldest first, each with its weight in a push.
#[derive(Default)]
struct Pending {
    records: VecDeque<(LogRecord, usize)>,
    /// What the lines hold (not their encoding): what PENDING_MAX bounds.
    bytes: usize,
    dropped: u64,
}

impl Pending {
    fn add(&mut self, r: LogRecord) {
        self.bytes += r.line.len();
        let weight = encoded_len(&r);
        self.records.push_back((r, weight));
        while self.bytes > PENDING_MAX
            && let Some((old, _)) = self.records.pop_front()
        {
            self.bytes -= old.line.len();
            self.dropped += 1;
        }
    }

    /// The oldest lines that fit in one push by their encoded weight (at least one: no line
    /// outweighs a push, see `MAX_LINE`).
    fn batch(&self) -> LogPush {
        // Every record but the first follows a comma: one byte each, less one.
        let mut size = PUSH_ENVELOPE - 1;
        let count = self
            .records
            .iter()
            .take_while(|(_, weight)| {
                size += weight + 1;
                size <= PUSH_BATCH_MAX
            })
            .count()
            .max(1);
        LogPush {
            records: self
                .records
                .iter()
                .take(count)
                .map(|(r, _)| r.clone())
                .collect(),
        }
    }

    /// The manager took the oldest `count`.
    fn sent(&mut self, count: usize) {
        for (r, _) in self.records.drain(..count.min(self.records.len())) {
            self.bytes -= r.line.len();
        }
    }
}

async fn push(client: ManagerClient, mut rx: mpsc::Receiver<LogRecord>) {
    let uri = crate::protocol::LOGS;
    let mut pending = Pending::default();
    loop {
        if pending.records.is_empty() {
            match rx.recv().await {
                Some(r) => pending.add(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.add(r);
        }
        if pending.dropped > 0 {
            tracing::warn!(
                "the manager is not taking task output: dropped {} old lines",
                pending.dropped
            );
            pending.dropped = 0;
        }
        let batch = pending.batch();
        match client.post::<_, serde_json::Value>(uri, &batch).await {
            Ok(_) => pending.sent(batch.records.len()),
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

    /// What a task wrote while no agent read arrives once one follows again, once, and the
    /// reader ends when the task's ends close.
    #[test]
    fn output_survives_an_agent_that_goes_away() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("swarmkit-fifo-{}", std::process::id()));
        let [out, err] = outputs(&dir).unwrap();
        let mut task_out = std::fs::File::from(out);
        // Each runtime stands for one agent: dropping it closes its readers, as an exit would.
        let agent = || tokio::runtime::Runtime::new().unwrap();
        let follow = |rt: &tokio::runtime::Runtime| {
            let (tx, rx) = mpsc::channel(64);
            rt.block_on(async { LogSink { tx }.follow("t", &dir) })
                .unwrap();
            rx
        };
        let first = agent();
        let mut rx = follow(&first);
        writeln!(task_out, "before").unwrap();
        let r = first.block_on(rx.recv()).unwrap();
        assert_eq!((r.line.as_str(), r.stream), ("before", STDOUT));
        drop(first);
        writeln!(task_out, "while away").unwrap();
        let second = agent();
        let mut rx = follow(&second);
        let r = second.block_on(rx.recv()).unwrap();
        assert_eq!(r.line, "while away");
        drop((task_out, err));
        assert!(
            second.block_on(rx.recv()).is_none(),
            "the readers end with the task's ends"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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

    /// Output that JSON escapes (NULs, control characters, quotes) weighs up to six times its
    /// length in a push: every push still fits, and every line arrives, once and in order.
    #[tokio::test]
    async fn escaped_output_is_pushed_in_batches_that_fit() {
        let mut input = Vec::new();
        for i in 0..400u32 {
            input.extend(std::iter::repeat_n(0u8, 2000 + (i as usize % 7) * 300));
            input.extend((1u8..0x20).filter(|b| *b != b'\n'));
            input.extend(b"\"\\");
            input.push(b'\n');
        }
        // One line of NULs longer than MAX_LINE, cut into pieces.
        input.extend(std::iter::repeat_n(0u8, 3 * MAX_LINE + 5));
        input.push(b'\n');
        let (tx, mut rx) = mpsc::channel(input.len());
        read(input.as_slice(), "t".into(), STDOUT, tx).await;
        let mut printed = Vec::new();
        while let Ok(r) = rx.try_recv() {
            printed.push(r);
        }
        let raw: usize = printed.iter().map(|r| r.line.len()).sum();
        assert!(raw < PENDING_MAX, "nothing here may be dropped: {raw}");

        let mut pending = Pending::default();
        for r in printed.iter().cloned() {
            pending.add(r);
        }
        let mut arrived = Vec::new();
        let mut pushes = 0;
        while !pending.records.is_empty() {
            let batch = pending.batch();
            let body = serde_json::to_vec(&batch).unwrap();
            assert!(
                body.len() <= PUSH_BATCH_MAX,
                "push {pushes} weighs {} encoded",
                body.len()
            );
            pending.sent(batch.records.len());
            arrived.extend(batch.records);
            pushes += 1;
        }
        assert_eq!(pending.dropped, 0);
        assert_eq!(arrived, printed);
        assert!(pushes > 1);
    }
}
