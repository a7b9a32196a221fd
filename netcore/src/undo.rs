//! What the dataplane changed in a namespace it does not own (an ssh node's namespace is its
//! owner's host): the nft tables it created and each sysctl's value before its first change.
//! The journal is a file, written before each change, so that teardown (another process,
//! later, after the agent is gone) removes exactly those tables and puts those values back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::lb::LbError;
use crate::lb::nftbatch::apply_nft;
use crate::netns::NetNs;

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
}

type Result<T> = std::result::Result<T, UndoError>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// `ip` tables by name.
    tables: BTreeSet<String>,
    /// Sysctl key -> its value before the first change.
    sysctls: BTreeMap<String, String>,
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

/// Undoes what the journal at `path` lists, in `ns`, then removes the journal: tables are
/// deleted (a missing one is fine), sysctls get their old values back. Returns what could not
/// be undone; the journal stays when anything failed, so the undo can be repeated.
pub fn undo(path: &Path, ns: &NetNs) -> Result<Vec<String>> {
    let r = match std::fs::metadata(path) {
        Ok(_) => load(path)?,
        Err(_) => return Ok(Vec::new()),
    };
    let mut failed = Vec::new();
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
    if failed.is_empty() {
        std::fs::remove_file(path).map_err(|source| UndoError::Io {
            path: path.into(),
            source,
        })?;
    }
    Ok(failed)
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

    /// In a namespace of its own: a journaled table and sysctl are undone, and the journal
    /// goes with them.
    #[test]
    fn undo_removes_the_tables_and_restores_the_sysctls() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let name = format!("sktest-undo-{}", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        let path = std::env::temp_dir().join(format!("{name}.json"));
        let key = "net/ipv4/conf/all/route_localnet";
        let before = ns.sysctl(key).unwrap();
        let flipped = if before == "0" { "1" } else { "0" };
        let j = Journal::new(&path);
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.table("sktest_a_ingress").unwrap();
        apply_nft(&ns, "table ip sktest_a_ingress {}\n").unwrap();
        assert_eq!(ns.sysctl(key).unwrap(), flipped);

        let failed = undo(&path, &ns).unwrap();
        let tables = crate::lb::nftbatch::run_nft(&ns, &["list", "tables"], None).unwrap();
        let after = ns.sysctl(key).unwrap();
        NetNs::delete(&name).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!tables.contains("sktest_a_ingress"), "{tables}");
        assert_eq!(after, before);
        assert!(!path.exists(), "the journal outlived the undo");
        assert!(
            undo(&path, &ns).unwrap().is_empty(),
            "a second undo is a no-op"
        );
    }
}
