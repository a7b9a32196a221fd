//! A task's OCI runtime bundle: `config.json` (through oci-spec) for an image's process as
//! docker would start it for a Swarm task: the service's command and args over the image's
//! entrypoint and cmd, its env over the image's, its user resolved in the image's own
//! `/etc/passwd`, docker's default capabilities (or the task's), and a PID, IPC, UTS and mount
//! namespace of its own. The network namespace is not in the spec: the runtime is started
//! inside the task's, which the container then shares (as docker's containers share their
//! sandbox's).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceType, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::ImageConfig;

/// What the task asks of its container, beyond the image.
#[derive(Clone, Debug, Default)]
pub struct ContainerPlan {
    /// The service's command (`docker service create --entrypoint`, the API's `Command`):
    /// replaces the image's ENTRYPOINT, and its CMD with it.
    pub command: Vec<String>,
    /// The service's args: replace the image's CMD.
    pub args: Vec<String>,
    /// `KEY=value`, over the image's.
    pub env: Vec<String>,
    pub hostname: String,
    /// `--user user[:group]`; empty: the image's USER.
    pub user: String,
    /// `--group`: supplementary groups.
    pub groups: Vec<String>,
    /// `--workdir`; empty: the image's WORKDIR, else `/`.
    pub workdir: String,
    pub read_only: bool,
    /// The capability set, `CAP_*` names.
    pub capabilities: Vec<String>,
    /// Host paths bound into the container: (host, container, read-only).
    pub binds: Vec<(PathBuf, String, bool)>,
    /// tmpfs mounts: (container path, mount options such as `size=64m`, `mode=1777`, `ro`).
    pub tmpfs: Vec<(String, Vec<String>)>,
    /// `--init`: the node's static init (tini), bound in as docker binds it and run first.
    pub init: Option<PathBuf>,
}

/// Where docker puts its init in a container, and what the process then starts with.
pub const INIT_PATH: &str = "/sbin/docker-init";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the image has no command to run (no ENTRYPOINT or CMD) and the service gives none: \
         give one after the image"
    )]
    NoCommand,
    #[error(
        "--user {spec}: no {what} {name:?} in the image's /etc/{file}: give a number, or one the image has"
    )]
    UnknownUser {
        spec: String,
        what: &'static str,
        name: String,
        file: &'static str,
    },
    #[error("unknown capability {0}")]
    Capability(String),
    #[error("the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("writing the bundle {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The process's argv, docker's way: a service command replaces ENTRYPOINT (and drops CMD);
/// service args replace CMD.
pub fn argv(image: &ImageConfig, plan: &ContainerPlan) -> Result<Vec<String>, BundleError> {
    let (entrypoint, cmd) = if plan.command.is_empty() {
        let cmd = if plan.args.is_empty() {
            &image.cmd
        } else {
            &plan.args
        };
        (&image.entrypoint, cmd)
    } else {
        (&plan.command, &plan.args)
    };
    let argv: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if argv.is_empty() {
        return Err(BundleError::NoCommand);
    }
    Ok(match plan.init {
        Some(_) => [INIT_PATH, "--"]
            .iter()
            .map(|s| s.to_string())
            .chain(argv)
            .collect(),
        None => argv,
    })
}

/// The environment: the image's, then the task's over it (by key), with docker's PATH where
/// neither sets one and the hostname.
pub fn environment(image: &ImageConfig, plan: &ContainerPlan) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: &String| {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    };
    set(&"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    set(&format!("HOSTNAME={}", plan.hostname));
    image.env.iter().for_each(&mut set);
    plan.env.iter().for_each(&mut set);
    env
}

/// Who the process runs as: uid, gid, supplementary gids and home, with names looked up in
/// the image (its topmost `/etc/passwd` and `/etc/group` among `layers`, lowest first).
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

fn image_file(layers: &[PathBuf], path: &str) -> String {
    layers
        .iter()
        .rev()
        .find_map(|l| std::fs::read_to_string(l.join(path)).ok())
        .unwrap_or_default()
}

/// `name:x:uid:gid:...:home:shell` lines: (name, uid, gid, home).
fn passwd(text: &str) -> Vec<(String, u32, u32, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5).unwrap_or(&"/").to_string(),
            ))
        })
        .collect()
}

fn groups(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

pub fn run_as(
    layers: &[PathBuf],
    image: &ImageConfig,
    plan: &ContainerPlan,
) -> Result<RunAs, BundleError> {
    let spec = if plan.user.is_empty() {
        image.user.as_str()
    } else {
        plan.user.as_str()
    };
    let users = passwd(&image_file(layers, "etc/passwd"));
    let group_db = groups(&image_file(layers, "etc/group"));
    let unknown = |what, name: &str, file| BundleError::UnknownUser {
        spec: spec.to_string(),
        what,
        name: name.to_string(),
        file,
    };
    let group_id = |g: &str| -> Result<u32, BundleError> {
        match g.parse() {
            Ok(n) => Ok(n),
            Err(_) => group_db
                .iter()
                .find(|(n, _)| n == g)
                .map(|(_, id)| *id)
                .ok_or_else(|| unknown("group", g, "group")),
        }
    };
    let (user, group) = spec.split_once(':').unwrap_or((spec, ""));
    let entry = match user {
        "" => users.iter().find(|u| u.1 == 0),
        u => match u.parse::<u32>() {
            Ok(n) => users.iter().find(|e| e.1 == n),
            Err(_) => Some(
                users
                    .iter()
                    .find(|e| e.0 == u)
                    .ok_or_else(|| unknown("user", u, "passwd"))?,
            ),
        },
    };
    let uid = entry.map_or_else(|| user.parse().unwrap_or(0), |e| e.1);
    let gid = match group {
        "" => entry.map_or(0, |e| e.2),
        g => group_id(g)?,
    };
    Ok(RunAs {
        uid,
        gid,
        additional_gids: plan
            .groups
            .iter()
            .map(|g| group_id(g))
            .collect::<Result<_, _>>()?,
        home: entry.map_or_else(|| "/".to_string(), |e| e.3.clone()),
    })
}

fn bind(host: &Path, container: &str, read_only: bool) -> Result<Mount, BundleError> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if read_only {
        options.push("ro".to_string());
    }
    Ok(MountBuilder::default()
        .destination(container)
        .typ("bind")
        .source(host)
        .options(options)
        .build()?)
}

/// The container's `config.json` with its root at `rootfs`.
pub fn spec(
    rootfs: &Path,
    layers: &[PathBuf],
    image: &ImageConfig,
    plan: &ContainerPlan,
) -> Result<Spec, BundleError> {
    let user = run_as(layers, image, plan)?;
    let mut env = environment(image, plan);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let caps: Vec<Capability> = plan
        .capabilities
        .iter()
        .map(|c| {
            serde_json::from_value(serde_json::Value::String(c.clone()))
                .map_err(|_| BundleError::Capability(c.clone()))
        })
        .collect::<Result<_, _>>()?;
    let caps: oci_spec::runtime::Capabilities = caps.into_iter().collect();
    let cwd = [plan.workdir.as_str(), image.working_dir.as_str()]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/");
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(argv(image, plan)?)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .no_new_privileges(false)
        .build()?;
    let mut mounts = oci_spec::runtime::get_default_mounts();
    // Docker's containers see their cgroup read-only, never write it; on a v1 host crun
    // would bind each hierarchy, which the task's own cgroup already confines.
    mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
    for (host, container, ro) in &plan.binds {
        mounts.push(bind(host, container, *ro)?);
    }
    if let Some(init) = &plan.init {
        mounts.push(bind(init, INIT_PATH, true)?);
    }
    for (container, options) in &plan.tmpfs {
        let mut o = vec!["nosuid".to_string(), "nodev".to_string()];
        o.extend(options.iter().cloned());
        mounts.push(
            MountBuilder::default()
                .destination(container)
                .typ("tmpfs")
                .source("tmpfs")
                .options(o)
                .build()?,
        );
    }
    let namespaces: Vec<LinuxNamespace> = oci_spec::runtime::get_default_namespaces()
        .into_iter()
        .filter(|n| {
            // The task's network namespace is inherited; the cgroup one adds nothing on v1.
            !matches!(
                n.typ(),
                LinuxNamespaceType::Network | LinuxNamespaceType::Cgroup
            )
        })
        .collect();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()?;
    Ok(Spec::default()
        .set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(plan.read_only)
                .build()?,
        ))
        .set_hostname(Some(plan.hostname.clone()))
        .set_process(Some(process))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .clone())
}

/// Writes `config.json` into `dir` (made if missing), atomically.
pub fn write(dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    let io = |source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join("config.json.tmp");
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, dir.join("config.json")).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/app/bin:/bin".into(), "MODE=image".into()],
            working_dir: "/app".into(),
            user: "app".into(),
            ..Default::default()
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_override_as_docker_does() {
        let img = image();
        let mut p = ContainerPlan::default();
        assert_eq!(
            argv(&img, &p).unwrap(),
            s(&["/entry", "serve", "--port=80"])
        );
        p.args = s(&["check"]);
        assert_eq!(argv(&img, &p).unwrap(), s(&["/entry", "check"]));
        p.command = s(&["/bin/sh", "-c"]);
        p.args = s(&["echo hi"]);
        assert_eq!(argv(&img, &p).unwrap(), s(&["/bin/sh", "-c", "echo hi"]));
        p.args.clear();
        assert_eq!(argv(&img, &p).unwrap(), s(&["/bin/sh", "-c"]));
        p.init = Some("/usr/bin/tini-static".into());
        assert_eq!(
            argv(&img, &p).unwrap(),
            s(&[INIT_PATH, "--", "/bin/sh", "-c"])
        );
        p.init = None;
        let empty = ImageConfig::default();
        assert!(matches!(
            argv(&empty, &ContainerPlan::default()),
            Err(BundleError::NoCommand)
        ));
    }

    #[test]
    fn task_env_overrides_image_env_by_key() {
        let p = ContainerPlan {
            env: s(&["MODE=task", "EXTRA=1"]),
            hostname: "h1".into(),
            ..Default::default()
        };
        assert_eq!(
            environment(&image(), &p),
            s(&["HOSTNAME=h1", "PATH=/app/bin:/bin", "MODE=task", "EXTRA=1"])
        );
    }

    #[test]
    fn users_resolve_in_the_images_topmost_passwd() {
        let dir = std::env::temp_dir().join(format!("oci-bundle-users-{}", std::process::id()));
        let (low, high) = (dir.join("low"), dir.join("high"));
        for (l, passwd) in [
            (&low, "root:x:0:0::/root:/bin/sh\n"),
            (
                &high,
                "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            ),
        ] {
            std::fs::create_dir_all(l.join("etc")).unwrap();
            std::fs::write(l.join("etc/passwd"), passwd).unwrap();
        }
        std::fs::write(high.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![low, high];
        let u = run_as(&layers, &image(), &ContainerPlan::default()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        let p = ContainerPlan {
            user: "0:staff".into(),
            groups: s(&["50", "root"]),
            ..Default::default()
        };
        let u = run_as(&layers, &image(), &p).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 50, vec![50, 0]));
        let p = ContainerPlan {
            user: "nobody".into(),
            ..Default::default()
        };
        let err = run_as(&layers, &image(), &p).err().unwrap().to_string();
        assert!(
            err.contains("no user \"nobody\" in the image's /etc/passwd"),
            "{err}"
        );
        let p = ContainerPlan {
            user: "4242".into(),
            ..Default::default()
        };
        assert_eq!(run_as(&layers, &image(), &p).unwrap().uid, 4242);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_spec_shares_the_tasks_network_and_binds_its_files() {
        let p = ContainerPlan {
            hostname: "web-1".into(),
            user: "0".into(),
            capabilities: s(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            binds: vec![("/x/hosts".into(), "/etc/hosts".into(), true)],
            ..Default::default()
        };
        let spec = spec(Path::new("/b/rootfs"), &[], &image(), &p).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"network"), "{ns:?}");
        assert!(ns.contains(&"pid") && ns.contains(&"mount"), "{ns:?}");
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["process"]["cwd"], "/app");
        let bounding = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bounding.len(), 2);
        let hosts = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(
            hosts["options"],
            serde_json::json!(["rbind", "rprivate", "ro"])
        );
        let bad = ContainerPlan {
            capabilities: s(&["CAP_FLY"]),
            ..p
        };
        assert!(super::spec(Path::new("/r"), &[], &image(), &bad).is_err());
    }
}
