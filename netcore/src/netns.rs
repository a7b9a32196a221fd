//! Named network namespaces, bound under `/run/netns` the way `ip netns` does, so that
//! `ip netns exec` and cleanup by prefix both find them.
//!
//! `setns` only moves the calling thread, and tokio tasks hop between worker threads, so every
//! operation that must run inside a namespace runs on a short-lived dedicated OS thread.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {name}: {op}: {source}")]
    Sys {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {0} does not exist")]
    Missing(String),
    #[error("thread running inside network namespace {0} panicked")]
    Panicked(String),
}

type Result<T> = std::result::Result<T, NetNsError>;

/// An open handle on a network namespace. Holding it keeps the namespace alive even after its
/// name is removed.
#[derive(Clone, Debug)]
pub struct NetNs {
    name: String,
    file: Arc<File>,
    /// What the layers above keep per namespace (the nft runner's libnftables context), made
    /// on first use and shared by every clone.
    attached: Arc<Attached>,
}

/// State of the layers above kept per namespace, one value per type, living as long as the
/// namespace's handles: the nft runner's libnftables context holds a socket in it, and
/// must not outlive it. Held by type so that this module, the bottom layer, names nothing
/// above it.
#[derive(Default)]
struct Attached(Mutex<HashMap<TypeId, Box<dyn Any + Send>>>);

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits: a handle may be printed while its own state is in use.
        match self.0.try_lock() {
            Ok(held) => write!(f, "{} attached", held.len()),
            Err(_) => f.write_str("attached, in use"),
        }
    }
}

fn sys<'a>(name: &'a str, op: &'static str) -> impl FnOnce(std::io::Error) -> NetNsError + 'a {
    move |source| NetNsError::Sys {
        name: name.to_string(),
        op,
        source,
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

impl NetNs {
    /// Creates the named namespace, or opens it if it already exists (idempotent).
    ///
    /// Links made in it get no IPv6 (its loopback keeps `::1`). swarmkit's networks are IPv4
    /// only, and IPv6 on every veth meant duplicate address detection, router solicitations
    /// and MLD reports flooded to every port of a network's bridge each time a task started:
    /// with 800 tasks on a bridge, about a quarter of the CPU adding services cost.
    pub fn create(name: &str) -> Result<NetNs> {
        Self::make(name, true)
    }

    /// As [`NetNs::create`], but writes none of the namespace's sysctls: what a task's
    /// namespace is made with. The kernel keeps one `/proc/sys/net` dentry per namespace that
    /// looked it up, all in one hash chain, and walks that chain on each namespace's first
    /// lookup: a sysctl written in every task made starting the 5000th task cost 0.3 s more
    /// than the first. Its links get no IPv6 through `Links::set_up_without_ipv6` instead.
    pub fn create_untouched(name: &str) -> Result<NetNs> {
        Self::make(name, false)
    }

    fn make(name: &str, disable_ipv6: bool) -> Result<NetNs> {
        let path = path_of(name);
        if let Ok(ns) = Self::open(name) {
            return Ok(ns);
        }
        std::fs::create_dir_all(NETNS_RUN_DIR).map_err(sys(name, "create /run/netns"))?;
        File::create(&path).map_err(sys(name, "create mount point"))?;
        let bind_path = path.clone();
        let made = std::thread::spawn(move || -> std::io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
            // /proc/sys/net is the calling thread's namespace. A kernel without IPv6 has
            // no such file, and nothing to turn off.
            if disable_ipv6 {
                match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            mount(
                Some("/proc/thread-self/ns/net"),
                &bind_path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno)
        })
        .join()
        .map_err(|_| NetNsError::Panicked(name.to_string()))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(sys(name, "unshare and bind")(e));
        }
        Self::open(name)
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<NetNs> {
        let path = path_of(name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetNsError::Missing(name.to_string())
            } else {
                sys(name, "open")(e)
            }
        })?;
        // An unmounted placeholder file is not a namespace.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| sys(name, "statfs")(errno(e)))?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetNsError::Missing(name.to_string()));
        }
        Ok(NetNs {
            name: name.to_string(),
            file: Arc::new(file),
            attached: Arc::default(),
        })
    }

    /// The network namespace of a running process (unnamed).
    pub fn of_pid(pid: u32) -> Result<NetNs> {
        let label = format!("pid {pid}");
        let file = File::open(format!("/proc/{pid}/ns/net")).map_err(sys(&label, "open"))?;
        Ok(NetNs {
            name: label,
            file: Arc::new(file),
            attached: Arc::default(),
        })
    }

    /// Removes the name; the namespace disappears once no process or handle holds it.
    /// Missing namespaces are not an error, so teardown can be repeated.
    pub fn delete(name: &str) -> Result<()> {
        let path = path_of(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(sys(name, "unmount")(errno(e))),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sys(name, "remove")(e)),
        }
    }

    /// Names under /run/netns that start with `prefix`.
    pub fn list_with_prefix(prefix: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on this namespace's `T` (made with `Default` on first use), shared by every
    /// clone of the handle. Calls on one namespace are serialised.
    pub(crate) fn attached<T: Any + Send + Default, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut held = self.attached.0.lock().unwrap_or_else(|e| e.into_inner());
        let value = held
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        match value.downcast_mut::<T>() {
            Some(t) => f(t),
            // Unreachable: the map is keyed by the value's type.
            None => f(&mut T::default()),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a dedicated thread that has entered this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| sys(&self.name, "setns")(errno(e)))?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetNsError::Panicked(self.name.clone()))?
        })
    }

    /// An rtnetlink handle whose socket lives in this namespace. The connection task is spawned
    /// on the current tokio runtime; the handle can then be used from any thread.
    pub fn netlink(&self) -> Result<rtnetlink::Handle> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = self
            .run(|| {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(sys(&self.name, "netlink socket"))?;
        rt.spawn(conn);
        Ok(handle)
    }

    /// Reads a sysctl as seen from inside this namespace, without its trailing newline.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::read_to_string(&path))?
            .map(|v| v.trim_end().to_string())
            .map_err(sys(&self.name, "read sysctl"))
    }

    /// Writes a sysctl as seen from inside this namespace (e.g. `net/ipv4/ip_forward`).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::write(&path, value))?
            .map_err(sys(&self.name, "write sysctl"))
    }
}

/// For `pre_exec`: moves the forked child into the namespace behind `fd`.
/// Only async-signal-safe calls happen here.
pub fn enter_raw(fd: RawFd, nstype: CloneFlags) -> std::io::Result<()> {
    // SAFETY: the caller keeps `fd` open until after exec.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    setns(fd, nstype).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::netns::Namespaces;

    #[test]
    fn create_run_delete() {
        testkit::require_root!();
        let nss = Namespaces::new("netns");
        let name = nss.name("a");
        let ns = NetNs::create(&name).expect("create");
        assert!(NetNs::create(&name).is_ok(), "create is idempotent");
        let inside = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        assert_eq!(NetNs::list_with_prefix(&name), vec![name.clone()]);
        NetNs::delete(&name).unwrap();
        NetNs::delete(&name).unwrap();
        assert!(matches!(NetNs::open(&name), Err(NetNsError::Missing(_))));
    }

    #[test]
    fn links_made_in_a_new_namespace_have_no_ipv6_but_loopback_keeps_it() {
        testkit::skip_unless!(testkit::needs_root().or_else(|| {
            (!Path::new("/proc/sys/net/ipv6").exists()).then(|| "no IPv6 here".to_string())
        }));
        let nss = Namespaces::new("netns6");
        let name = nss.name("a");
        let ns = NetNs::create(&name).expect("create");
        let made = std::process::Command::new("ip")
            .args([
                "-n", &name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ])
            .status()
            .expect("ip");
        let read = |dev: &str| {
            ns.run(|| {
                std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"))
            })
            .unwrap()
            .map(|v| v.trim().to_string())
        };
        let (d0, lo) = (read("d0"), read("lo"));
        assert!(made.success());
        assert_eq!(d0.unwrap(), "1", "a new link has no IPv6");
        assert_eq!(lo.unwrap(), "0", "loopback keeps ::1");
    }

    /// A task's namespace writes no sysctl, and its links still come up without an IPv6
    /// address (no duplicate address detection or router solicitation on their bridge).
    #[tokio::test]
    async fn untouched_namespace_links_come_up_without_ipv6_addresses() {
        testkit::skip_unless!(testkit::needs_root().or_else(|| {
            (!Path::new("/proc/sys/net/ipv6").exists()).then(|| "no IPv6 here".to_string())
        }));
        let nss = Namespaces::new("netns6u");
        let name = nss.name("a");
        let ns = NetNs::create_untouched(&name).expect("create");
        let default = ns
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6"))
            .unwrap()
            .unwrap();
        assert_eq!(
            default.trim(),
            "0",
            "the namespace's defaults are untouched"
        );
        let links = crate::link::Links::new(&ns).unwrap();
        links
            .create_veth("d0", "d1", None, 1500, None)
            .await
            .unwrap();
        for dev in ["d1", "d0"] {
            let index = links.require(dev).await.unwrap();
            links.set_up_without_ipv6(index).await.unwrap();
        }
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(["-n", &name])
                .args(args)
                .output()
                .expect("ip");
            assert!(out.status.success(), "ip {args:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let link = ip(&["link", "show", "dev", "d0"]);
        assert!(link.contains("state UP"), "d0 is up: {link}");
        let addrs = ip(&["-6", "addr", "show", "dev", "d0"]);
        assert!(addrs.trim().is_empty(), "d0 has no IPv6 address: {addrs}");
    }
}
