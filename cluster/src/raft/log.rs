//! The Raft log and vote of one manager, in a redb file of their own (`raft.redb`): entries
//! by index, and the vote, the committed mark and the last purged id beside them. Every write
//! is a durable redb commit before openraft hears it is done, which is what lets a manager
//! that restarts vote and replicate as if it never stopped.

// openraft's storage traits answer with its `StorageError` (224 bytes); the helpers here
// answer in the same type rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Managers;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type Failed = StorageError<u64>;

/// One manager's log; clones share the file (openraft reads through one while it writes
/// through another).
#[derive(Clone)]
pub struct Log {
    db: Arc<Database>,
}

impl Log {
    pub fn open(path: &Path) -> Result<Log, Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::write_logs(anyerror(e)));
        let db = Database::create(path).map_err(|e| io(&e))?;
        let txn = db.begin_write().map_err(|e| io(&e))?;
        txn.open_table(ENTRIES).map_err(|e| io(&e))?;
        txn.open_table(MARKS).map_err(|e| io(&e))?;
        txn.commit().map_err(|e| io(&e))?;
        Ok(Log { db: Arc::new(db) })
    }

    /// Runs `f` on redb off the async workers: a durable commit is an fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, Failed> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Failed::from(StorageIOError::write_logs(anyerror(&e))))?
    }

    fn mark<T: DeserializeOwned>(db: &Database, name: &str) -> Result<Option<T>, Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::read_logs(anyerror(e)));
        let txn = db.begin_read().map_err(|e| io(&e))?;
        let table = txn.open_table(MARKS).map_err(|e| io(&e))?;
        let Some(bytes) = table.get(name).map_err(|e| io(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| io(&e))
    }

    fn set_mark<T: Serialize>(db: &Database, name: &str, value: &T) -> Result<(), Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::write_logs(anyerror(e)));
        let bytes = serde_json::to_vec(value).map_err(|e| io(&e))?;
        let txn = db.begin_write().map_err(|e| io(&e))?;
        txn.open_table(MARKS)
            .map_err(|e| io(&e))?
            .insert(name, bytes.as_slice())
            .map_err(|e| io(&e))?;
        txn.commit().map_err(|e| io(&e))
    }

    /// The entries held at `range`, in order.
    fn read(
        db: &Database,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<Managers>>, Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::read_logs(anyerror(e)));
        let txn = db.begin_read().map_err(|e| io(&e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| io(&e))?;
        let mut out = Vec::new();
        for row in table.range::<u64>(range).map_err(|e| io(&e))? {
            let (_, bytes) = row.map_err(|e| io(&e))?;
            out.push(serde_json::from_slice(bytes.value()).map_err(|e| io(&e))?);
        }
        Ok(out)
    }

    fn last(db: &Database) -> Result<Option<LogId<u64>>, Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::read_logs(anyerror(e)));
        let txn = db.begin_read().map_err(|e| io(&e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| io(&e))?;
        let Some((_, bytes)) = table.last().map_err(|e| io(&e))? else {
            return Ok(None);
        };
        let entry: Entry<Managers> = serde_json::from_slice(bytes.value()).map_err(|e| io(&e))?;
        Ok(Some(entry.log_id))
    }

    /// Removes the entries at `range` in one commit.
    fn remove(db: &Database, range: (Bound<u64>, Bound<u64>)) -> Result<(), Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::write_logs(anyerror(e)));
        let txn = db.begin_write().map_err(|e| io(&e))?;
        txn.open_table(ENTRIES)
            .map_err(|e| io(&e))?
            .retain_in::<u64, _>(range, |_, _| false)
            .map_err(|e| io(&e))?;
        txn.commit().map_err(|e| io(&e))
    }
}

impl Log {
    /// With no manager running on this log: makes `id` (as `member`) the only voter, in a
    /// membership entry after the last entry held (or `applied`, what the store applied,
    /// when compaction left none), under a term past any this log has seen. Started again,
    /// the manager elects itself and commits it: a quorum of one (docker's
    /// `--force-new-cluster`).
    pub fn force_alone(
        &self,
        id: u64,
        member: super::Member,
        applied: Option<LogId<u64>>,
    ) -> Result<LogId<u64>, Failed> {
        let io = |e: &dyn std::fmt::Display| Failed::from(StorageIOError::write_logs(anyerror(e)));
        let db = &self.db;
        let purged: Option<LogId<u64>> = Log::mark(db, PURGED)?;
        let last = Log::last(db)?.or(purged).max(applied);
        let vote: Option<Vote<u64>> = Log::mark(db, VOTE)?;
        let seen = vote
            .map(|v| v.leader_id().term)
            .max(last.map(|l| l.leader_id.term))
            .unwrap_or(0);
        let term = seen + 1;
        let log_id = LogId::new(
            openraft::CommittedLeaderId::new(term, id),
            last.map_or(1, |l| l.index + 1),
        );
        let entry: Entry<Managers> = Entry {
            log_id,
            payload: openraft::EntryPayload::Membership(openraft::Membership::new(
                vec![std::collections::BTreeSet::from([id])],
                std::collections::BTreeMap::from([(id, member)]),
            )),
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| io(&e))?;
        let vote = serde_json::to_vec(&Vote::new(term, id)).map_err(|e| io(&e))?;
        let txn = db.begin_write().map_err(|e| io(&e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| io(&e))?;
            table
                .insert(log_id.index, bytes.as_slice())
                .map_err(|e| io(&e))?;
            txn.open_table(MARKS)
                .map_err(|e| io(&e))?
                .insert(VOTE, vote.as_slice())
                .map_err(|e| io(&e))?;
        }
        txn.commit().map_err(|e| io(&e))?;
        Ok(log_id)
    }
}

/// openraft's errors carry an `AnyError`; ours are strings by then.
fn anyerror(e: &dyn std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}

fn owned(range: impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<Managers> for Log {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Managers>>, Failed> {
        let range = owned(range);
        self.blocking(move |db| Log::read(db, range)).await
    }
}

impl RaftLogStorage<Managers> for Log {
    type LogReader = Log;

    async fn get_log_state(&mut self) -> Result<LogState<Managers>, Failed> {
        self.blocking(|db| {
            let last_purged_log_id: Option<LogId<u64>> = Log::mark(db, PURGED)?;
            let last_log_id = Log::last(db)?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Log {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Failed> {
        let vote = *vote;
        self.blocking(move |db| Log::set_mark(db, VOTE, &vote))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Failed> {
        self.blocking(|db| Log::mark(db, VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Failed> {
        self.blocking(move |db| Log::set_mark(db, COMMITTED, &committed))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Failed> {
        self.blocking(|db| Ok(Log::mark::<Option<LogId<u64>>>(db, COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Managers>) -> Result<(), Failed>
    where
        I: IntoIterator<Item = Entry<Managers>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<Managers>> = entries.into_iter().collect();
        let written = self
            .blocking(move |db| {
                let io = |e: &dyn std::fmt::Display| {
                    Failed::from(StorageIOError::write_logs(anyerror(e)))
                };
                let txn = db.begin_write().map_err(|e| io(&e))?;
                {
                    let mut table = txn.open_table(ENTRIES).map_err(|e| io(&e))?;
                    for entry in &entries {
                        let bytes = serde_json::to_vec(entry).map_err(|e| io(&e))?;
                        table
                            .insert(entry.log_id.index, bytes.as_slice())
                            .map_err(|e| io(&e))?;
                    }
                }
                txn.commit().map_err(|e| io(&e))
            })
            .await;
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        written
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Failed> {
        self.blocking(move |db| Log::remove(db, owned(log_id.index..)))
            .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Failed> {
        self.blocking(move |db| {
            // The mark first: a crash between the two leaves entries below it, which a
            // restart ignores, never a gap openraft would read as lost entries.
            Log::set_mark(db, PURGED, &log_id)?;
            Log::remove(db, owned(..=log_id.index))
        })
        .await
    }
}
