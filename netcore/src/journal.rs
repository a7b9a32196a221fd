//! What the dataplane changed in a namespace it does not own (an ssh node's namespace is its
//! owner's host): the nft tables and links it created, each sysctl's value before its first
//! change, and the reqid that marks its xfrm SAs and policies (see `xfrm::Owner::shared`).
//! The journal is a file, written before each change, so that teardown (another process,
//! later, after the agent is gone; see `undo`) removes exactly those tables and puts those
//! values back. Writing it needs nothing but the namespace, so every layer that changes a
//! namespace can note its changes here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::netns::{NetNs, NetNsError};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
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
    NetNs(#[from] NetNsError),
}

type Result<T> = std::result::Result<T, JournalError>;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    /// `ip` tables by name.
    pub(crate) tables: BTreeSet<String>,
    /// Sysctl key -> its value before the first change.
    pub(crate) sysctls: BTreeMap<String, String>,
    /// Reqids whose xfrm SAs and policies are ours (journals from before had none).
    #[serde(default)]
    pub(crate) xfrm_reqids: BTreeSet<u32>,
    /// Links created in the namespace itself (the gateway bridge), by name.
    #[serde(default)]
    pub(crate) links: BTreeSet<String>,
}

/// The journal of one namespace's changes, shared by everything that changes it.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    lock: Mutex<()>,
}

pub(crate) fn load(path: &Path) -> Result<Record> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
            path: path.into(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(JournalError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn save(path: &Path, r: &Record) -> Result<()> {
    let io = |source| JournalError::Io {
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

    /// Changes the record on disk; `f` says whether it changed anything worth writing.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Record) -> bool) -> Result<()> {
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

    /// Notes that the link `name` is (about to be) created.
    pub fn link(&self, name: &str) -> Result<()> {
        self.update(|r| r.links.insert(name.to_string()))
    }

    /// Whether the link `name` is one we created (a link of that name that is not was there
    /// before us, and is not ours to use or remove).
    pub fn has_link(&self, name: &str) -> bool {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        load(&self.path).is_ok_and(|r| r.links.contains(name))
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
    pub(crate) fn note_sysctl(&mut self, key: &str, old: String) -> bool {
        if self.sysctls.contains_key(key) {
            return false;
        }
        self.sysctls.insert(key.to_string(), old);
        true
    }
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
}
