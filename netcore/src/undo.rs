//! Teardown of what the dataplane changed in a namespace it does not own, by a process that
//! did not make the changes: it reads the namespace's journal (`journal`) and removes the xfrm
//! state, nft tables and links listed there and puts the sysctls back. The top of the crate: it
//! undoes what `xfrm` and the nft runner made.

use std::path::{Path, PathBuf};

use crate::journal::{self, JournalError};
use crate::netns::NetNs;
use crate::nft::apply_nft;
use crate::xfrm::{Ipsec, Owner};

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "could not undo {}; the journal {path} is kept, so the same teardown run again \
         retries what is left",
        .failed.join("; "),
        path = .path.display()
    )]
    Incomplete { path: PathBuf, failed: Vec<String> },
}

/// Undoes what the journal at `path` lists, in `ns`, then removes the journal: xfrm state with
/// a journaled reqid and tables are deleted (missing ones are fine), sysctls get their old
/// values back. Every step is tried; if any failed the journal stays (`Incomplete`), so the
/// undo can be repeated.
pub async fn undo(path: &Path, ns: &NetNs) -> Result<(), UndoError> {
    let r = match std::fs::metadata(path) {
        Ok(_) => journal::load(path)?,
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
    match crate::link::Links::new(ns) {
        Ok(links) => {
            for name in &r.links {
                let gone = match links.index_of(name).await {
                    Ok(Some(index)) => links.delete_link(index).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = gone {
                    failed.push(format!("link {name}: {e}"));
                }
            }
        }
        Err(e) => failed.push(format!("links: {e}")),
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
    std::fs::remove_file(path).map_err(|source| {
        UndoError::from(JournalError::Io {
            path: path.into(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use testkit::netns::Namespaces;

    /// A namespace of the test's own (deleted with the guard) and a journal path for it.
    fn scratch(tag: &str) -> (Namespaces, NetNs, PathBuf) {
        let nss = Namespaces::new(&format!("undo-{tag}"));
        let name = nss.name("ns");
        let ns = NetNs::create(&name).unwrap();
        let path = std::env::temp_dir().join(format!("{name}.json"));
        (nss, ns, path)
    }

    /// In a namespace of its own: a journaled table and sysctl are undone, and the journal
    /// goes with them.
    #[tokio::test]
    async fn undo_removes_the_tables_and_restores_the_sysctls() {
        testkit::require_root!();
        let (_nss, ns, path) = scratch("ok");
        let key = "net/ipv4/conf/all/route_localnet";
        let before = ns.sysctl(key).unwrap();
        let flipped = if before == "0" { "1" } else { "0" };
        let j = Journal::new(&path);
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.set_sysctl(&ns, key, flipped).unwrap();
        j.table("sktest_a_ingress").unwrap();
        apply_nft(&ns, "table ip sktest_a_ingress {}\n").unwrap();
        j.link("sktestbr0").unwrap();
        let links = crate::link::Links::new(&ns).unwrap();
        links.create_bridge("sktestbr0", 1500).await.unwrap();
        assert_eq!(ns.sysctl(key).unwrap(), flipped);

        let undone = undo(&path, &ns).await;
        let tables = crate::nft::run_nft(&ns, &["list", "tables"], None).unwrap();
        let after = ns.sysctl(key).unwrap();
        let bridge = links.index_of("sktestbr0").await.unwrap();
        let again = undo(&path, &ns).await;
        undone.unwrap();
        assert_eq!(bridge, None, "the journaled bridge outlived the undo");
        assert!(!tables.contains("sktest_a_ingress"), "{tables}");
        assert_eq!(after, before);
        assert!(!path.exists(), "the journal outlived the undo");
        again.expect("a second undo is a no-op");
    }

    /// A step that fails leaves the journal, with an error naming the step and how to retry,
    /// while the other steps are still done; once the cause is gone, the retry finishes.
    #[tokio::test]
    async fn a_failed_step_keeps_the_journal_for_a_retry() {
        testkit::require_root!();
        let (_nss, ns, path) = scratch("fail");
        let j = Journal::new(&path);
        j.table("sktest_b_ingress").unwrap();
        apply_nft(&ns, "table ip sktest_b_ingress {}\n").unwrap();
        // A sysctl of a device that is not there: writing it back fails.
        j.update(|r| r.note_sysctl("net/ipv4/conf/sktest0/forwarding", "0".into()))
            .unwrap();

        let first = undo(&path, &ns).await;
        let tables = crate::nft::run_nft(&ns, &["list", "tables"], None).unwrap();
        let kept = path.exists();
        j.update(|r| {
            r.sysctls
                .remove("net/ipv4/conf/sktest0/forwarding")
                .is_some()
        })
        .unwrap();
        let retry = undo(&path, &ns).await;
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
