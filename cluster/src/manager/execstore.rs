//! The `docker exec` sessions of the nodes' sockets (see `exec`): what each runs where, how
//! far it is, the client's end while it waits for the node's agent, and the exit status
//! kept for the client's last question. Ended sessions are kept up to [`KEPT`].

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Ended sessions kept for their exit code, at most.
const KEPT: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Created,
    /// Started by the client, waiting for the agent.
    Queued,
    Running,
    Ended,
}

pub(super) struct Session {
    pub(super) node_id: String,
    pub(super) task_id: String,
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<String>,
    pub(super) stdin: bool,
    pub(super) phase: Phase,
    pub(super) exit_code: Option<i64>,
    pub(super) client: Option<hyper::upgrade::Upgraded>,
    pub(super) seq: u64,
}

#[derive(Default)]
pub struct Execs {
    sessions: Mutex<HashMap<String, Session>>,
    /// Bumped whenever a session is queued, to wake the agents' polls.
    queued: Mutex<Option<watch::Sender<u64>>>,
    pub(super) seq: std::sync::atomic::AtomicU64,
}

impl Execs {
    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn wake(&self) -> watch::Receiver<u64> {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        q.get_or_insert_with(|| watch::channel(0).0).subscribe()
    }

    pub(super) fn bump(&self) {
        if let Some(tx) = self
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// A new session for task `task_id` on node `node_id`; the oldest ended ones go past
    /// [`KEPT`].
    pub fn create(
        &self,
        node_id: &str,
        task_id: &str,
        argv: Vec<String>,
        env: Vec<String>,
        stdin: bool,
    ) -> String {
        let id = crate::ids::new_hex_id();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.sessions();
        if s.len() >= KEPT {
            let mut ended: Vec<(u64, String)> = s
                .iter()
                .filter(|(_, v)| v.phase == Phase::Ended)
                .map(|(k, v)| (v.seq, k.clone()))
                .collect();
            ended.sort();
            for (_, k) in ended.iter().take(s.len() + 1 - KEPT) {
                s.remove(k);
            }
        }
        s.insert(
            id.clone(),
            Session {
                node_id: node_id.to_string(),
                task_id: task_id.to_string(),
                argv,
                env,
                stdin,
                phase: Phase::Created,
                exit_code: None,
                client: None,
                seq,
            },
        );
        id
    }

    pub(super) fn end(&self, id: &str, code: Option<i64>) {
        if let Some(s) = self.sessions().get_mut(id) {
            s.phase = Phase::Ended;
            s.exit_code = code.or(s.exit_code);
            s.client = None;
        }
    }
}
