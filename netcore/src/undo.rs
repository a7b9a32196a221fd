//! What the dataplane changed in a namespace it does not own (an ssh node's namespace is its
//! owner's host): the nft tables it created, each sysctl's value before its first change, and
//! the reqid that marks its xfrm SAs and policies (see `xfrm::Owner::shared`).
//! The journal is a file, written before each change, so that teardown (another process,
//! later, after the agent is gone) removes exactly those tables and puts those values back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::lb::LbError;
use crate::lb::nftbatch::apply_nft;
use crate::netns::NetNs;
use crate::xfrm::{Ipsec, Owner};

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("undo journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("undo journal {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    NetNs(#[from] crate::netns::NetNsError),
    #[error(transparent)]
    Nft(#[from] LbError),
    #[error(
        "could not undo {}; the journal {path} is kept, so the same teardown run again \
         retries what is left",
        .failed.join("; "),
        path = .path.display()
    )]
    Incomplete { path: PathBuf, failed: Vec<String> },
}

type Result<T> = std::result::Result<T, UndoError>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// `ip` tables by name.
    tables: BTreeSet<String>,
    /// Sysctl key -> its value before the first change.
    sysctls: BTreeMap<String, String>,
    /// Reqids whose xfrm SAs and policies are ours (journals from before had none).
    #[serde(default)]
    xfrm_reqids: BTreeSet<u32>,
}

/// The journal of one namespace's changes, shared by everything that changes it.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    lock: Mutex<()>,
}

fn load(path: &Path) -> Result<Record> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| UndoError::Corrupt {
            path: path.into(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(UndoError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn save(path: &Path, r: &Record) -> Result<()> {
    let io = |source| UndoError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(r).expect("the record serializes");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Journal {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Journal {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Record) -> bool) -> Result<()> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = load(&self.path)?;
        if f(&mut r) {
            save(&self.path, &r)?;
        }
        Ok(())
    }

    /// Notes that the `ip` table `name` is (about to be) created.
    pub fn table(&self, name: &str) -> Result<()> {
        self.update(|r| r.tables.insert(name.to_string()))
    }

    /// Notes that xfrm SAs and policies with `reqid` are (about to be) created.
    pub fn xfrm_reqid(&self, reqid: u32) -> Result<()> {
        self.update(|r| r.xfrm_reqids.insert(reqid))
    }

    /// Sets a sysctl in `ns`, noting its value first unless an earlier change noted it.
    pub fn set_sysctl(&self, ns: &NetNs, key: &str, value: &str) -> Result<()> {
        let old = ns.sysctl(key)?;
        self.update(|r| r.note_sysctl(key, old))?;
        ns.set_sysctl(key, value)?;
        Ok(())
    }
}

impl Record {
    /// Keeps the value from before the first change: later ones saw our own writes.
    fn note_sysctl(&mut self, key: &str, old: String) -> bool {
        if self.sysctls.contains_key(key) {
            return false;
        }
        self.sysctls.insert(key.to_string(), old);
        true
    }
}

/// Undoes what the journal at `path` lists, in `ns`, then removes the journal: xfrm state with
/// a journaled reqid and tables are deleted (missing ones are fine), sysctls get their old
/// values back. Every step is tried; if any failed the journal stays (`Incomplete`), so the
/// undo can be repeated.
pub async fn undo(path: &Path, ns: &NetNs) -> Result<()> {
    let r = match std::fs::metadata(path) {
        Ok(_) => load(path)?,
        Err(_) => return Ok(()),
    };
    let mut failed = Vec::new();
    // Before the tables: the marking table gone, packets would leave past the policies.
    for &reqid in &r.xfrm_reqids {
        let removed = match Ipsec::owned_by(ns, Owner::of_reqid(reqid)) {
            Ok(ipsec) => ipsec.remove_all().await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            failed.push(format!("xfrm state with reqid {reqid:#x}: {e}"));
        }
    }
    for t in &r.tables {
        // Declaring it first makes the delete succeed whether or not it still exists.
        if let Err(e) = apply_nft(ns, &format!("table ip {t} {{}}\ndelete table ip {t}\n")) {
            failed.push(format!("table ip {t}: {e}"));
        }
    }
    for (key, value) in &r.sysctls {
        if let Err(e) = ns.set_sysctl(key, value) {
            failed.push(format!("sysctl {key}={value}: {e}"));
        }
    }
    if !failed.is_empty() {
        return Err(UndoError::Incomplete {
            path: path.into(),
            failed,
        });
    }
    std::fs::remove_file(path).map_err(|source| UndoError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_before_the_first_change_is_kept() {
        let mut r = Record::default();
        assert!(r.note_sysctl("net/ipv4/ip_forward", "0".into()));
        assert!(!r.note_sysctl("net/ipv4/ip_forward", "1".into()));
        assert_eq!(r.sysctls["net/ipv4/ip_forward"], "0");
    }

    fn scratch(tag: &str) -> Option<(String, NetNs, PathBuf)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return None;
        }
        let name = format!("sktest-undo-{tag}-{}", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        let path = std::env::temp_dir().join(format!("{name}.json"));
        Some((name, ns, path))
    }

    /// In a namespace of its own: a journaled table and sysctl are undone, and the journal
    /// goes with them.
    #[tokio::test]
    async fn undo_removes_the_tables_and_restores_the_sysctls() {
        let Some((name, ns, path)) = scratch("ok") else {
            return;
        };
        let key = "net/ipv4/conf/all/route_localnet";
        let before = ns.sysctl(key).unwrap();
        let flipped = if before == "0" { "1" } else { "0" };
        let j = Journal::new(&path);
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.table("sktest_a_ingress").unwrap();
        apply_nft(&ns, "table ip sktest_a_ingress {}\n").unwrap();
        assert_eq!(ns.sysctl(key).unwrap(), flipped);

        let undone = undo(&path, &ns).await;
        let tables = crate::lb::nftbatch::run_nft(&ns, &["list", "tables"], None).unwrap();
        let after = ns.sysctl(key).unwrap();
        let again = undo(&path, &ns).await;
        NetNs::delete(&name).unwrap();
        undone.unwrap();
        assert!(!tables.contains("sktest_a_ingress"), "{tables}");
        assert_eq!(after, before);
        assert!(!path.exists(), "the journal outlived the undo");
        again.expect("a second undo is a no-op");
    }

    /// A step that fails leaves the journal, with an error naming the step and how to retry,
    /// while the other steps are still done; once the cause is gone, the retry finishes.
    #[tokio::test]
    async fn a_failed_step_keeps_the_journal_for_a_retry() {
        let Some((name, ns, path)) = scratch("fail") else {
            return;
        };
        let j = Journal::new(&path);
        j.table("sktest_b_ingress").unwrap();
        apply_nft(&ns, "table ip sktest_b_ingress {}\n").unwrap();
        // A sysctl of a device that is not there: writing it back fails.
        j.update(|r| r.note_sysctl("net/ipv4/conf/sktest0/forwarding", "0".into()))
            .unwrap();

        let first = undo(&path, &ns).await;
        let tables = crate::lb::nftbatch::run_nft(&ns, &["list", "tables"], None).unwrap();
        let kept = path.exists();
        j.update(|r| {
            r.sysctls
                .remove("net/ipv4/conf/sktest0/forwarding")
                .is_some()
        })
        .unwrap();
        let retry = undo(&path, &ns).await;
        NetNs::delete(&name).unwrap();
        match first {
            Err(UndoError::Incomplete { failed, .. }) => {
                assert_eq!(failed.len(), 1, "{failed:?}");
                assert!(failed[0].contains("sktest0/forwarding"), "{failed:?}");
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(kept, "the journal went although a step failed");
        assert!(!tables.contains("sktest_b_ingress"), "{tables}");
        retry.unwrap();
        assert!(!path.exists());
    }
}
