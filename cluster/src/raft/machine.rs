//! The replicated state machine is the store itself: a committed entry's rows are applied
//! with [`Store::apply`], in the same redb transaction as the id of the entry that applied
//! them, so a manager that restarts resumes at the right entry. A snapshot is the store's
//! rows read in one transaction; installing one replaces them in one transaction.

// openraft's storage traits answer with its `StorageError` (224 bytes); the helpers here
// answer in the same type rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{Image, Managers, Member};
use crate::store::{Rows, Store};

type Failed = StorageError<u64>;

/// What the store records beside its rows: the last entry applied, and the membership as of
/// that entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
}

#[derive(Clone)]
pub struct Machine {
    store: Arc<Store>,
}

impl Machine {
    pub fn new(store: Arc<Store>) -> Machine {
        Machine { store }
    }

    /// Runs `f` on the store off the async workers: an apply is a durable commit.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, Failed> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Failed::from(StorageIOError::write_state_machine(anyerror(&e))))?
    }

    fn applied(store: &Store) -> Result<Applied, Failed> {
        let read = |e: &dyn std::fmt::Display| {
            Failed::from(StorageIOError::read_state_machine(anyerror(e)))
        };
        match store.applied().map_err(|e| read(&e))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| read(&e)),
            None => Ok(Applied::default()),
        }
    }
}

/// The last entry applied, and the membership as of it.
pub type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, Member>);

/// What `store` applied last.
pub fn applied_state(store: &Store) -> Result<AppliedState, Failed> {
    let applied = Machine::applied(store)?;
    Ok((applied.last, applied.membership))
}

fn anyerror(e: &dyn std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}

impl RaftSnapshotBuilder<Managers> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Managers>, Failed> {
        self.blocking(|store| {
            let read = |e: &dyn std::fmt::Display| {
                Failed::from(StorageIOError::read_snapshot(None, anyerror(e)))
            };
            let (rows, applied) = store.export().map_err(|e| read(&e))?;
            let applied: Applied = match applied {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| read(&e))?,
                None => Applied::default(),
            };
            let snapshot_id = match applied.last {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_string(),
            };
            Ok(Snapshot {
                meta: SnapshotMeta {
                    last_log_id: applied.last,
                    last_membership: applied.membership,
                    snapshot_id,
                },
                snapshot: Box::new(Image {
                    rows: super::Write::from_rows(rows).rows,
                }),
            })
        })
        .await
    }
}

impl RaftStateMachine<Managers> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), Failed> {
        self.blocking(|store| {
            let applied = Machine::applied(store)?;
            Ok((applied.last, applied.membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, Failed>
    where
        I: IntoIterator<Item = Entry<Managers>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<Managers>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |store| {
            // The whole batch in one transaction: rows in log order, so a later entry's
            // row for a key is the one that stays.
            let mut applied = Machine::applied(store)?;
            let mut rows: Rows = Vec::new();
            for entry in &entries {
                applied.last = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(write) => rows.extend(super::rows_of(&write.rows)),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m.clone())
                    }
                }
            }
            let last = applied.last.expect("a batch has a last entry");
            let write =
                |e: &dyn std::fmt::Display| Failed::from(StorageIOError::apply(last, anyerror(e)));
            let marks = serde_json::to_vec(&applied).map_err(|e| write(&e))?;
            store.apply(&rows, &marks).map_err(|e| write(&e))?;
            Ok(vec![(); entries.len()])
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Machine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Image>, Failed> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Image>,
    ) -> Result<(), Failed> {
        let applied = Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let signature = meta.signature();
        self.blocking(move |store| {
            let write = |e: &dyn std::fmt::Display| {
                Failed::from(StorageIOError::write_snapshot(
                    Some(signature.clone()),
                    anyerror(e),
                ))
            };
            let marks = serde_json::to_vec(&applied).map_err(|e| write(&e))?;
            store
                .install(&super::rows_of(&snapshot.rows), &marks)
                .map_err(|e| write(&e))
        })
        .await
    }

    /// The store is always its own latest snapshot.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Managers>>, Failed> {
        let applied = self.blocking(Machine::applied).await?;
        if applied.last.is_none() {
            return Ok(None);
        }
        self.build_snapshot().await.map(Some)
    }
}
