//! What the manager keeps of its tasks' output: the last LOG_PER_TASK bytes of each task, in
//! memory, numbered so that followers read on from where they were. Output of tasks the store
//! has forgotten goes with them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::store::State as StoreState;
use crate::tasklog::LogRecord;

/// What the manager keeps of one task's output; older lines are dropped first.
pub const LOG_PER_TASK: usize = 1024 * 1024;

struct Entry {
    seq: u64,
    rec: LogRecord,
}

#[derive(Default)]
struct TaskLog {
    entries: VecDeque<Entry>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    tasks: HashMap<String, TaskLog>,
}

pub struct Logs {
    inner: Mutex<Inner>,
    /// The sequence number of the newest line; followers wait on it.
    newest: watch::Sender<u64>,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            inner: Mutex::new(Inner::default()),
            newest: watch::channel(0).0,
        }
    }
}

impl Logs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the lines of tasks the store knows; output of tasks it has forgotten (pruned
    /// history) goes with them.
    pub fn push(&self, state: &StoreState, records: Vec<LogRecord>) {
        let mut inner = self.lock();
        inner.tasks.retain(|id, _| state.tasks.contains_key(id));
        for rec in records {
            if !state.tasks.contains_key(&rec.task_id) {
                continue;
            }
            inner.next_seq += 1;
            let seq = inner.next_seq;
            let log = inner.tasks.entry(rec.task_id.clone()).or_default();
            log.bytes += rec.line.len();
            log.entries.push_back(Entry { seq, rec });
            while log.bytes > LOG_PER_TASK
                && let Some(old) = log.entries.pop_front()
            {
                log.bytes -= old.rec.line.len();
            }
        }
        let newest = inner.next_seq;
        drop(inner);
        self.newest.send_replace(newest);
    }

    /// Wakes on every line pushed: its value is the newest line's sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// Lines of `tasks` newer than `after`, oldest first; with `tail`, only each task's last
    /// `tail` of them.
    pub fn read(
        &self,
        tasks: &[String],
        after: u64,
        tail: Option<usize>,
    ) -> (Vec<(u64, LogRecord)>, u64) {
        let inner = self.lock();
        let mut out = Vec::new();
        for id in tasks {
            let Some(log) = inner.tasks.get(id) else {
                continue;
            };
            let fresh: Vec<&Entry> = log.entries.iter().filter(|e| e.seq > after).collect();
            let skip = tail.map_or(0, |t| fresh.len().saturating_sub(t));
            out.extend(fresh[skip..].iter().map(|e| (e.seq, e.rec.clone())));
        }
        out.sort_by_key(|(seq, rec)| (rec.time, *seq));
        (out, inner.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn each_task_keeps_its_newest_output_within_its_bound() {
        let logs = Logs::default();
        let mut state = StoreState::default();
        let task = |id: &str| crate::model::Task {
            id: id.into(),
            service_id: "s".into(),
            slot: 1,
            node_id: "n".into(),
            created: Utc::now(),
            updated: Utc::now(),
            version: 0,
            desired: crate::model::TaskState::Running,
            status: crate::model::TaskStatus {
                state: crate::model::TaskState::Running,
                timestamp: Utc::now(),
                message: String::new(),
                err: None,
                pid: None,
                exit_code: None,
            },
            attachments: vec![],
            spec_generation: 1,
            start_after: None,
            drain_version: None,
            running_version: None,
            restarts: 0,
        };
        state.put_task(task("t1"));
        let line = "x".repeat(1000);
        let records = (0..2000)
            .map(|i| LogRecord {
                task_id: if i == 0 { "gone".into() } else { "t1".into() },
                stream: 1,
                time: Utc::now(),
                line: format!("{i} {line}"),
            })
            .collect();
        logs.push(&state, records);
        let (all, _) = logs.read(&["t1".into(), "gone".into()], 0, None);
        let bytes: usize = all.iter().map(|(_, r)| r.line.len()).sum();
        assert!(bytes <= LOG_PER_TASK, "{bytes}");
        assert!(all.last().unwrap().1.line.starts_with("1999 "));
        let (tail, _) = logs.read(&["t1".into()], 0, Some(2));
        assert_eq!(tail.len(), 2);
        assert!(tail[0].1.line.starts_with("1998 "));
    }
}
