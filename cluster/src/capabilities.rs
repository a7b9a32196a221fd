//! A task's capabilities as docker computes them (moby's `oci/caps`): its default set, plus
//! `--cap-add`, less `--cap-drop`, with `ALL` on either side. The manager refuses a name that
//! is no capability; the node computes the set when it starts the task.

use caps::Capability;

/// What docker gives a container by default (moby's `oci/caps/defaults.go`).
pub const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A name as docker takes it: any case, `CAP_` optional; `ALL` is `None`.
fn parse(flag: &str, name: &str) -> Result<Option<Capability>, String> {
    let canonical = caps::to_canonical(name.trim());
    if canonical == "CAP_ALL" {
        return Ok(None);
    }
    canonical.parse().map(Some).map_err(|_| {
        format!(
            "invalid {flag} {name:?}: no such capability; give one of capabilities(7)'s names, \
             with or without CAP_ (e.g. NET_ADMIN), or ALL"
        )
    })
}

/// The capabilities of a task run as root, in the kernel's order: docker's rules, where an
/// added capability wins over a dropped one, `--cap-add ALL` is every capability less the
/// dropped ones and `--cap-drop ALL` leaves only the added ones.
pub fn of_task(add: &[String], drop: &[String]) -> Result<Vec<Capability>, String> {
    let parse_all = |flag, names: &[String]| -> Result<(bool, Vec<Capability>), String> {
        let mut all = false;
        let mut named = Vec::new();
        for name in names {
            match parse(flag, name)? {
                Some(c) => named.push(c),
                None => all = true,
            }
        }
        Ok((all, named))
    };
    let (add_all, added) = parse_all("--cap-add", add)?;
    let (drop_all, dropped) = parse_all("--cap-drop", drop)?;
    let mut set: Vec<Capability> = if add_all {
        caps::all()
            .into_iter()
            .filter(|c| !dropped.contains(c))
            .collect()
    } else if drop_all {
        added
    } else {
        DEFAULT
            .into_iter()
            .filter(|c| !dropped.contains(c))
            .chain(added)
            .collect()
    };
    set.sort_by_key(Capability::index);
    set.dedup();
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(add: &[&str], drop: &[&str]) -> Result<Vec<String>, String> {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        of_task(&own(add), &own(drop)).map(|v| v.iter().map(|c| c.to_string()).collect())
    }

    #[test]
    fn the_default_is_dockers_fourteen() {
        let set = names(&[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert!(set.contains(&"CAP_NET_RAW".to_string()));
        assert!(!set.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!set.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn adds_and_drops_in_any_spelling() {
        let set = names(&["net_admin"], &["CAP_NET_RAW", "Chown"]).unwrap();
        assert_eq!(set.len(), 13);
        assert!(set.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!set.contains(&"CAP_NET_RAW".to_string()));
        assert!(!set.contains(&"CAP_CHOWN".to_string()));
        // An added capability wins over the same one dropped, as in docker.
        assert!(
            names(&["NET_RAW"], &["NET_RAW"])
                .unwrap()
                .contains(&"CAP_NET_RAW".to_string())
        );
    }

    #[test]
    fn all_works_as_in_docker() {
        assert_eq!(
            names(&[], &["ALL"]).unwrap(),
            Vec::<String>::new(),
            "drop ALL leaves nothing"
        );
        assert_eq!(
            names(&["NET_BIND_SERVICE"], &["all"]).unwrap(),
            ["CAP_NET_BIND_SERVICE"]
        );
        let every = names(&["ALL"], &["SYS_ADMIN"]).unwrap();
        assert_eq!(every.len(), caps::all().len() - 1);
        assert!(!every.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn an_unknown_name_is_refused_by_name() {
        let e = names(&["NET_ADMIN", "FLY"], &[]).unwrap_err();
        assert!(e.contains("--cap-add \"FLY\""), "{e}");
        let e = names(&[], &["CAP_NOPE"]).unwrap_err();
        assert!(e.contains("--cap-drop \"CAP_NOPE\""), "{e}");
    }
}
