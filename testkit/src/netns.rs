//! Network namespaces owned by one test: named under a prefix unique to the test process and
//! tag, and all deleted when the guard drops (at the end of the test, or while a failed
//! assertion unwinds), whoever created them: the test itself, or the code under test given a
//! name from [`Namespaces::name`]. The kit drives `ip netns` rather than depend on netcore,
//! which is one of the crates its suites test.

use std::process::Command;

/// Where `ip netns` (and netcore) bind named namespaces.
const RUN_DIR: &str = "/run/netns";

/// The namespaces of one test: every name under [`Namespaces::prefix`].
pub struct Namespaces {
    prefix: String,
}

impl Namespaces {
    /// A guard for the namespaces named `sktest-<`[`unique_name`](crate::unique_name)`(tag)>-*`.
    /// Tests running at once in one process need tags of their own.
    pub fn new(tag: &str) -> Namespaces {
        Namespaces {
            prefix: format!("sktest-{}-", crate::unique_name(tag)),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of namespace `what` under the guard, for code that creates it itself.
    pub fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// Creates namespace `what` with its loopback up (`ip netns add`), and returns its name.
    pub fn create(&self, what: &str) -> String {
        let name = self.name(what);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// The namespaces under the guard that exist now, sorted.
    pub fn list(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(RUN_DIR) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.list() {
            let out = Command::new("ip").args(["netns", "delete", &name]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ip netns delete {name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("ip netns delete {name}: {e}"),
            }
        }
    }
}

/// Runs `ip ARGS`, failing the test with its stderr unless it succeeds.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_to_the_test_and_under_the_prefix() {
        let nss = Namespaces::new("guard");
        assert!(nss.prefix().starts_with("sktest-t"), "{}", nss.prefix());
        assert!(nss.name("a").starts_with(nss.prefix()));
        assert_ne!(nss.prefix(), Namespaces::new("other").prefix());
    }

    #[test]
    fn dropping_the_guard_deletes_every_namespace_under_it_on_panic_too() {
        crate::require_root!();
        let nss = Namespaces::new("drop");
        let prefix = nss.prefix().to_string();
        let (seen, saw) = std::sync::mpsc::channel();
        let made = std::thread::spawn(move || {
            let a = nss.create("a");
            // As the code under test would: a name from the guard, created elsewhere.
            ip(&["netns", "add", &nss.name("b")]);
            let lo = Command::new("ip")
                .args(["-n", &a, "-br", "link", "show", "lo"])
                .output()
                .expect("ip");
            let lo_up = String::from_utf8_lossy(&lo.stdout).contains("LOOPBACK,UP");
            seen.send((nss.list().len(), lo_up))
                .expect("the test waits");
            panic!("a failed assertion");
        })
        .join();
        let (listed, lo_up) = saw.recv().expect("the thread got as far as its panic");
        assert!(made.is_err(), "the thread panicked");
        assert_eq!(listed, 2, "both namespaces were under the guard");
        assert!(lo_up, "create brings the loopback up");
        let left: Vec<_> = std::fs::read_dir(RUN_DIR)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
