//! Starting a task's process inside its namespaces. The child enters the task's network
//! namespace and gets a private mount and UTS namespace with the task's own /etc/hosts,
//! /etc/resolv.conf (127.0.0.11) and hostname, as a container would.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use netcore::netns::{NETNS_RUN_DIR, NetNs, enter_raw};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::cgroup::{self, CgroupError, TaskCgroup};
use crate::images;
use crate::paths::OWNER_ENV;
use crate::plan::TaskPlan;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("task {task}: preparing {what}: {source}")]
    Prepare {
        task: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("task {task}: {source}")]
    Limits {
        task: String,
        #[source]
        source: CgroupError,
    },
    #[error("task {task}: starting {program}: {source}")]
    Spawn {
        task: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// What the spawner (`spawner.rs`) said went wrong, in its words.
    #[error("{message}")]
    Spawner { message: String },
}

/// Writes the task's hosts, resolv.conf and hostname files into `dir`.
pub fn write_files(dir: &Path, task: &TaskPlan) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    // The last attachment is the service's own network (ingress, when present, comes first).
    if let Some(a) = task.attachments.last() {
        hosts.push_str(&format!("{}\t{}\n", a.addr.addr(), task.hostname));
    }
    for line in &task.hosts {
        hosts.push_str(&line.split_whitespace().collect::<Vec<_>>().join("\t"));
        hosts.push('\n');
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    let mut resolv = String::from("nameserver 127.0.0.11\n");
    if !task.dns_search.is_empty() {
        resolv.push_str(&format!("search {}\n", task.dns_search.join(" ")));
    }
    // ndots:0 unless the task asks otherwise: the embedded server answers bare service names.
    let mut options = vec!["ndots:0".to_string()];
    if task.dns_options.iter().any(|o| o.starts_with("ndots:")) {
        options.clear();
    }
    options.extend(task.dns_options.iter().cloned());
    resolv.push_str(&format!("options {}\n", options.join(" ")));
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{}\n", task.hostname))?;
    Ok(())
}

/// Who a task runs as (`--user user[:group]`), resolved on the node before the fork: names
/// through the node's passwd and group databases, numbers as they are.
struct RunAs {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    home: String,
}

fn resolve_user(spec: &str) -> std::io::Result<Option<RunAs>> {
    use nix::unistd::{Gid, Group, Uid, User};
    if spec.is_empty() {
        return Ok(None);
    }
    let unknown = |what: &str, name: &str| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no {what} {name:?} on this node: give one its /etc/{what_file} has, or a number",
                what_file = if what == "user" { "passwd" } else { "group" }
            ),
        )
    };
    let (user, group) = spec.split_once(':').unwrap_or((spec, ""));
    let entry = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n))?,
        Err(_) => Some(User::from_name(user)?.ok_or_else(|| unknown("user", user))?),
    };
    let uid = entry
        .as_ref()
        .map_or_else(|| Uid::from_raw(user.parse().unwrap_or(0)), |e| e.uid);
    let gid = match group {
        "" => entry.as_ref().map_or(Gid::from_raw(0), |e| e.gid),
        g => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => Group::from_name(g)?.ok_or_else(|| unknown("group", g))?.gid,
        },
    };
    Ok(Some(RunAs {
        uid,
        gid,
        home: entry.map_or_else(|| "/".to_string(), |e| e.dir.to_string_lossy().into_owned()),
    }))
}

fn cstr(task: &str, what: &'static str, s: &str) -> Result<CString, ProcessError> {
    CString::new(s).map_err(|e| ProcessError::Prepare {
        task: task.to_string(),
        what,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })
}

/// The mount namespace each task's own is copied from: the agent's, less the network
/// namespaces' bind mounts under /run/netns. A node's agent shares the host's mount table, which
/// holds one such mount per namespace on the host (thousands, on a netns testbed), and a task's
/// copy of them all cost ~20 ms to make and tear down at 5000. Mounts made on the host after the
/// agent started are not in it; tasks have never needed one.
pub struct MountTemplate(std::os::fd::OwnedFd);

impl AsFd for MountTemplate {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl MountTemplate {
    pub fn new() -> std::io::Result<MountTemplate> {
        // unshare moves only the calling thread, which ends here; the descriptor keeps the
        // namespace.
        std::thread::spawn(|| -> std::io::Result<MountTemplate> {
            let err = std::io::Error::from;
            unshare(CloneFlags::CLONE_NEWNS).map_err(err)?;
            // Private first: the unmounts below must not reach the host.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(err)?;
            if umount2(NETNS_RUN_DIR, MntFlags::MNT_DETACH).is_err() {
                // Not a mount of its own (iproute2 makes it one; we may be first): each
                // namespace's mount goes alone.
                let table = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
                let prefix = format!("{NETNS_RUN_DIR}/");
                for point in table.lines().filter_map(|l| l.split(' ').nth(4)) {
                    if point.starts_with(&prefix) {
                        let _ = umount2(point, MntFlags::MNT_DETACH);
                    }
                }
            }
            Ok(MountTemplate(
                std::fs::File::open("/proc/thread-self/ns/mnt")?.into(),
            ))
        })
        .join()
        .map_err(|_| std::io::Error::other("making the tasks' mount namespace panicked"))?
    }
}

/// `--group`: the supplementary groups, resolved on the node (names through its group
/// database, numbers as they are).
fn resolve_groups(groups: &[String]) -> std::io::Result<Vec<nix::unistd::Gid>> {
    use nix::unistd::{Gid, Group};
    groups
        .iter()
        .map(|g| match g.parse::<u32>() {
            Ok(n) => Ok(Gid::from_raw(n)),
            Err(_) => Group::from_name(g)?.map(|e| e.gid).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no group {g:?} on this node: give one its /etc/group has, or a number"
                    ),
                )
            }),
        })
        .collect()
}

/// What the task's process does with its capabilities before exec: the bounding set drops
/// every capability outside the task's set (so its exec as root gains only those), and a
/// process still root then narrows its own sets to them.
struct CapabilityPlan {
    drop_bounding: Vec<caps::Capability>,
    keep: caps::CapsHashSet,
}

impl CapabilityPlan {
    fn of(task: &TaskPlan) -> std::io::Result<CapabilityPlan> {
        let keep: caps::CapsHashSet = crate::capabilities::of_task(&task.cap_add, &task.cap_drop)
            .map_err(std::io::Error::other)?
            .into_iter()
            .collect();
        // Only what this kernel knows: dropping or setting another is EINVAL.
        let known = caps::runtime::thread_all_supported();
        Ok(CapabilityPlan {
            drop_bounding: known
                .iter()
                .filter(|c| !keep.contains(c))
                .copied()
                .collect(),
            keep: keep.intersection(&known).copied().collect(),
        })
    }

    /// Async-signal-safe: prctl and capset on what was computed before the fork.
    fn bound(&self) -> std::io::Result<()> {
        for c in &self.drop_bounding {
            caps::drop(None, caps::CapSet::Bounding, *c).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn narrow_if_root(&self) -> std::io::Result<()> {
        caps::clear(None, caps::CapSet::Ambient).map_err(std::io::Error::other)?;
        if !nix::unistd::geteuid().is_root() {
            // Leaving root cleared its permitted and effective sets already.
            return Ok(());
        }
        caps::clear(None, caps::CapSet::Inheritable).map_err(std::io::Error::other)?;
        caps::set(None, caps::CapSet::Effective, &self.keep).map_err(std::io::Error::other)?;
        caps::set(None, caps::CapSet::Permitted, &self.keep).map_err(std::io::Error::other)
    }
}

/// `--init`: the task's command runs under swarmkit's own init.
fn under_init(task: &TaskPlan, argv: &[String]) -> Vec<String> {
    if !task.init {
        return argv.to_vec();
    }
    [crate::paths::OWN_BINARY, "__init", "--"]
        .iter()
        .map(|s| s.to_string())
        .chain(argv.iter().cloned())
        .collect()
}

/// What a task's process starts with.
pub struct Launch<'a> {
    pub task: &'a TaskPlan,
    /// Its network namespace.
    pub net: BorrowedFd<'a>,
    /// The mount namespace its own is copied from (the starter's own where None).
    pub mounts: Option<BorrowedFd<'a>>,
    /// Its run directory (hosts, resolv.conf, hostname).
    pub dir: &'a Path,
    pub cluster: &'a str,
    pub argv: &'a [String],
}

/// Starts a task's process (see the module's doc). Called in the agent's spawner (see
/// `spawner.rs`), which is the process's parent.
pub fn spawn(
    launch: &Launch<'_>,
    [stdout, stderr]: [std::os::fd::OwnedFd; 2],
) -> Result<std::process::Child, ProcessError> {
    let Launch {
        task,
        net,
        mounts,
        dir,
        cluster,
        argv,
    } = *launch;
    let prepare = |what, source| ProcessError::Prepare {
        task: task.name.clone(),
        what,
        source,
    };
    write_files(dir, task).map_err(|e| prepare("hosts and resolv.conf", e))?;

    let binds: Vec<(CString, CString)> = ["hosts", "resolv.conf", "hostname"]
        .iter()
        .map(|f| {
            Ok((
                cstr(&task.name, "bind source", &dir.join(f).to_string_lossy())?,
                cstr(&task.name, "bind target", &format!("/etc/{f}"))?,
            ))
        })
        .collect::<Result<_, ProcessError>>()?;
    let files = super::files::TaskFiles::prepare(&task.files)
        .map_err(|e| prepare("its secrets and configs", e))?;
    let hostname = task.hostname.clone();
    let read_only = task.read_only;
    let user = resolve_user(&task.user).map_err(|e| ProcessError::Prepare {
        task: task.name.clone(),
        what: "its --user",
        source: e,
    })?;
    let workdir = cstr(
        &task.name,
        "working directory",
        if task.dir.is_empty() { "/" } else { &task.dir },
    )?;
    let net_fd = net.as_raw_fd();
    let mounts_fd = mounts.map(|m| m.as_raw_fd());
    let groups = task_groups(task, user.as_ref()).map_err(|e| prepare("its --group", e))?;
    let capabilities =
        CapabilityPlan::of(task).map_err(|e| prepare("its --cap-add/--cap-drop", e))?;
    let argv = &under_init(task, argv);
    // Made and limited before the process exists; the process joins it before it execs.
    let cgroup = TaskCgroup::create(cluster, &task.id, &task.limits).map_err(|source| {
        ProcessError::Limits {
            task: task.name.clone(),
            source,
        }
    })?;

    let mut cmd = command_as_task(task, user.as_ref(), &argv[0], &argv[1..]);
    cmd.env(images::ENV_TASK_ID, &task.id)
        .env(images::ENV_TASK_NAME, &task.name)
        .env(
            images::ENV_TASK_ADDRS,
            task.attachments
                .iter()
                .map(|a| a.addr.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env(OWNER_ENV, cluster)
        .stdin(Stdio::null())
        // FIFOs the agent reads (see logs.rs), which keeps the streams apart for `service logs`.
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: only async-signal-safe syscalls run between fork and exec; every buffer they
    // use was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            enter_task(cgroup.as_ref(), net_fd, mounts_fd, CloneFlags::CLONE_NEWUTS)?;
            for (src, dst) in &binds {
                // /etc/hostname may be absent on minimal hosts; the UTS name still applies.
                let _ = mount(
                    Some(src.as_c_str()),
                    dst.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                );
            }
            files.install()?;
            if read_only {
                // Per mount, in the task's own namespace: the node's root stays writable.
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(std::io::Error::from)?;
            }
            nix::unistd::sethostname(&hostname).map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::unistd::chdir(workdir.as_c_str()).map_err(std::io::Error::from)?;
            // Last: everything above needs root.
            become_task(&capabilities, groups.as_deref(), user.as_ref())
        });
    }
    // A failed start leaves the cgroup: the spawner runs no runtime to retire it in, and the
    // agent removes it on hearing of the failure.
    cmd.spawn().map_err(|source| ProcessError::Spawn {
        task: task.name.clone(),
        program: argv[0].clone(),
        source,
    })
}

/// What a task of a registry image runs in: the node's runtime, the image's layers, and the
/// directory of the container's own writable layer (made here, removed when it ends).
pub struct Container<'a> {
    pub runtime: &'a oci::runtime::Runtime,
    pub image: &'a oci::Image,
    pub layer: &'a Path,
    /// The node's volumes (docker's local driver: `<dir>/<name>/_data`).
    pub volumes: &'a Path,
}

/// Node paths bound into a container: (node path, container path, read-only).
type Binds = Vec<(std::path::PathBuf, String, bool)>;
/// tmpfs mounts in a container: (container path, mount options).
type Tmpfs = Vec<(String, Vec<String>)>;

/// Where each `--mount` comes from on the node: a volume's directory (made on first use, as
/// docker's local driver does; a task's anonymous volume is named after the task and target),
/// a bind's node path (which must exist, as docker requires), or a tmpfs.
fn mounts_of(task: &TaskPlan, volumes: &Path) -> std::io::Result<(Binds, Tmpfs)> {
    use crate::plan::MountKind;
    let (mut binds, mut tmpfs) = (Vec::new(), Vec::new());
    for m in &task.mounts {
        match m.kind {
            MountKind::Volume => {
                let name = if m.source.is_empty() {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(format!("{}\0{}", task.id, m.target)))
                } else {
                    m.source.clone()
                };
                let data = volumes.join(name).join("_data");
                std::fs::create_dir_all(&data)?;
                binds.push((data, m.target.clone(), m.read_only));
            }
            MountKind::Bind => {
                if !Path::new(&m.source).exists() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "invalid mount config for type \"bind\": bind source path does not \
                             exist on this node: {} (make it, or constrain the service to nodes \
                             that have it)",
                            m.source
                        ),
                    ));
                }
                binds.push((m.source.clone().into(), m.target.clone(), m.read_only));
            }
            MountKind::Tmpfs => {
                let mut options = Vec::new();
                if m.tmpfs_size > 0 {
                    options.push(format!("size={}", m.tmpfs_size));
                }
                options.push(format!("mode={:o}", m.tmpfs_mode.unwrap_or(0o1777)));
                if m.read_only {
                    options.push("ro".to_string());
                }
                tmpfs.push((m.target.clone(), options));
            }
        }
    }
    Ok((binds, tmpfs))
}

/// The container's plan from the task's: its command and args, env, user and the rest, and
/// its hosts, resolv.conf and hostname (and `/run`, when it has secrets or configs) bound in.
fn container_plan(
    task: &TaskPlan,
    dir: &Path,
    files_root: Option<&Path>,
    mounts: (Binds, Tmpfs),
) -> std::io::Result<oci::bundle::ContainerPlan> {
    let (volumes, tmpfs) = mounts;
    let split = task.command_len.min(task.args.len());
    let mut binds: Vec<(std::path::PathBuf, String, bool)> = ["hosts", "resolv.conf", "hostname"]
        .iter()
        .map(|f| (dir.join(f), format!("/etc/{f}"), false))
        .collect();
    if let Some(root) = files_root {
        binds.push((
            root.join(crate::plan::FILES_ROOT.trim_start_matches('/')),
            crate::plan::FILES_ROOT.to_string(),
            false,
        ));
    }
    binds.extend(volumes);
    Ok(oci::bundle::ContainerPlan {
        command: task.args[..split].to_vec(),
        args: task.args[split..].to_vec(),
        env: task.env.clone(),
        hostname: task.hostname.clone(),
        user: task.user.clone(),
        groups: task.groups.clone(),
        workdir: task.dir.clone(),
        read_only: task.read_only,
        capabilities: crate::capabilities::of_task(&task.cap_add, &task.cap_drop)
            .map_err(std::io::Error::other)?
            .iter()
            .map(|c| c.to_string())
            .collect(),
        binds,
        tmpfs,
        init: None,
    })
}

/// overlayfs's options for the container's root: the image's layers (topmost first) under
/// its own writable layer.
fn overlay_options(image: &oci::Image, layer: &Path) -> String {
    let lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layer.join("upper").display(),
        layer.join("work").display()
    )
}

/// Starts a task of a registry image: `crun run` of a bundle in its directory, itself started
/// in the task's network namespace and cgroup and in a mount namespace of its own where the
/// container's root is mounted (overlayfs over the image's layers), so the mount goes when
/// the container does, whatever becomes of the agent.
pub fn spawn_container(
    task: &TaskPlan,
    ns: &NetNs,
    mounts: Option<&MountTemplate>,
    dir: &Path,
    cluster: &str,
    container: &Container<'_>,
    [stdout, stderr]: [std::os::fd::OwnedFd; 2],
) -> Result<tokio::process::Child, ProcessError> {
    let prepare = |what, source| ProcessError::Prepare {
        task: task.name.clone(),
        what,
        source,
    };
    let init = match task.init {
        true => Some(
            oci::runtime::find_init().map_err(|e| prepare("--init", std::io::Error::other(e)))?,
        ),
        false => None,
    };
    write_files(dir, task).map_err(|e| prepare("hosts and resolv.conf", e))?;
    let files_root = dir.join("files");
    // Configs outside /run are written on the task's tmpfs too, and bound to their targets.
    let mut files = task.files.clone();
    let mut config_binds: Binds = Vec::new();
    for (i, f) in files.iter_mut().enumerate() {
        if !f.path.starts_with(&format!("{}/", crate::plan::FILES_ROOT)) {
            let staged = format!("{}/.configs/{i}", crate::plan::FILES_ROOT);
            config_binds.push((
                files_root.join(staged.trim_start_matches('/')),
                std::mem::replace(&mut f.path, staged),
                true,
            ));
        }
    }
    let files = super::files::TaskFiles::prepare_at(&files, &files_root)
        .map_err(|e| prepare("its secrets and configs", e))?;
    let mut task_mounts =
        mounts_of(task, container.volumes).map_err(|e| prepare("its --mount", e))?;
    task_mounts.0.extend(config_binds);
    let plan = oci::bundle::ContainerPlan {
        init,
        ..container_plan(
            task,
            dir,
            (!task.files.is_empty()).then_some(&*files_root),
            task_mounts,
        )
        .map_err(|e| prepare("its --cap-add/--cap-drop", e))?
    };
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in [
        &rootfs,
        &container.layer.join("upper"),
        &container.layer.join("work"),
    ] {
        std::fs::create_dir_all(d).map_err(|e| prepare("the container's directories", e))?;
    }
    let spec = oci::bundle::spec(
        &rootfs,
        &container.image.layers,
        &container.image.config,
        &plan,
    )
    .map_err(|e| prepare("the container's config.json", std::io::Error::other(e)))?;
    oci::bundle::write(&bundle, &spec)
        .map_err(|e| prepare("the container's config.json", std::io::Error::other(e)))?;
    let overlay = cstr(
        &task.name,
        "overlay options",
        &overlay_options(container.image, container.layer),
    )?;
    let target = cstr(&task.name, "container root", &rootfs.to_string_lossy())?;
    let unified = cstr(&task.name, "cgroup path", "/sys/fs/cgroup/unified")?;
    let net_fd = ns.raw_fd();
    let mounts_fd = mounts.map(|m| m.0.as_raw_fd());
    let cgroup = TaskCgroup::create(cluster, &task.id, &task.limits).map_err(|source| {
        ProcessError::Limits {
            task: task.name.clone(),
            source,
        }
    })?;
    let mut cmd = container.runtime.run(&bundle, &task.id);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env(OWNER_ENV, cluster)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: only async-signal-safe syscalls run between fork and exec; every buffer they
    // use was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            enter_task(cgroup.as_ref(), net_fd, mounts_fd, CloneFlags::empty())?;
            mount(
                Some("overlay"),
                target.as_c_str(),
                Some("overlay"),
                MsFlags::empty(),
                Some(overlay.as_c_str()),
            )
            .map_err(std::io::Error::from)?;
            files.install()?;
            // crun refuses a hybrid host's controller-less v2 mount beside v1's hierarchies;
            // it leaves cgroups alone here anyway (the task's own already holds it).
            let _ = umount2(unified.as_c_str(), MntFlags::MNT_DETACH);
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            close_inherited();
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn().map_err(|source| {
        cgroup::remove(cluster, &task.id, std::time::Duration::ZERO);
        ProcessError::Spawn {
            task: task.name.clone(),
            program: "crun".to_string(),
            source,
        }
    })
}

/// Whether a task runs a registry image (under the node's runtime) rather than a built-in
/// one or a command from the node's filesystem.
pub fn runs_image(task: &TaskPlan) -> bool {
    images::resolve(&task.image).is_none()
}

/// The node's runtime, with the cluster's container state.
pub fn runtime(cluster: &str) -> Result<oci::runtime::Runtime, oci::runtime::RuntimeError> {
    oci::runtime::Runtime::find(
        &crate::paths::ClusterPaths::new(cluster)
            .run_dir()
            .join("crun"),
    )
}

/// Between fork and exec, last: the task's capabilities, groups and user, and no descriptor
/// but stdin, stdout and stderr. Rust opens its descriptors close-on-exec, but libnftables'
/// netlink sockets (one per namespace the agent programs) are not, and would leak into every
/// task; best effort, as a kernel before 5.11 lacks close_range and the process still runs.
/// Only async-signal-safe syscalls.
fn become_task(
    capabilities: &CapabilityPlan,
    groups: Option<&[nix::unistd::Gid]>,
    user: Option<&RunAs>,
) -> std::io::Result<()> {
    capabilities.bound()?;
    if let Some(g) = groups {
        nix::unistd::setgroups(g).map_err(std::io::Error::from)?;
    }
    if let Some(u) = user {
        nix::unistd::setgid(u.gid).map_err(std::io::Error::from)?;
        nix::unistd::setuid(u.uid).map_err(std::io::Error::from)?;
    }
    capabilities.narrow_if_root()?;
    close_inherited();
    Ok(())
}

/// Marks every descriptor past stdin, stdout and stderr close-on-exec (see [`become_task`]).
/// Async-signal-safe.
fn close_inherited() {
    // SAFETY: close_range only marks descriptors close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Between fork and exec, first: into the task's cgroup and network namespace, and a mount
/// namespace of its own copied from `mounts` (the agent's own where None), made private so
/// nothing mounted after reaches the node; `also` unshares more (UTS). Async-signal-safe.
fn enter_task(
    cgroup: Option<&TaskCgroup>,
    net_fd: std::os::fd::RawFd,
    mounts_fd: Option<std::os::fd::RawFd>,
    also: CloneFlags,
) -> std::io::Result<()> {
    if let Some(c) = cgroup {
        c.join_self()?;
    }
    enter_raw(net_fd, CloneFlags::CLONE_NEWNET)?;
    if let Some(fd) = mounts_fd {
        enter_raw(fd, CloneFlags::CLONE_NEWNS)?;
    }
    unshare(CloneFlags::CLONE_NEWNS | also).map_err(std::io::Error::from)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

/// The groups a task's processes take: primary first, as `id` shows it, then `--group`'s;
/// None (keep the agent's) for a task with neither `--user` nor `--group`.
fn task_groups(
    task: &TaskPlan,
    user: Option<&RunAs>,
) -> std::io::Result<Option<Vec<nix::unistd::Gid>>> {
    let extra = resolve_groups(&task.groups)?;
    Ok(match (user.map(|u| u.gid), extra.is_empty()) {
        (Some(gid), _) => Some(std::iter::once(gid).chain(extra).collect()),
        (None, false) => Some(
            std::iter::once(nix::unistd::Gid::from_raw(0))
                .chain(extra)
                .collect(),
        ),
        (None, true) => None,
    })
}

/// `program` with the environment a task's processes get: a clean one with docker's PATH,
/// its hostname and home, then its `--env`.
fn command_as_task(
    task: &TaskPlan,
    user: Option<&RunAs>,
    program: &str,
    args: &[String],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", &task.hostname)
        .env("HOME", user.map_or("/root", |u| u.home.as_str()));
    for kv in &task.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd
}

/// A command in the task whose process is `pid` (a healthcheck's, or `docker exec`'s, with
/// `env` added): in a registry image's container through its runtime; otherwise in the
/// task's network, mount and UTS namespaces and its cgroup, from its working directory, as
/// its user and groups with its capabilities and the task's environment, as dockerd runs one
/// with `exec`. Killed when dropped (a check's timeout, a client gone).
pub fn probe(
    cluster: &str,
    task: &TaskPlan,
    pid: u32,
    argv: &[String],
    env: &[String],
) -> std::io::Result<tokio::process::Command> {
    use std::os::fd::OwnedFd;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("no command to run in the task"))?;
    if runs_image(task) {
        let mut cmd = runtime(cluster)
            .map_err(std::io::Error::other)?
            .exec(&task.id, env, argv);
        let cgroup = TaskCgroup::existing(cluster, &task.id);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only the cgroup's open and write run between fork and exec.
        unsafe {
            cmd.pre_exec(move || match &cgroup {
                Some(c) => c.join_self(),
                None => Ok(()),
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        return Ok(cmd);
    }
    let open = |ns: &str| -> std::io::Result<OwnedFd> {
        Ok(std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))?.into())
    };
    let namespaces = [
        (open("net")?, CloneFlags::CLONE_NEWNET),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
    ];
    let user = resolve_user(&task.user)?;
    let groups = task_groups(task, user.as_ref())?;
    let capabilities = CapabilityPlan::of(task)?;
    let cgroup = TaskCgroup::existing(cluster, &task.id);
    let workdir = CString::new(if task.dir.is_empty() { "/" } else { &task.dir })
        .map_err(std::io::Error::other)?;
    let mut cmd = command_as_task(task, user.as_ref(), program, args);
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe syscalls run between fork and exec; the descriptors and
    // buffers they use were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, kind) in &namespaces {
                enter_raw(fd.as_raw_fd(), *kind)?;
            }
            if let Some(c) = &cgroup {
                c.join_self()?;
            }
            nix::unistd::chdir(workdir.as_c_str()).map_err(std::io::Error::from)?;
            become_task(&capabilities, groups.as_deref(), user.as_ref())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    Ok(cmd)
}
